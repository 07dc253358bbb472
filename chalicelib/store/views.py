"""What the creator API shows of cases (reads of ``recovery_cases``, ``recovery_actions``,
``events``): the list, one case, its timeline.

Invariants: no view column holds the link token or a member-specific URL; the list and the
export read the same filters (``_CASE_FILTERS``/``_filter_params`` here, their COPY form in
``store.export``), so an export holds exactly the cases the list shows; pages are keyset pages
on ``(first_failure_at, id)``, newest first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chalicelib.db import Transaction
from chalicelib.store import recovery as recovery_store

# What the creator API shows of a case: no link token, no member-specific URLs.
CASE_VIEW_COLUMNS = (
    "id::text AS id, membership_id, user_id, status, first_failure_at, last_failure_at, failure_count,"
    " amount_minor, currency, decline_code, failure_reason, recovered_at, recovered_amount_minor,"
    " recovered_currency, closed_at, close_reason, cancelled_by, incentive_days, link_clicks,"
    " last_clicked_at, next_action_at, created_at, updated_at,"
    " holdout, experiment_id::text AS experiment_id, variant, decline_class,"
    " contaminated, opened_at, holdout_percent_at_open,"
    # Smart retry: what Rebound did to the charge, and the recovery's credit
    " retried_at, retry_reason, " + recovery_store.RECOVERED_BY_VIEW + " AS recovered_by"
)


# Optional filters as bound parameters (NULL = no filter); the keyset is (first_failure_at, id).
# Statements are prepared once and may run on a generic plan (no parameter values known), so
# the window start and the keyset are written as bounds that always apply (-infinity/infinity
# when absent): an index range scan serves every page, never a scan from the newest case.
_CASE_FILTERS = (
    " WHERE (CAST(:status AS text) IS NULL OR status = :status)"
    " AND (CAST(:decline_class AS text) IS NULL OR decline_class = :decline_class)"
    " AND first_failure_at >= COALESCE(CAST(:since AS timestamptz), '-infinity')"
    " AND (CAST(:since AS timestamptz) IS NULL OR first_failure_at <= :now)"
    " AND (CAST(:q AS text) IS NULL OR membership_id LIKE :q OR user_id LIKE :q)"
    " AND (first_failure_at, id) < (COALESCE(CAST(:after_at AS timestamptz), 'infinity'),"
    "      COALESCE(CAST(:after_id AS uuid), 'ffffffff-ffff-ffff-ffff-ffffffffffff'))"
)


def _filter_params(*, now: datetime, status: str | None, decline_class: str | None,
                   since: datetime | None, q: str | None, after: tuple[datetime, str] | None,
                   limit: int) -> dict[str, Any]:
    """The bound values of _CASE_FILTERS (the list and the export filter alike, so an export holds
    exactly the cases the list shows)."""
    return {"now": now, "status": status, "decline_class": decline_class, "since": since,
            "q": like_prefix(q) if q else None, "after_at": after[0] if after else None,
            "after_id": after[1] if after else None, "limit": limit}


def like_prefix(text: str) -> str:
    """A LIKE pattern matching ``text`` exactly or as a prefix (wildcards in it escaped)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


# Messages that reached Whop (the export's nudges_sent counts the same rows): every automatic
# nudge and reminder and every manual nudge, each channel its own message.
SENT_MESSAGE = "a.kind IN ('nudge', 'reminder', 'manual_nudge') AND a.status = 'sent'"


# A creator's own ledger rows (actor is their user id), whatever came of them.
_CREATOR_ROW = "a.actor NOT IN ('system', 'member')"


def list_cases(tx: Transaction, *, now: datetime, status: str | None = None,
               decline_class: str | None = None, since: datetime | None = None, q: str | None = None,
               after: tuple[datetime, str] | None = None, limit: int = 25) -> list[dict[str, Any]]:
    """Cases newest first (first_failure_at, then id, descending), after the keyset ``after``,
    each with ``nudges_sent`` and ``last_action_at``.

    One statement per page: the lateral aggregate runs in a nested loop under the LIMIT, so it
    reads the ledger rows (recovery_actions_by_case) of the page's cases only."""
    return tx.query(
        "SELECT " + CASE_VIEW_COLUMNS + ", s.nudges_sent, s.last_action_at"  # noqa: S608 - constants
        " FROM recovery_cases CROSS JOIN LATERAL ("
        "  SELECT count(*) FILTER (WHERE " + SENT_MESSAGE + ") AS nudges_sent,"
        "   max(COALESCE(a.completed_at, a.created_at)) AS last_action_at"
        "  FROM recovery_actions a WHERE a.case_id = recovery_cases.id"
        "   AND ((" + SENT_MESSAGE + ") OR " + _CREATOR_ROW + ")) s"
        + _CASE_FILTERS + " ORDER BY first_failure_at DESC, id DESC LIMIT :limit",
        **_filter_params(now=now, status=status, decline_class=decline_class, since=since, q=q,
                         after=after, limit=limit))


def case_view(tx: Transaction, case_id: str, *, lock: bool = False) -> dict[str, Any] | None:
    """One case as the creator API shows it; ``lock`` holds it until the transaction ends."""
    return tx.one("SELECT " + CASE_VIEW_COLUMNS + " FROM recovery_cases WHERE id = CAST(:id AS uuid)"  # noqa: S608
                  + (" FOR UPDATE" if lock else ""), id=case_id)


def case_events(tx: Transaction, membership_id: str, start: datetime, end: datetime,
                limit: int = 500) -> list[dict[str, Any]]:
    """The membership's stored events dated within [start, end], oldest first."""
    return tx.query(
        "SELECT webhook_id, type, occurred_at, payload FROM events WHERE membership_id = :m"
        " AND occurred_at >= :start AND occurred_at <= :end ORDER BY occurred_at, id LIMIT :limit",
        m=membership_id, start=start, end=end, limit=limit)


def case_actions(tx: Transaction, case_id: str, limit: int = 500) -> list[dict[str, Any]]:
    """A case's ledger rows for its timeline, oldest first: the newest ``limit`` rows, plus every
    row a creator made (actor not system/member) however old, so member clicks or system rows
    can never push a creator's own action out of the timeline (issue 8)."""
    columns = ("id::text AS id, kind, step, channel, status, actor, attempts, error_class, error_detail,"
               " created_at, completed_at,"
               # Whop's answer to an attach or a retry (statuses and Whop's own text only)
               " result ->> 'status' AS whop_status, result ->> 'failure_message' AS whop_failure,"
               " result ->> 'whop_reason' AS whop_reason, result ->> 'permission' AS permission")
    return tx.query(
        "SELECT * FROM ("  # noqa: S608 - constant column list
        " (SELECT " + columns + " FROM recovery_actions WHERE case_id = CAST(:id AS uuid)"
        "  ORDER BY created_at DESC, id DESC LIMIT :limit)"
        " UNION"
        " (SELECT " + columns + " FROM recovery_actions WHERE case_id = CAST(:id AS uuid)"
        "  AND actor NOT IN ('system', 'member'))"
        ") AS timeline ORDER BY created_at, id", id=case_id, limit=limit)
