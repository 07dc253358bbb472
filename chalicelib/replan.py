"""Re-planning an open case from its events and its ledger.

A case's plan is its owed ledger rows plus two columns, ``last_reminder_offset`` (the reminder
progress) and ``next_action_at`` (when the tick next looks at it). Both used to be written once
and then only advanced, so a case that was closed and opened again by a late event kept a plan
made for a closed case: its T+0 skipped as ``window_passed``, its offsets counted as done, and it
was never messaged. Whenever a case is (re)opened, and for every open case when a creator
changes the settings that shape the plan, the plan is recomputed from what actually happened:

- the T+0 (and the incentive) on each enabled channel is owed again when it never went out:
  missing, or skipped only because the case was not open then (``window_passed``,
  ``case_closed``). A skipped row is revived under its own idempotency key (and pinned copy, if
  it was ever attempted), so Whop still applies it at most once;
- reminder offsets count only reminders that were sent or are owed, plus the offsets the T+0
  covered: those already passed when it went out (or goes out now).

A settings change re-plans reminders only; it owes no T+0 of its own (a creator switching a
channel on must not message every open case at once: the next due reminder does, collapsed).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chalicelib import recovery
from chalicelib.db import Transaction
from chalicelib.models import Case, CreatorSettings
from chalicelib.reminders import initial_effects, next_action_at, planned_offset
from chalicelib.store import cases as case_store
from chalicelib.store import ledger as ledger_store

# Why a row was skipped when the case was merely not open: owed again if the case opens again.
NOT_OPEN_REASONS = ("window_passed", "case_closed")


def _counts(status: str, detail: str | None, not_done: tuple[str, ...] = NOT_OPEN_REASONS) -> bool:
    """Whether a ledger row is something that happened (or will), for planning purposes: not a
    row skipped for one of the ``not_done`` reasons, nor one whose case was merged into another."""
    merged = (detail or "").startswith("merged_into:")
    return not (status == "skipped" and (detail in not_done or merged))


def _not_done(held_out: bool) -> tuple[str, ...]:
    """Skip reasons that mean nothing reached the member: a held-out skip counts as done only for
    a held-out case (one that came with a held-out row merged into this one never messaged)."""
    return NOT_OPEN_REASONS if held_out else (*NOT_OPEN_REASONS, "holdout")


def _reminded(rows: list[dict[str, Any]], not_done: tuple[str, ...]) -> set[int]:
    return {int(r["step"][1:]) for r in rows if r["kind"] == "reminder" and r["step"][1:].isdigit()
            and _counts(r["status"], r["error_detail"], not_done)}


def reopened(tx: Transaction, case_id: str, case: Case, settings: CreatorSettings, now: datetime) -> int:
    """Re-plan a case a re-fold just opened again; return how many rows it is owed anew."""
    rows = tx.query(
        "SELECT idempotency_key AS key, kind, step, channel, status, error_detail, completed_at"
        " FROM recovery_actions WHERE case_id = CAST(:id AS uuid)"
        " AND kind IN ('nudge', 'reminder', 'incentive')", id=case_id)
    by_key = {r["key"]: r for r in rows}
    # A T+0 (or incentive) counts on its channel whichever row of the episode carries it: a row
    # merged into this one brought its ledger along (a member messaged about the episode is not
    # sent a second first message).
    not_done = _not_done(bool(tx.scalar("SELECT holdout FROM recovery_cases WHERE id = CAST(:id AS uuid)",
                                        id=case_id)))
    done = {(r["step"], r["channel"]) for r in rows if _counts(r["status"], r["error_detail"], not_done)}
    planned = [e for e in initial_effects(case, settings, now) if (e.step, e.channel) not in done]
    new = [e for e in planned if e.idempotency_key(case_id) not in by_key]
    revive = [key for e in planned if (key := e.idempotency_key(case_id)) in by_key]
    owed = ledger_store.add_pending_actions(
        tx, case.company_id, [(case_id, e.kind, e.step, e.channel, e.due_at, e.idempotency_key(case_id))
                              for e in new])
    owed += _revive(tx, revive, now)
    owed += recovery.reopened(tx, case_id, case, settings, now, NOT_OPEN_REASONS)  # smart retry's rows
    t0_owed = any(e.step == "t0" for e in new) or any(by_key[k]["step"] == "t0" for k in revive) or any(
        r["step"] == "t0" and r["status"] in ("pending", "claimed") for r in rows)
    t0_sent = [r["completed_at"] for r in rows if r["step"] == "t0" and r["status"] == "sent"]
    t0_at = now if t0_owed else min(t0_sent, default=None)
    last = planned_offset(case, settings, _reminded(rows, not_done), t0_at)
    case_store.advance_cases(tx, [(case_id, last, next_action_at(case, settings, last))])
    return owed


def _revive(tx: Transaction, keys: list[str], now: datetime) -> int:
    """Skipped rows owed again: pending, due now. A row never attempted renders its copy as of
    now (its days left); an attempted one keeps the copy it was first sent with."""
    if not keys:
        return 0
    return tx.execute(
        "UPDATE recovery_actions SET status = 'pending', due_at = :now,"
        " owed_at = CASE WHEN result ? 'copy' THEN owed_at ELSE :now END, error_class = NULL,"
        " error_detail = NULL, completed_at = NULL, claimed_until = NULL, claim_token = NULL,"
        " updated_at = now() WHERE idempotency_key = ANY(CAST(:keys AS text[])) AND status = 'skipped'",
        now=now, keys=keys)


def open_cases(tx: Transaction, settings: CreatorSettings, now: datetime) -> int:
    """Re-plan the reminders of every open case of the company (a settings change); return how
    many cases' plans changed. Two statements whatever the number of cases."""
    rows = tx.query(
        "SELECT " + case_store.DUE_CASE_COLUMNS + ", next_action_at, holdout,"  # noqa: S608 - constant column list
        " COALESCE((SELECT jsonb_agg(jsonb_build_object('kind', a.kind, 'step', a.step,"
        "   'status', a.status, 'error_detail', a.error_detail))"
        "   FROM recovery_actions a WHERE a.case_id = recovery_cases.id AND a.kind = 'reminder'),"
        "   '[]'::jsonb) AS reminders,"
        " (SELECT bool_or(a.status IN ('pending', 'claimed')) FROM recovery_actions a"
        "   WHERE a.case_id = recovery_cases.id AND a.step = 't0') AS t0_owed,"
        " (SELECT min(a.completed_at) FROM recovery_actions a"
        "   WHERE a.case_id = recovery_cases.id AND a.step = 't0' AND a.status = 'sent') AS t0_sent_at"
        " FROM recovery_cases WHERE status = 'open'")
    changed: list[tuple[str, int | None, datetime | None]] = []
    for row in rows:
        case = case_store.case_from_row(row)
        last = planned_offset(case, settings, _reminded(row["reminders"], _not_done(row["holdout"])),
                              now if row["t0_owed"] else row["t0_sent_at"])
        next_at = next_action_at(case, settings, last)
        if (last, next_at) != (row["last_reminder_offset"], row["next_action_at"]):
            changed.append((str(row["id"]), last, next_at))
    case_store.advance_cases(tx, changed)
    return len(changed)
