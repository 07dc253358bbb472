"""Every text field of every route refuses lone surrogates, U+FFFE/U+FFFF, NUL and bidi overrides
with a 400 naming the field (issue 20 item 6). The fields are found by walking the OpenAPI
document the app serves, so a text field added later is swept without touching this file
(schemathesis cannot generate lone surrogates, so the fuzz run never tries them).

Request bodies are JSON: a lone surrogate arrives as the escape ``\\ud83d``, which Python's JSON
parser turns into a real lone surrogate; the database could not store it (it used to be a 500).
Query strings are bytes: the same characters arrive percent-encoded as UTF-8 (a lone surrogate as
its CESU-8 bytes, which no UTF-8 decoder accepts).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.test_api_support import ALPHA, DOC, Api, api_fixture  # noqa: F401

BAD = {"lone surrogate": "\ud83d", "U+FFFE": "\ufffe", "U+FFFF": "\uffff", "NUL": "\x00",
       "RTL override": "\u202e", "LTR embedding": "\u202a", "RTL isolate": "\u2067"}
BAD_QUERY = {"lone surrogate": "%ED%A0%BD", "U+FFFE": "%EF%BF%BE", "U+FFFF": "%EF%BF%BF", "NUL": "%00",
             "RTL override": "%E2%80%AE", "LTR embedding": "%E2%80%AA", "RTL isolate": "%E2%81%A7"}

# A body each operation accepts: the sweep changes one text field of it at a time.
VALID_BODIES: dict[tuple[str, str], Any] = {
    ("put", "/api/companies/{company_id}/settings"): {
        "timezone": "Europe/Berlin", "push_experience_id": "exp_alpha", "quiet_hours": {"start": "22:00",
                                                                                         "end": "08:00"}},
    ("post", "/api/companies/{company_id}/experiments"): {
        "name": "short push", "variants": [
            {"name": "control", "weight": 1, "push_title": "Fix it", "push_body": "Fix {product}: {link}",
             "dm_body": "Please fix {link}"},
            {"name": "short", "weight": 1}]},
    ("post", "/api/companies/{company_id}/cases/{case_id}/terminate"): {"confirm": True},
}


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = DOC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _is_text(schema: dict[str, Any]) -> bool:
    schema = _resolve(schema)
    if schema.get("type") == "string" and "enum" not in schema:
        return True
    return any(_is_text(option) for option in schema.get("anyOf", []))


def text_fields(schema: dict[str, Any], path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every writable text field under ``schema``: a path of property names and list indexes."""
    schema = _resolve(schema)
    if schema.get("readOnly"):
        return []
    if _is_text(schema):
        return [path]
    found: list[tuple[str | int, ...]] = []
    for option in schema.get("anyOf", []):
        found += [p for p in text_fields(option, path) if p not in found]
    for name, prop in schema.get("properties", {}).items():
        found += text_fields(prop, (*path, name))
    if "items" in schema:
        found += text_fields(schema["items"], (*path, 0))
    return found


BODY_FIELDS = sorted(
    ((method, template, field) for template, ops in DOC["paths"].items() if template.startswith("/api/")
     for method, op in ops.items() if "requestBody" in op
     for field in text_fields(op["requestBody"]["content"]["application/json"]["schema"])),
    key=str)
QUERY_FIELDS = sorted(
    (template, p["name"]) for template, ops in DOC["paths"].items() if template.startswith("/api/companies/")
    for op in ops.values() for p in op.get("parameters", []) if p["in"] == "query" and _is_text(p["schema"]))


def test_the_sweep_finds_the_text_fields_we_know_of() -> None:
    # If this fails because a field was added, the sweep below already covers it: update the list.
    names = {".".join(str(p) for p in field) for _, _, field in BODY_FIELDS}
    assert {"timezone", "push_experience_id", "quiet_hours.start", "quiet_hours.end", "name",
            "variants.0.name", "variants.0.push_title", "variants.0.push_body", "variants.0.dm_body"} <= names
    assert {name for _, name in QUERY_FIELDS} == {"q", "cursor"}
    assert {(m, t) for m, t, _ in BODY_FIELDS} <= set(VALID_BODIES)


def _with(body: Any, field: tuple[str | int, ...], value: str) -> Any:
    changed = copy.deepcopy(body)
    target = changed
    for step in field[:-1]:
        target = target.setdefault(step, {}) if isinstance(step, str) else target[step]
    target[field[-1]] = value
    return changed


@pytest.mark.parametrize(("method", "template", "field"), BODY_FIELDS,
                         ids=[f"{m} {t[len('/api/companies/{company_id}'):]} {'.'.join(map(str, f))}"
                              for m, t, f in BODY_FIELDS])
def test_every_body_text_field_refuses_unsafe_characters(api: Api, method: str, template: str,
                                                         field: tuple[str | int, ...]) -> None:
    api.whop.add_experience(ALPHA, "other_app", "exp_alpha")
    case_id = api.open_case()
    path = template.format(company_id=ALPHA, case_id=case_id)
    name = ".".join(str(p) for p in field)
    for label, bad in BAD.items():
        body = _with(VALID_BODIES[(method, template)], field, f"pay {bad} {{link}}")
        payload = json.dumps(body).encode()  # ensure_ascii: a lone surrogate travels as \ud83d
        resp = api.request(method.upper(), path, raw=payload)
        assert resp.status_code == 400, (name, label, resp.status_code, resp.body[:300])
        error = json.loads(resp.body)["error"]
        assert name in error.get("fields", {}), (name, label, error)
    # Nothing was stored on the way: no experiment, no settings row.
    assert api.rows(ALPHA, "SELECT count(*) AS n FROM experiments")[0]["n"] == 0
    assert api.rows(ALPHA, "SELECT count(*) AS n FROM creator_settings")[0]["n"] == 0


@pytest.mark.parametrize(("template", "param"), QUERY_FIELDS, ids=[f"{t}?{p}" for t, p in QUERY_FIELDS])
def test_every_query_text_field_refuses_unsafe_characters(api: Api, template: str, param: str) -> None:
    path = template.format(company_id=ALPHA)
    for label, bad in BAD_QUERY.items():
        resp = api.request("GET", f"{path}?{param}=mem{bad}1")
        assert resp.status_code == 400, (param, label, resp.status_code, resp.body[:300])
        assert param in json.loads(resp.body)["error"].get("fields", {}), (param, label, resp.body)


def test_the_same_characters_are_fine_where_they_are_only_text(api: Api) -> None:
    # Emoji (a surrogate pair in JSON), accents, CJK and a zero-width joiner are ordinary text.
    body = copy.deepcopy(VALID_BODIES[("post", "/api/companies/{company_id}/experiments")])
    body["name"] = "Zahlung 💳 ünïcödé 中文 👩\u200d💻"
    body["variants"][0]["dm_body"] = "Bitte 💳 aktualisieren: {link}\nDanke"
    resp = api.request("POST", f"/api/companies/{ALPHA}/experiments", raw=json.dumps(body).encode())
    assert resp.status_code == 201, resp.body
    assert json.loads(resp.body)["name"] == body["name"]
