"""Per-company request limits for the creator API: Postgres-backed fixed windows.

Every Lambda instance shares the counters in ``rate_limits`` (RLS-scoped like any tenant table).
A check is ONE atomic statement: ``INSERT … ON CONFLICT … DO UPDATE SET count = count + 1
RETURNING count``. Concurrent requests queue on the row lock, so at a limit of K exactly K of
them see a count <= K, whatever the number of instances. A rejected request still counts: a
client hammering past the limit keeps its window full.

Limits are per company and route class, per window (default 60 s):

| class            | routes                                     | default | env variable                |
|------------------|--------------------------------------------|---------|-----------------------------|
| ``reads``        | every creator GET except the CSV export    | 300     | ``RATE_LIMIT_READS``        |
| ``settings_write`` | ``PUT …/settings``                       | 30      | ``RATE_LIMIT_SETTINGS_WRITE`` |
| ``actions``      | ``POST …/cases/{id}/…``                     | 60      | ``RATE_LIMIT_ACTIONS``      |
| ``export``       | ``GET …/cases/export.csv``                  | 10      | ``RATE_LIMIT_EXPORT``       |

``RATE_LIMIT_WINDOW_S`` sets the window length (1–3600 s). The variables are read once per
process (``get_limits``) and validated with pydantic: a malformed value is a ``ConfigError``
naming it (the request answers 503 "service misconfigured", and the error is logged).

Old windows are deleted opportunistically: about one check in a hundred also deletes the
company's windows that ended more than a day ago.

Some limits must hold before any company is known (``check_principal``): they count in
``request_limits`` through the SECURITY DEFINER function ``count_request`` (migration 0006),
keyed by a SHA-256 of the principal, so the table holds no user id or link token:

| scope           | key                    | default | env variable                 |
|-----------------|------------------------|---------|------------------------------|
| ``whop_access`` | the token's ``sub``    | 20      | ``RATE_LIMIT_ACCESS_CHECKS`` |
| ``link``        | the tracked-link token | 30      | ``RATE_LIMIT_LINK_CLICKS``   |
| ``scheduler``   | the route (one key)    | 12      | ``RATE_LIMIT_SCHEDULER``     |
| ``scheduler_failures`` | the caller's address | 12 | ``RATE_LIMIT_SCHEDULER_FAILURES`` |

The scheduler route checks its bearer first: ``scheduler`` counts only authenticated ticks, and
wrong bearers count per source address in ``scheduler_failures``, so nobody without the secret
can spend the real caller's budget.

``whop_access`` counts only the access checks that would call Whop (a cached answer is free):
one token cannot make Rebound call Whop once per made-up company id.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chalicelib.config import ConfigError
from chalicelib.db import Transaction
from chalicelib.db_pool import Database
from chalicelib.tenancy import service_transaction, tenant_transaction

RouteClass = Literal["reads", "settings_write", "actions", "export"]

PURGE_CHANCE = 0.01
RETENTION = timedelta(days=1)

PrincipalScope = Literal["whop_access", "link", "scheduler", "scheduler_failures"]
_PRINCIPAL_FIELDS: dict[str, str] = {"whop_access": "access_checks", "link": "link_clicks",
                                     "scheduler": "scheduler", "scheduler_failures": "scheduler_failures"}

_ENV = {"reads": "RATE_LIMIT_READS", "settings_write": "RATE_LIMIT_SETTINGS_WRITE",
        "actions": "RATE_LIMIT_ACTIONS", "export": "RATE_LIMIT_EXPORT", "window_s": "RATE_LIMIT_WINDOW_S",
        "access_checks": "RATE_LIMIT_ACCESS_CHECKS", "link_clicks": "RATE_LIMIT_LINK_CLICKS",
        "scheduler": "RATE_LIMIT_SCHEDULER", "scheduler_failures": "RATE_LIMIT_SCHEDULER_FAILURES"}


class RateLimits(BaseModel):
    """Requests allowed per company, per route class, per window."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reads: int = Field(default=300, ge=1, le=1_000_000)
    settings_write: int = Field(default=30, ge=1, le=1_000_000)
    actions: int = Field(default=60, ge=1, le=1_000_000)
    export: int = Field(default=10, ge=1, le=1_000_000)
    window_s: int = Field(default=60, ge=1, le=3600)
    access_checks: int = Field(default=20, ge=1, le=1_000_000)
    link_clicks: int = Field(default=30, ge=1, le=1_000_000)
    scheduler: int = Field(default=12, ge=1, le=1_000_000)
    scheduler_failures: int = Field(default=12, ge=1, le=1_000_000)

    def limit(self, route_class: RouteClass) -> int:
        value: int = getattr(self, route_class)
        return value

    def principal_limit(self, scope: PrincipalScope) -> int:
        value: int = getattr(self, _PRINCIPAL_FIELDS[scope])
        return value


