"""Privacy hardening (issue 19, migration 0014), as the runtime role against real Postgres:

- the rate-limit table holds salted keys, with a salt the runtime cannot read, and its clean-up
  follows the database clock (a caller's made-up window start cannot empty it);
- the purges that work across tenants belong to rebound_retention, a role the runtime cannot use;
  the tick reaches them only through run_retention (database clock, a 15-day floor, one batch of
  at most 500 per kind), and retention runs even when the tick ran out of time;
- a purged company is not recreated by its next webhook (nor by one in flight during the purge),
  until it is readmitted."""

from __future__ import annotations

import hashlib
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib import claims, processing, ratelimit, retention, scheduler
from chalicelib.db import QueryError, TenantViolation
from chalicelib.db_pool import Database
from chalicelib.queue import QueuedWebhook
from chalicelib.ratelimit import RateLimits
from chalicelib.tenancy import service_transaction, tenant_transaction
from chalicelib.whop_client import get_whop
from scripts import purge_company
from scripts.fake_whop import FakeWhop
from tests.conftest import Owner
from tests.helpers import payment_event

NOW = datetime.now(UTC)
A, B = "biz_alpha", "biz_bravo"


def deliver(db: Database, company: str, membership: str, msg_id: str | None = None) -> processing.Outcome:
    webhook_id, body = payment_event("payment.failed", at=NOW - timedelta(hours=1), company=company,
                                     membership=membership, msg_id=msg_id)
    return processing.process_webhook(QueuedWebhook(webhook_id, NOW, body), NOW, db)


# --- salted rate-limit keys ------------------------------------------------------------------------


def test_rate_limit_keys_are_salted_with_a_salt_the_runtime_cannot_read(database: Database,
                                                                         owner: Owner) -> None:
    limits = RateLimits(access_checks=5)
    assert ratelimit.check_principal("whop_access", "user_42", NOW, limits=limits, db=database).count == 1
    assert ratelimit.check_principal("whop_access", "user_42", NOW, limits=limits, db=database).count == 2
    unsalted = hashlib.sha256(b"whop_access:user_42").hexdigest()
    stored = owner.run("SELECT key_hash, count FROM request_limits")
    assert len(stored) == 1 and stored[0][1] == 2
    assert stored[0][0] != unsalted, "the plain digest of a user id is not what is kept"
    salt = bytes(owner.run("SELECT salt FROM request_limit_salt")[0][0])
    assert len(salt) >= 32
    assert stored[0][0] == hashlib.sha256(salt + unsalted.encode()).hexdigest()
    with pytest.raises(TenantViolation), service_transaction(database) as tx:
        tx.query("SELECT salt FROM request_limit_salt")
    with pytest.raises(TenantViolation), service_transaction(database) as tx:
        tx.query("SELECT key_hash FROM request_limits")
    with pytest.raises(QueryError, match="hex SHA-256"), service_transaction(database) as tx:
        tx.scalar("SELECT count_request('link', 'user_42', now())")  # never a raw id


def test_a_callers_window_start_cannot_empty_the_rate_limit_table(database: Database, owner: Owner) -> None:
    limits = RateLimits(link_clicks=100)
    ratelimit.check_principal("link", "token-now", NOW, limits=limits, db=database)
    owner.run("INSERT INTO request_limits (scope, key_hash, window_start, count)"
              " VALUES ('link', :k, now() - interval '3 days', 4)", k="a" * 64)
    far_future = datetime(2999, 1, 1, tzinfo=UTC)
    with service_transaction(database) as tx:
        # Same session for the seed and the calls: random() is repeatable, and 1,000 calls make a
        # clean-up (one in a hundred) certain.
        tx.query("SELECT setseed(0.42)")
        tx.query("SELECT count_request('link', :k, :at) FROM generate_series(1, 1000)", k="b" * 64,
                 at=far_future)
    windows = owner.run("SELECT window_start > now() - interval '1 day' FROM request_limits")
    assert [True] in windows, "the current window survived a clean-up asked with a far-future start"
    assert [False] not in windows, "the three-day-old window went (database clock)"


# --- retention as its own role -----------------------------------------------------------------------


def test_the_runtime_cannot_call_the_purges_or_become_their_role(database: Database) -> None:
    for call in ("purge_event_urls(now() + interval '100 years', 1000000)",
                 "purge_case_urls(now() + interval '100 years', 1000000)",
                 "purge_click_rows(now() + interval '100 years', 1000000)",
                 "purge_rate_limits(now() + interval '100 years', 1000000)"):
        with pytest.raises(TenantViolation, match="permission denied"), service_transaction(database) as tx:
            tx.scalar(f"SELECT {call}")
    for role in ("rebound_retention", "rebound_definer", "rebound_ops_reader", "rebound_ops"):
        with pytest.raises(TenantViolation), service_transaction(database) as tx:
            tx.query(f"SET LOCAL ROLE {role}")


