"""The webhook route's work: verify, validate, queue. It never touches the database.

Answers (status, body): 200 once SQS holds the message; 200 "ignored" for types we do not
handle (not queued); 401 for anything that fails the signature; 400 for a signed but malformed
body; 413 for an oversized body; 503 when the queue is unavailable so that Whop retries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from chalicelib.config import ConfigError
from chalicelib.queue import EventQueue, QueueUnavailable
from chalicelib.webhooks import MalformedWebhook, WebhookVerificationFailed, normalise, verify

MAX_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class Accepted:
    status_code: int
    outcome: str  # metric-friendly: queued, ignored, rejected_<reason>, malformed, too_large, ...
    message: str
    webhook_id: str | None = None


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
    try:
        event = normalise(body, webhook_id, now)
    except MalformedWebhook as exc:
        return Accepted(400, "malformed", str(exc), webhook_id)
    if event is None:
        return Accepted(200, "ignored", "event type not handled", webhook_id)
    try:
        queue().send(webhook_id, now, body)
    except (QueueUnavailable, ConfigError):
        return Accepted(503, "queue_unavailable", "temporarily unavailable, retry", webhook_id)
    return Accepted(200, "queued", "queued", webhook_id)
