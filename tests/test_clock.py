"""Leases on the database's clock, and edges that refuse to act on a skewed clock (issue 20 item 3).

An executor whose clock was a day ahead claimed rows and died: ``claimed_until`` was its own now
+ 5 min, so the rows stayed claimed for a day (and a day-ahead executor could take a live lease
from a healthy one). Leases are now written and compared on the database's clock, and the
consumer and the tick compare the process clock with the database's before they act: beyond
``clock.MAX_SKEW`` they refuse, log it and count ``ClockSkewRefused``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chalicelib import claim_gate, claims, processing
from chalicelib.tenancy import tenant_transaction
from scripts.local_sqs import LambdaContext
from tests.helpers import payment_event
from tests.test_nudges import A, World, world  # noqa: F401

DAY = timedelta(days=1)


def real_now() -> datetime:
    return datetime.now(UTC)


# A soft decline also owes a payday retry (issue 18), due at the next 1st or 15th: whether that
# falls in a window opened at the real now depends on the day the suite runs. These cases are
# hard declines (no payday retry), and the queries leave the kind out all the same.
NOT_PAYDAY = " WHERE kind <> 'payment_retry'"
HARD = {"decline_code": "expired_card"}


def leases(world: World) -> list[dict[str, Any]]:  # noqa: F811
    with tenant_transaction(A, world.db) as tx:
        return tx.query("SELECT status, claimed_until, clock_timestamp() AS db_now FROM recovery_actions"
                        + NOT_PAYDAY + " ORDER BY channel")


def lease_time_passes(world: World, by: timedelta) -> None:  # noqa: F811
    """The database's clock cannot be moved: age the leases instead (what time passing does)."""
    with tenant_transaction(A, world.db) as tx:
        tx.execute("UPDATE recovery_actions SET claimed_until = claimed_until - CAST(:by AS interval)"
                   " WHERE claimed_until IS NOT NULL", by=by)


def test_an_executor_a_day_ahead_leases_on_the_database_clock(world: World) -> None:  # noqa: F811
    now = real_now()
    world.fail(now - timedelta(hours=1), now=now, **HARD)
    claimed = claim_gate.claim(A, now + DAY, world.db)  # a day-ahead executor claims ... and dies
    assert {c.channel for c in claimed} == {"push", "dm"}
    for row in leases(world):
        assert row["status"] == "claimed"
        assert row["db_now"] < row["claimed_until"] <= row["db_now"] + claims.LEASE, row
    assert world.run_effects(now).sent == 0  # the lease holds ...
    lease_time_passes(world, claims.LEASE + timedelta(seconds=1))
    assert world.run_effects(now).sent == 2  # ... for five minutes of the database's clock, not a day
    assert len(world.dms()) == 1


def test_an_executor_a_day_ahead_cannot_take_a_live_lease(world: World) -> None:  # noqa: F811
    now = real_now()
    world.fail(now - timedelta(hours=1), now=now, **HARD)
    assert len(claim_gate.claim(A, now, world.db)) == 2  # a healthy executor is sending these
    stats = world.tick(now + DAY)  # another one, its clock a day ahead
    assert stats.effects.sent == 0 and world.dms() == [] and world.pushes() == []
    assert {r["status"] for r in leases(world)} == {"claimed"}


def test_the_frequency_cap_waits_for_a_lease_on_the_database_clock(world: World) -> None:  # noqa: F811
    now = real_now()
    world.fail(now - timedelta(hours=1), now=now, membership="mem_1", user="user_1", **HARD)
    held = claim_gate.claim(A, now, world.db, kinds=("nudge",))
    assert len(held) == 2
    world.fail(now - timedelta(minutes=30), now=now, membership="mem_2", user="user_1", **HARD)
    world.run_effects(now)
    with tenant_transaction(A, world.db) as tx:
        waits = tx.query("SELECT due_at FROM recovery_actions" + NOT_PAYDAY + " AND status = 'pending'")
    # Deferred until the in-flight send's lease ends: about five minutes from now, on the
    # executor's clock, whatever the clock it leased on.
    assert len(waits) == 2
    for row in waits:
        assert now < row["due_at"] <= now + claims.LEASE + timedelta(seconds=5), row


