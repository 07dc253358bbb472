"""A pytest plugin that records every statement one login sends through pg8000 (the wire form:
statement text and its parameters as text), for scripts/compat.py. It patches pg8000 itself, so
it records any release's code, whatever its own database layer looks like.

Loaded by name into another release's test run: ``-p rebound_compat_recorder`` with this file
copied under that name; ``REBOUND_COMPAT_USER`` is the login to record, ``REBOUND_COMPAT_OUT``
where the JSON goes."""

from __future__ import annotations

import gzip
import json
import os
import threading
from typing import Any

import pg8000.converters
import pg8000.core

_USER = os.environ.get("REBOUND_COMPAT_USER", "rebound_runtime").encode()
_lock = threading.Lock()
_log: list[list[Any]] = []  # [connection number, statement, params or None]
_numbers: dict[int, int] = {}
_named: dict[tuple[int, bytes], str] = {}


def _conn_number(conn: Any) -> int | None:
    if getattr(conn, "user", None) != _USER:
        return None
    with _lock:
        return _numbers.setdefault(id(conn), len(_numbers))


def _record(conn: Any, statement: str, params: list[str | None] | None) -> None:
    number = _conn_number(conn)
    if number is not None:
        with _lock:
            _log.append([number, statement, params])


def _text(conn: Any, vals: Any) -> list[str | None]:
    return [None if v is None else v for v in pg8000.converters.make_params(conn.py_types, vals)]


_simple = pg8000.core.CoreConnection.execute_simple
_unnamed = pg8000.core.CoreConnection.execute_unnamed
_prepare = pg8000.core.CoreConnection.prepare_statement
_execute_named = pg8000.core.CoreConnection.execute_named
_close = pg8000.core.CoreConnection.close


def execute_simple(self: Any, statement: str) -> Any:
    _record(self, statement, None)
    return _simple(self, statement)


def execute_unnamed(self: Any, statement: str, vals: Any = (), oids: Any = (), stream: Any = None) -> Any:
    _record(self, statement, _text(self, vals))
    return _unnamed(self, statement, vals=vals, oids=oids, stream=stream)


def prepare_statement(self: Any, statement: str, oids: Any = None) -> Any:
    result = _prepare(self, statement, oids)
    with _lock:
        _named[(id(self), result[0])] = statement
    return result


def execute_named(self: Any, statement_name_bin: bytes, params: Any, columns: Any, input_funcs: Any,
                  statement: Any) -> Any:
    text = _named.get((id(self), statement_name_bin), statement)
    _record(self, text, [None if p is None else p for p in params])
    return _execute_named(self, statement_name_bin, params, columns, input_funcs, statement)


def close(self: Any) -> Any:
    with _lock:
        # A new connection may reuse the address: give it a number of its own.
        _numbers.pop(id(self), None)
    return _close(self)


pg8000.core.CoreConnection.execute_simple = execute_simple
pg8000.core.CoreConnection.execute_unnamed = execute_unnamed
pg8000.core.CoreConnection.prepare_statement = prepare_statement
pg8000.core.CoreConnection.execute_named = execute_named
pg8000.core.CoreConnection.close = close


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    out = os.environ.get("REBOUND_COMPAT_OUT")
    if out:
        with gzip.open(out, "wt") as handle:
            json.dump(_log, handle)
