"""Reaching the member: T+0 nudges, reminders, quiet hours, caps, incentives, retries, links.

Real Postgres as the runtime role; the fake Whop over HTTP; the clock is injected.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chalicelib import claim_gate, claims, effects, measurement, processing, scheduler
from chalicelib.db_pool import Database
from chalicelib.queue import QueuedWebhook
from chalicelib.tenancy import tenant_transaction
from chalicelib.whop_client import get_whop
from scripts.fake_whop import FakeWhop
from tests.conftest import Owner
from tests.helpers import membership_event, payment_event, run_concurrently

T0 = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)  # a Monday, 15:00 UTC
DAY = timedelta(days=1)
A, B = "biz_alpha", "biz_bravo"


class World:
    def __init__(self, db: Database, fake: FakeWhop) -> None:
        self.db = db
        self.fake = fake
        self.ctx = claims.Context(whop=get_whop(), app_id=fake.app_id,
                                  public_base_url="https://rebound.test")

    def deliver(self, body_pair: tuple[str, bytes], now: datetime) -> processing.Outcome:
        msg_id, body = body_pair
        return processing.process_webhook(QueuedWebhook(msg_id, now, body), now, self.db)

    def fail(self, at: datetime, *, company: str = A, membership: str = "mem_1", user: str = "user_1",
             now: datetime | None = None, **kw: Any) -> str:
        if membership not in self.fake.memberships:
            self.fake.add_membership(membership, company_id=company, user_id=user)
        out = self.deliver(payment_event("payment.failed", company=company, membership=membership,
                                         user=user, at=at, **kw), now or at)
        return out.opened_case_ids[0] if out.opened_case_ids else ""

    def run_effects(self, now: datetime, company: str = A) -> claims.Stats:
        return effects.execute_owed(self.ctx, company, now, self.db)

    def tick(self, now: datetime) -> scheduler.TickResult:
        return scheduler.tick(self.ctx, now, self.db)

    def actions(self, company: str = A, case_id: str | None = None) -> list[dict[str, Any]]:
        """The case's messages, incentives and creator actions; smart retry's card attaches and
        payday retries (issue 18; tests/test_smart_retry.py) are left out: whether a payday falls
        inside a window depends on the date the suite runs."""
        with tenant_transaction(company, self.db) as tx:
            return tx.query("SELECT kind, step, channel, status, attempts, error_class, error_detail,"
                            " result, due_at FROM recovery_actions"
                            " WHERE kind NOT IN ('link_click', 'card_attach', 'payment_retry')"
                            " AND (CAST(:c AS uuid) IS NULL OR case_id = CAST(:c AS uuid))"
                            " ORDER BY created_at, step, channel", c=case_id)

    def case(self, case_id: str, company: str = A) -> dict[str, Any]:
        with tenant_transaction(company, self.db) as tx:
            row = tx.one("SELECT * FROM recovery_cases WHERE id = CAST(:id AS uuid)", id=case_id)
        assert row is not None
        return row

    def settings(self, company: str = A, **values: Any) -> None:
        cols = ", ".join(values)
        params = ", ".join(f":{k}" for k in values)
        with tenant_transaction(company, self.db) as tx:
            tx.execute(f"INSERT INTO creator_settings (company_id, {cols}) VALUES (:company, {params})"
                       f" ON CONFLICT (company_id) DO UPDATE SET "
                       + ", ".join(f"{k} = EXCLUDED.{k}" for k in values), company=company, **values)

    def leases_run_out(self, company: str = A) -> None:
        """Five minutes pass on the database's clock, where leases live (it cannot be moved: the
        leases are aged instead)."""
        with tenant_transaction(company, self.db) as tx:
            tx.execute("UPDATE recovery_actions SET claimed_until = claimed_until"
                       " - CAST(:lease AS interval) - interval '1 second' WHERE claimed_until IS NOT NULL",
                       lease=claims.LEASE)

    def pushes(self) -> list[Any]:
        return self.fake.calls_to("POST", "/notifications")

    def dms(self) -> list[Any]:
        return self.fake.calls_to("POST", "/messages")

    def dms_to(self, user: str) -> list[str]:
        """The contents of the DMs the fake Whop received for one member, in order."""
        channels = {cid for cid, ch in self.fake.dm_channels.items() if user in ch["with_user_ids"]}
        return [c.json["content"] for c in self.dms() if c.json["channel_id"] in channels]


@pytest.fixture
def world(database: Database, whop_env: FakeWhop) -> Iterator[World]:
    effects.clear_experience_cache()
    measurement.clear_product_cache()
    for company in (A, B):
        whop_env.add_experience(company, whop_env.app_id, f"exp_{company}")
    yield World(database, whop_env)


# --- T+0 ------------------------------------------------------------------------------------------


def test_t0_push_and_dm_lead_with_the_tracked_link(world: World) -> None:
    case_id = world.fail(T0, recovery_url=None)
    stats = world.run_effects(T0)
    assert stats.sent == 2
    token = world.case(case_id)["link_token"]
    push, dm = world.pushes()[0].json, world.dms()[0].json
    assert push["experience_id"] == f"exp_{A}" and push["user_ids"] == ["user_1"]
    assert f"https://rebound.test/r/{token}" in push["content"]
    assert f"(https://rebound.test/r/{token})" in dm["content"] and "$19.99" in dm["content"]
    assert "14 days" in dm["content"]
    for call in world.fake.calls:
        assert "jane" not in str(call.json).lower() and "buyer@example.com" not in str(call.json)
    keys = {c.headers.get("idempotency-key") for c in world.pushes()}
    assert keys == {f"{case_id}:t0:push"}


def test_toggles_off_send_nothing(world: World) -> None:
    world.settings(enable_push=False, enable_dm=False)
    world.fail(T0)
    assert world.run_effects(T0).sent == 0
    assert world.pushes() == [] and world.dms() == [] and world.actions() == []


def test_push_without_an_experience_is_skipped_and_the_dm_still_goes(world: World) -> None:
    world.fake.reset()
    effects.clear_experience_cache()
    world.fail(T0)
    world.run_effects(T0)
    by_channel = {a["channel"]: a for a in world.actions()}
    assert by_channel["push"]["status"] == "skipped"
    assert by_channel["push"]["error_detail"] == "no_push_experience"
    assert by_channel["dm"]["status"] == "sent" and len(world.dms()) == 1


def test_configured_push_experience_wins(world: World) -> None:
    world.settings(push_experience_id="exp_custom")
    world.fake.add_experience(A, "other_app", "exp_custom")
    world.fail(T0)
    world.run_effects(T0)
    assert world.pushes()[0].json["experience_id"] == "exp_custom"


# --- reminders ------------------------------------------------------------------------------------


def test_reminders_at_2_and_4_days_then_expiry(world: World) -> None:
    case_id = world.fail(T0, decline_code="expired_card", failure_message="Your card has expired.")
    world.run_effects(T0)
    assert world.tick(T0 + DAY).reminders_owed == 0
    r2 = world.tick(T0 + 2 * DAY + timedelta(minutes=1))
    assert r2.reminders_owed == 2 and r2.effects.sent == 2
    assert world.tick(T0 + 3 * DAY).reminders_owed == 0
    r4 = world.tick(T0 + 4 * DAY + timedelta(minutes=1))
    assert r4.reminders_owed == 2
    steps = [(a["step"], a["channel"], a["status"]) for a in world.actions()]
    assert steps == [("t0", "dm", "sent"), ("t0", "push", "sent"), ("r2", "dm", "sent"),
                     ("r2", "push", "sent"), ("r4", "dm", "sent"), ("r4", "push", "sent")]
    assert len(world.dms()) == 3
    assert world.tick(T0 + 14 * DAY).expired == 0
    done = world.tick(T0 + 14 * DAY + timedelta(minutes=1))
    assert done.expired == 1 and world.case(case_id)["status"] == "expired"
    assert len(world.dms()) == 3


def test_a_soft_decline_gets_its_first_reminder_a_day_later_by_default(world: World) -> None:
    soft = world.fail(T0, membership="mem_soft", user="user_soft")  # insufficient funds
    hard = world.fail(T0, membership="mem_hard", user="user_hard", decline_code="expired_card")
    classes = (world.case(soft)["decline_class"], world.case(hard)["decline_class"])
    assert classes == ("card_soft", "card_hard")
    world.run_effects(T0)
    world.tick(T0 + 2 * DAY + timedelta(minutes=1))
    world.tick(T0 + 3 * DAY + timedelta(minutes=1))
    world.tick(T0 + 4 * DAY + timedelta(minutes=1))
    steps = lambda case_id: sorted({a["step"] for a in world.actions(case_id=case_id)})  # noqa: E731
    assert steps(hard) == ["r2", "r4", "t0"]
    assert steps(soft) == ["r3", "r4", "t0"]
    # The soft first message is the gentler one; the hard one asks for a new card.
    assert "It happens, and it's easy to fix" in world.dms_to("user_soft")[0]
    assert "**[Update your card](" in world.dms_to("user_hard")[0]


def test_a_creator_who_chose_offsets_keeps_them_for_soft_declines(world: World) -> None:
    world.settings(reminder_offsets_days=[1, 3])
    soft = world.fail(T0)
    world.run_effects(T0)
    world.tick(T0 + DAY + timedelta(minutes=1))
    assert {a["step"] for a in world.actions(case_id=soft)} == {"t0", "r1"}


def test_missed_offsets_collapse_into_one_reminder(world: World) -> None:
    world.settings(reminder_offsets_days=[1, 2, 3])
    world.fail(T0)
    world.run_effects(T0)
    result = world.tick(T0 + 3 * DAY + timedelta(hours=1))
    assert result.reminders_owed == 2
    steps = {a["step"] for a in world.actions()}
    assert steps == {"t0", "r3"}


def test_no_reminder_after_recovery_or_cancellation(world: World) -> None:
    world.fail(T0, membership="mem_paid")
    world.fail(T0, membership="mem_gone", user="user_2")
    world.run_effects(T0)
    world.deliver(payment_event("payment.succeeded", membership="mem_paid", at=T0 + DAY), T0 + DAY)
    world.deliver(membership_event("membership.cancel_at_period_end_changed", membership="mem_gone",
                                   at=T0 + DAY, cancel_at_period_end=True), T0 + DAY)
    result = world.tick(T0 + 5 * DAY)
    assert result.reminders_owed == 0 and len(world.dms()) == 2


def test_quiet_hours_defer_to_their_end_in_the_company_timezone(world: World) -> None:
    # 15:00 UTC is 10:00 in New York; quiet 09:00-12:00 there.
    world.settings(timezone="America/New_York", quiet_hours_start="09:00", quiet_hours_end="12:00")
    world.fail(T0)
    stats = world.run_effects(T0)
    assert stats.deferred == 2 and world.dms() == []
    due = {a["due_at"] for a in world.actions()}
    assert due == {datetime(2026, 11, 2, 17, 0, tzinfo=UTC)}
    assert world.run_effects(T0 + timedelta(hours=1)).sent == 0
    assert world.tick(T0 + timedelta(hours=2)).effects.sent == 2


def test_frequency_cap_one_message_per_member_per_channel_per_20_hours(world: World) -> None:
    world.settings(reminder_offsets_days=[1])
    world.fail(T0, membership="mem_1")
    world.run_effects(T0)
    # A second membership of the same member fails 2 hours later: its T+0 waits for the cap.
    world.fail(T0 + timedelta(hours=2), membership="mem_2")
    stats = world.run_effects(T0 + timedelta(hours=2))
    assert stats.deferred == 2 and len(world.dms()) == 1
    assert world.tick(T0 + timedelta(hours=19)).effects.sent == 0
    assert world.tick(T0 + timedelta(hours=20, minutes=1)).effects.sent == 2


def test_two_concurrent_ticks_send_once(world: World, owner: Owner) -> None:
    for i in range(6):
        world.fail(T0, membership=f"mem_{i}", user=f"user_{i}", decline_code="expired_card")
    world.run_effects(T0)
    results = run_concurrently(lambda: world.tick(T0 + 2 * DAY + timedelta(minutes=5)), 2,
                               after=world.db.close)
    reminder_dms = [c for c in world.dms() if "Reminder" in c.json["content"]]
    assert len(reminder_dms) == 6
    assert sum(r.effects.sent for r in results) == 12


# --- retries, failures, crashes ---------------------------------------------------------------


def test_429_then_success_sends_once(world: World) -> None:
    world.fake.inject("POST", "/messages", "429", times=1, retry_after=1)
    world.fail(T0)
    stats = world.run_effects(T0)
    assert stats.sent == 2
    assert len([c for c in world.dms() if c.status == 200]) == 1


@pytest.mark.parametrize("status", ["400", "404", "422"])
def test_a_member_specific_refusal_fails_the_row_without_endless_retries(world: World, status: str) -> None:
    world.fake.inject("POST", "/notifications", status, times=None)
    world.fail(T0)
    world.run_effects(T0)
    push = next(a for a in world.actions() if a["channel"] == "push")
    assert push["status"] == "failed" and push["error_class"] == "permanent"
    attempts = len(world.pushes())
    world.tick(T0 + timedelta(hours=1))
    world.tick(T0 + timedelta(hours=3))
    assert len(world.pushes()) == attempts == 1


@pytest.mark.parametrize("status", ["401", "403"])
def test_our_key_refused_keeps_the_send_pending_until_whop_takes_it(world: World, status: str) -> None:
    # A key rotation: Whop refuses OUR credentials for a while. That says nothing about the
    # member, so the nudge waits and goes out once the key works again.
    world.fake.inject("POST", "/notifications", status, times=None)
    world.fail(T0)
    now = T0
    for _ in range(6):
        world.run_effects(now)
        now += timedelta(hours=1, minutes=1)
    push = next(a for a in world.actions() if a["channel"] == "push")
    assert push["status"] == "pending" and push["error_class"] == "credentials"
    assert push["attempts"] == 6
    world.fake.clear_faults()
    assert world.run_effects(now).sent == 1
    assert [c.status for c in world.pushes()][-1] == 200


def test_a_long_whop_outage_delays_a_nudge_but_never_abandons_it(world: World) -> None:
    world.fake.inject("POST", "/notifications", "503", times=None)
    world.fail(T0)
    now = T0
    for _ in range(12):  # 12 attempts over ~half a day: far past any fixed attempt budget
        world.run_effects(now)
        now += timedelta(hours=1, minutes=1)
    push = next(a for a in world.actions() if a["channel"] == "push")
    assert push["status"] == "pending" and push["error_class"] == "unavailable"
    world.fake.clear_faults()
    world.tick(now)
    push = next(a for a in world.actions() if a["channel"] == "push")
    assert push["status"] == "sent" and push["attempts"] == 13


def test_backoff_is_capped_at_one_hour(world: World) -> None:
    world.fake.inject("POST", "/notifications", "500", times=None)
    world.fail(T0)
    now = T0
    for _ in range(9):
        world.run_effects(now)
        push = next(a for a in world.actions() if a["channel"] == "push")
        assert push["due_at"] - now <= timedelta(hours=1)
        now = push["due_at"]


def test_an_outage_that_outlasts_the_window_settles_as_skipped(world: World) -> None:
    world.fake.inject("POST", "/notifications", "500", times=None)
    world.fail(T0)
    world.run_effects(T0 + 14 * DAY - timedelta(seconds=30))  # next try: past the window
    push = next(a for a in world.actions() if a["channel"] == "push")
    assert push["status"] == "skipped" and push["error_detail"] == "window_passed"
    world.fake.clear_faults()
    world.tick(T0 + 15 * DAY)
    assert [c for c in world.pushes() if c.status == 200] == []


def test_absurd_retry_after_is_capped_and_the_other_channel_still_goes(world: World) -> None:
    world.fake.inject("POST", "/notifications", "429", times=None, retry_after="1e15")
    world.fail(T0)
    stats = world.run_effects(T0)
    assert stats.errors == 0 and stats.sent == 1  # the DM went
    push = next(a for a in world.actions() if a["channel"] == "push")
    assert push["status"] == "pending" and push["error_class"] == "rate_limited"
    assert push["due_at"] == T0 + timedelta(hours=1)
    assert [a["status"] for a in world.actions()].count("claimed") == 0


def test_one_failing_row_is_released_alone(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.fail(T0)
    real = effects.perform

    def broken(ctx: claims.Context, c: claims.Claim, now: datetime) -> Any:
        if c.channel == "push":
            raise OverflowError("a bug in our own code")
        return real(ctx, c, now)

    monkeypatch.setattr(effects, "perform", broken)
    stats = world.run_effects(T0)
    assert stats.errors == 1 and stats.sent == 1
    rows = {a["channel"]: a for a in world.actions()}
    assert rows["dm"]["status"] == "sent"
    assert rows["push"]["status"] == "pending" and rows["push"]["error_detail"] == "OverflowError"
    monkeypatch.setattr(effects, "perform", real)
    assert world.run_effects(rows["push"]["due_at"]).sent == 1


def test_a_late_executor_cannot_overwrite_the_claim_holders_result(world: World) -> None:
    world.fail(T0)
    first = claim_gate.claim(A, T0, world.db, kinds=("nudge",))
    dm_first = next(c for c in first if c.channel == "dm")
    # The first executor stalls past its lease; a second one claims the row and sends it.
    later = T0 + claims.LEASE + timedelta(minutes=1)
    world.leases_run_out()
    assert world.run_effects(later).sent == 2
    from chalicelib.whop import WhopResult
    late = effects.record(A, dm_first, WhopResult(ok=False, status_code=400, error_class="permanent",
                                                  error_code="http_400"), later, world.db)
    assert late == "lost"
    dm = next(a for a in world.actions() if a["channel"] == "dm")
    assert dm["status"] == "sent"


def test_the_frequency_cap_counts_sends_in_flight(world: World) -> None:
    world.fail(T0, membership="mem_1", user="user_1")
    held = claim_gate.claim(A, T0, world.db, kinds=("nudge",))  # in flight, not yet recorded
    assert {c.channel for c in held} == {"push", "dm"}
    # The same member fails on a second membership: its T+0 must wait for the in-flight one.
    world.fail(T0 + timedelta(minutes=1), membership="mem_2", user="user_1")
    stats = world.run_effects(T0 + timedelta(minutes=1))
    assert stats.sent == 0 and stats.deferred == 2
    assert world.dms() == []


def test_crash_after_claim_before_send_is_sent_once_on_the_next_tick(world: World) -> None:
    world.fail(T0)
    claimed = claim_gate.claim(A, T0, world.db)  # ... and the process dies here
    assert len(claimed) == 2 and world.dms() == []
    assert world.run_effects(T0 + timedelta(minutes=1)).sent == 0  # the lease still holds
    world.leases_run_out()
    result = world.tick(T0 + claims.LEASE + timedelta(minutes=1))
    assert result.effects.sent == 2 and len(world.dms()) == 1


def test_crash_after_send_before_record_does_not_send_twice(world: World) -> None:
    world.fail(T0)
    for c in claim_gate.claim(A, T0, world.db):
        effects.perform(world.ctx, c, T0)  # Whop did it; the record step never ran
    world.leases_run_out()
    world.tick(T0 + claims.LEASE + timedelta(minutes=1))
    assert len(world.fake.state()["messages"]) == 1


# --- incentives -----------------------------------------------------------------------------------


def test_incentive_per_company_setting(world: World) -> None:
    # 5 (not the 3 or 2 used elsewhere) and an explicit 0: a hard-coded value cannot pass.
    world.settings(A, incentive_days=5)
    world.settings(B, incentive_days=0)
    a_case = world.fail(T0, company=A, membership="mem_a", user="user_a")
    b_case = world.fail(T0, company=B, membership="mem_b", user="user_b")
    world.run_effects(T0, A)
    world.run_effects(T0, B)
    extends = world.fake.calls_to("POST", r"/memberships/[^/]+/extend")
    assert [(c.api_path, c.json) for c in extends] == [("/memberships/mem_a/extend", {"days": 5})]
    a = world.case(a_case, A)
    assert a["incentive_days"] == 5 and a["incentive_cost_minor"] == round(5 * 1999 / 30)
    assert world.case(b_case, B)["incentive_days"] == 0
    assert [x["kind"] for x in world.actions(B)] == ["nudge", "nudge"]  # no incentive row for B
    sent = next(x for x in world.actions(A) if x["kind"] == "incentive")
    assert sent["status"] == "sent" and sent["result"]["days"] == 5


def test_incentive_once_under_duplicates_and_concurrency(world: World) -> None:
    world.settings(incentive_days=2)
    msg = payment_event("payment.failed", company=A, membership="mem_1", user="user_1", at=T0)
    world.fake.add_membership("mem_1", company_id=A, user_id="user_1")
    world.deliver(msg, T0)
    world.deliver(msg, T0)  # redelivery

    run_concurrently(lambda: world.run_effects(T0), 3, after=world.db.close)
    world.leases_run_out()
    world.tick(T0 + claims.LEASE + timedelta(minutes=1))
    ok = [c for c in world.fake.calls_to("POST", r"/memberships/mem_1/extend") if c.status == 200]
    assert len(ok) == 1 and ok[0].json == {"days": 2}


def test_at_most_one_incentive_per_member_per_90_days(world: World) -> None:
    world.settings(incentive_days=2, reminder_offsets_days=[13])
    world.fail(T0, membership="mem_1")
    world.run_effects(T0)
    world.deliver(payment_event("payment.succeeded", membership="mem_1", at=T0 + DAY), T0 + DAY)
    second = world.fail(T0 + 20 * DAY, membership="mem_1")
    world.run_effects(T0 + 20 * DAY)
    incentive = next(a for a in world.actions(case_id=second) if a["kind"] == "incentive")
    assert incentive["status"] == "skipped" and incentive["error_detail"] == "recent_incentive"
    third = world.fail(T0 + 100 * DAY, membership="mem_1")
    world.run_effects(T0 + 100 * DAY)
    incentive = next(a for a in world.actions(case_id=third) if a["kind"] == "incentive")
    assert incentive["status"] == "sent"


def test_late_webhook_never_messages_a_member(world: World) -> None:
    world.fail(T0, now=T0 + 20 * DAY)
    world.run_effects(T0 + 20 * DAY)
    world.tick(T0 + 20 * DAY)
    assert world.pushes() == [] and world.dms() == []


# --- tracked links --------------------------------------------------------------------------------


def test_tracked_link_records_the_click_and_redirects(world: World) -> None:
    from chalicelib.links import follow

    case_id = world.fail(T0, recovery_url="https://whop.com/checkout/3ds/pay_1")
    token = world.case(case_id)["link_token"]
    click = follow(token, T0 + timedelta(hours=1), get_whop(), world.db)
    assert (click.status, click.location) == ("redirect", "https://whop.com/checkout/3ds/pay_1")
    row = world.case(case_id)
    assert row["link_clicks"] == 1 and row["last_clicked_at"] == T0 + timedelta(hours=1)


def test_tracked_link_falls_back_to_manage_url_and_expires_with_the_case(world: World) -> None:
    from chalicelib.links import follow

    case_id = world.fail(T0, membership="mem_9")
    token = world.case(case_id)["link_token"]
    click = follow(token, T0, get_whop(), world.db)
    assert click.status == "redirect" and click.location == world.fake.membership("mem_9")["manage_url"]
    world.deliver(payment_event("payment.succeeded", membership="mem_9", at=T0 + DAY), T0 + DAY)
    assert follow(token, T0 + DAY, get_whop(), world.db).status == "expired"
    assert follow("x" * 43, T0, get_whop(), world.db).status == "unknown"
    assert follow("../../etc", T0, get_whop(), world.db).status == "unknown"


def test_a_tick_skips_rows_another_tick_holds_instead_of_waiting(world: World,
                                                                 local_database: Any) -> None:
    world.fail(T0)
    with tenant_transaction(A, world.db) as tx:  # make a lock wait fail fast, not hang
        tx.query("SELECT set_config('lock_timeout', '2000', false)")
    other = Database(local_database.runtime_url)
    try:
        with tenant_transaction(A, other) as held:
            held.query("SELECT id FROM recovery_actions FOR UPDATE")
            held.query("SELECT id FROM recovery_cases FOR UPDATE")
            assert claim_gate.claim(A, T0, world.db) == []
            assert scheduler.owe_reminders(A, T0 + 3 * DAY, world.db) == (0, 0)
    finally:
        other.close()
    assert len(claim_gate.claim(A, T0, world.db)) == 2


@pytest.mark.parametrize(("minor", "currency", "shown"), [
    (1999, "usd", "$19.99"), (500, "jpy", "500 JPY"), (12345, "kwd", "12.345 KWD"),
    (100000, "eur", "€1,000.00"), (None, "usd", "your renewal")])
def test_amounts_in_copy_respect_the_currency_minor_unit(minor: int | None, currency: str,
                                                        shown: str) -> None:
    from chalicelib.messages import format_amount

    assert format_amount(minor, currency) == shown


def test_execute_owed_can_be_limited_to_some_kinds(world: World) -> None:
    world.settings(incentive_days=2)
    case_id = world.fail(T0)
    stats = effects.execute_owed(world.ctx, A, T0, world.db, case_id=case_id, kinds=("incentive",))
    assert stats.sent == 1
    statuses = {a["kind"]: a["status"] for a in world.actions(case_id=case_id)}
    assert statuses == {"nudge": "pending", "incentive": "sent"}
    assert world.dms() == [] and world.pushes() == []


def test_a_case_the_creator_cancelled_stays_cancelled(world: World) -> None:
    from chalicelib.store import cases as case_store

    case_id = world.fail(T0)
    with tenant_transaction(A, world.db) as tx:
        case_store.close_case_by_creator(tx, case_id, close_reason="creator_cancelled", user_id="user_admin",
                                         now=T0 + DAY)
    world.deliver(payment_event("payment.failed", at=T0 + 2 * DAY), T0 + 2 * DAY)
    world.deliver(payment_event("payment.succeeded", at=T0 + 3 * DAY), T0 + 3 * DAY)
    row = world.case(case_id)
    assert row["status"] == "cancelled" and row["cancelled_by"] == "user_admin"
    assert row["failure_count"] == 2  # the facts still follow the events
    assert world.tick(T0 + 4 * DAY).reminders_owed == 0
