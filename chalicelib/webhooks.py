"""Normalising Whop webhooks (pure: no database, no AWS, no network): ``normalise`` turns any of
Whop's payload generations (v1 legacy, v1 dated, v5, v2) into one ``WhopEvent``, or ``None`` for
an event type Rebound does not handle. Errors never carry payload values: they name the field
only. Verifying the signature first is ``webhook_signature``; what of the text may be kept, and
the stored form of an event, is ``webhook_text``.

Event time follows the contract ("Shapes and meanings"):

| event type                              | occurred_at                                             |
|-----------------------------------------|---------------------------------------------------------|
| payment.succeeded                       | data.paid_at (never created_at: Whop reuses the failed  |
|                                         | payment's object), else the envelope timestamp          |
| payment.failed, payment.requires_action | data.last_payment_attempt (dated: ..._at), else         |
|                                         | data.created_at, else the envelope timestamp            |
| membership.*                            | the envelope timestamp                                  |
| setup_intent.succeeded                  | the envelope timestamp (a saved card)                   |
| none of those usable                    | received_at, with occurred_at_inferred=True             |
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Final

from pydantic import ValidationError

from chalicelib.models import (
    FAILURE_TYPES,
    EventType,
    WhopEvent,
    currency_decimals,
    event_time_problem,
)
from chalicelib.webhook_text import (
    FAILURE_MESSAGE_MAX,
    ID_MAX,
    clean_url,
    failure_text,
    first_id,
    id_ref,
    nested_id,
    short_text,
)

_AMOUNT_MAX: Final = Decimal(10) ** 12  # major units; anything larger is not a real charge
OUT_OF_RANGE: Final = "outside the accepted range (before 2015, or more than a day after receipt)"


class MalformedWebhook(Exception):
    """A verified body Rebound cannot use. The message names the field, never a payload value."""

    def __init__(self, field: str, problem: str = "missing or invalid") -> None:
        super().__init__(f"malformed webhook: {field} {problem}")
        self.field = field


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------

_TYPE_ALIASES: Final[Mapping[str, EventType]] = {
    **{t.value: t for t in EventType},
    "payment_failed": EventType.PAYMENT_FAILED,
    "app_payment.failed": EventType.PAYMENT_FAILED,
    "app_payment_failed": EventType.PAYMENT_FAILED,
    "payment_succeeded": EventType.PAYMENT_SUCCEEDED,
    "app_payment.succeeded": EventType.PAYMENT_SUCCEEDED,
    "app_payment_succeeded": EventType.PAYMENT_SUCCEEDED,
    "payment_requires_action": EventType.PAYMENT_REQUIRES_ACTION,
    "membership_activated": EventType.MEMBERSHIP_ACTIVATED,
    "membership_went_valid": EventType.MEMBERSHIP_ACTIVATED,
    "membership.went_valid": EventType.MEMBERSHIP_ACTIVATED,
    "membership_deactivated": EventType.MEMBERSHIP_DEACTIVATED,
    "membership_went_invalid": EventType.MEMBERSHIP_DEACTIVATED,
    "membership.went_invalid": EventType.MEMBERSHIP_DEACTIVATED,
    "membership_cancel_at_period_end_changed": EventType.MEMBERSHIP_CANCEL_AT_PERIOD_END_CHANGED,
    "setup_intent_succeeded": EventType.SETUP_INTENT_SUCCEEDED,
}

MEMBERSHIP_TYPES: Final = frozenset({
    EventType.MEMBERSHIP_ACTIVATED,
    EventType.MEMBERSHIP_DEACTIVATED,
    EventType.MEMBERSHIP_CANCEL_AT_PERIOD_END_CHANGED,
})

# Money fields in order of preference; a zero is only used when no field is positive.
_AMOUNT_FIELDS: Final = ("total", "final_amount", "subtotal", "amount")
_CURRENCY = re.compile(r"^[a-z]{3}$")
_PAYMENT_REASON = re.compile(r"payment|declin|dunning|past.?due|billing", re.IGNORECASE)
_PAYMENT_STATUSES: Final = frozenset({"past_due", "unresolved", "expired"})


def normalise(body: bytes | Mapping[str, Any], webhook_id: str, received_at: datetime) -> WhopEvent | None:
    """The ``WhopEvent`` for a verified body, or ``None`` for an event type Rebound ignores.

    Raises ``MalformedWebhook`` for invalid JSON, a non-object body, a missing type, an envelope
    ``id`` that differs from ``webhook_id``, a handled event without company or membership id,
    or an event time outside the sane range (``models.event_time_problem``).
    """
    if received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")
    envelope = _load(body)
    envelope_id = envelope.get("id")
    if envelope_id is not None and envelope_id != webhook_id:
        raise MalformedWebhook("id", "differs from the webhook-id header")
    event_type = _event_type(envelope)
    if event_type is None:
        return None
    data = _data(envelope)
    occurred_at, inferred = _occurred_at(event_type, envelope, data, received_at.astimezone(UTC))
    if event_time_problem(occurred_at, received_at):
        raise MalformedWebhook("occurred_at", OUT_OF_RANGE)
    if event_type is EventType.SETUP_INTENT_SUCCEEDED:
        return _card_saved(envelope, data, webhook_id, occurred_at, inferred, received_at)
    amount_minor, currency = _amount(data)
    fields: dict[str, Any] = {
        "webhook_id": webhook_id,
        "type": event_type,
        "company_id": _required(_company_id(envelope, data), "company_id"),
        "membership_id": _required(_membership_id(event_type, data), "membership_id"),
        "user_id": first_id(data.get("user_id"), nested_id(data.get("user"))),
        "amount_minor": amount_minor,
        "currency": currency,
        "occurred_at": occurred_at,
        "occurred_at_inferred": inferred,
        "received_at": received_at.astimezone(UTC),
        "api_version": _api_version(envelope),
    }
    if event_type in MEMBERSHIP_TYPES:
        fields.update(_membership_fields(event_type, data))
    else:
        fields.update(_payment_fields(event_type, data))
    return _build(fields)


# A saved payment method. Two shapes, like every event: legacy v1 nests
# ``payment_method{id}`` and ``member{id, user{id}}``; the dated v1 SetupIntent is flat
# (``payment_method_id``, ``member_id``, ``user{id}``), with ``account_id`` in the envelope.
_PAYMENT_METHOD_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def _card_saved(envelope: Mapping[str, Any], data: Mapping[str, Any], webhook_id: str,
                occurred_at: datetime, inferred: bool, received_at: datetime) -> WhopEvent:
    member = data.get("member")
    user_id = first_id(data.get("user_id"), nested_id(data.get("user")),
                       nested_id(member.get("user")) if isinstance(member, Mapping) else None)
    method = first_id(data.get("payment_method_id"), nested_id(data.get("payment_method")))
    if method is not None and not _PAYMENT_METHOD_ID.fullmatch(method):
        method = None  # it becomes part of an Idempotency-Key and a URL body: ids only
    return _build({
        "webhook_id": webhook_id, "type": EventType.SETUP_INTENT_SUCCEEDED,
        "company_id": _required(_company_id(envelope, data), "company_id"),
        "user_id": _required(user_id, "user_id"),
        "payment_method_id": _required(method, "payment_method_id"),
        "occurred_at": occurred_at, "occurred_at_inferred": inferred,
        "received_at": received_at.astimezone(UTC), "api_version": _api_version(envelope),
    })


def _load(body: bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(body, Mapping):
        return body
    if not isinstance(body, bytes | bytearray | memoryview):
        raise MalformedWebhook("body", "is not bytes or an object")
    try:
        parsed = json.loads(bytes(body).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedWebhook("body", "is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise MalformedWebhook("body", "is not a JSON object")
    return parsed


def _event_type(envelope: Mapping[str, Any]) -> EventType | None:
    raw = envelope.get("type") if "type" in envelope else envelope.get("action")
    if not isinstance(raw, str) or not raw:
        raise MalformedWebhook("type")
    return _TYPE_ALIASES.get(raw.strip())


def _data(envelope: Mapping[str, Any]) -> Mapping[str, Any]:
    data = envelope.get("data") if "data" in envelope else envelope.get("body")
    if not isinstance(data, Mapping):
        raise MalformedWebhook("data")
    return data


def _api_version(envelope: Mapping[str, Any]) -> str | None:
    version = envelope.get("api_version")
    if isinstance(version, str) and version:
        return version[:32]
    return "v2" if "body" in envelope and "data" not in envelope else None


def _required(value: str | None, field: str) -> str:
    if value is None:
        raise MalformedWebhook(field)
    return value


def _company_id(envelope: Mapping[str, Any], data: Mapping[str, Any]) -> str | None:
    return (first_id(envelope.get("company_id"), envelope.get("account_id"))
            or id_ref(envelope.get("company"))
            or first_id(data.get("company_id"), data.get("account_id"))
            or id_ref(data.get("company")) or id_ref(data.get("account"))
            or first_id(data.get("page_id")))


def _membership_id(event_type: EventType, data: Mapping[str, Any]) -> str | None:
    own = first_id(data.get("id")) if event_type in MEMBERSHIP_TYPES else None
    return own or first_id(data.get("membership_id")) or id_ref(data.get("membership"))


def _payment_fields(event_type: EventType, data: Mapping[str, Any]) -> dict[str, Any]:
    failure = (short_text(data.get("failure_message"), FAILURE_MESSAGE_MAX) if event_type in FAILURE_TYPES
               else None)
    return {
        "payment_id": first_id(data.get("id")),
        "decline_code": short_text(data.get("decline_code"), ID_MAX),
        "failure_message": failure_text(failure) if failure is not None else None,
        "recovery_url": clean_url(data.get("recovery_url")),
    }


def _membership_fields(event_type: EventType, data: Mapping[str, Any]) -> dict[str, Any]:
    cancel = data.get("cancel_at_period_end")
    fields: dict[str, Any] = {
        "manage_url": clean_url(data.get("manage_url")),
        "cancel_at_period_end": cancel if isinstance(cancel, bool) else None,
    }
    if event_type is EventType.MEMBERSHIP_DEACTIVATED:
        fields["deactivation_cause"] = _deactivation_cause(data)
    return fields


def _deactivation_cause(data: Mapping[str, Any]) -> str:
    """Why the membership went invalid, as far as the payload tells (see models.DeactivationCause).

    A reason mentioning payment wins (Whop cancels after failed dunning); then a member's own
    cancellation; then a status that means the payment is still owed.
    """
    status = data.get("status")
    reason = data.get("cancellation_reason")
    if isinstance(reason, str) and _PAYMENT_REASON.search(reason):
        return "payment_failed"
    if data.get("cancel_at_period_end") is True:
        return "member_cancelled"
    cancel_markers = (data.get("canceled_at"), reason, data.get("cancel_option"))
    if status in ("canceled", "cancelled", "canceling") and any(m not in (None, "") for m in cancel_markers):
        return "member_cancelled"
    if status in _PAYMENT_STATUSES:
        return "payment_failed"
    return "unknown"


# --- time ---------------------------------------------------------------------------------------


def _occurred_at(event_type: EventType, envelope: Mapping[str, Any], data: Mapping[str, Any],
                 received_at: datetime) -> tuple[datetime, bool]:
    if event_type is EventType.PAYMENT_SUCCEEDED:
        candidates: tuple[Any, ...] = (data.get("paid_at"),)
    elif event_type in MEMBERSHIP_TYPES or event_type is EventType.SETUP_INTENT_SUCCEEDED:
        candidates = ()
    else:
        candidates = (data.get("last_payment_attempt"), data.get("last_payment_attempt_at"),
                      data.get("created_at"))
    for candidate in (*candidates, envelope.get("timestamp")):
        parsed = parse_time(candidate)
        if parsed is not None:
            return parsed, False
    return received_at, True


def parse_time(value: Any) -> datetime | None:
    """An aware UTC datetime from ISO-8601 (``Z`` or offset; naive read as UTC) or unix seconds
    (int, float or numeric string); ``None`` when missing or unparsable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return _from_unix(float(value))
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        return _from_unix(float(text))
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def _from_unix(seconds: float) -> datetime | None:
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


