"""Small named queries over the tenant tables. Every function takes an open tenant Transaction:
RLS already scopes it to one company, and ``company_id`` parameters only fill the column on insert.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from chalicelib.db import Transaction
from chalicelib.kpis import StatusCount
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


def insert_poison(tx: Transaction, webhook_id: str, reason: str, error_class: str,
                  received_at: datetime | None) -> None:
    """Keep the id of a verified webhook that cannot be applied (no payload, no tenant data).
    No conflict target: naming one would need SELECT, and the runtime role may only INSERT here."""
    tx.execute("INSERT INTO poison_events (webhook_id, reason, error_class, received_at)"
               " VALUES (:w, :reason, :ec, :received) ON CONFLICT DO NOTHING",
               w=webhook_id, reason=reason[:300], ec=error_class[:100], received=received_at)


def membership_event_payloads(tx: Transaction, membership_id: str) -> list[dict[str, Any]]:
    rows = tx.query("SELECT payload FROM events WHERE membership_id = :m ORDER BY occurred_at, id",
                    m=membership_id)
    return [r["payload"] for r in rows]


# --- cases ---------------------------------------------------------------------------------------

_CASE_COLUMNS = (
    "user_id", "status", "first_failure_at", "last_failure_at", "failure_count", "payment_id",
    "amount_minor", "currency", "decline_code", "failure_reason", "recovery_url", "recovered_at",
    "recovered_amount_minor", "recovered_currency", "closed_at", "close_reason", "decline_class",
)


def membership_cases(tx: Transaction, membership_id: str) -> list[dict[str, Any]]:
    """A membership's stored cases, oldest row first."""
    return tx.query("SELECT * FROM recovery_cases WHERE membership_id = :m ORDER BY created_at, id",
                    m=membership_id)


def insert_case(tx: Transaction, case: Case, next_action_at: datetime | None,
                link_token: str, last_reminder_offset: int | None = None) -> dict[str, Any]:
    values = {c: getattr(case, c) for c in _CASE_COLUMNS}
    values["status"] = case.status.value
    # Column names come from the _CASE_COLUMNS constant; every value is a bound parameter.
    row = tx.one(
        "INSERT INTO recovery_cases (company_id, membership_id, seq, episode_webhook_id,"  # noqa: S608
        " next_action_at, last_reminder_offset, link_token, manage_url, " + ", ".join(_CASE_COLUMNS)
        + ") VALUES (:company_id, :membership_id, :seq, :episode, :next_action_at, :last_offset,"
        " :link_token, :manage_url, "
        + ", ".join(f":{c}" for c in _CASE_COLUMNS) + ") RETURNING *",
        company_id=case.company_id, membership_id=case.membership_id, seq=case.seq,
        episode=case.failure_ids[0] if case.failure_ids else None, last_offset=last_reminder_offset,
        next_action_at=next_action_at, link_token=link_token, manage_url=case.manage_url, **values)
    assert row is not None
    return row


def update_case(tx: Transaction, case_id: str, case: Case, next_action_at: datetime | None,
                episode: str | None = None) -> None:
    """Rewrite a stored case from its episode's fold (``episode`` fills a legacy row's identity)."""
    values = {c: getattr(case, c) for c in _CASE_COLUMNS}
    values["status"] = case.status.value
    assignments = ", ".join(f"{c} = :{c}" for c in _CASE_COLUMNS)  # constant names, bound values
    tx.execute(
        "UPDATE recovery_cases SET " + assignments  # noqa: S608
        + ", seq = :seq, episode_webhook_id = COALESCE(episode_webhook_id, :episode),"
        " manage_url = COALESCE(:manage_url, manage_url), next_action_at = :next_action_at,"
        " updated_at = now() WHERE id = CAST(:id AS uuid)",
        id=case_id, seq=case.seq, episode=episode, next_action_at=next_action_at,
        manage_url=case.manage_url, **values)


def settle_pending(tx: Transaction, case_id: str, reason: str) -> int:
    """A closed case owes nothing: its pending rows become ``skipped`` with the reason, at once,
    so the timeline never shows sends "pending" for a recovered case. Claimed rows (a send in
    flight) are left to their executor, which records what Whop answered."""
    return tx.execute(
        "UPDATE recovery_actions SET status = 'skipped', error_class = 'skipped', error_detail = :reason,"
        " claimed_until = NULL, completed_at = now(), updated_at = now()"
        " WHERE case_id = CAST(:id AS uuid) AND status = 'pending'", id=case_id, reason=reason)


