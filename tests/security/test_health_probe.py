"""Issue 9 item 8: health is no free probe. ``application`` is cheap liveness with no detail;
the deep checks need the bearer secret (or an operator setting) and are cached."""

from __future__ import annotations

import json

import pytest
from chalice.test import Client

from chalicelib import config, health, tenancy
from chalicelib.db_pool import Database
from chalicelib.health import DatabaseHealth, DeepCheckCache
from tests.conftest import HEALTH_SCHEDULER_SECRET, HEALTH_SECRET

SECRET = HEALTH_SECRET


def test_liveness_tells_nothing_about_version_environment_or_schema(health_client: Client) -> None:
    resp = health_client.http.get("/api/health")
    body = json.loads(resp.body)
    assert resp.status_code == 200 and set(body) == {"status", "check", "uptime_s"}
    text = resp.body.decode()
    for leak in ("version", "env", "test", "dev", "schema", "queue"):
        assert leak not in text.replace('"check"', "").replace('"status"', "")


@pytest.mark.parametrize("check", ["database", "webhook"])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {SECRET}", f"Bearer {SECRET}x",
                                           f"bearer {SECRET}", "Bearer "])
def test_deep_checks_need_the_bearer_secret(health_client: Client, monkeypatch: pytest.MonkeyPatch,
                                            check: str, authorization: str | None) -> None:
    def no_probe() -> None:
        raise AssertionError("an unauthenticated call must not reach the database or SQS")

    monkeypatch.setattr(health, "database_health", lambda _db: no_probe())
    monkeypatch.setattr(health, "webhook_health", lambda _cfg, _q: no_probe())
    headers = {"authorization": authorization} if authorization is not None else {}
    resp = health_client.http.get(f"/api/health?type={check}", headers=headers)
    assert resp.status_code == 401
    assert json.loads(resp.body)["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("secret", [SECRET, HEALTH_SCHEDULER_SECRET])
def test_the_health_or_scheduler_secret_opens_the_deep_checks(health_client: Client, secret: str) -> None:
    resp = health_client.http.get("/api/health?type=database", headers={"authorization": f"Bearer {secret}"})
    assert resp.status_code == 200 and json.loads(resp.body)["reachable"] is True


def test_an_operator_may_open_the_deep_checks(health_client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTH_PUBLIC", "true")
    config.reset_config()
    config.get_config()
    assert health_client.http.get("/api/health?type=database").status_code == 200


def test_with_no_secret_configured_the_deep_checks_stay_closed(health_client: Client,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEALTH_SECRET")
    monkeypatch.delenv("SCHEDULER_SECRET")
    config.reset_config()
    config.get_config()
    resp = health_client.http.get("/api/health?type=database", headers={"authorization": "Bearer "})
    assert resp.status_code == 401


def test_deep_answers_are_cached_so_a_flood_costs_one_probe(health_client: Client,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    probes: list[object] = []
    real = health.database_health

    def counted(database: Database | None) -> DatabaseHealth:
        probes.append(database)
        return real(database)

    monkeypatch.setattr(health, "database_health", counted)
    for _ in range(25):
        resp = health_client.http.get("/api/health?type=database",
                                      headers={"authorization": f"Bearer {SECRET}"})
        assert resp.status_code == 200
    assert len(probes) == 1


def test_the_cache_expires() -> None:
    now = [0.0]
    cache = DeepCheckCache(ttl_s=5, clock=lambda: now[0])
    answer = DatabaseHealth(status="ok", reachable=True)
    probes: list[float] = []

    def probe() -> DatabaseHealth:
        probes.append(now[0])
        return answer

    for _ in range(3):
        assert cache.get("database", probe) is answer
    now[0] = 5.1
    cache.get("database", probe)
    assert probes == [0.0, 5.1]


def test_an_unreachable_database_is_cached_as_unhealthy_too(health_client: Client,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: object) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://nobody@/rebound?host={tmp_path}")
    config.reset_config()
    tenancy.reset_database()
    auth = {"authorization": f"Bearer {SECRET}"}
    assert health_client.http.get("/api/health?type=database", headers=auth).status_code == 503
    assert health_client.http.get("/api/health?type=database", headers=auth).status_code == 503
