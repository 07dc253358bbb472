"""``WhopPort`` over the official ``whop-sdk`` client (``WhopClient``: one method per Whop
endpoint Rebound calls), and the process-wide instance (``get_whop``).

Every call goes through the SDK's *raw* clients (``client.x.with_raw_response.y``) so the
adapter sees status codes and headers, and through ``_execute``/``_read`` (``whop_retries``),
which own the retry policy instead of the SDK. The API key lives only inside the SDK client: it
is never logged and never part of a message, ``repr`` or result. Results keep only the fields
Rebound needs (``whop_mapping``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Literal

import httpx
from whop_sdk import Whop
from whop_sdk.core.request_options import RequestOptions
from whop_sdk.environment import WhopEnvironment

from chalicelib.budgets import SHARED_PROFILE, SHORT_PROFILE
from chalicelib.config import ConfigError, Settings, get_config
from chalicelib.whop import (
    AccessLevel,
    Membership,
    Payment,
    WhopPermanentError,
    WhopPort,
    WhopResult,
    check_idempotency_key,
    derive_idempotency_key,
)
from chalicelib.whop_mapping import PAYMENT_FIELDS, membership_from_json, payment_from_json
from chalicelib.whop_retries import Outcome, RetryingCalls, response_json

# The one dated API version Rebound speaks. Webhook parsing pins the same date so payloads and
# API responses share one shape (flat ``*_id`` fields, ``account_id``, ``Money`` amounts).
WHOP_API_VERSION_DATE = "2026-10-15-1"
DEFAULT_WHOP_API_BASE = "https://api.whop.com/api/v1"


# --------------------------------------------------------------------------------------------
# The adapter


class WhopClient(RetryingCalls, WhopPort):
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

    @staticmethod
    def _membership_data(outcome: Outcome) -> dict[str, Any]:
        if isinstance(outcome.body, Mapping) and "id" in outcome.body:
            return membership_from_json(outcome.body).model_dump(mode="json")
        return {}

    # ---- reads -------------------------------------------------------------------------------

    def retrieve_membership(self, membership_id: str) -> Membership:
        def call(options: RequestOptions) -> tuple[int, Any]:
            raw = self._sdk.memberships.with_raw_response.retrieve(membership_id, request_options=options)
            return raw.status_code, response_json(raw.response)

        return membership_from_json(self._read_object("retrieve_membership", call))

    def retrieve_payment(self, payment_id: str) -> Payment:
        def call(options: RequestOptions) -> tuple[int, Any]:
            raw = self._sdk.payments.with_raw_response.retrieve(payment_id, request_options=options)
            return raw.status_code, response_json(raw.response)

        return payment_from_json(self._read_object("retrieve_payment", call))

    def _read_object(self, operation: str,
                     call: Callable[[RequestOptions], tuple[int, Any]]) -> Mapping[str, Any]:
        """A read whose 200 must be one object with an id; anything else is Whop misbehaving."""
        body = self._read(operation, call)
        if not isinstance(body, Mapping) or "id" not in body:
            raise WhopPermanentError(f"Whop {operation} failed: invalid_response",
                                     status=200, error_code="invalid_response")
        return body

    def check_access(self, user_id: str, resource_id: str) -> AccessLevel:
        def call(options: RequestOptions) -> tuple[int, Any]:
            raw = self._sdk.users.with_raw_response.check_access(user_id, resource_id,
                                                                 request_options=options)
            return raw.status_code, response_json(raw.response)

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
            return raw.status_code, response_json(raw.response)

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
            return raw.status_code, response_json(raw.response)

        outcome = self._execute("extend_membership", call, key)
        return self._result(outcome, self._membership_data(outcome))

    def cancel_membership(self, membership_id: str, at_period_end: bool, idempotency_key: str) -> WhopResult:
        key = check_idempotency_key(idempotency_key)

        def call(options: RequestOptions) -> tuple[int, Any]:
            # Always explicit: an omitted cancel_at_period_end means "revoke access now" at Whop.
            raw = self._sdk.memberships.with_raw_response.cancel(
                membership_id, cancel_at_period_end=bool(at_period_end), request_options=options)
            return raw.status_code, response_json(raw.response)

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
            return raw.status_code, response_json(raw.response)

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
            return raw.status_code, response_json(raw.response)

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
            return raw.status_code, response_json(raw.response)

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
            return raw.status_code, response_json(raw.response)

        outcome = self._execute("retry_payment", call, key)
        body = outcome.body if isinstance(outcome.body, Mapping) else {}
        return self._result(outcome, {name: body[name] for name in PAYMENT_FIELDS if name in body})


    def attach_payment_method(self, membership_id: str, payment_method_id: str,
                              idempotency_key: str) -> WhopResult:
        """``PATCH /memberships/{id}`` with ``payment_method_id``: future renewals charge it and
        Whop retries the open past-due payment on it right away (needs the
        ``member:payment_methods:manage`` permission, a 403 without it)."""
        key = check_idempotency_key(idempotency_key)

        def call(options: RequestOptions) -> tuple[int, Any]:
            raw = self._sdk.memberships.with_raw_response.update(
                membership_id, payment_method_id=payment_method_id, request_options=options)
            return raw.status_code, response_json(raw.response)

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
