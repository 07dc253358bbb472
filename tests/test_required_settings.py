"""Per-function required settings (REQUIRED_SETTINGS, set by the deployed template): a function
that may not read a secret starts without it, and one that needs it still fails fast without it."""

from __future__ import annotations

import pytest

from chalicelib.config import REQUIRED_IN_PRODUCTION, ConfigError, load_config, required_settings

WEBHOOK_ONLY = {
    "APP_ENV": "production",
    "WHOP_WEBHOOK_SECRET": "ws_secret",
    "WHOP_APP_ID": "app_1",
    "EVENTS_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/1/events",
    "PUBLIC_BASE_URL": "https://rebound.example.com",
    "REQUIRED_SETTINGS": "WHOP_APP_ID,EVENTS_QUEUE_URL,PUBLIC_BASE_URL,WHOP_WEBHOOK_SECRET",
}


def test_the_webhook_function_starts_without_the_database_or_whop_key() -> None:
    cfg = load_config(WEBHOOK_ONLY)
    assert cfg.DATABASE_URL is None and cfg.WHOP_API_KEY is None and cfg.WHOP_WEBHOOK_SECRET == "ws_secret"


def test_a_function_still_fails_fast_without_a_setting_it_requires() -> None:
    env = {**WEBHOOK_ONLY, "REQUIRED_SETTINGS": WEBHOOK_ONLY["REQUIRED_SETTINGS"] + ",DATABASE_URL"}
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        load_config(env)
    without_secret = {k: v for k, v in WEBHOOK_ONLY.items() if k != "WHOP_WEBHOOK_SECRET"}
    with pytest.raises(ConfigError, match="WHOP_WEBHOOK_SECRET"):
        load_config(without_secret)


@pytest.mark.parametrize("listed", ["", " , ,", None])
def test_unset_or_empty_means_every_production_setting(listed: str | None) -> None:
    env = {} if listed is None else {"REQUIRED_SETTINGS": listed}
    assert required_settings(env) == REQUIRED_IN_PRODUCTION
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        load_config({**{k: v for k, v in WEBHOOK_ONLY.items() if k != "REQUIRED_SETTINGS"}, **env})


@pytest.mark.parametrize("listed", ["DATABASE_URL,NOT_A_SETTING", "database_url", "DATABASE_URL\x00"])
def test_an_unknown_name_is_a_config_error_naming_it(listed: str) -> None:
    with pytest.raises(ConfigError, match="REQUIRED_SETTINGS"):
        load_config({**WEBHOOK_ONLY, "REQUIRED_SETTINGS": listed})
