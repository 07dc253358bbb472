"""The case list's per-case figures (``nudges_sent``, ``last_action_at``), its ``decline_class``
filter, and the CSV export honouring every filter of the list across parts (issue 11)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chalicelib import effects, ratelimit
from chalicelib.api import cases as case_views
from tests.test_api_cases import EXPORT, LIST, insert_case
from tests.test_api_support import ADMIN_A, ADMIN_B, ALPHA, BRAVO, DAY, NOW, Api, api_fixture, parse_csv  # noqa: F401

ONE = "/api/companies/{company_id}/cases/{case_id}"


def ledger(api: Api, case_id: str, kind: str, status: str, at: datetime, *, channel: str | None = "dm",
           actor: str = "system", company: str = ALPHA) -> None:
    """A ledger row as the runner or an action leaves it: created at ``at`` and, unless still
    owed, completed then too."""
    api.rows(company, "INSERT INTO recovery_actions (case_id, company_id, kind, step, channel, status,"
                      " idempotency_key, actor, created_at, completed_at)"
                      " VALUES (CAST(:c AS uuid), :co, :k, 's', :ch, :st, :key, :actor, :at,"
                      " CASE WHEN :st IN ('pending', 'claimed') THEN NULL ELSE CAST(:at AS timestamptz) END)"
                      " RETURNING id",
             c=case_id, co=company, k=kind, ch=channel, st=status, key=str(uuid.uuid4()), actor=actor, at=at)


def iso(at: datetime) -> str:
    """A time as the API writes it (UTC, ``Z``)."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def listed(api: Api, query: str = "", **kw: Any) -> dict[str, dict[str, Any]]:
    _, body = api.call("GET", LIST, query=query, status=200, **kw)
    return {item["id"]: item for item in body["items"]}


def all_pages(api: Api, template: str, query: str, limit: int = 2) -> list[str]:
    """Every case id the list returns for ``query``, page by page (asserting no page is empty)."""
    seen: list[str] = []
    cursor = None
    while True:
        q = f"{query}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        _, page = api.call("GET", template, query=q, status=200)
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
        assert page["items"], "a page with a cursor holds cases"


def export_parts(api: Api, query: str) -> tuple[list[dict[str, str]], int]:
    rows: list[dict[str, str]] = []
    parts, cursor = 0, None
    while True:
        more = f"&cursor={cursor}" if cursor else ""
        resp, text = api.call("GET", EXPORT, query=query + more, status=200)
        part = parse_csv(text)
        assert part, "every part makes progress"
        rows += part
        parts += 1
        cursor = resp.headers.get("X-Export-Next-Cursor")
        if cursor is None:
            return rows, parts


# --- nudges_sent and last_action_at ---------------------------------------------------------------


def test_nudges_sent_counts_each_message_that_reached_whop_and_last_action_is_the_newest_send_or_act(
        api: Api) -> None:
    t = NOW - 2 * DAY
    busy = insert_case(api, first=t - timedelta(hours=1))
    ledger(api, busy, "nudge", "sent", t, channel="push")
    ledger(api, busy, "nudge", "sent", t + timedelta(minutes=1), channel="dm")  # the pair counts 2
    ledger(api, busy, "reminder", "sent", t + timedelta(hours=20), channel="dm")
    ledger(api, busy, "manual_nudge", "sent", t + timedelta(hours=22), channel="push", actor=ADMIN_A)
    act = t + timedelta(hours=23)  # the creator's manual DM failed at Whop: an action, not a message
    ledger(api, busy, "manual_nudge", "failed", act, channel="dm", actor=ADMIN_A)
    # None of these is a message sent or a creator's action, however late:
    ledger(api, busy, "reminder", "failed", t + timedelta(hours=30), channel="push")
    ledger(api, busy, "reminder", "skipped", t + timedelta(hours=31), channel="push")
    ledger(api, busy, "nudge", "pending", t + timedelta(hours=32), channel="push")
    ledger(api, busy, "incentive", "sent", t + timedelta(hours=33), channel=None)
    ledger(api, busy, "link_click", "done", t + timedelta(hours=34), channel=None, actor="member")
    quiet = insert_case(api, first=t)
    ledger(api, quiet, "nudge", "skipped", t, channel="dm")  # held out, say: nothing went out
    closed = insert_case(api, first=t + timedelta(hours=2))
    cancel_at = t + timedelta(hours=40)
    ledger(api, closed, "creator_cancel", "done", cancel_at, channel=None, actor=ADMIN_A)

    items = listed(api)
    assert (items[busy]["nudges_sent"], items[busy]["last_action_at"]) == (4, iso(act))
    assert (items[quiet]["nudges_sent"], items[quiet]["last_action_at"]) == (0, None)
    assert (items[closed]["nudges_sent"], items[closed]["last_action_at"]) == (0, iso(cancel_at))
    # The same count the export has carried since issue 7: one definition of "nudges sent".
    _, text = api.call("GET", EXPORT, status=200)
    assert {r["case_id"]: int(r["nudges_sent"]) for r in parse_csv(text)} == {
        cid: item["nudges_sent"] for cid, item in items.items()}


def test_the_real_runner_and_a_creator_nudge_show_up_in_the_list(api: Api) -> None:
    api.whop.add_membership("mem_1", company_id=ALPHA, user_id="user_1")
    case_id = api.open_case(at=NOW - DAY)
    assert listed(api)[case_id]["nudges_sent"] == 0  # T+0 push and DM owed, not yet sent
    assert listed(api)[case_id]["last_action_at"] is None
    effects.execute_owed(effects.default_context(), ALPHA, NOW, case_id=case_id)
    item = listed(api)[case_id]
    sent = api.whop.calls_to("POST", r"/(messages|notifications)")
    assert item["nudges_sent"] == len(sent) == 2
    api.call("POST", ONE + "/nudge", params={"case_id": case_id}, status=200)
    item = listed(api)[case_id]
    assert item["nudges_sent"] == 4
    newest = api.rows(ALPHA, "SELECT max(completed_at) AS at FROM recovery_actions"
                             " WHERE kind = 'manual_nudge'")
    assert datetime.fromisoformat(item["last_action_at"]) == newest[0]["at"]


