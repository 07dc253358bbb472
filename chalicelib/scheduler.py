"""One reminder tick: expire, owe reminders, execute owed effects — for every company with due work.

Finding the companies is the only cross-tenant step, through the SECURITY DEFINER function
``due_company_ids`` (ids only). Everything else runs per company in its tenant transaction,
taking due cases with ``FOR UPDATE SKIP LOCKED`` so two ticks at once never owe twice; the
ledger's unique idempotency keys are the second guard. Cost follows due work: the partial index
``recovery_cases_due`` finds due cases without scanning open ones.

Each company succeeds or fails alone: one company's bad row (a timezone that no longer loads, a
constraint, a bug) is logged with its id and the error class and counted, and the tick goes on
with the next company. Companies come oldest-due first, and the tick stops taking new work when
``out_of_time`` says so (the Lambda's remaining time under a margin): the next tick continues
where this one stopped, so no company starves behind a slow Whop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from chalicelib.claims import Context, Stats
from chalicelib.db_pool import Database
from chalicelib.effects import execute_owed
from chalicelib.models import RECOVERY_WINDOW
from chalicelib.observability import logger
from chalicelib.reminders import due_reminder, next_action_at, reminder_effects
from chalicelib.retention import MAX_BATCHES as RETENTION_BATCHES
from chalicelib.retention import purge_expired
from chalicelib.store import cases as case_store
from chalicelib.store import ledger as ledger_store
from chalicelib.store import settings as settings_store
from chalicelib.tenancy import service_transaction, tenant_transaction


@dataclass
class TickResult:
    companies: int = 0
    due: int = 0
    expired: int = 0
    reminders_owed: int = 0
    effects: Stats = field(default_factory=Stats)
    failed_companies: int = 0
    budget_exhausted: bool = False
    duration_ms: float = 0.0

    def as_metrics(self) -> dict[str, float]:
        return {"RemindersDue": self.due, "RemindersOwed": self.reminders_owed,
                "CasesExpired": self.expired, "EffectsSent": self.effects.sent,
                "EffectsFailed": self.effects.failed, "EffectsRetrying": self.effects.retrying,
                "EffectsDeferred": self.effects.deferred, "EffectsSkipped": self.effects.skipped,
                "TickCompanyFailed": self.failed_companies,
                "TickBudgetExhausted": int(self.budget_exhausted),
                "TickDurationMs": self.duration_ms}


def expire_cases(company_id: str, now: datetime, db: Database | None = None) -> int:
    """Expire open cases whose window has passed; their pending rows are skipped in the same
    transaction (``window_passed``), so no timeline shows a send pending for a closed case."""
    with tenant_transaction(company_id, db) as tx:
        expired = tx.scalar(
            "WITH expired AS (UPDATE recovery_cases SET status = 'expired',"
            "   closed_at = first_failure_at + :window, close_reason = 'window_passed',"
            "   next_action_at = NULL, updated_at = now()"
            "   WHERE status = 'open' AND first_failure_at < :cutoff RETURNING id),"
            " settled AS (UPDATE recovery_actions a SET status = 'skipped', error_class = 'skipped',"
            "   error_detail = 'window_passed', claimed_until = NULL, completed_at = now(),"
            "   updated_at = now() FROM expired e WHERE a.case_id = e.id AND a.status = 'pending')"
            " SELECT count(*) FROM expired",
            window=RECOVERY_WINDOW, cutoff=now - RECOVERY_WINDOW)
    return int(expired or 0)


def owe_reminders(company_id: str, now: datetime, db: Database | None = None,
                  limit: int = 200) -> tuple[int, int]:
    """Record the reminders due now as pending ledger rows; return (cases due, rows owed).
    Three statements whatever the number of due cases: read them, insert every owed row, and
    advance every case."""
    with tenant_transaction(company_id, db) as tx:
        settings = settings_store.get_settings(tx)
        rows = tx.query("SELECT " + case_store.DUE_CASE_COLUMNS + " FROM recovery_cases"  # noqa: S608 - constant
                        " WHERE status = 'open' AND next_action_at <= :now"
                        " ORDER BY next_action_at LIMIT :limit FOR UPDATE SKIP LOCKED",
                        now=now, limit=limit)
        owed: list[tuple[str, str, str, str | None, datetime, str]] = []
        advanced: list[tuple[str, int | None, datetime | None]] = []
        for row in rows:
            case = case_store.case_from_row(row)
            case_id = str(row["id"])
            last = row["last_reminder_offset"]
            offset = due_reminder(case, settings, last, now)
            if offset is not None:
                owed += [(case_id, effect.kind, effect.step, effect.channel, effect.due_at,
                          effect.idempotency_key(case_id))
                         for effect in reminder_effects(case, settings, offset, now)]
                last = offset
            advanced.append((case_id, last, next_action_at(case, settings, last)))
        added = ledger_store.add_pending_actions(tx, company_id, owed)
        case_store.advance_cases(tx, advanced)
    return len(rows), added


def tick(ctx: Context, now: datetime, db: Database | None = None, max_companies: int = 1000,
         out_of_time: Callable[[], bool] | None = None) -> TickResult:
    started = time.perf_counter()
    result = TickResult()
    with service_transaction(db) as tx:
        companies = [r["company_id"] for r in
                     tx.query("SELECT company_id FROM due_company_ids(:now, :n)", now=now, n=max_companies)]
    for company_id in companies:
        if out_of_time is not None and out_of_time():
            result.budget_exhausted = True
            logger.warning("tick out of time; the next tick continues",
                           extra={"companies_left": len(companies) - result.companies})
            break
        result.companies += 1
        try:
            _tick_company(ctx, company_id, now, db, result, out_of_time)
        except Exception as exc:  # noqa: BLE001 - one company must never stop the others
            result.failed_companies += 1
            logger.warning("tick failed for one company; continuing with the next",
                           extra={"company_id": company_id, "error_class": type(exc).__name__})
    # Retention (docs/privacy.md) every tick, even one that ran out of time: then a single small
    # batch of each kind, which the margin left for one more Whop call easily covers.
    purge_expired(db, max_batches=1 if result.budget_exhausted else RETENTION_BATCHES)
    result.duration_ms = round((time.perf_counter() - started) * 1000, 2)
    return result


def _tick_company(ctx: Context, company_id: str, now: datetime, db: Database | None,
                  result: TickResult, out_of_time: Callable[[], bool] | None) -> None:
    result.expired += expire_cases(company_id, now, db)
    due, owed = owe_reminders(company_id, now, db)
    result.due += due
    result.reminders_owed += owed
    result.effects.add(execute_owed(ctx, company_id, now, db, limit=200, out_of_time=out_of_time))
