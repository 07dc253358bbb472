"""Executing owed ledger rows: claim → call Whop (with the row's Idempotency-Key) → record.

The three steps are separate transactions on purpose: no database transaction stays open across
an HTTP call. A claimed row carries a lease (``claimed_until``, on the database's clock); a crash
after the claim leaves it claimed, the next tick re-claims it once the lease ends, and the same
Idempotency-Key makes Whop apply it once. ``FOR UPDATE SKIP LOCKED`` keeps two concurrent ticks
off the same rows.

Rules checked at claim time (what a member would expect):
- nothing is sent for a case that is no longer open, or whose 14-day window has passed;
- automatic messages wait out the company's quiet hours and a 20 h cap per member per channel,
  counting sends in flight (claimed) as well as sent ones (a creator's manual nudge is exempt
  from the cap: it is an explicit decision);
- at most one incentive per member per 90 days per company.

A claim carries a random lease token; an outcome is recorded only while the row is still claimed
with that token, so an executor whose lease ran out cannot overwrite the next one's result.

Retry policy, by why Whop said no (``whop.failure_cause``):

| cause          | what Whop answered                        | the row                               |
|----------------|-------------------------------------------|---------------------------------------|
| (ok)           | 2xx                                       | ``sent``                              |
| member         | 400/404/409/422: this member or request   | ``failed`` at once (retrying cannot   |
|                | is refused for good                       | help); no push experience: ``skipped``|
| credentials    | 401/403: our own API key refused (a key   | stays ``pending``, capped exponential |
|                | rotation, Whop's auth having a bad hour)  | backoff; metric ``WhopAuthRefused``   |
| rate_limited   | 429                                       | ``pending``, no sooner than           |
|                |                                           | Retry-After (capped at 1 h); metric   |
|                |                                           | ``WhopRateLimited``                   |
| unavailable    | 5xx, 408, timeout, connection refused     | ``pending``, backoff; metric          |
|                |                                           | ``WhopUnavailable``                   |
| any of the     | and the case's 14-day window closes       | ``skipped`` (``window_passed``);      |
| three above    | before the next try                       | metric ``EffectsAbandoned``           |
| our own bug    | an exception inside the executor          | released to ``pending`` with backoff, |
|                |                                           | alone; metric ``EffectRowFailed``     |
Backoff: 1 min doubling per attempt, at most 1 h; there is no attempt limit for the last four
causes — a Whop outage of any length delays a nudge, it never abandons one inside its window.
Smart retry's rows (``card_attach``, ``payment_retry``: ``chalicelib.recovery_exec``) follow this
table with two differences: a 403 is final (``permission_missing``, the missing Whop permission
shown on the dashboard and the health check), and a refusal keeps Whop's reason in the row.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, cast

from chalicelib import measurement, recovery_exec
from chalicelib.attribution import window_passed
from chalicelib.breaker import endpoint_of, get_breaker
from chalicelib.db import Transaction
from chalicelib.db_pool import Database
from chalicelib.messages import VariantCopy
from chalicelib.models import Case, CaseStatus, CreatorSettings
from chalicelib.observability import count, logger
from chalicelib.recovery_policy import RECOVERY_KINDS
from chalicelib.reminders import FREQUENCY_CAP, quiet_until, retry_delay
from chalicelib.store import cases as case_store
from chalicelib.store import settings as settings_store
from chalicelib.tenancy import tenant_transaction
from chalicelib.whop import WhopError, WhopPermanentError, WhopPort, WhopResult

LEASE = timedelta(minutes=5)
INCENTIVE_COOLDOWN = timedelta(days=90)
MESSAGE_KINDS = ("nudge", "reminder", "manual_nudge")
EXPERIENCE_CACHE_S = 600.0


CLAIM_BATCH = 10  # rows claimed at a time: a tick out of time strands at most this many leases


@dataclass
class Stats:
    sent: int = 0
    failed: int = 0
    retrying: int = 0
    deferred: int = 0
    skipped: int = 0
    errors: int = 0  # rows whose execution raised: released alone
    lost: int = 0  # outcomes not recorded because this executor no longer held the claim

    def add(self, other: Stats) -> None:
        for name in ("sent", "failed", "retrying", "deferred", "skipped", "errors", "lost"):
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
    token: str = ""  # the lease token: outcomes are recorded only by its holder
    owed_at: datetime | None = None  # when the row was written: the copy is rendered as of then
    copy: dict[str, str] | None = None  # the message as first attempted (pinned in the row)
    extra: dict[str, Any] = field(default_factory=dict)
    variant: VariantCopy | None = None  # the case's experiment copy, if any


@dataclass(frozen=True)
class Context:
    whop: WhopPort
    app_id: str
    public_base_url: str


class OutOfTime(Exception):
    """The time budget ran out before a Whop call: the claim goes back owed, unperformed."""


class _Budgeted:
    """The Whop port, asking ``out_of_time`` before every call. One row may make several (the
    product's name for its copy, the push experience, a payment read, then the send), each up to a
    worst-case call's time, so a margin of one call is only kept by asking before each of them."""

    def __init__(self, port: WhopPort, out_of_time: Callable[[], bool]) -> None:
        self._port, self._out_of_time = port, out_of_time

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._port, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._out_of_time():
                raise OutOfTime(name)
            return target(*args, **kwargs)

        return call


# --- metrics: sends by channel and outcome --------------------------------------------------------

# One metric name per (channel, outcome), e.g. ``Send_push_sent``, rather than dimensions:
# Powertools gives every metric of a flush the same dimensions (``single_metric`` would print one
# EMF line per send), and both sets are fixed, so the names stay few and the dashboard lists them.
SEND_CHANNELS = ("push", "dm", "incentive")
SEND_OUTCOMES = ("sent", "failed", "retrying", "skipped")


def send_metric(kind: str, channel: str | None, outcome: str) -> str | None:
    """The metric an executed row's outcome counts in (None: not a send outcome, e.g. deferred)."""
    if outcome not in SEND_OUTCOMES:
        return None
    label = "incentive" if kind == "incentive" else channel if channel in SEND_CHANNELS else "other"
    label = recovery_exec.METRIC_LABEL.get(kind, label)  # issue 18: Send_attach_*, Send_retry_*
    return f"Send_{label}_{outcome}"


def count_send(kind: str, channel: str | None, outcome: str) -> None:
    name = send_metric(kind, channel, outcome)
    if name is not None:
        count(name)


# --- claim ---------------------------------------------------------------------------------------

_OWED = (
    "SELECT a.id::text AS action_id, a.kind, a.step, a.channel, a.idempotency_key, a.attempts,"
    " a.case_id::text AS case_id, COALESCE(a.owed_at, a.created_at) AS owed_at, a.result -> 'copy' AS copy"
    " FROM recovery_actions a"
    " WHERE a.status IN ('pending', 'claimed') AND a.due_at <= :now"
    # A lease runs on the database's clock, whatever clock the executor reads (issue 20).
    " AND (a.claimed_until IS NULL OR a.claimed_until <= now())"
    " AND (CAST(:case_id AS uuid) IS NULL OR a.case_id = CAST(:case_id AS uuid))"
    " AND (CAST(:kinds AS text) IS NULL OR a.kind = ANY(string_to_array(CAST(:kinds AS text), ',')))"
    " ORDER BY a.due_at, a.id LIMIT :limit FOR UPDATE SKIP LOCKED"
)


def _member_cap(tx: Transaction, user_id: str, channel: str, exclude: str,
                now: datetime) -> datetime | None:
    """Until when the frequency cap holds this member's channel (None: free). A send in flight
    (claimed, lease live) counts as sent now: two executors must not both message the member."""
    row = tx.one(
        "SELECT max(a.completed_at) FILTER (WHERE a.status = 'sent') AS last_sent,"
        # How long the live lease still runs, on the database's clock (where leases live).
        " max(a.claimed_until - now()) FILTER (WHERE a.status = 'claimed' AND a.claimed_until > now())"
        "   AS busy_for"
        " FROM recovery_actions a JOIN recovery_cases c ON c.id = a.case_id"
        " WHERE c.user_id = :u AND a.channel = :ch AND a.status IN ('sent', 'claimed')"
        " AND a.kind IN ('nudge', 'reminder') AND a.id <> CAST(:x AS uuid)",
        u=user_id, ch=channel, x=exclude)
    if row is None:
        return None
    busy_for: timedelta | None = row["busy_for"]
    if busy_for is not None:
        # By then it is sent (and the cap runs from it) or it failed (and we may go).
        return now + busy_for
    last: datetime | None = row["last_sent"]
    if last is not None and now - last < FREQUENCY_CAP:
        return last + FREQUENCY_CAP
    return None


def _incentive_verdict(tx: Transaction, company_id: str, user_id: str, exclude: str,
                       now: datetime) -> tuple[str, Any] | None:
    """One incentive per member per 90 days: skip when one was granted; wait while another is in
    flight or an older one is still owed (retrying through a Whop outage) — it goes first, and
    if it never goes (its case closed) this one may."""
    # Serialise incentive decisions per member so two cases cannot both grant one.
    tx.query("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))", k=f"{company_id}/{user_id}/incentive")
    row = tx.one(
        # A row that was attempted and then settled as skipped (its case closed while Whop's
        # answer was lost) may have been applied: it counts as granted (found by the chaos run).
        "SELECT count(*) FILTER (WHERE (a.status = 'sent' OR (a.status = 'skipped' AND a.attempts > 0))"
        "   AND COALESCE(a.completed_at, a.updated_at) > :since) AS granted,"
        " count(*) FILTER (WHERE a.status = 'claimed' OR (a.status = 'pending'"
        "   AND (a.created_at, a.id) < (SELECT created_at, id FROM recovery_actions"
        "                               WHERE id = CAST(:x AS uuid)))) AS ahead"
        " FROM recovery_actions a JOIN recovery_cases c ON c.id = a.case_id"
        " WHERE c.user_id = :u AND a.kind = 'incentive' AND a.id <> CAST(:x AS uuid)",
        u=user_id, x=exclude, since=now - INCENTIVE_COOLDOWN)
    if row is not None and row["granted"]:
        return ("skip", "recent_incentive")
    if row is not None and row["ahead"]:
        return ("defer", now + LEASE)
    return None


def _t0_unsent(tx: Transaction, case_id: str, channel: str | None) -> bool:
    return bool(tx.scalar(
        "SELECT count(*) FROM recovery_actions WHERE case_id = CAST(:c AS uuid) AND step = 't0'"
        " AND channel IS NOT DISTINCT FROM :ch AND status IN ('pending', 'claimed')", c=case_id, ch=channel))


def _gate(tx: Transaction, row: dict[str, Any], case: Case, settings: CreatorSettings, now: datetime,
          batch_sends: set[tuple[str, str]]) -> tuple[str, Any] | None:
    """Why this row must not be claimed now: ("skip", reason) or ("defer", until); None = go."""
    kind, channel = row["kind"], row["channel"]
    if case.holdout and kind in ("nudge", "reminder", "incentive"):
        return ("skip", "holdout")  # measured, never messaged automatically (manual nudges still go)
    if case.status is not CaseStatus.OPEN:
        return ("skip", "case_closed")
    if window_passed(case.first_failure_at, now):
        if row["attempts"]:
            count("EffectsAbandoned")  # it was retrying through a Whop problem until the window closed
        return ("skip", "window_passed")
    if kind in MESSAGE_KINDS and not case.user_id:
        return ("skip", "no_user")
    if kind == "reminder" and _t0_unsent(tx, row["case_id"], channel):
        # A reminder never overtakes the T+0 it follows up (a late event can make both due).
        return ("defer", now + LEASE)
    if kind in ("nudge", "reminder"):
        until = quiet_until(now, settings)
        if until is not None:
            return ("defer", until)
        assert case.user_id is not None and channel is not None
        capped_until = _member_cap(tx, case.user_id, channel, row["action_id"], now)
        if capped_until is not None:
            return ("defer", capped_until)
        if (case.user_id, channel) in batch_sends:
            return ("defer", now + FREQUENCY_CAP)
        batch_sends.add((case.user_id, channel))
    if kind == "incentive" and case.user_id:
        return _incentive_verdict(tx, case.company_id, case.user_id, row["action_id"], now)
    return None


def claim(company_id: str, now: datetime, db: Database | None = None, *, case_id: str | None = None,
          kinds: tuple[str, ...] | None = None, limit: int = 50,
          stats: Stats | None = None) -> list[Claim]:
    stats = stats if stats is not None else Stats()
    claims: list[Claim] = []
    with tenant_transaction(company_id, db) as tx:
        settings = settings_store.get_settings(tx)
        rows = tx.query(_OWED, now=now, case_id=case_id, limit=limit,
                        kinds=",".join(kinds) if kinds else None)
        if not rows:
            return claims
        # Every case of the batch in one read, and every claim in one write (below).
        cases = {str(r["id"]): r for r in tx.query(
            "SELECT * FROM recovery_cases WHERE id = ANY(CAST(:ids AS uuid[]))",
            ids=sorted({r["case_id"] for r in rows}))}
        batch_sends: set[tuple[str, str]] = set()
        unwritten: list[Claim] = []
        for row in rows:
            if row["kind"] == "incentive":
                # The incentive limit reads other claims from the table: make ours visible first.
                _write_claims(tx, unwritten, now)
                unwritten = []
            case_row = cases[row["case_id"]]
            case = case_store.case_from_row(case_row)
            verdict = (recovery_exec.gate(tx, row, case, settings, now) if row["kind"] in RECOVERY_KINDS
                       else _gate(tx, row, case, settings, now, batch_sends))  # issue 18: its own rules
            if verdict is not None and verdict[0] == "skip":
                _settle(tx, row["action_id"], now, "skipped", "skipped", verdict[1])
                stats.skipped += 1
                count_send(row["kind"], row["channel"], "skipped")
                continue
            if verdict is not None:
                _keep_pending(tx, row["action_id"], verdict[1], None, "deferred")
                stats.deferred += 1
                continue
            c = Claim(action_id=row["action_id"], kind=row["kind"], step=row["step"],
                      channel=row["channel"], key=row["idempotency_key"],
                      attempts=row["attempts"] + 1, case_id=row["case_id"], case=case,
                      link_token=case_row["link_token"], settings=settings, token=str(uuid.uuid4()),
                      owed_at=row["owed_at"], copy=row["copy"], variant=measurement.variant_copy(tx, case))
            unwritten.append(c)
            claims.append(c)
        _write_claims(tx, unwritten, now)
    return claims


def _write_claims(tx: Transaction, claims: list[Claim], now: datetime) -> None:
    if not claims:
        return
    # The lease ends on the database's clock: an executor whose own clock is wrong (a day ahead,
    # say) must not hold rows for a day when it dies (issue 20).
    tx.execute("UPDATE recovery_actions a SET status = 'claimed',"
               " claimed_until = clock_timestamp() + CAST(:lease AS interval),"
               " claim_token = u.token, attempts = a.attempts + 1, updated_at = now()"
               " FROM unnest(CAST(:ids AS uuid[]), CAST(:tokens AS uuid[])) AS u(id, token)"
               " WHERE a.id = u.id",
               lease=LEASE, ids=[c.action_id for c in claims], tokens=[c.token for c in claims])


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


def message_copy(ctx: Context, c: Claim, now: datetime) -> dict[str, str]:
    """The message a claim sends, rendered as of when the row was owed."""
    link = f"{ctx.public_base_url}/r/{c.link_token}"
    # The variant's copy, else the decline class's default, with the product name (issue 10);
    # the push text carries the link itself.
    copy = measurement.message_copy(ctx.whop, _template(c.kind), c.case, link, c.owed_at or now, c.variant)
    return {"title": copy.title, "push": copy.push, "dm": copy.dm}


def pin_copy(ctx: Context, company_id: str, c: Claim, now: datetime, db: Database | None = None) -> None:
    """Store the message before its first attempt. Every retry then sends the same body under
    the same Idempotency-Key, even if the case changed in between (a late event moved its first
    failure, say): Whop refuses a reused key with other content, and a new key would send twice.
    An attach/retry row instead reads Whop and pins when it was first attempted (issue 18)."""
    if c.kind in RECOVERY_KINDS:
        recovery_exec.prepare(ctx, company_id, c, now, db)
        return
    if c.kind not in MESSAGE_KINDS or c.copy is not None:
        return
    c.copy = message_copy(ctx, c, now)
    with tenant_transaction(company_id, db) as tx:
        tx.execute("UPDATE recovery_actions SET result = result"
                   " || jsonb_build_object('copy', CAST(:copy AS jsonb))"
                   " WHERE id = CAST(:id AS uuid) AND claim_token = CAST(:token AS uuid)",
                   copy=json.dumps(c.copy), id=c.action_id, token=c.token)


def _pin_copies(ctx: Context, company_id: str, batch: list[Claim], now: datetime,
                db: Database | None) -> None:
    """pin_copy for a whole claim batch in one transaction. Should it fail, nothing is marked
    pinned and each row pins its own copy before its send (pin_copy), failing alone."""
    todo = [c for c in batch if c.kind in MESSAGE_KINDS and c.copy is None]
    if not todo:
        return
    try:
        copies = [message_copy(ctx, c, now) for c in todo]
        with tenant_transaction(company_id, db) as tx:
            tx.execute("UPDATE recovery_actions a SET result = a.result || jsonb_build_object('copy', u.copy)"
                       " FROM unnest(CAST(:ids AS uuid[]), CAST(:tokens AS uuid[]), CAST(:copies AS jsonb[]))"
                       " AS u(id, token, copy) WHERE a.id = u.id AND a.claim_token = u.token",
                       ids=[c.action_id for c in todo], tokens=[c.token for c in todo],
                       copies=[json.dumps(copy) for copy in copies])
    except OutOfTime:
        return  # each row pins its own copy before its send, where the budget is asked again
    except Exception:  # noqa: BLE001 - each row pins (and fails) alone then
        logger.warning("pinning a batch's copies failed; pinning row by row",
                       extra={"company_id": company_id})
        return
    for c, copy in zip(todo, copies, strict=True):
        c.copy = copy


def perform(ctx: Context, c: Claim, now: datetime) -> WhopResult:
    """Make the Whop call a claim owes. Reads that fail become a failed WhopResult."""
    try:
        if c.kind == "incentive":
            return _extend(ctx, c)
        if c.kind in RECOVERY_KINDS:
            return recovery_exec.perform(ctx, c)
        if c.kind == "reminder" and recovery_exec.payment_already_paid(ctx.whop, c.case):
            # issue 18: Whop already shows the payment paid (its success webhook is late).
            return WhopResult(ok=False, error_class="permanent", error_code="already_paid")
        copy = c.copy or message_copy(ctx, c, now)
        assert c.case.user_id is not None
        if c.channel == "push":
            experience = push_experience(ctx, c.case.company_id, c.settings)
            if experience is None:
                return WhopResult(ok=False, error_class="permanent", error_code="no_push_experience")
            return ctx.whop.send_push(experience, c.case.user_id, copy["title"], copy["push"], c.key)
        return ctx.whop.send_dm(c.case.user_id, c.case.company_id, copy["dm"], c.key)
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

# Every outcome UPDATE below is guarded by the claim it answers (WHERE … claim_token = :token):
# the row must still be claimed by this executor.


def _keep_pending(tx: Transaction, action_id: str, due: datetime, error_class: str | None,
                  detail: str | None, *, token: str | None = None, give_back_attempt: bool = False) -> int:
    """Back to pending until ``due``. With ``token``, only while this executor's claim holds.
    A claim released unperformed gives its attempt back. No error class keeps the previous one."""
    return tx.execute(
        "UPDATE recovery_actions SET status = 'pending', claimed_until = NULL, claim_token = NULL,"
        " due_at = :due, error_class = COALESCE(:ec, error_class), error_detail = :detail,"
        " attempts = attempts - CASE WHEN :give_back THEN 1 ELSE 0 END, updated_at = now()"
        " WHERE id = CAST(:id AS uuid) AND (CAST(:token AS uuid) IS NULL"
        "   OR (status = 'claimed' AND claim_token = CAST(:token AS uuid)))",
        due=due, ec=error_class, detail=detail, give_back=give_back_attempt, id=action_id, token=token)


def _settle(tx: Transaction, action_id: str, now: datetime, status: str, error_class: str | None = None,
            detail: str | None = None, result: dict[str, Any] | None = None, *,
            token: str | None = None) -> int:
    """Final outcome. With ``token``, only while this executor's claim holds (else 0 rows)."""
    # completed_at is the injected clock: the frequency cap and incentive limit compare with it.
    return tx.execute(
        "UPDATE recovery_actions SET status = :status, error_class = :ec, error_detail = :detail,"
        " result = result || CAST(:result AS jsonb), claimed_until = NULL, claim_token = NULL,"
        " completed_at = :now, updated_at = now()"
        " WHERE id = CAST(:id AS uuid) AND (CAST(:token AS uuid) IS NULL"
        "   OR (status = 'claimed' AND claim_token = CAST(:token AS uuid)))",
        status=status, ec=error_class, detail=detail, now=now, id=action_id, token=token,
        result=json.dumps(result or {}, default=str))


def _count_cause(cause: str) -> None:
    """One metric per cause of a send kept pending: alarms watch these names."""
    if cause == "credentials":
        count("WhopAuthRefused")
    elif cause == "rate_limited":
        count("WhopRateLimited")
    else:
        count("WhopUnavailable")


def _outcome(tx: Transaction, c: Claim, result: WhopResult, now: datetime) -> tuple[str, int]:
    """Apply the retry policy (module docstring); return (status, rows updated)."""
    if c.kind in RECOVERY_KINDS:
        recorded = recovery_exec.outcome(tx, c, result, now)
        if recorded is not None:
            return recorded
    if result.ok:
        touched = _settle(tx, c.action_id, now, "sent", result={**result.data, **c.extra}, token=c.token)
        if touched and c.kind == "incentive":
            tx.execute("UPDATE recovery_cases SET incentive_days = :d, incentive_cost_minor = :cost,"
                       " updated_at = now() WHERE id = CAST(:id AS uuid)",
                       d=c.extra.get("days", 0), cost=c.extra.get("cost_minor"), id=c.case_id)
        return "sent", touched
    cause = result.cause
    if cause == "member" or cause is None:
        status = "skipped" if result.error_code in ("no_push_experience", "already_paid") else "failed"
        return status, _settle(tx, c.action_id, now, status, result.error_class or "permanent",
                               result.error_code, token=c.token)
    _count_cause(cause)
    due = now + retry_delay(c.attempts, result.retry_after_s)
    if window_passed(c.case.first_failure_at, due):
        # The next try would come after the window: nothing may be sent then, so say so now.
        count("EffectsAbandoned")
        return "skipped", _settle(tx, c.action_id, now, "skipped", "skipped", "window_passed", token=c.token)
    return "retrying", _keep_pending(tx, c.action_id, due, cause, result.error_code, token=c.token)


def record(company_id: str, c: Claim, result: WhopResult, now: datetime,
           db: Database | None = None) -> str:
    """Write the outcome of a performed claim; return the row's new status, or "lost" when this
    executor no longer holds the claim (its lease ran out and another took the row)."""
    with tenant_transaction(company_id, db) as tx:
        status, touched = _outcome(tx, c, result, now)
    return status if touched else "lost"


def release(company_id: str, c: Claim, now: datetime, db: Database | None = None, *,
            attempted: bool, error: str | None = None) -> None:
    """Give a claimed row back (pending): after our own error, or unperformed when out of time."""
    due = now + retry_delay(c.attempts) if attempted else now
    with tenant_transaction(company_id, db) as tx:
        _keep_pending(tx, c.action_id, due, "error" if attempted else "released", error, token=c.token,
                      give_back_attempt=not attempted)


def execute_owed(ctx: Context, company_id: str, now: datetime, db: Database | None = None, *,
                 case_id: str | None = None, kinds: tuple[str, ...] | None = None,
                 limit: int = 50, out_of_time: Callable[[], bool] | None = None) -> Stats:
    """Claim, perform and record owed rows (of one case and/or some kinds, when given), a few at
    a time. Each row succeeds or fails alone. ``out_of_time`` is asked before every claim and
    every send: once it says yes, unperformed claims are released at once for the next run.
    A batch's outcomes are recorded together in one transaction (after its Whop calls: none is
    ever open across one); should that fail, each is recorded alone."""
    stats = Stats()
    done = 0
    if out_of_time is not None:
        ctx = replace(ctx, whop=cast(WhopPort, _Budgeted(ctx.whop, out_of_time)))
    while done < limit and not (out_of_time and out_of_time()):
        batch = claim(company_id, now, db, case_id=case_id, kinds=kinds,
                      limit=min(CLAIM_BATCH, limit - done), stats=stats)
        if not batch:
            break
        done += len(batch)
        # Claims whose Whop endpoint is resting (the breaker, issue 20) go back owed, unpinned:
        # rendering a copy reads Whop too.
        breaker = get_breaker()
        admitted = {c.action_id: breaker.admit(endpoint_of(c.kind, c.channel), now) for c in batch}
        held = [(c, until) for c in batch if (until := admitted[c.action_id].until) is not None]
        _hold_all(company_id, held, db, stats)
        batch = [c for c in batch if admitted[c.action_id].until is None]
        _pin_copies(ctx, company_id, batch, now, db)
        performed: list[tuple[Claim, WhopResult]] = []
        for index, c in enumerate(batch):
            if out_of_time and out_of_time():
                return _stop(company_id, performed, batch[index:], now, db, stats)
            try:
                endpoint = endpoint_of(c.kind, c.channel)
                # Asked again: another executor may have tripped it while this batch was pinned.
                until = None if admitted[c.action_id].probe else breaker.resting_until(endpoint, now)
                if until is not None:
                    _hold_all(company_id, [(c, until)], db, stats)
                    continue
                pin_copy(ctx, company_id, c, now, db)  # already pinned with the batch: no-op
                result = perform(ctx, c, now)
                breaker.record(endpoint, now, result)
                performed.append((c, result))
            except OutOfTime:  # before one of the row's Whop calls: nothing of it was sent
                return _stop(company_id, performed, batch[index:], now, db, stats)
            except Exception as exc:  # noqa: BLE001 - one row's failure must not strand the others
                _row_failed(company_id, c, now, db, stats, exc)
        _record_all(company_id, performed, now, db, stats)
    return stats


def _stop(company_id: str, performed: list[tuple[Claim, WhopResult]], unperformed: list[Claim],
          now: datetime, db: Database | None, stats: Stats) -> Stats:
    """Out of time: record what was performed, and give the rest back owed for the next run."""
    _record_all(company_id, performed, now, db, stats)
    for c in unperformed:
        release(company_id, c, now, db, attempted=False)
    return stats


def _hold_all(company_id: str, held: list[tuple[Claim, datetime]], db: Database | None,
              stats: Stats) -> None:
    """Claims the breaker kept from Whop: owed again (pending) from when it lets calls through,
    their attempt given back (none was made). One transaction for the batch."""
    if not held:
        return
    with tenant_transaction(company_id, db) as tx:
        for c, until in held:
            _keep_pending(tx, c.action_id, until, None, "circuit_open", token=c.token, give_back_attempt=True)
    stats.deferred += len(held)
    count("WhopCircuitOpen", len(held))


def _record_all(company_id: str, performed: list[tuple[Claim, WhopResult]], now: datetime,
                db: Database | None, stats: Stats) -> None:
    if not performed:
        return
    try:
        with tenant_transaction(company_id, db) as tx:
            outcomes = [_outcome(tx, c, result, now) for c, result in performed]
    except Exception:  # noqa: BLE001 - one row's write took the batch with it: each alone, then
        for c, result in performed:
            _execute_one(company_id, c, result, now, db, stats)
        return
    for (c, _), (status, touched) in zip(performed, outcomes, strict=True):
        outcome = status if touched else "lost"
        setattr(stats, outcome, getattr(stats, outcome) + 1)
        count_send(c.kind, c.channel, outcome)


def _row_failed(company_id: str, c: Claim, now: datetime, db: Database | None, stats: Stats,
                exc: Exception) -> None:
    stats.errors += 1
    count("EffectRowFailed")
    logger.warning("effect row failed; released for a later try",
                   extra={"company_id": company_id, "action_id": c.action_id,
                          "error_class": type(exc).__name__})
    try:
        release(company_id, c, now, db, attempted=True, error=type(exc).__name__)
    except Exception:  # noqa: BLE001 - the lease still ends: the row is re-claimed then
        logger.warning("release failed; the lease will free the row",
                       extra={"company_id": company_id, "action_id": c.action_id})


def _execute_one(company_id: str, c: Claim, result: WhopResult, now: datetime, db: Database | None,
                 stats: Stats) -> None:
    try:
        outcome = record(company_id, c, result, now, db)
    except Exception as exc:  # noqa: BLE001 - one row's failure must not strand the others
        _row_failed(company_id, c, now, db, stats, exc)
        return
    setattr(stats, outcome, getattr(stats, outcome) + 1)
    count_send(c.kind, c.channel, outcome)


def default_context() -> Context:
    from chalicelib.config import get_config
    from chalicelib.whop_client import get_whop

    cfg = get_config()
    return Context(whop=get_whop(), app_id=cfg.WHOP_APP_ID or "",
                   public_base_url=cfg.PUBLIC_BASE_URL or "")
