"""``POST …/cases/{case_id}/…``: what a creator can do to a case. Each action is idempotent and
leaves a ledger row (``recovery_actions``) naming the creator who did it (``actor``).

| action                | allowed on                        | effect                                       |
|-----------------------|-----------------------------------|----------------------------------------------|
| ``nudge``             | open cases inside their window    | one ``manual_nudge`` per enabled channel,    |
|                       |                                   | sent now (one per case per hour, else 429)   |
| ``cancel``            | open (cancelled: 200, unchanged)  | case → cancelled, owed rows → skipped        |
| ``cancel-membership`` | open, or cancelled by the creator | Whop cancel at period end, then as ``cancel``|
| ``terminate``         | open or cancelled                 | Whop cancel now, then as ``cancel``          |
Anything else answers 409, whatever the cooldown. No database transaction stays open while Whop
is called; the Whop calls carry idempotency keys derived from the case id, so a retried request
never cancels twice.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from chalicelib import effects
from chalicelib.api import BadGateway, CreatorContext, destructive
from chalicelib.api.cases import parse_case_id
from chalicelib.api.schemas.actions import ActionOutcome, NudgeResult, TerminateRequest
from chalicelib.api.schemas.cases import CaseSummary
from chalicelib.attribution import window_passed
from chalicelib.db import Transaction
from chalicelib.errors import Conflict, NotFound, ServiceUnavailable, TooManyRequests
from chalicelib.observability import count, logger
from chalicelib.reminders import channels
from chalicelib.store import cases as case_store
from chalicelib.store import ledger as ledger_store
from chalicelib.store import settings as settings_store
from chalicelib.store import views as view_store
from chalicelib.tenancy import tenant_transaction
from chalicelib.whop import WhopResult
from chalicelib.whop_client import get_whop

NUDGE_COOLDOWN = timedelta(hours=1)
TERMINAL = ("recovered", "expired")


class NudgeCooldown(TooManyRequests):
    code = "nudge_cooldown"


def _locked_case(tx: Transaction, case_id: str) -> dict[str, Any]:
    row = view_store.case_view(tx, case_id, lock=True)
    if row is None:
        raise NotFound("case not found")
    return row


def _summary(row: dict[str, Any]) -> CaseSummary:
    return CaseSummary.model_validate(row)


# --- nudge --------------------------------------------------------------------------------------


def nudge(ctx: CreatorContext, case_id: str) -> NudgeResult:
    """Send a manual nudge now on every enabled channel.

    Raises
    ------
    Conflict
        The case is not open (or its window has passed, or it has no member to message), or the
        company disabled every channel (409, before the cooldown is looked at).
    NudgeCooldown
        A manual nudge went out for this case less than an hour ago (429 with Retry-After).
    """
    cid = parse_case_id(case_id)
    keys = _owe_manual_nudge(ctx, cid)
    try:
        # Only the manual rows: anything else the case owes keeps its own schedule and rules.
        effects.execute_owed(effects.default_context(), ctx.company_id, ctx.now, case_id=cid,
                             kinds=("manual_nudge",))
    except Exception:  # noqa: BLE001 - the rows are committed: the reminder tick sends them later
        logger.exception("manual nudge deferred to the next tick", extra={"case_id": cid})
    with tenant_transaction(ctx.company_id) as tx:
        rows = ledger_store.actions_by_keys(tx, keys)
    count("ManualNudges")
    outcomes = [ActionOutcome(id=r["id"], kind=r["kind"], channel=r["channel"],
                              status="pending" if r["status"] == "claimed" else r["status"],
                              error=r["error_detail"] if r["status"] != "sent" else None) for r in rows]
    return NudgeResult(case_id=cid, actions=outcomes)


def _owe_manual_nudge(ctx: CreatorContext, case_id: str) -> list[str]:
    """Record the pending manual-nudge rows (one per channel); return their idempotency keys."""
    with tenant_transaction(ctx.company_id) as tx:
        row = _locked_case(tx, case_id)  # the lock serialises two clicks on the same case
        if row["status"] != "open" or window_passed(row["first_failure_at"], ctx.now):
            raise Conflict(f"case is {row['status'] if row['status'] != 'open' else 'past its window'}: "
                           "nothing can be sent")
        if not row["user_id"]:
            raise Conflict("case has no member to message")
        enabled = channels(settings_store.get_settings(tx))
        if not enabled:
            raise Conflict("push and DM are both disabled in settings: enable one to nudge")
        wait = ledger_store.manual_nudge_wait_s(tx, case_id, NUDGE_COOLDOWN)
        if wait > 0:
            raise NudgeCooldown("a manual nudge was sent for this case in the last hour",
                                headers={"Retry-After": str(wait)})
        if row["holdout"] and not row["contaminated"]:
            # It stays in the holdout (intention to treat); the lift says how many were nudged.
            case_store.mark_contaminated(tx, case_id)
        step = f"m{uuid.uuid4().hex}"  # the cooldown, not the key, stops a second nudge
        keys = []
        for channel in enabled:
            key = f"{case_id}:{step}:{channel}"
            ledger_store.add_action(tx, case_id=case_id, company_id=ctx.company_id, kind="manual_nudge",
                                    step=step, channel=channel, idempotency_key=key, due_at=ctx.now,
                                    actor=ctx.user_id)
            keys.append(key)
    return keys


# --- cancel -------------------------------------------------------------------------------------


def cancel(ctx: CreatorContext, case_id: str) -> CaseSummary:
    """Stop the case: no more nudges, reminders or incentives. Idempotent."""
    cid = parse_case_id(case_id)
    with tenant_transaction(ctx.company_id) as tx:
        row = _locked_case(tx, cid)
        if row["status"] == "cancelled":
            return _summary(row)
        if row["status"] in TERMINAL:
            raise Conflict(f"case is {row['status']}: it cannot be cancelled")
        _close(tx, ctx, cid, "creator_cancelled", "creator_cancel", {})
        return _summary(_locked_case(tx, cid))


def _close(tx: Transaction, ctx: CreatorContext, case_id: str, reason: str, kind: str,
           result: dict[str, Any]) -> None:
    case_store.close_case_by_creator(tx, case_id, close_reason=reason, user_id=ctx.user_id, now=ctx.now)
    ledger_store.add_action(tx, case_id=case_id, company_id=ctx.company_id, kind=kind, step=kind,
                            status="done", idempotency_key=f"{case_id}:{kind}", actor=ctx.user_id,
                            result=result)


# --- membership cancellation at Whop ------------------------------------------------------------


@destructive  # issue 9: admin access re-checked with Whop, uncached
def cancel_membership(ctx: CreatorContext, case_id: str) -> CaseSummary:
    """Cancel the membership at the end of its period at Whop, then cancel the case."""
    return _end_membership(ctx, parse_case_id(case_id), at_period_end=True)


@destructive  # issue 9: admin access re-checked with Whop, uncached
def terminate(ctx: CreatorContext, case_id: str) -> CaseSummary:
    """End the member's access now at Whop (body must be ``{"confirm": true}``), then cancel the case."""
    cid = parse_case_id(case_id)
    ctx.parse_body(TerminateRequest)
    return _end_membership(ctx, cid, at_period_end=False)


