"""A (re)opened case is always being worked (issue 20 item 1, and the settings caveat).

Whenever a case is (re)opened, what it is owed is recomputed from its events and the ledger: a
T+0 never sent is owed again while the window is open, and reminder offsets count only what was
actually sent. A settings change re-plans open cases the same way (channels off then on again
get their reminders). Real Postgres as the runtime role, the fake Whop over HTTP.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from chalicelib.tenancy import tenant_transaction
from tests.helpers import payment_event
from tests.test_api_support import ALPHA, NOW, Api, api_fixture  # noqa: F401
from tests.test_nudges import DAY, T0, A, World, world  # noqa: F401

MINUTE = timedelta(minutes=1)


def ledger(world: World, case_id: str) -> dict[tuple[str, str], dict[str, Any]]:  # noqa: F811
    return {(a["step"], a["channel"]): a for a in world.actions(case_id=case_id)}


def ticks(world: World, start: Any, n: int = 4) -> None:  # noqa: F811
    for i in range(n):
        world.tick(start + i * 5 * MINUTE)


def test_a_late_older_failure_then_its_late_success_leaves_the_case_worked(world: World) -> None:  # noqa: F811
    now = T0
    case_b = world.fail(now - 13 * DAY, now=now)  # opens B, T+0 owed (the tick has not run yet)
    world.fail(now - 16 * DAY, now=now)  # f0 joins B's episode: its window has passed, B expires
    assert world.case(case_b)["status"] == "expired"
    assert {a["status"] for a in world.actions(case_id=case_b)} == {"skipped"}
    # f0's own late success: f0 becomes its own recovered case, and B opens again (a day left).
    out = world.deliver(payment_event("payment.succeeded", at=now - 15 * DAY + timedelta(hours=1)), now)
    assert out.status == "applied"
    assert world.case(case_b)["status"] == "open"
    ticks(world, now)
    assert len(world.dms_to("user_1")) == 1 and len(world.pushes()) == 1  # the T+0, at last
    rows = ledger(world, case_b)
    assert rows[("t0", "push")]["status"] == rows[("t0", "dm")]["status"] == "sent"
    row = world.case(case_b)
    # The T+0 going out now covers the offsets already passed (2 and 4): no reminder on its heels.
    assert row["last_reminder_offset"] == 4
    assert row["next_action_at"] == row["first_failure_at"] + 14 * DAY


def test_a_reopened_case_whose_t0_went_out_is_not_sent_it_again(world: World) -> None:  # noqa: F811
    now = T0
    case_b = world.fail(now - 13 * DAY, now=now)
    assert world.run_effects(now).sent == 2  # the T+0 went out
    world.fail(now - 16 * DAY, now=now + MINUTE)
    world.deliver(payment_event("payment.succeeded", at=now - 15 * DAY + timedelta(hours=1)), now + MINUTE)
    assert world.case(case_b)["status"] == "open"
    ticks(world, now + 2 * MINUTE)
    assert len(world.dms_to("user_1")) == 1 and len(world.pushes()) == 1  # still just the one T+0
    assert world.case(case_b)["last_reminder_offset"] == 4  # covered when it went out


def test_reminder_offsets_count_only_what_was_sent(world: World) -> None:  # noqa: F811
    start = T0
    case_b = world.fail(start, now=start, decline_code="expired_card")  # hard: reminders on days 2, 4
    world.run_effects(start)
    world.tick(start + 2 * DAY + MINUTE)  # the day-2 reminder goes out
    assert len(world.dms_to("user_1")) == 2
    # Three days in, a late failure 12 days older closes B (its window ended yesterday) ...
    world.fail(start - 12 * DAY, now=start + 3 * DAY)
    assert world.case(case_b)["status"] == "expired"
    # ... and that failure's success reopens B: the day-4 reminder is still owed, day 2 is not.
    world.deliver(payment_event("payment.succeeded", at=start - 12 * DAY + timedelta(hours=1)),
                  start + 3 * DAY)
    row = world.case(case_b)
    assert row["status"] == "open" and row["last_reminder_offset"] == 2
    assert row["next_action_at"] == start + 4 * DAY
    world.tick(start + 4 * DAY + MINUTE)
    steps = sorted((a["step"], a["channel"], a["status"]) for a in world.actions(case_id=case_b))
    assert steps == [("r2", "dm", "sent"), ("r2", "push", "sent"), ("r4", "dm", "sent"),
                     ("r4", "push", "sent"), ("t0", "dm", "sent"), ("t0", "push", "sent")]


def test_a_case_stored_expired_by_a_consumer_15_days_ahead_is_worked_when_the_next_event_reopens_it(
        world: World) -> None:  # noqa: F811
    # A consumer whose clock ran 15 days ahead stored a fresh failure as expired, owing nothing
    # (the edge now refuses such a clock; rows written by one before that must still heal).
    case_id = world.fail(T0 - timedelta(hours=1), now=T0 + 15 * DAY)
    assert world.case(case_id)["status"] == "expired" and world.actions(case_id=case_id) == []
    world.fail(T0 + timedelta(hours=1), now=T0 + 2 * timedelta(hours=1))  # Whop's retry fails too
    assert world.case(case_id)["status"] == "open"
    ticks(world, T0 + 2 * timedelta(hours=1))
    assert len(world.dms_to("user_1")) == 1 and len(world.pushes()) == 1
    assert world.case(case_id)["last_reminder_offset"] is None  # nothing passed yet: day 2 is owed


def test_channels_off_then_on_again_get_their_reminders(api: Api) -> None:
    from chalicelib import effects, scheduler

    path = f"/api/companies/{ALPHA}/settings"
    assert api.request("PUT", path, body={"enable_push": False, "enable_dm": False}).status_code == 200
    api.whop.add_membership("mem_1", company_id=ALPHA, user_id="user_1")
    case_id = api.open_case(at=NOW - timedelta(hours=1))
    ctx = effects.default_context()
    for day in (2, 4):  # the tick passes both reminder days while nothing may be sent
        scheduler.tick(ctx, NOW + day * DAY + MINUTE, api.db)
    assert api.whop.calls_to("POST", "/messages") == []
    resp = api.request("PUT", path, body={"enable_push": True, "enable_dm": True})
    assert resp.status_code == 200, resp.body
    case = api.case(case_id)
    assert case["last_reminder_offset"] is None  # nothing was ever sent
    assert case["next_action_at"] == case["first_failure_at"] + 3 * DAY  # a soft decline: days 3, 4
    scheduler.tick(ctx, NOW + 4 * DAY + 2 * MINUTE, api.db)
    dms = api.whop.calls_to("POST", "/messages")
    assert len(dms) == 1 and len(api.whop.calls_to("POST", "/notifications")) == 1
    with tenant_transaction(ALPHA, api.db) as tx:
        sent = tx.query("SELECT step, channel FROM recovery_actions WHERE status = 'sent' ORDER BY channel")
    assert sent == [{"step": "r4", "channel": "dm"}, {"step": "r4", "channel": "push"}]
    assert json.loads(api.request("GET", path).body)["enable_dm"] is True


def test_a_joined_case_counts_the_t0_its_merged_row_sent(world: World) -> None:  # noqa: F811
    now = T0
    case_1 = world.fail(now - 13 * DAY, now=now)  # f1 ...
    world.fail(now - 15 * DAY, now=now)  # ... and a late f0 before its T+0 went: it expires, skipped
    case_2 = world.fail(now - timedelta(hours=12), now=now)  # f2: its own case
    assert world.run_effects(now).sent == 2  # f2's case is messaged
    # f0's success joins f1 and f2 into one episode: the f2 row merges into the f1 row, which opens
    # again. The member was messaged about this episode already: no second T+0, now or later.
    world.deliver(payment_event("payment.succeeded", at=now - 15 * DAY + timedelta(hours=1)), now)
    assert world.case(case_1)["status"] == "open"
    with tenant_transaction(A, world.db) as tx:
        assert tx.scalar("SELECT count(*) FROM recovery_cases WHERE id = CAST(:id AS uuid)", id=case_2) == 0
    for hours in (0, 1, 21, 30):
        world.tick(now + timedelta(hours=hours, minutes=1))
    assert len(world.dms_to("user_1")) == 1 and len(world.pushes()) == 1
    assert world.case(case_1)["last_reminder_offset"] == 4  # the sent T+0 covered the passed offsets


def test_a_reopened_soft_decline_is_owed_its_payday_retry_again(world: World) -> None:  # noqa: F811
    # Issue 18's row follows issue 20's rule: a payday retry skipped only because the case closed
    # (and never sent to Whop) is owed again when a late event opens the case again.
    now = T0 + 12 * DAY  # Saturday 14 November, 15:00 UTC: the next payday slot is tomorrow 09:00
    case_b = world.fail(now - 11 * DAY, now=now)  # a soft decline (insufficient funds)

    def retries() -> list[dict[str, Any]]:
        with tenant_transaction(A, world.db) as tx:
            return tx.query("SELECT status, error_detail, attempts, due_at FROM recovery_actions"
                            " WHERE case_id = CAST(:c AS uuid) AND kind = 'payment_retry'", c=case_b)

    payday = now.replace(day=15, hour=9)
    assert [(r["status"], r["due_at"]) for r in retries()] == [("pending", payday)]
    world.fail(now - 14 * DAY - timedelta(hours=1), now=now)  # joins B: the window has passed
    assert world.case(case_b)["status"] == "expired"
    assert [(r["status"], r["error_detail"]) for r in retries()] == [("skipped", "window_passed")]
    world.deliver(payment_event("payment.succeeded", at=now - 14 * DAY), now)  # the older one's
    assert world.case(case_b)["status"] == "open"
    assert [(r["status"], r["attempts"], r["due_at"]) for r in retries()] == [("pending", 0, payday)]


def test_a_reopened_case_is_not_kept_quiet_by_a_held_out_rows_ledger(world: World) -> None:  # noqa: F811
    # Found by the full chaos run: an episode join merged a held-out row into this (not held out)
    # case, bringing its T+0 rows skipped as "holdout"; when the case then opened again, those
    # counted as its T+0 and the member was never messaged.
    from chalicelib import replan
    from chalicelib.store import cases as case_store
    from chalicelib.store import settings as settings_store

    now = T0
    case_b = world.fail(now - 13 * DAY, now=now)
    with tenant_transaction(A, world.db) as tx:
        tx.execute("UPDATE recovery_actions SET status = 'skipped', error_detail = 'window_passed'"
                   " WHERE case_id = CAST(:c AS uuid)", c=case_b)
        for channel in ("push", "dm"):  # what a merged-away held-out row left behind
            tx.execute("INSERT INTO recovery_actions (case_id, company_id, kind, step, channel, status,"
                       " error_detail, idempotency_key) VALUES (CAST(:c AS uuid), :co, 'nudge', 't0', :ch,"
                       " 'skipped', 'holdout', :k)", c=case_b, co=A, ch=channel, k=f"merged:t0:{channel}")
        row = tx.one("SELECT * FROM recovery_cases WHERE id = CAST(:c AS uuid)", c=case_b)
        assert row is not None and not row["holdout"]
        settings = settings_store.get_settings(tx)
        owed = replan.reopened(tx, case_b, case_store.case_from_row(row), settings, now)
    assert owed >= 2
    with tenant_transaction(A, world.db) as tx:
        own = {r["channel"]: r["status"] for r in tx.query(
            "SELECT channel, status FROM recovery_actions WHERE idempotency_key LIKE :k", k=f"{case_b}:t0:%")}
    assert own == {"push": "pending", "dm": "pending"}
    # A held-out case's own "holdout" skips do count: it is owed nothing.
    with tenant_transaction(A, world.db) as tx:
        tx.execute("UPDATE recovery_actions SET status = 'skipped', error_detail = 'holdout'"
                   " WHERE case_id = CAST(:c AS uuid)", c=case_b)
        tx.execute("UPDATE recovery_cases SET holdout = true WHERE id = CAST(:c AS uuid)", c=case_b)
        row = tx.one("SELECT * FROM recovery_cases WHERE id = CAST(:c AS uuid)", c=case_b)
        assert row is not None
        assert replan.reopened(tx, case_b, case_store.case_from_row(row), settings, now) == 0
