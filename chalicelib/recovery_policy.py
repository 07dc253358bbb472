"""Smart retry: what Rebound does to the charge itself, and when. Pure: no database,
no HTTP; time is passed in.

| signal                 | action                     | when                 | guards                       |
|------------------------|----------------------------|----------------------|------------------------------|
| the member saves a     | attach it to the           | at once: owed by the | an open case of that member  |
| payment method (setup_ | membership (PATCH          | consumer, run after  | in that company, not held    |
| intent.succeeded), or  | /memberships/{id}): Whop   | the batch; once per  | out, smart_retry on;         |
| saved one shortly      | retries the open past-due  | (membership, card)   | membership active, trialing  |
| before the failure     | payment on it              |                      | or past due; payment not     |
|                        |                            |                      | paid, not on that card       |
|                        |                            |                      | already                      |
| a soft decline         | one POST                   | the next payday      | not held out, smart_retry    |
| (card_soft) and no     | /payments/{id}/retry (the  | slot: the 1st or     | on, no card saved, Whop's    |
| card saved             | original method)           | 15th, 09:00 company  | own attempts over,           |
|                        |                            | time, out of quiet   | retryable, >= 24 h of the    |
|                        |                            | hours                | window left; once per        |
|                        |                            |                      | payment, ever                |
| a creator's Retry      | the same POST .../retry    | now                  | open, in its window, not     |
| payment                |                            |                      | held out, never retried by   |
|                        |                            |                      | Rebound, Whop says           |
|                        |                            |                      | retryable; else 409          |
| card_hard without a    | nothing                    |                      | the same card cannot work,   |
| new card,              |                            |                      | or the bank needs the member |
| authentication (3-D    |                            |                      |                              |
| Secure)                |                            |                      |                              |

Why one retry and not eight: Whop already retries a failed renewal on its own schedule; each
extra attempt on a card that was just declined costs a network fee and declines are scored by
issuers (repeated attempts on the same card raise the fraud/decline risk of the next ones), and a
member whose card was declined for lack of funds is most likely to have funds right after payday.
One well-timed attempt after Whop's own have ended adds what Whop does not; a saved card is
charged at once because that is the member telling us the old card is done.

Credit for a recovery (``recovered_by``): ``rebound_retry`` when the success follows a
Rebound attach or retry of that case that Whop accepted (by the time Rebound asked, with
``CREDIT_SKEW`` of tolerance between Whop's clock and the database's), else ``after_click`` when
the member followed a Rebound link before the success, else ``other`` (Whop's own retry, or the
member alone). ``chalicelib.store.recovery.recovered_by_sql`` applies the rule (in SQL, where the
ledger is); tests/test_credit_rule.py holds it to this statement of it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from chalicelib.attribution import window_passed
from chalicelib.models import Case, CaseStatus, CreatorSettings
from chalicelib.reminders import company_zone, quiet_until

KIND_ATTACH = "card_attach"
KIND_RETRY = "payment_retry"
RECOVERY_KINDS = (KIND_ATTACH, KIND_RETRY)
STEP_CARD = "card_updated"
STEP_PAYDAY = "payday"
STEP_MANUAL = "manual"

RetryReason = Literal["card_updated", "payday", "manual"]
RecoveredBy = Literal["rebound_retry", "after_click", "other"]

PAYDAYS = (1, 15)  # day of month
PAYDAY_TIME = time(9, 0)  # company time
MIN_WINDOW_LEFT = timedelta(hours=24)
# A card saved this long before the first failure may still be the one the member means.
SAVED_CARD_LOOKBACK = timedelta(days=14)
CREDIT_SKEW = timedelta(minutes=2)
# Memberships Whop retries a payment for ("active, trialing or past due").
CHARGEABLE_MEMBERSHIP = frozenset({"active", "trialing", "past_due"})
# The Whop permission each kind needs (a 403 names it on the dashboard and the health check).
PERMISSION = {KIND_ATTACH: "member:payment_methods:manage", KIND_RETRY: "payment:manage"}
READ_PERMISSION = "payment:basic:read"

Verdict = tuple[Literal["go"], None] | tuple[Literal["skip"], str] | tuple[Literal["defer"], datetime]
GO: Verdict = ("go", None)


# --- ledger keys ----------------------------------------------------------------------------------


def _key(prefix: str, *parts: str) -> str:
    """A readable key when the ids are plain, else a digest: it is sent as Whop's
    Idempotency-Key (printable ASCII, at most 255 characters)."""
    text = ":".join((prefix, *parts))
    if len(text) <= 200 and text.isascii() and text.isprintable():
        return text
    return f"{prefix}:sha256:{hashlib.sha256(text.encode()).hexdigest()}"


def attach_key(company_id: str, membership_id: str, payment_method_id: str) -> str:
    """One attach per (membership, payment method), ever: the same card saved twice attaches once.
    (Whop's ids are global; the company keeps one tenant's keys from ever meeting another's.)"""
    return _key("card", company_id, membership_id, payment_method_id)


def retry_key(company_id: str, payment_id: str) -> str:
    """One retry per payment, ever: the payday retry and a manual one share it."""
    return _key("retry", company_id, payment_id)


# --- payday slots ---------------------------------------------------------------------------------


def _slot_instant(day: date, tz_name: str) -> datetime:
    """09:00 on ``day`` in the company's zone, as an instant. A 09:00 that a DST jump skips is
    read with the offset before the jump (zoneinfo's fold=0), i.e. the first instant the
    clocks show 09:00 or later; a 09:00 that happens twice is the first one."""
    return datetime.combine(day, PAYDAY_TIME, tzinfo=company_zone(tz_name)).astimezone(UTC)


def payday_slot(after: datetime, settings: CreatorSettings) -> datetime:
    """The first payday slot (the 1st or the 15th, 09:00 company time) strictly after ``after``,
    moved to the end of the company's quiet hours if it falls inside them."""
    tz = company_zone(settings.timezone)
    local = after.astimezone(tz).date()
    year, month = local.year, local.month
    while True:
        for day in PAYDAYS:
            slot = _slot_instant(date(year, month, day), settings.timezone)
            if slot > after:
                until = quiet_until(slot, settings)
                return until.astimezone(UTC) if until is not None else slot
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def retry_deadline(case: Case) -> datetime:
    """The last instant a payday retry may go: it must leave 24 h of the window for the member
    (and Whop) to act on the outcome."""
    return case.window_ends_at - MIN_WINDOW_LEFT


def first_payday_retry(case: Case, settings: CreatorSettings, now: datetime) -> datetime | None:
    """When a newly opened case is owed its payday retry, or None when it is owed none."""
    if (not settings.smart_retry or case.status is not CaseStatus.OPEN or case.decline_class != "card_soft"
            or case.payment_id is None or window_passed(case.first_failure_at, now)):
        return None
    slot = payday_slot(now, settings)
    return slot if slot <= retry_deadline(case) else None


# --- verdicts: claim time (no Whop) and perform time (after reading Whop) --------------------------


def claim_verdict(kind: str, step: str, case: Case, settings: CreatorSettings, now: datetime, *,
                  card_saved: bool) -> Verdict:
    """May an attach or retry row go now, as far as Rebound's own rules tell?"""
    manual = step == STEP_MANUAL
    if case.holdout and not manual:
        return ("skip", "holdout")
    if case.status is not CaseStatus.OPEN:
        return ("skip", "case_closed")
    if window_passed(case.first_failure_at, now):
        return ("skip", "window_passed")
    if not manual and not settings.smart_retry:
        return ("skip", "smart_retry_off")
    if kind != KIND_RETRY or manual:
        return GO
    if case.decline_class != "card_soft":
        return ("skip", "not_soft_decline")
    if card_saved:
        return ("skip", "card_updated")  # the original method was replaced: retrying it is useless
    if now > retry_deadline(case):
        return ("skip", "window_closing")
    until = quiet_until(now, settings)
    if until is not None:
        return ("defer", until) if until <= retry_deadline(case) else ("skip", "window_closing")
    return GO


@dataclass(frozen=True)
class PaymentFacts:
    """What Whop says of the case's payment right before Rebound acts on it."""

    status: str
    retryable: bool
    paid: bool
    next_payment_attempt_at: datetime | None = None
    payment_method_id: str | None = None


def attach_verdict(payment: PaymentFacts | None, membership_status: str, payment_method_id: str) -> Verdict:
    """Attach only while it can charge the open payment: Whop keeps the membership chargeable,
    the payment is not paid yet, and Whop is not already charging this very method."""
    if membership_status not in CHARGEABLE_MEMBERSHIP:
        return ("skip", f"membership_{membership_status}"[:60])
    if payment is not None and payment.paid:
        return ("skip", "already_paid")
    if payment is not None and payment.payment_method_id == payment_method_id:
        return ("skip", "already_attached")
    return GO


def retry_verdict(step: str, case: Case, settings: CreatorSettings, now: datetime,
                  payment: PaymentFacts) -> Verdict:
    """A payment retry, once Whop's view of the payment is known."""
    if payment.paid:
        return ("skip", "already_paid")
    if not payment.retryable:
        return ("skip", "not_retryable")
    pending = payment.next_payment_attempt_at
    if step == STEP_MANUAL or pending is None or pending <= now:
        return GO
    # Whop still has an attempt of its own scheduled: the next payday slot after it, if any.
    slot = payday_slot(pending, settings)
    return ("defer", slot) if slot <= retry_deadline(case) else ("skip", "whop_still_retrying")

