"""Verifying a Whop webhook: the Standard Webhooks signature the way Whop signs (HMAC over the
literal bytes of the ``ws_…`` secret), a fresh timestamp, the ``webhook-id``. Pure: no database,
no AWS, no network. Nothing the sender controls raises anything but ``WebhookVerificationFailed``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

TIMESTAMP_TOLERANCE: Final = timedelta(minutes=5)

VerificationReason = Literal["missing_headers", "bad_timestamp", "stale_timestamp", "bad_signature"]


class WebhookVerificationFailed(Exception):
    """The request is not a genuine, fresh Whop delivery. ``reason`` says which check failed."""

    def __init__(self, reason: VerificationReason) -> None:
        super().__init__(reason)
        self.reason: str = reason


_TIMESTAMP_HEADER = re.compile(r"^[0-9]{1,12}$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


def verify(body: bytes, headers: Mapping[str, str], secret: str, now: datetime) -> str:
    """Verify a Standard Webhooks delivery signed by Whop; return its ``webhook-id``.

    Raises ``WebhookVerificationFailed`` (reason: missing_headers, bad_timestamp, stale_timestamp
    or bad_signature) and nothing else for anything the sender controls. An empty ``secret`` or a
    naive ``now`` is a programming error (``ValueError``).
    """
    if not secret:
        raise ValueError("webhook secret is empty")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    lowered = {str(k).lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        raise WebhookVerificationFailed("missing_headers")
    sent_at = _header_time(timestamp)
    if abs(now - sent_at) > TIMESTAMP_TOLERANCE:
        raise WebhookVerificationFailed("stale_timestamp")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookVerificationFailed("bad_signature") from None
    candidates = _well_formed_signatures(signatures)
    if not candidates:
        raise WebhookVerificationFailed("bad_signature")
    clean = {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": candidates}
    try:
        Webhook(_hmac_key(secret)).verify(text, clean, json_parse=False)
    except WebhookVerificationError as error:
        raise WebhookVerificationFailed(_library_reason(error)) from None
    except (ValueError, TypeError):  # binascii.Error is a ValueError; the header is attacker-made
        raise WebhookVerificationFailed("bad_signature") from None
    return msg_id


def _hmac_key(secret: str) -> str:
    """Whop HMACs with the literal secret bytes; the library base64-decodes its key, so encode it."""
    return base64.b64encode(secret.encode("utf-8")).decode("ascii")


def _header_time(value: str) -> datetime:
    if not _TIMESTAMP_HEADER.match(value.strip()):
        raise WebhookVerificationFailed("bad_timestamp")
    try:
        return datetime.fromtimestamp(int(value), tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise WebhookVerificationFailed("bad_timestamp") from None


def _well_formed_signatures(header: str) -> str:
    """Keep only ``v1,<base64>`` parts: a malformed part can never match, and must not stop a
    valid one later in the list from being tried (the library raises on the first bad part)."""
    kept = []
    for part in header.split():
        version, sep, signature = part.partition(",")
        if sep and version == "v1" and _BASE64.match(signature) and _decodes(signature):
            kept.append(part)
    return " ".join(kept)


def _decodes(signature: str) -> bool:
    try:
        base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _library_reason(error: WebhookVerificationError) -> VerificationReason:
    message = str(error).lower()
    if "too old" in message or "too new" in message:
        return "stale_timestamp"  # the library's own check against the real clock
    if "missing" in message:
        return "missing_headers"
    return "bad_signature"
