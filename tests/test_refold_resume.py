"""A re-fold resumes after the membership's last closed episode (issue 13): it reads and folds
only what follows that episode's end, and gives exactly what folding the whole history gives,
whatever order the events arrive in (a late event older than that end folds from further back)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib import processing
from chalicelib.cases import fold
from chalicelib.db_pool import Database
from chalicelib.models import WhopEvent
from chalicelib.queue import QueuedWebhook
from chalicelib.store import events as event_store
from chalicelib.store import ledger as ledger_store
from chalicelib.tenancy import tenant_transaction
from chalicelib.webhooks import normalise
from tests.helpers import membership_event, payment_event

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
START = NOW - timedelta(days=90)
FOLDED = ("seq", "status", "first_failure_at", "last_failure_at", "failure_count", "recovered_at",
          "closed_at", "close_reason", "manage_url")
_companies = itertools.count()

# One event: (kind, hours after START, manage_url variant or None).
KINDS = ("payment.failed", "payment.succeeded", "membership.cancel_at_period_end_changed", "manage_url")


def _webhook(company: str, n: int, kind: str, hours: int, url: int | None) -> tuple[str, bytes]:
    at = START + timedelta(hours=hours)
    msg_id = f"msg_{company}_{n}"
    if kind.startswith("payment."):
        return payment_event(kind, company=company, membership="mem_1", at=at, msg_id=msg_id,
                             payment=f"pay_{n}")
    if kind == "manage_url":  # a membership event that only changes the manage link
        return membership_event("membership.cancel_at_period_end_changed", company=company, at=at,
                                msg_id=msg_id, cancel_at_period_end=False,
                                manage_url=f"https://whop.com/m/{url}")
    return membership_event(kind, company=company, at=at, msg_id=msg_id, cancel_at_period_end=True)


def _deliver(database: Database, company: str, events: list[tuple[int, str, int, int | None]]) -> None:
    for n, kind, hours, url in events:
        msg_id, body = _webhook(company, n, kind, hours, url)
        outcome = processing.process_webhook(QueuedWebhook(msg_id, NOW, body), NOW, database)
        assert outcome.status == "applied", outcome


def _stored(database: Database, company: str) -> list[dict[str, Any]]:
    with tenant_transaction(company, database) as tx:
        return tx.query("SELECT " + ", ".join(FOLDED) + " FROM recovery_cases ORDER BY seq")


def _whole_fold(company: str, events: list[tuple[int, str, int, int | None]]) -> list[dict[str, Any]]:
    parsed: list[WhopEvent] = []
    for n, kind, hours, url in events:
        msg_id, body = _webhook(company, n, kind, hours, url)
        event = normalise(body, msg_id, NOW)
        assert event is not None
        parsed.append(event)
    cases = fold(company, "mem_1", parsed, NOW)
    return [{c: (getattr(case, c).value if c == "status" else getattr(case, c)) for c in FOLDED}
            for case in cases]


def _history() -> st.SearchStrategy[list[tuple[int, str, int, int | None]]]:
    event = st.tuples(st.sampled_from(KINDS), st.integers(0, 24 * 80), st.integers(0, 2))
    return st.lists(event, min_size=1, max_size=9).map(
        lambda evs: [(n, kind, hours, url if kind == "manage_url" else None)
                     for n, (kind, hours, url) in enumerate(evs)])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=_history(), data=st.data())
def test_any_arrival_order_stores_what_refolding_everything_stores(
        database: Database, history: list[Any], data: st.DataObject) -> None:
    """Same deliveries, same order: resuming stores exactly what folding the whole history does,
    and in any order that is the pure fold of every event (a late event that joins stored
    episodes leaves one row, not a stale second one)."""
    order = data.draw(st.permutations(history))
    resumed, whole = f"biz_r{next(_companies)}", f"biz_w{next(_companies)}"
    _deliver(database, resumed, order)
    _deliver_whole(database, whole, order)
    assert _stored(database, resumed) == _stored(database, whole)
    assert _kept_urls_aside(_stored(database, resumed), _whole_fold(resumed, history))
    in_time = f"biz_t{next(_companies)}"
    _deliver(database, in_time, sorted(history, key=lambda e: (e[2], e[0])))
    assert _kept_urls_aside(_stored(database, in_time), _whole_fold(in_time, history))


def _kept_urls_aside(stored: list[dict[str, Any]], pure: list[dict[str, Any]]) -> bool:
    """Stored cases equal the pure fold, except that a manage_url once stored is kept
    (store.cases.update_case: a working link beats none) where a later-applied event makes the fold
    close the case before the event that carried it (a same-instant success, a late failure)."""
    for row, case in zip(stored, pure, strict=False):
        if case["manage_url"] is None:
            row["manage_url"] = None
    return stored == pure


def test_a_late_event_older_than_the_last_closed_episode_refolds_from_before_it(database: Database) -> None:
    # Episode 1: failed day 0, recovered day 1. Episode 2: failed day 20, recovered day 21.
    # Episode 3: failed day 85, open. Then, late: a failure on day 20.5 (inside episode 2, before
    # its end) and a success on day 0.5 (before episode 1's end): both must land where they belong.
    h = 24
    timeline = [(0, "payment.failed", 0, None), (1, "payment.succeeded", 1 * h, None),
                (2, "manage_url", 2 * h, 1),
                (3, "payment.failed", 20 * h, None), (4, "payment.succeeded", 21 * h, None),
                (5, "payment.failed", 85 * h, None), (6, "payment.failed", 20 * h + 12, None),
                (7, "payment.succeeded", 12, None), (8, "manage_url", 30 * h, 2)]
    _deliver(database, "biz_late", timeline)
    _deliver(database, "biz_ordered", sorted(timeline, key=lambda e: (e[2], e[0])))
    expected = _whole_fold("biz_late", timeline)
    assert [(c["seq"], c["status"], c["failure_count"]) for c in expected] == [
        (1, "recovered", 1), (2, "recovered", 2), (3, "open", 1)]
    assert expected[2]["manage_url"] == "https://whop.com/m/2"
    assert _stored(database, "biz_late") == _stored(database, "biz_ordered") == expected


def test_an_event_after_the_last_closed_episode_reads_only_what_follows_it(database: Database) -> None:
    h = 24
    _deliver(database, "biz_r", [(0, "payment.failed", 0, None), (1, "manage_url", 1, 7),
                                 (2, "payment.succeeded", 1 * h, None),
                                 (3, "payment.failed", 20 * h, None), (4, "payment.succeeded", 21 * h, None)])
    msg_id, body = _webhook("biz_r", 5, "payment.failed", 40 * h, None)
    event = normalise(body, msg_id, NOW)
    assert event is not None
    late_id, late_body = _webhook("biz_r", 6, "payment.failed", 21 * h - 1, None)
    late = normalise(late_body, late_id, NOW)
    assert late is not None
    with tenant_transaction("biz_r", database) as tx:
        history = event_store.insert_event(tx, event, processing.minimal_payload(event))
        assert history is not None and history.start is not None
        assert history.start.after == START + timedelta(days=21) and history.start.seq_before == 2
        assert [p["webhook_id"] for p in history.payloads] == [msg_id]  # nothing of the past
        assert history.cases == []
        assert [p["manage_url"] for p in history.start.manage_url_payloads] == ["https://whop.com/m/7"]
        # Older than episode 2's end: resumes after episode 1 instead, and reads episode 2 again.
        earlier = event_store.insert_event(tx, late, processing.minimal_payload(late))
        assert earlier is not None and earlier.start is not None
        assert earlier.start.after == START + timedelta(days=1) and earlier.start.seq_before == 1
        assert len(earlier.payloads) == 4 and len(earlier.cases or []) == 1
        tx.execute("ROLLBACK")  # leave nothing behind for the checks below
    # A creator's cancellation is not an end the fold knows: it resumes from before that case.
    with tenant_transaction("biz_r", database) as tx:
        tx.execute("UPDATE recovery_cases SET cancelled_by = 'user_admin' WHERE seq = 2")
        history = event_store.insert_event(tx, event, processing.minimal_payload(event))
        assert history is not None and history.start is not None and history.start.seq_before == 1


def _deliver_whole(database: Database, company: str, events: list[tuple[int, str, int, int | None]]) -> None:
    real_resume = processing._resume
    processing._resume = lambda start: None  # type: ignore[assignment]  # every re-fold from the top
    try:
        _deliver(database, company, events)
    finally:
        processing._resume = real_resume


def test_a_row_left_behind_when_two_episodes_join_is_never_a_resume_point(database: Database) -> None:
    """f@1441h and f@1777h are one episode until f@1440h (recovered at once) splits them; the
    join once left the f@1777h row behind (now merged away; a resume point must not trust such a
    row should one exist) with an end, 2113h, after the real episodes' start. f@2000h opens an
    episode; f@2150h belongs to it. Were the stale row trusted as a resume point, f@2150h would
    open a third case on its own."""
    history = [(0, "payment.failed", 1441, None), (1, "payment.failed", 1777, None),
               (2, "payment.failed", 1440, None), (3, "payment.succeeded", 1440, None),
               (4, "payment.failed", 2000, None), (5, "payment.failed", 2150, None)]
    _deliver(database, "biz_join", history)
    _deliver_whole(database, "biz_join_whole", history)
    stored = _stored(database, "biz_join")
    assert stored == _stored(database, "biz_join_whole")
    open_cases = [c for c in stored if c["status"] == "open"]
    assert len(open_cases) == 1 and open_cases[0]["failure_count"] == 2


def test_a_manage_url_setter_that_no_longer_validates_folds_the_whole_history(database: Database) -> None:
    h = 24
    _deliver(database, "biz_p", [(0, "payment.failed", 0, None), (1, "manage_url", 1, 3),
                                 (2, "payment.succeeded", 1 * h, None)])
    with tenant_transaction("biz_p", database) as tx:  # as a purge could leave it: unreadable
        tx.execute("UPDATE events SET payload = payload - 'type' WHERE webhook_id = 'msg_biz_p_1'")
    _deliver(database, "biz_p", [(3, "payment.failed", 5 * h, None)])
    stored = _stored(database, "biz_p")
    assert [(c["seq"], c["status"]) for c in stored] == [(1, "recovered"), (2, "expired")]
    # The whole fold skips the unreadable event, so no manage_url reaches the new case.
    assert stored[1]["manage_url"] is None


def test_a_late_failure_that_joins_two_stored_episodes_leaves_one_row(database: Database) -> None:
    history = [(0, "payment.failed", 1, None), (1, "payment.failed", 337, None),
               (2, "payment.failed", 0, None), (3, "payment.succeeded", 0, None)]
    _deliver(database, "biz_j", history)
    assert _stored(database, "biz_j") == _whole_fold("biz_j", history)


def test_the_joined_away_row_hands_its_ledger_clicks_and_incentive_to_the_row_that_stays(
        database: Database) -> None:
    # f@1h and f@337h, then a late f@0h: two stored episodes ({f0, f1} and {f337}). A success at
    # 0h then recovers {f0} at once and joins f1 and f337 into one episode: one row must carry
    # everything the member was sent and did in either.
    _deliver(database, "biz_m", [(0, "payment.failed", 1, None), (1, "payment.failed", 337, None),
                                 (2, "payment.failed", 0, None)])
    with tenant_transaction("biz_m", database) as tx:
        rows = tx.query("SELECT id::text AS id, seq FROM recovery_cases ORDER BY seq")
        assert [r["seq"] for r in rows] == [1, 2]
        second = rows[1]["id"]
        ledger_store.add_action(tx, case_id=second, company_id="biz_m", kind="nudge", step="t0",
                                channel="push", status="sent", idempotency_key=f"{second}:t0:push:test")
        tx.execute("UPDATE recovery_cases SET link_clicks = 2, incentive_days = 3,"
                   " incentive_cost_minor = 150 WHERE id = CAST(:id AS uuid)", id=second)
        before = tx.scalar("SELECT count(*) FROM recovery_actions")
    _deliver(database, "biz_m", [(3, "payment.succeeded", 0, None)])
    with tenant_transaction("biz_m", database) as tx:
        cases = tx.query("SELECT id::text AS id, seq, status, link_clicks, incentive_days,"
                         " incentive_cost_minor FROM recovery_cases ORDER BY seq")
        assert [(c["seq"], c["status"]) for c in cases] == [(1, "recovered"), (2, "expired")]
        assert second not in {c["id"] for c in cases}
        stays = cases[1]
        assert (stays["link_clicks"], stays["incentive_days"], stays["incentive_cost_minor"]) == (2, 3, 150)
        moved = tx.query("SELECT case_id::text AS case_id, status FROM recovery_actions"
                         " WHERE idempotency_key = :k", k=f"{second}:t0:push:test")
        assert moved == [{"case_id": stays["id"], "status": "sent"}]
        assert tx.scalar("SELECT count(*) FROM recovery_actions") >= before  # nothing of the ledger lost
