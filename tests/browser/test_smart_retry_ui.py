"""Smart retry on the dashboard (issue 18), in Chromium against the real app, Postgres and fake
Whop: the "Recovered by" panel equals the KPI API, a missing Whop permission is shown with what
to grant, the timeline names Rebound's attach and payday retry with Whop's answer, and "Retry
payment" asks first, then makes exactly one retry at Whop and refuses a second.

Data goes through the real paths: signed webhooks through processing, owed rows through the
executor (the fake Whop over HTTP), and the fake's own webhooks back through processing."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from chalicelib import effects
from chalicelib.models import CreatorSettings
from chalicelib.queue import QueuedWebhook
from chalicelib.recovery_policy import payday_slot
from scripts.whop_payloads import card_saved_event
from tests.browser.test_dashboard_ui import Ui
from tests.test_api_support import ADMIN_A, ALPHA, DAY, NOW, Api, api_fixture  # noqa: F401

KPIS = "/api/companies/{company_id}/kpis"
RETRY = r"/payments/[^/]+/retry"


@pytest.fixture
def ui(api: Api, server: str, page: Page) -> Iterator[Ui]:
    yield Ui(page, api, server)


def member(api: Api, n: int) -> tuple[str, str, str]:
    membership, user = f"mem_{n}", f"user_{n}"
    api.whop.add_membership(membership, company_id=ALPHA, user_id=user)
    return membership, user, f"payt_{n}"


def fail(api: Api, membership: str, user: str, at: datetime, decline: str = "insufficient_funds") -> str:
    """A failed renewal through processing, and its open payment at the fake Whop."""
    from tests.helpers import payment_event

    payment = f"pay_{membership}"
    api.whop.add_payment(payment, company_id=ALPHA, membership_id=membership, user_id=user)
    msg_id, body = payment_event("payment.failed", membership=membership, user=user, at=at, payment=payment,
                                 decline_code=decline, failure_message=None)
    out = api.deliver(msg_id, body, at)
    assert out.status == "applied"
    return out.opened_case_ids[0]


def save_card(api: Api, user: str, method: str) -> None:
    msg_id, body = card_saved_event(user=user, payment_method=method, at=NOW)
    assert api.deliver(msg_id, body, NOW).status == "applied"
    effects.execute_owed(effects.default_context(), ALPHA, NOW)  # the attach, as after the batch


def whop_answers(api: Api) -> None:
    """The fake Whop's payment webhooks, through processing (as the route and SQS would)."""
    for delivery in list(api.whop.deliveries):
        from chalicelib.processing import process_webhook

        process_webhook(QueuedWebhook(delivery.msg_id, NOW, delivery.body), NOW, api.db)


