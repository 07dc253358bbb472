"""Smart retry's queries: saved cards (``events`` of type ``setup_intent.succeeded``), the
attach/retry rows of the ledger (``recovery_actions``), and the recovery's credit
(``recovery_cases.recovered_by``, ``retried_at``, ``retry_reason``).

Every function takes an open tenant Transaction (RLS scopes it to one company), except
``permission_gaps_everywhere`` (a service transaction and the SECURITY DEFINER function of
migration 0013: counts only).

Invariants: ``recovered_by_sql`` is ``recovery_policy.credit`` in SQL (the two must agree); an
attach or retry row is owed once per key (a payment is retried once: ``retry_key``); a skipped row
is owed again only if Whop never saw it (``attempts = 0``); ``attempted_at`` is pinned before
the call and never moves (a repeat after a crash is the same request under the same key).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from chalicelib.db import Transaction
from chalicelib.models import WhopEvent
from chalicelib.recovery_policy import CREDIT_SKEW, KIND_ATTACH, RECOVERY_KINDS
from chalicelib.store.ledger import owe_pending

_KINDS = "('" + "', '".join(RECOVERY_KINDS) + "')"


def recovered_by_sql(case_id: str, status: str, recovered_at: str) -> str:
    """``recovery_policy.credit`` as an SQL expression over a case's ledger: NULL unless
    ``status`` is recovered. The arguments are SQL expressions (columns or bound parameters)."""
    skew = int(CREDIT_SKEW.total_seconds())
    return (
        f"CASE WHEN {status} = 'recovered' THEN CASE"  # noqa: S608 - constant fragments only
        f" WHEN EXISTS (SELECT 1 FROM recovery_actions r WHERE r.case_id = {case_id}"
        f"   AND r.kind IN {_KINDS} AND r.status = 'sent'"
        f"   AND CAST(r.result ->> 'attempted_at' AS timestamptz)"
        f"       <= {recovered_at} + make_interval(secs => {skew})) THEN 'rebound_retry'"
        f" WHEN EXISTS (SELECT 1 FROM recovery_actions r WHERE r.case_id = {case_id}"
        f"   AND r.kind = 'link_click' AND r.created_at <= {recovered_at}) THEN 'after_click'"
        " ELSE 'other' END END")


# What the creator API shows: a recovered case without a stored credit (recovered before
# migration 0013) counts as other, like the KPIs and the export.
RECOVERED_BY_VIEW = "CASE WHEN status = 'recovered' THEN COALESCE(recovered_by, 'other') END"


# --- saved cards ------------------------------------------------------------------------------------


def insert_card_event(tx: Transaction, event: WhopEvent, payload: dict[str, Any]) -> bool:
    """Store a ``setup_intent.succeeded`` (no membership); False when this webhook id was stored
    before (a redelivery)."""
    row = tx.one(
        "INSERT INTO events (webhook_id, company_id, type, membership_id, user_id, payment_id,"
        " occurred_at, occurred_at_inferred, received_at, payload)"
        " VALUES (:webhook_id, :company_id, :type, NULL, :user_id, NULL, :occurred_at, :inferred,"
        " :received_at, CAST(:payload AS jsonb)) ON CONFLICT (webhook_id) DO NOTHING RETURNING id",
        webhook_id=event.webhook_id, company_id=event.company_id, type=event.type.value,
        user_id=event.user_id, occurred_at=event.occurred_at, inferred=event.occurred_at_inferred,
        received_at=event.received_at, payload=json.dumps(payload))
    return row is not None


# The member's saved cards in this company, newest first (migration 0013's partial index).
SAVED_CARDS_SQL = (
    "SELECT payload ->> 'payment_method_id' AS payment_method_id, occurred_at FROM events"
    " WHERE type = 'setup_intent.succeeded' AND user_id = :user_id AND occurred_at >= :since"
    " ORDER BY occurred_at DESC, id DESC LIMIT 5")


def saved_cards(tx: Transaction, user_id: str, since: datetime) -> list[tuple[str, datetime]]:
    """``(payment method, saved at)`` of the member's cards saved since ``since``, newest first."""
    rows = tx.query(SAVED_CARDS_SQL, user_id=user_id, since=since)
    return [(r["payment_method_id"], r["occurred_at"]) for r in rows if r["payment_method_id"]]


def open_cases_of_member(tx: Transaction, user_id: str) -> list[dict[str, Any]]:
    return tx.query("SELECT id::text AS id, membership_id, holdout, first_failure_at FROM recovery_cases"
                    " WHERE user_id = :u AND status = 'open' ORDER BY first_failure_at, id", u=user_id)


# --- the ledger ---------------------------------------------------------------------------------------


def owe(tx: Transaction, company_id: str,
        rows: list[tuple[str, str, str, datetime, str, dict[str, Any]]]) -> list[str]:
    """Owe attach/retry rows, ``(case_id, kind, step, due_at, key, result)`` each (they go to Whop's
    API, not a channel); return the case ids of the rows that were new."""
    return owe_pending(tx, company_id, [(c, k, st, None, due, key, res) for c, k, st, due, key, res in rows])


