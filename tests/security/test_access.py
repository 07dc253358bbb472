"""Issue 9 items 3, 4 and 7: one token cannot fan out Whop calls, destructive actions re-check
admin access uncached, token lifetimes are bounded, the JWKS cache keeps good keys, creators
see our error messages, and ``?token=`` is a development-only convenience."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from chalicelib import auth, config
from chalicelib.auth import KeySet, TokenVerifier
from chalicelib.errors import Unauthorized
from chalicelib.whop_client import get_whop
from scripts.fake_whop import FakeWhop
from tests.test_api_support import ADMIN_A, ALPHA, Api, api_fixture  # noqa: F401

C = "/api/companies/{company_id}"
ACCESS = r"/users/.*/access/.*"


# --- item 3: the fan-out limit --------------------------------------------------------------------


@pytest.mark.usefixtures("frozen_windows")
def test_one_token_cannot_make_rebound_call_whop_once_per_company_id(api: Api) -> None:
    token = api.token("user_customer_x", expires_in=600)
    statuses = []
    for n in range(60):  # 60 made-up company ids, one customer token
        resp = api.request("GET", f"/api/companies/biz_madeup{n}/settings", token=token)
        statuses.append(resp.status_code)
    calls = api.whop.calls_to("GET", ACCESS)
    limit = 20  # RATE_LIMIT_ACCESS_CHECKS default
    assert len(calls) == limit, len(calls)
    assert statuses[:limit] == [403] * limit
    assert set(statuses[limit:]) == {429}
    resp = api.request("GET", "/api/companies/biz_madeup99/settings", token=token)
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1
    assert resp.headers["X-RateLimit-Limit"] == str(limit) and resp.headers["X-RateLimit-Remaining"] == "0"
    assert json.loads(resp.body)["error"]["code"] == "rate_limited"


@pytest.mark.usefixtures("frozen_windows")
def test_the_budget_is_per_user_and_cached_answers_cost_nothing(api: Api) -> None:
    # A real admin reading their own company again and again: one Whop call, never limited.
    for _ in range(30):
        api.call("GET", f"{C}/settings", status=200)
    assert len(api.whop.calls_to("GET", ACCESS)) == 1
    # Another user spending their budget does not touch this admin's.
    other = api.token("user_spender", expires_in=600)
    for n in range(25):
        api.request("GET", f"/api/companies/biz_spend{n}/settings", token=other)
    api.call("GET", f"{C}/kpis", status=200)


def test_a_denied_user_over_budget_costs_no_database_round_trip(api: Api) -> None:
    checks: list[str] = []

    def budget(user_id: str) -> tuple[bool, float, dict[str, str]]:
        checks.append(user_id)
        return False, 30.0, {"Retry-After": "30"}

    access = auth.AccessCache(get_whop(), budget=auth.WhopAccessBudget(check=budget))
    verifier = TokenVerifier(KeySet(api.whop.jwks_url), api.whop.app_id)
    auth.set_authenticator(auth.Authenticator(verifier, access))
    token = api.token("user_blocked")
    for n in range(5):
        assert api.request("GET", f"/api/companies/biz_x{n}/settings", token=token).status_code == 429
    assert checks == ["user_blocked"]  # remembered in-process after the first refusal
    assert api.whop.calls_to("GET", ACCESS) == []


# --- item 4: destructive actions re-check access uncached -----------------------------------------


@pytest.mark.parametrize(("action", "body"), [("terminate", {"confirm": True}), ("cancel-membership", None),
                                            ("retry", None)])
def test_a_revoked_admin_cannot_end_a_membership_on_a_cached_answer(api: Api, action: str,
                                                                    body: Any) -> None:
    case_id = api.open_case()
    api.whop.add_membership("mem_1", company_id=ALPHA, user_id="user_1", status="active")
    api.call("GET", f"{C}/settings", status=200)  # admin access is now cached for 60 s
    api.whop.set_access(ADMIN_A, ALPHA, "no_access")  # revoked at Whop
    api.call("POST", f"{C}/cases/{{case_id}}/{action}", params={"case_id": case_id}, body=body,
                       status=403)
    assert api.whop.calls_to("POST", r"/memberships/.*/cancel") == []
    assert api.whop.calls_to("POST", r"/payments/.*/retry") == []  # issue 18: it charges a card
    assert api.whop.membership("mem_1")["status"] == "active"
    # The fresh answer replaced the cached one: the revoked admin is out everywhere now.
    api.call("GET", f"{C}/settings", status=403)


# Every write, and the export, re-checks admin access uncached (issue 20): a revoked admin kept
# export, settings changes, nudges, case cancels and experiments for up to 60 s. Reads may keep
# the cache.
WRITES: list[tuple[str, str, Any]] = [
    ("PUT", f"{C}/settings", {"incentive_days": 2}),
    ("POST", f"{C}/cases/{{case_id}}/nudge", None),
    ("POST", f"{C}/cases/{{case_id}}/cancel", None),
    ("POST", f"{C}/experiments", {"name": "copy", "variants": [{"name": "a", "weight": 1},
                                                                {"name": "b", "weight": 1}]}),
    ("POST", f"{C}/experiments/{{experiment_id}}/stop", None),
    ("GET", f"{C}/cases/export.csv", None),
]


@pytest.mark.parametrize(("method", "template", "body"), WRITES,
                         ids=[f"{m} {t[len(C):]}" for m, t, _ in WRITES])
def test_a_revoked_admin_cannot_write_or_export_on_a_cached_answer(api: Api, method: str, template: str,
                                                                  body: Any) -> None:
    case_id = api.open_case()
    experiment_id = api.add_experiment()
    api.call("GET", f"{C}/settings", status=200)  # admin access is now cached for 60 s
    api.whop.set_access(ADMIN_A, ALPHA, "no_access")  # revoked at Whop
    api.call(method, template, params={"case_id": case_id, "experiment_id": experiment_id}, body=body,
             status=403)
    assert api.case(case_id)["status"] == "open"
    assert api.rows(ALPHA, "SELECT count(*) AS n FROM creator_settings")[0]["n"] == 0
    assert api.rows(ALPHA, "SELECT status FROM experiments") == [{"status": "running"}]


def test_reads_keep_the_cached_answer(api: Api) -> None:
    api.call("GET", f"{C}/settings", status=200)
    before = len(api.whop.calls_to("GET", ACCESS))
    for template in (f"{C}/settings", f"{C}/kpis", f"{C}/cases", f"{C}/experiments"):
        api.call("GET", template, status=200)
    assert len(api.whop.calls_to("GET", ACCESS)) == before  # not one more access check


def test_a_current_admin_is_asked_again_for_each_destructive_action(api: Api) -> None:
    case_id = api.open_case()
    api.whop.add_membership("mem_1", company_id=ALPHA, user_id="user_1", status="active")
    api.call("GET", f"{C}/settings", status=200)
    before = len(api.whop.calls_to("GET", ACCESS))
    api.call("POST", f"{C}/cases/{{case_id}}/cancel-membership", params={"case_id": case_id}, status=200)
    assert len(api.whop.calls_to("GET", ACCESS)) == before + 1
    api.call("POST", f"{C}/cases/{{case_id}}/cancel", params={"case_id": case_id}, status=200)
    assert len(api.whop.calls_to("GET", ACCESS)) == before + 2  # every write asks again (issue 20)
    api.call("GET", f"{C}/settings", status=200)
    assert len(api.whop.calls_to("GET", ACCESS)) == before + 2  # a read keeps the cached answer


# --- item 7: token lifetimes ------------------------------------------------------------------------

DAY = 24 * 3600


@pytest.mark.parametrize("claims", [
    {"iat": int(time.time()), "exp": int(time.time()) + 100 * 365 * DAY},  # a 100-year token
    {"iat": int(time.time()) - 60, "exp": int(time.time()) + DAY + 120},
    {"iat": None, "exp": int(time.time()) + 2 * DAY},                       # no iat, far exp
    {"iat": int(time.time()) - 3 * DAY, "exp": int(time.time()) + 60},      # long-lived, still valid
    {"iat": "yesterday"},
], ids=["100 years", "a day and 2 minutes", "no iat, 2 days ahead", "3-day token", "string iat"])
def test_absurd_token_lifetimes_are_refused(api: Api, claims: dict[str, Any]) -> None:
    token = api.whop.mint_user_token(ADMIN_A, extra_claims=claims)
    _, err = api.call("GET", f"{C}/settings", token=token, user=None, status=401)
    assert err["error"]["code"] == "unauthorized"
    assert api.whop.calls_to("GET", ACCESS) == []


def test_a_token_with_whops_lifetime_is_accepted(api: Api) -> None:
    api.call("GET", f"{C}/settings", token=api.token(ADMIN_A, expires_in=3600), user=None, status=200)
    no_iat = api.whop.mint_user_token(ADMIN_A, extra_claims={"iat": None})
    api.call("GET", f"{C}/settings", token=no_iat, user=None, status=200)


# --- item 7: the JWKS cache keeps the last good keys ----------------------------------------------


@pytest.mark.parametrize("answer", [{"keys": []}, {"keys": [{"kty": "RSA", "kid": "x"}]}, {"nope": 1}])
def test_a_refresh_with_no_usable_keys_keeps_the_good_ones(fake_whop: FakeWhop, answer: Any) -> None:
    documents = [fake_whop.jwks(), answer]
    now = [0.0]
    fetches = [0]

    def fetch(_url: str) -> Any:
        fetches[0] += 1
        return documents.pop(0) if documents else answer

    keys = KeySet("http://jwks.invalid", fetch=fetch, clock=lambda: now[0], ttl_s=10, min_refresh_s=1)
    verifier = TokenVerifier(keys, fake_whop.app_id)
    token = fake_whop.mint_user_token("user_k")
    assert verifier.verify(token) == "user_k"
    now[0] = 11.0  # the TTL passed: the refresh returns nothing usable
    assert verifier.verify(token) == "user_k"
    assert fetches == [2]


def test_an_empty_jwks_with_nothing_cached_verifies_nothing(fake_whop: FakeWhop) -> None:
    verifier = TokenVerifier(KeySet("http://jwks.invalid", fetch=lambda _url: {"keys": []}), fake_whop.app_id)
    with pytest.raises(Unauthorized):
        verifier.verify(fake_whop.mint_user_token("user_k"))


# --- item 7: creators see our messages, Whop's go to the logs ---------------------------------------


def test_whops_error_text_never_reaches_the_creator(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    case_id = api.open_case()
    # Whop refuses with a message naming the member: it must not be shown, nor logged.
    api.whop.add_membership("mem_1", company_id=ALPHA, user_id="user_1", status="canceled")
    resp, err = api.call("POST", f"{C}/cases/{{case_id}}/cancel-membership", params={"case_id": case_id},
                         status=502)
    assert err["error"]["code"] == "whop_error"
    assert "already canceled" not in resp.body.decode().lower()
    assert "Whop" in err["error"]["message"]
    logged = [r for r in caplog.records if r.getMessage() == "whop refused a membership change"]
    assert len(logged) == 1 and logged[0].__dict__["error_code"] == "http_409"
    assert all("already canceled" not in str(r.__dict__).lower() for r in caplog.records)


# --- item 7: ?token= only in development -----------------------------------------------------------


def test_the_dashboard_drops_token_query_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    from chalice.test import Client

    from app import app

    with Client(app) as client:
        assert client.http.get("/dashboard/biz_demo?token=abc").status_code == 200  # test env
        monkeypatch.setenv("APP_ENV", "production")
        for name, value in {"DATABASE_URL": "postgresql://u@/d?host=/tmp", "WHOP_API_KEY": "k",
                            "WHOP_WEBHOOK_SECRET": "ws_x", "WHOP_APP_ID": "app_x",
                            "EVENTS_QUEUE_URL": "https://sqs.example/q",
                            "PUBLIC_BASE_URL": "https://rebound.example"}.items():
            monkeypatch.setenv(name, value)
        config.reset_config()
        # Loaded (and cached) here: chalice's test client patches APP_ENV=development per request.
        assert config.get_config().is_production
        try:
            resp = client.http.get("/dashboard/biz_demo?token=eyJsecret")
            assert resp.status_code == 302 and resp.headers["Location"] == "./biz_demo"
            assert "eyJsecret" not in json.dumps(dict(resp.headers))
            assert client.http.get("/dashboard/biz_demo").status_code == 200
        finally:
            monkeypatch.undo()
            config.reset_config()


def test_an_exports_continuation_parts_ride_on_the_answer_its_first_part_got(api: Api) -> None:
    api.call("GET", f"{C}/settings", status=200)
    before = len(api.whop.calls_to("GET", ACCESS))
    api.call("GET", f"{C}/cases/export.csv", status=200)
    assert len(api.whop.calls_to("GET", ACCESS)) == before + 1  # the export starts: asked again
    resp = api.request("GET", f"/api/companies/{ALPHA}/cases/export.csv?cursor=not-a-real-cursor")
    assert resp.status_code == 400  # (a made-up cursor is refused, after authentication)
    assert len(api.whop.calls_to("GET", ACCESS)) == before + 1  # a continuation part: the cache
