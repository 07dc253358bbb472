"""Links of a merged-away case keep working (issue 20 item 2).

A late event that joins two stored episodes leaves one case row; the other row goes, and with it
the link token its messages carried. Members still hold those messages: their links resolve to
the case that stays, with the same click recording and redirect rules as its own link."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from chalice.test import Client

from chalicelib import effects, processing
from chalicelib.db_pool import Database
from chalicelib.queue import QueuedWebhook
from chalicelib.store import cases as case_store
from chalicelib.tenancy import tenant_transaction
from scripts.fake_whop import FakeWhop
from tests.helpers import payment_event

NOW = datetime.now(UTC)
DAY = timedelta(days=1)
A = "biz_alpha"


@pytest.fixture
def client(database: Database, whop_env: FakeWhop) -> Iterator[Client]:
    effects.clear_experience_cache()
    whop_env.add_experience(A, whop_env.app_id, "exp_a")
    whop_env.add_membership("mem_1", company_id=A, user_id="user_1")
    from app import app

    with Client(app) as c:
        yield c


def deliver(kind: str, at: datetime, msg_id: str) -> processing.Outcome:
    pair = payment_event(kind, at=at, msg_id=msg_id, payment=f"pay_{msg_id}")
    return processing.process_webhook(QueuedWebhook(pair[0], NOW, pair[1]), NOW)


def cases() -> list[dict[str, Any]]:
    with tenant_transaction(A) as tx:
        return tx.query("SELECT id::text AS id, status, link_token, link_clicks, episode_webhook_id"
                        " FROM recovery_cases ORDER BY first_failure_at")


def join_two_episodes() -> tuple[dict[str, Any], str]:
    """Two stored episodes, then the late success that joins them; returns (the case that stays,
    the link token of the row that went)."""
    deliver("payment.failed", NOW - 13 * DAY, "f1")  # row R1
    deliver("payment.failed", NOW - 15 * DAY, "f0")  # {f0, f1}: its window ended yesterday
    deliver("payment.failed", NOW - 12 * timedelta(hours=1), "f2")  # row R2, a new episode
    before = {c["episode_webhook_id"]: c for c in cases()}
    gone_token = before["f2"]["link_token"]
    deliver("payment.succeeded", NOW - 15 * DAY + timedelta(hours=1), "s0")  # {f0} recovered; {f1, f2}
    after = cases()
    assert len(after) == 2 and gone_token not in {c["link_token"] for c in after}
    stays = next(c for c in after if c["episode_webhook_id"] == "f1")
    assert stays["status"] == "open"
    return stays, gone_token


def test_a_merged_away_rows_link_redirects_and_counts_on_the_case_that_stays(client: Client,
                                                                            whop_env: FakeWhop) -> None:
    stays, gone_token = join_two_episodes()
    resp = client.http.get(f"/r/{gone_token}")
    assert resp.status_code == 302, resp.body
    assert resp.headers["Location"] == whop_env.membership("mem_1")["manage_url"]
    own = client.http.get(f"/r/{stays['link_token']}")
    assert own.status_code == 302 and own.headers["Location"] == resp.headers["Location"]
    after = {c["id"]: c for c in cases()}
    assert after[stays["id"]]["link_clicks"] == 2  # both clicks count on the case that stays
    with tenant_transaction(A) as tx:
        clicks = tx.query("SELECT case_id::text AS case_id FROM recovery_actions WHERE kind = 'link_click'")
    assert {c["case_id"] for c in clicks} == {stays["id"]}


def test_a_merged_away_rows_link_follows_the_case_that_stays_when_it_closes(client: Client) -> None:
    stays, gone_token = join_two_episodes()
    deliver("payment.succeeded", NOW - timedelta(hours=1), "s2")  # the joined case recovers
    assert {c["id"]: c for c in cases()}[stays["id"]]["status"] == "recovered"
    assert client.http.get(f"/r/{gone_token}").status_code == 410  # as its own link: expired


def test_links_follow_a_chain_of_merges(client: Client) -> None:
    # Three rows of one episode merged twice (oldest stays): every retired token lands on the last.
    with tenant_transaction(A) as tx:
        rows = []
        for hours in (30, 20, 10):
            at = NOW - timedelta(hours=hours)
            tx.execute("INSERT INTO recovery_cases (company_id, membership_id, seq, status, first_failure_at,"
                       " last_failure_at, link_token, manage_url) VALUES (:c, 'mem_1', 1, 'open', :at, :at,"
                       " :token, 'https://whop.com/manage')",
                       c=A, at=at, token=f"tok_{hours:02d}_" + "x" * 30)
        rows = tx.query("SELECT id::text AS id, link_token FROM recovery_cases ORDER BY first_failure_at")
        case_store.merge_duplicate_case(tx, rows[2]["id"], into=rows[1]["id"])
        case_store.merge_duplicate_case(tx, rows[1]["id"], into=rows[0]["id"])
    for row in rows:
        assert client.http.get(f"/r/{row['link_token']}").status_code == 302, row
    assert cases()[0]["link_clicks"] == 3

