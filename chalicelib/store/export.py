"""The CSV export (reads of ``recovery_cases`` and ``recovery_actions``), through COPY.

COPY … TO STDOUT (FORMAT csv) formats, quotes and streams the rows natively; the cells only
need the export's own rules applied first (ISO times, formula neutralisation, '' written as
an empty cell, not as COPY's quoted ""). COPY takes no bind parameters: the keyset, the page
size and each filter reach it as transaction-local settings (set_config(…, true), bound like
any parameter) that its constant SQL reads with current_setting. No value is ever formatted
into SQL. Only the filters actually given appear in the WHERE clause: an always-present
"NULL means no filter" test defeats the planner's estimates (it then sorts the whole table).

Invariants: the export holds exactly the cases the list shows (``store.views``' filters, in
their COPY form here); a cell a spreadsheet would run as a formula is neutralised; rows end in
CRLF, as the contract's CSV does.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from chalicelib.db import SupportsWrite, Transaction
from chalicelib.store import recovery as recovery_store
from chalicelib.store import views as view_store

# The export's rows (its contract columns by name); keyset pages of it are read below.
EXPORT_SELECT = (
    "SELECT id::text AS case_id, membership_id, user_id, status, first_failure_at, last_failure_at,"  # noqa: S608
    " recovered_at, amount_minor, COALESCE(currency, recovered_currency) AS currency,"
    " recovered_amount_minor, failure_count, decline_code, failure_reason,"
    " (SELECT count(*) FROM recovery_actions a WHERE a.case_id = recovery_cases.id"
    "   AND " + view_store.SENT_MESSAGE + ") AS nudges_sent,"
    " incentive_days, holdout, experiment_id::text AS experiment_id, variant, decline_class,"
    " link_clicks AS clicks,"
    " opened_at, holdout_percent_at_open, contaminated, incentive_cost_minor,"
    " retried_at, " + recovery_store.RECOVERED_BY_VIEW + " AS recovered_by"
    " FROM recovery_cases"
)


# Export columns whose values can never need quoting or neutralising (uuids, enums, lower-case
# currency codes, counts and amounts that are never negative, a boolean): written as plain text.
_CSV_PLAIN = frozenset({"case_id", "status", "currency", "amount_minor", "recovered_amount_minor",
                        "failure_count", "nudges_sent", "incentive_days", "holdout", "experiment_id",
                        "holdout_percent_at_open", "contaminated", "incentive_cost_minor",
                        "recovered_by"})


EXPORT_SETTING_PREFIX = "rebound.export_"

# One entry per export filter: its SQL over recovery_cases, reading its value (text) from
# ``rebound.export_<name>``. A filter the route passes must be listed here (and in
# _CASE_FILTERS for the parameterised queries): an unknown one is refused, never ignored.
EXPORT_COPY_FILTERS: dict[str, str] = {
    "status": "status = current_setting('rebound.export_status')",
    "decline_class": "decline_class = current_setting('rebound.export_decline_class')",
    "since": "first_failure_at >= CAST(current_setting('rebound.export_since') AS timestamptz)"
             " AND first_failure_at <= CAST(current_setting('rebound.export_now') AS timestamptz)",
    # q is the search text, as the list takes it: a membership or user id or a prefix of one.
    "q": "(membership_id LIKE current_setting('rebound.export_q')"
         " OR user_id LIKE current_setting('rebound.export_q'))",
}
_NO_CURSOR = ("infinity", "ffffffff-ffff-ffff-ffff-ffffffffffff")
# ascii() of the first character: = + - @ tab CR make a spreadsheet run the cell as a formula.
_FORMULA_CODES = "(9, 13, 43, 45, 61, 64)"
# A separator (of any spreadsheet's choosing), then maybe quotes, then a formula character: split
# on that separator, the next cell would start a formula. A quote goes after the separator
# (migration 0012's rebound_csv_cell says why a leading quote alone cannot help).
_SEPARATED_FORMULA = r"""'[,;|\t]"*[-=+@\t\r]'"""
_SEPARATED_FORMULA_SPLIT = r"""'([,;|\t])(?="*[-=+@\t\r])'"""
# Text columns whose values Rebound itself chose or validated on input (a decline class, an
# experiment variant name: letters, digits, space, _ . -): they never hold a separator.
_CSV_NO_SEPARATORS = frozenset({"decline_class", "variant"})


# Plain columns whose type COPY writes exactly as the contract does, and never empty (so never
# COPY's quoted ""): no expression at all. A boolean is not one (COPY writes t/f).
_COPY_NATIVE = _CSV_PLAIN - {"holdout", "contaminated"}


def _copy_expression(column: str) -> str:
    # The same rules as _csv_expression, minus the quoting (COPY's CSV writer quotes exactly
    # where Python's csv module and rebound_csv_cell do: a comma, a quote, CR or LF). NULL is
    # COPY's bare empty cell; an empty string must become NULL too (COPY would write "").
    if column.endswith("_at"):  # rebound_csv_time's format; NULL stays NULL
        return f"to_char(x.{column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    if column in _COPY_NATIVE:
        return f"x.{column}"
    value = f"x.{column}::text"
    if column in _CSV_PLAIN:
        return f"NULLIF({value}, '')"
    split = value
    if column not in _CSV_NO_SEPARATORS:
        # strpos first: most cells hold no separator, and four strpos cost less than one regex.
        split = (f"CASE WHEN (strpos({value}, ',') > 0 OR strpos({value}, ';') > 0"
                 f" OR strpos({value}, '|') > 0 OR strpos({value}, E'\\t') > 0)"
                 f" AND {value} ~ {_SEPARATED_FORMULA} THEN"
                 rf" regexp_replace({value}, {_SEPARATED_FORMULA_SPLIT}, '\1''', 'g') ELSE {value} END")
    return f"CASE WHEN ascii({value}) IN {_FORMULA_CODES} THEN '''' || {split} ELSE NULLIF({split}, '') END"


def export_copy_sql(columns: tuple[str, ...], filters: tuple[str, ...]) -> str:
    """The COPY statement of one export page with the given filters (constant text only)."""
    where = [EXPORT_COPY_FILTERS[name] for name in filters]
    where.append("(first_failure_at, id) < (CAST(current_setting('rebound.export_after_at') AS timestamptz),"
                 " CAST(current_setting('rebound.export_after_id') AS uuid))")
    return (
        "COPY (SELECT " + ", ".join(_copy_expression(c) for c in columns)  # noqa: S608 - constants
        + " FROM (" + EXPORT_SELECT + " WHERE " + " AND ".join(where)
        + " ORDER BY first_failure_at DESC, id DESC"
        " LIMIT CAST(current_setting('rebound.export_limit') AS integer)) x) TO STDOUT (FORMAT csv)")


def _setting_text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()  # exact to the microsecond, read back as timestamptz
    return str(value)


def crlf_rows(data: bytes) -> tuple[bytes, int, int]:
    """COPY's CSV with CRLF row ends (the contract's, as Python's csv writer used): the data, its
    number of rows and where its last row starts. A row ends at an LF outside quotes; COPY
    doubles every quote inside a quoted cell, so the text between two quote characters is
    alternately outside and inside a quoted cell (a doubled quote leaves an empty "outside"
    stretch, which holds no LF)."""
    if not data:
        return data, 0, 0
    parts = data.split(b'"')
    parts[0::2] = [p.replace(b"\n", b"\r\n") for p in parts[0::2]]
    out = b'"'.join(parts)
    rows = len(out) - len(data)  # one CR added per row end
    end = len(out)
    last = len(parts) - 1  # COPY's output holds an even number of quotes: the last part is outside
    for i in range(last, -1, -1):
        part = parts[i]
        start = end - len(part)
        if i % 2 == 0:
            at = part.rfind(b"\n", 0, len(part) - 1 if i == last else len(part))
            if at >= 0:
                return out, rows, start + at + 1
        end = start - 1
    return out, rows, 0


def copy_export_rows(tx: Transaction, columns: tuple[str, ...], sink: SupportsWrite, *, now: datetime,
                     after: tuple[datetime, str] | None = None, limit: int = 1000,
                     **filters: Any) -> int:
    """Stream up to ``limit`` export rows after the keyset ``after`` into ``sink``, each as COPY's
    CSV with an LF row end (see crlf_rows); return how many there were. ``filters`` are the
    export's filters by name (None: not filtered), each listed in EXPORT_COPY_FILTERS."""
    given = {name: value for name, value in filters.items() if value is not None}
    unknown = set(given) - set(EXPORT_COPY_FILTERS)
    if unknown:
        raise ValueError(f"export filters without a COPY form: {', '.join(sorted(unknown))}")
    if "q" in given:
        given["q"] = view_store.like_prefix(given["q"])  # as _filter_params does for the list
    settings = {"now": now, **given, "limit": limit,
                "after_at": after[0] if after else _NO_CURSOR[0],
                "after_id": after[1] if after else _NO_CURSOR[1]}
    # One round trip for every setting: parallel arrays (a fixed statement text), set inside a
    # function: set_config in a statement's own text pins an RDS Proxy session (migration 0014).
    tx.query("SELECT rebound_set_local(CAST(:names AS text[]), CAST(:values AS text[]))",
             names=[EXPORT_SETTING_PREFIX + n for n in settings],
             values=[_setting_text(v) for v in settings.values()])
    return tx.copy_out(export_copy_sql(columns, tuple(sorted(given))), sink)


def export_row_keyset(columns: tuple[str, ...], line: str) -> tuple[datetime, str]:
    """The keyset (first_failure_at, case_id) of one finished export row, read back from it."""
    cells = next(csv.reader(io.StringIO(line, newline="")))
    return datetime.fromisoformat(cells[columns.index("first_failure_at")]), cells[columns.index("case_id")]
