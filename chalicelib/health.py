"""Health checks: what an on-call engineer or a load balancer asks. No secrets, no tenant data."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel

from chalicelib.config import Settings
from chalicelib.db import Database, DatabaseError, ping
from chalicelib.queue import EventQueue, QueueUnavailable

_STARTED = time.monotonic()


class ApplicationHealth(BaseModel):
    status: Literal["ok"]
    check: Literal["application"] = "application"
    version: str
    env: str
    uptime_s: float


class DatabaseHealth(BaseModel):
    status: Literal["ok", "error"]
    check: Literal["database"] = "database"
    reachable: bool
    latency_ms: float | None = None
    schema_version: str | None = None
    error: str | None = None  # the error class only: messages may name hosts or users


class WebhookHealth(BaseModel):
    status: Literal["ok", "error"]
    check: Literal["webhook"] = "webhook"
    secret_configured: bool
    queue_reachable: bool
    queue_depth: int | None = None
    error: str | None = None


def webhook_health(cfg: Settings, queue: EventQueue | None) -> WebhookHealth:
    """Can a webhook be accepted right now: a secret to verify with, and a queue that answers."""
    secret = bool(cfg.WHOP_WEBHOOK_SECRET)
    if queue is None:
        return WebhookHealth(status="error", secret_configured=secret, queue_reachable=False,
                             error="NotConfigured")
    try:
        depth = queue.depth()
    except QueueUnavailable as exc:
        return WebhookHealth(status="error", secret_configured=secret, queue_reachable=False,
                             error=str(exc))
    return WebhookHealth(status="ok" if secret else "error", secret_configured=secret,
                         queue_reachable=True, queue_depth=depth)


def application_health(cfg: Settings) -> ApplicationHealth:
    return ApplicationHealth(status="ok", version=cfg.APP_VERSION, env=cfg.APP_ENV,
                             uptime_s=round(time.monotonic() - _STARTED, 3))


def database_health(db: Database | None) -> DatabaseHealth:
    if db is None:
        return DatabaseHealth(status="error", reachable=False, error="NotConfigured")
    try:
        latency_ms, version = ping(db)
    except DatabaseError as exc:
        return DatabaseHealth(status="error", reachable=False, error=type(exc).__name__)
    return DatabaseHealth(status="ok", reachable=True, latency_ms=round(latency_ms, 2),
                          schema_version=version)
