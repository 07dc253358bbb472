"""scripts/purge_company.py and scripts/forget_member.py against real Postgres as the runtime role:
they delete exactly one company's (or one member's) rows, dry runs change nothing, and odd input
is refused with a message, not a traceback."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib import processing
from chalicelib.db_pool import Database
from chalicelib.queue import QueuedWebhook
from scripts import forget_member, purge_company
from tests.conftest import TENANT_TABLES, Owner
from tests.helpers import membership_event, payment_event

NOW = datetime.now(UTC)
A, B = "biz_alpha", "biz_bravo"
# What a purge deletes; erased_companies is what it writes (tests/test_erasure.py).
DATA_TABLES = tuple(t for t in TENANT_TABLES if t != "erased_companies")


def deliver(db: Database, pair: tuple[str, bytes]) -> None:
    msg_id, body = pair
    processing.process_webhook(QueuedWebhook(msg_id, NOW, body), NOW, db)


def seed(db: Database, owner: Owner) -> None:
    for company in (A, B):
        for user, membership in (("user_1", f"mem_{company}_1"), ("user_2", f"mem_{company}_2")):
            deliver(db, payment_event("payment.failed", company=company, membership=membership, user=user,
                                      at=NOW - timedelta(days=1)))
        # A membership event that names no user still belongs to user_1's membership.
        deliver(db, membership_event("membership.cancel_at_period_end_changed", company=company,
                                     membership=f"mem_{company}_1", at=NOW, user=None,
                                     cancel_at_period_end=True))
        owner.run("INSERT INTO creator_settings (company_id) VALUES (:c)", c=company)
        owner.run("INSERT INTO rate_limits (company_id, bucket, window_start, count)"
                  " VALUES (:c, 'reads', now(), 1)", c=company)
        owner.run("INSERT INTO experiments (company_id, name, variants) VALUES (:c, 'copy',"
                  " CAST(:v AS jsonb))", c=company,
                  v='[{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]')
        case = owner.run("SELECT id::text FROM recovery_cases WHERE company_id = :c AND user_id = 'user_1'",
                         c=company)[0][0]
        owner.run("INSERT INTO recovery_actions (case_id, company_id, kind, step, status,"
                  " idempotency_key, actor) VALUES (CAST(:id AS uuid), :c, 'link_click', 'click',"
                  " 'done', :k, 'member')",
                  id=case, c=company, k=uuid.uuid4().hex)
        owner.run("INSERT INTO case_link_aliases (link_token, company_id, case_id)"  # a merged-away link
                  " VALUES (:t, :c, CAST(:id AS uuid))", t=uuid.uuid4().hex, c=company, id=case)


def counts(owner: Owner, company: str) -> dict[str, int]:
    return {t: int(owner.run(f"SELECT count(*) FROM {t} WHERE company_id = :c", c=company)[0][0])
            for t in DATA_TABLES}


def test_purge_company_dry_run_counts_then_deletes_that_company_only(
        database: Database, owner: Owner, capsys: pytest.CaptureFixture[str]) -> None:
    seed(database, owner)
    before_a, before_b = counts(owner, A), counts(owner, B)
    assert all(before_a.values())

    assert purge_company.main([A, "--dry-run"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["would_delete"] == before_a and counts(owner, A) == before_a

    assert purge_company.main([A]) == 2, "a real purge needs --yes"
    assert counts(owner, A) == before_a

    assert purge_company.main([A, "--yes"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[-1])["deleted"]["events"] == before_a["events"]
    assert not any(counts(owner, A).values())
    assert counts(owner, B) == before_b
    assert owner.run("SELECT company_id FROM erased_companies") == [[A]], "the erasure is recorded"


def test_purge_company_finds_every_tenant_table_children_first(database: Database) -> None:
    from chalicelib.tenancy import tenant_transaction

    with tenant_transaction(A, database) as tx:
        tables = purge_company.tenant_tables(tx)
    assert set(tables) == set(DATA_TABLES)
    assert tables.index("recovery_actions") < tables.index("recovery_cases")


def test_forget_member_erases_the_member_in_one_company_only(
        database: Database, owner: Owner, capsys: pytest.CaptureFixture[str]) -> None:
    seed(database, owner)
    before_b = counts(owner, B)

    assert forget_member.main([A, "user_1", "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)["would_delete"]
    assert dry == {"memberships": 1, "recovery_actions": dry["recovery_actions"], "recovery_cases": 1,
                   "events": 2}
    assert dry["recovery_actions"] >= 1
    assert owner.run("SELECT count(*) FROM events WHERE company_id = :c AND membership_id = :m",
                     c=A, m=f"mem_{A}_1") == [[2]]

    assert forget_member.main([A, "user_1"]) == 0
    for table, column, value in (("events", "membership_id", f"mem_{A}_1"),
                                 ("events", "user_id", "user_1"),
                                 ("recovery_cases", "user_id", "user_1")):
        left = owner.run(f"SELECT count(*) FROM {table} WHERE company_id = :c AND {column} = :v",
                         c=A, v=value)
        assert left == [[0]], (table, column)
    assert owner.run("SELECT count(*) FROM recovery_actions a JOIN recovery_cases c ON c.id = a.case_id"
                     " WHERE c.company_id = :c", c=A)[0][0] >= 1, "user_2's rows stay"
    assert owner.run("SELECT count(*) FROM recovery_cases WHERE company_id = :c AND user_id = 'user_2'",
                     c=A) == [[1]]
    assert counts(owner, B) == before_b, "the same Whop user in another company is untouched"


@pytest.mark.parametrize("argv", [
    ["", "--dry-run"], ["biz_\x00x", "--dry-run"], ["biz_a'; DROP TABLE events; --", "--yes"],
    ["bïz_ünïcode", "--dry-run"], ["x" * 300, "--dry-run"],
])
def test_purge_company_refuses_odd_ids(argv: list[str], database: Database, owner: Owner,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    seed(database, owner)
    assert purge_company.main(argv) == 2
    assert "COMPANY_ID must be" in capsys.readouterr().err
    assert all(counts(owner, A).values())


@pytest.mark.parametrize("user", ["", "user_\x00", "user_1' OR '1'='1", "üser"])
def test_forget_member_refuses_odd_ids(user: str, database: Database, owner: Owner,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    seed(database, owner)
    assert forget_member.main([A, user]) == 2
    assert "USER_ID must be" in capsys.readouterr().err
    assert counts(owner, A)["recovery_cases"] == 2


def test_forget_an_unknown_member_changes_nothing(database: Database, owner: Owner,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    seed(database, owner)
    before = counts(owner, A)
    assert forget_member.main([A, "user_never_seen"]) == 0
    assert json.loads(capsys.readouterr().out)["deleted"] == {
        "memberships": 0, "recovery_actions": 0, "recovery_cases": 0, "events": 0}
    assert counts(owner, A) == before