def merge_duplicate_case(tx: Transaction, case_id: str, into: str) -> None:
    """A row whose episode turned out to be another row's: closed (history kept), owes nothing."""
    tx.execute(
        "UPDATE recovery_cases SET status = CASE WHEN status = 'open' THEN 'cancelled' ELSE status END,"
        " closed_at = COALESCE(closed_at, now()), close_reason = COALESCE(close_reason, 'merged'),"
        " next_action_at = NULL, updated_at = now() WHERE id = CAST(:id AS uuid)", id=case_id)
    settle_pending(tx, case_id, f"merged_into:{into}")


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
        " idempotency_key, due_at, owed_at, actor, result, completed_at)"
        " VALUES (CAST(:case_id AS uuid), :company_id, :kind, :step, :channel, :status, :key,"
        " COALESCE(:due_at, now()), COALESCE(:due_at, now()), :actor, CAST(:result AS jsonb),"
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
        holdout_percent=row["holdout_percent"], updated_at=row["updated_at"])


def upsert_settings(tx: Transaction, company_id: str, settings: CreatorSettings) -> CreatorSettings:
    """Store a company's settings (insert or replace); return them as stored."""
    quiet = settings.quiet_hours
    tx.execute(
        "INSERT INTO creator_settings (company_id, enable_push, enable_dm, incentive_days,"
        " reminder_offsets_days, timezone, quiet_hours_start, quiet_hours_end, push_experience_id,"
        " holdout_percent)"
        " VALUES (:company_id, :enable_push, :enable_dm, :incentive_days, CAST(:offsets AS integer[]),"
        " :timezone, CAST(:quiet_start AS time), CAST(:quiet_end AS time), :push_experience_id,"
        " :holdout_percent)"
        " ON CONFLICT (company_id) DO UPDATE SET enable_push = EXCLUDED.enable_push,"
        " enable_dm = EXCLUDED.enable_dm, incentive_days = EXCLUDED.incentive_days,"
        " reminder_offsets_days = EXCLUDED.reminder_offsets_days, timezone = EXCLUDED.timezone,"
        " quiet_hours_start = EXCLUDED.quiet_hours_start, quiet_hours_end = EXCLUDED.quiet_hours_end,"
        " push_experience_id = EXCLUDED.push_experience_id,"
        " holdout_percent = EXCLUDED.holdout_percent, updated_at = now()",
        company_id=company_id, enable_push=settings.enable_push, enable_dm=settings.enable_dm,
        incentive_days=settings.incentive_days, offsets=list(settings.reminder_offsets_days),
        timezone=settings.timezone, quiet_start=quiet.start if quiet else None,
        quiet_end=quiet.end if quiet else None, push_experience_id=settings.push_experience_id,
        holdout_percent=settings.holdout_percent)
    return get_settings(tx)


# --- creator API: case views --------------------------------------------------------------------

# What the creator API shows of a case: no link token, no member-specific URLs.
CASE_VIEW_COLUMNS = (
    "id::text AS id, membership_id, user_id, status, first_failure_at, last_failure_at, failure_count,"
    " amount_minor, currency, decline_code, failure_reason, recovered_at, recovered_amount_minor,"
    " recovered_currency, closed_at, close_reason, cancelled_by, incentive_days, link_clicks,"
    " last_clicked_at, next_action_at, created_at, updated_at,"
    " holdout, experiment_id::text AS experiment_id, variant, decline_class"
)

# Optional filters as bound parameters (NULL = no filter); the keyset is (first_failure_at, id).
_CASE_FILTERS = (
    " WHERE (CAST(:status AS text) IS NULL OR status = :status)"
    " AND (CAST(:since AS timestamptz) IS NULL OR (first_failure_at >= :since AND first_failure_at <= :now))"
    " AND (CAST(:q AS text) IS NULL OR membership_id LIKE :q OR user_id LIKE :q)"
    " AND (CAST(:after_at AS timestamptz) IS NULL"
    "      OR (first_failure_at, id) < (CAST(:after_at AS timestamptz), CAST(:after_id AS uuid)))"
)


