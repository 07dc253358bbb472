"""Executing owed ledger rows: claim → call Whop (with the row's Idempotency-Key) → record.

The three steps are separate transactions on purpose: no database transaction stays open across
an HTTP call. A claimed row carries a lease (``claimed_until``); a crash after the claim leaves
it claimed, the next tick re-claims it once the lease ends, and the same Idempotency-Key makes
Whop apply it once. ``FOR UPDATE SKIP LOCKED`` keeps two concurrent ticks off the same rows.

Rules checked at claim time (what a member would expect):
- nothing is sent for a case that is no longer open, or whose 14-day window has passed;
- automatic messages wait out the company's quiet hours and a 20 h cap per member per channel
  (a creator's manual nudge is exempt from the cap: it is an explicit decision);
- at most one incentive per member per 90 days per company.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from chalicelib import measurement, store
from chalicelib.attribution import window_passed
from chalicelib.db import Database, Transaction, tenant_transaction
from chalicelib.messages import VariantCopy
from chalicelib.models import Case, CaseStatus, CreatorSettings
from chalicelib.reminders import FREQUENCY_CAP, MAX_ATTEMPTS, quiet_until, retry_delay
from chalicelib.whop import WhopError, WhopPermanentError, WhopPort, WhopResult

LEASE = timedelta(minutes=5)
INCENTIVE_COOLDOWN = timedelta(days=90)
MESSAGE_KINDS = ("nudge", "reminder", "manual_nudge")
EXPERIENCE_CACHE_S = 600.0


@dataclass
class Stats:
    sent: int = 0
    failed: int = 0
    retrying: int = 0
    deferred: int = 0
    skipped: int = 0

    def add(self, other: Stats) -> None:
        for name in ("sent", "failed", "retrying", "deferred", "skipped"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Claim:
    action_id: str
    kind: str
    step: str
    channel: str | None
    key: str
    attempts: int
    case_id: str
    case: Case
    link_token: str
    settings: CreatorSettings
    extra: dict[str, Any] = field(default_factory=dict)
    variant: VariantCopy | None = None  # the case's experiment copy, if any


@dataclass(frozen=True)
class Context:
    whop: WhopPort
    app_id: str
    public_base_url: str


# --- claim ---------------------------------------------------------------------------------------

_OWED = (
    "SELECT a.id::text AS action_id, a.kind, a.step, a.channel, a.idempotency_key, a.attempts,"
    " a.case_id::text AS case_id FROM recovery_actions a"
    " WHERE a.status IN ('pending', 'claimed') AND a.due_at <= :now"
    " AND (a.claimed_until IS NULL OR a.claimed_until <= :now)"
    " AND (CAST(:case_id AS uuid) IS NULL OR a.case_id = CAST(:case_id AS uuid))"
    " AND (CAST(:kinds AS text) IS NULL OR a.kind = ANY(string_to_array(CAST(:kinds AS text), ',')))"
    " ORDER BY a.due_at, a.id LIMIT :limit FOR UPDATE SKIP LOCKED"
)


def _finish(tx: Transaction, action_id: str, now: datetime, status: str, error_class: str | None = None,
            detail: str | None = None, result: dict[str, Any] | None = None) -> None:
    # completed_at is the injected clock: the frequency cap and incentive limit compare with it.
    tx.execute(
        "UPDATE recovery_actions SET status = :status, error_class = :ec, error_detail = :detail,"
        " result = result || CAST(:result AS jsonb), claimed_until = NULL, completed_at = :now,"
        " updated_at = now() WHERE id = CAST(:id AS uuid)",
        status=status, ec=error_class, detail=detail, id=action_id, now=now,
        result=json.dumps(result or {}, default=str))


def _defer(tx: Transaction, action_id: str, until: datetime, reason: str) -> None:
    tx.execute("UPDATE recovery_actions SET status = 'pending', due_at = :until, claimed_until = NULL,"
               " error_detail = :reason, updated_at = now() WHERE id = CAST(:id AS uuid)",
               until=until, reason=reason, id=action_id)


def _last_sent_to_member(tx: Transaction, user_id: str, channel: str, exclude: str) -> datetime | None:
    value: datetime | None = tx.scalar(
        "SELECT max(a.completed_at) FROM recovery_actions a JOIN recovery_cases c ON c.id = a.case_id"
        " WHERE c.user_id = :u AND a.channel = :ch AND a.status = 'sent'"
        " AND a.kind IN ('nudge', 'reminder') AND a.id <> CAST(:x AS uuid)",
        u=user_id, ch=channel, x=exclude)
    return value


def _recent_incentive(tx: Transaction, company_id: str, user_id: str, exclude: str, now: datetime) -> bool:
    # Serialise incentive decisions per member so two cases cannot both grant one.
    tx.query("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))", k=f"{company_id}/{user_id}/incentive")
    found = tx.scalar(
        "SELECT count(*) FROM recovery_actions a JOIN recovery_cases c ON c.id = a.case_id"
        " WHERE c.user_id = :u AND a.kind = 'incentive' AND a.id <> CAST(:x AS uuid)"
        " AND (a.status = 'claimed' OR (a.status = 'sent' AND a.completed_at > :since))",
        u=user_id, x=exclude, since=now - INCENTIVE_COOLDOWN)
    return bool(found)


def _gate(tx: Transaction, row: dict[str, Any], case: Case, settings: CreatorSettings, now: datetime,
          batch_sends: set[tuple[str, str]]) -> tuple[str, Any] | None:
    """Why this row must not be claimed now: ("skip", reason) or ("defer", until); None = go."""
    kind, channel = row["kind"], row["channel"]
    if case.holdout and kind in ("nudge", "reminder", "incentive"):
        return ("skip", "holdout")  # measured, never messaged automatically (manual nudges still go)
    if case.status is not CaseStatus.OPEN:
        return ("skip", "case_closed")
    if window_passed(case.first_failure_at, now):
        return ("skip", "window_passed")
    if kind in MESSAGE_KINDS and not case.user_id:
        return ("skip", "no_user")
    if kind in ("nudge", "reminder"):
        until = quiet_until(now, settings)
        if until is not None:
            return ("defer", until)
        assert case.user_id is not None and channel is not None
        last = _last_sent_to_member(tx, case.user_id, channel, row["action_id"])
        if last is not None and now - last < FREQUENCY_CAP:
            return ("defer", last + FREQUENCY_CAP)
        if (case.user_id, channel) in batch_sends:
            return ("defer", now + FREQUENCY_CAP)
        batch_sends.add((case.user_id, channel))
    if kind == "incentive" and case.user_id and _recent_incentive(
            tx, case.company_id, case.user_id, row["action_id"], now):
        return ("skip", "recent_incentive")
    return None


def claim(company_id: str, now: datetime, db: Database | None = None, *, case_id: str | None = None,
          kinds: tuple[str, ...] | None = None, limit: int = 50,
          stats: Stats | None = None) -> list[Claim]:
    stats = stats if stats is not None else Stats()
    claims: list[Claim] = []
    with tenant_transaction(company_id, db) as tx:
        settings = store.get_settings(tx)
        rows = tx.query(_OWED, now=now, case_id=case_id, limit=limit,
                        kinds=",".join(kinds) if kinds else None)
        batch_sends: set[tuple[str, str]] = set()
        cases: dict[str, dict[str, Any]] = {}
        for row in rows:
            if row["case_id"] not in cases:
                case_row = tx.one("SELECT * FROM recovery_cases WHERE id = CAST(:id AS uuid)",
                                  id=row["case_id"])
                assert case_row is not None
                cases[row["case_id"]] = case_row
            case_row = cases[row["case_id"]]
            case = store.case_from_row(case_row)
            verdict = _gate(tx, row, case, settings, now, batch_sends)
            if verdict is not None and verdict[0] == "skip":
                _finish(tx, row["action_id"], now, "skipped", "skipped", verdict[1])
                stats.skipped += 1
                continue
            if verdict is not None:
                _defer(tx, row["action_id"], verdict[1], "deferred")
                stats.deferred += 1
                continue
            tx.execute("UPDATE recovery_actions SET status = 'claimed', claimed_until = :lease,"
                       " attempts = attempts + 1, updated_at = now() WHERE id = CAST(:id AS uuid)",
                       lease=now + LEASE, id=row["action_id"])
            claims.append(Claim(action_id=row["action_id"], kind=row["kind"], step=row["step"],
                                channel=row["channel"], key=row["idempotency_key"],
                                attempts=row["attempts"] + 1, case_id=row["case_id"], case=case,
                                link_token=case_row["link_token"], settings=settings,
                                variant=measurement.variant_copy(tx, case)))
    return claims


# --- perform -------------------------------------------------------------------------------------

_experiences: dict[str, tuple[str | None, float]] = {}
_experiences_lock = threading.Lock()


def push_experience(ctx: Context, company_id: str, settings: CreatorSettings) -> str | None:
    """Whop delivers a push only through an experience the member can access (contract)."""
    if settings.push_experience_id:
        return settings.push_experience_id
    with _experiences_lock:
        cached = _experiences.get(company_id)
        if cached and cached[1] > time.monotonic():
            return cached[0]
    found = ctx.whop.find_app_experience(company_id, ctx.app_id)
    with _experiences_lock:
        _experiences[company_id] = (found, time.monotonic() + EXPERIENCE_CACHE_S)
    return found


def clear_experience_cache() -> None:
    with _experiences_lock:
        _experiences.clear()


def _template(kind: str) -> str:
    return {"nudge": "t0", "reminder": "reminder", "manual_nudge": "manual"}[kind]


def perform(ctx: Context, c: Claim, now: datetime) -> WhopResult:
    """Make the Whop call a claim owes. Reads that fail become a failed WhopResult."""
    try:
        if c.kind == "incentive":
            return _extend(ctx, c)
        link = f"{ctx.public_base_url}/r/{c.link_token}"
        copy = measurement.message_copy(ctx.whop, _template(c.kind), c.case, link, now, c.variant)
        assert c.case.user_id is not None
        if c.channel == "push":
            experience = push_experience(ctx, c.case.company_id, c.settings)
            if experience is None:
                return WhopResult(ok=False, error_class="permanent", error_code="no_push_experience")
            return ctx.whop.send_push(experience, c.case.user_id, copy.title, copy.push, c.key)
        return ctx.whop.send_dm(c.case.user_id, c.case.company_id, copy.dm, c.key)
    except WhopError as exc:
        # The adapter already classified the failure: reuse its verdict rather than re-deriving it.
        return WhopResult(ok=False, status_code=exc.status, error_code=exc.error_code,
                          error_class="permanent" if isinstance(exc, WhopPermanentError) else "retryable",
                          retry_after_s=exc.retry_after_s)


def _extend(ctx: Context, c: Claim) -> WhopResult:
    days = c.settings.incentive_days
    membership = ctx.whop.retrieve_membership(c.case.membership_id)
    result = ctx.whop.extend_membership(c.case.membership_id, days, c.key)
    cost = None
    if membership.renewal_amount_minor is not None and membership.billing_period_days:
        cost = round(days * membership.renewal_amount_minor / membership.billing_period_days)
    c.extra = {"days": days, "cost_minor": cost, "currency": membership.renewal_currency}
    return result


# --- record --------------------------------------------------------------------------------------


def record(company_id: str, c: Claim, result: WhopResult, now: datetime,
           db: Database | None = None) -> str:
    """Write the outcome of a performed claim; return the row's new status."""
    with tenant_transaction(company_id, db) as tx:
        if result.ok:
            _finish(tx, c.action_id, now, "sent", result={**result.data, **c.extra})
            if c.kind == "incentive":
                tx.execute("UPDATE recovery_cases SET incentive_days = :d, incentive_cost_minor = :cost,"
                           " updated_at = now() WHERE id = CAST(:id AS uuid)",
                           d=c.extra.get("days", 0), cost=c.extra.get("cost_minor"), id=c.case_id)
            return "sent"
        if result.retryable and c.attempts < MAX_ATTEMPTS:
            tx.execute("UPDATE recovery_actions SET status = 'pending', claimed_until = NULL,"
                       " due_at = :due, error_class = 'retryable', error_detail = :code,"
                       " updated_at = now() WHERE id = CAST(:id AS uuid)",
                       due=now + retry_delay(c.attempts, result.retry_after_s), code=result.error_code,
                       id=c.action_id)
            return "retrying"
        status = "skipped" if result.error_code == "no_push_experience" else "failed"
        _finish(tx, c.action_id, now, status, result.error_class or "permanent", result.error_code)
        return status


def execute_owed(ctx: Context, company_id: str, now: datetime, db: Database | None = None, *,
                 case_id: str | None = None, kinds: tuple[str, ...] | None = None,
                 limit: int = 50) -> Stats:
    """Claim, perform and record owed rows (of one case and/or some kinds, when given)."""
    stats = Stats()
    for c in claim(company_id, now, db, case_id=case_id, kinds=kinds, limit=limit, stats=stats):
        outcome = record(company_id, c, perform(ctx, c, now), now, db)
        setattr(stats, outcome, getattr(stats, outcome) + 1)
    return stats


def default_context() -> Context:
    from chalicelib.config import get_config
    from chalicelib.whop import get_whop

    cfg = get_config()
    return Context(whop=get_whop(), app_id=cfg.WHOP_APP_ID or "",
                   public_base_url=cfg.PUBLIC_BASE_URL or "")
