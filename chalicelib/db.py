"""Postgres access: one lazily created pg8000 connection per process, and the only doors to it.

``tenant_transaction(company_id)`` is the one way tenant tables are touched: it opens an
explicit transaction and sets ``app.company_id`` transaction-locally, so row-level security
scopes every statement inside it and nothing leaks into the next use of the connection (safe
under RDS Proxy transaction pooling too). ``service_transaction()`` has no tenant: under RLS it
sees no tenant rows and can only call the narrow SECURITY DEFINER functions that return ids.

SQL uses pg8000's native ``:named`` parameters only; values are never formatted into SQL.
pg8000 exceptions never leave this module: they become the typed errors below.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pg8000.converters
import pg8000.exceptions
import pg8000.native

# --- typed errors -------------------------------------------------------------------------------


class DatabaseError(Exception):
    """Base of every database failure this module raises."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class DatabaseUnavailable(DatabaseError):
    """Could not connect, or the connection broke: retrying later may work."""


class UniqueViolation(DatabaseError):
    """A unique constraint refused the row (SQLSTATE 23505)."""


class ConstraintViolation(DatabaseError):
    """A check, foreign-key or not-null constraint refused the row."""


class TenantViolation(DatabaseError):
    """Row-level security refused the statement (SQLSTATE 42501)."""


class TransientDatabaseError(DatabaseError):
    """Serialization failure, deadlock or lock timeout: the transaction may be retried."""


class QueryError(DatabaseError):
    """Any other error reported by Postgres (a bug in SQL, bad input that got this far)."""


_TRANSIENT = {"40001", "40P01", "55P03", "57014"}
_CONSTRAINT = {"23502", "23503", "23514", "23P01", "22P02", "22001", "22003", "22007", "22008"}


def _translate(exc: Exception) -> DatabaseError:
    if isinstance(exc, DatabaseError):
        return exc
    if isinstance(exc, pg8000.exceptions.DatabaseError):
        info: dict[str, Any] = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        code = str(info.get("C", ""))
        message = str(info.get("M", "database error"))
        if code == "23505":
            return UniqueViolation(message, code)
        if code == "42501":
            return TenantViolation(message, code)
        if code in _TRANSIENT:
            return TransientDatabaseError(message, code)
        if code in _CONSTRAINT:
            return ConstraintViolation(message, code)
        if code.startswith("08") or code.startswith("57P"):
            return DatabaseUnavailable(message, code)
        return QueryError(message, code or None)
    # InterfaceError, socket errors, ssl errors: the connection is unusable.
    return DatabaseUnavailable(f"{type(exc).__name__}: connection failed")


# --- connection parameters ----------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectParams:
    user: str
    database: str
    password: str | None = None
    host: str | None = None
    port: int = 5432
    unix_sock: str | None = None
    sslmode: str = "disable"
    sslrootcert: str | None = None

    def describe(self) -> str:
        """Where this points, without the password (safe to log)."""
        where = self.unix_sock or f"{self.host}:{self.port}"
        return f"{self.user}@{where}/{self.database}"


_SSL_MODES = {"disable", "verify-ca", "verify-full"}


