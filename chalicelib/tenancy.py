"""The process's database and the only doors to it.

``tenant_transaction(company_id)`` is the one way tenant tables are touched: it opens an
explicit transaction and sets ``app.company_id`` transaction-locally, so row-level security
scopes every statement inside it and nothing leaks into the next use of the connection (safe
under RDS Proxy transaction pooling too). ``service_transaction()`` has no tenant: under RLS it
sees no tenant rows and can only call the narrow SECURITY DEFINER functions that return ids.

Both borrow from one pool per process (``get_database``), built from the settings on first use
and built again when ``DATABASE_URL`` changed (a rotated secret).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from chalicelib.config import ConfigError, get_config, refresh_config
from chalicelib.database_url import DatabaseUrlError
from chalicelib.db import Transaction
from chalicelib.db_pool import Database
from chalicelib.observability import count

_database: Database | None = None
_database_lock = threading.Lock()


def get_database() -> Database:
    """The process-wide Database for ``DATABASE_URL`` (created on first use, reused when warm).
    When the URL changed (its secret was rotated and read again), the next use gets a new pool
    and the old one's idle connections are closed."""
    global _database
    cfg = get_config()
    current = _database
    if current is not None and current.url == cfg.DATABASE_URL:
        return current
    with _database_lock:
        if _database is not None and _database.url == cfg.DATABASE_URL:
            return _database
        if not cfg.DATABASE_URL:
            raise ConfigError("missing required setting(s): DATABASE_URL")
        try:
            fresh = Database(cfg.DATABASE_URL, timeout_s=cfg.DB_CONNECT_TIMEOUT_S * 3,
                             pool_size=cfg.DB_POOL_SIZE, production=cfg.is_production,
                             statements=cfg.DB_STATEMENTS, proxy_host=cfg.DATABASE_PROXY_HOST,
                             on_unavailable=_count_unavailable, reread_url=_reread_url)
        except DatabaseUrlError as exc:
            # The message names the setting and the problem, never a piece of the URL.
            raise ConfigError(f"DATABASE_URL {exc}") from None
        if _database is not None:
            _database.close()
        _database = fresh
        return fresh


def _reread_url() -> str | None:
    return refresh_config().DATABASE_URL


def _count_unavailable() -> None:
    count("DatabaseUnavailable")


def reset_database() -> None:
    """Close and forget the process connection (tests, and the dev launcher on restart)."""
    global _database
    with _database_lock:
        if _database is not None:
            _database.close()
        _database = None


@contextmanager
def tenant_transaction(company_id: str, db: Database | None = None, *,
                       lock: str | tuple[str, ...] | None = None) -> Iterator[Transaction]:
    """A transaction in which RLS shows and accepts only ``company_id``'s rows; with ``lock`` (a key
    or several, taken in order), it also holds those advisory locks until it ends (taken in the
    same round trip)."""
    if not company_id:
        raise ValueError("company_id is required for a tenant transaction")
    with (db or get_database()).transaction(company_id, lock) as tx:
        yield tx


@contextmanager
def service_transaction(db: Database | None = None) -> Iterator[Transaction]:
    """A transaction with no tenant: sees no tenant rows; for SECURITY DEFINER id look-ups."""
    with (db or get_database()).transaction(None) as tx:
        yield tx


def ping(db: Database | None = None) -> tuple[float, str | None]:
    """Round-trip the database; return (latency in ms, latest applied migration)."""
    started = time.perf_counter()
    with service_transaction(db) as tx:
        version = tx.scalar("SELECT rebound_schema_version()")
    return (time.perf_counter() - started) * 1000.0, version
