"""Webhook in → SQS (moto) → process_events → Postgres (RLS, runtime role), end to end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from chalice.test import Client
from moto import mock_aws

from chalicelib import config, effects, processing, queue
from chalicelib.db_pool import Database
from chalicelib.tenancy import tenant_transaction
from scripts import local_sqs, redrive
from scripts.fake_whop import FakeWhop
from tests.helpers import membership_event, payment_event, sign

NOW = datetime.now(UTC)
DAY = timedelta(days=1)


@dataclass
class Pipeline:
    client: Client
    sqs: Any
    queues: local_sqs.Queues
    db: Database
    whop: FakeWhop

    def deliver(self, msg_id: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
        return self.client.http.post("/webhooks/whop", body=body, headers=headers or sign(body, msg_id))

    def drain(self) -> tuple[int, int]:
        from app import process_events

        return local_sqs.drain(self.sqs, self.queues, process_events)

    def depth(self, url: str | None = None) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=url or self.queues.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
        return sum(int(v) for v in attrs["Attributes"].values())

    def rows(self, company: str, sql: str, **params: Any) -> list[dict[str, Any]]:
        with tenant_transaction(company, self.db) as tx:
            return tx.query(sql, **params)


@pytest.fixture
def pipeline(database: Database, whop_env: FakeWhop, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    effects.clear_experience_cache()
    for company in ("biz_alpha", "biz_bravo"):
        whop_env.add_experience(company, whop_env.app_id, f"exp_{company}")
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        # Visibility 0: a failed record is visible again at once, so retries need no waiting.
        queues = local_sqs.ensure_queues(sqs, visibility_timeout=0)
        monkeypatch.setenv("EVENTS_QUEUE_URL", queues.queue_url)
        config.reset_config()
        queue.reset_queue()
        from app import app

        with Client(app) as client:
            yield Pipeline(client, sqs, queues, database, whop_env)
        queue.reset_queue()


def test_failed_payment_opens_a_case_at_event_time_and_owes_the_t0_nudges(pipeline: Pipeline) -> None:
    failed_at = NOW - timedelta(hours=3)
    msg_id, body = payment_event("payment.failed", at=failed_at)
    resp = pipeline.deliver(msg_id, body)
    assert resp.status_code == 200 and json.loads(resp.body) == {"status": "queued"}
    assert pipeline.drain() == (1, 0)

    cases = pipeline.rows("biz_alpha", "SELECT * FROM recovery_cases")
    assert len(cases) == 1
    case = cases[0]
    assert case["status"] == "open" and case["membership_id"] == "mem_1"
    assert case["first_failure_at"] == failed_at
    assert case["amount_minor"] == 1999 and case["currency"] == "usd"
    assert case["decline_code"] == "insufficient_funds"
    # The T+0 nudge went out in the same consumer run, after commit: push + DM at the fake Whop.
    # (A soft decline is also owed its payday retry when a payday falls in its window: issue 18.)
    actions = pipeline.rows("biz_alpha", "SELECT kind, step, channel, status FROM recovery_actions"
                                         " WHERE kind <> 'payment_retry' ORDER BY channel")
    assert actions == [{"kind": "nudge", "step": "t0", "channel": "dm", "status": "sent"},
                       {"kind": "nudge", "step": "t0", "channel": "push", "status": "sent"}]
    pushes = pipeline.whop.calls_to("POST", "/notifications")
    assert len(pushes) == 1 and pushes[0].json["user_ids"] == ["user_1"]
    assert pushes[0].json["experience_id"] == "exp_biz_alpha"
    assert "/r/" + case["link_token"] in pushes[0].json["content"]
    messages = pipeline.whop.calls_to("POST", "/messages")
    assert len(messages) == 1 and "$19.99" in messages[0].json["content"]
    stored = pipeline.rows("biz_alpha", "SELECT payload::text AS p, occurred_at FROM events")
    assert "buyer@example.com" not in stored[0]["p"] and "Jane" not in stored[0]["p"]
    assert stored[0]["occurred_at"] == failed_at


def test_redelivery_of_the_same_webhook_changes_nothing(pipeline: Pipeline) -> None:
    msg_id, body = payment_event("payment.failed", at=NOW - DAY)
    for _ in range(3):
        assert pipeline.deliver(msg_id, body).status_code == 200
    assert pipeline.drain() == (3, 0)
    assert pipeline.rows("biz_alpha", "SELECT count(*) AS n FROM events")[0]["n"] == 1
    assert pipeline.rows("biz_alpha", "SELECT count(*) AS n FROM recovery_cases")[0]["n"] == 1
    assert pipeline.rows("biz_alpha", "SELECT count(*) AS n FROM recovery_actions"
                                      " WHERE kind <> 'payment_retry'")[0]["n"] == 2
    assert pipeline.rows("biz_alpha", "SELECT count(*) AS n FROM recovery_actions"
                                      " WHERE kind = 'payment_retry'")[0]["n"] <= 1  # a payday, once
    assert len(pipeline.whop.calls_to("POST", "/messages")) == 1


def test_success_delivered_before_its_failure_still_recovers(pipeline: Pipeline) -> None:
    failed_at, paid_at = NOW - 5 * DAY, NOW - 4 * DAY
    s_id, s_body = payment_event("payment.succeeded", at=paid_at)
    f_id, f_body = payment_event("payment.failed", at=failed_at)
    pipeline.deliver(s_id, s_body)
    pipeline.drain()
    pipeline.deliver(f_id, f_body)
    pipeline.drain()
    case = pipeline.rows("biz_alpha", "SELECT * FROM recovery_cases")[0]
    assert case["status"] == "recovered"
    assert case["recovered_at"] == paid_at
    assert case["recovered_amount_minor"] == 1999


def test_late_success_inside_the_window_recovers_processing_time_never_matters(pipeline: Pipeline) -> None:
    failed_at = NOW - 30 * DAY
    f_id, f_body = payment_event("payment.failed", at=failed_at)
    pipeline.deliver(f_id, f_body)
    pipeline.drain()
    assert pipeline.rows("biz_alpha", "SELECT status FROM recovery_cases")[0]["status"] == "expired"
    # No T+0 nudge for a case whose window had already passed when it was recorded.
    assert pipeline.rows("biz_alpha", "SELECT count(*) AS n FROM recovery_actions")[0]["n"] == 0
    s_id, s_body = payment_event("payment.succeeded", at=failed_at + timedelta(days=13.9))
    pipeline.deliver(s_id, s_body)
    pipeline.drain()
    assert pipeline.rows("biz_alpha", "SELECT status FROM recovery_cases")[0]["status"] == "recovered"


def test_member_cancellation_closes_the_case(pipeline: Pipeline) -> None:
    f_id, f_body = payment_event("payment.failed", at=NOW - DAY)
    c_id, c_body = membership_event("membership.cancel_at_period_end_changed", at=NOW,
                                    cancel_at_period_end=True)
    pipeline.deliver(f_id, f_body)
    pipeline.deliver(c_id, c_body)
    pipeline.drain()
    assert pipeline.rows("biz_alpha", "SELECT status FROM recovery_cases")[0]["status"] == "cancelled"


def test_tenants_are_kept_apart(pipeline: Pipeline) -> None:
    for company in ("biz_alpha", "biz_bravo"):
        msg_id, body = payment_event("payment.failed", company=company, at=NOW - DAY)
        pipeline.deliver(msg_id, body)
    pipeline.drain()
    for company in ("biz_alpha", "biz_bravo"):
        rows = pipeline.rows(company, "SELECT company_id FROM recovery_cases")
        assert [r["company_id"] for r in rows] == [company]


def test_a_failing_record_is_reported_alone_and_succeeds_on_retry(pipeline: Pipeline,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bad_id, bad_body = payment_event("payment.failed", membership="mem_bad", at=NOW - DAY)
    ok_id, ok_body = payment_event("payment.failed", membership="mem_ok", at=NOW - DAY)
    pipeline.deliver(bad_id, bad_body)
    pipeline.deliver(ok_id, ok_body)
    real = processing.process_webhook
    failures = {"left": 1}

    def flaky(msg: Any, now: datetime, db: Database | None = None) -> processing.Outcome:
        if msg.webhook_id == bad_id and failures["left"]:
            failures["left"] -= 1
            from chalicelib.db import DatabaseUnavailable

            raise DatabaseUnavailable("injected")
        return real(msg, now, db)

    monkeypatch.setattr(processing, "process_webhook", flaky)
    from app import process_events

    messages = pipeline.sqs.receive_message(QueueUrl=pipeline.queues.queue_url, MaxNumberOfMessages=10,
                                            MessageAttributeNames=["All"])["Messages"]
    assert len(messages) == 2 and len({m["MessageId"] for m in messages}) == 2
    event = {"Records": [local_sqs.to_lambda_record(m, pipeline.queues.queue_arn) for m in messages]}
    result = process_events(event, local_sqs.LambdaContext())
    bad_message = next(m["MessageId"] for m in messages
                       if m["MessageAttributes"]["webhook_id"]["StringValue"] == bad_id)
    assert result == {"batchItemFailures": [{"itemIdentifier": bad_message}]}
    # Lambda deletes the successes; the failure becomes visible again and is retried.
    ok_message = next(m for m in messages if m["MessageId"] != bad_message)
    pipeline.sqs.delete_message(QueueUrl=pipeline.queues.queue_url,
                                ReceiptHandle=ok_message["ReceiptHandle"])
    assert pipeline.drain() == (1, 0)
    rows = pipeline.rows("biz_alpha", "SELECT membership_id FROM recovery_cases")
    memberships = {r["membership_id"] for r in rows}
    assert memberships == {"mem_bad", "mem_ok"}


def test_database_outage_loses_nothing(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Any) -> None:
    from chalicelib import tenancy

    msg_id, body = payment_event("payment.failed", at=NOW - DAY)
    good_url = tenancy.get_database().params
    assert pipeline.deliver(msg_id, body).status_code == 200  # the route never needs the database
    monkeypatch.setenv("DATABASE_URL", f"postgresql://nobody@/rebound?host={tmp_path}")
    config.reset_config()
    tenancy.reset_database()
    from app import process_events

    ok, failed = local_sqs.poll_once(pipeline.sqs, pipeline.queues, process_events)
    assert (ok, failed) == (0, 1) and pipeline.depth() == 1
    monkeypatch.undo()
    monkeypatch.setenv("EVENTS_QUEUE_URL", pipeline.queues.queue_url)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://{good_url.user}:{good_url.password}@/"
                       f"{good_url.database}?host={good_url.unix_sock.rsplit('/', 1)[0]}")  # type: ignore[union-attr]
    config.reset_config()
    tenancy.reset_database()
    assert pipeline.drain() == (1, 0)
    assert pipeline.rows("biz_alpha", "SELECT count(*) AS n FROM recovery_cases")[0]["n"] == 1


def test_poison_message_reaches_the_dlq_and_redrive_brings_it_back(pipeline: Pipeline) -> None:
    pipeline.sqs.send_message(QueueUrl=pipeline.queues.queue_url, MessageBody="not a webhook")
    for _ in range(local_sqs.MAX_RECEIVE_COUNT + 1):
        pipeline.drain()
    assert pipeline.depth() == 0
    assert pipeline.depth(pipeline.queues.dlq_url) == 1
    assert redrive.redrive(pipeline.sqs, pipeline.queues.dlq_url, pipeline.queues.queue_url,
                           dry_run=True) == 1
    assert pipeline.depth(pipeline.queues.dlq_url) == 1
    assert redrive.redrive(pipeline.sqs, pipeline.queues.dlq_url, pipeline.queues.queue_url) == 1
    assert pipeline.depth(pipeline.queues.dlq_url) == 0 and pipeline.depth() == 1


# --- the route's answers --------------------------------------------------------------------------


def test_bad_signature_is_401_and_nothing_is_queued(pipeline: Pipeline) -> None:
    msg_id, body = payment_event("payment.failed", at=NOW)
    headers = sign(body, msg_id, secret="ws_someone_else")
    resp = pipeline.deliver(msg_id, body, headers)
    assert resp.status_code == 401
    assert json.loads(resp.body)["error"]["code"] == "rejected_bad_signature"
    tampered = sign(body, msg_id)
    assert pipeline.deliver(msg_id, body.replace(b"19.99", b"0.01"), tampered).status_code == 401
    stale = sign(body, msg_id, at=NOW - timedelta(minutes=6))
    assert pipeline.deliver(msg_id, body, stale).status_code == 401
    assert pipeline.depth() == 0


def test_unknown_type_is_200_and_not_queued(pipeline: Pipeline) -> None:
    body = json.dumps({"id": "msg_x", "api_version": "v1", "type": "course_lesson_interaction.completed",
                       "timestamp": "2025-01-01T00:00:00Z", "company_id": "biz_alpha",
                       "data": {"id": "crsli_1"}}).encode()
    resp = pipeline.deliver("msg_x", body)
    assert resp.status_code == 200 and json.loads(resp.body) == {"status": "ignored"}
    assert pipeline.depth() == 0


def test_signed_but_unusable_body_is_acknowledged_and_kept_as_a_poison_record(
        pipeline: Pipeline, owner: Any) -> None:
    # Whop's genuine delivery that we cannot use: a 4xx would be retried for days (and could get
    # the endpoint disabled); it is acknowledged, and a record of it is kept.
    body = json.dumps({"id": "msg_y", "api_version": "v1", "type": "payment.failed",
                       "timestamp": "2025-01-01T00:00:00Z", "data": {"id": "pay_1"}}).encode()
    resp = pipeline.deliver("msg_y", body)
    assert resp.status_code == 200 and json.loads(resp.body) == {"status": "ignored"}
    assert pipeline.drain() == (1, 0)
    assert pipeline.depth() == 0 and pipeline.depth(pipeline.queues.dlq_url) == 0
    rows = owner.run("SELECT webhook_id, reason, error_class FROM poison_events")
    assert rows == [["msg_y", "malformed webhook: company_id missing or invalid", "Unusable"]]


def test_oversized_body_is_413(pipeline: Pipeline) -> None:
    body = b"{" + b" " * (256 * 1024) + b"}"
    resp = pipeline.deliver("msg_big", body)
    assert resp.status_code == 413 and pipeline.depth() == 0


def test_queue_unavailable_is_503_so_whop_retries(pipeline: Pipeline,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTS_QUEUE_URL", pipeline.queues.queue_url + "-missing")
    config.reset_config()
    queue.reset_queue()
    msg_id, body = payment_event("payment.failed", at=NOW)
    resp = pipeline.deliver(msg_id, body)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"


def test_messages_queued_before_the_minimised_format_are_still_read() -> None:
    # A deploy must not strand what is already queued: the old raw-body (and gzip) shape decodes.
    import base64
    import gzip

    body = json.dumps({"pad": "x" * 259_000}).encode()
    old = {"webhook_id": {"stringValue": "msg_1"}, "received_at": {"stringValue": NOW.isoformat()},
           "encoding": {"stringValue": "gzip-base64"}}
    decoded = queue.decode_message(base64.b64encode(gzip.compress(body)).decode(), old)
    assert decoded.body == body and decoded.webhook_id == "msg_1" and decoded.event is None


def test_a_payment_in_the_same_batch_stops_the_t0_nudge(pipeline: Pipeline) -> None:
    f_id, f_body = payment_event("payment.failed", at=NOW - timedelta(hours=2))
    s_id, s_body = payment_event("payment.succeeded", at=NOW - timedelta(hours=1))
    pipeline.deliver(f_id, f_body)
    pipeline.deliver(s_id, s_body)
    assert pipeline.drain() == (2, 0)
    assert pipeline.rows("biz_alpha", "SELECT status FROM recovery_cases")[0]["status"] == "recovered"
    statuses = {r["status"] for r in pipeline.rows("biz_alpha", "SELECT status FROM recovery_actions")}
    assert statuses == {"skipped"} and pipeline.whop.calls_to("POST", "/messages") == []