def parse_database_url(url: str) -> ConnectParams:
    """Parse ``postgresql://user:pass@host:port/db?sslmode=…`` or ``postgresql://user@/db?host=/dir``.

    Only ``disable``, ``verify-ca`` and ``verify-full`` are accepted: ``require``/``prefer`` would
    encrypt without checking who answers, which is not protection.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("DATABASE_URL must start with postgresql://")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    user = unquote(parts.username or "postgres")
    password = unquote(parts.password) if parts.password is not None else None
    database = unquote(parts.path.lstrip("/")) or user
    port = int(query.get("port") or parts.port or 5432)
    sslmode = query.get("sslmode", "disable")
    if sslmode not in _SSL_MODES:
        raise ValueError(f"sslmode={sslmode!r} is not supported; use verify-full (or disable locally)")
    socket_dir = query.get("host")
    if socket_dir and socket_dir.startswith("/"):
        return ConnectParams(user=user, password=password, database=database, port=port,
                             unix_sock=f"{socket_dir.rstrip('/')}/.s.PGSQL.{port}")
    host = parts.hostname or socket_dir
    if not host:
        raise ValueError("DATABASE_URL names neither a host nor a socket directory (?host=/dir)")
    return ConnectParams(user=user, password=password, database=database, host=host, port=port,
                         sslmode=sslmode, sslrootcert=query.get("sslrootcert"))


def make_ssl_context(params: ConnectParams) -> ssl.SSLContext | None:
    """A context that really verifies the server (never pg8000's unverified ``ssl_context=True``)."""
    if params.unix_sock or params.sslmode == "disable":
        return None
    ctx = ssl.create_default_context(cafile=params.sslrootcert)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = params.sslmode == "verify-full"
    return ctx


def connect(params: ConnectParams, timeout_s: float = 15.0,
            application_name: str = "rebound") -> pg8000.native.Connection:
    """Open one connection; failures become DatabaseUnavailable naming where (never the password)."""
    try:
        return pg8000.native.Connection(
            user=params.user, password=params.password, database=params.database,
            host=params.host or "localhost", port=params.port, unix_sock=params.unix_sock,
            ssl_context=make_ssl_context(params), timeout=timeout_s,
            application_name=application_name, tcp_keepalive=True,
        )
    except (OSError, ssl.SSLError, pg8000.exceptions.InterfaceError,
            pg8000.exceptions.DatabaseError) as exc:
        raise DatabaseUnavailable(
            f"cannot connect to {params.describe()}: {type(exc).__name__}") from exc


# --- the process connection ---------------------------------------------------------------------


# --- statements ----------------------------------------------------------------------------------
#
# pg8000's ``Connection.run`` rewrites ``:name`` placeholders in pure Python on every call and waits
# on the server three times per statement (Parse, Describe, Bind+Execute). Two cheaper modes:
#
# - ``prepared`` (default): each distinct SQL text is prepared once per connection (one wait) and
#   then executed by name (one wait per call; the server skips parse and analysis). Named
#   statements are session state, so behind RDS Proxy they PIN the client session to one server
#   connection (as any session state does). Right for Rebound's deployment today: one direct
#   connection per Lambda process, reused while warm.
# - ``unnamed``: no server-side state (safe to multiplex behind RDS Proxy); the placeholder rewrite
#   is still cached per SQL text, but every statement keeps pg8000's three waits.
#
# Chosen by the ``DB_STATEMENTS`` setting. SQL texts are constants (values are always bound), so
# the set of statements is small and fixed; the cache is bounded all the same.

STATEMENT_MODES = ("prepared", "unnamed")
STATEMENT_CACHE_SIZE = 256


@functools.lru_cache(maxsize=1024)
def _rewrite(sql: str) -> tuple[str, Callable[[dict[str, Any]], tuple[Any, ...]]]:
    """pg8000's placeholder rewrite (``:name`` → ``$n``), computed once per SQL text."""
    statement, make_vals = pg8000.native.to_statement(sql)
    return statement, make_vals


# Per connection: SQL text → its prepared statement, least recently used first. Keyed weakly so a
# dropped connection takes its statements with it (the server forgets them with the session).
_prepared: weakref.WeakKeyDictionary[pg8000.native.Connection,
                                     OrderedDict[str, pg8000.native.PreparedStatement]]
_prepared = weakref.WeakKeyDictionary()


def _statement(conn: pg8000.native.Connection, sql: str) -> pg8000.native.PreparedStatement:
    cache = _prepared.get(conn)
    if cache is None:
        cache = _prepared[conn] = OrderedDict()
    prepared = cache.get(sql)
    if prepared is not None:
        cache.move_to_end(sql)
        return prepared
    prepared = conn.prepare(sql)
    cache[sql] = prepared
    if len(cache) > STATEMENT_CACHE_SIZE:
        _, oldest = cache.popitem(last=False)
        with contextlib.suppress(Exception):  # best effort: the session forgets it on close anyway
            oldest.close()
    return prepared


def _forget_statement(conn: pg8000.native.Connection, sql: str) -> None:
    cache = _prepared.get(conn)
    if cache is not None:
        cache.pop(sql, None)


def _timestamptz_in(text: str) -> Any:
    # pg8000 parses every timestamptz with strptime (~100 µs each: a third of a re-fold's time);
    # Postgres's ISO output is what fromisoformat reads. Anything else (infinity, BC, overflow)
    # keeps pg8000's own handling.
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return pg8000.converters.timestamptz_in(text)


_adapted: weakref.WeakSet[pg8000.native.Connection] = weakref.WeakSet()


def _adapt(conn: pg8000.native.Connection) -> None:
    """Once per connection, before its first statement: the faster timestamptz reader."""
    if conn not in _adapted:
        conn.register_in_adapter(pg8000.native.TIMESTAMPTZ, _timestamptz_in)
        _adapted.add(conn)


class Transaction:
    """The statements of one open transaction; rows come back as dicts."""

    def __init__(self, conn: pg8000.native.Connection, statements: str = "prepared") -> None:
        self._conn = conn
        self._prepare = statements == "prepared"
        _adapt(conn)

    def _run(self, sql: str, params: dict[str, Any]) -> tuple[list[list[Any]] | None,
                                                                list[dict[str, Any]] | None, int]:
        conn = self._conn
        try:
            if self._prepare:
                prepared = _statement(conn, sql)
                rows = prepared.run(**params)
                context = prepared._context
            else:
                statement, make_vals = _rewrite(sql)
                context = conn.execute_unnamed(statement, make_vals(params))
                conn._context = context
                rows = context.rows
        except Exception as exc:
            error = _translate(exc)
            # A plan whose result type changed under it (a migration while warm) or a broken
            # statement: prepare it afresh next time.
            if self._prepare and error.sqlstate in ("0A000", "26000"):
                _forget_statement(conn, sql)
            raise error from exc
        return rows, context.columns, int(context.row_count if context.row_count > 0 else 0)

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        rows, columns, _ = self._run(sql, params)
        names = [c["name"] for c in columns or []]
        return [dict(zip(names, row, strict=True)) for row in rows or []]

    def one(self, sql: str, **params: Any) -> dict[str, Any] | None:
        rows = self.query(sql, **params)
        return rows[0] if rows else None

    def scalar(self, sql: str, **params: Any) -> Any:
        row = self.one(sql, **params)
        return None if row is None else next(iter(row.values()))

    def execute(self, sql: str, **params: Any) -> int:
        """Run a statement; return the number of rows it touched."""
        return self._run(sql, params)[2]


class Database:
    """Holds one connection per thread (one per Lambda process; chalice local serves threads)."""

    def __init__(self, url: str, timeout_s: float = 15.0, application_name: str = "rebound",
                 statements: str = "prepared") -> None:
        if statements not in STATEMENT_MODES:
            raise ValueError(f"statements must be one of {', '.join(STATEMENT_MODES)}")
        self.statements = statements
        self.params = parse_database_url(url)
        self.timeout_s = timeout_s
        self.application_name = application_name
        self._local = threading.local()

    def _connect(self) -> pg8000.native.Connection:
        conn = connect(self.params, self.timeout_s, self.application_name)
        try:
            # A runaway statement must fail before the socket timeout does.
            conn.run("SELECT set_config('statement_timeout', :ms, false)",
                     ms=str(int(self.timeout_s * 1000) - 500))
        except Exception as exc:
            conn.close()
            raise _translate(exc) from exc
        return conn

    def _connection(self) -> pg8000.native.Connection:
        conn: pg8000.native.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: closing is best effort
                conn.close()

    def close(self) -> None:
        self._drop()

    def _begin(self) -> pg8000.native.Connection:
        # A warm Lambda may hold a connection the server has since closed: re-open it once.
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.run("START TRANSACTION")
                return conn
            except (pg8000.exceptions.InterfaceError, OSError, ssl.SSLError) as exc:
                self._drop()
                if attempt == 2:
                    raise DatabaseUnavailable(f"connection lost: {type(exc).__name__}") from exc
            except pg8000.exceptions.DatabaseError as exc:
                self._drop()
                raise _translate(exc) from exc
        raise AssertionError("unreachable")

    @contextmanager
    def transaction(self, company_id: str | None, lock: str | None = None) -> Iterator[Transaction]:
        conn = self._begin()
        tx = Transaction(conn, self.statements)
        try:
            if company_id is not None and lock is not None:
                # Tenant and lock in one round trip (the consumer's per-membership lock).
                tx.query("SELECT set_config('app.company_id', :cid, true),"
                         " pg_advisory_xact_lock(hashtextextended(:lock, 0))", cid=company_id, lock=lock)
            elif company_id is not None:
                tx.query("SELECT set_config('app.company_id', :cid, true)", cid=company_id)
            yield tx
        except BaseException as exc:
            try:
                conn.run("ROLLBACK")
            except Exception:  # noqa: BLE001 - the connection is gone; drop it
                self._drop()
            if isinstance(exc, (pg8000.exceptions.Error, OSError)):
                raise _translate(exc) from exc
            raise
        else:
            try:
                conn.run("COMMIT")
            except Exception as exc:
                self._drop()
                raise _translate(exc) from exc


_database: Database | None = None
_database_lock = threading.Lock()


def get_database() -> Database:
    """The process-wide Database for ``DATABASE_URL`` (created on first use, reused when warm)."""
    global _database
    if _database is None:
        with _database_lock:
            if _database is None:
                from chalicelib.config import ConfigError, get_config

                cfg = get_config()
                if not cfg.DATABASE_URL:
                    raise ConfigError("missing required setting(s): DATABASE_URL")
                try:
                    _database = Database(cfg.DATABASE_URL, timeout_s=cfg.DB_CONNECT_TIMEOUT_S * 3,
                                         statements=cfg.DB_STATEMENTS)
                except ValueError as exc:
                    raise ConfigError(f"DATABASE_URL: {exc}") from None
    return _database


def reset_database() -> None:
    """Close and forget the process connection (tests, and the dev launcher on restart)."""
    global _database
    with _database_lock:
        if _database is not None:
            _database.close()
        _database = None


@contextmanager
def tenant_transaction(company_id: str, db: Database | None = None, *,
                       lock: str | None = None) -> Iterator[Transaction]:
    """A transaction in which RLS shows and accepts only ``company_id``'s rows; with ``lock``, it
    also holds the advisory lock on that key until it ends (taken in the same round trip)."""
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
