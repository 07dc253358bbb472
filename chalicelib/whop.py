"""The Whop port: everything the domain asks of Whop (``WhopPort``), what comes back, and why a
call failed (``failure_cause``: the one classification the executor's retry policy reads).

Mutations return a ``WhopResult`` (they never raise for an HTTP or transport failure); reads
(``retrieve_membership``, ``retrieve_payment``, ``check_access``, ``find_app_experience``,
``experience_company``) raise ``WhopError`` subclasses. Every mutation takes the caller's
idempotency key (``check_idempotency_key``: Whop's limits). Values keep only the fields Rebound
needs (no e-mail, name, phone or card data).

The adapter over whop-sdk, its retries and the process-wide instance (``get_whop``) are
``whop_client``; Whop's JSON → these values is ``whop_mapping``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal, Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

MAX_IDEMPOTENCY_KEY_LENGTH = 255

ErrorClass = Literal["retryable", "permanent"]
AccessLevel = Literal["admin", "customer", "no_access"]
# Why a call failed, as the effects executor's retry policy needs it (see retry_policy.py's table):
# "member" is permanent for this member/request; the other three are about Whop or our key.
FailureCause = Literal["member", "credentials", "rate_limited", "unavailable"]

# A Retry-After beyond this is treated as this: an absurd header (say 1e15 s) must neither
# overflow date arithmetic nor park a member's nudge for years.
MAX_RETRY_AFTER_S = 3600.0


# --------------------------------------------------------------------------------------------
# Values the port returns


class Membership(BaseModel):
    """What Rebound needs of a Whop membership. Deliberately no PII (no e-mail, name, phone)."""

    model_config = ConfigDict(frozen=True)

    id: str
    status: str
    company_id: str | None = None
    user_id: str | None = None
    manage_url: str | None = None
    cancel_at_period_end: bool = False
    current_period_end: AwareDatetime | None = None
    renewal_amount_minor: int | None = None
    renewal_currency: str | None = None
    billing_period_days: int | None = None
    product_title: str | None = None  # for {product} in nudge copy


class Payment(BaseModel):
    """What Rebound needs of a Whop payment (smart retry). No card, e-mail or name."""

    model_config = ConfigDict(frozen=True)

    id: str
    status: str  # open, paid, pending, void, uncollectible, draft
    substatus: str | None = None
    membership_id: str | None = None
    retryable: bool = False  # "open and Whop can attempt the charge again" (POST /payments/{id}/retry)
    payments_failed: int | None = None
    next_payment_attempt_at: AwareDatetime | None = None  # Whop's own next automatic attempt
    last_payment_attempt_at: AwareDatetime | None = None
    payment_method_id: str | None = None  # the stored method last charged (payt_…)
    paid_at: AwareDatetime | None = None

    @property
    def paid(self) -> bool:
        return self.status == "paid" or self.paid_at is not None


class WhopResult(BaseModel):
    """Outcome of a mutating call. ``status_code`` is None when no HTTP response arrived."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    status_code: int | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    error_class: ErrorClass | None = None
    error_code: str | None = None
    attempts: int = 1
    retry_after_s: float | None = None

    @property
    def retryable(self) -> bool:
        return self.error_class == "retryable"

    @property
    def cause(self) -> FailureCause | None:
        return None if self.ok else failure_cause(self.status_code, self.error_class)


def failure_cause(status_code: int | None, error_class: ErrorClass | None) -> FailureCause:
    """The one classification of a failed call: 401/403 mean Whop refused OUR key (a rotation
    or an outage of its auth), not anything about the member, so they are not permanent."""
    if status_code in (401, 403):
        return "credentials"
    if status_code == 429:
        return "rate_limited"
    if error_class == "retryable":
        return "unavailable"
    return "member"


class WhopError(Exception):
    """A read failed. ``status`` is None for timeouts and connection errors."""

    def __init__(self, message: str, *, status: int | None, error_code: str,
                 retry_after_s: float | None = None, attempts: int = 1,
                 whop_message: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.retry_after_s = retry_after_s
        self.attempts = attempts
        self.whop_message = whop_message

    @property
    def retry_after(self) -> float | None:
        return self.retry_after_s


class WhopPermanentError(WhopError):
    """A 4xx other than 408/429: bad request, unauthorized, forbidden, conflict, not found."""


class WhopNotFound(WhopPermanentError):
    """404: the membership, user or resource does not exist (or this key cannot see it)."""


class WhopRetryableError(WhopError):
    """429, 408, 5xx, timeout or connection error that outlasted the retry budget."""



# --------------------------------------------------------------------------------------------
# The port


class WhopPort(Protocol):
    """Everything the domain asks of Whop. Synchronous; mutations take the caller's key."""

    def retrieve_membership(self, membership_id: str) -> Membership: ...

    def extend_membership(self, membership_id: str, days: int, idempotency_key: str) -> WhopResult: ...

    def cancel_membership(self, membership_id: str, at_period_end: bool,
                          idempotency_key: str) -> WhopResult: ...

    def send_push(self, experience_id: str, user_id: str, title: str, content: str,
                  idempotency_key: str, rest_path: str | None = None) -> WhopResult: ...

    def send_dm(self, user_id: str, company_id: str, content: str, idempotency_key: str) -> WhopResult: ...

    def check_access(self, user_id: str, resource_id: str) -> AccessLevel: ...

    def find_app_experience(self, company_id: str, app_id: str) -> str | None: ...

    def experience_company(self, experience_id: str) -> str | None: ...  # issue 9: push_experience_id

    def retry_payment(self, payment_id: str, idempotency_key: str) -> WhopResult: ...

    # Smart retry: read a payment; attach a saved method to a membership.
    def retrieve_payment(self, payment_id: str) -> Payment: ...

    def attach_payment_method(self, membership_id: str, payment_method_id: str,
                              idempotency_key: str) -> WhopResult: ...



# --------------------------------------------------------------------------------------------
# Idempotency keys, as Whop takes them


def check_idempotency_key(key: str) -> str:
    """The key as sent: non-empty printable ASCII, at most 255 characters (Whop's limit)."""
    if not isinstance(key, str) or not key:
        raise ValueError("idempotency key must be a non-empty string")
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise ValueError(f"idempotency key longer than {MAX_IDEMPOTENCY_KEY_LENGTH} characters")
    if not key.isascii() or not key.isprintable():
        raise ValueError("idempotency key must be printable ASCII")
    return key


def derive_idempotency_key(key: str, step: str) -> str:
    """A distinct key per step of a multi-request action, still <= 255 characters."""
    derived = f"{key}:{step}"
    if len(derived) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        return derived
    digest = hashlib.sha256(derived.encode()).hexdigest()
    return f"{key[:MAX_IDEMPOTENCY_KEY_LENGTH - len(digest) - 1]}:{digest}"

