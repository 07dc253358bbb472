"""The webhook queue (SQS): what the webhook route writes and ``process_events`` reads.

A message carries the verified, minimised event (``webhook_text.minimal_payload``: ids, amounts,
codes, times — exactly what ``events.payload`` stores), never the raw body, so no member e-mail
or name sits in SQS or the DLQ for their 14-day retention. A verified webhook that cannot be
applied travels as an "unusable" marker (webhook id + reason) so the consumer stores a poison
record. Bodies are JSON with ``ensure_ascii``: pure ASCII, so any Unicode in a payload survives
SQS's character rules unchanged.

Messages written before this format (the raw signed body, ``format`` attribute absent) are still
read, so a deploy never strands what is already queued.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SQS_MAX_BYTES = 256 * 1024
FORMAT = "event-v2"


class QueueUnavailable(Exception):
    """SQS did not accept the message: the caller must not acknowledge the webhook."""


@dataclass(frozen=True)
class QueuedWebhook:
    webhook_id: str
    received_at: datetime
    body: bytes | None = None  # a raw signed body: messages from before FORMAT, and tests
    event: dict[str, Any] | None = None  # the minimised event
    unusable: str | None = None  # why a verified webhook cannot be applied (a poison record)


def encode_message(webhook_id: str, received_at: datetime, *, event: dict[str, Any] | None = None,
                   unusable: str | None = None) -> tuple[str, dict[str, Any]]:
    if (event is None) == (unusable is None):
        raise ValueError("a message carries either an event or an unusable reason")
    content: dict[str, Any] = {"event": event} if event is not None else {"unusable": unusable}
    text = json.dumps(content, ensure_ascii=True, separators=(",", ":"), sort_keys=True)
    if len(text) > SQS_MAX_BYTES - 4 * 1024:
        raise ValueError("minimised event unexpectedly large")  # fields are length-capped upstream
    attributes = {
        "webhook_id": {"DataType": "String", "StringValue": webhook_id},
        "received_at": {"DataType": "String", "StringValue": received_at.astimezone(UTC).isoformat()},
        "format": {"DataType": "String", "StringValue": FORMAT},
    }
    return text, attributes


def _attr(attributes: dict[str, Any], name: str) -> str | None:
    value = attributes.get(name) or {}
    # Lambda's event shape uses camelCase (stringValue); boto3 receive_message uses StringValue.
    result = value.get("stringValue") or value.get("StringValue")
    return str(result) if result is not None else None


def decode_message(body: str, attributes: dict[str, Any]) -> QueuedWebhook:
    """Inverse of ``encode_message``; raises ValueError on a message we did not write."""
    webhook_id = _attr(attributes, "webhook_id")
    received = _attr(attributes, "received_at")
    if not webhook_id or not received:
        raise ValueError("message lacks webhook_id/received_at attributes")
    received_at = datetime.fromisoformat(received)
    if _attr(attributes, "format") == FORMAT:
        content = json.loads(body)
        if not isinstance(content, dict):
            raise ValueError("message body is not an object")
        if isinstance(content.get("event"), dict):
            return QueuedWebhook(webhook_id, received_at, event=content["event"])
        return QueuedWebhook(webhook_id, received_at, unusable=str(content.get("unusable") or "unknown"))
    raw = body.encode("utf-8")
    if _attr(attributes, "encoding") == "gzip-base64":
        raw = gzip.decompress(base64.b64decode(body))
    return QueuedWebhook(webhook_id=webhook_id, received_at=received_at, body=raw)


# issue 9: boto3's defaults (60 s connect and read, retried) outlast API Gateway's 29 s, so a hung
# SQS made the webhook answer 504. Short timeouts and bounded retries give a 503 in seconds, which
# Whop retries. Worst case: 2 attempts x (2 s connect + 3 s read) + backoff < 12 s.
SQS_CONNECT_TIMEOUT_S = 2.0
SQS_READ_TIMEOUT_S = 3.0
SQS_MAX_ATTEMPTS = 2


def sqs_client_config() -> Any:
    from botocore.config import Config

    return Config(connect_timeout=SQS_CONNECT_TIMEOUT_S, read_timeout=SQS_READ_TIMEOUT_S,
                  retries={"total_max_attempts": SQS_MAX_ATTEMPTS, "mode": "standard"})


class EventQueue:
    def __init__(self, queue_url: str, client: Any = None) -> None:
        self.queue_url = queue_url
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3  # only the webhook route needs it: keep it off other paths' cold start

            # AWS_ENDPOINT_URL_SQS (set by make dev and tests) points boto3 at the local moto server.
            self._client = boto3.client("sqs", config=sqs_client_config())
        return self._client

    def depth(self) -> int:
        """Messages waiting or in flight; raises QueueUnavailable when SQS cannot be reached."""
        try:
            attrs = self.client.get_queue_attributes(
                QueueUrl=self.queue_url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
        except Exception as exc:  # botocore raises many types; all mean "not reachable"
            raise QueueUnavailable(type(exc).__name__) from exc
        return sum(int(v) for v in attrs.get("Attributes", {}).values())

    def send(self, webhook_id: str, received_at: datetime, *, event: dict[str, Any] | None = None,
             unusable: str | None = None) -> str:
        text, attributes = encode_message(webhook_id, received_at, event=event, unusable=unusable)
        try:
            resp = self.client.send_message(QueueUrl=self.queue_url, MessageBody=text,
                                            MessageAttributes=attributes)
        except Exception as exc:  # botocore raises many types; every one means "not queued"
            raise QueueUnavailable(type(exc).__name__) from exc
        return str(resp["MessageId"])


_queue: EventQueue | None = None
_lock = threading.Lock()


def get_queue() -> EventQueue:
    global _queue
    with _lock:
        if _queue is None:
            from chalicelib.config import ConfigError, get_config

            url = get_config().EVENTS_QUEUE_URL
            if not url:
                raise ConfigError("missing required setting(s): EVENTS_QUEUE_URL")
            _queue = EventQueue(url)
        return _queue


def reset_queue() -> None:
    global _queue
    with _lock:
        _queue = None
