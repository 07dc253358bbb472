"""Smart retry in the creator API.

- ``POST …/cases/{case_id}/retry``: a creator retries the case's payment now
  (``POST /payments/{id}/retry`` at Whop, the payment's original method). Once per payment,
  ever (the payday retry and this share one ledger key); 409 when not possible: the case is not
  open or past its window, held out, has no payment, Rebound already retried it (or attached a
  saved card), or Whop says it is paid or not retryable, or refuses the retry. Admin access is
  re-checked with Whop, uncached (``@destructive``): it charges a member's card.
The Whop permissions a recent attach or retry was refused for are in ``GET …/settings``
(``whop_permissions_missing``, read-only): the dashboard's warning.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chalicelib import effects
from chalicelib.api import CreatorContext, destructive
from chalicelib.api.actions import _locked_case
from chalicelib.api.cases import parse_case_id
from chalicelib.api.schemas.actions import ActionOutcome, RetryResult
from chalicelib.attribution import window_passed
from chalicelib.db import Transaction
from chalicelib.errors import Conflict, ServiceUnavailable
from chalicelib.observability import count, logger
from chalicelib.recovery_policy import KIND_RETRY, STEP_MANUAL, retry_key
from chalicelib.store import ledger as ledger_store
from chalicelib.store import recovery as recovery_store
from chalicelib.store import views as view_store
from chalicelib.tenancy import tenant_transaction
from chalicelib.whop import Payment, WhopError, WhopNotFound, WhopRetryableError
from chalicelib.whop_client import get_whop

_ALREADY = "Rebound already retried this payment: a payment is retried once"


@destructive  # it charges a member's card: admin access re-checked with Whop, uncached
def retry(ctx: CreatorContext, case_id: str) -> RetryResult:
    """Retry the case's payment now.

    Raises
    ------
    Conflict
        Not possible (409, with the reason): see the module docstring.
    ServiceUnavailable
        Whop could not be asked about the payment (503).
    """
    cid = parse_case_id(case_id)
    with tenant_transaction(ctx.company_id) as tx:
        payment_id = _retryable_case(tx, ctx.company_id, _locked_case(tx, cid), ctx.now)
    payment = _read_payment(payment_id)  # outside any transaction: Whop may take seconds
    if payment.paid:
        raise Conflict("Whop already shows this payment paid")
    if not payment.retryable:
        raise Conflict("Whop says this payment cannot be retried now (it is not open, or its "
                       "membership is no longer active, trialing or past due)")
    with tenant_transaction(ctx.company_id) as tx:
        if _retryable_case(tx, ctx.company_id, _locked_case(tx, cid), ctx.now) != payment_id:
            raise Conflict("the case's payment changed while asking Whop; try again")
        _owe(tx, ctx, cid, payment_id)
    try:
        effects.execute_owed(effects.default_context(), ctx.company_id, ctx.now, case_id=cid,
                             kinds=(KIND_RETRY,))
    except Exception:  # noqa: BLE001 - the row is committed: the tick performs it
        logger.exception("manual retry deferred to the next tick", extra={"case_id": cid})
    count("ManualRetries")
    with tenant_transaction(ctx.company_id) as tx:
        action = recovery_store.row_by_key(tx, retry_key(ctx.company_id, payment_id))
        case = view_store.case_view(tx, cid)
    assert action is not None and case is not None
    if action["status"] == "failed":
        raise Conflict(_refusal(action))
    result = action["result"] if isinstance(action["result"], dict) else {}
    status = "pending" if action["status"] == "claimed" else action["status"]
    return RetryResult(
        case_id=cid, action=ActionOutcome(id=action["id"], kind=action["kind"], channel=None, status=status,
                                          error=action["error_detail"] if status != "sent" else None),
        payment_status=result.get("status") if status == "sent" else None,
        retried_at=case["retried_at"], retry_reason=case["retry_reason"])


def _retryable_case(tx: Transaction, company_id: str, row: dict[str, Any], now: datetime) -> str:
    """The payment to retry, or 409 saying why this case's payment cannot be retried."""
    if row["status"] != "open" or window_passed(row["first_failure_at"], now):
        raise Conflict(f"case is {row['status'] if row['status'] != 'open' else 'past its window'}: "
                       "nothing is retried")
    if row["holdout"]:
        raise Conflict("case is held out: Rebound does nothing for it, so the lift stays measurable")
    payment_id = tx.scalar("SELECT payment_id FROM recovery_cases WHERE id = CAST(:id AS uuid)", id=row["id"])
    if not payment_id:
        raise Conflict("case has no payment to retry")
    if row["retried_at"] is not None:
        raise Conflict(_ALREADY if row["retry_reason"] != "card_updated"
                       else "Whop already retried this payment on the card the member saved")
    owed = recovery_store.row_by_key(tx, retry_key(company_id, payment_id), lock=True)
    if owed is not None and (owed["status"] not in ("pending", "skipped") or owed["attempts"] > 0):
        raise Conflict(_ALREADY)
    return str(payment_id)


def _owe(tx: Transaction, ctx: CreatorContext, case_id: str, payment_id: str) -> None:
    """The retry row, due now and naming the creator: a payday retry still owed (or skipped) for
    this payment becomes it, so the payment is still retried once."""
    key = retry_key(ctx.company_id, payment_id)
    if recovery_store.row_by_key(tx, key) is None:
        ledger_store.add_action(tx, case_id=case_id, company_id=ctx.company_id, kind=KIND_RETRY,
                                step=STEP_MANUAL, idempotency_key=key, due_at=ctx.now, actor=ctx.user_id)
        return
    tx.execute("UPDATE recovery_actions SET step = :step, actor = :actor, status = 'pending', due_at = :now,"
               " owed_at = :now, attempts = 0, error_class = NULL, error_detail = NULL, completed_at = NULL,"
               " claimed_until = NULL, claim_token = NULL, updated_at = now() WHERE idempotency_key = :k",
               step=STEP_MANUAL, actor=ctx.user_id, now=ctx.now, k=key)


def _read_payment(payment_id: str) -> Payment:
    try:
        return get_whop().retrieve_payment(payment_id)
    except WhopRetryableError:
        raise ServiceUnavailable("cannot read the payment from Whop right now, retry shortly",
                                 headers={"Retry-After": "5"}) from None
    except WhopNotFound:
        raise Conflict("Whop does not know this payment") from None
    except WhopError as exc:
        if exc.status == 403:
            raise Conflict("Whop refused to show the payment: grant the app payment:basic:read") from None
        logger.warning("whop refused a payment read", extra={"error_code": exc.error_code})
        raise ServiceUnavailable("cannot read the payment from Whop right now",
                                 headers={"Retry-After": "5"}) from None


def _refusal(action: dict[str, Any]) -> str:
    result = action["result"] if isinstance(action["result"], dict) else {}
    if action["error_detail"] == "permission_missing":
        return f"Whop refused the retry: grant the app the {result.get('permission')} permission"
    return "Whop refused the retry (a payment can be retried once, while its membership is active)"
