"""Secrets from Secrets Manager (moto): read again once SECRETS_MAX_AGE_S old (a rotated value
reaches warm functions without a deploy), kept when a refresh fails, a rotated database URL gets
a fresh pool, a refused login reads the secret once more and then gives up; and the health check
only *describes* the webhook secret, never reads its value. (The runbook's rotation procedures
run end to end in tests/test_runbook.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from chalicelib import config, database_url, db_pool, health, tenancy
from chalicelib.db import DatabaseUnavailable
from chalicelib.observability import metrics
from tests.test_metrics import emf, metric_values


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, list[float], list[str]]]:
    """A Secrets Manager, a movable clock for config, and the ARNs config fetched."""
    with mock_aws():
        sm = boto3.client("secretsmanager", region_name="us-east-1")
        clock = [1000.0]
        monkeypatch.setattr(config, "clock", lambda: clock[0])
        fetched: list[str] = []
        original = config._fetch_secret

        def spy(arn: str, max_age_s: int = 300, force: bool = False) -> str:
            fetched.append(arn)
            return original(arn, max_age_s, force)

        monkeypatch.setattr(config, "_fetch_secret", spy)
        config.reset_config()
        yield sm, clock, fetched
        config.reset_config()


def test_a_rotated_secret_is_read_again_once_it_is_old_and_not_before(
        secrets: tuple[Any, list[float], list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    sm, clock, fetched = secrets
    arn = sm.create_secret(Name="rebound/whop-key", SecretString="key-one")["ARN"]
    monkeypatch.delenv("WHOP_API_KEY", raising=False)
    monkeypatch.setenv("WHOP_API_KEY_SECRET_ARN", arn)
    assert config.get_config().WHOP_API_KEY == "key-one"
    assert config.get_config().WHOP_API_KEY == "key-one" and fetched == [arn]
    sm.put_secret_value(SecretId=arn, SecretString="key-two")
    clock[0] += 299
    assert config.get_config().WHOP_API_KEY == "key-one" and fetched == [arn], "not before 300 s"
    clock[0] += 2
    assert config.get_config().WHOP_API_KEY == "key-two" and fetched == [arn, arn]


def test_without_secrets_manager_nothing_is_read_again(secrets: tuple[Any, list[float], list[str]],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _, clock, fetched = secrets
    monkeypatch.setenv("WHOP_API_KEY", "plain-env-key")
    first = config.get_config()
    clock[0] += 10_000
    assert config.get_config() is first and fetched == []


def test_a_failed_refresh_keeps_the_values_and_tries_again_later(
        secrets: tuple[Any, list[float], list[str]], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    sm, clock, fetched = secrets
    arn = sm.create_secret(Name="rebound/webhook", SecretString="ws_one")["ARN"]
    monkeypatch.delenv("WHOP_WEBHOOK_SECRET", raising=False)
    monkeypatch.setenv("WHOP_WEBHOOK_SECRET_SECRET_ARN", arn)
    assert config.get_config().WHOP_WEBHOOK_SECRET == "ws_one"
    sm.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)  # Secrets Manager says no
    clock[0] += 301
    capsys.readouterr()
    assert config.get_config().WHOP_WEBHOOK_SECRET == "ws_one", "the last good value serves on"
    metrics.flush_metrics()
    assert metric_values(emf(capsys.readouterr().out)).get("SecretRefreshFailed") == 1
    calls = len(fetched)
    clock[0] += 1
    assert config.get_config().WHOP_WEBHOOK_SECRET == "ws_one" and len(fetched) == calls, "not at once"
    replacement = sm.create_secret(Name="rebound/webhook-2", SecretString="ws_two")["ARN"]
    monkeypatch.setenv("WHOP_WEBHOOK_SECRET_SECRET_ARN", replacement)
    clock[0] += 5
    assert config.get_config().WHOP_WEBHOOK_SECRET == "ws_two"


def test_a_changed_database_url_gets_a_new_pool_and_the_old_one_is_closed(
        database: db_pool.Database, monkeypatch: pytest.MonkeyPatch) -> None:
    old = tenancy.get_database()
    with tenancy.service_transaction(old) as tx:
        assert tx.scalar("SELECT 1") == 1
    assert old.open_connections == 1
    monkeypatch.setenv("DATABASE_URL", old.url + "&application_name=rotated")
    config.reset_config()
    new = tenancy.get_database()
    assert new is not old and new.url.endswith("rotated") and old.open_connections == 0
    assert tenancy.get_database() is new


def test_a_refused_login_reads_the_secret_once_more_then_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[str] = []

    def refused(params: database_url.ConnectParams, *_: Any) -> Any:
        tried.append(params.password or "")
        raise DatabaseUnavailable("cannot connect: DatabaseError", "28P01")

    monkeypatch.setattr(db_pool, "connect", refused)
    reread: list[int] = []
    same = "postgresql://svc:old@127.0.0.1:5432/rebound?sslmode=disable"
    database = db_pool.Database(same, reread_url=lambda: reread.append(1) or same)
    with pytest.raises(DatabaseUnavailable), database.transaction(None):
        pass
    assert tried == ["old"] and reread == [1], "the same secret: no second attempt"
    rotated = db_pool.Database(same, reread_url=lambda: same.replace(":old@", ":new@"))
    with pytest.raises(DatabaseUnavailable), rotated.transaction(None):
        pass
    assert tried[-2:] == ["old", "new"] and rotated.url.endswith("sslmode=disable") and ":new@" in rotated.url
    other = db_pool.Database(same, reread_url=lambda: pytest.fail("only a refused login rereads"))  # type: ignore[arg-type]
    monkeypatch.setattr(db_pool, "connect",
                        lambda *_: (_ for _ in ()).throw(DatabaseUnavailable("down", "08006")))
    with pytest.raises(DatabaseUnavailable), other.transaction(None):
        pass


def test_health_describes_the_webhook_secret_and_never_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    operations: list[str] = []
    real_client = boto3.client

    def recording_client(service: str, *args: Any, **kwargs: Any) -> Any:
        client = real_client(service, *args, **kwargs)
        client.meta.events.register("before-call", lambda model, **_: operations.append(model.name))
        return client

    monkeypatch.setattr(boto3, "client", recording_client)
    with mock_aws():
        sm = real_client("secretsmanager", region_name="us-east-1")
        arn = sm.create_secret(Name="rebound/webhook-secret", SecretString="ws_never_read")["ARN"]
        settings = config.load_config({"APP_ENV": "test", "WHOP_WEBHOOK_SECRET_DESCRIBE_ARN": arn,
                                       "WHOP_WEBHOOK_SECRET": ""})
        assert settings.WHOP_WEBHOOK_SECRET is not None  # the test default: not what is looked at
        assert health.webhook_secret_configured(settings) is True
        sm.delete_secret(SecretId=arn, RecoveryWindowInDays=7)  # being deleted: not configured
        assert health.webhook_secret_configured(settings) is False
        missing = config.load_config({"APP_ENV": "test", "WHOP_WEBHOOK_SECRET_DESCRIBE_ARN": arn + "-gone"})
        assert health.webhook_secret_configured(missing) is False
    assert operations == ["DescribeSecret"] * 3 and "GetSecretValue" not in operations


def test_a_refused_login_is_recognised_under_pg8000s_own_clean_up_error() -> None:
    import pg8000.exceptions

    refused = pg8000.exceptions.DatabaseError({"S": "FATAL", "C": "28P01", "M": "password failed"})
    try:
        try:
            raise refused
        except pg8000.exceptions.DatabaseError:
            raise pg8000.exceptions.InterfaceError("network error") from None  # what close() raises
    except pg8000.exceptions.InterfaceError as on_top:
        assert on_top.__context__ is refused
        assert db_pool._server_sqlstate(on_top) == "28P01"
    assert db_pool._server_sqlstate(OSError("refused")) is None
