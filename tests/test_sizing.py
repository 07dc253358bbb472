"""scripts/sizing.py (`make sizing`), its quick run: every figure is printed for each size, from a
real cold start and real webhooks through the route (the full run is `make sizing`)."""

from __future__ import annotations

import json

import pytest

from scripts import sizing


def test_a_quick_run_measures_cold_and_warm_at_each_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert sizing.main(["--sizes", "1769", "--repeat", "1", "--warm", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    figures, ratios = lines[0], lines[-1]
    assert figures["memory_mb"] == 1769 and figures["vcpu_share"] == 1.0
    assert figures["method"] in ("cgroup", "projected")
    assert figures["cold_ms"] > 0 and figures["cold_cpu_ms"] > 0 and figures["warm_ms"] > 0
    assert figures["warm_cost_per_million_usd_arm64"] < figures["warm_cost_per_million_usd"]
    assert ratios["sizes"] == [1769, 1769] and ratios["cost_ratio"] == 1.0


def test_the_price_follows_memory_and_the_billed_milliseconds() -> None:
    assert sizing.cost_per_million(1024, 10) == pytest.approx(2 * sizing.cost_per_million(512, 10))
    assert sizing.cost_per_million(512, 0.3) == sizing.cost_per_million(512, 1)  # a 1 ms minimum
