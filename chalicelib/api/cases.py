"""``…/cases``: the case list (keyset pages), one case with its timeline, and the CSV export."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from chalice.app import Response

from chalicelib.api import CreatorContext
from chalicelib.api.schemas.cases import (
    CaseDetail,
    CaseFilters,
    CaseList,
    CaseListItem,
    CaseListQuery,
    ExportQuery,
    TimelineItem,
)
from chalicelib.db import Transaction
from chalicelib.errors import BadRequest, NotFound
from chalicelib.store import export as export_store
from chalicelib.store import views as view_store
from chalicelib.tenancy import tenant_transaction

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# CSV export (contract: columns and their order are fixed).
EXPORT_COLUMNS = ("case_id", "membership_id", "user_id", "status", "first_failure_at", "last_failure_at",
                  "recovered_at", "amount_minor", "currency", "recovered_amount_minor", "failure_count",
                  "decline_code", "failure_reason", "nudges_sent", "incentive_days",
                  # measurement (issue 10): appended, never reordered
                  "holdout", "experiment_id", "variant", "decline_class", "clicks",
                  # measurement eligibility: appended, never reordered
                  "opened_at", "holdout_percent_at_open", "contaminated", "incentive_cost_minor",
                  # recovery source
                  "retried_at", "recovered_by")
# Lambda answers at most 6 MB (the body travels JSON-escaped): stop well before and hand a cursor.
EXPORT_MAX_BYTES = 5_500_000
EXPORT_PAGE_ROWS = 1000
# Rows are processed (line ends, size) this many bytes at a time: the memory beyond the body.
_EXPORT_CHUNK_BYTES = 128 * 1024
EXPORT_NEXT_CURSOR_HEADER = "X-Export-Next-Cursor"
_WHOP_ANSWER = ("whop_status", "whop_failure", "whop_reason", "permission")
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
        rows = view_store.list_cases(tx, **_filters(query, ctx.now), after=after, limit=query.limit + 1)
    items = [CaseListItem.model_validate(r) for r in rows[:query.limit]]
    more = len(rows) > query.limit
    next_cursor = encode_cursor(items[-1].first_failure_at, items[-1].id) if more and items else None
    return CaseList(items=items, next_cursor=next_cursor)


def get_case(ctx: CreatorContext, case_id: str) -> CaseDetail:
    """The case and its timeline; 404 when it does not exist for this company (RLS hides others)."""
    cid = parse_case_id(case_id)
    with tenant_transaction(ctx.company_id) as tx:
        row = view_store.case_view(tx, cid)
        if row is None:
            raise NotFound("case not found")
        timeline = _timeline(tx, row, ctx.now)
    return CaseDetail.model_validate({**row, "timeline": timeline})


def _timeline(tx: Transaction, case: dict[str, Any], now: datetime) -> list[TimelineItem]:
    end = case["closed_at"] or now
    events = view_store.case_events(tx, case["membership_id"], case["first_failure_at"], end)
    items = [_event_item(e) for e in events]
    items += [_action_item(a) for a in view_store.case_actions(tx, case["id"])]
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
    for name in _WHOP_ANSWER:  # what Whop said to an attach or a retry
        if action.get(name):
            detail[name] = action[name]
    return TimelineItem(at=action["completed_at"] or action["created_at"], source="action",
                        type=action["kind"], status=action["status"], channel=action["channel"],
                        actor=action["actor"], detail=detail)


# --- CSV export ---------------------------------------------------------------------------------


def _wire_size(text: str) -> int:
    # The Lambda response carries the body inside JSON: count the escaped size, not the raw one.
    return len(json.dumps(text)) - 2


class _ExportBody:
    """The CSV body, filled by COPY one row at a time (pg8000 calls ``write`` per row) and
    processed a chunk of rows at a time: Python holds the body plus one chunk, does nothing per
    row but keep it, and stops taking rows once the next would pass ``EXPORT_MAX_BYTES``."""

    def __init__(self, header: str) -> None:
        self.parts = [header]
        self.size = _wire_size(header)
        self.rows = 0
        self.full = False
        self.last_line: str | None = None
        self._chunk: list[bytes] = []
        self._chunk_bytes = 0

    def write(self, data: bytes) -> None:
        if self.full:
            return  # rows past the budget still arrive (COPY cannot stop early): drop them
        self._chunk.append(data)
        self._chunk_bytes += len(data)
        if self._chunk_bytes >= _EXPORT_CHUNK_BYTES:
            self.flush()

    def flush(self) -> None:
        chunk, self._chunk, self._chunk_bytes = self._chunk, [], 0
        if not chunk:
            return
        data, rows, last = export_store.crlf_rows(b"".join(chunk))
        text = data.decode()
        size = _wire_size(text)
        if self.size + size <= EXPORT_MAX_BYTES:
            self.parts.append(text)
            self.size += size
            self.rows += rows
            self.last_line = data[last:].decode()
            return
        for row in chunk:  # the chunk that does not fit: stop between two of its rows
            line = export_store.crlf_rows(row)[0].decode()
            line_size = _wire_size(line)
            if self.rows and self.size + line_size > EXPORT_MAX_BYTES:
                self.full = True
                return
            self.parts.append(line)
            self.size += line_size
            self.rows += 1
            self.last_line = line

    def keyset(self) -> tuple[datetime, str] | None:
        return export_store.export_row_keyset(EXPORT_COLUMNS, self.last_line) if self.last_line else None


def _export_body(tx: Transaction, query: ExportQuery, now: datetime,
                 after: tuple[datetime, str] | None) -> tuple[str, str | None]:
    """The CSV body (header first) and the cursor of the rest, if it did not fit.

    Postgres formats the cells and COPY streams the rows (export_store.copy_export_rows) into an
    _ExportBody. The first COPY asks for a page; the next ones for what should fill the rest at
    the rows' average size so far (a little more), so a whole export takes a few COPYs, each
    planned once, and rows past the budget are few.
    """
    body = _ExportBody(",".join(EXPORT_COLUMNS) + "\r\n")
    filters = _filters(query, now)  # the list's filters: an export holds what the list shows
    limit = EXPORT_PAGE_ROWS
    while True:
        copied = export_store.copy_export_rows(tx, EXPORT_COLUMNS, body, after=after, limit=limit, **filters)
        body.flush()
        after = body.keyset() or after
        if body.full:
            return "".join(body.parts), encode_cursor(*after) if after else None
        if copied < limit:
            return "".join(body.parts), None
        per_row = (body.size - _wire_size(body.parts[0])) / max(body.rows, 1)
        limit = max(EXPORT_PAGE_ROWS, int((EXPORT_MAX_BYTES - body.size) / max(per_row, 1) * 1.05) + 1)


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
