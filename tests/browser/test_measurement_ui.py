"""Issue 17 on the dashboard, in Chromium: rates say they count matured cases only, a window
whose cases can still recover is never painted red, young cases are reported as maturing, money
carries its 95% interval, and experiments speak the sequential rule's language."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.test_dashboard_ui import KPIS, Ui
from tests.test_api_cases import insert_case
from tests.test_api_support import DAY, NOW, Api, api_fixture  # noqa: F401

EXPERIMENT = "/api/companies/{company_id}/experiments/{experiment_id}"


@pytest.fixture
def ui(api: Api, server: str, page: Page) -> Iterator[Ui]:
    yield Ui(page, api, server)


@pytest.fixture
def freeze(monkeypatch: pytest.MonkeyPatch) -> Callable[[datetime], None]:
    def set_clock(at: datetime) -> None:
        monkeypatch.setattr("chalicelib.api.utcnow", lambda: at)

    return set_clock


def _usd(minor: int) -> str:
    return f"{'-' if minor < 0 else ''}${abs(minor) / 100:,.2f}"


def test_rates_are_matured_only_and_a_maturing_window_gets_no_red_arrow(
    ui: Ui, freeze: Callable[[datetime], None], artifacts: Path
) -> None:
    freeze(NOW)
    for i in range(10):  # previous window: matured, 6 of 10 recovered
        insert_case(ui.api, status="recovered" if i < 6 else "expired", first=NOW - 40 * DAY)
    for i in range(4):  # current window, matured: 1 of 4 recovered
        insert_case(ui.api, status="recovered" if i < 1 else "expired", first=NOW - 20 * DAY)
    for i in range(5):  # current window, young: 2 already recovered, 3 open
        insert_case(ui.api, status="recovered" if i < 2 else "open", first=NOW - 3 * DAY)
    page = ui.open()
    _, k = ui.api.call("GET", KPIS, query="window_days=30", status=200)
    assert (k["matured_cases"], k["maturing_cases"], k["maturing_recoveries"]) == (4, 5, 2)
    tile = page.locator('[data-kpi="recovery_rate"]')
    expect(tile.locator(".label")).to_contain_text("matured cases only")
    expect(tile.locator(".value")).to_have_text("25.0%")  # 1 of 4 matured, not 3 of 9
    expect(tile.locator(".trend")).to_contain_text("vs 60.0% in the previous 30 days")
    expect(tile.locator(".trend .down")).to_have_text("-35.0 pts")  # matured vs matured: a real drop
    expect(tile.locator(".trend")).to_contain_text("maturing: 5 cases, 2 recovered so far")
    # Recoveries fell (3 vs 6) only because young cases are still maturing: no red arrow.
    recoveries = page.locator('[data-kpi="recoveries"] .trend')
    expect(recoveries).to_contain_text("vs 6 in the previous 30 days")
    expect(recoveries).to_contain_text("Still maturing: cases under 14 days old may still recover")
    expect(recoveries.locator(".down, .up")).to_have_count(0)
    page.screenshot(path=str(artifacts / "measurement-tiles-30d.png"), full_page=True)
    page.select_option("#window", "7")
    expect(tile.locator(".value")).to_have_text("–")
    expect(tile.locator(".trend")).to_contain_text(
        "Still maturing: none of this window's cases has had its 14 days yet (40.0% recovered so far)"
    )
    expect(tile.locator(".trend .down, .trend .up")).to_have_count(0)


def test_the_lift_panel_shows_money_with_its_interval_and_the_maturing_cases(
    ui: Ui, freeze: Callable[[datetime], None], artifacts: Path
) -> None:
    rng = random.Random(3)
    for i in range(110):
        held = i >= 70
        recovered = rng.random() < (0.25 if held else 0.5)
        insert_case(
            ui.api,
            status="recovered" if recovered else "expired",
            first=NOW - 20 * DAY,
            holdout=held,
            contaminated=held and i == 75,
        )
    for i in range(4):
        insert_case(
            ui.api, status="recovered" if i == 0 else "open", first=NOW - 2 * DAY, holdout=i % 2 == 0
        )
    freeze(NOW)
    page = ui.open()
    _, k = ui.api.call("GET", KPIS, query="window_days=30", status=200)
    lift = k["lift"]
    assert lift["status"] == "ok"
    (inc,), ((low, high),) = (
        lift["incremental_revenue"],
        [m["interval"] for m in lift["incremental_revenue_interval"]],
    )
    expect(page.locator("#lift-revenue")).to_have_text(
        f"{_usd(inc['amount_minor'])} (95% interval {_usd(low)} to {_usd(high)})"
    )
    (net,), ((nlow, nhigh),) = (
        lift["net_incremental_revenue"],
        [m["interval"] for m in lift["net_incremental_revenue_interval"]],
    )
    expect(page.locator("#lift-net")).to_have_text(
        f"{_usd(net['amount_minor'])} (95% interval {_usd(nlow)} to {_usd(nhigh)})"
    )
    expect(page.locator("#lift-body")).to_contain_text("Matured cases only")
    expect(page.locator("#lift-treated")).to_have_text(f"{lift['treated_rate'] * 100:.1f}% of 70")
    expect(page.locator("#lift-maturing")).to_contain_text("Maturing: 4 cases, 1 recovered so far")
    expect(page.locator("#lift-body")).to_contain_text("1 holdout case was nudged by you")
    page.screenshot(path=str(artifacts / "measurement-lift.png"), full_page=True)


def test_an_experiment_reads_as_the_sequential_rule_decides(
    ui: Ui, freeze: Callable[[datetime], None], artifacts: Path
) -> None:
    exp_id = ui.api.add_experiment(
        variants=[{"name": "control", "weight": 1}, {"name": "short", "weight": 1}]
    )
    for i in range(400):
        variant = "control" if i % 2 else "short"
        won = i % 10 < (3 if variant == "control" else 6)
        insert_case(
            ui.api,
            status="recovered" if won else "expired",
            first=NOW - 20 * DAY,
            experiment_id=exp_id,
            variant=variant,
        )
    insert_case(ui.api, status="recovered", first=NOW - DAY, experiment_id=exp_id, variant="short")
    freeze(NOW)
    page = ui.open(f"experiment={exp_id}")
    expect(page.locator("#exp-detail")).to_be_visible()
    expect(page.locator("#exp-winner")).to_have_attribute("data-decision", "winner")
    expect(page.locator("#exp-winner")).to_contain_text(
        "Winner: short. short recovers more than every other variant"
    )
    expect(page.locator("#exp-results thead")).to_contain_text("Chance best (descriptive)")
    expect(page.locator("#exp-maturing")).to_contain_text(
        "Rates count matured cases only. Maturing: 1 case, 1 recovered so far."
    )
    page.screenshot(path=str(artifacts / "measurement-experiment.png"), full_page=True)
    _, shown = ui.api.call("GET", EXPERIMENT, params={"experiment_id": exp_id}, status=200)
    assert shown["decision"] == "winner" and shown["winner"] == "short"
    # An empty experiment describes nothing: no 50% "chance best".
    empty = ui.api.add_experiment(status="stopped", name="empty")
    page.goto(page.url.split("#")[0] + f"#experiment={empty}")
    expect(page.locator('#exp-results tr[data-variant="a"] td').last).to_have_text("–")
    expect(page.locator("#exp-winner")).to_contain_text(
        "No winner. Stopped before the data named a winner."
    )
