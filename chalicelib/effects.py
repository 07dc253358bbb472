"""Executing owed ledger rows: claim → call Whop (with the row's Idempotency-Key) → record.

The three steps are separate transactions on purpose: no database transaction stays open across
an HTTP call. Claiming (which rows may go now) is ``claim_gate``; a claim, its lease and the
writes the lease guards are ``claims``; what an answer from Whop becomes (sent, failed, skipped,
or retrying until when) is ``retry_policy``; smart retry's rows add the hooks of
``recovery_exec``. This module performs a claim (renders and pins the message, asks the circuit
breaker, calls Whop) and records its outcome. The same Idempotency-Key makes Whop apply a row
once, however many times a crash makes the executor repeat it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, cast

from chalicelib import measurement, recovery_exec
from chalicelib.breaker import endpoint_of, get_breaker
from chalicelib.claim_gate import claim
from chalicelib.claims import MESSAGE_KINDS, Claim, Context, Stats, count_send, keep_pending, settle
from chalicelib.db import Transaction
from chalicelib.db_pool import Database
from chalicelib.models import CreatorSettings
from chalicelib.observability import count, logger
from chalicelib.recovery_policy import RECOVERY_KINDS
from chalicelib.retry_policy import decide, retry_delay
from chalicelib.tenancy import tenant_transaction
from chalicelib.whop import WhopError, WhopPermanentError, WhopPort, WhopResult

EXPERIENCE_CACHE_S = 600.0


CLAIM_BATCH = 10  # rows claimed at a time: a tick out of time strands at most this many leases


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
    An attach/retry row instead reads Whop and pins when it was first attempted."""
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
            # Whop already shows the payment paid (its success webhook is late).
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


def _count_cause(cause: str) -> None:
    """One metric per cause of a send kept from Whop: alarms watch these names."""
    if cause == "credentials":
        count("WhopAuthRefused")
    elif cause == "rate_limited":
        count("WhopRateLimited")
    else:
        count("WhopUnavailable")


def _outcome(tx: Transaction, c: Claim, result: WhopResult, now: datetime) -> tuple[str, int]:
    """Record what ``retry_policy.decide`` makes of Whop's answer; return (status, rows updated)."""
    if c.kind in RECOVERY_KINDS:
        recorded = recovery_exec.outcome(tx, c, result, now)
        if recorded is not None:
            return recorded
    decision = decide(result, attempts=c.attempts, now=now, first_failure_at=c.case.first_failure_at)
    if decision.cause is not None:
        _count_cause(decision.cause)
    if decision.abandoned:
        count("EffectsAbandoned")  # it was retrying through a Whop problem until the window closed
    if decision.status == "sent":
        touched = settle(tx, c.action_id, now, "sent", result={**result.data, **c.extra}, token=c.token)
        if touched and c.kind == "incentive":
            tx.execute("UPDATE recovery_cases SET incentive_days = :d, incentive_cost_minor = :cost,"
                       " updated_at = now() WHERE id = CAST(:id AS uuid)",
                       d=c.extra.get("days", 0), cost=c.extra.get("cost_minor"), id=c.case_id)
        return "sent", touched
    if decision.status == "retrying":
        assert decision.due is not None
        return "retrying", keep_pending(tx, c.action_id, decision.due, decision.error_class, decision.detail,
                                        token=c.token)
    return decision.status, settle(tx, c.action_id, now, decision.status, decision.error_class,
                                   decision.detail, token=c.token)


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
        keep_pending(tx, c.action_id, due, "error" if attempted else "released", error, token=c.token,
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
        # Claims whose Whop endpoint is resting (the breaker) go back owed, unpinned:
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
            keep_pending(tx, c.action_id, until, None, "circuit_open", token=c.token, give_back_attempt=True)
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