def like_prefix(text: str) -> str:
    """A LIKE pattern matching ``text`` exactly or as a prefix (wildcards in it escaped)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def list_cases(tx: Transaction, *, now: datetime, status: str | None = None, since: datetime | None = None,
               q: str | None = None, after: tuple[datetime, str] | None = None,
               limit: int = 25) -> list[dict[str, Any]]:
    """Cases newest first (first_failure_at, then id, descending), after the keyset ``after``."""
    return tx.query(
        "SELECT " + CASE_VIEW_COLUMNS + " FROM recovery_cases" + _CASE_FILTERS  # noqa: S608 - constants
        + " ORDER BY first_failure_at DESC, id DESC LIMIT :limit",
        status=status, since=since, now=now, q=like_prefix(q) if q else None,
        after_at=after[0] if after else None, after_id=after[1] if after else None, limit=limit)


def export_cases(tx: Transaction, *, now: datetime, status: str | None = None,
                 since: datetime | None = None, after: tuple[datetime, str] | None = None,
                 limit: int = 1000) -> list[dict[str, Any]]:
    """One keyset page of the CSV export, with each case's count of sent messages."""
    return tx.query(
        "SELECT id::text AS case_id, membership_id, user_id, status, first_failure_at, last_failure_at,"  # noqa: S608
        " recovered_at, amount_minor, COALESCE(currency, recovered_currency) AS currency,"
        " recovered_amount_minor, failure_count, decline_code, failure_reason,"
        " (SELECT count(*) FROM recovery_actions a WHERE a.case_id = recovery_cases.id"
        "   AND a.kind IN ('nudge', 'reminder', 'manual_nudge') AND a.status = 'sent') AS nudges_sent,"
        " incentive_days, holdout, experiment_id::text AS experiment_id, variant, decline_class,"
        " link_clicks AS clicks FROM recovery_cases" + _CASE_FILTERS  # constant fragments only
        + " ORDER BY first_failure_at DESC, id DESC LIMIT :limit",
        status=status, since=since, now=now, q=None, after_at=after[0] if after else None,
        after_id=after[1] if after else None, limit=limit)


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
    """A case's ledger rows, oldest first."""
    return tx.query(
        "SELECT id::text AS id, kind, step, channel, status, actor, attempts, error_class, error_detail,"
        " created_at, completed_at FROM recovery_actions WHERE case_id = CAST(:id AS uuid)"
        " ORDER BY created_at, id LIMIT :limit", id=case_id, limit=limit)


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


def close_case_by_creator(tx: Transaction, case_id: str, *, close_reason: str, user_id: str,
                          now: datetime) -> None:
    """Cancel a case on a creator's decision and skip what it still owed."""
    tx.execute(
        "UPDATE recovery_cases SET status = 'cancelled', closed_at = COALESCE(closed_at, :now),"
        " close_reason = :reason, cancelled_by = :user, next_action_at = NULL, updated_at = now()"
        " WHERE id = CAST(:id AS uuid)", id=case_id, now=now, reason=close_reason, user=user_id)
    settle_pending(tx, case_id, close_reason)


def kpi_counts(tx: Transaction, *, now: datetime, window: timedelta) -> tuple[list[StatusCount],
                                                                              list[StatusCount]]:
    """Case counts per status and currency for [now - window, now] and the window before it."""
    rows = tx.query(
        "SELECT first_failure_at >= :mid AS current, status,"
        " COALESCE(currency, recovered_currency) AS currency, count(*) AS cases,"
        " COALESCE(sum(recovered_amount_minor) FILTER (WHERE status = 'recovered'), 0) AS recovered"
        " FROM recovery_cases WHERE first_failure_at >= :start AND first_failure_at <= :now"
        " GROUP BY 1, 2, 3", mid=now - window, start=now - 2 * window, now=now)
    current: list[StatusCount] = []
    previous: list[StatusCount] = []
    for row in rows:
        counted = StatusCount(status=row["status"], currency=row["currency"], cases=int(row["cases"]),
                              recovered_minor=int(row["recovered"]))
        (current if row["current"] else previous).append(counted)
    return current, previous


def lock_settings(tx: Transaction, company_id: str) -> None:
    """Serialise read-modify-write of a company's settings until the transaction ends."""
    tx.query("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))", key=f"{company_id}/settings")
