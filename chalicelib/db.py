"""One transaction's statements over pg8000 (``Transaction``) and the typed errors every database
failure becomes. The pool that lends connections is ``db_pool``; the process's pool and the only
doors to tenant data (``tenant_transaction``, ``service_transaction``) are ``tenancy``.

SQL uses pg8000's native ``:named`` parameters only; values are never formatted into SQL.
pg8000 exceptions never leave the database modules: they become the typed errors below.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

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


def translate_error(exc: Exception) -> DatabaseError:
    """A pg8000 (or socket) failure as one of the typed errors above."""
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
            error = translate_error(exc)
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
            raise translate_error(exc) from exc
        return int(context.row_count if context.row_count > 0 else 0)
