"""Issue 9 items 1, 2 and 9: database TLS by default, no URL piece ever logged, a bounded pool."""

from __future__ import annotations

import logging
import ssl
import threading

import pytest

from chalicelib import config, tenancy
from chalicelib.config import ConfigError, load_config
from chalicelib.database_url import DatabaseUrlError, make_ssl_context, parse_database_url
from chalicelib.db import DatabaseUnavailable
from chalicelib.db_pool import Database
from tests.conftest import Owner

PROD = {"APP_ENV": "production", "WHOP_API_KEY": "k", "WHOP_WEBHOOK_SECRET": "ws_x", "WHOP_APP_ID": "app_x",
        "EVENTS_QUEUE_URL": "https://sqs.example/q", "PUBLIC_BASE_URL": "https://rebound.example"}


# --- item 1: TLS is verify-full unless the URL says otherwise -----------------------------------


def test_a_tcp_url_without_sslmode_verifies_the_server() -> None:
    params = parse_database_url("postgresql://svc:pw@db.internal.example:5432/rebound")
    assert params.sslmode == "verify-full"
    ctx = make_ssl_context(params)
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname is True


def test_loopback_and_sockets_need_no_tls() -> None:
    assert parse_database_url("postgresql://u@127.0.0.1:5432/d").sslmode == "disable"
    assert make_ssl_context(parse_database_url("postgresql://u@/d?host=/tmp/pg")) is None


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer", "require"])
def test_production_refuses_modes_that_do_not_verify_at_cold_start(mode: str) -> None:
    url = f"postgresql://svc:s3cret-pw@db.internal.example/rebound?sslmode={mode}"
    with pytest.raises(ConfigError) as raised:
        load_config({**PROD, "DATABASE_URL": url})
    message = str(raised.value)
    assert "DATABASE_URL" in message and "verify-full" in message
    assert "s3cret" not in message and "db.internal" not in message and "svc" not in message


@pytest.mark.parametrize("mode", ["verify-full", "verify-ca"])
def test_production_accepts_verifying_modes(mode: str) -> None:
    cfg = load_config({**PROD, "DATABASE_URL": f"postgresql://svc:pw@db.example/rebound?sslmode={mode}"})
    assert cfg.DATABASE_URL is not None


def test_outside_production_require_is_allowed_for_a_remote_host() -> None:
    cfg = load_config({"APP_ENV": "development",
                       "DATABASE_URL": "postgresql://svc:pw@db.example/rebound?sslmode=require"})
    assert cfg.DATABASE_URL is not None
    ctx = make_ssl_context(parse_database_url(cfg.DATABASE_URL))
    assert ctx is not None  # encrypted, if unverified: never clear text


def test_production_allows_a_local_socket_without_tls() -> None:
    load_config({**PROD, "DATABASE_URL": "postgresql://svc@/rebound?host=/var/run/postgresql"})


# --- item 2: no piece of the URL in any message or log --------------------------------------------

SECRET_URLS = [
    "postgresql://svc:pa#ss-WORD-9@db.example:5432/rebound",      # unencoded '#'
    "postgresql://svc:pa/ss-WORD-9@db.example:5432/rebound",      # unencoded '/'
    "postgresql://svc:ss-WORD-9@db.example:54x2/rebound",         # bad port
    "postgresql://svc:ss-WORD-9@db.example/rebound?sslmode=ss-WORD-9",  # unknown sslmode
    "postgresql://svc:ss-WORD-9@[db.example/rebound",             # bad IPv6 literal
]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_malformed_urls_fail_at_cold_start_without_echoing_the_url(url: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError) as raised:
        load_config({**PROD, "DATABASE_URL": url})
    assert "DATABASE_URL" in str(raised.value)
    for text in (str(raised.value), repr(raised.value), caplog.text):
        assert "WORD" not in text and "db.example" not in text and "svc" not in text
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


@pytest.mark.parametrize("url", SECRET_URLS)
def test_the_parser_itself_never_echoes_the_url(url: str) -> None:
    with pytest.raises(DatabaseUrlError) as raised:
        parse_database_url(url)
    assert "WORD" not in str(raised.value) and raised.value.__cause__ is None


def test_a_percent_encoded_hash_in_the_password_works() -> None:
    assert parse_database_url("postgresql://svc:pa%23ss@db.example/rebound").password == "pa#ss"


def test_requests_answer_503_and_log_no_url_piece_when_the_url_is_bad(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from chalice.test import Client

    monkeypatch.setenv("DATABASE_URL", "postgresql://svc:pa#ss-WORD-9@db.example:5432/rebound")
    config.reset_config()
    tenancy.reset_database()
    try:
        from app import app

        with Client(app) as client:
            resp = client.http.get("/r/" + "a" * 43)
        assert resp.status_code == 503
        out = capsys.readouterr()
        assert "WORD" not in out.out + out.err and "WORD" not in resp.body.decode()
    finally:
        config.reset_config()
        tenancy.reset_database()


# --- item 9: a bounded pool shared by threads ---------------------------------------------------


def _backends(owner: Owner, name: str) -> int:
    return int(owner.run("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n", n=name)[0][0])


def test_many_request_threads_share_a_bounded_pool(local_database: object, owner: Owner) -> None:
    url = local_database.runtime_url  # type: ignore[attr-defined]
    pool = Database(url, application_name="rebound-pool-test", pool_size=3, pool_wait_s=30)
    seen: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(40)

    def request() -> None:  # what one `chalice local` request thread does, then the thread ends
        try:
            barrier.wait()
            with tenancy.service_transaction(pool) as tx:
                seen.append(int(tx.scalar("SELECT pg_backend_pid()")))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert len(seen) == 40 and len(set(seen)) <= 3  # reused, never one per thread
        assert pool.open_connections <= 3
        assert _backends(owner, "rebound-pool-test") <= 3
    finally:
        pool.close()
    assert pool.open_connections == 0


def test_a_pool_with_every_connection_busy_answers_unavailable_not_forever(local_database: object) -> None:
    pool = Database(local_database.runtime_url, pool_size=1, pool_wait_s=0.2)  # type: ignore[attr-defined]
    try:
        with (tenancy.service_transaction(pool), pytest.raises(DatabaseUnavailable),
              tenancy.service_transaction(pool)):
            pass
        with tenancy.service_transaction(pool) as tx:  # the held connection came back
            assert tx.scalar("SELECT 1") == 1
    finally:
        pool.close()


def test_a_broken_connection_is_not_returned_to_the_pool(local_database: object, owner: Owner) -> None:
    pool = Database(local_database.runtime_url, pool_size=1)  # type: ignore[attr-defined]
    try:
        with tenancy.service_transaction(pool) as tx:
            pid = tx.scalar("SELECT pg_backend_pid()")
        owner.run("SELECT pg_terminate_backend(:pid)", pid=pid)
        with tenancy.service_transaction(pool) as tx:
            assert tx.scalar("SELECT pg_backend_pid()") != pid
        assert pool.open_connections == 1
    finally:
        pool.close()
