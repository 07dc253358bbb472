"""``…/cases``: the case list (keyset pages), one case with its timeline, and the CSV export."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from chalice.app import Response

from chalicelib import store
from chalicelib.api import CreatorContext
from chalicelib.api.schemas import (
    CaseDetail,
    CaseFilters,
    CaseList,
    CaseListItem,
    CaseListQuery,
    ExportQuery,
    TimelineItem,
)
from chalicelib.db import Transaction, tenant_transaction
from chalicelib.errors import BadRequest, NotFound

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# CSV export (contract: columns and their order are fixed).
EXPORT_COLUMNS = ("case_id", "membership_id", "user_id", "status", "first_failure_at", "last_failure_at",
                  "recovered_at", "amount_minor", "currency", "recovered_amount_minor", "failure_count",
                  "decline_code", "failure_reason", "nudges_sent", "incentive_days",
                  # measurement (issue 10): appended, never reordered
                  "holdout", "experiment_id", "variant", "decline_class", "clicks")
# Lambda answers at most 6 MB (the body travels JSON-escaped): stop well before and hand a cursor.
EXPORT_MAX_BYTES = 5_500_000
EXPORT_PAGE_ROWS = 1000
EXPORT_NEXT_CURSOR_HEADER = "X-Export-Next-Cursor"
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_EVENT_DETAIL = ("webhook_id", "payment_id", "amount_minor", "currency", "decline_code",
                 "cancel_at_period_end", "deactivation_cause", "occurred_at_inferred")


# --- ids and cursors ----------------------------------------------------------------------------


def parse_case_id(case_id: str) -> str:
    """The canonical lower-case UUID, or 400 for anything that is not one."""
    return parse_uuid(case_id, "case_id")


def parse_uuid(value: str, name: str) -> str:
    """The canonical lower-case UUID, or 400 naming the path parameter."""
    if not _UUID.fullmatch(value):
        raise BadRequest(f"{name.replace('_', ' ')} must be a UUID", fields={name: "must be a UUID"})
    return value.lower()


def encode_cursor(first_failure_at: datetime, case_id: str) -> str:
    raw = f"{first_failure_at.astimezone(UTC).isoformat()}|{case_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The keyset (first_failure_at, case id) a cursor stands for; 400 if it is not one of ours."""
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
        at_text, case_id = raw.split("|")
        at = datetime.fromisoformat(at_text)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest("malformed cursor", fields={"cursor": "malformed cursor"}) from None
    if at.tzinfo is None or not _UUID.fullmatch(case_id):
        raise BadRequest("malformed cursor", fields={"cursor": "malformed cursor"})
    return at, case_id


def _since(now: datetime, window_days: int | None) -> datetime | None:
    return now - timedelta(days=window_days) if window_days is not None else None


def _filters(query: CaseFilters, now: datetime) -> dict[str, Any]:
    """The store's filter arguments for a list or export query: both read the same ones."""
    return {"now": now, "status": query.status, "decline_class": query.decline_class,
            "since": _since(now, query.window_days), "q": query.q}


# --- list and detail ----------------------------------------------------------------------------


def list_cases(ctx: CreatorContext) -> CaseList:
    query = ctx.parse_query(CaseListQuery)
    after = decode_cursor(query.cursor) if query.cursor else None
    with tenant_transaction(ctx.company_id) as tx:
        # One row more than asked tells whether another page exists.
        rows = store.list_cases(tx, **_filters(query, ctx.now), after=after, limit=query.limit + 1)
    items = [CaseListItem.model_validate(r) for r in rows[:query.limit]]
    more = len(rows) > query.limit
    next_cursor = encode_cursor(items[-1].first_failure_at, items[-1].id) if more and items else None
    return CaseList(items=items, next_cursor=next_cursor)


def get_case(ctx: CreatorContext, case_id: str) -> CaseDetail:
    """The case and its timeline; 404 when it does not exist for this company (RLS hides others)."""
    cid = parse_case_id(case_id)
    with tenant_transaction(ctx.company_id) as tx:
        row = store.case_view(tx, cid)
        if row is None:
            raise NotFound("case not found")
        timeline = _timeline(tx, row, ctx.now)
    return CaseDetail.model_validate({**row, "timeline": timeline})


