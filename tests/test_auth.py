"""Creator authentication: the token matrix on every creator route, the JWKS cache and its bounded
refresh, the admin check and its cache, and what happens when Whop is unreachable."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from chalicelib import auth
from chalicelib.auth import AccessCache, Authenticator, KeySet, TokenVerifier, fetch_jwks, parse_jwks
from chalicelib.errors import Forbidden, ServiceUnavailable, Unauthorized
from scripts.fake_whop import FakeWhop
from tests.test_api_support import ADMIN_A, ADMIN_B, ALPHA, BRAVO, CUSTOMER, DOC, Api, api_fixture  # noqa: F401

C = "/api/companies/{company_id}"
# Every creator route, a body that an admin may send, and the status an admin gets.
ROUTES: list[tuple[str, str, Any]] = [
    ("GET", f"{C}/settings", None),
    ("PUT", f"{C}/settings", {"incentive_days": 3}),
    ("GET", f"{C}/kpis", None),
    ("GET", f"{C}/cases", None),
    ("GET", f"{C}/cases/export.csv", None),
    ("GET", f"{C}/cases/{{case_id}}", None),
    ("POST", f"{C}/cases/{{case_id}}/nudge", None),
    ("POST", f"{C}/cases/{{case_id}}/cancel", None),
    ("POST", f"{C}/cases/{{case_id}}/cancel-membership", None),
    ("POST", f"{C}/cases/{{case_id}}/terminate", {"confirm": True}),
    ("POST", f"{C}/cases/{{case_id}}/retry", None),
    ("GET", f"{C}/memberships/{{membership_id}}", None),
    ("GET", f"{C}/memberships/{{membership_id}}/manage-url", None),
    ("GET", f"{C}/kpis/cohorts", None),
    ("GET", f"{C}/experiments", None),
    ("POST", f"{C}/experiments", {"name": "first copy test",
                                  "variants": [{"name": "control", "weight": 1},
                                               {"name": "short", "weight": 1, "dm_body": "Fix it: {link}"}]}),
    ("GET", f"{C}/experiments/{{experiment_id}}", None),
    ("POST", f"{C}/experiments/{{experiment_id}}/stop", None),
]


def _tamper(token: str) -> str:
    head, payload, signature = token.split(".")
    flipped = ("A" if signature[5] != "A" else "B")
    return f"{head}.{payload}.{signature[:5]}{flipped}{signature[6:]}"


BAD_TOKENS: dict[str, Callable[[FakeWhop], str | None]] = {
    "no token": lambda f: None,
    "malformed": lambda f: "not-a-jwt",
    "three garbage parts": lambda f: "abc.def.ghi",
    "bad signature": lambda f: _tamper(f.mint_user_token(ADMIN_A)),
    "signed by a key not in the JWKS": lambda f: f.mint_user_token(ADMIN_A, foreign_key=True),
    "expired": lambda f: f.mint_user_token(ADMIN_A, expires_in=-3600),
    "not yet valid": lambda f: f.mint_user_token(ADMIN_A, extra_claims={"nbf": int(time.time()) + 3600}),
    "no expiry": lambda f: f.mint_user_token(ADMIN_A, extra_claims={"exp": None}),
    "wrong issuer": lambda f: f.mint_user_token(ADMIN_A, issuer="urn:someone:else"),
    "wrong audience": lambda f: f.mint_user_token(ADMIN_A, audience="app_someone_else"),
    "audience list": lambda f: f.mint_user_token(ADMIN_A, extra_claims={"aud": [f.app_id]}),
    "no subject": lambda f: f.mint_user_token(ADMIN_A, extra_claims={"sub": None}),
    "alg none": lambda f: f.mint_user_token(ADMIN_A, alg="none"),
    "HS256 signed with the public key": lambda f: f.mint_user_token(ADMIN_A, alg="HS256"),
    "unknown kid": lambda f: f.mint_user_token(ADMIN_A, kid="kid-nobody-knows"),
}


def test_the_matrix_covers_every_creator_route_in_the_document() -> None:
    documented = {(m.upper(), p) for p, ops in DOC["paths"].items() if p.startswith("/api/companies/")
                  for m in ops}
    assert documented == {(m, t) for m, t, _ in ROUTES}


@pytest.mark.parametrize(("method", "template", "body"), ROUTES,
                         ids=[f"{m} {t[len(C):]}" for m, t, _ in ROUTES])
def test_auth_matrix(api: Api, method: str, template: str, body: Any) -> None:
    case_id = api.open_case()
    api.whop.add_membership("mem_1", company_id=ALPHA, user_id="user_1")
    payment = api.rows(ALPHA, "SELECT payment_id FROM recovery_cases")[0]["payment_id"]
    api.whop.add_payment(payment, company_id=ALPHA, membership_id="mem_1", user_id="user_1")  # to retry
    experiment_id = api.add_experiment(status="stopped")
    params = {"case_id": case_id, "membership_id": "mem_1", "experiment_id": experiment_id}

    # GIVEN a token that fails verification THEN 401, and Whop is never asked about access
    for name, make in BAD_TOKENS.items():
        token = make(api.whop)
        resp, err = api.call(method, template, params=params, body=body, user=None, token=token)
        assert resp.status_code == 401, (name, resp.status_code, resp.body)
        assert err["error"]["code"] == "unauthorized", name
    assert api.whop.calls_to("GET", r"/users/.*/access/.*") == []

    # GIVEN a valid token of a customer, or of another company's admin THEN 403
    for user in (CUSTOMER, ADMIN_B):
        resp, err = api.call(method, template, params=params, body=body, user=user, status=403)
        assert err["error"]["code"] == "forbidden"
        assert case_id not in resp.body.decode()

    # AND the same token on the path of an id that cannot be a company: 403, Whop not asked
    asked = len(api.whop.calls_to("GET", r"/users/.*/access/.*"))
    api.call(method, template, params={**params, "company_id": "not-a-company"}, body=body, status=403)
    assert len(api.whop.calls_to("GET", r"/users/.*/access/.*")) == asked

    # GIVEN the company's admin THEN 2xx (with the rate-limit headers)
    ok = 201 if (method, template) == ("POST", f"{C}/experiments") else 200
    resp, _ = api.call(method, template, params=params, body=body, user=ADMIN_A, status=ok)
    assert resp.headers["X-RateLimit-Limit"].isdigit()


def test_a_token_within_the_clock_skew_leeway_is_accepted(api: Api) -> None:
    fresh = api.token(ADMIN_A, expires_in=-10)  # expired 10 s ago: inside the 30 s leeway
    api.call("GET", f"{C}/settings", token=fresh, status=200)
    stale = api.token(ADMIN_A, expires_in=-(auth.LEEWAY_S + 30))
    _, err = api.call("GET", f"{C}/settings", token=stale, status=401)
    assert err["error"]["message"] == "user token expired"


def test_keys_are_fetched_once_and_reused(api: Api) -> None:
    for _ in range(5):
        api.call("GET", f"{C}/settings", status=200)
    assert len(api.whop.calls_to("GET", r"/\.well-known/jwks\.json")) == 1


def test_junk_kids_cannot_hammer_the_jwks_endpoint(api: Api) -> None:
    api.call("GET", f"{C}/settings", status=200)  # keys loaded
    for i in range(25):
        api.call("GET", f"{C}/settings", token=api.token(ADMIN_A, kid=f"junk-{i}"), status=401)
    # One fetch for the first request, at most one refresh for all the junk (30 s cooldown).
    assert len(api.whop.calls_to("GET", r"/\.well-known/jwks\.json")) <= 2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _authenticator(fake: FakeWhop, clock: Clock, fetched: list[str] | None = None) -> Authenticator:
    from chalicelib.whop_client import get_whop

    def fetch(url: str) -> Any:
        if fetched is not None:
            fetched.append(url)
        return fetch_jwks(url)

    keys = KeySet(fake.jwks_url, fetch=fetch, clock=clock)
    return Authenticator(TokenVerifier(keys, fake.app_id), AccessCache(get_whop(), clock=clock))


def test_a_rotated_key_is_picked_up_once_the_refresh_cooldown_allows(api: Api) -> None:
    clock = Clock()
    fetched: list[str] = []
    authenticator = _authenticator(api.whop, clock, fetched)
    auth.set_authenticator(authenticator)
    api.call("GET", f"{C}/settings", status=200)
    clock.now += 1
    api.whop.rotate_key()  # Whop starts signing with a key our cache has not seen
    # The unknown kid triggers a refresh right away (the last fetch was long enough ago? no: 1 s).
    resp, _ = api.call("GET", f"{C}/settings")
    assert resp.status_code == 401  # inside the 30 s cooldown: no new fetch, key unknown
    clock.now += auth.JWKS_MIN_REFRESH_S
    api.call("GET", f"{C}/settings", status=200)
    assert fetched == [api.whop.jwks_url] * 2


def test_admin_answers_are_cached_briefly_and_a_revoked_admin_loses_access_after(api: Api) -> None:
    clock = Clock()
    auth.set_authenticator(_authenticator(api.whop, clock))
    for _ in range(3):
        api.call("GET", f"{C}/settings", status=200)
    assert len(api.whop.calls_to("GET", rf"/users/{ADMIN_A}/access/{ALPHA}")) == 1
    api.whop.set_access(ADMIN_A, ALPHA, "customer")
    clock.now += auth.ADMIN_TTL_S - 1
    api.call("GET", f"{C}/settings", status=200)  # still cached (at most 60 s)
    clock.now += 2
    api.call("GET", f"{C}/settings", status=403)
    assert len(api.whop.calls_to("GET", rf"/users/{ADMIN_A}/access/{ALPHA}")) == 2


def test_whop_unreachable_during_the_access_check_is_503_not_403(api: Api) -> None:
    api.whop.inject("GET", r"/users/.*/access/.*", "503", times=None)
    resp, err = api.call("GET", f"{C}/settings", status=503)
    assert resp.headers["Retry-After"] == "5" and err["error"]["code"] == "unavailable"
    api.whop.clear_faults()
    api.call("GET", f"{C}/settings", status=200)  # the failure was not cached as a denial


def test_jwks_unreachable_with_no_cached_keys_is_503(api: Api) -> None:
    api.whop.inject("GET", r"/\.well-known/jwks\.json", "500", times=1)
    api.call("GET", f"{C}/settings", status=503)


def test_another_companys_admin_gets_403_even_for_a_company_they_do_know(api: Api) -> None:
    api.call("GET", f"{C}/settings", user=ADMIN_B, status=403)
    api.call("GET", f"{C}/settings", user=ADMIN_B, params={"company_id": BRAVO}, status=200)


# --- unit: the verifier alone ------------------------------------------------------------------


def test_parse_jwks_keeps_only_p256_signing_keys(fake_whop: FakeWhop) -> None:
    good = fake_whop.jwks()["keys"][0]
    doc = {"keys": [good, {**good, "kid": "rsa", "kty": "RSA"}, {**good, "kid": "enc", "use": "enc"},
                    {**good, "kid": "hs", "alg": "HS256"}, {**good, "kid": "p384", "crv": "P-384"},
                    "junk", {**good, "kid": "broken", "x": "AAAA"}]}
    assert list(parse_jwks(doc)) == [good["kid"]]
    assert parse_jwks({"nope": 1}) == {} and parse_jwks(["x"]) == {}


def test_a_token_without_kid_is_tried_against_every_key(fake_whop: FakeWhop) -> None:
    verifier = TokenVerifier(KeySet(fake_whop.jwks_url), fake_whop.app_id)
    assert verifier.verify(fake_whop.mint_user_token("user_x", kid="")) == "user_x"


def test_errors_raised_by_the_verifier_and_the_authenticator(fake_whop: FakeWhop) -> None:
    from chalicelib.whop_client import WhopClient

    verifier = TokenVerifier(KeySet(fake_whop.jwks_url), fake_whop.app_id)
    with pytest.raises(Unauthorized):
        verifier.verify("x" * (auth.MAX_TOKEN_LENGTH + 1))
    with pytest.raises(Unauthorized):
        verifier.verify(jwt.encode({"sub": "u"}, "k" * 64, algorithm="HS512"))
    with WhopClient(api_key=fake_whop.api_key, base_url=fake_whop.base_url, sleep=lambda _: None) as client:
        authenticator = Authenticator(verifier, AccessCache(client, budget=lambda _user: None))
        fake_whop.set_access("user_x", ALPHA, "admin")
        creator = authenticator.authenticate(fake_whop.mint_user_token("user_x"), ALPHA)
        assert (creator.user_id, creator.company_id) == ("user_x", ALPHA)
        with pytest.raises(Forbidden):
            authenticator.authenticate(fake_whop.mint_user_token("user_y"), ALPHA)
        fake_whop.inject("GET", r"/users/.*/access/.*", "401", times=1)
        with pytest.raises(ServiceUnavailable):  # our API key refused: our problem, never a 403
            authenticator.authenticate(fake_whop.mint_user_token("user_z"), ALPHA)


def test_the_401_body_never_echoes_the_token(api: Api) -> None:
    token = api.token(ADMIN_A, audience="app_someone_else")
    resp, _ = api.call("GET", f"{C}/settings", token=token, status=401)
    assert token not in resp.body.decode()
    assert json.loads(resp.body)["error"]["message"] == "invalid user token"
