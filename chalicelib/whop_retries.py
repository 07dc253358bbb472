"""How one Whop call is made, retried and classified (``RetryingCalls``, the engine ``WhopClient``
runs every request through), instead of the SDK:

- The SDK's own retries are off (``max_retries=0`` on the client and on every call): its
  default retries 409 on POSTs such as ``cancel``/``extend`` and sleeps with ``time.sleep``.
- 408, 429, 5xx, timeouts and connection errors are retried with exponential backoff, honouring
  ``Retry-After`` (seconds or an HTTP date), at most ``max_attempts`` attempts and at most
  ``max_total_sleep_s`` seconds of sleep. A ``Retry-After`` beyond that budget stops at once and
  is handed back (``retry_after_s``) so the caller can schedule the work for later.
- Any other 4xx is permanent: no retry.
- Every mutating call carries the caller's ``Idempotency-Key`` (<= 255 chars), so a retry after
  a lost response never repeats the side effect.

A call's body may hold PII: it stays inside ``Outcome`` and never reaches a result whole.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC
from typing import Any

import httpx
from whop_sdk.core.api_error import ApiError
from whop_sdk.core.parse_error import ParsingError
from whop_sdk.core.request_options import RequestOptions

from chalicelib.observability import logger
from chalicelib.whop import (
    MAX_RETRY_AFTER_S,
    ErrorClass,
    WhopError,
    WhopNotFound,
    WhopPermanentError,
    WhopResult,
    WhopRetryableError,
)
from chalicelib.whop_mapping import error_message

Call = Callable[[RequestOptions], tuple[int, Any]]


@dataclass(frozen=True)
class Outcome:
    """One call's result inside the adapter (the body may hold PII: never returned whole)."""

    ok: bool
    status_code: int | None
    body: Any = None
    error_class: ErrorClass | None = None
    error_code: str | None = None
    attempts: int = 1
    retry_after_s: float | None = None
    whop_message: str | None = None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def response_json(response: httpx.Response) -> Any:
    if not response.content:
        return {}
    try:
        return response.json()
    except ValueError:
        return {}


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value
    return None


def _is_retryable_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


class RetryingCalls:
    """The retry engine of an adapter: ``_execute`` a mutation (an ``Outcome``), ``_read`` a
    value (or raise a ``WhopError``), ``_result`` an outcome as the port's ``WhopResult``."""

    max_attempts: int
    max_total_sleep_s: float
    backoff_base_s: float
    backoff_max_s: float
    _sleep: Callable[[float], None]

    def _backoff(self, attempt: int) -> float:
        base = min(self.backoff_base_s * (2 ** (attempt - 1)), self.backoff_max_s)
        return float(base * random.uniform(0.8, 1.2))  # jitter so many workers do not align

    def _attempt(self, call: Call, options: RequestOptions) -> Outcome:
        """One request: a success or a classified failure (never raises for HTTP/transport)."""
        try:
            status, body = call(options)
            return Outcome(ok=True, status_code=status, body=body)
        except ParsingError as exc:
            # Whop answered but the SDK model rejected the body: the JSON is still usable.
            status = exc.status_code or 0
            if 200 <= status < 300:
                return Outcome(ok=True, status_code=status, body=exc.body)
            return self._http_failure(status, exc.headers, exc.body)
        except ApiError as exc:
            status = exc.status_code or 0
            if 200 <= status < 300:  # a 2xx with a non-JSON body: the action still happened
                return Outcome(ok=True, status_code=status, body={})
            return self._http_failure(status, exc.headers, exc.body)
        except httpx.TimeoutException:
            return Outcome(ok=False, status_code=None, error_class="retryable", error_code="timeout")
        except httpx.UnsupportedProtocol:
            return Outcome(ok=False, status_code=None, error_class="permanent", error_code="invalid_url")
        except httpx.TransportError:  # refused, reset, dropped without a response, ...
            return Outcome(ok=False, status_code=None, error_class="retryable", error_code="connection")

    @staticmethod
    def _http_failure(status: int, headers: Mapping[str, str] | None, body: Any) -> Outcome:
        retryable = _is_retryable_status(status)
        return Outcome(
            ok=False, status_code=status,
            error_class="retryable" if retryable else "permanent",
            error_code=f"http_{status}",
            retry_after_s=parse_retry_after(_header(headers, "retry-after")) if retryable else None,
            whop_message=error_message(body),
        )

    def _execute(self, operation: str, call: Call, idempotency_key: str | None = None) -> Outcome:
        options: RequestOptions = {"max_retries": 0}
        if idempotency_key is not None:
            options["additional_headers"] = {"Idempotency-Key": idempotency_key}
        slept = 0.0
        attempt = 0
        while True:
            attempt += 1
            outcome = replace(self._attempt(call, options), attempts=attempt)
            if outcome.ok or outcome.error_class != "retryable":
                return outcome
            log = {"whop_operation": operation, "attempt": attempt, "error_code": outcome.error_code}
            if attempt >= self.max_attempts:
                logger.warning("whop call gave up", extra=log)
                return outcome
            delay = outcome.retry_after_s if outcome.retry_after_s is not None else self._backoff(attempt)
            if slept + delay > self.max_total_sleep_s:
                # Waiting would exceed the budget: hand the wait back for the caller to schedule.
                logger.warning("whop call deferred", extra={**log, "retry_after_s": round(delay, 3)})
                return replace(outcome, retry_after_s=delay)
            logger.info("whop call retrying", extra={**log, "delay_s": round(delay, 3)})
            self._sleep(delay)
            slept += delay

    def _read(self, operation: str, call: Call) -> Any:
        outcome = self._execute(operation, call)
        if outcome.ok:
            return outcome.body
        code = outcome.error_code or "unknown"
        error_type: type[WhopError]
        if outcome.error_class == "retryable":
            error_type = WhopRetryableError
        elif outcome.status_code == 404:
            error_type = WhopNotFound
        else:
            error_type = WhopPermanentError
        raise error_type(f"Whop {operation} failed: {code}", status=outcome.status_code, error_code=code,
                         retry_after_s=outcome.retry_after_s, attempts=outcome.attempts,
                         whop_message=outcome.whop_message)

    @staticmethod
    def _result(outcome: Outcome, data: dict[str, Any] | None = None, **extra: Any) -> WhopResult:
        if outcome.ok:
            payload = dict(data or {})
        else:
            payload = {"error_message": outcome.whop_message} if outcome.whop_message else {}
        fields: dict[str, Any] = {
            "ok": outcome.ok, "status_code": outcome.status_code, "data": payload,
            "error_class": outcome.error_class, "error_code": outcome.error_code,
            "attempts": outcome.attempts, "retry_after_s": outcome.retry_after_s}
        fields.update(extra)
        return WhopResult(**fields)
