"""Retention: the tick forgets member URLs, click rows and rate-limit windows past their time, in
small batches, across tenants, and keeps everything a case, a KPI or a refold still needs.
Cut-offs come from the database clock (run_retention, migration 0014), so the data here is dated
relative to the real now."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chalicelib import claims, config, processing, retention, scheduler
from chalicelib.db_pool import Database
from chalicelib.queue import QueuedWebhook
from chalicelib.tenancy import tenant_transaction
from chalicelib.webhook_text import event_from_payload
from chalicelib.whop_client import get_whop
from scripts.fake_whop import FakeWhop
from tests.conftest import Owner
from tests.helpers import membership_event, payment_event

NOW = datetime.now(UTC)
DAY = timedelta(days=1)
A, B = "biz_alpha", "biz_bravo"


def deliver(db: Database, pair: tuple[str, bytes], at: datetime) -> processing.Outcome:
    msg_id, body = pair
    return processing.process_webhook(QueuedWebhook(msg_id, at, body), at, db)


def seed_membership(db: Database, company: str, membership: str, at: datetime,
                    activated: bool = True) -> str:
    """A failed payment with a recovery URL, then (``activated``: the membership went valid again,
    which recovers the case) a membership event with a manage URL, received ``at``."""
    out = deliver(db, payment_event("payment.failed", company=company, membership=membership,
                                    at=at, recovery_url=f"https://whop.com/pay/{membership}/3ds"), at)
    if activated:
        deliver(db, membership_event("membership.activated", company=company, membership=membership,
                                     at=at + timedelta(minutes=1)), at + timedelta(minutes=1))
    return out.opened_case_ids[0]


def payloads(owner: Owner, membership: str) -> list[dict[str, Any]]:
    return [r[0] for r in owner.run("SELECT payload FROM events WHERE membership_id = :m ORDER BY id",
                                    m=membership)]


def close_case(owner: Owner, case_id: str, closed: datetime) -> None:
    owner.run("UPDATE recovery_cases SET status = 'expired', closed_at = :t,"
              " manage_url = 'https://whop.com/orders/x/manage' WHERE id = CAST(:id AS uuid)",
              t=closed, id=case_id)


def add_click(owner: Owner, company: str, case_id: str, at: datetime) -> None:
    owner.run("INSERT INTO recovery_actions (case_id, company_id, kind, step, status, idempotency_key,"
              " actor, created_at) VALUES (CAST(:c AS uuid), :co, 'link_click', 'click', 'done', :k,"
              " 'member', :t)", c=case_id, co=company, k=uuid.uuid4().hex, t=at)


def test_old_urls_clicks_and_windows_go_recent_ones_and_case_facts_stay(database: Database,
                                                                         owner: Owner) -> None:
    old_a = seed_membership(database, A, "mem_old_a", NOW - 200 * DAY)
    old_b = seed_membership(database, B, "mem_old_b", NOW - 190 * DAY)
    new_a = seed_membership(database, A, "mem_new_a", NOW - 10 * DAY)
    close_case(owner, old_a, NOW - 186 * DAY)
    close_case(owner, old_b, NOW - 181 * DAY)
    open_old = seed_membership(database, A, "mem_open_old", NOW - 200 * DAY, activated=False)
    for case, company, at in ((old_a, A, NOW - 199 * DAY), (old_b, B, NOW - 185 * DAY),
                              (new_a, A, NOW - 9 * DAY)):
        add_click(owner, company, case, at)
    owner.run("INSERT INTO rate_limits (company_id, bucket, window_start, count) VALUES"
              " ('biz_alpha', 'reads', :old, 3), ('biz_bravo', 'reads', :old, 1),"
              " ('biz_alpha', 'reads', :recent, 2)", old=NOW - 2 * DAY, recent=NOW - timedelta(minutes=5))

    purged = retention.purge(database)

    assert (purged.event_urls, purged.case_urls, purged.click_rows, purged.rate_limits) == (5, 2, 2, 2)
    for membership in ("mem_old_a", "mem_old_b", "mem_open_old"):
        for payload in payloads(owner, membership):
            assert "recovery_url" not in payload and "manage_url" not in payload
            event = event_from_payload(payload)  # a refold still reads every purged event
            assert event.membership_id == membership and event.occurred_at
        assert any(p.get("amount_minor") == 1999 for p in payloads(owner, membership))
    assert any(p.get("recovery_url") for p in payloads(owner, "mem_new_a"))
    urls = {r[0]: (r[1], r[2], r[3]) for r in owner.run(
        "SELECT id::text, recovery_url, manage_url, amount_minor FROM recovery_cases")}
    assert urls[old_a][:2] == (None, None) and urls[old_a][2] == 1999
    assert urls[old_b][:2] == (None, None)
    assert urls[new_a][0] and urls[open_old][0], "recent and open cases keep their links"
    status = owner.run("SELECT status FROM recovery_cases WHERE id = CAST(:id AS uuid)", id=open_old)
    assert status == [["open"]]
    clicks = owner.run("SELECT case_id::text FROM recovery_actions WHERE kind = 'link_click'")
    assert [r[0] for r in clicks] == [new_a]
    windows = owner.run("SELECT company_id, count FROM rate_limits")
    assert windows == [["biz_alpha", 2]]
    again = retention.purge(database)
    assert again.total == 0, "a purged row is not touched twice"


def test_a_refold_after_the_purge_keeps_the_case(database: Database, owner: Owner) -> None:
    case_id = seed_membership(database, A, "mem_refold", NOW - 200 * DAY)
    close_case(owner, case_id, NOW - 186 * DAY)
    retention.purge(database)
    deliver(database, membership_event("membership.deactivated", company=A, membership="mem_refold",
                                       at=NOW), NOW)
    with tenant_transaction(A, database) as tx:
        cases = tx.query("SELECT id::text, seq, amount_minor FROM recovery_cases"
                         " WHERE membership_id = 'mem_refold'")
    assert cases == [{"id": case_id, "seq": 1, "amount_minor": 1999}]


def test_purges_in_small_batches_bounded_per_run(database: Database, owner: Owner) -> None:
    case_id = seed_membership(database, A, "mem_batch", NOW - 10 * DAY)
    for _ in range(7):
        add_click(owner, A, case_id, NOW - 300 * DAY)
    first = retention.purge(database, batch=2, max_batches=2)
    assert first.click_rows == 4
    second = retention.purge(database, batch=2, max_batches=2)
    assert second.click_rows == 3
    assert retention.purge(database, batch=2, max_batches=2).click_rows == 0


def test_retention_days_is_a_setting(database: Database, owner: Owner,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    case_id = seed_membership(database, A, "mem_short", NOW - 20 * DAY)
    add_click(owner, A, case_id, NOW - 20 * DAY)
    assert retention.purge(database).click_rows == 0  # default 180 days
    monkeypatch.setenv("RETENTION_DAYS", "15")
    config.reset_config()
    assert config.get_config().RETENTION_DAYS == 15
    assert retention.purge(database).click_rows == 1
    # Less than the 14-day recovery window (+1) is refused at start-up, not silently raised.
    for bad in ("0", "14"):
        monkeypatch.setenv("RETENTION_DAYS", bad)
        config.reset_config()
        with pytest.raises(config.ConfigError, match="RETENTION_DAYS"):
            config.get_config()
    config.reset_config()


def test_the_tick_runs_the_purge_and_survives_its_failure(database: Database, owner: Owner,
                                                         whop_env: FakeWhop,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    case_id = seed_membership(database, A, "mem_tick", NOW - 10 * DAY)
    add_click(owner, A, case_id, NOW - 400 * DAY)
    ctx = claims.Context(whop=get_whop(), app_id=whop_env.app_id, public_base_url="https://r.test")
    scheduler.tick(ctx, NOW, database)
    assert owner.run("SELECT count(*) FROM recovery_actions WHERE kind = 'link_click'") == [[0]]

    add_click(owner, A, case_id, NOW - 400 * DAY)

    def broken(*_: object, **__: object) -> retention.Purged:
        raise RuntimeError("database went away")

    monkeypatch.setattr(retention, "purge", broken)
    result = scheduler.tick(ctx, NOW, database)  # no exception: the tick's own work stands
    assert result.duration_ms >= 0
    assert owner.run("SELECT count(*) FROM recovery_actions WHERE kind = 'link_click'") == [[1]]


def test_the_runtime_role_cannot_purge_other_tenants_rows_directly(database: Database, owner: Owner) -> None:
    case_id = seed_membership(database, B, "mem_other", NOW - 300 * DAY)
    add_click(owner, B, case_id, NOW - 300 * DAY)
    with tenant_transaction(A, database) as tx:
        assert tx.execute("DELETE FROM recovery_actions WHERE kind = 'link_click'") == 0
    # The definer may delete click rows only, whatever the function is asked.
    policies = owner.run("SELECT qual FROM pg_policies WHERE tablename = 'recovery_actions'"
                         " AND policyname = 'definer_retention_delete'")
    assert policies and "link_click" in str(policies[0][0])