def test_figures_stay_within_the_tenant(api: Api) -> None:
    a_case = insert_case(api, company=ALPHA)
    b_case = insert_case(api, company=BRAVO)
    for minutes in (1, 2, 3):
        ledger(api, b_case, "nudge", "sent", NOW - timedelta(minutes=minutes), company=BRAVO)
    ledger(api, a_case, "nudge", "sent", NOW - timedelta(hours=5))
    mine = listed(api)
    assert list(mine) == [a_case] and mine[a_case]["nudges_sent"] == 1
    assert mine[a_case]["last_action_at"] == iso(NOW - timedelta(hours=5))
    theirs = listed(api, user=ADMIN_B, params={"company_id": BRAVO})
    assert list(theirs) == [b_case] and theirs[b_case]["nudges_sent"] == 3
    # Another company's filter values reveal nothing either.
    assert listed(api, "decline_class=unknown", user=ADMIN_B, params={"company_id": BRAVO}) == theirs


# --- the decline_class filter ---------------------------------------------------------------------


@pytest.mark.parametrize("route", [LIST, EXPORT])
@pytest.mark.parametrize("value", ["card", "CARD_HARD", "card_hard%00", "card_hard%20", "%C3%BCnknown",
                                   "%E2%80%AE"])
def test_an_unknown_decline_class_is_400_naming_the_field(api: Api, route: str, value: str) -> None:
    _, err = api.call("GET", route, query=f"decline_class={value}", status=400)
    assert err["error"]["code"] == "bad_request" and "decline_class" in err["error"]["fields"]


def test_decline_class_combines_with_status_search_and_the_cursor(api: Api) -> None:
    classes = ("card_hard", "card_soft", "authentication", "unknown")
    made: list[tuple[datetime, str, str, str, str]] = []  # (first failure, id, class, status, membership)
    for i in range(24):
        cls, status = classes[i % 4], ("open", "recovered", "expired")[i % 3]
        first = NOW - timedelta(hours=3 * i) if i % 5 else NOW - DAY  # equal times: the id breaks ties
        membership = f"{'mem_s' if i % 2 == 0 else 'mem_t'}{i:02d}"
        case_id = insert_case(api, membership=membership, status=status, first=first, decline_class=cls)
        made.append((first, case_id, cls, status, membership))
    insert_case(api, company=BRAVO, membership="mem_s99", decline_class="card_hard")  # never listed
    newest_first = sorted(made, reverse=True)
    for cls in classes:
        for status in ("open", "recovered", "expired"):
            expected = [cid for _, cid, c, s, m in newest_first
                        if (c, s) == (cls, status) and m.startswith("mem_s")]
            got = all_pages(api, LIST, f"decline_class={cls}&status={status}&q=mem_s", limit=1)
            assert got == expected, (cls, status)
        every = all_pages(api, LIST, f"decline_class={cls}", limit=2)
        assert every == [cid for _, cid, c, _, _ in newest_first if c == cls] and len(every) == 6


# --- the export follows the list ------------------------------------------------------------------


def test_the_export_holds_exactly_the_listed_cases_for_every_filter_across_parts(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api.rows(ALPHA, "INSERT INTO recovery_cases (company_id, membership_id, user_id, status,"
                    " first_failure_at, last_failure_at, amount_minor, currency, link_token, decline_class,"
                    " closed_at)"
                    " SELECT :c, CASE WHEN g % 3 = 0 THEN 'mem_q' ELSE 'mem_r' END || g, 'user_' || g,"
                    "  CASE WHEN g % 2 = 0 THEN 'open' ELSE 'expired' END,"
                    "  CAST(:t AS timestamptz) - g * interval '7 minutes',"
                    "  CAST(:t AS timestamptz) - g * interval '7 minutes', 1999, 'usd', md5(g::text),"
                    "  (ARRAY['card_hard','card_soft','authentication','unknown'])[1 + g % 4],"
                    "  CASE WHEN g % 2 = 1 THEN CAST(:t AS timestamptz) END"
                    " FROM generate_series(1, 400) g RETURNING id", c=ALPHA, t=NOW)
    monkeypatch.setenv("RATE_LIMIT_EXPORT", "1000")  # the limit is not under test: dozens of parts are
    ratelimit.get_limits.cache_clear()
    monkeypatch.setattr(case_views, "EXPORT_PAGE_ROWS", 7)  # several database pages per part
    monkeypatch.setattr(case_views, "EXPORT_MAX_BYTES", 2_500)  # and several parts
    for query in ("decline_class=card_soft", "decline_class=card_hard&status=open",
                  "q=mem_q&decline_class=unknown", "q=mem_q&status=expired&window_days=1",
                  "decline_class=unknown&status=expired&q=mem_r"):
        rows, parts = export_parts(api, query)
        listed_ids = all_pages(api, LIST, query, limit=100)
        assert [r["case_id"] for r in rows] == listed_ids, query  # same cases, same order, once each
        assert parts > 1 and len(rows) > 10, (query, parts, len(rows))
        for r in rows:
            for name, value in (p.split("=") for p in query.split("&")):
                if name in ("decline_class", "status"):
                    assert r[name] == value
                elif name == "q":
                    assert r["membership_id"].startswith(value)
