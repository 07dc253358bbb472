"""Operator-facing routes and handlers: the scheduler trigger, the scheduled tick, tracked links,
and the packaged CloudFormation template."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from chalice.test import Client

from chalicelib import config, effects, processing
from chalicelib.db_pool import Database
from chalicelib.queue import QueuedWebhook
from chalicelib.tenancy import tenant_transaction
from scripts.fake_whop import FakeWhop
from tests.helpers import payment_event

NOW = datetime.now(UTC)


@pytest.fixture
def client(database: Database, whop_env: FakeWhop) -> Iterator[Client]:
    effects.clear_experience_cache()
    whop_env.add_experience("biz_alpha", whop_env.app_id, "exp_a")
    from app import app

    with Client(app) as c:
        yield c


def open_case(at: datetime, membership: str = "mem_1") -> str:
    msg_id, body = payment_event("payment.failed", membership=membership, at=at)
    out = processing.process_webhook(QueuedWebhook(msg_id, at, body), at)
    return out.opened_case_ids[0]


def test_scheduler_route_is_404_without_a_secret(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCHEDULER_SECRET", raising=False)
    config.reset_config()
    assert client.http.post("/api/scheduler/reminders").status_code == 404


def test_scheduler_route_needs_the_bearer_secret(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULER_SECRET", "s3cret-value")
    config.reset_config()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-value"},
                    {"Authorization": "Bearer s3cret-valuex"}):
        resp = client.http.post("/api/scheduler/reminders", headers=headers)
        assert resp.status_code == 401, headers
    open_case(NOW - timedelta(days=3, hours=1))  # a soft decline: its first reminder is on day 3
    resp = client.http.post("/api/scheduler/reminders", headers={"Authorization": "Bearer s3cret-value"})
    body = json.loads(resp.body)
    assert resp.status_code == 200
    assert body["RemindersOwed"] == 2 and body["EffectsSent"] >= 2


def test_scheduled_handler_runs_the_tick(client: Client) -> None:
    case_id = open_case(NOW - timedelta(days=15))
    from app import app

    with Client(app) as c:
        event = c.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event",
                                           detail={}, resources=[])
        result = c.lambda_.invoke("process_reminders", event)
    assert result.payload["CasesExpired"] == 1
    with tenant_transaction("biz_alpha") as tx:
        status = tx.scalar("SELECT status FROM recovery_cases WHERE id = CAST(:i AS uuid)", i=case_id)
    assert status == "expired"


def test_tracked_link_route_redirects_and_expires(client: Client, whop_env: FakeWhop) -> None:
    whop_env.add_membership("mem_1", company_id="biz_alpha", user_id="user_1")
    case_id = open_case(NOW - timedelta(hours=1))
    with tenant_transaction("biz_alpha") as tx:
        token = tx.scalar("SELECT link_token FROM recovery_cases WHERE id = CAST(:i AS uuid)", i=case_id)
    resp = client.http.get(f"/r/{token}")
    assert resp.status_code == 302
    assert resp.headers["Location"] == whop_env.membership("mem_1")["manage_url"]
    assert resp.headers["Cache-Control"] == "no-store"
    with tenant_transaction("biz_alpha") as tx:
        tx.execute("UPDATE recovery_cases SET status = 'cancelled', closed_at = now()")
    gone = client.http.get(f"/r/{token}")
    assert gone.status_code == 410 and b"expired" in gone.body
    assert client.http.get("/r/not-a-real-token-at-all-xx").status_code == 404
