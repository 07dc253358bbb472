"""Executing smart retry's ledger rows: the effects executor's hooks for the kinds
``card_attach`` and ``payment_retry``. The executor claims, calls and records them like any
send (leases, the row's Idempotency-Key, outcomes guarded by the claim); these hooks add:

- ``gate`` (claim time): ``recovery_policy.claim_verdict``: holdout, closed, window, the
  ``smart_retry`` setting, and for the payday retry its class, a saved card, 24 h left, quiet hours;
- ``prepare`` (before the call): on a row's first attempt, Whop is read (the membership and/or the
  payment) and ``recovery_policy`` decides skip / defer / go; going pins ``attempted_at`` in
  the row. A row that was attempted before (a crash between the call and its
  record, a lost answer) skips the reads and resends the same request under the same key, so
  Whop replays its first answer instead of acting twice;
- ``perform``: ``PATCH /memberships/{id}`` or ``POST /payments/{id}/retry``;
- ``outcome``: sent → the case's ``retried_at``/``retry_reason`` and credit; a 403 is final
  (``permission_missing``, with the permission, for the dashboard and the health check); any
  other 4xx is final with Whop's reason; 401/429/5xx/timeouts fall through to the executor's
  retry policy (backoff by cause, until the window closes).

``payment_already_paid`` serves the reminders: the payment is re-read before each reminder, and
none goes out for a payment Whop already shows paid (a late success webhook).
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

from chalicelib.claims import Claim, Context, keep_pending, settle
from chalicelib.db import Transaction
from chalicelib.db_pool import Database
from chalicelib.models import Case, CreatorSettings
from chalicelib.observability import count, logger
from chalicelib.recovery_policy import (
    GO,
    KIND_ATTACH,
    KIND_RETRY,
    PERMISSION,
    READ_PERMISSION,
    STEP_CARD,
    STEP_MANUAL,
    STEP_PAYDAY,
    PaymentFacts,
    Verdict,
    attach_verdict,
    claim_verdict,
    retry_key,
    retry_verdict,
)
from chalicelib.store import recovery as recovery_store
from chalicelib.tenancy import tenant_transaction
from chalicelib.whop import Payment, WhopError, WhopPermanentError, WhopPort, WhopResult

REASON = {STEP_CARD: "card_updated", STEP_PAYDAY: "payday", STEP_MANUAL: "manual"}
_MAX_REASON = 300


def facts(payment: Payment) -> PaymentFacts:
    return PaymentFacts(status=payment.status, retryable=payment.retryable, paid=payment.paid,
                        next_payment_attempt_at=payment.next_payment_attempt_at,
                        payment_method_id=payment.payment_method_id)


# --- claim time -----------------------------------------------------------------------------------


def gate(tx: Transaction, row: dict[str, Any], case: Case, settings: CreatorSettings,
         now: datetime) -> tuple[str, Any] | None:
    """Why this attach/retry row must not be claimed now (``claim_gate._gate``'s contract)."""
    kind, step = row["kind"], row["step"]
    if kind == KIND_RETRY and (case.payment_id is None
                               or retry_key(case.company_id, case.payment_id) != row["idempotency_key"]):
        return ("skip", "payment_changed")  # once per payment: this row was owed for another one
    card_saved = kind == KIND_RETRY and step == STEP_PAYDAY and recovery_store.card_saved_for_case(
        tx, row["case_id"])
    verdict = claim_verdict(kind, step, case, settings, now, card_saved=card_saved)
    if verdict[0] == "go":
        return None
    if verdict == ("skip", "window_passed") and row["attempts"]:
        count("EffectsAbandoned")
    return verdict


# --- before the call -------------------------------------------------------------------------------


def prepare(ctx: Context, company_id: str, c: Claim, now: datetime, db: Database | None) -> None:
    """Decide with Whop's view of the payment (first attempt only), then pin ``attempted_at``.
    Sets ``c.extra``: ``verdict`` (skip/defer), ``read_error`` (a failed read), or the row's
    ``payment_method_id`` and ``attempted_at`` for the call and the record."""
    if "prepared" in c.extra:
        return
    c.extra["prepared"] = True
    with tenant_transaction(company_id, db) as tx:
        state = recovery_store.claimed_state(tx, c.action_id, c.token)
    if state is None:
        c.extra["verdict"] = ("skip", "claim_lost")  # recorded as lost: another executor has it
        return
    stored = state["result"] if isinstance(state["result"], dict) else {}
    c.extra["payment_method_id"] = stored.get("payment_method_id")
    if stored.get("attempted_at"):
        c.extra["attempted_at"] = stored["attempted_at"]  # a repeat: the same request, the same key
        return
    try:
        verdict = _whop_verdict(ctx.whop, c, now)
    except WhopError as exc:
        c.extra["read_error"] = exc
        return
    if verdict != GO:
        c.extra["verdict"] = verdict
        return
    with tenant_transaction(company_id, db) as tx:
        attempted = recovery_store.pin_attempt(tx, c.action_id, c.token, now)
    if attempted is None:
        c.extra["verdict"] = ("skip", "claim_lost")
        return
    c.extra["attempted_at"] = attempted.isoformat()


def _whop_verdict(whop: WhopPort, c: Claim, now: datetime) -> Verdict:
    case = c.case
    if c.kind == KIND_ATTACH:
        method = c.extra.get("payment_method_id")
        if not isinstance(method, str):
            return ("skip", "no_payment_method")
        membership = whop.retrieve_membership(case.membership_id)
        payment = whop.retrieve_payment(case.payment_id) if case.payment_id else None
        return attach_verdict(facts(payment) if payment else None, membership.status, method)
    assert case.payment_id is not None  # the gate skipped rows without one
    return retry_verdict(c.step, case, c.settings, now, facts(whop.retrieve_payment(case.payment_id)))


# --- the call ----------------------------------------------------------------------------------------


def perform(ctx: Context, c: Claim) -> WhopResult:
    if "verdict" in c.extra:
        return WhopResult(ok=False, error_class="permanent", error_code="not_performed")
    error = c.extra.get("read_error")
    if isinstance(error, WhopError):
        return WhopResult(ok=False, status_code=error.status, error_code=error.error_code,
                          error_class="permanent" if isinstance(error, WhopPermanentError) else "retryable",
                          retry_after_s=error.retry_after_s,
                          data={"error_message": error.whop_message} if error.whop_message else {})
    if c.kind == KIND_ATTACH:
        return ctx.whop.attach_payment_method(c.case.membership_id, str(c.extra["payment_method_id"]), c.key)
    assert c.case.payment_id is not None
    return ctx.whop.retry_payment(c.case.payment_id, c.key)


# --- the record ----------------------------------------------------------------------------------------


def outcome(tx: Transaction, c: Claim, result: WhopResult, now: datetime) -> tuple[str, int] | None:
    """Record what came of an attach/retry row; None leaves it to the executor's retry policy
    (401, 429, 5xx, timeouts: pending with backoff by cause, skipped once the window closes)."""
    verdict = c.extra.get("verdict")
    keep = {k: c.extra[k] for k in ("payment_method_id", "attempted_at") if c.extra.get(k)}
    if verdict is not None:
        if verdict[0] == "defer":
            return "deferred", keep_pending(tx, c.action_id, verdict[1], None, "deferred", token=c.token,
                                             give_back_attempt=True)
        return "skipped", settle(tx, c.action_id, now, "skipped", "skipped", str(verdict[1]), token=c.token)
    if result.ok:
        touched = settle(tx, c.action_id, now, "sent", result={**_answer(result), **keep}, token=c.token)
        if touched:
            recovery_store.credit_case(tx, c.case_id, attempted_at=keep.get("attempted_at"),
                                       reason=REASON.get(c.step))
        return "sent", touched
    reason = _whop_reason(result)
    if result.status_code == 403:
        permission = READ_PERMISSION if "read_error" in c.extra else PERMISSION[c.kind]
        count("WhopPermissionMissing")
        logger.warning("whop refused a smart retry for a missing permission",
                       extra={"company_id": c.case.company_id, "action_id": c.action_id,
                              "permission": permission})
        return "failed", settle(tx, c.action_id, now, "failed", "permission", "permission_missing",
                                 result={"permission": permission, "status_code": 403, "whop_reason": reason,
                                         **keep}, token=c.token)
    if result.cause == "member":
        return "failed", settle(tx, c.action_id, now, "failed", "permanent", result.error_code,
                                 result={"status_code": result.status_code, "whop_reason": reason, **keep},
                                 token=c.token)
    return None


def _answer(result: WhopResult) -> dict[str, Any]:
    """Whop's answer worth keeping for the timeline: the payment's status after a retry, or the
    membership's after an attach (ids, statuses and Whop's failure text only)."""
    keep = ("status", "substatus", "failure_message", "membership_status", "payments_failed")
    return {k: result.data[k] for k in keep if result.data.get(k) is not None}


def _whop_reason(result: WhopResult) -> str | None:
    message = result.data.get("error_message")
    return str(message)[:_MAX_REASON] if message else None


# --- reminders: re-read the payment first ------------------------------------------------------------

PAID_CACHE_S = 300.0
_paid: dict[str, float] = {}  # payment id -> until when "paid" is trusted (paid is final)
_paid_lock = threading.Lock()


def payment_already_paid(whop: WhopPort, case: Case) -> bool:
    """True when Whop already shows the case's payment paid (its success webhook is late). A read
    that fails says nothing: the reminder goes, as it did before this check existed."""
    if case.payment_id is None:
        return False
    with _paid_lock:
        if _paid.get(case.payment_id, 0.0) > time.monotonic():
            return True
    try:
        paid = whop.retrieve_payment(case.payment_id).paid
    except WhopError:
        return False
    if paid:
        with _paid_lock:
            if len(_paid) > 5000:
                _paid.clear()
            _paid[case.payment_id] = time.monotonic() + PAID_CACHE_S
    return paid


def clear_paid_cache() -> None:
    with _paid_lock:
        _paid.clear()
