"""Issue 9 item 6 (redirect targets) and issue 8 item 5 (clicks): a tracked link only ever sends
a member to https on a Whop host, never answers 500 for a poisoned URL, counts every click but
writes at most one ledger row per case per hour, is limited per token before any look-up, and
a creator's actions always stay in the case timeline."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from chalicelib import config
from chalicelib.links import follow, safe_redirect
from chalicelib.whop_client import get_whop
from tests.test_api_support import ALPHA, NOW, Api, api_fixture  # noqa: F401

HOSTS = ("whop.com", "*.whop.com")
MANAGE = "https://whop.com/billing/manage/mem_1"


@pytest.mark.parametrize("url", [
    "http://evil.example", "https://evil.example/pay", "http://whop.com/pay", "https://whop.com.evil.example/",
    "https://evilwhop.com/", "https://user:pw@whop.com/", "https://whop.com:8443/", "javascript:alert(1)",
    "//whop.com/x", "https://whop.com/a\r\nSet-Cookie: x=1", "https://whop.com/\x00", "https://whop.com/ a",
    "https://whop.com\\@evil.example/", "https://whop.com/\u2028", "data:text/html,hi", "", None,
    "https://" + "a" * 3000 + ".whop.com/",
])
def test_unsafe_targets_are_refused(url: str | None) -> None:
    assert safe_redirect(url, HOSTS) is None


@pytest.mark.parametrize("url", ["https://whop.com/checkout/3ds/pay_1", "https://sub.whop.com/x?y=1#z",
                                 "https://WHOP.com/x", "https://whop.com:443/x"])
def test_https_on_whop_hosts_is_allowed(url: str) -> None:
    assert safe_redirect(url, HOSTS) == url


def test_loopback_http_is_a_development_convenience_only() -> None:
    url = "http://127.0.0.1:8100/_fake/manage/mem_1"
    assert safe_redirect(url, HOSTS) is None
    assert safe_redirect(url, HOSTS, allow_loopback_http=True) == url


def _case_with(api: Api, *, recovery_url: str | None, manage_url: str | None,
               membership: str = "mem_1") -> tuple[str, str]:
    case_id = api.open_case(membership=membership)
    api.rows(ALPHA, "UPDATE recovery_cases SET recovery_url = :r, manage_url = :m"
                    " WHERE id = CAST(:id AS uuid) RETURNING id", r=recovery_url, m=manage_url, id=case_id)
    return case_id, str(api.case(case_id)["link_token"])


@pytest.mark.parametrize("poison", ["http://evil.example", "https://whop.com/pay\r\nX-Evil: 1",
                                    "https://whop.com/\x07", "https://whop.com/\tx", "https://evil.example/\u202e"])
def test_a_poisoned_recovery_url_falls_back_to_the_manage_url(api: Api, poison: str) -> None:
    case_id, token = _case_with(api, recovery_url=poison, manage_url=MANAGE)
    resp = api.client.http.get(f"/r/{token}")
    assert resp.status_code == 302 and resp.headers["Location"] == MANAGE
    assert api.case(case_id)["link_clicks"] == 1


def test_with_no_safe_target_anywhere_the_member_gets_a_page_saying_what_to_do(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIRECT_HOSTS", "whop.com")
    config.reset_config()
    # Whop's own manage_url is the fake's loopback http URL: refused here, as in production.
    monkeypatch.setattr("chalicelib.links._safe", lambda url: safe_redirect(url, ("whop.com",)))
    api.whop.add_membership("mem_1", company_id=ALPHA, user_id="user_1", manage_url="http://evil.example/m")
    _, token = _case_with(api, recovery_url="http://evil.example", manage_url="javascript:alert(1)")
    resp = api.client.http.get(f"/r/{token}")
    assert resp.status_code == 200
    assert "Location" not in resp.headers and "evil" not in resp.body.decode()
    assert "Open Whop" in resp.body.decode()


def test_the_production_allowlist_comes_from_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIRECT_HOSTS", "pay.example.com, *.whop.com")
    config.reset_config()
    try:
        assert config.get_config().redirect_hosts == ("pay.example.com", "*.whop.com")
        monkeypatch.setenv("REDIRECT_HOSTS", "evil.com/path")
        config.reset_config()
        with pytest.raises(config.ConfigError, match="REDIRECT_HOSTS"):
            config.get_config()
    finally:
        monkeypatch.undo()
        config.reset_config()


# --- clicks (issue 8 item 5) ---------------------------------------------------------------------


def _click_rows(api: Api, case_id: str) -> list[dict[str, Any]]:
    return api.rows(ALPHA, "SELECT idempotency_key FROM recovery_actions WHERE case_id = CAST(:id AS uuid)"
                           " AND kind = 'link_click'", id=case_id)


def test_505_clicks_count_505_but_write_at_most_one_ledger_row_per_hour(api: Api) -> None:
    case_id, token = _case_with(api, recovery_url=None, manage_url=MANAGE)
    start = NOW.replace(minute=0, second=0, microsecond=0)
    for n in range(505):  # one click a minute for 8 h 25 min: every click inside its own window
        click = follow(token, start + timedelta(minutes=n), get_whop(), api.db)
        assert click.status == "redirect"
    assert api.case(case_id)["link_clicks"] == 505
    rows = _click_rows(api, case_id)
    hours = [r["idempotency_key"].rsplit(":", 1)[1] for r in rows]
    assert len(hours) == len(set(hours)) == 9  # hours 0..8, one row each
    # A creator's manual nudge after all that is in the timeline.
    api.call("POST", "/api/companies/{company_id}/cases/{case_id}/nudge", params={"case_id": case_id},
             status=200)
    _, detail = api.call("GET", "/api/companies/{company_id}/cases/{case_id}", params={"case_id": case_id},
                         status=200)
    assert any(item["type"] == "manual_nudge" for item in detail["timeline"])
    assert sum(item["type"] == "link_click" for item in detail["timeline"]) == 9


def test_many_clicks_in_one_hour_write_one_ledger_row(api: Api) -> None:
    case_id, token = _case_with(api, recovery_url=None, manage_url=MANAGE)
    hour = NOW.replace(minute=0, second=0, microsecond=0)
    for n in range(20):
        follow(token, hour + timedelta(seconds=n * 170), get_whop(), api.db)
    assert api.case(case_id)["link_clicks"] == 20 and len(_click_rows(api, case_id)) == 1


@pytest.mark.usefixtures("frozen_windows")
def test_a_link_is_limited_per_token_before_it_is_looked_up(api: Api) -> None:
    case_id, token = _case_with(api, recovery_url=None, manage_url=MANAGE)
    statuses = [api.client.http.get(f"/r/{token}").status_code for _ in range(35)]
    assert statuses[:30] == [302] * 30 and set(statuses[30:]) == {429}
    assert api.case(case_id)["link_clicks"] == 30  # refused clicks touched no case
    resp = api.client.http.get(f"/r/{token}")
    assert int(resp.headers["Retry-After"]) >= 1
    # An unknown (well-formed) token is limited the same way: no tenant is needed for the limit.
    unknown = "u" * 43
    codes = {api.client.http.get(f"/r/{unknown}").status_code for _ in range(32)}
    assert codes == {404, 429}
    # Another link is not affected.
    _, other = _case_with(api, recovery_url=None, manage_url=MANAGE, membership="mem_2")
    assert api.client.http.get(f"/r/{other}").status_code == 302


def test_creator_actions_stay_in_a_timeline_flooded_by_other_rows(api: Api) -> None:
    case_id = api.open_case()
    api.rows(ALPHA, "INSERT INTO recovery_actions (case_id, company_id, kind, step, status, idempotency_key,"
                    " actor, created_at) VALUES (CAST(:c AS uuid), :co, 'creator_cancel', 'x', 'done', :k,"
                    " 'user_admin_alpha', now() - interval '3 days') RETURNING id",
             c=case_id, co=ALPHA, k=str(uuid.uuid4()))
    api.rows(ALPHA, "INSERT INTO recovery_actions (case_id, company_id, kind, step, status, idempotency_key,"
                    " actor, created_at) SELECT CAST(:c AS uuid), :co, 'link_click', 'click', 'done',"
                    " 'flood-' || g, 'member', now() - interval '2 days' + g * interval '1 second'"
                    " FROM generate_series(1, 600) g RETURNING id", c=case_id, co=ALPHA)
    _, detail = api.call("GET", "/api/companies/{company_id}/cases/{case_id}", params={"case_id": case_id},
                         status=200)
    actions = [i for i in detail["timeline"] if i["source"] == "action"]
    assert actions[0]["type"] == "creator_cancel"  # the oldest, still there, in time order
    assert len(actions) == 501  # the 500 newest + the creator's
    stamps = [i["at"] for i in detail["timeline"]]
    assert stamps == sorted(stamps)
