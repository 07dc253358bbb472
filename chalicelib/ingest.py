"""The webhook route's work: verify, validate, queue. It never touches the database.

Answers (status, body): 200 once SQS holds the message; 200 "ignored" for types we do not
handle (not queued); 401 for anything that fails the signature; 413 for an oversized body; 503
when the queue is unavailable so that Whop retries.

A correctly signed body that cannot be used (bad JSON, a failure without a membership) is Whop's
genuine delivery: a 4xx would make Whop retry it for days and maybe disable the endpoint, and a
retry can never fix it. It is answered 200 "ignored" and queued as an "unusable" marker (webhook
id + the field at fault, no payload), so the consumer keeps a poison record: acknowledged, never
silently dropped.

What is queued is the minimised event (no e-mail, name or other PII), not the raw body.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chalicelib.config import ConfigError
from chalicelib.models import EventType, clean_text
from chalicelib.queue import EventQueue, QueueUnavailable
from chalicelib.webhook_signature import WebhookVerificationFailed, verify
from chalicelib.webhook_text import minimal_payload
from chalicelib.webhooks import MalformedWebhook, normalise

MAX_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class Accepted:
    status_code: int
    outcome: str  # metric-friendly: queued, ignored, ignored_unusable, rejected_<reason>, too_large, ...
    message: str
    webhook_id: str | None = None
    # Set when Whop's delivery was accepted (200): its type for the "webhooks by type" metric.
    event_type: str | None = None


def type_label(event_type: EventType | None) -> str:
    """``payment.failed`` -> ``payment_failed``; ``other`` for a type Rebound ignores. The labels
    come from the EventType enum, never from the payload: metric names stay a small fixed set."""
    return event_type.value.replace(".", "_") if event_type is not None else "other"


def accept_webhook(body: bytes, headers: Mapping[str, str], secret: str, now: datetime,
                   queue: Callable[[], EventQueue]) -> Accepted:
    """``queue`` is only asked for once a valid event is to be sent: a bad signature is a 401
    even while the queue is misconfigured."""
    if len(body) > MAX_BODY_BYTES:
        return Accepted(413, "too_large", "body exceeds 256 KiB")
    try:
        webhook_id = verify(body, headers, secret, now)
    except WebhookVerificationFailed as exc:
        return Accepted(401, f"rejected_{exc.reason}", "invalid webhook signature")
    # Stored and queued ids must be storable; the signature was checked over the header as sent.
    webhook_id = clean_text(webhook_id).strip()[:255]
    if not webhook_id:
        return Accepted(401, "rejected_missing_headers", "invalid webhook signature")
    try:
        event = normalise(body, webhook_id, now)
    except MalformedWebhook as exc:
        return _send(queue, webhook_id, now, Accepted(200, "ignored_unusable", "ignored", webhook_id),
                     unusable=str(exc))
    if event is None:
        return Accepted(200, "ignored", "event type not handled", webhook_id, type_label(None))
    queued = Accepted(200, "queued", "queued", webhook_id, type_label(event.type))
    return _send(queue, webhook_id, now, queued, event=minimal_payload(event))


def _send(queue: Callable[[], EventQueue], webhook_id: str, now: datetime, answer: Accepted,
          **content: Any) -> Accepted:
    try:
        queue().send(webhook_id, now, **content)
    except (QueueUnavailable, ConfigError):
        return Accepted(503, "queue_unavailable", "temporarily unavailable, retry", webhook_id)
    return answer
