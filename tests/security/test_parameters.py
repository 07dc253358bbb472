"""NUL, control characters, odd Unicode and SQL in every parameter of every route (issue 8 item 6,
issue 9 "Keep it found"): never a 5xx, always the error shape, and text parameters that cannot
hold control characters name the field in a 400.

Decision (documented in chalicelib/api/schemas/__init__.py): control characters are REJECTED with a 400
field error, not stripped: what was searched stays equal to what was typed.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from tests.test_api_support import ALPHA, Api, api_fixture  # noqa: F401

C = "/api/companies/{company_id}"

# (name, value as it goes into the URL: already percent-encoded)
HOSTILE: list[tuple[str, str]] = [
    ("nul suffix", quote("abc\x00", safe="")),
    ("nul only", "%00"),
    ("crlf", quote("a\r\nSet-Cookie: x=1", safe="")),
    ("escape", quote("\x1b[31mred", safe="")),
    ("del", quote("a\x7fb", safe="")),
    ("c1 control", quote("a\u0085b", safe="")),
    ("sql quote", quote("' OR '1'='1' --", safe="")),
    ("sql drop", quote("x'; DROP TABLE recovery_cases; --", safe="")),
    ("like wildcards", quote("%_\\", safe="")),
    ("bidi override", quote("\u202egnp.exe", safe="")),
    ("emoji", quote("😀", safe="")),
    ("invalid utf-8", "%FF%FE"),
    ("lone surrogate bytes", "%ED%A0%80"),
    ("long", "A" * 5000),
    ("path traversal", quote("../../etc/passwd", safe="")),
]
CONTROL = {"nul suffix", "nul only", "crlf", "escape", "del", "c1 control"}

QUERY_PARAMS: list[tuple[str, str]] = [
    (f"{C}/cases", "q"), (f"{C}/cases", "cursor"), (f"{C}/cases", "status"), (f"{C}/cases", "limit"),
    (f"{C}/cases", "window_days"), (f"{C}/cases/export.csv", "status"), (f"{C}/cases/export.csv", "cursor"),
    (f"{C}/cases/export.csv", "window_days"), (f"{C}/kpis", "window_days"), ("/api/health", "type"),
    (f"{C}/kpis/cohorts", "weeks"), (f"{C}/cases", "decline_class"),
    (f"{C}/cases/export.csv", "decline_class"), (f"{C}/cases/export.csv", "q"),
]
PATH_PARAMS: list[tuple[str, str, str]] = [
    ("GET", f"{C}/settings", "company_id"), ("GET", f"{C}/cases/{{case_id}}", "case_id"),
    ("POST", f"{C}/cases/{{case_id}}/nudge", "case_id"), ("POST", f"{C}/cases/{{case_id}}/cancel", "case_id"),
    ("POST", f"{C}/cases/{{case_id}}/cancel-membership", "case_id"),
    ("POST", f"{C}/cases/{{case_id}}/terminate", "case_id"),
    ("POST", f"{C}/cases/{{case_id}}/retry", "case_id"),
    ("GET", f"{C}/memberships/{{membership_id}}", "membership_id"),
    ("GET", f"{C}/memberships/{{membership_id}}/manage-url", "membership_id"),
    ("GET", "/r/{token}", "token"), ("GET", "/dashboard/{company_id}", "company_id"),
    ("GET", f"{C}/experiments/{{experiment_id}}", "experiment_id"),
    ("POST", f"{C}/experiments/{{experiment_id}}/stop", "experiment_id"),
]


def _assert_handled(resp: Any, where: str) -> None:
    assert resp.status_code < 500, (where, resp.status_code, resp.body[:300])
    if resp.headers.get("Content-Type", "").startswith("application/json"):
        body = json.loads(resp.body)
        if resp.status_code >= 400:
            assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), (where, body)


def test_the_lists_cover_every_documented_parameter() -> None:
    from tests.test_api_support import DOC

    documented_query = {(path, p["name"]) for path, ops in DOC["paths"].items() for op in ops.values()
                        for p in op.get("parameters", []) if p["in"] == "query"}
    assert documented_query == set(QUERY_PARAMS)
    documented_path = {(m.upper(), path, p["name"]) for path, ops in DOC["paths"].items()
                       for m, op in ops.items() for p in op.get("parameters", []) if p["in"] == "path"}
    covered = set(PATH_PARAMS) | {(m, t, "company_id") for m, t, _ in PATH_PARAMS if t.startswith(C)}
    covered |= {("PUT", f"{C}/settings", "company_id"), ("GET", f"{C}/kpis", "company_id"),
                ("GET", f"{C}/cases", "company_id"), ("GET", f"{C}/cases/export.csv", "company_id"),
                ("GET", f"{C}/kpis/cohorts", "company_id"), ("GET", f"{C}/experiments", "company_id"),
                ("POST", f"{C}/experiments", "company_id")}
    assert documented_path <= covered


@pytest.mark.parametrize(("template", "param"), QUERY_PARAMS,
                         ids=[f"{t[len(C):] or t}?{p}" for t, p in QUERY_PARAMS])
def test_hostile_query_values(api: Api, template: str, param: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib import ratelimit

    monkeypatch.setenv("RATE_LIMIT_EXPORT", "100")  # every hostile value reaches the export's handler
    ratelimit.get_limits.cache_clear()
    api.open_case()
    path = template.format(company_id=ALPHA)
    for name, value in HOSTILE:
        resp = api.request("GET", f"{path}?{param}={value}")
        _assert_handled(resp, f"{path}?{param}=<{name}>")
        if param in ("q", "cursor") and name in CONTROL:
            assert resp.status_code == 400, (name, resp.body)
            fields = json.loads(resp.body)["error"]["fields"]
            assert list(fields) == [param] and "must not contain control characters" in fields[param]
        if param == "decline_class":  # an enum: nothing hostile is one of its values
            assert resp.status_code == 400, (name, resp.body)
            assert "decline_class" in json.loads(resp.body)["error"].get("fields", {}), (name, resp.body)
    # the SQL never ran: the table is there and so is the case
    assert api.rows(ALPHA, "SELECT count(*) AS n FROM recovery_cases")[0]["n"] == 1


def test_search_treats_sql_and_wildcards_as_text(api: Api) -> None:
    api.open_case(membership="mem_1")
    for value in ("' OR '1'='1' --", "%", "_", "mem\\_1", "mem%"):
        resp = api.request("GET", f"/api/companies/{ALPHA}/cases?q={quote(value, safe='')}")
        assert resp.status_code == 200 and json.loads(resp.body)["items"] == [], value
    resp = api.request("GET", f"/api/companies/{ALPHA}/cases?q=mem_")
    assert len(json.loads(resp.body)["items"]) == 1  # a real prefix still matches


@pytest.mark.parametrize(("method", "template", "param"), PATH_PARAMS,
                         ids=[f"{m} {t}:{p}" for m, t, p in PATH_PARAMS])
def test_hostile_path_values(api: Api, method: str, template: str, param: str) -> None:
    case_id = api.open_case()
    defaults = {"company_id": ALPHA, "case_id": case_id, "membership_id": "mem_1", "token": "t" * 43,
                "experiment_id": api.add_experiment()}
    for name, value in HOSTILE:
        path = template.format(**{**defaults, param: value})
        body = {"confirm": True} if template.endswith("terminate") else None
        resp = api.request(method, path, body=body)
        _assert_handled(resp, f"{method} {template} {param}=<{name}>")
        assert resp.status_code in (400, 403, 404, 429), (name, resp.status_code)
    assert api.case(case_id)["status"] == "open"  # no hostile id ever reached an action


@pytest.mark.parametrize("field", ["timezone", "push_experience_id", "quiet_hours.start"])
def test_hostile_settings_fields(api: Api, field: str) -> None:
    for _name, raw in HOSTILE:
        from urllib.parse import unquote

        value = unquote(raw, errors="surrogateescape")
        body: dict[str, Any] = {field: value}
        if field == "quiet_hours.start":
            body = {"quiet_hours": {"start": value, "end": "08:00"}}
        try:
            payload = json.dumps(body).encode("utf-8", "surrogatepass")
        except UnicodeEncodeError:
            continue
        resp = api.request("PUT", f"/api/companies/{ALPHA}/settings", raw=payload)
        _assert_handled(resp, f"settings {field}")
        assert resp.status_code == 400
    assert api.rows(ALPHA, "SELECT count(*) AS n FROM creator_settings")[0]["n"] == 0


@pytest.mark.parametrize("raw", [b"\x00", b'{"incentive_days": 1}\x00', b'{"timezone": "\\u0000"}',
                                 b"\xff\xfe", b'{"a":' * 5000, b"[]", b'"x"', b"null", b"{}" + b" " * 20000],
                         ids=["nul", "trailing nul", "escaped nul", "not utf-8", "deep nesting", "array",
                              "string", "null", "oversized"])
def test_hostile_bodies(api: Api, raw: bytes) -> None:
    case_id = api.open_case()
    for method, path in (("PUT", f"/api/companies/{ALPHA}/settings"),
                         ("POST", f"/api/companies/{ALPHA}/cases/{case_id}/terminate")):
        resp = api.request(method, path, raw=raw)
        _assert_handled(resp, f"{method} {path}")
        assert resp.status_code in (400, 413), (resp.status_code, resp.body)
    assert api.case(case_id)["status"] == "open"
