"""The database adapter: URL parsing, TLS that verifies, typed errors, reconnect once."""

from __future__ import annotations

import ssl

import pytest

from chalicelib.database_url import check_tls_policy, make_ssl_context, parse_database_url
from chalicelib.db import DatabaseError, Transaction, UniqueViolation, _rewrite
from chalicelib.db_pool import Database
from chalicelib.tenancy import service_transaction, tenant_transaction
from scripts.localdb import LocalDatabase
from tests.conftest import Owner


def test_parse_tcp_url_with_verify_full() -> None:
    p = parse_database_url("postgresql://svc:p%40ss@db.example.com:6432/rebound?sslmode=verify-full")
    assert (p.user, p.password, p.host, p.port, p.database) == ("svc", "p@ss", "db.example.com", 6432,
                                                                 "rebound")
    ctx = make_ssl_context(p)
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname is True
    assert "p@ss" not in p.describe()


def test_verify_ca_checks_the_chain_but_not_the_name() -> None:
    ctx = make_ssl_context(parse_database_url("postgresql://u@h/d?sslmode=verify-ca"))
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname is False


def test_parse_unix_socket_url() -> None:
    p = parse_database_url("postgresql://rebound_runtime@/rebound?host=/var/run/pg")
    assert p.unix_sock == "/var/run/pg/.s.PGSQL.5432" and p.host is None
    assert make_ssl_context(p) is None


@pytest.mark.parametrize("url", ["mysql://u@h/d", "postgresql:///d"])
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_database_url(url)


@pytest.mark.parametrize("url", ["postgresql://u@h/d?sslmode=require", "postgresql://u@h/d?sslmode=prefer",
                                 "postgresql://u@h/d?sslmode=disable"])
def test_unverified_tls_is_refused_in_production(url: str) -> None:
    # Outside production they are allowed (tests/security/test_database_url.py has the matrix).
    with pytest.raises(ValueError):
        check_tls_policy(parse_database_url(url), production=True)


def test_unique_violation_is_a_typed_error(database: Database) -> None:
    with tenant_transaction("biz_a", database) as tx:
        tx.execute("INSERT INTO creator_settings (company_id) VALUES ('biz_a')")
    with pytest.raises(UniqueViolation), tenant_transaction("biz_a", database) as tx:
        tx.execute("INSERT INTO creator_settings (company_id) VALUES ('biz_a')")
    # The failed transaction was rolled back and the connection is usable.
    with tenant_transaction("biz_a", database) as tx:
        assert tx.scalar("SELECT count(*) FROM creator_settings") == 1


def test_an_exception_in_the_block_rolls_back(database: Database) -> None:
    with pytest.raises(RuntimeError), tenant_transaction("biz_a", database) as tx:
        tx.execute("INSERT INTO creator_settings (company_id) VALUES ('biz_a')")
        raise RuntimeError("boom")
    with tenant_transaction("biz_a", database) as tx:
        assert tx.scalar("SELECT count(*) FROM creator_settings") == 0


def test_a_connection_killed_between_invocations_is_reopened_once(database: Database,
                                                                  owner: Owner) -> None:
    with service_transaction(database) as tx:
        pid = tx.scalar("SELECT pg_backend_pid()")
    owner.run("SELECT pg_terminate_backend(:pid)", pid=pid)
    with service_transaction(database) as tx:
        assert tx.scalar("SELECT pg_backend_pid()") != pid


# --- statement modes (issue 13): prepared once per connection, or no session state at all --------

_PREPARED_HERE = "SELECT count(*) FROM pg_prepared_statements WHERE statement = :s"


def _prepared_count(tx: Transaction, sql: str) -> int:
    return int(tx.scalar(_PREPARED_HERE, s=_rewrite(sql)[0]))


def test_a_statement_is_prepared_once_per_connection_and_reused(database: Database) -> None:
    sql = "SELECT company_id FROM creator_settings WHERE company_id = :c"
    for _ in range(3):
        with tenant_transaction("biz_a", database) as tx:
            assert tx.query(sql, c="biz_a") == []
            assert _prepared_count(tx, sql) == 1
    with tenant_transaction("biz_a", database) as tx:
        tx.execute("INSERT INTO creator_settings (company_id) VALUES (:c)", c="biz_a")
        assert tx.query(sql, c="biz_a") == [{"company_id": "biz_a"}]


