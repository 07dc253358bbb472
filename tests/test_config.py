"""Configuration: production fails fast naming what is missing; development has defaults."""

from __future__ import annotations

import pytest

from chalicelib.config import DEV_DEFAULTS, ConfigError, load_config

PRODUCTION = {
    "APP_ENV": "production",
    "DATABASE_URL": "postgresql://svc:pw@db.internal:5432/rebound?sslmode=verify-full",
    "WHOP_API_KEY": "key",
    "WHOP_WEBHOOK_SECRET": "ws_secret",
    "WHOP_APP_ID": "app_1",
    "EVENTS_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/1/events",
    "PUBLIC_BASE_URL": "https://rebound.example.com",
}


def test_complete_production_config_loads() -> None:
    cfg = load_config(PRODUCTION)
    assert cfg.is_production and cfg.WHOP_API_BASE == "https://api.whop.com/api/v1"


@pytest.mark.parametrize("missing", ["DATABASE_URL", "WHOP_API_KEY", "WHOP_WEBHOOK_SECRET",
                                     "WHOP_APP_ID", "EVENTS_QUEUE_URL", "PUBLIC_BASE_URL"])
def test_production_names_the_missing_setting(missing: str) -> None:
    env = {k: v for k, v in PRODUCTION.items() if k != missing}
    with pytest.raises(ConfigError, match=missing):
        load_config(env)


def test_app_env_defaults_to_production() -> None:
    env = {k: v for k, v in PRODUCTION.items() if k not in ("APP_ENV", "WHOP_APP_ID")}
    with pytest.raises(ConfigError, match="WHOP_APP_ID"):
        load_config(env)


def test_malformed_setting_is_named_without_its_value() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL") as info:
        load_config({**PRODUCTION, "DATABASE_URL": "mysql://secret-password@x/y"})
    assert "secret-password" not in str(info.value)
    with pytest.raises(ConfigError, match="APP_ENV"):
        load_config({**PRODUCTION, "APP_ENV": "staging"})


def test_development_applies_documented_defaults() -> None:
    cfg = load_config({"APP_ENV": "development"})
    assert DEV_DEFAULTS["WHOP_APP_ID"] == cfg.WHOP_APP_ID
    assert DEV_DEFAULTS["WHOP_WEBHOOK_SECRET"] == cfg.WHOP_WEBHOOK_SECRET
    assert cfg.SCHEDULER_SECRET is None


def test_secret_arn_replaces_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib import config

    seen: list[str] = []

    def fake_fetch(arn: str, max_age_s: int = 300, force: bool = False) -> str:
        seen.append(arn)
        return "key-from-secrets-manager"

    monkeypatch.setattr(config, "_fetch_secret", fake_fetch)
    cfg = load_config({**PRODUCTION, "WHOP_API_KEY": "", "WHOP_API_KEY_SECRET_ARN": "arn:secret:k"})
    assert cfg.WHOP_API_KEY == "key-from-secrets-manager" and seen == ["arn:secret:k"]


def test_secret_arn_read_from_secrets_manager_via_moto() -> None:
    import boto3
    from moto import mock_aws

    with mock_aws():
        sm = boto3.client("secretsmanager", region_name="us-east-1")
        arn = sm.create_secret(Name="rebound/whop-key", SecretString="sm-value")["ARN"]
        cfg = load_config({**PRODUCTION, "WHOP_API_KEY_SECRET_ARN": arn})
    assert cfg.WHOP_API_KEY == "sm-value"
