"""A small bounded pool of pg8000 connections (``Database``) and opening one (``connect``).

The pool is given everything it needs (URL, timeouts, size, statement mode, the proxy host, what
to do when the database is unreachable, how to read a rotated URL): it reads no setting itself.
``tenancy`` builds the process's pool from the settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pg8000.exceptions
import pg8000.native

from chalicelib.database_url import ConnectParams, check_tls_policy, make_ssl_context, parse_database_url
from chalicelib.db import STATEMENT_MODES, DatabaseUnavailable, Transaction, translate_error


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


DEFAULT_POOL_SIZE = 4
POOL_WAIT_S = 10.0


class Database:
    """A small bounded pool of connections, shared by every thread of the process.

    A transaction borrows a connection and gives it back when it ends, so a connection belongs
    to no thread: ``chalice local`` (a thread per request) reuses the same few connections instead
    of opening one per request thread, and never holds more than ``pool_size``. A Lambda process
    serves one request at a time and so keeps one warm connection. When every connection is busy a
    transaction waits up to ``pool_wait_s`` for one, then fails as ``DatabaseUnavailable`` (503).
    ``statements`` chooses how statements run (``db.STATEMENT_MODES``).
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
            raise translate_error(exc) from exc
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
                raise translate_error(exc) from exc
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
                    # the per-member one a failure shares with a saved card), in order.
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
                    raise translate_error(exc) from exc
                raise
            else:
                try:
                    conn.run("COMMIT")
                except Exception as exc:
                    broken = True
                    raise translate_error(exc) from exc
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
