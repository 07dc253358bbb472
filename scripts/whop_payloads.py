"""Builders for signed Whop webhooks, shaped like real deliveries (v1 legacy shape).

Used by the tests, by scripts/simulate.py and by the demo seed of `make dev`.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

from chalicelib.config import DEV_DEFAULTS

SECRET = DEV_DEFAULTS["WHOP_WEBHOOK_SECRET"]


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def sign(body: bytes, msg_id: str, secret: str = SECRET, at: datetime | None = None) -> dict[str, str]:
    """Standard Webhooks headers as Whop makes them (HMAC key = the literal ws_ secret bytes)."""
    at = at or datetime.now(UTC)
    signer = Webhook(base64.b64encode(secret.encode()).decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signer.sign(msg_id, at, body.decode()),
            "content-type": "application/json"}


def payment_event(kind: str, *, company: str = "biz_alpha", membership: str = "mem_1",
                  user: str = "user_1", at: datetime, msg_id: str | None = None,
                  amount: float = 19.99, currency: str = "usd", payment: str = "pay_1",
                  recovery_url: str | None = None, decline_code: str | None = "insufficient_funds",
                  failure_message: str | None = "Your card has insufficient funds.") -> tuple[str, bytes]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex[:24]}"
    data: dict[str, Any] = {
        "id": payment, "status": "paid" if kind == "payment.succeeded" else "open",
        "currency": currency, "total": amount, "subtotal": amount, "payments_failed": 1,
        "failure_message": failure_message if kind != "payment.succeeded" else None,
        "decline_code": decline_code if kind != "payment.succeeded" else None,
        "recovery_url": recovery_url, "created_at": iso(at),
        "membership": {"id": membership, "status": "past_due"},
        "user": {"id": user, "email": "buyer@example.com", "name": "Jane", "username": "jane"},
        "company": {"id": company, "title": "Acme"},
    }
    if kind == "payment.succeeded":
        data["paid_at"] = iso(at)
    else:
        data["last_payment_attempt"] = iso(at)
    envelope = {"id": msg_id, "api_version": "v1", "api_version_date": None,
                "timestamp": iso(datetime.now(UTC)), "type": kind, "company_id": company, "data": data}
    return msg_id, json.dumps(envelope).encode()


def membership_event(kind: str, *, company: str = "biz_alpha", membership: str = "mem_1",
                     at: datetime, msg_id: str | None = None, user: str = "user_1",
                     **fields: Any) -> tuple[str, bytes]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex[:24]}"
    data = {"id": membership, "status": fields.pop("status", "active"), "user": {"id": user},
            "company": {"id": company}, "manage_url": f"https://whop.com/orders/{membership}/manage",
            **fields}
    envelope = {"id": msg_id, "api_version": "v1", "timestamp": iso(at), "type": kind,
                "company_id": company, "data": data}
    return msg_id, json.dumps(envelope).encode()


def card_saved_event(*, company: str = "biz_alpha", user: str = "user_1", payment_method: str = "payt_new_1",
                     at: datetime | None = None, msg_id: str | None = None,
                     dated: bool = False) -> tuple[str, bytes]:
    """``setup_intent.succeeded``: the member saved a payment method. ``dated`` gives
    the pinned v1 shape (flat ``payment_method_id``, ``user{}``, ``account_id``); otherwise the
    legacy shape of Whop's docs example (``payment_method{id}``, ``member{user{id}}``, ``company_id``).
    The envelope ``timestamp`` is the event time."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex[:24]}"
    at = at or datetime.now(UTC)
    data: dict[str, Any]
    if dated:
        data = {"id": f"sint_{uuid.uuid4().hex[:13]}", "status": "succeeded", "account_id": company,
                "payment_method_id": payment_method, "payment_method_type": "card",
                "member_id": f"mber_{user[-8:]}", "user": {"id": user, "name": "Jane", "username": "jane"},
                "created_at": iso(at), "updated_at": iso(at), "three_ds_verified": False, "metadata": {}}
        envelope = {"id": msg_id, "api_version": "v1", "api_version_date": "2026-10-15-1",
                    "timestamp": iso(at), "type": "setup_intent.succeeded", "account_id": company,
                    "data": data}
    else:
        data = {"id": f"sint_{uuid.uuid4().hex[:13]}", "status": "succeeded", "created_at": iso(at),
                "error_message": None, "company": {"id": company}, "checkout_configuration": None,
                "member": {"id": f"mber_{user[-8:]}",
                           "user": {"id": user, "email": "buyer@example.com", "name": "Jane",
                                    "username": "jane"}},
                "payment_method": {"id": payment_method, "created_at": iso(at), "payment_method_type": "card",
                                   "card": {"brand": "visa", "last4": "4242", "exp_month": 4,
                                            "exp_year": 2031}},
                "metadata": {}}
        envelope = {"id": msg_id, "api_version": "v1", "api_version_date": None, "timestamp": iso(at),
                    "type": "setup_intent.succeeded", "company_id": company, "data": data}
    return msg_id, json.dumps(envelope).encode()
