"""Whop's JSON (dated or legacy shape) → the port's values, keeping no PII: a membership, a
payment, a ``Money`` amount, Whop's error text. Pure: no HTTP, no SDK.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from chalicelib.whop import Membership, Payment

# Whop's error text is kept (truncated) for operators; error bodies are never kept whole.
_MAX_ERROR_MESSAGE = 300
# Payment fields handed back to the domain (no card, e-mail, name or phone).
PAYMENT_FIELDS = ("id", "status", "substatus", "membership_id", "retryable", "payments_failed",
                  "failure_message", "decline_code", "paid_at", "last_payment_attempt_at",
                  "next_payment_attempt_at", "payment_method_id")


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


def error_message(body: Any) -> str | None:
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