def test_a_new_connection_prepares_afresh(database: Database, owner: Owner) -> None:
    sql = "SELECT count(*) AS n FROM creator_settings WHERE company_id = :c"
    with tenant_transaction("biz_a", database) as tx:
        assert tx.scalar(sql, c="biz_a") == 0
        pid = tx.scalar("SELECT pg_backend_pid()")
    owner.run("SELECT pg_terminate_backend(:pid)", pid=pid)
    with tenant_transaction("biz_a", database) as tx:
        assert tx.scalar(sql, c="biz_a") == 0  # the dead session's statement is not assumed
        assert _prepared_count(tx, sql) == 1


def test_a_failed_transaction_leaves_prepared_statements_usable(database: Database) -> None:
    sql = "INSERT INTO creator_settings (company_id) VALUES (:c)"
    with tenant_transaction("biz_a", database) as tx:
        tx.execute(sql, c="biz_a")
    with pytest.raises(UniqueViolation), tenant_transaction("biz_a", database) as tx:
        tx.execute(sql, c="biz_a")
    with tenant_transaction("biz_b", database) as tx:
        assert tx.execute(sql, c="biz_b") == 1


def test_a_plan_whose_result_changed_is_prepared_again(database: Database, owner: Owner) -> None:
    sql = "SELECT * FROM creator_settings WHERE company_id = :c"
    with tenant_transaction("biz_a", database) as tx:
        tx.query(sql, c="biz_a")
    owner.run("ALTER TABLE creator_settings ADD COLUMN bench_probe integer")
    try:
        with pytest.raises(DatabaseError), tenant_transaction("biz_a", database) as tx:
            tx.query(sql, c="biz_a")
        with tenant_transaction("biz_a", database) as tx:  # forgotten, prepared anew: works
            assert tx.query(sql, c="biz_a") == []
    finally:
        owner.run("ALTER TABLE creator_settings DROP COLUMN bench_probe")


def test_unnamed_mode_keeps_no_session_state(local_database: LocalDatabase) -> None:
    unnamed = Database(local_database.runtime_url, statements="unnamed")
    try:
        sql = "SELECT company_id FROM creator_settings WHERE company_id = :c"
        with tenant_transaction("biz_a", unnamed) as tx:
            assert tx.query(sql, c="biz_a") == []
            tx.execute("INSERT INTO creator_settings (company_id) VALUES (:c)", c="biz_a")
            assert tx.query(sql, c="biz_a") == [{"company_id": "biz_a"}]
            assert tx.scalar("SELECT count(*) FROM pg_prepared_statements") == 0
        with pytest.raises(UniqueViolation), tenant_transaction("biz_a", unnamed) as tx:
            tx.execute("INSERT INTO creator_settings (company_id) VALUES (:c)", c="biz_a")
    finally:
        with tenant_transaction("biz_a", unnamed) as tx:
            tx.execute("DELETE FROM creator_settings")
        unnamed.close()


def test_an_unknown_statement_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="statements"):
        Database("postgresql://u@h/db", statements="cached")


def test_tenant_and_lock_in_one_round_trip_hold_the_lock_until_the_end(
        database: Database, local_database: LocalDatabase) -> None:
    other = Database(local_database.runtime_url)
    probe = "SELECT pg_try_advisory_xact_lock(hashtextextended(:k, 0)) AS got"
    try:
        with tenant_transaction("biz_a", database, lock="biz_a/mem_1") as tx:
            assert tx.scalar("SELECT current_setting('app.company_id')") == "biz_a"
            with service_transaction(other) as probe_tx:
                assert probe_tx.scalar(probe, k="biz_a/mem_1") is False
                assert probe_tx.scalar(probe, k="biz_a/mem_2") is True
        with service_transaction(other) as probe_tx:
            assert probe_tx.scalar(probe, k="biz_a/mem_1") is True
    finally:
        other.close()