def test_recovered_by_panel_timeline_and_permission_warning(ui: Ui, artifacts: Path) -> None:
    api = ui.api
    # A card saved: attached, charged by Whop, recovered by Rebound.
    m1, u1, card1 = member(api, 1)
    api.whop.add_payment_method(card1, user_id=u1, company_id=ALPHA)
    attached = fail(api, m1, u1, NOW - DAY, decline="expired_card")
    save_card(api, u1, card1)
    whop_answers(api)
    assert api.case(attached)["recovered_by"] == "rebound_retry"
    # A soft decline retried at payday (its failure dated so a payday falls inside its window).
    slot = payday_slot(NOW, CreatorSettings())
    m2, u2, _ = member(api, 2)
    payday = fail(api, m2, u2, slot - timedelta(days=12))
    effects.execute_owed(effects.default_context(), ALPHA, slot)
    # A card Whop will not let Rebound attach: the app lacks the permission.
    m3, u3, card3 = member(api, 3)
    api.whop.add_payment_method(card3, user_id=u3, company_id=ALPHA)
    api.whop.deny_permission("member:payment_methods:manage")
    refused = fail(api, m3, u3, NOW - DAY)
    save_card(api, u3, card3)

    page = ui.open()
    _, k = api.call("GET", KPIS, query="window_days=30", status=200)
    for source, figures in k["by_recovery_source"].items():
        row = page.locator(f'#source-table tr[data-source="{source}"]')
        expect(row).to_have_attribute("data-value", json.dumps(figures, separators=(",", ":")))
    expect(page.locator('#source-table tr[data-source="rebound_retry"] td').first).to_have_text("1")
    warning = page.locator("#permission-warning")
    expect(warning).to_be_visible()
    expect(warning).to_contain_text("grant member:payment_methods:manage")
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(artifacts / "smart-retry-overview.png"), full_page=True)

    page = ui.detail(attached)
    row = page.locator('#timeline tr[data-kind="card_attach"]')
    expect(row.locator('td[data-label="What"]')).to_have_text("Card attached by Rebound")
    expect(row.locator('td[data-label="Outcome"]')).to_have_text(re.compile("^Sent"))
    kv = page.locator("#detail-kv")
    expect(kv).to_contain_text("Rebound's retry")
    expect(kv).to_contain_text("the member saved a card")
    page.screenshot(path=str(artifacts / "smart-retry-attached-case.png"), full_page=True)

    page = ui.detail(payday)
    row = page.locator('#timeline tr[data-kind="payment_retry"]')
    expect(row.locator('td[data-label="What"]')).to_have_text("Retried by Rebound at payday")
    expect(row.locator('td[data-label="Step"]')).to_have_text("Payday")
    expect(row.locator('td[data-label="Outcome"]')).to_have_text("Sent: Whop says paid")

    page = ui.detail(refused)
    row = page.locator('#timeline tr[data-kind="card_attach"]')
    expect(row.locator('td[data-label="Outcome"]')).to_have_text(
        "Failed: Whop permission missing (grant member:payment_methods:manage)")


def test_retry_payment_asks_first_then_whop_gets_one_retry_and_a_second_is_refused(ui: Ui) -> None:
    api = ui.api
    m, u, _ = member(api, 1)
    case_id = fail(api, m, u, NOW - DAY, decline="expired_card")
    page = ui.detail(case_id)
    button = page.locator('#detail-actions button[data-action="retry"]')
    expect(button).to_have_attribute("aria-disabled", "false")
    button.click()
    dialog = page.locator("#confirm")
    expect(dialog).to_contain_text("retried once")
    page.click("#confirm-no")
    assert api.whop.calls_to("POST", RETRY) == []
    button.click()
    page.click("#confirm-yes")
    expect(page.locator('#messages .msg.ok[data-topic="action"]')).to_contain_text(
        "Retried: Whop says the payment is paid")
    (call,) = api.whop.calls_to("POST", RETRY)
    assert call.path.endswith(f"/payments/pay_{m}/retry")
    row = page.locator('#timeline tr[data-kind="payment_retry"]')
    expect(row.locator('td[data-label="What"]')).to_have_text("Retried by you")
    expect(row.locator('td[data-label="By"]')).to_have_text(f"You ({ADMIN_A})")
    # Once per payment: the button now says why, and the server agrees.
    expect(button).to_have_attribute("aria-disabled", "true")
    expect(button).to_have_attribute("title", re.compile("retried once"))
    api.call("POST", "/api/companies/{company_id}/cases/{case_id}/retry", params={"case_id": case_id},
             status=409)
    assert len(api.whop.calls_to("POST", RETRY)) == 1


def test_the_smart_retry_setting_is_saved_from_the_settings_page(ui: Ui) -> None:
    page = ui.open("view=settings")
    box = page.locator("#s-smart")
    expect(box).to_be_checked()
    box.uncheck()
    page.click("#settings-form button[type=submit]")
    expect(page.locator("#settings-saved")).to_contain_text("Saved")
    _, stored = ui.api.call("GET", "/api/companies/{company_id}/settings", status=200)
    assert stored["smart_retry"] is False
    ui.open("view=overview")
    expect(ui.page.locator("#smart-retry-note")).to_contain_text("Smart retry is off")
