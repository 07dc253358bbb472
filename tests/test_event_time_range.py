"""Event times outside a sane range (issue 20 item 5): before 2015, or more than a day after the
webhook was received, are a poison record with a reason, never a case, never the DLQ. Year 9999
raises nowhere: not at the route, in the consumer, in the fold or in window arithmetic."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib import processing, reminders
from chalicelib.cases import fold
from chalicelib.models import RECOVERY_WINDOW, CreatorSettings, EventType, WhopEvent, window_end
from chalicelib.queue import QueuedWebhook
from tests.conftest import Owner
from tests.helpers import payment_event
from tests.test_pipeline import Pipeline, pipeline  # noqa: F401

NOW = datetime.now(UTC)


def _failure_at(text: str, field: str = "last_payment_attempt") -> tuple[str, bytes]:
    msg_id, body = payment_event("payment.failed", at=NOW - timedelta(days=1))
    envelope = json.loads(body)
    envelope["data"][field] = text
    return msg_id, json.dumps(envelope).encode()


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59Z", "3000-01-01T00:00:00Z", "2014-12-31T23:59:59Z",
                                  "1970-01-02T00:00:00Z", "253402300799", "32503680000"],
                         ids=["year 9999", "year 3000", "before 2015", "1970", "unix 9999", "unix 3000"])
def test_an_insane_event_time_is_a_poison_record_with_a_reason(pipeline: Pipeline, owner: Owner,  # noqa: F811
                                                              when: str) -> None:
    msg_id, body = _failure_at(when)
    resp = pipeline.deliver(msg_id, body)
    assert resp.status_code == 200
    assert pipeline.drain() == (1, 0)
    assert pipeline.depth() == 0 and pipeline.depth(pipeline.queues.dlq_url) == 0
    rows = owner.run("SELECT webhook_id, reason FROM poison_events")
    assert rows == [[msg_id, "malformed webhook: occurred_at outside the accepted range"
                             " (before 2015, or more than a day after receipt)"]]
    assert pipeline.rows("biz_alpha", "SELECT count(*) AS n FROM recovery_cases")[0]["n"] == 0
    assert pipeline.rows("biz_alpha", "SELECT count(*) AS n FROM events")[0]["n"] == 0


def test_a_day_ahead_is_still_accepted(pipeline: Pipeline) -> None:  # noqa: F811
    # A sender's clock a little ahead is not poison: just under the bound opens a case.
    msg_id, body = _failure_at((NOW + timedelta(hours=23)).isoformat())
    assert pipeline.deliver(msg_id, body).status_code == 200
    assert pipeline.drain() == (1, 0)
    assert pipeline.rows("biz_alpha", "SELECT status FROM recovery_cases") == [{"status": "open"}]


def test_a_queued_event_from_before_the_check_is_poisoned_by_the_consumer(database: object,
                                                                         owner: Owner) -> None:
    # Messages queued by an older route carry the event as it was normalised then.
    event = {"webhook_id": "msg_old_9999", "type": "payment.failed", "company_id": "biz_alpha",
             "membership_id": "mem_1", "user_id": "user_1", "occurred_at": "9999-12-31T23:59:59Z",
             "received_at": NOW.isoformat()}
    out = processing.process_webhook(QueuedWebhook("msg_old_9999", NOW, event=event), NOW)
    assert out.status == "poisoned" and out.reason is not None and "occurred_at" in out.reason
    assert owner.run("SELECT webhook_id FROM poison_events") == [["msg_old_9999"]]


def _event(at: datetime, kind: EventType = EventType.PAYMENT_FAILED, n: int = 0,
           received: datetime = NOW) -> WhopEvent:
    return WhopEvent(webhook_id=f"w{n}", type=kind, company_id="biz_alpha", membership_id="mem_1",
                     user_id="user_1", occurred_at=at, received_at=received)


FAR = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def test_window_arithmetic_never_overflows() -> None:
    assert window_end(FAR) == datetime.max.replace(tzinfo=UTC)
    assert window_end(NOW) == NOW + RECOVERY_WINDOW


def test_the_fold_ignores_an_insane_time_and_never_raises() -> None:
    # Stored payloads from before the check are folded too: the insane one counts for nothing.
    events = [_event(FAR, n=1), _event(NOW - timedelta(days=2), n=2),
              _event(datetime(2001, 1, 1, tzinfo=UTC), n=3)]
    cases = fold("biz_alpha", "mem_1", events, NOW)
    assert [(c.status.value, c.failure_ids) for c in cases] == [("open", ("w2",))]
    assert fold("biz_alpha", "mem_1", [_event(FAR, n=1)], FAR) == []


def test_reminder_arithmetic_on_the_last_representable_day_never_raises() -> None:
    # A case can no longer be opened there, but the planning functions must not raise if one were.
    from chalicelib.models import Case, CaseStatus

    case = Case(seq=1, company_id="biz_alpha", membership_id="mem_1", status=CaseStatus.OPEN,
                first_failure_at=FAR, last_failure_at=FAR, failure_count=1)
    settings = CreatorSettings()
    assert reminders.next_action_at(case, settings, None) is not None
    assert reminders.due_reminder(case, settings, None, NOW) is None
    assert reminders.covered_offset(case, settings, NOW) is None


@pytest.mark.parametrize(("occurred", "problem"), [
    (NOW, None), (NOW + timedelta(hours=23), None), (NOW + timedelta(days=1, seconds=1), "future"),
    (datetime(2015, 1, 1, tzinfo=UTC), None), (datetime(2014, 12, 31, 23, 59, tzinfo=UTC), "past"),
    (FAR, "future")])
def test_the_range_rule(occurred: datetime, problem: str | None) -> None:
    from chalicelib.models import event_time_problem

    found = event_time_problem(occurred, NOW)
    assert (found is None) == (problem is None)
