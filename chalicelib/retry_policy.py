"""What becomes of an executed ledger row, by why Whop said no (``whop.failure_cause``): the
retry policy in one screen. ``decide`` applies it; the executor (``effects``) records what it
decides, guarded by the row's claim.

| cause          | what Whop answered                        | the row                               |
|----------------|-------------------------------------------|---------------------------------------|
| (ok)           | 2xx                                       | ``sent``                              |
| member         | 400/404/409/422: this member or request   | ``failed`` at once (retrying cannot   |
|                | is refused for good                       | help); no push experience, or Whop    |
|                |                                           | shows the payment paid: ``skipped``   |
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
|                |                                           | alone (``effects.release``); metric   |
|                |                                           | ``EffectRowFailed``                   |
Backoff: 1 min doubling per attempt, at most 1 h; there is no attempt limit for the last four
causes — a Whop outage of any length delays a nudge, it never abandons one inside its window.
Smart retry's rows (``card_attach``, ``payment_retry``: ``chalicelib.recovery_exec``) follow this
table with two differences: a 403 is final (``permission_missing``, the missing Whop permission
shown on the dashboard and the health check), and a refusal keeps Whop's reason in the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from chalicelib.attribution import window_passed
from chalicelib.whop import FailureCause, WhopResult

_BASE_RETRY = timedelta(minutes=1)
_MAX_RETRY = timedelta(hours=1)
# Refusals that mean there is nothing to send (no push experience; Whop already shows the
# payment paid), not that the send failed.
NOTHING_TO_SEND = ("no_push_experience", "already_paid")


def retry_delay(attempts: int, retry_after_s: float | None = None) -> timedelta:
    """Back off exponentially between attempts, never sooner than Whop asked, never over 1 h
    (whatever the attempt count or the Retry-After: no arithmetic here can overflow)."""
    exponent = min(max(0, attempts - 1), 10)  # 2**10 minutes is already past the cap
    backoff: timedelta = min(_BASE_RETRY * (2 ** exponent), _MAX_RETRY)
    if retry_after_s is not None and retry_after_s == retry_after_s:  # not NaN
        backoff = max(backoff, timedelta(seconds=min(max(0.0, retry_after_s), _MAX_RETRY.total_seconds())))
    return backoff


@dataclass(frozen=True)
class Decision:
    """What to record for a row: its new status, the error class and detail it keeps, when it is
    owed again (``retrying`` only); for the metrics, the cause that kept it from Whop
    (credentials, rate_limited, unavailable) and whether its window closed on it."""

    status: Literal["sent", "failed", "skipped", "retrying"]
    error_class: str | None = None
    detail: str | None = None
    due: datetime | None = None
    cause: FailureCause | None = None
    abandoned: bool = False


def decide(result: WhopResult, *, attempts: int, now: datetime, first_failure_at: datetime) -> Decision:
    """The table above, for a row's ``attempts``-th try (a send whose window closes before its
    next try is abandoned now: nothing may be sent then)."""
    if result.ok:
        return Decision("sent")
    cause = result.cause
    if cause == "member" or cause is None:
        status: Literal["failed", "skipped"] = "skipped" if result.error_code in NOTHING_TO_SEND else "failed"
        return Decision(status, result.error_class or "permanent", result.error_code)
    due = now + retry_delay(attempts, result.retry_after_s)
    if window_passed(first_failure_at, due):
        return Decision("skipped", "skipped", "window_passed", cause=cause, abandoned=True)
    return Decision("retrying", cause, result.error_code, due=due, cause=cause)
