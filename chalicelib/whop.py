"""The Whop port (what the domain calls) and its adapter over the official ``whop-sdk`` client.

Every call goes through the SDK's *raw* clients (``client.x.with_raw_response.y``) so the
adapter sees status codes and headers, and through ``WhopClient._execute``, which owns the
retry policy instead of the SDK:

- The SDK's own retries are off (``max_retries=0`` on the client and on every call): its
  default retries 409 on POSTs such as ``cancel``/``extend`` and sleeps with ``time.sleep``.
- 408, 429, 5xx, timeouts and connection errors are retried with exponential backoff, honouring
  ``Retry-After`` (seconds or an HTTP date), at most ``max_attempts`` attempts and at most
  ``max_total_sleep_s`` seconds of sleep. A ``Retry-After`` beyond that budget stops at once and
  is handed back (``retry_after_s``) so the caller can schedule the work for later.
- Any other 4xx is permanent: no retry.
- Every mutating call carries the caller's ``Idempotency-Key`` (<= 255 chars), so a retry after
  a lost response never repeats the side effect.

Mutations return a ``WhopResult`` (they never raise for an HTTP or transport failure); reads
(``retrieve_membership``, ``check_access``, ``find_app_experience``) raise ``WhopError``
subclasses. The API key lives only inside the SDK client: it is never logged and never part of
a message, ``repr`` or result. Results keep only the fields Rebound needs (no e-mail, name,
phone or card data from Whop's bodies).
"""

from __future__ import annotations

import email.utils
import hashlib
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Protocol

import httpx
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from whop_sdk import Whop
from whop_sdk.core.api_error import ApiError
from whop_sdk.core.parse_error import ParsingError
from whop_sdk.core.request_options import RequestOptions
from whop_sdk.environment import WhopEnvironment

from chalicelib.budgets import SHARED_PROFILE, SHORT_PROFILE
from chalicelib.config import ConfigError, Settings, get_config
from chalicelib.observability import logger

# The one dated API version Rebound speaks. Webhook parsing pins the same date so payloads and
# API responses share one shape (flat ``*_id`` fields, ``account_id``, ``Money`` amounts).
WHOP_API_VERSION_DATE = "2026-10-15-1"
DEFAULT_WHOP_API_BASE = "https://api.whop.com/api/v1"
MAX_IDEMPOTENCY_KEY_LENGTH = 255

ErrorClass = Literal["retryable", "permanent"]
AccessLevel = Literal["admin", "customer", "no_access"]
# Why a call failed, as the effects executor's retry policy needs it (see effects.py's table):
# "member" is permanent for this member/request; the other three are about Whop or our key.
FailureCause = Literal["member", "credentials", "rate_limited", "unavailable"]

# A Retry-After beyond this is treated as this: an absurd header (say 1e15 s) must neither
# overflow date arithmetic nor park a member's nudge for years.
MAX_RETRY_AFTER_S = 3600.0

# Whop's error text is kept (truncated) for operators; error bodies are never kept whole.
_MAX_ERROR_MESSAGE = 300
# Payment fields handed back to the domain (no card, e-mail, name or phone).
_PAYMENT_FIELDS = ("id", "status", "substatus", "membership_id", "retryable", "payments_failed",
                   "failure_message", "decline_code", "paid_at", "last_payment_attempt_at",
                   "next_payment_attempt_at", "payment_method_id")

Call = Callable[[RequestOptions], tuple[int, Any]]


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
    """What Rebound needs of a Whop payment (issue 18: smart retry). No card, e-mail or name."""

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

    # issue 18 (smart retry): read a payment; attach a saved method to a membership.
    def retrieve_payment(self, payment_id: str) -> Payment: ...

    def attach_payment_method(self, membership_id: str, payment_method_id: str,
                              idempotency_key: str) -> WhopResult: ...


# --------------------------------------------------------------------------------------------
# Helpers


