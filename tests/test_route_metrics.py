"""Per-route metrics (chalicelib/http.handle_errors): every answer of a route adds its latency to
``RouteLatency_<view>`` and every 5xx to ``Route5xx_<view>`` — including the bugs ``handle_errors``
turns into JSON 500s, which Lambda's own Errors metric never sees. Read from the real EMF output."""

from __future__ import annotations

from typing import Any

import pytest
from chalice.test import Client

import app as app_module
from chalicelib import config, tenancy
from tests.test_metrics import emf, metric_values


def route_values_from(out: str) -> dict[str, float]:
    return {k: v for k, v in metric_values(emf(out), routes=True).items()
            if k.startswith(("RouteLatency_", "Route5xx_"))}


def route_values(capsys: pytest.CaptureFixture[str]) -> dict[str, float]:
    return route_values_from(capsys.readouterr().out)


def latency_samples(capsys_out: str, name: str) -> list[float]:
    samples: list[float] = []
    for doc in emf(capsys_out):
        metrics = [m for d in doc["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]]
        for metric in metrics:
            if metric["Name"] == name:
                assert metric["Unit"] == "Milliseconds"
                value = doc[name]
                samples += value if isinstance(value, list) else [value]
    return samples


def test_an_answer_counts_its_latency_and_only_a_5xx_counts_as_one(
        health_client: Client, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    capsys.readouterr()
    assert health_client.http.get("/api/health").status_code == 200
    out = capsys.readouterr().out
    assert route_values_from(out) == {"RouteLatency_health": latency_samples(out, "RouteLatency_health")[0]}
    assert len(latency_samples(out, "RouteLatency_health")) == 1

    assert health_client.http.get("/api/health?type=database").status_code == 401  # no bearer: a 4xx
    assert "Route5xx_health" not in route_values(capsys)

    def bug(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug in the view")

    monkeypatch.setattr(app_module, "health_check", bug)
    resp = health_client.http.get("/api/health")
    assert resp.status_code == 500 and resp.json_body["error"]["code"]  # the JSON 500 Lambda never sees
    values = route_values(capsys)
    assert values["Route5xx_health"] == 1 and "RouteLatency_health" in values


def test_a_database_outage_is_a_5xx_of_every_route_that_needs_it(
        health_client: Client, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import HEALTH_SECRET

    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody:pw@127.0.0.1:9/rebound?sslmode=disable")
    config.reset_config()
    tenancy.reset_database()
    capsys.readouterr()
    resp = health_client.http.get("/api/health?type=database",
                                  headers={"Authorization": f"Bearer {HEALTH_SECRET}"})
    assert resp.status_code == 503
    values = metric_values(emf(capsys.readouterr().out), routes=True)
    assert values["Route5xx_health"] == 1 and values["DatabaseUnavailable"] == 1
