"""Issue 8: nothing lost, nothing stuck, nothing doubled — each numbered failure as a test.

The pipeline tests run the real path: signed webhook → route → moto SQS → process_events →
Postgres (RLS, runtime role) → fake Whop over HTTP. The tick tests inject the clock.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chalicelib import processing, scheduler
from chalicelib.db import ConstraintViolation
from chalicelib.queue import QueuedWebhook, decode_message, encode_message
from chalicelib.tenancy import service_transaction, tenant_transaction
from tests import test_nudges, test_pipeline
from tests.conftest import Owner
from tests.helpers import membership_event, payment_event
from tests.test_nudges import DAY, T0, World
from tests.test_pipeline import NOW, Pipeline

# The same fixtures as the nudge and pipeline suites (pytest finds them by these names).
world = test_nudges.world
pipeline = test_pipeline.pipeline

A, B, C = "biz_alpha", "biz_bravo", "biz_charlie"


# --- 1. one company never stops the others; one row never strands its batch ----------------------


def test_one_companys_failure_does_not_stop_another_companys_reminders(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # A hard decline: its first reminder is on day 2 (a soft one's waits until day 3).
    world.fail(T0, company=A, membership="mem_a", user="user_a", decline_code="expired_card")
    world.fail(T0, company=B, membership="mem_b", user="user_b", decline_code="expired_card")
    world.run_effects(T0, company=A)
    world.run_effects(T0, company=B)
    real = scheduler.owe_reminders

    def broken_for_a(company_id: str, now: datetime, db: Any = None, limit: int = 200) -> Any:
        if company_id == A:
            raise RuntimeError("one company's bad row")
        return real(company_id, now, db, limit)

    monkeypatch.setattr(scheduler, "owe_reminders", broken_for_a)
    result = world.tick(T0 + 2 * DAY + timedelta(minutes=1))
    assert result.failed_companies == 1
    assert result.as_metrics()["TickCompanyFailed"] == 1
    b_reminders = [a for a in world.actions(company=B) if a["kind"] == "reminder"]
    assert {a["status"] for a in b_reminders} == {"sent"} and len(b_reminders) == 2


def test_a_timezone_that_no_longer_loads_falls_back_to_utc(world: World) -> None:
    world.settings(company=A, timezone="Mars/Olympus_Mons", quiet_hours_start="02:00",
                   quiet_hours_end="03:00")
    world.fail(T0, company=A)
    result = world.tick(T0)
    assert result.failed_companies == 0 and result.effects.sent == 2
    # 02:30 UTC is inside the quiet hours read in UTC: deferred to 03:00 UTC.
    world.fail(T0 + timedelta(hours=11, minutes=30), company=A, membership="mem_2", user="user_2")
    deferred = world.tick(T0 + timedelta(hours=11, minutes=30))
    assert deferred.effects.deferred == 2


# --- 9. fair, bounded ticks --------------------------------------------------------------------


def test_companies_with_the_oldest_due_work_come_first(world: World) -> None:
    for company, hours in ((C, 1), (A, 3), (B, 2)):
        world.fail(T0 - timedelta(hours=hours), company=company, membership=f"mem_{company}",
                   user=f"user_{company}", now=T0 - timedelta(hours=hours))
    with service_transaction(world.db) as tx:
        order = [r["company_id"] for r in tx.query("SELECT company_id FROM due_company_ids(:now, 10)",
                                                    now=T0)]
    assert order == [A, B, C]


def test_a_tick_out_of_time_stops_claiming_and_the_next_tick_continues(world: World) -> None:
    world.fake.add_experience(C, world.fake.app_id, "exp_c")
    for company, hours in ((A, 3), (B, 2), (C, 1)):
        world.fail(T0 - timedelta(hours=hours), company=company, membership=f"mem_{company}",
                   user=f"user_{company}", now=T0 - timedelta(hours=hours))
    def out_of_time() -> bool:
        # Time for the first company's first send only (the budget is asked before every claim
        # and every Whop call, so counting the asks would count lookups too).
        return bool(world.dms() or world.pushes())

    first = scheduler.tick(world.ctx, T0, world.db, out_of_time=out_of_time)
    assert first.budget_exhausted and first.as_metrics()["TickBudgetExhausted"] == 1
    assert first.companies == 1 and first.effects.sent == 1
    for company in (A, B, C):  # nothing is left claimed behind a stopped tick
        assert "claimed" not in {a["status"] for a in world.actions(company=company)}
    second = world.tick(T0)
    assert second.effects.sent == 5 and not second.budget_exhausted
    assert len(world.dms()) == 3


# --- 4. input that cannot be stored -----------------------------------------------------------


def test_nul_in_a_signed_webhook_is_stored_without_it_never_lost(pipeline: Pipeline) -> None:
    msg_id, body = payment_event("payment.failed", at=NOW - DAY)
    envelope = json.loads(body)
    envelope["data"]["failure_message"] = "Card declined\u0000"
    envelope["data"]["decline_code"] = "do_not_honor\u0000\ufffe\uffff"
    body = json.dumps(envelope).encode()
    assert pipeline.deliver(msg_id, body).status_code == 200
    assert pipeline.drain() == (1, 0)
    assert pipeline.depth(pipeline.queues.dlq_url) == 0
    case = pipeline.rows(A, "SELECT failure_reason, decline_code FROM recovery_cases")[0]
    assert case == {"failure_reason": "Card declined", "decline_code": "do_not_honor"}


@pytest.mark.parametrize("text", ["\ufffe\uffff", "\ud800 lone surrogate", "\x07\x1b bell",
                                  "RTL \u202e override", "emoji 😀 ok", "zero\u200bwidth"])
def test_any_unicode_survives_the_queue_and_the_database(pipeline: Pipeline, text: str) -> None:
    msg_id, body = payment_event("payment.failed", at=NOW - DAY)
    envelope = json.loads(body)
    envelope["data"]["failure_message"] = text
    body = json.dumps(envelope).encode()  # JSON escapes: a lone surrogate arrives as \ud800
    assert pipeline.deliver(msg_id, body).status_code == 200
    assert pipeline.drain() == (1, 0)
    assert pipeline.depth(pipeline.queues.dlq_url) == 0
    assert len(pipeline.rows(A, "SELECT id FROM recovery_cases")) == 1


def test_an_event_that_breaks_a_constraint_is_a_poison_record_not_a_dead_letter(
        database: Any, owner: Owner, monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib.store import events as event_store

    def refuse(*_: Any, **__: Any) -> bool:
        raise ConstraintViolation("check violated", "23514")

    monkeypatch.setattr(event_store, "insert_event", refuse)
    msg_id, body = payment_event("payment.failed", at=NOW - DAY)
    out = processing.process_webhook(QueuedWebhook(msg_id, NOW, body), NOW, database)
    assert out.status == "poisoned"
    assert owner.run("SELECT webhook_id, error_class FROM poison_events") == [[msg_id, "ConstraintViolation"]]
    # A redelivery is the same record, once.
    processing.process_webhook(QueuedWebhook(msg_id, NOW, body), NOW, database)
    assert owner.run("SELECT count(*) FROM poison_events") == [[1]]


def test_a_failing_record_is_logged_with_its_webhook_id_and_error_class(
        pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from chalicelib.db import DatabaseUnavailable

    msg_id, body = payment_event("payment.failed", at=NOW - DAY)
    pipeline.deliver(msg_id, body)

    def down(*_: Any, **__: Any) -> Any:
        raise DatabaseUnavailable("injected")

    monkeypatch.setattr(processing, "process_webhook", down)
    assert pipeline.drain()[1] >= 1
    failed = [vars(r) for r in caplog.records if r.getMessage().startswith("webhook record failed")]
    assert failed and failed[0]["webhook_id"] == msg_id
    assert failed[0]["error_class"] == "DatabaseUnavailable"


# --- 7. the queue carries no PII, and survives any Unicode ---------------------------------------


def test_the_queued_message_is_the_minimised_event_in_ascii(pipeline: Pipeline) -> None:
    msg_id, body = payment_event("payment.failed", at=NOW - DAY)
    envelope = json.loads(body)
    envelope["data"]["failure_message"] = "Karte abgelehnt — ünïcödé ✓"
    body = json.dumps(envelope, ensure_ascii=False).encode()
    assert b"buyer@example.com" in body and b"Jane" in body
    pipeline.deliver(msg_id, body)
    messages = pipeline.sqs.receive_message(QueueUrl=pipeline.queues.queue_url, MaxNumberOfMessages=10,
                                            MessageAttributeNames=["All"], VisibilityTimeout=0)["Messages"]
    text = messages[0]["Body"]
    assert text.isascii()
    for pii in ("buyer@example.com", "Jane", "jane", "Acme"):
        assert pii not in text
    content = json.loads(text)
    assert content["event"]["membership_id"] == "mem_1"
    assert content["event"]["failure_message"] == "Karte abgelehnt — ünïcödé ✓"


def _queued(pipeline: Pipeline) -> list[dict[str, Any]]:
    messages = pipeline.sqs.receive_message(QueueUrl=pipeline.queues.queue_url, MaxNumberOfMessages=10,
                                            MessageAttributeNames=["All"], VisibilityTimeout=0)["Messages"]
    return [json.loads(m["Body"]) for m in messages]


def test_the_card_networks_free_text_is_queued_only_as_far_as_the_fold_needs_it(pipeline: Pipeline) -> None:
    # issue 20: failure_message is free text from the card network. The fold needs it for the
    # case's failure reason and its decline class, of failures only; never card or contact data.
    text = ("Do not honor: card 4242 4242 4242 4242 (exp 12/29) of jane.doe+x@example.com, "
            "call +1 (555) 010-7788. Insufficient funds.")
    msg_id, body = payment_event("payment.failed", at=NOW - DAY, failure_message=text,
                                 decline_code=None)
    pipeline.deliver(msg_id, body)
    success_id, success = payment_event("payment.succeeded", at=NOW - DAY + timedelta(hours=1))
    envelope = json.loads(success)
    envelope["data"]["failure_message"] = text  # Whop reuses the failed payment's object
    pipeline.deliver(success_id, json.dumps(envelope).encode())
    queued = {m["event"]["type"]: m["event"] for m in _queued(pipeline)}
    raw = json.dumps(queued)
    for secret in ("4242", "jane.doe", "example.com", "555", "7788", "12/29"):
        assert secret not in raw, secret
    assert queued["payment.succeeded"]["failure_message"] is None
    reason = queued["payment.failed"]["failure_message"]
    assert reason == ("Do not honor: card [number] (exp [number]) of [email], call [number]. "
                      "Insufficient funds.")
    assert pipeline.drain() == (2, 0)
    cases = pipeline.rows("biz_alpha", "SELECT failure_reason, decline_class FROM recovery_cases")
    assert cases == [{"failure_reason": reason, "decline_class": "card_soft"}]  # still classified


def test_encode_refuses_a_message_with_neither_or_both_contents() -> None:
    with pytest.raises(ValueError):
        encode_message("msg_1", NOW)
    text, attributes = encode_message("msg_1", NOW, unusable="malformed webhook: data missing")
    lambda_shape = {k: {"stringValue": v["StringValue"]} for k, v in attributes.items()}
    decoded = decode_message(text, lambda_shape)
    assert decoded.unusable == "malformed webhook: data missing" and decoded.event is None


# --- 8. stable case identity ------------------------------------------------------------------


def test_a_late_older_failure_never_shifts_a_case_or_re_nudges(world: World) -> None:
    now = T0
    current = world.fail(now - DAY, now=now)  # the episode the member was nudged about
    world.run_effects(now)
    assert len(world.dms()) == 1
    late_msg = payment_event("payment.failed", at=now - 20 * DAY, msg_id="msg_late_old")
    out = world.deliver(late_msg, now)
    # The old failure is its own (expired) episode; the current case keeps its row and id.
    assert len(out.opened_case_ids) == 1 and out.opened_case_ids[0] != current
    with tenant_transaction(A, world.db) as tx:
        rows = tx.query("SELECT id::text AS id, seq, status, episode_webhook_id, first_failure_at"
                        " FROM recovery_cases ORDER BY first_failure_at")
    assert [r["status"] for r in rows] == ["expired", "open"]
    assert rows[1]["id"] == current and rows[1]["seq"] == 2
    assert rows[0]["episode_webhook_id"] == "msg_late_old"
    world.tick(now + timedelta(minutes=1))
    assert len(world.dms()) == 1  # nobody was messaged twice


def test_a_late_failure_inside_the_episode_updates_it_in_place(world: World) -> None:
    now = T0
    current = world.fail(now - DAY, now=now)
    world.run_effects(now)
    out = world.deliver(payment_event("payment.failed", at=now - 3 * DAY), now)
    assert out.opened_case_ids == []
    case = world.case(current)
    assert case["first_failure_at"] == now - 3 * DAY and case["failure_count"] == 2
    world.tick(now + timedelta(minutes=1))
    assert len(world.dms()) == 1


def test_a_row_from_before_episode_identity_is_matched_once_and_gains_it(world: World, owner: Owner) -> None:
    current = world.fail(T0 - DAY, now=T0)
    owner.run("UPDATE recovery_cases SET episode_webhook_id = NULL")
    world.deliver(payment_event("payment.failed", at=T0 - timedelta(hours=2)), T0)
    with tenant_transaction(A, world.db) as tx:
        rows = tx.query("SELECT id::text AS id, episode_webhook_id, failure_count FROM recovery_cases")
    assert len(rows) == 1 and rows[0]["id"] == current
    assert rows[0]["episode_webhook_id"] is not None and rows[0]["failure_count"] == 2


def test_a_case_that_closes_settles_its_pending_rows_at_once(world: World) -> None:
    world.fake.inject("POST", "/messages", "503", times=None)
    case_id = world.fail(T0)
    world.run_effects(T0)
    assert {a["channel"]: a["status"] for a in world.actions()}["dm"] == "pending"
    world.deliver(payment_event("payment.succeeded", at=T0 + timedelta(hours=1)), T0 + timedelta(hours=1))
    assert world.case(case_id)["status"] == "recovered"
    dm = next(a for a in world.actions() if a["channel"] == "dm")
    assert dm["status"] == "skipped" and dm["error_detail"] == "case_closed"


def test_expiry_settles_pending_rows_with_the_reason(world: World) -> None:
    world.fake.inject("POST", "/messages", "503", times=None)
    case_id = world.fail(T0)
    world.run_effects(T0)
    world.fake.clear_faults()
    world.tick(T0 + 15 * DAY)
    assert world.case(case_id)["status"] == "expired"
    dm = next(a for a in world.actions() if a["channel"] == "dm")
    assert dm["status"] == "skipped" and dm["error_detail"] == "window_passed"
    assert [c for c in world.dms() if c.status == 200] == []


def test_member_cancellation_after_a_late_reorder_keeps_one_case(world: World) -> None:
    current = world.fail(T0 - DAY, now=T0)
    world.deliver(membership_event("membership.cancel_at_period_end_changed", at=T0,
                                   cancel_at_period_end=True), T0)
    world.deliver(payment_event("payment.failed", at=T0 - 2 * DAY), T0)
    with tenant_transaction(A, world.db) as tx:
        rows = tx.query("SELECT id::text AS id, status FROM recovery_cases")
    assert rows == [{"id": current, "status": "cancelled"}]


def test_retry_after_in_an_http_date_far_away_is_capped() -> None:
    from chalicelib.retry_policy import retry_delay
    from chalicelib.whop import MAX_RETRY_AFTER_S
    from chalicelib.whop_retries import parse_retry_after

    assert parse_retry_after("1e15") == MAX_RETRY_AFTER_S
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT") == MAX_RETRY_AFTER_S
    assert retry_delay(10_000, 1e300) == timedelta(hours=1)
    assert retry_delay(1, float("nan")) == timedelta(minutes=1)
    assert datetime(2026, 1, 1, tzinfo=UTC) + retry_delay(10_000_000) < datetime(2026, 1, 2, tzinfo=UTC)


def test_a_retry_sends_the_same_body_under_the_same_key(world: World) -> None:
    # Whop applies the DM, the response is lost, and the ledger retries a day later: the copy
    # (with its days-left count) must be identical, or Whop refuses the reused key.
    world.fake.inject("POST", "/messages", "drop_after", times=2)
    world.fail(T0)
    world.run_effects(T0)
    dm = next(a for a in world.actions() if a["channel"] == "dm")
    assert dm["status"] == "pending"
    world.run_effects(T0 + DAY)
    dm = next(a for a in world.actions() if a["channel"] == "dm")
    assert dm["status"] == "sent"
    bodies = {c.json["content"] for c in world.dms()}
    assert len(bodies) == 1 and "14 days" in bodies.pop()
    assert len(world.fake.state()["messages"]) == 1


def test_a_reminder_never_overtakes_the_t0_it_follows(world: World) -> None:
    world.fake.inject("POST", "/messages", "503", times=None)
    case_id = world.fail(T0)
    world.run_effects(T0)  # the T+0 DM is retrying through an outage
    # A late, older failure moves the episode's start back 3 days: reminder r2 is now due too.
    world.deliver(payment_event("payment.failed", at=T0 - 3 * DAY), T0 + timedelta(minutes=30))
    world.fake.clear_faults()
    world.tick(T0 + timedelta(hours=1))
    rows = {(a["step"], a["channel"]): a["status"] for a in world.actions(case_id=case_id)}
    assert rows[("t0", "dm")] == "sent"
    assert rows.get(("r2", "dm")) in (None, "pending")
    contents = [c.json["content"] for c in world.dms() if c.status == 200]
    assert len(contents) == 1 and not contents[0].startswith("Reminder")


def test_a_case_opened_late_does_not_get_a_reminder_with_its_t0(world: World) -> None:
    case_id = world.fail(T0 - 5 * DAY, now=T0)  # processed 5 days after the failure
    world.tick(T0 + timedelta(minutes=5))
    assert world.case(case_id)["last_reminder_offset"] == 4
    steps = [a["step"] for a in world.actions(case_id=case_id)]
    assert "r2" not in steps and "r4" not in steps


def test_an_incentive_in_doubt_counts_as_granted(world: World) -> None:
    # Whop applies the extension but the answer is lost; the case then recovers and the row is
    # settled as skipped. The member's next episode must not get a second incentive.
    world.settings(company=A, incentive_days=3)
    world.fake.inject("POST", r"/memberships/[^/]+/extend", "drop_after", times=None)
    first = world.fail(T0)
    world.run_effects(T0)
    world.deliver(payment_event("payment.succeeded", at=T0 + DAY), T0 + DAY)
    assert world.case(first)["status"] == "recovered"
    world.fake.clear_faults()
    second = world.fail(T0 + 20 * DAY, now=T0 + 20 * DAY)
    world.run_effects(T0 + 20 * DAY)
    incentive = next(a for a in world.actions(case_id=second) if a["kind"] == "incentive")
    assert incentive["status"] == "skipped" and incentive["error_detail"] == "recent_incentive"
    applied = [c for c in world.fake.calls_to("POST", r"/memberships/[^/]+/extend")
               if c.status is None or (200 <= c.status < 300 and not c.replayed)]
    assert len({c.idempotency_key for c in applied}) == 1