def load_limits(environ: Mapping[str, str] | None = None) -> RateLimits:
    """Limits from ``RATE_LIMIT_*`` (defaults for unset ones); ConfigError names a bad one."""
    env = os.environ if environ is None else environ
    values = {field: env[name] for field, name in _ENV.items() if env.get(name, "") != ""}
    try:
        return RateLimits.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{_ENV[str(err['loc'][0])]}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid rate limit: {problems}") from None


@lru_cache(maxsize=1)
def get_limits() -> RateLimits:
    return load_limits()


@dataclass(frozen=True)
class Decision:
    """The outcome of one check, and the headers that tell the client about it."""

    allowed: bool
    limit: int
    count: int
    reset_at: datetime  # end of the current window

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.count)

    def retry_after_s(self, now: datetime) -> int:
        return max(1, math.ceil((self.reset_at - now).total_seconds()))

    def headers(self, now: datetime) -> dict[str, str]:
        headers = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining),
                   "X-RateLimit-Reset": str(int(self.reset_at.timestamp()))}
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s(now))
        return headers


def window_start(now: datetime, window_s: int) -> datetime:
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % window_s, tz=UTC)


def check(company_id: str, route_class: RouteClass, now: datetime, *, limits: RateLimits | None = None,
          db: Database | None = None, purge_chance: float = PURGE_CHANCE) -> Decision:
    """Count one request of ``company_id`` in ``route_class`` and say whether it may proceed.

    Runs in its own short tenant transaction, committed before the request's own work, so a
    request that later fails still counted.
    """
    limits = limits or get_limits()
    start = window_start(now, limits.window_s)
    with tenant_transaction(company_id, db) as tx:
        count = int(tx.scalar(
            "INSERT INTO rate_limits (company_id, bucket, window_start, count)"
            " VALUES (:company_id, :bucket, :start, 1)"
            " ON CONFLICT (company_id, bucket, window_start)"
            " DO UPDATE SET count = rate_limits.count + 1 RETURNING count",
            company_id=company_id, bucket=route_class, start=start))
        if purge_chance > 0 and random.random() < purge_chance:
            _purge(tx, now)
    limit = limits.limit(route_class)
    return Decision(allowed=count <= limit, limit=limit, count=count,
                    reset_at=start + timedelta(seconds=limits.window_s))


def _purge(tx: Transaction, now: datetime) -> int:
    return tx.execute("DELETE FROM rate_limits WHERE window_start < :before", before=now - RETENTION)


def check_principal(scope: PrincipalScope, key: str, now: datetime, *, limits: RateLimits | None = None,
                    db: Database | None = None) -> Decision:
    """Count one request of ``key`` (a user id, a link token, …) in ``scope``; no tenant needed.

    The key is hashed before it reaches the database: the table never holds a user id or token.
    """
    limits = limits or get_limits()
    start = window_start(now, limits.window_s)
    digest = hashlib.sha256(f"{scope}:{key}".encode("utf-8", "surrogatepass")).hexdigest()
    with service_transaction(db) as tx:
        count = int(tx.scalar("SELECT count_request(:scope, :key, :start)", scope=scope, key=digest,
                              start=start))
    limit = limits.principal_limit(scope)
    return Decision(allowed=count <= limit, limit=limit, count=count,
                    reset_at=start + timedelta(seconds=limits.window_s))


def enforce_principal(scope: PrincipalScope, key: str, now: datetime, message: str) -> Decision:
    """``check_principal``, raising 429 (with Retry-After) when over the limit."""
    decision = check_principal(scope, key, now)
    if not decision.allowed:
        from chalicelib.errors import TooManyRequests

        raise TooManyRequests(message, headers=decision.headers(now))
    return decision