@dataclass(frozen=True)
class _Outcome:
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


def _parse_datetime(value: Any) -> datetime | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), tz=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return None


def money_minor(money: Any) -> tuple[int | None, str | None]:
    """A ``Money`` object ({"amount": "19.99", "currency": "usd", "decimals": 2}) -> (1999, "usd")."""
    if not isinstance(money, Mapping):
        return None, None
    raw_currency = money.get("currency")
    currency = raw_currency.lower() if isinstance(raw_currency, str) else None
    try:
        amount = Decimal(str(money.get("amount")))
        places = int(money.get("decimals", 2))
    except (InvalidOperation, TypeError, ValueError):
        return None, currency
    if not amount.is_finite():
        return None, currency
    return int(amount.scaleb(places).to_integral_value()), currency


def _nested_id(body: Mapping[str, Any], flat: str, nested: str) -> str | None:
    """The ``flat`` id (dated shape) or ``nested.id`` (legacy shape)."""
    value = body.get(flat)
    if isinstance(value, str) and value:
        return value
    inner = body.get(nested)
    if isinstance(inner, Mapping) and isinstance(inner.get("id"), str):
        return str(inner["id"])
    return None


def membership_from_json(body: Mapping[str, Any]) -> Membership:
    """Parse a Whop membership object (dated or legacy shape), keeping no PII."""
    amount, currency = money_minor(body.get("renewal_price"))
    billing = body.get("billing_period_days")
    manage_url = body.get("manage_url")
    return Membership(
        id=str(body["id"]),
        status=str(body.get("status") or "unknown"),
        company_id=_nested_id(body, "account_id", "account") or _nested_id(body, "company_id", "company"),
        user_id=_nested_id(body, "user_id", "user"),
        manage_url=manage_url if isinstance(manage_url, str) else None,
        cancel_at_period_end=bool(body.get("cancel_at_period_end", False)),
        current_period_end=_parse_datetime(body.get("current_period_end", body.get("renewal_period_end"))),
        renewal_amount_minor=amount,
        renewal_currency=currency,
        billing_period_days=billing if isinstance(billing, int) and not isinstance(billing, bool) else None,
        product_title=_product_title(body.get("product")),
    )


def payment_from_json(body: Mapping[str, Any]) -> Payment:
    """Parse a Whop payment (dated or legacy shape), keeping no card or member data."""
    failed = body.get("payments_failed")
    method = body.get("payment_method_id")
    if method is None and isinstance(body.get("payment_method"), Mapping):
        method = body["payment_method"].get("id")
    return Payment(
        id=str(body["id"]), status=str(body.get("status") or "unknown"),
        substatus=body.get("substatus") if isinstance(body.get("substatus"), str) else None,
        membership_id=_nested_id(body, "membership_id", "membership"),
        retryable=body.get("retryable") is True,
        payments_failed=(int(failed) if isinstance(failed, int | float) and not isinstance(failed, bool)
                         else None),
        next_payment_attempt_at=_parse_datetime(body.get("next_payment_attempt_at",
                                                         body.get("next_payment_attempt"))),
        last_payment_attempt_at=_parse_datetime(body.get("last_payment_attempt_at",
                                                         body.get("last_payment_attempt"))),
        payment_method_id=method if isinstance(method, str) and method else None,
        paid_at=_parse_datetime(body.get("paid_at")),
    )


def _product_title(product: Any) -> str | None:
    if isinstance(product, Mapping):
        title = product.get("title") or product.get("name")
        if isinstance(title, str) and title.strip():
            return title.strip()
    return None


def _response_json(response: httpx.Response) -> Any:
    if not response.content:
        return {}
    try:
        return response.json()
    except ValueError:
        return {}