def _refusals(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    found = [vars(r) for r in caplog.records if r.getMessage().startswith("clock differs")]
    caplog.clear()
    return found


def test_a_tick_on_a_skewed_clock_refuses_and_says_why(world: World,  # noqa: F811
                                                       caplog: pytest.LogCaptureFixture) -> None:
    from app import run_tick
    from chalicelib import clock

    now = real_now()
    world.fail(now - timedelta(hours=1), now=now, **HARD)
    result = run_tick(clock=lambda: real_now() + DAY)
    assert result["refused"] == "clock_skew"
    assert [r["status"] for r in leases(world)] == ["pending", "pending"]  # nothing claimed
    assert world.pushes() == [] and world.dms() == []
    logged = _refusals(caplog)
    assert logged and logged[0]["levelname"] == "ERROR" and logged[0]["role"] == "tick"
    assert 86000 < logged[0]["skew_s"] < 86500 and logged[0]["bound_s"] == clock.MAX_SKEW.total_seconds()
    # A clock off by less than the bound acts, on the database's time.
    assert "refused" not in run_tick(clock=lambda: real_now() + timedelta(seconds=30))
    assert len(world.dms()) == 1


def _sqs_event(bodies: list[tuple[str, bytes]]) -> dict[str, Any]:
    from chalicelib.queue import encode_message
    from chalicelib.webhook_text import minimal_payload
    from chalicelib.webhooks import normalise

    records = []
    for i, (msg_id, body) in enumerate(bodies):
        event = normalise(body, msg_id, real_now())
        assert event is not None
        text, attributes = encode_message(msg_id, real_now(), event=minimal_payload(event))
        records.append({"messageId": f"m-{i}", "receiptHandle": f"r-{i}", "body": text,
                        "attributes": {"ApproximateReceiveCount": "1"}, "eventSource": "aws:sqs",
                        "messageAttributes": {k: {"stringValue": v["StringValue"], "dataType": "String"}
                                              for k, v in attributes.items()}})
    return {"Records": records}


@pytest.fixture
def consumer(world: World) -> Iterator[World]:  # noqa: F811
    yield world


def test_a_consumer_on_a_skewed_clock_refuses_the_batch(consumer: World,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    now = real_now()
    consumer.fake.add_membership("mem_1", company_id=A, user_id="user_1")
    event = _sqs_event([payment_event("payment.failed", at=now - timedelta(hours=1))])
    for skew in (DAY * 15, -timedelta(minutes=10)):
        result = processing.handle_batch(event, LambdaContext(), clock=lambda s=skew: real_now() + s)
        assert result == {"batchItemFailures": [{"itemIdentifier": "m-0"}]}  # SQS redelivers it
        logged = _refusals(caplog)
        assert logged and logged[0]["role"] == "consumer"
        with tenant_transaction(A, consumer.db) as tx:
            assert tx.scalar("SELECT count(*) FROM events") == 0
    result = processing.handle_batch(event, LambdaContext())
    assert result == {"batchItemFailures": []}
    with tenant_transaction(A, consumer.db) as tx:
        assert tx.scalar("SELECT status FROM recovery_cases") == "open"


def test_the_tick_route_answers_503_when_the_clocks_disagree(world: World,  # noqa: F811
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from chalice.test import Client

    from app import app
    from chalicelib import clock, config

    monkeypatch.setenv("SCHEDULER_SECRET", "sched-secret")
    config.reset_config()
    # This host's clock a day ahead of the database's (moved on the database's side here).
    monkeypatch.setattr(clock, "database_now", lambda db=None: real_now() - DAY)
    with Client(app) as client:
        resp = client.http.post("/api/scheduler/reminders", headers={"authorization": "Bearer sched-secret"})
    assert resp.status_code == 503
    assert "clock" in resp.json_body["error"]["message"]
