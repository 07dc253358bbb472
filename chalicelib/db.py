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
import dataclasses
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
from typing import Any, Protocol
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
    sslmode: str = "verify-full"
    sslrootcert: str | None = None

    def describe(self) -> str:
        """Where this points, without the password (safe to log)."""
        where = self.unix_sock or f"{self.host}:{self.port}"
        return f"{self.user}@{where}/{self.database}"

    @property
    def is_local(self) -> bool:
        """A Unix socket or a loopback address: the traffic never leaves the machine."""
        return self.unix_sock is not None or (self.host or "") in LOOPBACK_HOSTS

    @property
    def verifies_server(self) -> bool:
        return self.sslmode in VERIFYING_SSL_MODES


# libpq's modes. ``allow``/``prefer``/``require`` encrypt (or not) without checking who answers:
# outside loopback they are accepted only outside production (see ``check_tls_policy``).
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
VERIFYING_SSL_MODES = ("verify-ca", "verify-full")
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class DatabaseUrlError(ValueError):
    """``DATABASE_URL`` is malformed or refused. The message never contains any part of the URL:
    a password with an unencoded ``#`` or ``@`` would otherwise end up in a log line."""


def parse_database_url(url: str) -> ConnectParams:
    """Parse ``postgresql://user:pass@host:port/db?sslmode=…`` or ``postgresql://user@/db?host=/dir``.

    A TCP URL without ``sslmode`` means ``verify-full`` (a loopback host means ``disable``: the
    bytes never leave the machine). Errors are ``DatabaseUrlError`` and name what is wrong, never
    a value from the URL.
    """
    try:
        return _parse_database_url(url)
    except DatabaseUrlError:
        raise
    except (ValueError, TypeError, UnicodeError):
        # urllib's own messages quote pieces of the URL (e.g. "Port could not be cast to integer
        # value as '<rest of the password>'"): never let them out.
        raise DatabaseUrlError("is not a valid postgresql:// URL (percent-encode special characters "
                               "such as # @ / : in the user name and password)") from None


def _parse_database_url(url: str) -> ConnectParams:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise DatabaseUrlError("must start with postgresql://")
    if parts.fragment or "#" in url:
        raise DatabaseUrlError("contains '#': percent-encode it (%23) in the password")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    user = unquote(parts.username or "postgres")
    password = unquote(parts.password) if parts.password is not None else None
    database = unquote(parts.path.lstrip("/")) or user
    raw_port = query.get("port") or parts.port or 5432
    if not str(raw_port).isdigit() or not 0 < int(raw_port) < 65536:
        raise DatabaseUrlError("has an invalid port")
    port = int(raw_port)
    socket_dir = query.get("host")
    if socket_dir and socket_dir.startswith("/"):
        return ConnectParams(user=user, password=password, database=database, port=port,
                             unix_sock=f"{socket_dir.rstrip('/')}/.s.PGSQL.{port}", sslmode="disable")
    host = parts.hostname or socket_dir
    if not host:
        raise DatabaseUrlError("names neither a host nor a socket directory (?host=/dir)")
    sslmode = query.get("sslmode") or ("disable" if host in LOOPBACK_HOSTS else "verify-full")
    if sslmode not in SSL_MODES:
        raise DatabaseUrlError("has an unknown sslmode; use verify-full")
    return ConnectParams(user=user, password=password, database=database, host=host, port=port,
                         sslmode=sslmode, sslrootcert=query.get("sslrootcert"))


def check_tls_policy(params: ConnectParams, *, production: bool) -> None:
    """Refuse, in production, a TCP connection to another machine that does not verify the server.

    ``disable`` sends the password and every row in clear text; ``require``/``prefer``/``allow``
    encrypt but accept any certificate, so anyone on the path can answer. Only ``verify-full``
    (or ``verify-ca``) is protection; loopback hosts and Unix sockets never leave the machine.
    """
    if production and not params.is_local and not params.verifies_server:
        raise DatabaseUrlError("sslmode must be verify-full (or verify-ca) for a non-local host in "
                               "production; disable, allow, prefer and require do not check the server")


def make_ssl_context(params: ConnectParams) -> ssl.SSLContext | None:
    """A context that really verifies the server (never pg8000's unverified ``ssl_context=True``)."""
    if params.unix_sock or params.sslmode == "disable":
        return None
    if params.sslmode in ("allow", "prefer") and params.is_local:
        return None  # libpq would try TLS first; on loopback there is nothing to protect
    if not params.verifies_server:
        # require (and allow/prefer to another host), only ever outside production: encrypted,
        # but any certificate is accepted, as libpq does.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        return insecure
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
        raise DatabaseUnavailable(f"cannot connect to {params.describe()}: {type(exc).__name__}",
                                  _server_sqlstate(exc)) from exc


