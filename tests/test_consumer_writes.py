"""The consumer writes only what a re-fold changed (issue 13), and still writes all of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chalicelib import processing
from chalicelib.db_pool import Database
from chalicelib.queue import QueuedWebhook
from chalicelib.tenancy import tenant_transaction
from tests.helpers import payment_event

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
A = "biz_alpha"


def _deliver(database: Database, kind: str, at: datetime, msg_id: str, payment: str) -> processing.Outcome:
    _, body = payment_event(kind, company=A, membership="mem_1", user="user_1", at=at, msg_id=msg_id,
                            payment=payment)
    return processing.process_webhook(QueuedWebhook(msg_id, NOW, body), NOW, database)


def _cases(database: Database) -> list[dict[str, object]]:
    with tenant_transaction(A, database) as tx:
        return tx.query("SELECT id::text AS id, status, failure_count, updated_at FROM recovery_cases"
                        " ORDER BY first_failure_at")


def test_a_past_case_the_fold_leaves_alone_is_not_rewritten(database: Database) -> None:
    _deliver(database, "payment.failed", NOW - timedelta(days=40), "msg_f1", "pay_1")
    _deliver(database, "payment.succeeded", NOW - timedelta(days=39), "msg_s1", "pay_1")
    (past,) = _cases(database)
    assert past["status"] == "recovered"

    opened = _deliver(database, "payment.failed", NOW - timedelta(hours=2), "msg_f2", "pay_2")
    again = _deliver(database, "payment.failed", NOW - timedelta(hours=1), "msg_f3", "pay_2")
    assert opened.status == again.status == "applied" and len(opened.opened_case_ids) == 1
    assert again.opened_case_ids == []
    past_now, current = _cases(database)
    assert past_now == past  # same row, same updated_at: the re-folds did not write it
    assert current["id"] == opened.opened_case_ids[0]
    assert current["status"] == "open" and current["failure_count"] == 2  # the changed one was written


def test_a_new_case_and_what_it_owes_are_written_together_with_their_keys(database: Database) -> None:
    out = _deliver(database, "payment.failed", NOW - timedelta(hours=1), "msg_f1", "pay_1")
    (case_id,) = out.opened_case_ids
    assert out.owed_actions == 2
    with tenant_transaction(A, database) as tx:
        rows = tx.query("SELECT kind, step, channel, status, idempotency_key, case_id::text AS case_id"
                        " FROM recovery_actions ORDER BY channel")
    assert rows == [
        {"kind": "nudge", "step": "t0", "channel": "dm", "status": "pending",
         "idempotency_key": f"{case_id}:t0:dm", "case_id": case_id},
        {"kind": "nudge", "step": "t0", "channel": "push", "status": "pending",
         "idempotency_key": f"{case_id}:t0:push", "case_id": case_id},
    ]
    # A redelivery is a duplicate: nothing re-read, nothing owed twice.
    redelivered = _deliver(database, "payment.failed", NOW - timedelta(hours=1), "msg_f1", "pay_1")
    assert redelivered.status == "duplicate"
    with tenant_transaction(A, database) as tx:
        assert tx.scalar("SELECT count(*) FROM recovery_actions") == 2


def test_a_closing_event_settles_what_the_case_still_owed_in_the_same_write(database: Database) -> None:
    _deliver(database, "payment.failed", NOW - timedelta(hours=3), "msg_f1", "pay_1")
    _deliver(database, "payment.succeeded", NOW - timedelta(hours=1), "msg_s1", "pay_1")
    (case,) = _cases(database)
    assert case["status"] == "recovered"
    with tenant_transaction(A, database) as tx:
        assert {(r["status"], r["error_detail"]) for r in
                tx.query("SELECT status, error_detail FROM recovery_actions")} == {("skipped", "case_closed")}


def test_settings_read_with_the_event_shape_what_is_owed(database: Database) -> None:
    with tenant_transaction(A, database) as tx:
        tx.execute("INSERT INTO creator_settings (company_id, enable_push, incentive_days, quiet_hours_start,"
                   " quiet_hours_end, timezone) VALUES (:c, false, 3, '22:00', '07:30', 'Europe/Paris')", c=A)
    out = _deliver(database, "payment.failed", NOW - timedelta(hours=1), "msg_f1", "pay_1")
    with tenant_transaction(A, database) as tx:
        rows = tx.query("SELECT kind, channel FROM recovery_actions")
    kinds = sorted((r["kind"], r["channel"]) for r in rows)
    assert out.owed_actions == 2 and kinds == [("incentive", None), ("nudge", "dm")]
