"""The executor's retry policy (chalicelib/retry_policy.py) row by row, as pure decisions: what a
2xx, a refusal of the member, our key refused, a 429 with Retry-After, a 5xx or a timeout make of
a ledger row, and what the closing 14-day window does to each. The end-to-end paths (the fake
Whop answering these, the rows in Postgres) are tests/test_nudges.py and tests/test_reliability.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chalicelib.retry_policy import Decision, decide
from chalicelib.whop import ErrorClass, FailureCause, WhopResult

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
FRESH = NOW - timedelta(days=1)  # a case whose window has 13 days left


def failed(status: int | None, error_class: ErrorClass, code: str,
           retry_after_s: float | None = None) -> WhopResult:
    return WhopResult(ok=False, status_code=status, error_class=error_class, error_code=code,
                      retry_after_s=retry_after_s)


def test_a_2xx_is_sent() -> None:
    assert decide(WhopResult(ok=True, status_code=200), attempts=1, now=NOW,
                  first_failure_at=FRESH) == Decision("sent")


@pytest.mark.parametrize(("status", "code"), [(400, "http_400"), (404, "http_404"), (409, "http_409"),
                                              (422, "http_422")])
def test_a_refusal_of_the_member_fails_at_once_whatever_the_attempt(status: int, code: str) -> None:
    for attempts in (1, 7):
        decision = decide(failed(status, "permanent", code), attempts=attempts, now=NOW,
                          first_failure_at=FRESH)
        assert decision == Decision("failed", "permanent", code)
        assert decision.cause is None and not decision.abandoned  # no Whop-trouble metric


@pytest.mark.parametrize("code", ["no_push_experience", "already_paid"])
def test_nothing_to_send_is_skipped_not_failed(code: str) -> None:
    assert decide(failed(None, "permanent", code), attempts=1, now=NOW,
                  first_failure_at=FRESH) == Decision("skipped", "permanent", code)


@pytest.mark.parametrize(("result", "cause"), [
    (failed(401, "permanent", "http_401"), "credentials"),
    (failed(403, "permanent", "http_403"), "credentials"),
    (failed(429, "retryable", "http_429"), "rate_limited"),
    (failed(503, "retryable", "http_503"), "unavailable"),
    (failed(None, "retryable", "timeout"), "unavailable"),
    (failed(None, "retryable", "connection"), "unavailable"),
])
def test_whop_trouble_keeps_the_row_owed_with_a_doubling_backoff(result: WhopResult,
                                                                 cause: FailureCause) -> None:
    for attempts, wait in ((1, timedelta(minutes=1)), (3, timedelta(minutes=4)), (40, timedelta(hours=1))):
        decision = decide(result, attempts=attempts, now=NOW, first_failure_at=FRESH)
        assert decision == Decision("retrying", cause, result.error_code, due=NOW + wait, cause=cause)


def test_a_429_waits_no_less_than_retry_after_and_no_more_than_an_hour() -> None:
    asked = decide(failed(429, "retryable", "http_429", retry_after_s=600), attempts=1, now=NOW,
                   first_failure_at=FRESH)
    assert asked.status == "retrying" and asked.due == NOW + timedelta(minutes=10)
    absurd = decide(failed(429, "retryable", "http_429", retry_after_s=1e15), attempts=1, now=NOW,
                    first_failure_at=FRESH)
    assert absurd.due == NOW + timedelta(hours=1)


def test_a_retry_that_would_come_after_the_window_is_abandoned_now() -> None:
    closing = NOW - timedelta(days=14) + timedelta(seconds=30)  # 30 s of window left, backoff 1 min
    decision = decide(failed(503, "retryable", "http_503"), attempts=1, now=NOW, first_failure_at=closing)
    assert decision == Decision("skipped", "skipped", "window_passed", cause="unavailable", abandoned=True)
    # The same answer with the window still open a while: owed again, not abandoned.
    open_for_an_hour = NOW - timedelta(days=14) + timedelta(hours=1)
    assert decide(failed(503, "retryable", "http_503"), attempts=1, now=NOW,
                  first_failure_at=open_for_an_hour).status == "retrying"