def _timeline(tx: Transaction, case: dict[str, Any], now: datetime) -> list[TimelineItem]:
    end = case["closed_at"] or now
    events = store.case_events(tx, case["membership_id"], case["first_failure_at"], end)
    items = [_event_item(e) for e in events]
    items += [_action_item(a) for a in store.case_actions(tx, case["id"])]
    items.sort(key=lambda item: (item.at, item.source != "event"))
    return items


def _event_item(event: dict[str, Any]) -> TimelineItem:
    payload = event["payload"] if isinstance(event["payload"], dict) else {}
    detail = {name: payload.get(name) for name in _EVENT_DETAIL if payload.get(name) is not None}
    detail["webhook_id"] = event["webhook_id"]
    return TimelineItem(at=event["occurred_at"], source="event", type=event["type"], status=None,
                        channel=None, actor="whop", detail=detail)


def _action_item(action: dict[str, Any]) -> TimelineItem:
    detail: dict[str, str | int | bool | None] = {"step": action["step"], "attempts": action["attempts"]}
    if action["error_detail"]:
        detail["error"] = action["error_detail"]
    return TimelineItem(at=action["completed_at"] or action["created_at"], source="action",
                        type=action["kind"], status=action["status"], channel=action["channel"],
                        actor=action["actor"], detail=detail)


# --- CSV export ---------------------------------------------------------------------------------


def csv_cell(value: Any) -> str:
    """The export's cell rules in Python (Postgres applies the same ones, see migration 0009's
    rebound_csv_cell; tests hold the two to each other). One CSV cell: ISO 8601 UTC for times,
    and text that a spreadsheet could run as a formula
    (starting with = + - @, tab or CR) prefixed with a single quote."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _wire_size(text: str) -> int:
    # The Lambda response carries the body inside JSON: count the escaped size, not the raw one.
    return len(json.dumps(text)) - 2


def _export_body(tx: Transaction, query: ExportQuery, now: datetime,
                 after: tuple[datetime, str] | None) -> tuple[str, str | None]:
    """The CSV body (header first) and the cursor of the rest, if it did not fit.

    Postgres formats the cells and joins each page (store.export_csv_page); a page that fits is
    appended whole, so Python holds the body plus one page and reads one row per page. Only the
    page that does not fit is read line by line, to stop between two rows.
    """
    header = ",".join(EXPORT_COLUMNS) + "\r\n"
    parts, size, rows_out = [header], _wire_size(header), 0
    filters = {**_filters(query, now), "limit": EXPORT_PAGE_ROWS}
    while True:
        page = store.export_csv_page(tx, EXPORT_COLUMNS, after=after, **filters)
        rows = int(page["rows"])
        page_size = _wire_size(page["text"])
        if size + page_size <= EXPORT_MAX_BYTES:
            parts.append(page["text"])
            size += page_size
            rows_out += rows
            if rows:
                after = (store.keyset_time(page["at_us"]), page["case_id"])
        else:
            for row in store.export_csv_lines(tx, EXPORT_COLUMNS, after=after, **filters):
                line_size = _wire_size(row["line"])
                if rows_out and size + line_size > EXPORT_MAX_BYTES:
                    return "".join(parts), encode_cursor(*after) if after else None
                parts.append(row["line"])
                size += line_size
                rows_out += 1
                after = (store.keyset_time(row["at_us"]), row["case_id"])
        if rows < EXPORT_PAGE_ROWS:
            return "".join(parts), None


def export_csv(ctx: CreatorContext) -> Response:
    """The company's cases as CSV, newest first, read in keyset pages of ``EXPORT_PAGE_ROWS``,
    filtered like the list (status, decline class, window, search), so a download holds exactly
    the cases the dashboard lists.

    Stops before the body would pass ``EXPORT_MAX_BYTES`` and returns what fits, with the
    ``X-Export-Next-Cursor`` header: the same request with ``?cursor=`` returns the rest.
    """
    query = ctx.parse_query(ExportQuery)
    after = decode_cursor(query.cursor) if query.cursor else None
    with tenant_transaction(ctx.company_id) as tx:
        body, next_cursor = _export_body(tx, query, ctx.now, after)
    filename = f"rebound-cases-{ctx.company_id}-{ctx.now:%Y%m%d}.csv"
    headers: dict[str, str | list[str]] = {"Content-Type": "text/csv; charset=utf-8",
                                           "Cache-Control": "no-store",
                                           "Content-Disposition": f'attachment; filename="{filename}"'}
    if next_cursor:
        headers[EXPORT_NEXT_CURSOR_HEADER] = next_cursor
    return Response(body=body, status_code=200, headers=headers)
