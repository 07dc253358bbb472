"""Every setting of the contract, validated once.

In ``production`` a missing or malformed required setting raises ``ConfigError`` naming it, so
a Lambda fails at cold start instead of on the first webhook. In ``development`` and ``test``
the documented defaults below apply, so ``make dev`` and ``make test`` need no setup.

A secret may instead come from AWS Secrets Manager: when ``<NAME>_SECRET_ARN`` is set, the
value is fetched through Powertools Parameters and replaces ``<NAME>``. Such settings are read
again once they are ``SECRETS_MAX_AGE_S`` old (default 300 s, Powertools' ``max_age``), so a key
rotated in Secrets Manager reaches warm functions without a deploy; a failed refresh keeps the
values it has (logged, metric ``SecretRefreshFailed``) and tries again 5 seconds later.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chalicelib.database_url import DatabaseUrlError, check_tls_policy, parse_database_url

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
    # RDS Proxy's endpoint (set by the template when the proxy is on): connections go there
    # instead of DATABASE_URL's host, verify-full against the system trust store (the proxy's
    # certificate comes from ACM, not the RDS CA bundle). User, password and database stay.
    DATABASE_PROXY_HOST: str | None = None
    # "prepared": statements prepared once per connection (one wait each; pins an RDS Proxy
    # session). "unnamed": no session state, for RDS Proxy multiplexing (three waits each).
    DB_STATEMENTS: Literal["prepared", "unnamed"] = "prepared"
    # Days event details and click rows are kept before the tick purges them (docs/privacy.md).
    # At least 15: the 14-day recovery window needs them (run_retention refuses less, too).
    RETENTION_DAYS: int = Field(default=180, ge=15, le=3650)
    # Seconds a value read from Secrets Manager is used before it is read again.
    SECRETS_MAX_AGE_S: int = Field(default=300, ge=0, le=86400)
    # Connections one process may hold (Lambda serves one request at a time and keeps one warm;
    # ``make dev`` serves a thread per request and shares this many).
    DB_POOL_SIZE: int = Field(default=4, ge=1, le=50)
    # Hosts a tracked link may redirect a member to (https only): exact names, or ``*.suffix``.
    REDIRECT_HOSTS: str = "whop.com,*.whop.com"
    # Bearer secret for the deep health checks (``type=database|webhook``); SCHEDULER_SECRET works too.
    HEALTH_SECRET: str | None = None
    # ``true`` opens the deep health checks without a bearer (an operator's choice, e.g. behind a VPC).
    HEALTH_PUBLIC: bool = False
    # The webhook secret's ARN for the health check to describe (exists, current), never to read.
    WHOP_WEBHOOK_SECRET_DESCRIBE_ARN: str | None = None

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


DEFAULT_SECRETS_MAX_AGE_S = 300


def _fetch_secret(arn: str, max_age_s: int = DEFAULT_SECRETS_MAX_AGE_S, force: bool = False) -> str:
    # Imported lazily: only deployments that keep secrets in Secrets Manager pay for boto3 here.
    from aws_lambda_powertools.utilities import parameters

    value = parameters.get_secret(arn, max_age=max_age_s, force_fetch=force)
    if not isinstance(value, str):
        raise ConfigError(f"secret {arn!r} is not a string secret")
    return value


def _max_age(env: Mapping[str, str]) -> int:
    raw = env.get("SECRETS_MAX_AGE_S", "")
    return int(raw) if raw.isdigit() else DEFAULT_SECRETS_MAX_AGE_S


def has_secret_arns(env: Mapping[str, str]) -> bool:
    return any(env.get(f"{name}_SECRET_ARN") for name in SECRET_SETTINGS)


def load_config(environ: Mapping[str, str] | None = None, *, force_fetch: bool = False) -> Settings:
    """Build the settings from ``environ`` (default ``os.environ``); raise ConfigError naming a bad one.
    ``force_fetch`` reads every secret from Secrets Manager again, whatever its age."""
    env = dict(os.environ if environ is None else environ)
    values: dict[str, str] = {k: v for k, v in env.items() if k in Settings.model_fields and v != ""}
    for name in SECRET_SETTINGS:
        arn = env.get(f"{name}_SECRET_ARN")
        if arn:
            try:
                values[name] = _fetch_secret(arn, _max_age(env), force_fetch)
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
    try:
        check_tls_policy(parse_database_url(settings.DATABASE_URL), production=settings.is_production)
    except DatabaseUrlError as exc:
        raise ConfigError(f"DATABASE_URL {exc}") from None


@dataclass(frozen=True)
class _Loaded:
    settings: Settings
    at: float  # monotonic time of the read
    refreshes: bool  # some value came from Secrets Manager: read it again once it is old


_loaded: _Loaded | None = None
_lock = threading.Lock()
# The process clock decides when a cached secret is old (a cache age, not a deadline); tests
# replace it to move time without waiting.
clock: Callable[[], float] = time.monotonic


def get_config() -> Settings:
    """The process-wide settings. Read once; when some came from Secrets Manager, read again
    once they are ``SECRETS_MAX_AGE_S`` old (warm Lambda invocations reuse them until then)."""
    loaded = _loaded
    if loaded is not None and (not loaded.refreshes
                               or clock() - loaded.at < loaded.settings.SECRETS_MAX_AGE_S):
        return loaded.settings
    return _reload(now=False)


def refresh_config() -> Settings:
    """Read every secret again now (a database login refused: the password may have rotated)."""
    return _reload(now=True)


def _reload(now: bool) -> Settings:
    global _loaded
    with _lock:
        previous = _loaded
        if (not now and previous is not None and previous.refreshes
                and clock() - previous.at < previous.settings.SECRETS_MAX_AGE_S):
            return previous.settings  # another thread refreshed it meanwhile
        try:
            # Our own age check decides when a secret is old: Powertools' cache (max_age) would
            # only hand the same value back, so the read goes to Secrets Manager.
            settings = load_config(force_fetch=True)
        except ConfigError:
            if previous is None:
                raise
            # Keep serving with what we have; the next call tries again.
            _refresh_failed()
            _loaded = _Loaded(previous.settings, clock() - previous.settings.SECRETS_MAX_AGE_S + 5,
                              previous.refreshes)
            return previous.settings
        _loaded = _Loaded(settings, clock(), has_secret_arns(os.environ))
        return settings


def _refresh_failed() -> None:
    from chalicelib.observability import count, logger

    count("SecretRefreshFailed")
    logger.warning("secrets refresh failed; keeping the values read before")


def reset_config() -> None:
    """Forget the cached settings (tests and the dev launcher change the environment)."""
    global _loaded
    with _lock:
        _loaded = None