def _server_sqlstate(exc: BaseException | None) -> str | None:
    """The SQLSTATE the server gave, also when pg8000's own clean-up failed after it (a refused
    login closes the socket, and closing it again raises a network error on top)."""
    while exc is not None:
        info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        if info.get("C"):
            return str(info["C"])
        exc = exc.__cause__ or exc.__context__
    return None


# A login the server refused (invalid_password, invalid_authorization_specification): after a
# password rotation the cached secret is stale, so it is read again once and the connect retried.
AUTH_FAILED = frozenset({"28P01", "28000"})


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


class SupportsWrite(Protocol):
    def write(self, data: bytes, /) -> object: ...


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

    def copy_out(self, sql: str, stream: SupportsWrite) -> int:
        """Run a ``COPY … TO STDOUT`` (constant SQL: COPY takes no bind parameters, so values
        reach it as transaction-local settings read with ``current_setting``); its bytes go to
        ``stream.write`` as they arrive, one call per row. Returns the number of rows copied."""
        conn = self._conn
        try:
            # Unnamed and unrewritten: nothing to prepare (COPY plans its query every time) and
            # no ``:name`` placeholders to look for (the SQL is full of ``::`` casts).
            context = conn.execute_unnamed(sql, stream=stream)
            conn._context = context
        except Exception as exc:
            raise _translate(exc) from exc
        return int(context.row_count if context.row_count > 0 else 0)


DEFAULT_POOL_SIZE = 4
POOL_WAIT_S = 10.0