def _error_message(body: Any) -> str | None:
    """Whop's error text from ``{"error": {"message": ...}}`` or ``{"message": ...}``."""
    if not isinstance(body, Mapping):
        return None
    err = body.get("error")
    if isinstance(err, Mapping) and isinstance(err.get("message"), str):
        return str(err["message"])[:_MAX_ERROR_MESSAGE]
    if isinstance(err, str):
        return err[:_MAX_ERROR_MESSAGE]
    if isinstance(body.get("message"), str):
        return str(body["message"])[:_MAX_ERROR_MESSAGE]
    return None


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value
    return None


def _is_retryable_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


# --------------------------------------------------------------------------------------------
# The adapter


class WhopClient(WhopPort):
    """``WhopPort`` over whop-sdk 2.6.0, with Rebound's own timeouts, retries and idempotency."""

    def __init__(self, *, api_key: str, base_url: str = DEFAULT_WHOP_API_BASE,
                 api_version_date: str = WHOP_API_VERSION_DATE,
                 connect_timeout_s: float = 10.0, read_timeout_s: float = 10.0,
                 max_attempts: int = 3, max_total_sleep_s: float = 20.0,
                 backoff_base_s: float = 1.0, backoff_max_s: float = 8.0,
                 sleep: Callable[[float], None] = time.sleep,
                 httpx_client: httpx.Client | None = None) -> None:
        if not api_key:
            raise ValueError("a Whop API key is required")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.api_version_date = api_version_date
        self.max_attempts = max_attempts
        self.max_total_sleep_s = max_total_sleep_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._owns_http = httpx_client is None
        self._http = httpx_client or httpx.Client(
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s), follow_redirects=False)
        # Rebound never calls the card-vault endpoints; the vault host is the SDK's default.
        environment = WhopEnvironment(api=self.base_url, vault=WhopEnvironment.PRODUCTION.vault)
        self._sdk = Whop(token=api_key, environment=environment, api_version_date=api_version_date,
                         max_retries=0, httpx_client=self._http)

    @classmethod
    def from_config(cls, settings: Settings, **overrides: Any) -> WhopClient:
        """The adapter for ``settings`` (key and base URL); keyword overrides go to ``__init__``."""
        if not settings.WHOP_API_KEY:
            raise ConfigError("missing required setting(s): WHOP_API_KEY")
        # The shared adapter also serves creator requests, which API Gateway cuts at 29 s: worst
        # case 2 × (3 s connect + 8 s read) + 4 s of backoff stays under it. Sends that run out of
        # budget are not lost: their ledger rows are retried by the next tick.
        for name, value in SHARED_PROFILE.items():
            overrides.setdefault(name, value)
        return cls(api_key=settings.WHOP_API_KEY, base_url=settings.WHOP_API_BASE, **overrides)

    def __repr__(self) -> str:
        return f"WhopClient(base_url={self.base_url!r}, api_version_date={self.api_version_date!r})"

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> WhopClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- retry engine ----------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        base = min(self.backoff_base_s * (2 ** (attempt - 1)), self.backoff_max_s)
        return float(base * random.uniform(0.8, 1.2))  # jitter so many workers do not align

    def _attempt(self, call: Call, options: RequestOptions) -> _Outcome:
        """One request: a success or a classified failure (never raises for HTTP/transport)."""
        try:
            status, body = call(options)
            return _Outcome(ok=True, status_code=status, body=body)
        except ParsingError as exc:
            # Whop answered but the SDK model rejected the body: the JSON is still usable.
            status = exc.status_code or 0
            if 200 <= status < 300:
                return _Outcome(ok=True, status_code=status, body=exc.body)
            return self._http_failure(status, exc.headers, exc.body)
        except ApiError as exc:
            status = exc.status_code or 0
            if 200 <= status < 300:  # a 2xx with a non-JSON body: the action still happened
                return _Outcome(ok=True, status_code=status, body={})
            return self._http_failure(status, exc.headers, exc.body)
        except httpx.TimeoutException:
            return _Outcome(ok=False, status_code=None, error_class="retryable", error_code="timeout")
        except httpx.UnsupportedProtocol:
            return _Outcome(ok=False, status_code=None, error_class="permanent", error_code="invalid_url")
        except httpx.TransportError:  # refused, reset, dropped without a response, ...
            return _Outcome(ok=False, status_code=None, error_class="retryable", error_code="connection")

    @staticmethod
    def _http_failure(status: int, headers: Mapping[str, str] | None, body: Any) -> _Outcome:
        retryable = _is_retryable_status(status)
        return _Outcome(
            ok=False, status_code=status,
            error_class="retryable" if retryable else "permanent",
            error_code=f"http_{status}",
            retry_after_s=parse_retry_after(_header(headers, "retry-after")) if retryable else None,
            whop_message=_error_message(body),
        )

    def _execute(self, operation: str, call: Call, idempotency_key: str | None = None) -> _Outcome:
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
    def _result(outcome: _Outcome, data: dict[str, Any] | None = None, **extra: Any) -> WhopResult:
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

    @staticmethod
    def _membership_data(outcome: _Outcome) -> dict[str, Any]:
        if isinstance(outcome.body, Mapping) and "id" in outcome.body:
            return membership_from_json(outcome.body).model_dump(mode="json")
        return {}

    # ---- reads -------------------------------------------------------------------------------

    def retrieve_membership(self, membership_id: str) -> Membership:
        def call(options: RequestOptions) -> tuple[int, Any]:
            raw = self._sdk.memberships.with_raw_response.retrieve(membership_id, request_options=options)
            return raw.status_code, _response_json(raw.response)

        body = self._read("retrieve_membership", call)
        if not isinstance(body, Mapping) or "id" not in body:
            raise WhopPermanentError("Whop retrieve_membership failed: invalid_response",
                                     status=200, error_code="invalid_response")
        return membership_from_json(body)

    def retrieve_payment(self, payment_id: str) -> Payment:
        def call(options: RequestOptions) -> tuple[int, Any]:
            raw = self._sdk.payments.with_raw_response.retrieve(payment_id, request_options=options)
            return raw.status_code, _response_json(raw.response)

        body = self._read("retrieve_payment", call)
        if not isinstance(body, Mapping) or "id" not in body:
            raise WhopPermanentError("Whop retrieve_payment failed: invalid_response",
                                     status=200, error_code="invalid_response")
        return payment_from_json(body)

    def check_access(self, user_id: str, resource_id: str) -> AccessLevel:
        def call(options: RequestOptions) -> tuple[int, Any]:
            raw = self._sdk.users.with_raw_response.check_access(user_id, resource_id,
                                                                 request_options=options)
            return raw.status_code, _response_json(raw.response)

        body = self._read("check_access", call)
        level = body.get("access_level") if isinstance(body, Mapping) else None
        # Fail closed: anything other than a level Whop documents counts as no access.
        if level == "admin":
            return "admin"
        if level == "customer":
            return "customer"
        return "no_access"

    def find_app_experience(self, company_id: str, app_id: str) -> str | None:
        def call(options: RequestOptions) -> tuple[int, Any]:
            # The SDK's list returns a pager (parsed model), not a raw response; one page is enough.
            pager = self._sdk.experiences.with_raw_response.list(
                account_id=company_id, app_id=app_id, request_options=options)
            return 200, pager.response.model_dump(mode="json")

        body = self._read("find_app_experience", call)
        items = body.get("data") if isinstance(body, Mapping) else None
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, Mapping) or not isinstance(item.get("id"), str):
                continue
            app = item.get("app")
            if isinstance(app, Mapping) and app.get("id") not in (None, app_id):
                continue  # defensive: never push through another app's experience
            return str(item["id"])
        return None

    # issue 9 (security): which company owns an experience, so a creator cannot save another
    # company's experience as their push_experience_id.
    def experience_company(self, experience_id: str) -> str | None:
        """The id of the company that owns ``experience_id``; WhopNotFound if Whop knows none."""
        def call(options: RequestOptions) -> tuple[int, Any]:
            raw = self._sdk.experiences.with_raw_response.retrieve(experience_id, request_options=options)
            return raw.status_code, _response_json(raw.response)

        body = self._read("experience_company", call)
        company = body.get("company") if isinstance(body, Mapping) else None
        company_id = company.get("id") if isinstance(company, Mapping) else None
        return company_id if isinstance(company_id, str) and company_id else None

    # ---- mutations ---------------------------------------------------------------------------

    def extend_membership(self, membership_id: str, days: int, idempotency_key: str) -> WhopResult:
        key = check_idempotency_key(idempotency_key)

        def call(options: RequestOptions) -> tuple[int, Any]:
            raw = self._sdk.memberships.with_raw_response.extend(membership_id, days=days,
                                                                 request_options=options)
            return raw.status_code, _response_json(raw.response)

        outcome = self._execute("extend_membership", call, key)
        return self._result(outcome, self._membership_data(outcome))

    def cancel_membership(self, membership_id: str, at_period_end: bool, idempotency_key: str) -> WhopResult:
        key = check_idempotency_key(idempotency_key)

        def call(options: RequestOptions) -> tuple[int, Any]:
            # Always explicit: an omitted cancel_at_period_end means "revoke access now" at Whop.
            raw = self._sdk.memberships.with_raw_response.cancel(
                membership_id, cancel_at_period_end=bool(at_period_end), request_options=options)
            return raw.status_code, _response_json(raw.response)

        outcome = self._execute("cancel_membership", call, key)
        return self._result(outcome, self._membership_data(outcome))

    def send_push(self, experience_id: str, user_id: str, title: str, content: str,
                  idempotency_key: str, rest_path: str | None = None) -> WhopResult:
        key = check_idempotency_key(idempotency_key)
        notifications = self._sdk.notifications.with_raw_response

        def call(options: RequestOptions) -> tuple[int, Any]:
            # rest_path is left out rather than sent as null when there is none.
            if rest_path is None:
                raw = notifications.create(title=title, content=content, experience_id=experience_id,
                                           user_ids=[user_id], request_options=options)
            else:
                raw = notifications.create(title=title, content=content, experience_id=experience_id,
                                           user_ids=[user_id], rest_path=rest_path, request_options=options)
            return raw.status_code, _response_json(raw.response)

        outcome = self._execute("send_push", call, key)
        if outcome.ok and isinstance(outcome.body, Mapping) and outcome.body.get("success") is False:
            # A 2xx that says it did not queue the notification: sending again will not help.
            outcome = replace(outcome, ok=False, error_class="permanent", error_code="not_sent")
        return self._result(outcome, {"success": True})

    def send_dm(self, user_id: str, company_id: str, content: str, idempotency_key: str) -> WhopResult:
        """Find or create the DM channel with the member (scoped to the company), then post.

        Each step sends its own key derived from ``idempotency_key``: repeating the whole action
        with the same key finds the same channel and never posts the message twice.
        """
        key = check_idempotency_key(idempotency_key)

        def open_channel(options: RequestOptions) -> tuple[int, Any]:
            raw = self._sdk.dm_channels.with_raw_response.create(
                with_user_ids=[user_id], account_id=company_id, request_options=options)
            return raw.status_code, _response_json(raw.response)

        channel = self._execute("send_dm.channel", open_channel, derive_idempotency_key(key, "dm_channel"))
        channel_id = channel.body.get("id") if isinstance(channel.body, Mapping) else None
        if not isinstance(channel_id, str):
            if channel.ok:  # a 2xx without a channel id: nothing to post into
                channel = replace(channel, ok=False, error_class="permanent", error_code="invalid_response")
            failed = self._result(channel)
            return failed.model_copy(update={"data": {"step": "dm_channel", **failed.data}})

        def post(options: RequestOptions) -> tuple[int, Any]:
            raw = self._sdk.messages.with_raw_response.create(
                channel_id=channel_id, content=content, request_options=options)
            return raw.status_code, _response_json(raw.response)

        message = self._execute("send_dm.message", post, derive_idempotency_key(key, "message"))
        attempts = channel.attempts + message.attempts
        if message.ok:
            message_id = message.body.get("id") if isinstance(message.body, Mapping) else None
            return self._result(message, {"channel_id": channel_id, "message_id": message_id},
                                attempts=attempts)
        failed = self._result(message, attempts=attempts)
        data = {"channel_id": channel_id, "step": "message", **failed.data}
        return failed.model_copy(update={"data": data})

    def retry_payment(self, payment_id: str, idempotency_key: str) -> WhopResult:
        key = check_idempotency_key(idempotency_key)

        def call(options: RequestOptions) -> tuple[int, Any]:
            raw = self._sdk.payments.with_raw_response.retry(payment_id, request_options=options)
            return raw.status_code, _response_json(raw.response)

        outcome = self._execute("retry_payment", call, key)
        body = outcome.body if isinstance(outcome.body, Mapping) else {}
        return self._result(outcome, {name: body[name] for name in _PAYMENT_FIELDS if name in body})


    def attach_payment_method(self, membership_id: str, payment_method_id: str,
                              idempotency_key: str) -> WhopResult:
        """``PATCH /memberships/{id}`` with ``payment_method_id``: future renewals charge it and
        Whop retries the open past-due payment on it right away (issue 18; needs the
        ``member:payment_methods:manage`` permission, a 403 without it)."""
        key = check_idempotency_key(idempotency_key)

        def call(options: RequestOptions) -> tuple[int, Any]:
            raw = self._sdk.memberships.with_raw_response.update(
                membership_id, payment_method_id=payment_method_id, request_options=options)
            return raw.status_code, _response_json(raw.response)

        outcome = self._execute("attach_payment_method", call, key)
        data = self._membership_data(outcome)
        return self._result(outcome, {"membership_status": data["status"]} if data else {})