# --- money --------------------------------------------------------------------------------------


def _amount(data: Mapping[str, Any]) -> tuple[int | None, str | None]:
    """Integer minor units and currency. Floats and decimal strings are read with the currency's
    decimals; Money objects ``{"amount", "currency", "decimals"}`` with their own decimals."""
    currency = _currency(data.get("currency"))
    zero: tuple[int, str] | None = None
    for field in _AMOUNT_FIELDS:
        parsed = _money(data.get(field), currency)
        if parsed is not None and parsed[0] > 0:
            return parsed
        zero = zero or parsed
    if zero is not None:
        return zero
    return None, currency


def _money(value: Any, currency: str | None) -> tuple[int, str] | None:
    decimals: Any = None
    if isinstance(value, Mapping):
        currency = _currency(value.get("currency")) or currency
        decimals = value.get("decimals")
        value = value.get("amount")
    if currency is None:
        return None  # an amount without a currency is meaningless
    if not isinstance(decimals, int) or isinstance(decimals, bool) or not 0 <= decimals <= 6:
        decimals = currency_decimals(currency)
    minor = _to_minor(value, decimals)
    return None if minor is None else (minor, currency)


def _to_minor(value: Any, decimals: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        amount = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
        if not amount.is_finite() or amount < 0 or amount > _AMOUNT_MAX:
            return None
        return int((amount * (Decimal(10) ** decimals)).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    except InvalidOperation:
        return None


def _currency(value: Any) -> str | None:
    if isinstance(value, str) and _CURRENCY.match(value.strip().lower()):
        return value.strip().lower()
    return None


def _build(fields: Mapping[str, Any]) -> WhopEvent:
    try:
        return WhopEvent(**fields)
    except ValidationError as error:
        names = sorted({".".join(str(p) for p in e["loc"]) or "event"
                        for e in error.errors(include_input=False, include_url=False)})
        raise MalformedWebhook(", ".join(names)) from None
