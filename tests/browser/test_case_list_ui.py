"""The case list in Chromium (issue 11): its "Nudges sent" and "Last action" columns show the API's
figures, the decline-class filter asks the server (not the loaded page), and "Export CSV" exports
exactly the cases the current filters list."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Literal

import pytest
from playwright.sync_api import Browser, Page, Request, Route, expect

from chalicelib import effects
from tests.browser.test_dashboard_ui import Ui, member, seed
from tests.test_api_cases import insert_case
from tests.test_api_support import ALPHA, DAY, NOW, Api, api_fixture  # noqa: F401

LIST = "/api/companies/{company_id}/cases"
CASE = "/api/companies/{company_id}/cases/{case_id}"


@pytest.fixture
def ui(api: Api, server: str, page: Page) -> Iterator[Ui]:
    yield Ui(page, api, server)


def api_ids(api: Api, query: str) -> list[str]:
    """Every case the API lists for ``query``, newest first, across pages."""
    ids: list[str] = []
    cursor = None
    while True:
        _, page = api.call("GET", LIST, query=query + "&limit=100" + (f"&cursor={cursor}" if cursor else ""),
                           status=200)
        ids += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


def older_cases_of_a_rare_class(api: Api) -> tuple[list[str], list[str]]:
    """27 card_soft cases, then (older, so not on the first page of 25) 3 authentication ones."""
    soft = [insert_case(api, membership=f"mem_soft{i:02d}", first=NOW - timedelta(hours=1 + i),
                        decline_class="card_soft") for i in range(27)]
    auth = [insert_case(api, membership=f"mem_auth{i}", first=NOW - 3 * DAY - timedelta(hours=i),
                        decline_class="authentication", status="open" if i < 2 else "expired")
            for i in range(3)]
    return soft, auth


def test_the_columns_show_the_apis_nudges_sent_and_last_action(ui: Ui) -> None:
    cases = seed(ui.api)  # the open case had its T+0 push and DM sent by the real runner
    m, u = member(ui.api, 7)
    nudged = ui.api.open_case(membership=m, user=u, at=NOW - 2 * DAY)
    effects.execute_owed(effects.default_context(), ALPHA, NOW, case_id=nudged)
    ui.api.call("POST", CASE + "/nudge", params={"case_id": nudged}, status=200)  # 2 more, by the creator
    _, listing = ui.api.call("GET", LIST, query="window_days=30", status=200)
    items = {i["id"]: i for i in listing["items"]}
    assert items[nudged]["nudges_sent"] == 4 and items[cases["open"]]["nudges_sent"] == 2
    assert items[cases["recovered"]]["last_action_at"] is None
    page = ui.open("view=cases")
    expect(page.locator("#case-rows tr")).to_have_count(len(items))
    for case_id, item in items.items():
        row = page.locator(f'tr[data-case="{case_id}"]')
        expect(row.locator('td[data-label="Nudges sent"]')).to_have_text(str(item["nudges_sent"]))
        last = row.locator('td[data-label="Last action"]')
        expect(last).to_have_attribute("data-value", item["last_action_at"] or "")
        if item["last_action_at"] is None:
            expect(last).to_have_text("None yet")
        else:  # the page's own rendering of that very instant, in the browser's locale and zone
            shown = page.evaluate("(iso) => new Date(iso).toLocaleString(undefined,"
                                  " {dateStyle: 'medium', timeStyle: 'short'})", item["last_action_at"])
            expect(last).to_have_text(shown)
    expect(page.locator("#case-table thead")).to_contain_text("Nudges sent")
    expect(page.locator("#case-table thead")).to_contain_text("Last action")
    expect(page.locator(f'tr[data-case="{nudged}"] td[data-label="Nudges sent"]')).to_be_visible()


def test_picking_a_decline_class_asks_the_server_and_lists_cases_beyond_the_first_page(ui: Ui) -> None:
    soft, auth = older_cases_of_a_rare_class(ui.api)
    page = ui.open("view=cases")
    expect(page.locator("#case-rows tr")).to_have_count(25)
    for case_id in auth:  # not loaded: older than the first page
        expect(page.locator(f'tr[data-case="{case_id}"]')).to_have_count(0)
    with page.expect_request(lambda r: "/cases?" in r.url and "decline_class=authentication" in r.url) as req:
        page.select_option("#class-filter", "authentication")
    assert "cursor=" not in req.value.url  # a fresh first page, not the loaded one filtered
    expect(page.locator("#case-rows tr")).to_have_count(3)
    assert page.locator("#case-rows tr").evaluate_all("rows => rows.map(r => r.dataset.case)") == auth
    expect(page.locator("#more")).to_be_hidden()
    # Combined with the status filter and search, still on the server.
    with page.expect_request(lambda r: "decline_class=authentication" in r.url and "status=open" in r.url):
        page.select_option("#status-filter", "open")
    expect(page.locator("#case-rows tr")).to_have_count(2)
    page.fill("#search", "mem_auth1")
    page.press("#search", "Enter")
    expect(page.locator("#case-rows tr")).to_have_count(1)
    expect(page.locator(f'tr[data-case="{auth[1]}"]')).to_be_visible()
    # A filter that matches nothing says so, naming the filters.
    page.select_option("#class-filter", "unknown")
    expect(page.locator("#cases-empty")).to_have_text(re.compile(
        "^No cases match “mem_auth1” with status “Open” and decline class “Unknown” in the last 30 days"))
    page.fill("#search", "")
    page.select_option("#class-filter", "card_hard")
    empty = page.locator("#cases-empty")
    expect(empty).to_have_text("No cases match status “Open” and decline class “Card declined (hard)” in the"
                               " last 30 days. Clear the search or filters to see all cases.")
    expect(page.locator("#case-rows tr")).to_have_count(0)
    expect(page.locator("#cases-hint")).to_be_hidden()
    # Back to every class: the pages load from the server again, "Load more" reaches the rest.
    page.select_option("#class-filter", "")
    page.select_option("#status-filter", "")
    expect(page.locator("#case-rows tr")).to_have_count(25)
    page.click("#more")
    expect(page.locator("#case-rows tr")).to_have_count(30)
    shown = page.locator("#case-rows tr").evaluate_all("rows => rows.map(r => r.dataset.case)")
    assert shown == api_ids(ui.api, "window_days=30") and sorted(shown) == sorted(soft + auth)


def test_a_stale_page_never_overwrites_the_newest_filter(ui: Ui) -> None:
    soft, auth = older_cases_of_a_rare_class(ui.api)
    page = ui.open("view=cases")
    expect(page.locator("#case-rows tr")).to_have_count(25)
    held: list[Route] = []

    def hold_unfiltered(route: Route) -> None:  # the "all classes" answer arrives last
        held.append(route)

    page.route(re.compile(r".*/cases\?(?!.*decline_class).*"), hold_unfiltered)
    page.select_option("#status-filter", "open")  # request 1: held
    page.select_option("#class-filter", "authentication")  # request 2: answered at once
    expect(page.locator("#case-rows tr")).to_have_count(2)
    (route,) = held
    with page.expect_response(lambda r: "status=open" in r.url and "decline_class" not in r.url):
        route.continue_()
    # Two animation frames: the page has read and handled that answer (event-loop turns, not a
    # timed wait); the table must still hold the newest filter's cases.
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    expect(page.locator("#case-rows tr")).to_have_count(2)
    assert page.locator("#case-rows tr").evaluate_all("rows => rows.map(r => r.dataset.case)") == auth[:2]
    assert soft  # the 27 others exist: only the stale answer would have shown them


def test_export_with_filters_downloads_exactly_the_filtered_cases(ui: Ui,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib.api import cases as cases_api

    older_cases_of_a_rare_class(ui.api)
    more = [insert_case(ui.api, membership=f"mem_auth_x{i}", first=NOW - 4 * DAY - timedelta(minutes=i),
                        decline_class="authentication") for i in range(6)]
    insert_case(ui.api, membership="mem_other", first=NOW - 5 * DAY, decline_class="authentication",
                user="user_other")
    monkeypatch.setattr(cases_api, "EXPORT_MAX_BYTES", 1200)  # a few rows a part
    requests: list[str] = []
    page = ui.open("view=cases")
    expect(page.locator("#case-rows tr")).to_have_count(25)

    def on_request(r: Request) -> None:
        if "export.csv" in r.url:
            requests.append(r.url)

    page.on("request", on_request)
    page.select_option("#class-filter", "authentication")
    page.select_option("#status-filter", "open")
    page.fill("#search", "mem_auth")
    page.press("#search", "Enter")
    expect(page.locator("#case-rows tr")).to_have_count(8)  # 2 + 6 open authentication cases under mem_auth
    listed = page.locator("#case-rows tr").evaluate_all("rows => rows.map(r => r.dataset.case)")
    page.fill("#search", "mem_other")  # typed, never searched: the export follows the list on screen
    with page.expect_download() as info:
        page.click("#export-btn")
    text = Path(info.value.path()).read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["case_id"] for r in rows] == listed  # exactly the listed cases, in order, once each
    assert set(more) <= set(listed)
    assert {(r["decline_class"], r["status"]) for r in rows} == {("authentication", "open")}
    assert all(r["membership_id"].startswith("mem_auth") for r in rows)
    assert len(requests) >= 2 and all("decline_class=authentication" in u and "status=open" in u
                                      and "q=mem_auth" in u for u in requests)
    assert all("cursor=" in u for u in requests[1:])
    assert text.count("case_id,membership_id") == 1
    note = page.locator('#messages .msg.ok[data-topic="export"]')
    expect(note).to_contain_text("8 cases in one file")
    expect(note).to_contain_text("search “mem_auth”, status “Open”, decline class “Needs authentication”")
    expect(page.locator("#cases")).not_to_contain_text("do not apply")


@pytest.mark.parametrize(("scheme", "width"), [("light", 1280), ("dark", 1280), ("light", 360)])
def test_filtered_case_list_screenshots(ui: Ui, browser: Browser, artifacts: Path,
                                        scheme: Literal["light", "dark"],
                                        width: int) -> None:
    seed(ui.api)
    older_cases_of_a_rare_class(ui.api)
    context = browser.new_context(viewport={"width": width, "height": 900}, color_scheme=scheme)
    page: Page = context.new_page()
    ui.page = page
    ui.open("view=cases")
    expect(page.locator("#case-rows tr")).to_have_count(25)
    page.screenshot(path=str(artifacts / f"cases-{scheme}-{width}.png"), full_page=True)
    page.select_option("#class-filter", "authentication")
    expect(page.locator("#case-rows tr")).to_have_count(3)
    assert bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))
    page.screenshot(path=str(artifacts / f"cases-filtered-{scheme}-{width}.png"), full_page=True)
    page.select_option("#class-filter", "card_hard")
    expect(page.locator("#cases-empty")).to_be_visible()
    page.screenshot(path=str(artifacts / f"cases-empty-{scheme}-{width}.png"), full_page=True)
    context.close()
