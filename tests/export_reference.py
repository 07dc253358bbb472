"""The export's earlier formatters, kept as references the COPY export is held to.

Production exports through ``store.export.copy_export_rows`` only. These are what it replaced, and
the tests compare the two byte for byte: ``csv_cell`` applies the cell rules in Python,
``export_csv_lines``/``export_csv_page`` in Postgres (``rebound_csv_cell``, migrations 0009/0012, and
``rebound_csv_time``), and ``export_cases`` reads the raw rows. They share the store's filters.
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.db import Transaction
from chalicelib.store import export as export_store
from chalicelib.store.export import _CSV_PLAIN, EXPORT_SELECT
from chalicelib.store.views import _CASE_FILTERS, _filter_params

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A separator, maybe quotes, then a formula character: a quote goes after the separator (issue 20).
SEPARATED_FORMULA = re.compile('([,;|\t])(?="*[-=+@\t\r])')


def export_cases(tx: Transaction, *, now: datetime, status: str | None = None,
                 decline_class: str | None = None, since: datetime | None = None, q: str | None = None,
                 after: tuple[datetime, str] | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """One keyset page of the CSV export, with each case's count of sent messages."""
    return tx.query(
        EXPORT_SELECT + _CASE_FILTERS  # constant fragments only
        + " ORDER BY first_failure_at DESC, id DESC LIMIT :limit",
        **_filter_params(now=now, status=status, decline_class=decline_class, since=since, q=q,
                         after=after, limit=limit))


def csv_expression(column: str) -> str:
    # Every exported ``…_at`` column is a timestamptz; any other column not known to be plain
    # (a new one included) goes through the full cell rules.
    if column.endswith("_at"):
        return f"rebound_csv_time(x.{column})"
    if column in _CSV_PLAIN:
        return f"COALESCE(x.{column}::text, '')"
    return f"rebound_csv_cell(x.{column}::text)"


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def keyset_time(at_us: int) -> datetime:
    """The exact first_failure_at of an export row from its ``at_us``."""
    return EPOCH + timedelta(microseconds=at_us)


def export_lines_sql(columns: tuple[str, ...]) -> str:
    line = " || ',' || ".join(csv_expression(c) for c in columns)  # constant column names
    return (
        "SELECT " + line + " || E'\\r\\n' AS line,"
        " (extract(epoch FROM x.first_failure_at) * 1000000)::bigint AS at_us,"
        " x.case_id FROM (" + EXPORT_SELECT + _CASE_FILTERS
        + " ORDER BY first_failure_at DESC, id DESC LIMIT :limit) x")


def export_csv_lines(tx: Transaction, columns: tuple[str, ...], *, now: datetime,
                     status: str | None = None, decline_class: str | None = None,
                     since: datetime | None = None, q: str | None = None,
                     after: tuple[datetime, str] | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """One keyset page of the export as finished CSV lines (``line``, with CRLF), formatted by
    Postgres (rebound_csv_cell/rebound_csv_time), and each row's keyset (``at_us``, microseconds
    since the epoch, and ``case_id``): Python parses no cell and no timestamp."""
    return tx.query(export_lines_sql(columns),
                    **_filter_params(now=now, status=status, decline_class=decline_class, since=since,
                                     q=q, after=after, limit=limit))


def export_csv_page(tx: Transaction, columns: tuple[str, ...], *, now: datetime,
                    status: str | None = None, decline_class: str | None = None,
                    since: datetime | None = None, q: str | None = None,
                    after: tuple[datetime, str] | None = None, limit: int = 1000) -> dict[str, Any]:
    """The same page as export_csv_lines, joined by Postgres into one ``text`` (one row to read,
    not ``limit``), with its row count ``rows`` and its last row's keyset (``at_us``, ``case_id``)."""
    row = tx.one(
        "SELECT COALESCE(string_agg(y.line, '' ORDER BY y.n), '') AS text, count(*) AS rows,"
        " (array_agg(y.at_us ORDER BY y.n DESC))[1] AS at_us,"
        " (array_agg(y.case_id ORDER BY y.n DESC))[1] AS case_id"
        " FROM (SELECT row_number() OVER () AS n, z.* FROM (" + export_lines_sql(columns) + ") z) y",
        **_filter_params(now=now, status=status, decline_class=decline_class, since=since, q=q,
                         after=after, limit=limit))
    assert row is not None
    return row


def csv_cell(value: Any) -> str:
    """The export's cell rules in Python (Postgres applies the same ones, see migration 0009's
    rebound_csv_cell). One CSV cell: ISO 8601 UTC for times,
    and text that a spreadsheet could run as a formula
    (starting with = + - @, tab or CR) prefixed with a single quote, and a quote between any
    separator (, ; | tab) and a formula character after it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    text = str(value)
    split = SEPARATED_FORMULA.sub(r"\1'", text)
    return "'" + split if text.startswith(FORMULA_STARTS) else split


def export_csv_copy(tx: Transaction, columns: tuple[str, ...], *, now: datetime,
                    after: tuple[datetime, str] | None = None, limit: int = 1000,
                    **filters: Any) -> dict[str, Any]:
    """The production COPY path (export_store.copy_export_rows) as one page, for comparing with the
    references: finished CSV (``text``, CRLF row ends), the same bytes as export_csv_page. Also
    ``rows`` and the keyset of its last row, ``after`` (None for an empty page). ``columns``
    must hold case_id and first_failure_at."""
    stream = io.BytesIO()
    export_store.copy_export_rows(tx, columns, stream, now=now, after=after, limit=limit, **filters)
    data, rows, last = export_store.crlf_rows(stream.getvalue())
    keyset = export_store.export_row_keyset(columns, data[last:].decode()) if rows else None
    return {"text": data.decode(), "rows": rows, "after": keyset}