class Database:
    """A small bounded pool of connections, shared by every thread of the process.

    A transaction borrows a connection and gives it back when it ends, so a connection belongs
    to no thread: ``chalice local`` (a thread per request) reuses the same few connections instead
    of opening one per request thread, and never holds more than ``pool_size``. A Lambda process
    serves one request at a time and so keeps one warm connection. When every connection is busy a
    transaction waits up to ``pool_wait_s`` for one, then fails as ``DatabaseUnavailable`` (503).
    ``statements`` chooses how statements run (see STATEMENT_MODES above).
    """

    def __init__(self, url: str, timeout_s: float = 15.0, application_name: str = "rebound", *,
                 pool_size: int = DEFAULT_POOL_SIZE, pool_wait_s: float = POOL_WAIT_S,
                 production: bool = False, statements: str = "prepared",
                 proxy_host: str | None = None,
                 on_unavailable: Callable[[], None] | None = None,
                 reread_url: Callable[[], str | None] | None = None) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if statements not in STATEMENT_MODES:
            raise ValueError(f"statements must be one of {', '.join(STATEMENT_MODES)}")
        self.statements = statements
        self.url = url
        self.proxy_host = proxy_host
        self.params = _params(url, proxy_host)
        check_tls_policy(self.params, production=production)
        self._production = production
        # Called when a transaction cannot start because the database is unreachable (the
        # DatabaseUnavailable metric); and, when a login is refused, asked for the URL afresh.
        self._on_unavailable = on_unavailable
        self._reread_url = reread_url
        self.timeout_s = timeout_s
        self.application_name = application_name
        self.pool_size = pool_size
        self.pool_wait_s = pool_wait_s
        self._cond = threading.Condition()
        self._idle: list[pg8000.native.Connection] = []
        self._open = 0  # idle + borrowed (+ being opened)
        self._generation = 0  # close() bumps it: connections borrowed before are closed on return
        self._born: dict[int, int] = {}

    @property
    def open_connections(self) -> int:
        with self._cond:
            return self._open

    @property
    def statement_timeout_ms(self) -> int:
        # A runaway statement must fail before the socket timeout does.
        return int(self.timeout_s * 1000) - 500

    def _connect(self) -> pg8000.native.Connection:
        try:
            conn = connect(self.params, self.timeout_s, self.application_name)
        except DatabaseUnavailable as exc:
            if exc.sqlstate not in AUTH_FAILED or self._reread_url is None:
                raise
            url = self._reread_url()  # the password may have rotated: read the secret again
            if not url or url == self.url:
                raise
            self.url, self.params = url, _params(url, self.proxy_host)
            check_tls_policy(self.params, production=self._production)
            conn = connect(self.params, self.timeout_s, self.application_name)
        if self.statements == "unnamed":
            # No session state behind RDS Proxy: the timeout is set per transaction instead.
            return conn
        try:
            conn.run("SELECT set_config('statement_timeout', :ms, false)",
                     ms=str(self.statement_timeout_ms))
        except Exception as exc:
            conn.close()
            raise _translate(exc) from exc
        return conn

    def _acquire(self) -> pg8000.native.Connection:
        deadline = time.monotonic() + self.pool_wait_s
        with self._cond:
            while not self._idle and self._open >= self.pool_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DatabaseUnavailable(f"all {self.pool_size} database connections are busy")
                self._cond.wait(remaining)
            if self._idle:
                return self._idle.pop()  # the most recently used: the warmest
            self._open += 1
            generation = self._generation
        try:
            conn = self._connect()
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._born[id(conn)] = generation
        return conn

    def _release(self, conn: pg8000.native.Connection, *, broken: bool = False) -> None:
        with self._cond:
            stale = self._born.get(id(conn)) != self._generation
            if broken or stale:
                self._born.pop(id(conn), None)
                self._open -= 1
            else:
                self._idle.append(conn)
            self._cond.notify()
        if broken or stale:
            with contextlib.suppress(Exception):  # already broken: closing is best effort
                conn.close()

    def close(self) -> None:
        """Close the idle connections; borrowed ones are closed when their transaction ends."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._generation += 1
            for conn in idle:
                self._born.pop(id(conn), None)
            self._open -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()

    def _begin(self) -> pg8000.native.Connection:
        # A warm Lambda may hold a connection the server has since closed: re-open it once.
        for attempt in (1, 2):
            conn = self._acquire()
            try:
                conn.run("START TRANSACTION")
                return conn
            except (pg8000.exceptions.InterfaceError, OSError, ssl.SSLError) as exc:
                self._release(conn, broken=True)
                if attempt == 2:
                    raise DatabaseUnavailable(f"connection lost: {type(exc).__name__}") from exc
            except pg8000.exceptions.DatabaseError as exc:
                self._release(conn, broken=True)
                raise _translate(exc) from exc
            except BaseException:
                self._release(conn, broken=True)
                raise
        raise AssertionError("unreachable")

    @contextmanager
    def transaction(self, company_id: str | None,
                    lock: str | tuple[str, ...] | None = None) -> Iterator[Transaction]:
        try:
            conn = self._begin()
        except DatabaseUnavailable:
            if self._on_unavailable is not None:
                self._on_unavailable()
            raise
        broken = False
        locks = (lock,) if isinstance(lock, str) else tuple(lock or ())
        try:
            tx = Transaction(conn, self.statements)
            try:
                if self.statements == "unnamed":
                    # Behind RDS Proxy: set_config and advisory locks in a statement's text pin
                    # the session; inside a function call they do not (migration 0014). All three
                    # are transaction-local, so the session is safe to hand on afterwards.
                    tx.query("SELECT rebound_begin(:cid, CAST(:locks AS text[]), :ms)", cid=company_id,
                             locks=list(locks), ms=self.statement_timeout_ms)
                elif company_id is not None and locks:
                    # Tenant and locks in one round trip (the consumer's per-membership lock, and
                    # the per-member one a failure shares with a saved card: issue 18), in order.
                    taken = ", ".join(f"pg_advisory_xact_lock(hashtextextended(:lock{i}, 0))"
                                      for i in range(len(locks)))
                    tx.query("SELECT set_config('app.company_id', :cid, true), " + taken, cid=company_id,
                             **{f"lock{i}": key for i, key in enumerate(locks)})
                elif company_id is not None:
                    tx.query("SELECT set_config('app.company_id', :cid, true)", cid=company_id)
                yield tx
            except BaseException as exc:
                try:
                    conn.run("ROLLBACK")
                except Exception:  # noqa: BLE001 - the connection is gone; drop it
                    broken = True
                if isinstance(exc, (pg8000.exceptions.Error, OSError)):
                    raise _translate(exc) from exc
                raise
            else:
                try:
                    conn.run("COMMIT")
                except Exception as exc:
                    broken = True
                    raise _translate(exc) from exc
        finally:
            self._release(conn, broken=broken)


def _params(url: str, proxy_host: str | None) -> ConnectParams:
    params = parse_database_url(url)
    if proxy_host:
        # RDS Proxy presents an ACM certificate (Amazon's public roots, in the system trust
        # store), not one of the RDS CA bundle: verify-full against the system store.
        params = dataclasses.replace(params, host=proxy_host, unix_sock=None,
                                     sslmode="verify-full", sslrootcert=None)
    return params


_database: Database | None = None
_database_lock = threading.Lock()


def get_database() -> Database:
    """The process-wide Database for ``DATABASE_URL`` (created on first use, reused when warm).
    When the URL changed (its secret was rotated and read again), the next use gets a new pool
    and the old one's idle connections are closed."""
    global _database
    from chalicelib.config import ConfigError, get_config

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
    from chalicelib.config import refresh_config

    return refresh_config().DATABASE_URL


def _count_unavailable() -> None:
    from chalicelib.observability import count

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