# --------------------------------------------------------------------------------------------
# Process-wide instance (warm Lambda invocations reuse its connection pool)

_lock = threading.Lock()
_instances: dict[str, WhopPort] = {}
# The key each adapter was built with (a rotated key builds a new one); None: set by set_whop.
_built_with: dict[str, str | None] = {}


def get_whop(profile: Literal["shared", "short"] = "shared") -> WhopPort:
    """The process-wide Whop adapter, built from the settings on first use, and again when the
    API key changed (a rotated key, read again from Secrets Manager: config.get_config)."""
    key = get_config().WHOP_API_KEY
    with _lock:
        instance = _instances.get(profile)
        if instance is not None and (_built_with.get(profile) in (key, None)):
            return instance
        if profile == "short" and _built_with.get("shared", "") is None:
            return _instances["shared"]  # a stand-in set by set_whop serves every profile
        overrides = SHORT_PROFILE if profile == "short" else SHARED_PROFILE
        fresh = WhopClient.from_config(get_config(), **overrides)
        previous, _instances[profile], _built_with[profile] = instance, fresh, key
    if isinstance(previous, WhopClient):
        previous.close()
    return fresh


def set_whop(port: WhopPort | None) -> None:
    """Replace the process-wide adapter (tests, the dev launcher); None forgets it."""
    with _lock:
        previous = list(_instances.values())
        _instances.clear()
        _built_with.clear()
        if port is not None:
            _instances["shared"] = port
            _built_with["shared"] = None
    for old in previous:
        if isinstance(old, WhopClient) and old is not port:
            old.close()


def reset_whop() -> None:
    """Forget (and close) the process-wide adapter; the next ``get_whop`` builds a new one."""
    set_whop(None)
