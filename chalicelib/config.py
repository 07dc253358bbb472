"""Every setting of the contract, validated once.

In ``production`` a missing or malformed required setting raises ``ConfigError`` naming it, so
a Lambda fails at cold start instead of on the first webhook. In ``development`` and ``test``
the documented defaults below apply, so ``make dev`` and ``make test`` need no setup.

A secret may instead come from AWS Secrets Manager: when ``<NAME>_SECRET_ARN`` is set, the
value is fetched through Powertools Parameters (cached) and replaces ``<NAME>``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

AppEnv = Literal["production", "development", "test"]

# Settings a production deploy must provide (contract, "Configuration").
REQUIRED_IN_PRODUCTION = (
    "DATABASE_URL",
    "WHOP_API_KEY",
    "WHOP_WEBHOOK_SECRET",
    "WHOP_APP_ID",
    "EVENTS_QUEUE_URL",
    "PUBLIC_BASE_URL",
)
# Settings that may be stored in Secrets Manager instead of the environment.
SECRET_SETTINGS = ("DATABASE_URL", "MIGRATIONS_DATABASE_URL", "WHOP_API_KEY",
                   "WHOP_WEBHOOK_SECRET", "SCHEDULER_SECRET", "HEALTH_SECRET")

# Defaults for development and test only: never used in production (see load_config).
DEV_DEFAULTS: dict[str, str] = {
    "WHOP_API_KEY": "dev_whop_api_key",
    "WHOP_WEBHOOK_SECRET": "ws_dev_webhook_secret",
    "WHOP_APP_ID": "app_rebound_dev",
    "PUBLIC_BASE_URL": "http://127.0.0.1:8000",
}


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message names it."""


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    APP_ENV: AppEnv = "production"
    DATABASE_URL: str | None = None
    MIGRATIONS_DATABASE_URL: str | None = None
    WHOP_API_KEY: str | None = None
    WHOP_WEBHOOK_SECRET: str | None = None
    WHOP_APP_ID: str | None = None
    WHOP_API_BASE: str = "https://api.whop.com/api/v1"
    WHOP_JWKS_URL: str = "https://api.whop.com/.well-known/jwks.json"
    EVENTS_QUEUE_URL: str | None = None
    SCHEDULER_SECRET: str | None = None
    PUBLIC_BASE_URL: str | None = None
    APP_VERSION: str = "dev"
    # Seconds a database connect may take before the request fails (health, handlers).
    DB_CONNECT_TIMEOUT_S: float = Field(default=5.0, gt=0, le=60)
    # "prepared": statements prepared once per connection (one wait each; pins an RDS Proxy
    # session). "unnamed": no session state, for RDS Proxy multiplexing (three waits each).
    DB_STATEMENTS: Literal["prepared", "unnamed"] = "prepared"
    # Days event details and click rows are kept before the tick purges them (docs/privacy.md).
    RETENTION_DAYS: int = Field(default=180, ge=1, le=3650)
    # Connections one process may hold (Lambda serves one request at a time and keeps one warm;
    # ``make dev`` serves a thread per request and shares this many).
    DB_POOL_SIZE: int = Field(default=4, ge=1, le=50)
    # Hosts a tracked link may redirect a member to (https only): exact names, or ``*.suffix``.
    REDIRECT_HOSTS: str = "whop.com,*.whop.com"
    # Bearer secret for the deep health checks (``type=database|webhook``); SCHEDULER_SECRET works too.
    HEALTH_SECRET: str | None = None
    # ``true`` opens the deep health checks without a bearer (an operator's choice, e.g. behind a VPC).
    HEALTH_PUBLIC: bool = False

    @field_validator("DATABASE_URL", "MIGRATIONS_DATABASE_URL")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("REDIRECT_HOSTS")
    @classmethod
    def _hosts(cls, value: str) -> str:
        hosts = [h.strip().lower() for h in value.split(",") if h.strip()]
        if not hosts or any(not re.fullmatch(r"(\*\.)?[a-z0-9.-]+", h) for h in hosts):
            raise ValueError("must be a comma-separated list of host names (or *.suffix)")
        return ",".join(hosts)

    @property
    def redirect_hosts(self) -> tuple[str, ...]:
        return tuple(self.REDIRECT_HOSTS.split(","))

    @field_validator("WHOP_API_BASE", "WHOP_JWKS_URL", "PUBLIC_BASE_URL")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/") if value else value

    @field_validator("WHOP_WEBHOOK_SECRET")
    @classmethod
    def _webhook_secret(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @property
    def is_production(self) -> bool:
        return self.APP_ENV == "production"


def _fetch_secret(arn: str) -> str:
    # Imported lazily: only deployments that keep secrets in Secrets Manager pay for boto3 here.
    from aws_lambda_powertools.utilities import parameters

    value = parameters.get_secret(arn)
    if not isinstance(value, str):
        raise ConfigError(f"secret {arn!r} is not a string secret")
    return value


def load_config(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from ``environ`` (default ``os.environ``); raise ConfigError naming a bad one."""
    env = dict(os.environ if environ is None else environ)
    values: dict[str, str] = {k: v for k, v in env.items() if k in Settings.model_fields and v != ""}
    for name in SECRET_SETTINGS:
        arn = env.get(f"{name}_SECRET_ARN")
        if arn:
            try:
                values[name] = _fetch_secret(arn)
            except ConfigError:
                raise
            except Exception as exc:  # any AWS failure: name the setting, never the value
                raise ConfigError(f"{name}: could not read secret from {name}_SECRET_ARN "
                                  f"({type(exc).__name__})") from exc
    app_env = values.get("APP_ENV", "production")
    if app_env in ("development", "test"):
        for name, default in DEV_DEFAULTS.items():
            values.setdefault(name, default)
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
    if settings.is_production:
        missing = [name for name in required_settings(env) if not getattr(settings, name)]
        if missing:
            raise ConfigError("missing required setting(s): " + ", ".join(missing))
    _check_database_url(settings)
    return settings


def required_settings(env: Mapping[str, str]) -> tuple[str, ...]:
    """What this process must have in production: ``REQUIRED_SETTINGS`` (comma-separated) when the
    deployed template sets it per function, else all of ``REQUIRED_IN_PRODUCTION``. Least
    privilege: the webhook function cannot read the database secret, so must not require it."""
    listed = tuple(n.strip() for n in env.get("REQUIRED_SETTINGS", "").split(",") if n.strip())
    unknown = [n for n in listed if n not in Settings.model_fields]
    if unknown:
        raise ConfigError("REQUIRED_SETTINGS: unknown setting(s): " + ", ".join(unknown))
    return listed or REQUIRED_IN_PRODUCTION


def _check_database_url(settings: Settings) -> None:
    """Parse ``DATABASE_URL`` now (cold start), not on the first request: a malformed or refused URL
    stops the start with a message naming the setting, never any part of its value."""
    if not settings.DATABASE_URL:
        return
    from chalicelib.db import DatabaseUrlError, check_tls_policy, parse_database_url

    try:
        check_tls_policy(parse_database_url(settings.DATABASE_URL), production=settings.is_production)
    except DatabaseUrlError as exc:
        raise ConfigError(f"DATABASE_URL {exc}") from None


@lru_cache(maxsize=1)
def get_config() -> Settings:
    """The process-wide settings, read once (warm Lambda invocations reuse them)."""
    return load_config()


def reset_config() -> None:
    """Forget the cached settings (tests and the dev launcher change the environment)."""
    get_config.cache_clear()
