"""Small named queries over the tenant tables. Every function takes an open tenant Transaction:
RLS already scopes it to one company, and ``company_id`` parameters only fill the column on insert.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from chalicelib.db import Transaction
from chalicelib.models import Case, CreatorSettings, QuietHours, WhopEvent

# --- events --------------------------------------------------------------------------------------


def lock_membership(tx: Transaction, company_id: str, membership_id: str) -> None:
    """Serialise work on one membership until the transaction ends (two consumers, one fold)."""
    tx.query("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))",
             key=f"{company_id}/{membership_id}")


def insert_event(tx: Transaction, event: WhopEvent, payload: dict[str, Any]) -> bool:
    """Store one webhook; False when this webhook id was stored before (a redelivery)."""
    row = tx.one(
        "INSERT INTO events (webhook_id, company_id, type, membership_id, user_id, payment_id,"
        " occurred_at, occurred_at_inferred, received_at, payload)"
        " VALUES (:webhook_id, :company_id, :type, :membership_id, :user_id, :payment_id,"
        " :occurred_at, :inferred, :received_at, CAST(:payload AS jsonb))"
        " ON CONFLICT (webhook_id) DO NOTHING RETURNING id",
        webhook_id=event.webhook_id, company_id=event.company_id, type=event.type.value,
        membership_id=event.membership_id, user_id=event.user_id, payment_id=event.payment_id,
        occurred_at=event.occurred_at, inferred=event.occurred_at_inferred,
        received_at=event.received_at, payload=json.dumps(payload))
    return row is not None


def membership_event_payloads(tx: Transaction, membership_id: str) -> list[dict[str, Any]]:
    rows = tx.query("SELECT payload FROM events WHERE membership_id = :m ORDER BY occurred_at, id",
                    m=membership_id)
    return [r["payload"] for r in rows]


# --- cases ---------------------------------------------------------------------------------------

_CASE_COLUMNS = (
    "user_id", "status", "first_failure_at", "last_failure_at", "failure_count", "payment_id",
    "amount_minor", "currency", "decline_code", "failure_reason", "recovery_url", "recovered_at",
    "recovered_amount_minor", "recovered_currency", "closed_at", "close_reason",
)


def membership_cases(tx: Transaction, membership_id: str) -> dict[int, dict[str, Any]]:
    rows = tx.query("SELECT * FROM recovery_cases WHERE membership_id = :m ORDER BY seq",
                    m=membership_id)
    return {int(r["seq"]): r for r in rows}


def insert_case(tx: Transaction, case: Case, next_action_at: datetime | None,
                link_token: str) -> dict[str, Any]:
    values = {c: getattr(case, c) for c in _CASE_COLUMNS}
    values["status"] = case.status.value
    # Column names come from the _CASE_COLUMNS constant; every value is a bound parameter.
    row = tx.one(
        "INSERT INTO recovery_cases (company_id, membership_id, seq, next_action_at, link_token,"  # noqa: S608
        " manage_url, " + ", ".join(_CASE_COLUMNS) + ") VALUES (:company_id, :membership_id, :seq,"
        " :next_action_at, :link_token, :manage_url, " + ", ".join(f":{c}" for c in _CASE_COLUMNS)
        + ") RETURNING *",
        company_id=case.company_id, membership_id=case.membership_id, seq=case.seq,
        next_action_at=next_action_at, link_token=link_token, manage_url=case.manage_url, **values)
    assert row is not None
    return row


def update_case(tx: Transaction, case_id: str, case: Case, next_action_at: datetime | None) -> None:
    values = {c: getattr(case, c) for c in _CASE_COLUMNS}
    values["status"] = case.status.value
    assignments = ", ".join(f"{c} = :{c}" for c in _CASE_COLUMNS)  # constant names, bound values
    tx.execute(
        "UPDATE recovery_cases SET " + assignments  # noqa: S608
        + ", manage_url = COALESCE(:manage_url, manage_url), next_action_at = :next_action_at,"
        " updated_at = now() WHERE id = CAST(:id AS uuid)",
        id=case_id, next_action_at=next_action_at, manage_url=case.manage_url, **values)


def case_from_row(row: dict[str, Any]) -> Case:
    fields = {name: row[name] for name in Case.model_fields if name in row}
    return Case.model_validate(fields)


# --- ledger --------------------------------------------------------------------------------------


def add_action(tx: Transaction, *, case_id: str, company_id: str, kind: str, step: str,
               idempotency_key: str, channel: str | None = None, status: str = "pending",
               due_at: datetime | None = None, actor: str = "system",
               result: dict[str, Any] | None = None) -> bool:
    """Record an owed effect (or a done action); False if its key exists (it is already owed)."""
    row = tx.one(
        "INSERT INTO recovery_actions (case_id, company_id, kind, step, channel, status,"
        " idempotency_key, due_at, actor, result, completed_at)"
        " VALUES (CAST(:case_id AS uuid), :company_id, :kind, :step, :channel, :status, :key,"
        " COALESCE(:due_at, now()), :actor, CAST(:result AS jsonb),"
        " CASE WHEN :status IN ('done', 'skipped') THEN now() END)"
        " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        case_id=case_id, company_id=company_id, kind=kind, step=step, channel=channel,
        status=status, key=idempotency_key, due_at=due_at, actor=actor,
        result=json.dumps(result or {}))
    return row is not None


# --- settings ------------------------------------------------------------------------------------


def get_settings(tx: Transaction) -> CreatorSettings:
    row = tx.one("SELECT * FROM creator_settings")
    if row is None:
        return CreatorSettings()
    quiet = None
    if row["quiet_hours_start"] is not None:
        quiet = QuietHours(start=row["quiet_hours_start"].strftime("%H:%M"),
                           end=row["quiet_hours_end"].strftime("%H:%M"))
    return CreatorSettings(
        enable_push=row["enable_push"], enable_dm=row["enable_dm"],
        incentive_days=row["incentive_days"],
        reminder_offsets_days=tuple(row["reminder_offsets_days"]), timezone=row["timezone"],
        quiet_hours=quiet, push_experience_id=row["push_experience_id"],
        updated_at=row["updated_at"])