def add_click(owner: Owner, company: str, case_id: str, age: timedelta) -> None:
    owner.run("INSERT INTO recovery_actions (case_id, company_id, kind, step, status, idempotency_key,"
              " actor, created_at) VALUES (CAST(:c AS uuid), :co, 'link_click', 'click', 'done', :k,"
              " 'member', now() - CAST(:age AS interval))",
              c=case_id, co=company, k=uuid.uuid4().hex, age=age)


def test_run_retention_keeps_fifteen_days_and_one_batch_whatever_it_is_asked(database: Database,
                                                                              owner: Owner) -> None:
    case_id = deliver(database, A, "mem_floor").opened_case_ids[0]
    add_click(owner, A, case_id, timedelta(days=10))  # inside the floor
    owner.run("INSERT INTO recovery_actions (case_id, company_id, kind, step, status, idempotency_key,"
              " actor, created_at) SELECT CAST(:c AS uuid), :co, 'link_click', 'click', 'done',"
              " md5(random()::text || g), 'member', now() - interval '400 days'"
              " FROM generate_series(1, 620) g", c=case_id, co=A)
    with service_transaction(database) as tx:
        first = tx.one("SELECT * FROM run_retention(1, 1000000)")
    assert first is not None and first["click_rows"] == 500, "one batch of at most 500"
    assert retention.purge(database, days=1).click_rows == 120
    left = owner.run("SELECT count(*) FROM recovery_actions WHERE kind = 'link_click'")
    assert left == [[1]], "the 10-day-old click is inside the 15-day floor"


def test_a_tick_that_runs_out_of_time_still_purges(database: Database, owner: Owner,
                                                   whop_env: FakeWhop) -> None:
    case_id = deliver(database, A, "mem_tick_purge").opened_case_ids[0]
    add_click(owner, A, case_id, timedelta(days=400))
    ctx = claims.Context(whop=get_whop(), app_id=whop_env.app_id, public_base_url="https://r.test")
    result = scheduler.tick(ctx, NOW, database, out_of_time=lambda: True)
    assert result.budget_exhausted
    assert owner.run("SELECT count(*) FROM recovery_actions WHERE kind = 'link_click'") == [[0]]


# --- an erased company stays erased ------------------------------------------------------------------


def test_a_purged_company_is_not_recreated_by_its_next_webhook_until_readmitted(
        database: Database, owner: Owner, capsys: pytest.CaptureFixture[str]) -> None:
    assert deliver(database, A, "mem_before").status == "applied"
    deliver(database, B, "mem_other")
    assert purge_company.main([A, "--yes"]) == 0
    capsys.readouterr()
    late = deliver(database, A, "mem_after")
    assert late.status == "ignored" and late.reason == "company_erased"
    assert owner.run("SELECT count(*) FROM events WHERE company_id = :c", c=A) == [[0]]
    assert owner.run("SELECT count(*) FROM recovery_cases WHERE company_id = :c", c=A) == [[0]]
    assert deliver(database, B, "mem_other_2").status == "applied", "other companies are untouched"
    # A redelivery of an event stored before is still a duplicate, not an erasure.
    assert deliver(database, B, "mem_other_2", msg_id=None).status == "applied"

    assert purge_company.main([A, "--readmit"]) == 2, "readmitting needs --yes"
    assert purge_company.main([A, "--readmit", "--yes"]) == 0
    assert '"readmitted": {"erased_companies": 1}' in capsys.readouterr().out
    assert deliver(database, A, "mem_back").status == "applied"


def test_a_webhook_in_flight_during_the_purge_is_purged_or_refused_never_left(database: Database,
                                                                              owner: Owner) -> None:
    deliver(database, A, "mem_race_0")
    holding = threading.Event()
    release = threading.Event()

    def consumer_mid_insert() -> None:
        # A consumer transaction that has inserted an event (taking the company's erase lock,
        # shared) and has not committed yet when the purge starts.
        with tenant_transaction(A, database) as tx:
            tx.execute("INSERT INTO events (webhook_id, company_id, type, membership_id, occurred_at,"
                       " received_at) VALUES ('msg_race_inflight', :c, 'payment.failed', 'mem_race_1',"
                       " now(), now())", c=A)
            holding.set()
            release.wait(10)

    worker = threading.Thread(target=consumer_mid_insert)
    worker.start()
    assert holding.wait(10)
    purged: list[dict[str, int]] = []
    purger = threading.Thread(target=lambda: purged.append(purge_company.purge_company(A, False, database)))
    purger.start()
    release.set()  # the in-flight insert commits; the purge, waiting on the lock, then deletes it
    worker.join(20)
    purger.join(20)
    assert purged and purged[0]["events"] == 2, "the event in flight was purged with the others"
    assert owner.run("SELECT count(*) FROM events WHERE company_id = :c", c=A) == [[0]]
    assert deliver(database, A, "mem_race_2").status == "ignored", "and the next one is refused"
