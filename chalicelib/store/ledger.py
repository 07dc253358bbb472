"""Owing effects and recording a creator's actions (table ``recovery_actions``, the ledger).

Invariants: every effect is a ledger row before it is an HTTP call; a row's ``idempotency_key``
is unique (``ON CONFLICT (idempotency_key) DO NOTHING``: owing a known key again changes
nothing, so a redelivered event or a repeated tick owes nothing twice). The executor's own reads
and writes of these rows (claims, leases, outcomes) are ``store.claims``.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from chalicelib.db import Transaction


def add_action(tx: Transaction, *, case_id: str, company_id: str, kind: str, step: str,
               idempotency_key: str, channel: str | None = None, status: str = "pending",
               due_at: datetime | None = None, actor: str = "system",
               result: dict[str, Any] | None = None) -> bool:
    """Record an owed effect (or a done action); False if its key exists (it is already owed)."""
    row = tx.one(
        "INSERT INTO recovery_actions (case_id, company_id, kind, step, channel, status,"
        " idempotency_key, due_at, owed_at, actor, result, completed_at)"
        " VALUES (CAST(:case_id AS uuid), :company_id, :kind, :step, :channel, :status, :key,"
        " COALESCE(:due_at, now()), COALESCE(:due_at, now()), :actor, CAST(:result AS jsonb),"
        " CASE WHEN :status IN ('done', 'skipped') THEN now() END)"
        " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        case_id=case_id, company_id=company_id, kind=kind, step=step, channel=channel,
        status=status, key=idempotency_key, due_at=due_at, actor=actor,
        result=json.dumps(result or {}))
    return row is not None


def add_pending_actions(tx: Transaction, company_id: str,
                        rows: list[tuple[str, str, str, str | None, datetime, str]]) -> int:
    """Owe many effects at once, ``(case_id, kind, step, channel, due_at, key)`` each, as pending
    ledger rows in one statement; return how many were new (a known key is already owed)."""
    return len(owe_pending(tx, company_id, [(*r, {}) for r in rows]))


def owe_pending(tx: Transaction, company_id: str,
                rows: list[tuple[str, str, str, str | None, datetime, str, dict[str, Any]]]) -> list[str]:
    """Owe rows ``(case_id, kind, step, channel, due_at, key, result)`` in one statement; return
    the case ids of the rows that were new (a known key is already owed, and stays as it was)."""
    if not rows:
        return []
    found = tx.query(
        "INSERT INTO recovery_actions (case_id, company_id, kind, step, channel, status, idempotency_key,"
        " due_at, owed_at, result) SELECT e.case_id, :company_id, e.kind, e.step, e.channel, 'pending',"
        " e.key, e.due_at, e.due_at, e.result"
        " FROM unnest(CAST(:case_ids AS uuid[]), CAST(:kinds AS text[]), CAST(:steps AS text[]),"
        "   CAST(:channels AS text[]), CAST(:dues AS timestamptz[]), CAST(:keys AS text[]),"
        "   CAST(:results AS jsonb[])) AS e(case_id, kind, step, channel, due_at, key, result)"
        " ON CONFLICT (idempotency_key) DO NOTHING RETURNING case_id::text AS case_id",
        company_id=company_id, case_ids=[r[0] for r in rows], kinds=[r[1] for r in rows],
        steps=[r[2] for r in rows], channels=[r[3] for r in rows], dues=[r[4] for r in rows],
        keys=[r[5] for r in rows], results=[json.dumps(r[6]) for r in rows])
    return [r["case_id"] for r in found]


def actions_by_keys(tx: Transaction, keys: list[str]) -> list[dict[str, Any]]:
    return tx.query(
        "SELECT id::text AS id, kind, step, channel, status, error_detail FROM recovery_actions"
        " WHERE idempotency_key = ANY(CAST(:keys AS text[])) ORDER BY channel", keys=keys)


def manual_nudge_wait_s(tx: Transaction, case_id: str, cooldown: timedelta) -> int:
    """Seconds until the case's manual-nudge cooldown ends (0: a nudge may go now). DB time."""
    wait = tx.scalar(
        "SELECT ceil(extract(epoch FROM max(created_at) + :cooldown - now())) FROM recovery_actions"
        " WHERE case_id = CAST(:id AS uuid) AND kind = 'manual_nudge'", id=case_id, cooldown=cooldown)
    return max(0, int(wait)) if wait is not None else 0
