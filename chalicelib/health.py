"""Health checks: what an on-call engineer or a load balancer asks. No secrets, no tenant data.

- ``type=application`` is a free liveness answer: no auth, no I/O, and nothing an attacker could
  use (no version, environment or schema detail).
- ``type=database`` and ``type=webhook`` touch Postgres or SQS and say more (schema version, queue
  depth), so they need ``Authorization: Bearer`` with ``HEALTH_SECRET`` or ``SCHEDULER_SECRET``
  (or ``HEALTH_PUBLIC=true``, an operator's choice), else 401. Their answers are cached for
  ``DEEP_CACHE_S`` per process, so even an authorised flood costs one check per few seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel

from chalicelib.config import Settings
from chalicelib.db import DatabaseError
from chalicelib.db_pool import Database
from chalicelib.errors import BadRequest, Unauthorized
from chalicelib.queue import EventQueue, QueueUnavailable
from chalicelib.tenancy import ping, service_transaction

_STARTED = time.monotonic()
DEEP_CACHE_S = 5.0
CHECKS = ("application", "database", "webhook")


class ApplicationHealth(BaseModel):
    status: Literal["ok"]
    check: Literal["application"] = "application"
    uptime_s: float


class DatabaseHealth(BaseModel):
    status: Literal["ok", "error"]
    check: Literal["database"] = "database"
    reachable: bool
    latency_ms: float | None = None
    schema_version: str | None = None
    error: str | None = None  # the error class only: messages may name hosts or users
    # Per Whop permission, how many companies' latest card attach or payment retry Whop
    # refused for lacking it (403): "grant member:payment_methods:manage". Counts, never ids.
    whop_permissions_missing: dict[str, int] | None = None


class WebhookHealth(BaseModel):
    status: Literal["ok", "error"]
    check: Literal["webhook"] = "webhook"
    secret_configured: bool
    queue_reachable: bool
    queue_depth: int | None = None
    error: str | None = None


def webhook_secret_configured(cfg: Settings) -> bool:
    """Is there a webhook secret to verify with? Deployed, the health function may only
    *describe* that secret (``WHOP_WEBHOOK_SECRET_DESCRIBE_ARN``; IAM ``DescribeSecret``), never
    read its value: configured means it exists, is not being deleted and has a current version.
    Elsewhere (make dev, tests) the setting itself is looked at."""
    arn = cfg.WHOP_WEBHOOK_SECRET_DESCRIBE_ARN
    if not arn:
        return bool(cfg.WHOP_WEBHOOK_SECRET)
    import boto3  # only the deep webhook check needs it
    from botocore.config import Config

    client = boto3.client("secretsmanager", config=Config(connect_timeout=2, read_timeout=3,
                                                          retries={"max_attempts": 2}))
    try:
        described = client.describe_secret(SecretId=arn)
    except Exception:  # noqa: BLE001 - unreachable or refused: not known to be configured
        return False
    stages = [s for stages in described.get("VersionIdsToStages", {}).values() for s in stages]
    return "DeletedDate" not in described and "AWSCURRENT" in stages


def webhook_health(cfg: Settings, queue: EventQueue | None) -> WebhookHealth:
    """Can a webhook be accepted right now: a secret to verify with, and a queue that answers."""
    secret = webhook_secret_configured(cfg)
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
    return ApplicationHealth(status="ok", uptime_s=round(time.monotonic() - _STARTED, 3))


def database_health(db: Database | None) -> DatabaseHealth:
    if db is None:
        return DatabaseHealth(status="error", reachable=False, error="NotConfigured")
    try:
        latency_ms, version = ping(db)
    except DatabaseError as exc:
        return DatabaseHealth(status="error", reachable=False, error=type(exc).__name__)
    return DatabaseHealth(status="ok", reachable=True, latency_ms=round(latency_ms, 2),
                          schema_version=version, whop_permissions_missing=_permission_gaps(db))


def _permission_gaps(db: Database) -> dict[str, int] | None:
    """What Whop refused smart retry for, across companies (None when it cannot be read: the
    database answered the ping, which is what this check is about)."""
    from chalicelib.store.recovery import permission_gaps_everywhere

    try:
        with service_transaction(db) as tx:
            return permission_gaps_everywhere(tx)
    except DatabaseError:
        return None


Deep = DatabaseHealth | WebhookHealth


class DeepCheckCache:
    """The last answer of each deep check, reused for ``ttl_s`` (one probe at a time per check)."""

    def __init__(self, ttl_s: float = DEEP_CACHE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._answers: dict[str, tuple[float, Deep]] = {}

    def get(self, check: str, probe: Callable[[], Deep]) -> Deep:
        with self._lock:  # held while probing: concurrent callers wait for the one answer
            cached = self._answers.get(check)
            if cached is not None and self._clock() - cached[0] < self.ttl_s:
                return cached[1]
            answer = probe()
            self._answers[check] = (self._clock(), answer)
            return answer

    def clear(self) -> None:
        with self._lock:
            self._answers.clear()


deep_cache = DeepCheckCache()


def deep_check_allowed(cfg: Settings, authorization: str | None) -> bool:
    """May this caller run a deep check: the operator opened them, or a configured bearer matches."""
    from chalicelib.http import bearer_matches

    if cfg.HEALTH_PUBLIC:
        return True
    secrets = [s for s in (cfg.HEALTH_SECRET, cfg.SCHEDULER_SECRET) if s]
    # Every secret is compared (constant time each): which one matched is not observable.
    return any([bearer_matches(authorization, secret) for secret in secrets])


def health_check(check: str, cfg: Settings, authorization: str | None,
                 database: Callable[[], Database | None],
                 queue: Callable[[], EventQueue | None]) -> tuple[BaseModel, int]:
    """The answer for ``?type=check`` and its status code.

    Raises
    ------
    BadRequest
        Unknown check (400).
    Unauthorized
        A deep check without the bearer secret (401); nothing is probed.
    """
    if check not in CHECKS:
        raise BadRequest("unknown health check", fields={"type": "must be application, database or webhook"})
    if check == "application":
        return application_health(cfg), 200
    if not deep_check_allowed(cfg, authorization):
        raise Unauthorized("the database and webhook checks need Authorization: Bearer <health secret>")
    answer: Deep
    if check == "database":
        answer = deep_cache.get("database", lambda: database_health(database()))
    else:
        answer = deep_cache.get("webhook", lambda: webhook_health(cfg, queue()))
    return answer, 200 if answer.status == "ok" else 503
