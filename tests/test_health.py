"""GET /api/health through Chalice's test client, against the real database."""

from __future__ import annotations

import json

import pytest
from chalice.test import Client

from chalicelib import config, health, tenancy
from tests.conftest import HEALTH_SECRET, ROOT

SECRET = HEALTH_SECRET
AUTH = {"authorization": f"Bearer {SECRET}"}


def test_application_health(health_client: Client) -> None:
    resp = health_client.http.get("/api/health")
    body = json.loads(resp.body)
    assert resp.status_code == 200
    assert body == {"status": "ok", "check": "application", "uptime_s": body["uptime_s"]}
    assert body["uptime_s"] >= 0


def test_database_health_reports_latency_and_schema_version(health_client: Client) -> None:
    resp = health_client.http.get("/api/health?type=database", headers=AUTH)
    body = json.loads(resp.body)
    assert resp.status_code == 200, body
    latest = sorted((ROOT / "migrations").glob("*.sql"))[-1].name[:4]
    assert body["reachable"] is True and body["schema_version"] == latest
    assert body["latency_ms"] >= 0
    text = resp.body.decode()
    assert "rebound_runtime" not in text and "password" not in text


def test_database_health_is_503_when_unreachable(health_client: Client, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: object) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://nobody@/rebound?host={tmp_path}")
    config.reset_config()
    tenancy.reset_database()
    resp = health_client.http.get("/api/health?type=database", headers=AUTH)
    body = json.loads(resp.body)
    assert resp.status_code == 503
    assert body["reachable"] is False and body["error"] == "DatabaseUnavailable"
    assert str(tmp_path) not in resp.body.decode()


def test_unknown_check_is_a_field_error(health_client: Client) -> None:
    resp = health_client.http.get("/api/health?type=everything")
    assert resp.status_code == 400
    assert json.loads(resp.body)["error"]["fields"] == {"type": "must be application, database or webhook"}


def test_webhook_health_checks_the_queue(health_client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto import mock_aws

    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="rebound-events")["QueueUrl"]
        monkeypatch.setenv("EVENTS_QUEUE_URL", url)
        config.reset_config()
        resp = health_client.http.get("/api/health?type=webhook", headers=AUTH)
        body = json.loads(resp.body)
        assert resp.status_code == 200, body
        assert body["queue_reachable"] is True and body["queue_depth"] == 0
        assert body["secret_configured"] is True and "ws_" not in resp.body.decode()
        monkeypatch.setenv("EVENTS_QUEUE_URL", url + "-gone")
        config.reset_config()
        health.deep_cache.clear()  # answers are cached for a few seconds
        resp = health_client.http.get("/api/health?type=webhook", headers=AUTH)
        assert resp.status_code == 503 and json.loads(resp.body)["queue_reachable"] is False


def test_deep_checks_work_with_the_secret_the_template_gives_the_health_function(
        health_client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    # Deployed, the health function gets HEALTH_SECRET_SECRET_ARN (the template's generated
    # HealthSecret), never the value: config reads it from Secrets Manager at cold start.
    import boto3
    from moto import mock_aws

    with mock_aws():
        sm = boto3.client("secretsmanager", region_name="us-east-1")
        arn = sm.create_secret(Name="rebound/health", SecretString="generated-by-the-template")["ARN"]
        monkeypatch.delenv("HEALTH_SECRET")
        monkeypatch.delenv("SCHEDULER_SECRET", raising=False)
        monkeypatch.setenv("HEALTH_SECRET_SECRET_ARN", arn)
        config.reset_config()
        assert health_client.http.get("/api/health?type=database", headers=AUTH).status_code == 401
        resp = health_client.http.get("/api/health?type=database",
                                      headers={"authorization": "Bearer generated-by-the-template"})
    assert resp.status_code == 200, resp.body
    assert json.loads(resp.body)["reachable"] is True
