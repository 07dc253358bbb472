"""The database adapter: URL parsing, TLS that verifies, typed errors, reconnect once."""

from __future__ import annotations

import ssl

import pytest

from chalicelib.db import (
    Database,
    UniqueViolation,
    check_tls_policy,
    make_ssl_context,
    parse_database_url,
    service_transaction,
    tenant_transaction,
)
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