def _end_membership(ctx: CreatorContext, case_id: str, *, at_period_end: bool) -> CaseSummary:
    kind, reason = (("cancel_membership", "membership_cancelled") if at_period_end
                    else ("terminate", "membership_terminated"))
    with tenant_transaction(ctx.company_id) as tx:
        row = _locked_case(tx, case_id)
        if row["close_reason"] == reason:
            return _summary(row)  # done before: nothing to repeat
        _check_allowed(row, at_period_end)
        membership_id = row["membership_id"]
    # Outside any transaction: Whop may take seconds, and its idempotency key makes a retry safe.
    key = f"{case_id}:{'cancel-membership' if at_period_end else 'terminate'}"
    result = get_whop().cancel_membership(membership_id, at_period_end=at_period_end, idempotency_key=key)
    if not result.ok:
        _record_failure(ctx, case_id, kind, result)
        _raise_for(result)
    count("MembershipCancelled" if at_period_end else "MembershipTerminated")
    with tenant_transaction(ctx.company_id) as tx:
        row = _locked_case(tx, case_id)
        detail = {"at_period_end": at_period_end, "membership_id": membership_id}
        if row["status"] in TERMINAL:
            # Recovered while Whop was busy: the membership is cancelled, the case keeps its outcome.
            ledger_store.add_action(tx, case_id=case_id, company_id=ctx.company_id, kind=kind, step=kind,
                                    status="done", idempotency_key=f"{case_id}:{kind}", actor=ctx.user_id,
                                    result=detail)
            return _summary(row)
        _close(tx, ctx, case_id, reason, kind, detail)
        return _summary(_locked_case(tx, case_id))


def _check_allowed(row: dict[str, Any], at_period_end: bool) -> None:
    status, reason = row["status"], row["close_reason"]
    if status in TERMINAL:
        raise Conflict(f"case is {status}: the membership is not changed from here")
    if at_period_end and status == "cancelled" and reason != "creator_cancelled":
        raise Conflict(f"case is cancelled ({reason}): the membership is already ending")


def _record_failure(ctx: CreatorContext, case_id: str, kind: str, result: WhopResult) -> None:
    with tenant_transaction(ctx.company_id) as tx:
        ledger_store.add_action(tx, case_id=case_id, company_id=ctx.company_id, kind=kind, step=kind,
                                status="failed", idempotency_key=f"{case_id}:{kind}:failed:{uuid.uuid4()}",
                                actor=ctx.user_id,
                                result={"error_code": result.error_code, "status_code": result.status_code})


def _raise_for(result: WhopResult) -> None:
    if result.retryable:
        retry = max(1, round(result.retry_after_s)) if result.retry_after_s else 5
        raise ServiceUnavailable("Whop is unavailable, retry shortly", headers={"Retry-After": str(retry)})
    # Whop's own text may name the member or echo input: it goes to the logs (code only), and the
    # creator gets our message (issue 9).
    logger.warning("whop refused a membership change",
                   extra={"error_code": result.error_code, "status_code": result.status_code})
    raise BadGateway("Whop refused to change this membership; check it in your Whop dashboard and retry")