def revive_skipped(tx: Transaction, case_id: str, reasons: tuple[str, ...], *, kind: str,
                   due_at: datetime, key: str | None = None) -> int:
    """Owe again, due at ``due_at``, the case's ``kind`` rows (or the one row of ``key``) that were
    skipped for one of ``reasons`` and never attempted: Whop never saw them, so their once-only
    key is unspent. Returns how many rows came back."""
    return tx.execute(
        "UPDATE recovery_actions SET status = 'pending', due_at = :due, owed_at = :due,"
        " error_class = NULL, error_detail = NULL, completed_at = NULL, claimed_until = NULL,"
        " claim_token = NULL, updated_at = now()"
        " WHERE case_id = CAST(:id AS uuid) AND kind = :kind AND status = 'skipped' AND attempts = 0"
        " AND error_detail = ANY(CAST(:reasons AS text[]))"
        " AND (CAST(:key AS text) IS NULL OR idempotency_key = :key)",
        due=due_at, id=case_id, kind=kind, reasons=list(reasons), key=key)


def row_by_key(tx: Transaction, key: str, *, lock: bool = False) -> dict[str, Any] | None:
    sql = ("SELECT id::text AS id, kind, step, status, attempts, actor, error_detail, result"
           " FROM recovery_actions WHERE idempotency_key = :k")
    return tx.one(sql + (" FOR UPDATE" if lock else ""), k=key)


def card_saved_for_case(tx: Transaction, case_id: str) -> bool:
    """Whether the case is owed (or got) an attach: a card was saved, so its original method is
    no longer the one to retry."""
    return bool(tx.scalar(
        "SELECT count(*) FROM recovery_actions WHERE case_id = CAST(:c AS uuid) AND kind = :k"
        " AND status IN ('pending', 'claimed', 'sent')", c=case_id, k=KIND_ATTACH))


def claimed_state(tx: Transaction, action_id: str, token: str) -> dict[str, Any] | None:
    """A claimed row's result (the method to attach, whether an attempt was already made)."""
    return tx.one("SELECT result FROM recovery_actions WHERE id = CAST(:id AS uuid) AND status = 'claimed'"
                  " AND claim_token = CAST(:t AS uuid)", id=action_id, t=token)


def pin_attempt(tx: Transaction, action_id: str, token: str, now: datetime) -> datetime | None:
    """Mark the row as asked of Whop at ``now`` (the executor's clock, like ``completed_at``),
    before the call: the credit rule and ``retried_at`` read it, and a repeat after a crash
    knows it must resend the same request under the same key. The lease, not this, guards it."""
    # The first attempt's time stays: a repeat (same key) is the same request.
    value = tx.scalar(
        "UPDATE recovery_actions SET result = CASE WHEN result -> 'attempted_at' IS NULL"
        "   THEN result || jsonb_build_object('attempted_at', CAST(:now AS timestamptz)) ELSE result END"
        " WHERE id = CAST(:id AS uuid) AND status = 'claimed' AND claim_token = CAST(:t AS uuid)"
        " RETURNING CAST(result ->> 'attempted_at' AS timestamptz)", id=action_id, t=token, now=now)
    return value if isinstance(value, datetime) else None


def credit_case(tx: Transaction, case_id: str, *, attempted_at: Any, reason: str | None) -> None:
    """After Whop accepted an attach or retry: the case's first ``retried_at``/``retry_reason``,
    and its credit re-read (a success webhook may have recovered it while the call was out)."""
    tx.execute(
        "UPDATE recovery_cases SET"
        " retry_reason = CASE WHEN retried_at IS NULL AND CAST(:at AS timestamptz) IS NOT NULL"
        "   THEN :reason ELSE retry_reason END,"
        " retried_at = COALESCE(retried_at, CAST(:at AS timestamptz)),"
        " recovered_by = " + recovered_by_sql("recovery_cases.id", "status", "recovered_at") + ","
        " updated_at = now() WHERE id = CAST(:id AS uuid)",
        id=case_id, at=attempted_at, reason=reason)


# --- missing permissions ----------------------------------------------------------------------------

_GAPS = (
    "SELECT l.result ->> 'permission' AS permission, l.completed_at FROM ("  # noqa: S608 - constants
    " SELECT DISTINCT ON (kind) kind, error_detail, result, completed_at FROM recovery_actions"
    " WHERE kind IN " + _KINDS + " AND status IN ('sent', 'failed')"
    " ORDER BY kind, completed_at DESC, updated_at DESC) l WHERE l.error_detail = 'permission_missing'"
    " ORDER BY l.completed_at")


def permission_gaps(tx: Transaction) -> list[dict[str, Any]]:
    """The Whop permissions this company's latest attach or retry was refused for (403), with when."""
    return [r for r in tx.query(_GAPS) if r["permission"]]


def permission_gaps_everywhere(tx: Transaction) -> dict[str, int]:
    """Per permission, how many companies lack it (a service transaction; no company ids)."""
    rows = tx.query("SELECT permission, companies FROM smart_retry_permission_gaps()")
    return {str(r["permission"]): int(r["companies"]) for r in rows}
