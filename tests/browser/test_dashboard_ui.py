"""What a creator does on the dashboard, in Chromium, against the real app, Postgres and fake Whop.

Data is seeded through the real paths (signed webhooks through processing, owed nudges through
the effects runner, creator actions through the API); the page is driven like a person would,
and every check compares it with what the API or the fake Whop recorded.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from chalicelib import effects
from tests.test_api_support import ADMIN_A, ALPHA, DAY, NOW, Api, api_fixture  # noqa: F401

AXE = Path(__file__).with_name("vendor") / "axe.min.js"
KPIS = "/api/companies/{company_id}/kpis"
CASE = "/api/companies/{company_id}/cases/{case_id}"
SETTINGS = "/api/companies/{company_id}/settings"
EXPERIMENTS = "/api/companies/{company_id}/experiments"


@dataclass
class Ui:
    page: Page
    api: Api
    base: str

    def open(self, fragment: str = "") -> Page:
        token = self.api.token(ADMIN_A, expires_in=3600)
        self.page.goto(f"{self.base}/dashboard/{ALPHA}?token={token}" + (f"#{fragment}" if fragment else ""))
        return self.page

    def detail(self, case_id: str) -> Page:
        page = self.open(f"case={case_id}")
        expect(page.locator("#detail")).to_be_visible()
        expect(page.locator("#timeline tr").first).to_be_visible()
        return page

    def api_case(self, case_id: str) -> dict[str, Any]:
        _, body = self.api.call("GET", CASE, params={"case_id": case_id}, status=200)
        return dict(body)


@pytest.fixture
def ui(api: Api, server: str, page: Page) -> Iterator[Ui]:
    yield Ui(page, api, server)


def member(api: Api, n: int) -> tuple[str, str]:
    membership, user = f"mem_{n}", f"user_{n}"
    api.whop.add_membership(membership, company_id=ALPHA, user_id=user)
    return membership, user


def seed(api: Api) -> dict[str, str]:
    """One case of each kind: open and nudged, recovered, member-cancelled, expired, old recovery."""
    cases: dict[str, str] = {}
    m, u = member(api, 1)
    cases["open"] = api.open_case(membership=m, user=u, at=NOW - DAY, amount=19.99)
    effects.execute_owed(effects.default_context(), ALPHA, NOW, case_id=cases["open"])  # T+0 push and DM
    m, u = member(api, 2)
    cases["recovered"] = api.open_case(membership=m, user=u, at=NOW - 3 * DAY, amount=49.0)
    api.recover(membership=m, at=NOW - 2 * DAY, amount=49.0)
    m, u = member(api, 3)
    cases["member_cancelled"] = api.open_case(membership=m, user=u, at=NOW - 4 * DAY, amount=9.99)
    api.member_cancels(membership=m, at=NOW - 3 * DAY)
    m, u = member(api, 4)
    cases["expired"] = api.open_case(membership=m, user=u, at=NOW - 20 * DAY, amount=5.0)
    m, u = member(api, 5)
    cases["old_recovered"] = api.open_case(membership=m, user=u, at=NOW - 10 * DAY, amount=30.0)
    api.recover(membership=m, at=NOW - 9 * DAY, amount=30.0)
    return cases


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# --- overview -----------------------------------------------------------------------------------


def test_tiles_equal_the_kpi_api_for_each_window(ui: Ui) -> None:
    seed(ui.api)
    page = ui.open()
    for window in ("30", "7", "90"):
        if window != "30":
            page.select_option("#window", window)
        _, k = ui.api.call("GET", KPIS, query=f"window_days={window}", status=200)
        for key in ("active_cases", "recoveries", "recovered_revenue"):
            expect(page.locator(f'[data-kpi="{key}"]')).to_have_attribute("data-value", compact(k[key]))
        expect(page.locator('[data-kpi="active_cases"] .value')).to_have_text(str(k["active_cases"]))
        expect(page.locator('[data-kpi="recoveries"] .value')).to_have_text(str(k["recoveries"]))
        rate = page.locator('[data-kpi="recovery_rate"] .value')
        matured = k["matured_recovery_rate"]
        expect(rate).to_have_text("–" if matured is None else f"{matured * 100:.1f}%")
        shown = page.locator('[data-kpi="recovery_rate"]').get_attribute("data-value")
        assert json.loads(shown or "") == matured  # the matured rate (JSON: 0 and 0.0 alike)
        prev = k["previous"]
        expect(page.locator('[data-kpi="recoveries"] .trend')).to_contain_text(
            f"vs {prev['recoveries']} in the previous {window} days")
    # The 7-day window holds only the $49 recovery; 90 days adds the $30 one.
    assert k["recovered_revenue"] == [{"currency": "usd", "amount_minor": 7900}]
    expect(page.locator('[data-kpi="recovered_revenue"] .value')).to_have_text("$79.00")


# --- cases and their timeline -------------------------------------------------------------------


def test_status_badges_say_why_each_case_closed(ui: Ui) -> None:
    cases = seed(ui.api)
    m, u = member(ui.api, 6)
    mine = ui.api.open_case(membership=m, user=u, at=NOW - DAY)
    ui.api.call("POST", CASE + "/cancel", params={"case_id": mine}, status=200)
    page = ui.open("view=cases")
    expected = {cases["open"]: "Open", cases["recovered"]: "Recovered",
                cases["member_cancelled"]: "Member cancelled", cases["expired"]: "Expired",
                mine: "Cancelled by you"}
    for case_id, text in expected.items():
        expect(page.locator(f'tr[data-case="{case_id}"] .badge')).to_have_text(text)
    expect(page.locator(f'tr[data-case="{cases["open"]}"] td[data-label="Amount"]')).to_have_text("$19.99")


def test_the_timeline_names_every_rows_kind_and_outcome(ui: Ui) -> None:
    m, u = member(ui.api, 1)
    case_id = ui.api.open_case(membership=m, user=u, at=NOW - DAY)
    effects.execute_owed(effects.default_context(), ALPHA, NOW, case_id=case_id)  # T+0: sent
    ui.api.whop.inject("POST", r"/notifications", "503", times=None)
    ui.api.call("POST", CASE + "/nudge", params={"case_id": case_id}, status=200)  # DM sent, push pending
    ui.api.whop.clear_faults()
    link = ui.api.client.http.get(f"/r/{ui.api.case(case_id)['link_token']}")  # the member clicks
    assert link.status_code == 302
    ui.api.call("POST", CASE + "/cancel", params={"case_id": case_id}, status=200)  # pending: skipped
    items = ui.api_case(case_id)["timeline"]
    statuses = {(i["type"], i["status"]) for i in items}
    assert {("payment.failed", None), ("nudge", "sent"), ("manual_nudge", "sent"),
            ("manual_nudge", "skipped"), ("link_click", "done"), ("creator_cancel", "done")} <= statuses
    page = ui.detail(case_id)
    rows = page.locator("#timeline tr")
    expect(rows).to_have_count(len(items))
    labels = {"payment.failed": "Payment failed", "nudge": "Nudge", "manual_nudge": "Nudge by you",
              "link_click": "Member clicked the payment link", "creator_cancel": "Case cancelled"}
    outcomes = {None: "Received", "sent": "Sent", "skipped": "Skipped", "pending": "Pending", "done": "Done"}
    for i, item in enumerate(items):
        row = rows.nth(i)
        expect(row).to_have_attribute("data-kind", item["type"])
        what = row.locator('td[data-label="What"]').inner_text()
        outcome = row.locator('td[data-label="Outcome"]').inner_text()
        assert what == labels.get(item["type"], what) and "undefined" not in what and what.strip(), what
        assert outcome.startswith(outcomes[item["status"]]), (item, outcome)
        reason = item["detail"].get("error")
        if item["status"] == "skipped":
            assert outcome == {"case_closed": "Skipped: case closed",
                               "creator_cancelled": "Skipped: case cancelled by you"}[reason]
        if item["channel"]:
            channel = {"push": "Push", "dm": "DM"}[item["channel"]]
            expect(row.locator('td[data-label="Channel"]')).to_have_text(channel)
    kv = page.locator("#detail-kv").inner_text()
    assert "$19.99 (USD)" in kv and "Cancelled by you" in kv and f"You ({ADMIN_A})" in kv


def test_search_with_no_match_says_so_and_a_failed_load_clears_once_it_works(ui: Ui) -> None:
    seed(ui.api)
    page = ui.open("view=cases")
    expect(page.locator("#case-rows tr")).to_have_count(5)
    page.fill("#search", "mem_nobody")
    page.press("#search", "Enter")
    expect(page.locator("#cases-empty")).to_have_text(re.compile("No cases match “mem_nobody”"))
    page.fill("#search", "mem_2")
    page.route("**/cases?*", lambda route: route.abort())
    page.press("#search", "Enter")
    banner = page.locator('#messages .msg.error[data-topic="cases"]')
    expect(banner).to_contain_text("cannot be reached")
    page.unroute("**/cases?*")
    page.press("#search", "Enter")
    expect(page.locator("#case-rows tr")).to_have_count(1)
    expect(banner).to_have_count(0)
    expect(page.locator("#cases-empty")).to_be_hidden()


# --- actions ------------------------------------------------------------------------------------

ACTION_TEXT = {"nudge": "push and a direct message now", "cancel": "No more nudges, reminders or free days",
               "cancel-membership": "at the end of its current billing period",
               "terminate": "access ends now"}


@pytest.mark.parametrize("action", ["nudge", "cancel", "cancel-membership", "terminate"])
def test_each_action_asks_first_then_whop_gets_exactly_its_call(ui: Ui, action: str) -> None:
    m, u = member(ui.api, 1)
    case_id = ui.api.open_case(membership=m, user=u, at=NOW - DAY)
    page = ui.detail(case_id)
    button = page.locator(f'#detail-actions button[data-action="{action}"]')
    # Asked, then declined: nothing happens.
    button.click()
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(ACTION_TEXT[action])
    expect(dialog).to_contain_text(m)
    page.click("#confirm-no")
    expect(dialog).to_be_hidden()
    assert ui.api.whop.calls_to("POST", r"/(messages|notifications|memberships/.*/cancel)") == []
    assert ui.api.case(case_id)["status"] == "open"
    # Asked, then confirmed.
    button.click()
    page.click("#confirm-yes")
    done = page.locator('#messages .msg.ok[data-topic="action"]')
    expect(done).to_be_visible()
    cancels = ui.api.whop.calls_to("POST", r"/memberships/.*/cancel")
    badge = page.locator("#detail-kv .badge")
    if action == "nudge":
        expect(done).to_contain_text("push sent")
        assert len(ui.api.whop.calls_to("POST", r"/notifications")) == 1
        assert len(ui.api.whop.calls_to("POST", r"/messages")) == 1
        assert cancels == []
        expect(page.locator('#timeline tr[data-kind="manual_nudge"]')).to_have_count(2)
    elif action == "cancel":
        assert cancels == [] and ui.api.whop.calls_to("POST", r"/(messages|notifications)") == []
        expect(badge).to_have_text("Cancelled by you")
    else:
        (call,) = cancels
        assert call.path.endswith(f"/memberships/{m}/cancel")
        assert call.json["cancel_at_period_end"] is (action == "cancel-membership")
        expect(badge).to_have_text("Terminated" if action == "terminate" else "Membership cancelled by you")
        if action == "terminate":
            assert ui.api.whop.membership(m)["status"] == "canceled"
            expect(done).to_contain_text("access ended now")
    # The same case row in the list shows the new state too.
    expect(page.locator(f'tr[data-case="{case_id}"] .badge')).to_have_text(
        "Open" if action == "nudge" else badge.inner_text())


def test_a_second_nudge_within_the_hour_shows_when_the_next_is_possible(ui: Ui) -> None:
    m, u = member(ui.api, 1)
    case_id = ui.api.open_case(membership=m, user=u, at=NOW - DAY)
    ui.api.call("POST", CASE + "/nudge", params={"case_id": case_id}, status=200)
    sent = len(ui.api.whop.calls_to("POST", r"/messages"))
    page = ui.detail(case_id)
    page.click('#detail-actions button[data-action="nudge"]')
    page.click("#confirm-yes")
    error = page.locator('#messages .msg.error[data-topic="action"]')
    expect(error).to_contain_text(
        re.compile(r"The next nudge is possible at \d{1,2}:\d{2}.*\(in (59|60) min\)"))
    assert len(ui.api.whop.calls_to("POST", r"/messages")) == sent


def test_closed_cases_disable_actions_with_the_reason(ui: Ui) -> None:
    cases = seed(ui.api)
    page = ui.detail(cases["recovered"])
    for action in ("nudge", "cancel", "cancel-membership", "terminate"):
        button = page.locator(f'#detail-actions button[data-action="{action}"]')
        expect(button).to_have_attribute("aria-disabled", "true")
        expect(button).to_have_attribute("title", re.compile("recovered"))
    page.focus('#detail-actions button[data-action="terminate"]')  # still focusable, so the reason is read
    page.keyboard.press("Enter")
    expect(page.locator('#messages .msg[data-topic="action"]')).to_contain_text("recovered")
    expect(page.locator("#confirm")).to_be_hidden()
    assert ui.api.whop.calls_to("POST", r"/memberships/.*/cancel") == []


# --- settings -----------------------------------------------------------------------------------


def test_settings_save_and_a_bad_value_shows_its_error_next_to_the_field(ui: Ui) -> None:
    page = ui.open("view=settings")
    expect(page.locator("#s-tz")).to_have_value("UTC")
    page.fill("#s-incentive", "5")
    page.fill("#s-offsets", "3, 1")
    page.fill("#s-qs", "22:00")
    page.fill("#s-qe", "07:30")
    page.click("#settings-form button[type=submit]")
    expect(page.locator("#settings-saved")).to_contain_text("Saved")
    _, saved = ui.api.call("GET", SETTINGS, status=200)
    assert (saved["incentive_days"], saved["reminder_offsets_days"], saved["quiet_hours"]) == (
        5, [1, 3], {"start": "22:00", "end": "07:30"})
    page.fill("#s-tz", "Mars/Olympus")
    page.fill("#s-incentive", "31")
    page.click("#settings-form button[type=submit]")
    expect(page.locator("#err-timezone")).to_contain_text("time zone")
    expect(page.locator("#err-incentive_days")).not_to_be_empty()
    expect(page.locator("#s-tz")).to_have_attribute("aria-invalid", "true")
    expect(page.locator('#messages .msg.error[data-topic="settings"]')).to_be_visible()
    _, unchanged = ui.api.call("GET", SETTINGS, status=200)
    assert unchanged["timezone"] == "UTC" and unchanged["incentive_days"] == 5
    # Fixed: saved, and the errors are gone.
    page.fill("#s-tz", "Europe/Berlin")
    page.fill("#s-incentive", "7")
    page.click("#settings-form button[type=submit]")
    expect(page.locator("#settings-saved")).to_contain_text("Saved")
    expect(page.locator("#err-timezone")).to_be_empty()
    expect(page.locator('#messages .msg.error[data-topic="settings"]')).to_have_count(0)
    _, fixed = ui.api.call("GET", SETTINGS, status=200)
    assert (fixed["timezone"], fixed["incentive_days"]) == ("Europe/Berlin", 7)


# --- experiments (the measurement API) -------------------------------------------------------------


def test_an_experiment_is_created_shows_results_and_is_stopped(ui: Ui) -> None:
    page = ui.open("view=experiments")
    expect(page.locator("#exp-empty")).to_be_visible()
    page.fill("#exp-name", "Shorter push")
    page.fill("#v0-name", "control")
    page.fill("#v1-name", "short")
    page.fill("#v1-push_body", "Fix {product} for {amount}")  # no {link}: the API refuses it
    expect(page.locator('#variants [data-index="1"] [data-preview]')).to_contain_text(
        "Fix your membership for $19.99")
    page.click("#exp-form button[type=submit]")
    expect(page.locator("#v1-push_body-err")).to_contain_text("{link}")
    expect(page.locator("#v1-push_body")).to_have_attribute("aria-invalid", "true")
    _, none_yet = ui.api.call("GET", EXPERIMENTS, status=200)
    assert none_yet["items"] == []
    page.fill("#v1-push_body", "Fix {product} for {amount}: {link}")
    page.click("#exp-form button[type=submit]")
    expect(page.locator("#exp-detail")).to_be_visible()
    expect(page.locator("#exp-results tbody tr")).to_have_count(2)
    expect(page.locator("#exp-winner")).to_contain_text("Collecting data.")
    expect(page.locator("#exp-winner")).to_contain_text("more matured cases per variant to detect +10 pts")
    expect(page.locator("#v1-push_body-err")).to_be_empty()
    _, listed = ui.api.call("GET", EXPERIMENTS, status=200)
    (exp,) = listed["items"]
    assert exp["name"] == "Shorter push" and exp["status"] == "running"
    assert [v["push_body"] for v in exp["variants"]] == [None, "Fix {product} for {amount}: {link}"]
    reason = exp["winner_reason"]
    expect(page.locator("#exp-winner")).to_contain_text(reason)
    expect(page.locator(f'#exp-rows tr[data-experiment="{exp["id"]}"]')).to_contain_text("Running")
    page.click("#exp-stop")
    expect(page.locator("#confirm")).to_contain_text("results are kept")
    page.click("#confirm-yes")
    expect(page.locator("#exp-stop")).to_be_hidden()
    _, stopped = ui.api.call("GET", EXPERIMENTS + "/{experiment_id}", params={"experiment_id": exp["id"]},
                             status=200)
    assert stopped["status"] == "stopped"
    expect(page.locator(f'#exp-rows tr[data-experiment="{exp["id"]}"]')).to_contain_text("Stopped")
    expect(page.locator("#exp-winner")).to_contain_text("No winner. Stopped before the data named a winner.")
    expect(page.locator("#exp-winner")).not_to_contain_text("No winner yet")


def test_lift_is_withheld_with_the_reason_and_one_click_turns_on_a_holdout(ui: Ui) -> None:
    seed(ui.api)
    page = ui.open()
    expect(page.locator("#lift-body")).to_contain_text("no cases are held out")
    page.click("#holdout-on")
    expect(page.locator('#messages .msg.ok[data-topic="holdout"]')).to_contain_text("10% of new cases")
    _, saved = ui.api.call("GET", SETTINGS, status=200)
    assert saved["holdout_percent"] == 10
    expect(page.locator("#lift-body")).to_contain_text("Not enough data yet")
    page.goto(page.url.split("#")[0] + "#view=settings")
    expect(page.locator("#s-holdout")).to_have_value("10")
    # The decline-class breakdown and incentive cost come from the same KPI answer.
    _, k = ui.api.call("GET", KPIS, query="window_days=30", status=200)
    page.goto(page.url.split("#")[0] + "#view=overview")
    for cls, figures in k["by_decline_class"].items():
        row = page.locator(f'#decline-table tr[data-class="{cls}"]')
        if figures["cases"]:
            expect(row.locator("td").first).to_have_text(str(figures["cases"]))
        else:
            expect(row).to_have_count(0)


# --- export -------------------------------------------------------------------------------------


def test_an_export_of_several_parts_has_every_case_once(ui: Ui, monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib.api import cases as cases_api

    ids = {ui.api.open_case(membership=f"mem_x{i}", user=f"user_x{i}", at=NOW - DAY - i * DAY / 24)
           for i in range(9)}
    monkeypatch.setattr(cases_api, "EXPORT_MAX_BYTES", 900)  # a few rows a part
    parts: list[str] = []
    page = ui.open("view=cases")
    page.on("request", lambda r: parts.append(r.url) if "export.csv" in r.url else None)
    expect(page.locator("#case-rows tr")).to_have_count(9)
    with page.expect_download() as info:
        page.click("#export-btn")
    text = Path(info.value.path()).read_text(encoding="utf-8")
    assert len(parts) >= 3 and all("cursor=" in url for url in parts[1:])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(r["case_id"] for r in rows) == sorted(ids)
    assert text.count("case_id,membership_id") == 1
    expect(page.locator('#messages .msg.ok[data-topic="export"]')).to_contain_text("9 cases in one file")


# --- layout, keyboard, accessibility ----------------------------------------------------------


def no_horizontal_scroll(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def test_360px_and_800px_have_no_horizontal_scroll(ui: Ui, artifacts: Path) -> None:
    cases = seed(ui.api)
    page = ui.page
    for width in (360, 800):
        page.set_viewport_size({"width": width, "height": 780})
        for fragment in ("view=overview", "view=cases", f"case={cases['open']}", "view=experiments",
                         "view=settings"):
            ui.open(fragment)
            page.wait_for_load_state("networkidle")
            assert no_horizontal_scroll(page), (width, fragment)
            if fragment.startswith("case="):
                actions = page.locator("#detail-actions")
                box = actions.bounding_box()
                assert box is not None and box["x"] + box["width"] <= width
                if width == 360:
                    page.screenshot(path=str(artifacts / "dashboard-360-case.png"), full_page=True)
    page.set_viewport_size({"width": 360, "height": 780})
    ui.open("view=overview")
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(artifacts / "dashboard-360-overview.png"), full_page=True)


def test_keyboard_alone_reaches_every_action_with_visible_focus(ui: Ui) -> None:
    m, u = member(ui.api, 1)
    case_id = ui.api.open_case(membership=m, user=u, at=NOW - DAY)
    page = ui.open("view=cases")
    expect(page.locator("#case-rows tr")).to_have_count(1)
    reached: list[str] = []
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.matches('#case-rows a')"):
            break
    else:
        pytest.fail("Tab never reached the case link")
    page.keyboard.press("Enter")
    expect(page.locator("#detail")).to_be_visible()
    for _ in range(20):
        page.keyboard.press("Tab")
        action = page.evaluate("document.activeElement.dataset.action || ''")
        if action:
            reached.append(action)
            outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
            assert outline != "none", f"no visible focus on {action}"
        if len(reached) == 4:
            break
    assert reached == ["nudge", "cancel", "cancel-membership", "terminate"]
    page.keyboard.press("Enter")  # terminate
    expect(page.locator("#confirm")).to_contain_text("access ends now")
    assert page.evaluate("document.activeElement.id") == "confirm-no"  # the safe choice first
    page.keyboard.press("Escape")
    expect(page.locator("#confirm")).to_be_hidden()
    assert page.evaluate("document.activeElement.dataset.action") == "terminate"
    assert ui.api.case(case_id)["status"] == "open"


def axe_violations(page: Page) -> list[dict[str, Any]]:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [{"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:3]}
            for v in result["violations"] if v["impact"] in ("serious", "critical")]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_nothing_serious_and_screenshots(ui: Ui, scheme: str, artifacts: Path,
                                                   browser: Browser) -> None:
    cases = seed(ui.api)
    # axe is injected as a script, which the page's own policy rightly refuses: bypass it here only.
    context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme=scheme,
                                  bypass_csp=True)
    page = ui.page = context.new_page()
    found: dict[str, Any] = {}
    for fragment in ("view=overview", f"case={cases['open']}", "view=experiments", "view=settings"):
        ui.open(fragment)
        page.wait_for_load_state("networkidle")
        if fragment == "view=overview":
            expect(page.locator('[data-kpi="recoveries"]')).to_have_attribute("data-value", re.compile(r"\d"))
        bad = axe_violations(page)
        if bad:
            found[fragment] = bad
        name = fragment.split("=")[0] if fragment.startswith("case") else fragment.split("=")[1]
        page.screenshot(path=str(artifacts / f"dashboard-{scheme}-{name}.png"), full_page=True)
    assert found == {}, found
    bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    context.close()
    assert (bg == "rgb(11, 17, 32)") is (scheme == "dark")


def test_empty_company_favicon_and_nothing_loaded_from_elsewhere(ui: Ui) -> None:
    origins: set[str] = set()
    ui.page.on("request", lambda r: origins.add(re.sub(r"^(\w+://[^/]+).*$", r"\1", r.url)))
    page = ui.open()
    expect(page.locator('[data-kpi="active_cases"]')).to_have_attribute("data-value", "0")
    expect(page.locator("#decline-empty")).to_be_visible()
    page.wait_for_load_state("networkidle")
    assert origins == {ui.base}  # no CDN: charts are drawn by the page itself
    icon = page.request.get(f"{ui.base}/favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"] == "image/svg+xml"
    assert page.evaluate("document.querySelector('link[rel=icon]').href") == f"{ui.base}/favicon.ico"
    ui.open("view=cases")
    expect(page.locator("#cases-empty")).to_have_text(
        re.compile("No cases in the last 30 days: a case opens"))
