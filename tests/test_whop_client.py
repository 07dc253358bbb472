"""The Whop adapter against the fake Whop over real HTTP: request shapes, retries, idempotency,
error classes, secrecy; and the fake itself (validation, tokens, webhook signatures, admin API)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from whop_sdk.lib.verify_user_token import verify_user_token
from whop_sdk.lib.verify_webhook import unwrap

from chalicelib.whop import (
    Membership,
    WhopError,
    WhopNotFound,
    WhopPermanentError,
    WhopRetryableError,
    derive_idempotency_key,
)
from chalicelib.whop_client import WHOP_API_VERSION_DATE, WhopClient, get_whop, reset_whop
from chalicelib.whop_retries import parse_retry_after
from scripts.fake_whop import FakeWhop
from tests.whop_fixtures import RecordingSleeper

ROOT = Path(__file__).resolve().parent.parent
EXTEND = r"/memberships/[^/]+/extend"


@pytest.fixture
def seeded(fake_whop: FakeWhop) -> FakeWhop:
    fake_whop.add_membership("mem_1", company_id="biz_1", user_id="user_1", status="past_due",
                             current_period_end="2030-01-10T00:00:00Z", renewal_amount_minor=1999,
                             currency="usd", billing_period_days=30)
    fake_whop.add_experience("biz_1", fake_whop.app_id, "exp_1")
    fake_whop.add_payment("pay_1", company_id="biz_1", membership_id="mem_1", user_id="user_1")
    return fake_whop


def period_end(fake: FakeWhop, membership_id: str = "mem_1") -> str:
    return str(fake.membership(membership_id)["current_period_end"])


def assert_common_headers(headers: dict[str, str], fake: FakeWhop) -> None:
    assert headers["authorization"] == f"Bearer {fake.api_key}"
    assert headers["api-version-date"] == WHOP_API_VERSION_DATE


# ---- request shapes ------------------------------------------------------------------------


def test_retrieve_membership_parses_the_dated_shape(seeded: FakeWhop, whop_client: WhopClient) -> None:
    membership = whop_client.retrieve_membership("mem_1")

    assert membership == Membership(
        id="mem_1", status="past_due", company_id="biz_1", user_id="user_1",
        manage_url=f"{seeded.origin}/_fake/manage/mem_1", cancel_at_period_end=False,
        current_period_end=datetime(2030, 1, 10, tzinfo=UTC), renewal_amount_minor=1999,
        renewal_currency="usd", billing_period_days=30, product_title="Pro")
    (call,) = seeded.calls
    assert (call.method, call.path) == ("GET", "/api/v1/memberships/mem_1")
    assert_common_headers(call.headers, seeded)
    assert call.idempotency_key is None


def test_membership_model_carries_no_pii() -> None:
    assert set(Membership.model_fields) == {
        "id", "status", "company_id", "user_id", "manage_url", "cancel_at_period_end",
        "current_period_end", "renewal_amount_minor", "renewal_currency", "billing_period_days",
        "product_title"}  # the creator's product name, for {product} in nudges: not member data


def test_extend_sends_days_and_idempotency_key(seeded: FakeWhop, whop_client: WhopClient) -> None:
    result = whop_client.extend_membership("mem_1", 3, "case-1:extend")

    assert result.ok and result.status_code == 200 and result.attempts == 1
    assert result.error_class is None and result.error_code is None
    assert result.data["current_period_end"].startswith("2030-01-13T00:00:00")
    assert period_end(seeded).startswith("2030-01-13T00:00:00")
    (call,) = seeded.calls_to("POST", EXTEND)
    assert call.path == "/api/v1/memberships/mem_1/extend"
    assert call.json == {"days": 3}
    assert call.idempotency_key == "case-1:extend"
    assert call.headers["content-type"] == "application/json"
    assert_common_headers(call.headers, seeded)


@pytest.mark.parametrize(("at_period_end", "status", "flag"), [(True, "past_due", True),
                                                               (False, "canceled", False)])
def test_cancel_always_sends_the_flag_explicitly(seeded: FakeWhop, whop_client: WhopClient,
                                                 at_period_end: bool, status: str, flag: bool) -> None:
    result = whop_client.cancel_membership("mem_1", at_period_end, "case-1:cancel")

    assert result.ok
    assert result.data["status"] == status and result.data["cancel_at_period_end"] is flag
    (call,) = seeded.calls_to("POST", r"/memberships/mem_1/cancel")
    assert call.json == {"cancel_at_period_end": at_period_end}
    assert call.idempotency_key == "case-1:cancel"
    assert_common_headers(call.headers, seeded)


def test_send_push_targets_the_experience_and_one_user(seeded: FakeWhop, whop_client: WhopClient) -> None:
    plain = whop_client.send_push("exp_1", "user_1", "Payment failed", "Fix it", "case-1:push:1")
    linked = whop_client.send_push("exp_1", "user_1", "Payment failed", "Fix it", "case-1:push:2",
                                   rest_path="/fix/abc")

    assert plain.ok and linked.ok and plain.data == {"success": True}
    first, second = seeded.calls_to("POST", r"/notifications")
    assert first.json == {"title": "Payment failed", "content": "Fix it", "experience_id": "exp_1",
                          "user_ids": ["user_1"]}
    assert second.json == {**first.json, "rest_path": "/fix/abc"}
    assert (first.idempotency_key, second.idempotency_key) == ("case-1:push:1", "case-1:push:2")
    assert_common_headers(first.headers, seeded)
    assert [n["user_ids"] for n in seeded.notifications] == [["user_1"], ["user_1"]]


def test_send_push_to_unknown_experience_is_permanent(seeded: FakeWhop, whop_client: WhopClient,
                                                     whop_sleeps: RecordingSleeper) -> None:
    result = whop_client.send_push("exp_gone", "user_1", "t", "c", "k")

    assert not result.ok and result.error_class == "permanent" and result.error_code == "http_404"
    assert whop_sleeps.calls == []


def test_send_dm_opens_the_channel_then_posts(seeded: FakeWhop, whop_client: WhopClient) -> None:
    result = whop_client.send_dm("user_1", "biz_1", "Your payment failed: fix it here", "case-1:dm")

    assert result.ok and result.attempts == 2
    (channel_call,) = seeded.calls_to("POST", r"/dm_channels")
    (message_call,) = seeded.calls_to("POST", r"/messages")
    assert channel_call.json == {"with_user_ids": ["user_1"], "account_id": "biz_1"}
    assert message_call.json == {"channel_id": result.data["channel_id"],
                                 "content": "Your payment failed: fix it here"}
    assert channel_call.idempotency_key == "case-1:dm:dm_channel"
    assert message_call.idempotency_key == "case-1:dm:message"
    assert_common_headers(message_call.headers, seeded)
    (message,) = seeded.messages
    assert result.data == {"channel_id": message["channel_id"], "message_id": message["id"]}


def test_send_dm_repeated_with_the_same_key_posts_once(seeded: FakeWhop, whop_client: WhopClient) -> None:
    first = whop_client.send_dm("user_1", "biz_1", "hello", "case-1:dm")
    again = whop_client.send_dm("user_1", "biz_1", "hello", "case-1:dm")

    assert first.ok and again.ok and first.data == again.data
    assert len(seeded.messages) == 1
    assert [c.replayed for c in seeded.calls_to("POST", r"/messages")] == [False, True]


def test_send_dm_reports_which_step_failed(seeded: FakeWhop, whop_client: WhopClient) -> None:
    seeded.inject("POST", r"/messages", "403")

    result = whop_client.send_dm("user_1", "biz_1", "hello", "case-1:dm")

    assert not result.ok and result.error_class == "permanent" and result.error_code == "http_403"
    assert result.data["step"] == "message" and result.data["channel_id"].startswith("feed_")


def test_retry_payment_keeps_only_payment_status_fields(seeded: FakeWhop, whop_client: WhopClient) -> None:
    result = whop_client.retry_payment("pay_1", "case-1:retry")

    assert result.ok
    assert result.data["id"] == "pay_1" and result.data["status"] == "paid"
    assert set(result.data) <= {"id", "status", "substatus", "membership_id", "retryable", "payments_failed",
                                "failure_message", "decline_code", "paid_at", "last_payment_attempt_at",
                                "next_payment_attempt_at", "payment_method_id"}
    (call,) = seeded.calls_to("POST", r"/payments/pay_1/retry")
    assert call.idempotency_key == "case-1:retry"
    assert_common_headers(call.headers, seeded)
    again = whop_client.retry_payment("pay_1", "case-1:retry-2")  # a payment is retried once
    assert not again.ok and again.error_class == "permanent" and again.error_code == "http_400"
    assert again.data == {"error_message": "This payment has already been retried"}


def test_retrieve_payment_keeps_the_retry_facts_and_no_card_data(seeded: FakeWhop,
                                                                 whop_client: WhopClient) -> None:
    at = datetime(2026, 3, 12, 9, tzinfo=UTC)
    seeded.add_payment("pay_2", company_id="biz_1", membership_id="mem_1", user_id="user_1",
                       payment_method_id="payt_old", next_payment_attempt_at=at, payments_failed=3)
    payment = whop_client.retrieve_payment("pay_2")
    assert (payment.id, payment.status, payment.membership_id) == ("pay_2", "open", "mem_1")
    assert payment.retryable and payment.next_payment_attempt_at == at
    assert (payment.payments_failed, payment.payment_method_id) == (3, "payt_old")
    assert payment.paid is False and payment.paid_at is None
    assert "4242" not in repr(payment) and "card" not in payment.model_dump()
    (call,) = seeded.calls_to("GET", r"/payments/pay_2")
    assert_common_headers(call.headers, seeded)
    with pytest.raises(WhopNotFound):
        whop_client.retrieve_payment("pay_nope")


def test_attach_payment_method_patches_the_membership_and_whop_charges_the_open_payment(
        seeded: FakeWhop, whop_client: WhopClient) -> None:
    seeded.add_payment_method("payt_new", user_id="user_1", company_id="biz_1")
    result = whop_client.attach_payment_method("mem_1", "payt_new", "card:biz_1:mem_1:payt_new")
    assert result.ok and result.data == {"membership_status": "active"}
    (call,) = seeded.calls_to("PATCH", r"/memberships/mem_1")
    assert call.json == {"payment_method_id": "payt_new"}
    assert call.idempotency_key == "card:biz_1:mem_1:payt_new"
    assert_common_headers(call.headers, seeded)
    assert seeded.payments["pay_1"].charges == ["attach:payt_new"]
    assert seeded.payments["pay_1"].status == "paid"
    assert [d.type for d in seeded.deliveries] == ["payment.succeeded"]  # Whop's webhook, queued
    # Another member's card, or an app without the permission: refused like Whop refuses.
    seeded.add_payment_method("payt_other", user_id="user_2", company_id="biz_1")
    other = whop_client.attach_payment_method("mem_1", "payt_other", "card:biz_1:mem_1:payt_other")
    assert not other.ok and other.error_code == "http_404"
    seeded.deny_permission("member:payment_methods:manage")
    denied = whop_client.attach_payment_method("mem_1", "payt_new", "card:biz_1:mem_1:payt_new:2")
    assert not denied.ok and denied.status_code == 403 and denied.cause == "credentials"
    assert "member:payment_methods:manage" in denied.data["error_message"]


@pytest.mark.parametrize("level", ["admin", "customer", "no_access"])
def test_check_access_levels(fake_whop: FakeWhop, whop_client: WhopClient, level: str) -> None:
    fake_whop.set_access("user_1", "biz_1", level)

    assert whop_client.check_access("user_1", "biz_1") == level
    assert whop_client.check_access("user_2", "biz_1") == "no_access"
    call = fake_whop.calls[0]
    assert (call.method, call.path) == ("GET", "/api/v1/users/user_1/access/biz_1")
    assert_common_headers(call.headers, fake_whop)


def test_find_app_experience(fake_whop: FakeWhop, whop_client: WhopClient) -> None:
    assert whop_client.find_app_experience("biz_1", fake_whop.app_id) is None
    fake_whop.add_experience("biz_1", "app_other", "exp_other")
    fake_whop.add_experience("biz_2", fake_whop.app_id, "exp_b2")
    assert whop_client.find_app_experience("biz_1", fake_whop.app_id) is None
    fake_whop.add_experience("biz_1", fake_whop.app_id, "exp_mine")

    assert whop_client.find_app_experience("biz_1", fake_whop.app_id) == "exp_mine"
    call = fake_whop.calls[-1]
    assert call.path == "/api/v1/experiences"
    assert call.query == {"account_id": ["biz_1"], "app_id": [fake_whop.app_id]}


# ---- retries -------------------------------------------------------------------------------


def test_429_waits_retry_after_then_extends_once(seeded: FakeWhop, whop_client: WhopClient,
                                                 whop_sleeps: RecordingSleeper) -> None:
    seeded.inject("POST", EXTEND, "429", retry_after=3)

    result = whop_client.extend_membership("mem_1", 2, "k-429")

    assert result.ok and result.attempts == 2
    assert whop_sleeps.calls == [3.0]
    calls = seeded.calls_to("POST", EXTEND)
    assert [c.status for c in calls] == [429, 200]
    assert {c.idempotency_key for c in calls} == {"k-429"}
    assert period_end(seeded).startswith("2030-01-12T")


def test_retry_after_as_http_date(seeded: FakeWhop, whop_client: WhopClient,
                                  whop_sleeps: RecordingSleeper) -> None:
    seeded.inject("GET", r"/memberships/mem_1", "429",
                  retry_after=format_datetime(datetime.now(UTC) + timedelta(seconds=6), usegmt=True))

    assert whop_client.retrieve_membership("mem_1").id == "mem_1"
    (waited,) = whop_sleeps.calls
    assert 3.0 <= waited <= 6.0


def test_500_twice_then_success_backs_off_exponentially(seeded: FakeWhop, whop_client: WhopClient,
                                                        whop_sleeps: RecordingSleeper) -> None:
    seeded.inject("POST", EXTEND, "500", times=2)

    result = whop_client.extend_membership("mem_1", 1, "k-500")

    assert result.ok and result.attempts == 3
    first, second = whop_sleeps.calls
    assert 0.8 <= first <= 1.2 and 1.6 <= second <= 2.4
    assert [c.status for c in seeded.calls_to("POST", EXTEND)] == [500, 500, 200]
    assert period_end(seeded).startswith("2030-01-11T")


def test_5xx_beyond_the_attempt_budget_is_a_retryable_failure(seeded: FakeWhop, whop_client: WhopClient,
                                                              whop_sleeps: RecordingSleeper) -> None:
    seeded.inject("POST", EXTEND, "503", times=None)

    result = whop_client.extend_membership("mem_1", 1, "k-503")

    assert not result.ok and result.error_class == "retryable" and result.retryable
    assert (result.status_code, result.error_code, result.attempts) == (503, "http_503", 3)
    assert len(whop_sleeps.calls) == 2 and whop_sleeps.total <= 20
    assert period_end(seeded).startswith("2030-01-10T")


def test_retry_after_beyond_the_budget_is_handed_back(seeded: FakeWhop, whop_client: WhopClient,
                                                      whop_sleeps: RecordingSleeper) -> None:
    seeded.inject("POST", EXTEND, "429", retry_after=120)

    result = whop_client.extend_membership("mem_1", 1, "k-later")

    assert not result.ok and result.error_class == "retryable" and result.error_code == "http_429"
    assert result.attempts == 1 and result.retry_after_s == 120.0
    assert whop_sleeps.calls == []


def test_reads_raise_retryable_after_the_budget(seeded: FakeWhop, whop_client: WhopClient,
                                                whop_sleeps: RecordingSleeper) -> None:
    seeded.inject("GET", r"/memberships/mem_1", "502", times=None)

    with pytest.raises(WhopRetryableError) as caught:
        whop_client.retrieve_membership("mem_1")

    assert (caught.value.status, caught.value.error_code, caught.value.attempts) == (502, "http_502", 3)
    assert len(whop_sleeps.calls) == 2


# ---- permanent failures ----------------------------------------------------------------------


@pytest.mark.parametrize("days", [0, 1096])
def test_400_is_permanent_and_not_retried(seeded: FakeWhop, whop_client: WhopClient,
                                          whop_sleeps: RecordingSleeper, days: int) -> None:
    result = whop_client.extend_membership("mem_1", days, "k-bad")

    assert not result.ok and result.error_class == "permanent"
    assert (result.status_code, result.error_code, result.attempts) == (400, "http_400", 1)
    assert result.data == {"error_message": "days must be between 1 and 1095"}
    assert whop_sleeps.calls == [] and len(seeded.calls) == 1


def test_404_is_permanent_for_writes_and_not_found_for_reads(fake_whop: FakeWhop, whop_client: WhopClient,
                                                             whop_sleeps: RecordingSleeper) -> None:
    result = whop_client.extend_membership("mem_missing", 1, "k-404")
    assert not result.ok and result.error_class == "permanent" and result.error_code == "http_404"

    with pytest.raises(WhopNotFound) as caught:
        whop_client.retrieve_membership("mem_missing")
    assert isinstance(caught.value, WhopPermanentError) and isinstance(caught.value, WhopError)
    assert caught.value.status == 404 and caught.value.attempts == 1
    assert whop_sleeps.calls == [] and len(fake_whop.calls) == 2


def test_bad_api_key_is_a_permanent_401(seeded: FakeWhop, whop_sleeps: RecordingSleeper) -> None:
    with WhopClient(api_key="wrong_key", base_url=seeded.base_url, sleep=whop_sleeps) as client:
        result = client.extend_membership("mem_1", 1, "k-401")
        with pytest.raises(WhopPermanentError) as caught:
            client.check_access("user_1", "biz_1")

    assert not result.ok and result.error_class == "permanent"
    assert (result.status_code, result.error_code, result.attempts) == (401, "http_401", 1)
    assert caught.value.status == 401 and not isinstance(caught.value, WhopNotFound)
    assert whop_sleeps.calls == [] and len(seeded.calls) == 2


# ---- timeouts and dropped connections ------------------------------------------------------


def wait_until_answered(fake: FakeWhop, count: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len([c for c in fake.calls if c.status is not None]) >= count:
            return
        time.sleep(0.02)
    raise AssertionError("the fake did not answer in time")


def test_slow_answers_time_out_and_are_retryable(seeded: FakeWhop, whop_sleeps: RecordingSleeper) -> None:
    seeded.inject("POST", EXTEND, "slow", times=3, delay_s=0.8)
    with WhopClient(api_key=seeded.api_key, base_url=seeded.base_url, sleep=whop_sleeps,
                    read_timeout_s=0.3) as client:
        result = client.extend_membership("mem_1", 5, "k-slow")

    assert not result.ok and result.error_class == "retryable"
    assert (result.status_code, result.error_code, result.attempts) == (None, "timeout", 3)
    assert len(whop_sleeps.calls) == 2
    # The server finished the work after the client gave up; the shared key applied it once.
    wait_until_answered(seeded, 3)
    assert period_end(seeded).startswith("2030-01-15T")
    assert sorted(c.replayed for c in seeded.calls_to("POST", EXTEND)) == [False, True, True]


def test_timeout_then_success_applies_the_extension_once(seeded: FakeWhop,
                                                         whop_sleeps: RecordingSleeper) -> None:
    seeded.inject("POST", EXTEND, "slow", times=1, delay_s=0.8)
    with WhopClient(api_key=seeded.api_key, base_url=seeded.base_url, sleep=whop_sleeps,
                    read_timeout_s=0.3) as client:
        result = client.extend_membership("mem_1", 5, "k-slow-once")

    assert result.ok and result.attempts == 2
    wait_until_answered(seeded, 2)
    assert period_end(seeded).startswith("2030-01-15T")


def test_dropped_connections_are_retryable(seeded: FakeWhop, whop_client: WhopClient,
                                           whop_sleeps: RecordingSleeper) -> None:
    seeded.inject("POST", EXTEND, "drop", times=None)

    result = whop_client.extend_membership("mem_1", 1, "k-drop")

    assert not result.ok and result.error_class == "retryable"
    assert (result.status_code, result.error_code, result.attempts) == (None, "connection", 3)
    assert len(whop_sleeps.calls) == 2
    assert period_end(seeded).startswith("2030-01-10T")


def test_lost_response_is_retried_without_a_second_extension(seeded: FakeWhop,
                                                             whop_client: WhopClient) -> None:
    seeded.inject("POST", EXTEND, "drop_after")

    result = whop_client.extend_membership("mem_1", 4, "k-lost")

    assert result.ok and result.attempts == 2
    assert period_end(seeded).startswith("2030-01-14T")
    assert [c.replayed for c in seeded.calls_to("POST", EXTEND)] == [False, True]


def test_connection_refused_is_retryable(whop_sleeps: RecordingSleeper) -> None:
    with socket.socket() as bound_not_listening:  # the kernel refuses connections to it
        bound_not_listening.bind(("127.0.0.1", 0))
        base_url = f"http://127.0.0.1:{bound_not_listening.getsockname()[1]}/api/v1"
        with WhopClient(api_key="k", base_url=base_url, sleep=whop_sleeps, connect_timeout_s=0.5) as client:
            result = client.send_push("exp_1", "user_1", "t", "c", "k-refused")
            with pytest.raises(WhopRetryableError) as caught:
                client.find_app_experience("biz_1", "app_1")

    assert not result.ok and result.error_code == "connection" and result.attempts == 3
    assert caught.value.status is None and caught.value.error_code == "connection"


# ---- idempotency -------------------------------------------------------------------------------


def test_same_key_twice_extends_once(seeded: FakeWhop, whop_client: WhopClient) -> None:
    first = whop_client.extend_membership("mem_1", 7, "case-9:incentive")
    second = whop_client.extend_membership("mem_1", 7, "case-9:incentive")

    assert first.ok and second.ok and first.data == second.data
    assert period_end(seeded).startswith("2030-01-17T")
    assert [c.replayed for c in seeded.calls_to("POST", EXTEND)] == [False, True]


def test_same_key_for_a_different_request_is_rejected(seeded: FakeWhop, whop_client: WhopClient) -> None:
    assert whop_client.extend_membership("mem_1", 1, "k-reuse").ok

    result = whop_client.extend_membership("mem_1", 2, "k-reuse")

    assert not result.ok and result.error_class == "permanent" and result.error_code == "http_422"
    assert period_end(seeded).startswith("2030-01-11T")


def test_idempotency_keys_are_checked_and_derived_within_255_chars(whop_client: WhopClient) -> None:
    for bad in ["", "x" * 256, "naïve", "line\nbreak"]:
        with pytest.raises(ValueError):
            whop_client.extend_membership("mem_1", 1, bad)
    long_key = "k" * 255
    derived = derive_idempotency_key(long_key, "dm_channel")
    assert len(derived) <= 255 and derived != derive_idempotency_key(long_key, "message")
    assert derive_idempotency_key("short", "message") == "short:message"


# ---- secrecy -----------------------------------------------------------------------------------


def test_api_key_never_appears_in_results_errors_or_logs(seeded: FakeWhop, whop_client: WhopClient,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = seeded.api_key
    seeded.inject("POST", EXTEND, "503", times=None)
    seeded.inject("GET", r"/memberships/mem_1", "503", times=None)
    texts = [repr(whop_client), str(whop_client)]
    texts += [repr(whop_client.extend_membership("mem_1", 1, "k1")),
              str(whop_client.send_push("exp_x", "user_1", "t", "c", "k2")),
              whop_client.send_dm("user_1", "biz_1", "hi", "k3").model_dump_json()]
    for call in (lambda: whop_client.retrieve_membership("mem_1"),
                 lambda: whop_client.retrieve_membership("mem_missing")):
        with pytest.raises(WhopError) as caught:
            call()
        texts += [str(caught.value), repr(caught.value), repr(vars(caught.value))]
    with WhopClient(api_key="sk_do_not_leak_1234", base_url=seeded.base_url, sleep=lambda _s: None) as bad:
        texts += [repr(bad), repr(bad.retry_payment("pay_1", "k4"))]
        with pytest.raises(WhopPermanentError) as caught_401:
            bad.check_access("user_1", "biz_1")
        texts += [str(caught_401.value), repr(vars(caught_401.value))]
    texts += [caplog.text, repr([vars(record) for record in caplog.records])]

    assert "whop call retrying" in caplog.text  # the retries were logged ...
    for text in texts:
        assert secret not in text and "sk_do_not_leak_1234" not in text  # ... without the key


# ---- the SDK is not allowed to retry on its own ------------------------------------------------


def test_sdk_does_not_retry_409_and_odd_bodies_still_parse(whop_sleeps: RecordingSleeper) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/cancel"):
            return httpx.Response(409, json={"error": {"type": "conflict", "message": "busy"}})
        # A body the SDK's strict model rejects (no account/product/...): still usable.
        return httpx.Response(200, json={"id": "mem_9", "status": "active", "company_id": "biz_9",
                                         "user": {"id": "user_9"}, "renewal_price": {
                                             "amount": "1000", "currency": "JPY", "decimals": 0}})

    transport_client = httpx.Client(transport=httpx.MockTransport(answer))
    client = WhopClient(api_key="k", base_url="https://whop.invalid/api/v1", sleep=whop_sleeps,
                        httpx_client=transport_client)
    cancelled = client.cancel_membership("mem_9", True, "k-409")
    membership = client.retrieve_membership("mem_9")
    transport_client.close()

    assert not cancelled.ok and cancelled.error_code == "http_409" and cancelled.error_class == "permanent"
    assert cancelled.attempts == 1 and len(seen) == 2 and whop_sleeps.calls == []
    assert (membership.company_id, membership.user_id) == ("biz_9", "user_9")
    assert (membership.renewal_amount_minor, membership.renewal_currency) == (1000, "jpy")


def test_push_that_whop_did_not_queue_is_a_permanent_failure(whop_sleeps: RecordingSleeper) -> None:
    transport = httpx.MockTransport(lambda _request: httpx.Response(200, json={"success": False}))
    with httpx.Client(transport=transport) as http:
        client = WhopClient(api_key="k", base_url="https://whop.invalid/api/v1", sleep=whop_sleeps,
                            httpx_client=http)
        result = client.send_push("exp_1", "user_1", "t", "c", "k")

    assert not result.ok and result.error_class == "permanent" and result.error_code == "not_sent"
    assert result.status_code == 200 and whop_sleeps.calls == []


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0


# ---- the fake behaves like Whop ------------------------------------------------------------


def bad_requests(fake: FakeWhop) -> list[tuple[str, str, Any, int]]:
    return [
        ("POST", "/memberships/mem_1/extend", {}, 400),
        ("POST", "/memberships/mem_1/extend", {"days": "3"}, 400),
        ("POST", "/memberships/mem_1/extend", {"days": True}, 400),
        ("POST", "/memberships/mem_1/extend", {"days": 1.5}, 400),
        ("POST", "/memberships/mem_1/extend", {"days": 0}, 400),
        ("POST", "/memberships/mem_1/extend", {"days": 1096}, 400),
        ("POST", "/memberships/mem_1/extend", [3], 400),
        ("POST", "/memberships/mem_1/cancel", {"cancel_at_period_end": "yes"}, 400),
        ("POST", "/notifications", {"content": "c", "experience_id": "exp_1"}, 400),
        ("POST", "/notifications", {"title": "t", "experience_id": "exp_1"}, 400),
        ("POST", "/notifications", {"title": "t", "content": "c"}, 400),
        ("POST", "/notifications", {"title": "t", "content": "c", "experience_id": "exp_1",
                                    "account_id": "biz_1"}, 400),
        ("POST", "/notifications", {"title": "t", "content": "c", "experience_id": "exp_1",
                                    "user_ids": "user_1"}, 400),
        ("POST", "/dm_channels", {"with_user_ids": "user_1"}, 400),
        ("POST", "/dm_channels", {"with_user_ids": []}, 400),
        ("POST", "/dm_channels", {"account_id": "biz_1"}, 400),
        ("POST", "/messages", {"content": "hi"}, 400),
        ("POST", "/messages", {"channel_id": "feed_nope", "content": "hi"}, 404),
        ("POST", "/messages", {"channel_id": "feed_nope"}, 400),
        ("GET", "/experiences", None, 400),
        ("GET", "/memberships/mem_missing", None, 404),
        ("POST", "/memberships/mem_missing/extend", {"days": 1}, 404),
        ("POST", "/payments/pay_missing/retry", None, 404),
    ]


def test_fake_rejects_malformed_requests(seeded: FakeWhop) -> None:
    auth = {"Authorization": f"Bearer {seeded.api_key}"}
    with httpx.Client(base_url=seeded.base_url, headers=auth) as http:
        for method, path, body, status in bad_requests(seeded):
            response = http.request(method, path, json=body)
            assert response.status_code == status, (method, path, body)
            error = response.json()["error"]
            assert error["message"] and error["type"]
        not_json = http.post("/memberships/mem_1/extend", content=b"{days:",
                             headers={"content-type": "application/json"})
        assert not_json.status_code == 400
        too_long = http.post("/memberships/mem_1/extend", json={"days": 1},
                             headers={"Idempotency-Key": "k" * 256})
        assert too_long.status_code == 400
    assert period_end(seeded).startswith("2030-01-10T")  # nothing was applied

    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": seeded.api_key}):
        response = httpx.get(f"{seeded.base_url}/memberships/mem_1", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["type"] == "unauthorized"


def test_fake_user_tokens_verify_against_its_jwks(fake_whop: FakeWhop) -> None:
    token = fake_whop.mint_user_token("user_1", fake_whop.app_id)

    official = verify_user_token(token, app_id=fake_whop.app_id, jwks_url=fake_whop.jwks_url)
    assert official.user_id == "user_1" and official.app_id == fake_whop.app_id
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["kid"] == fake_whop.signing_key_id
    (jwk,) = httpx.get(fake_whop.jwks_url).json()["keys"]
    key = jwt.PyJWK.from_dict(jwk).key
    claims = jwt.decode(token, key, algorithms=["ES256"], audience=fake_whop.app_id,
                        issuer="urn:whopcom:exp-proxy")
    assert claims["sub"] == "user_1" and claims["exp"] - claims["iat"] == 300

    expired = fake_whop.mint_user_token("user_1", expires_in=-60)
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(expired, key, algorithms=["ES256"], audience=fake_whop.app_id)
    forged = fake_whop.mint_user_token("user_1", foreign_key=True)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, key, algorithms=["ES256"], audience=fake_whop.app_id)
    assert jwt.get_unverified_header(fake_whop.mint_user_token("u", alg="none"))["alg"] == "none"
    assert jwt.get_unverified_header(fake_whop.mint_user_token("u", alg="HS256"))["alg"] == "HS256"
    no_sub = fake_whop.mint_user_token("u", extra_claims={"sub": None}, kid="")
    assert "sub" not in jwt.decode(no_sub, options={"verify_signature": False})
    assert "kid" not in jwt.get_unverified_header(no_sub)


def test_fake_webhook_signatures_match_whop(fake_whop: FakeWhop) -> None:
    secret = "ws_" + "ab" * 32
    body = json.dumps({"id": "msg_1", "type": "payment.failed", "data": {"id": "pay_1"}}).encode()

    headers = fake_whop.sign_webhook(body, secret, msg_id="msg_1")

    assert headers["webhook-id"] == "msg_1"
    assert unwrap(body, headers=headers, key=secret)["type"] == "payment.failed"
    signed = f"msg_1.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"


def test_fake_admin_api_drives_it_from_another_process(fake_whop: FakeWhop, whop_client: WhopClient) -> None:
    with httpx.Client(base_url=fake_whop.origin) as admin:
        assert admin.post("/_fake/memberships", json={
            "membership_id": "mem_a", "company_id": "biz_a", "user_id": "user_a",
            "current_period_end": "2031-05-01T00:00:00Z"}).status_code == 200
        assert admin.post("/_fake/access", json={"user_id": "user_a", "resource_id": "biz_a",
                                                 "level": "admin"}).status_code == 200
        assert admin.post("/_fake/experiences", json={"company_id": "biz_a",
                                                      "experience_id": "exp_a"}).status_code == 200
        assert admin.post("/_fake/faults", json={"method": "GET", "path_regex": "/memberships/mem_a",
                                                 "kind": "503"}).status_code == 200
        assert admin.post("/_fake/faults", json={"path_regex": "/x", "kind": "nope"}).status_code == 400

        assert whop_client.retrieve_membership("mem_a").current_period_end == datetime(2031, 5, 1, tzinfo=UTC)
        assert whop_client.check_access("user_a", "biz_a") == "admin"
        assert whop_client.find_app_experience("biz_a", fake_whop.app_id) == "exp_a"

        calls = admin.get("/_fake/calls").json()["calls"]
        assert [(c["method"], c["api_path"], c["status"]) for c in calls][:2] == [
            ("GET", "/memberships/mem_a", 503), ("GET", "/memberships/mem_a", 200)]
        token = admin.post("/_fake/token", json={"user_id": "user_a"}).json()["token"]
        verified = verify_user_token(token, app_id=fake_whop.app_id, jwks_url=fake_whop.jwks_url)
        assert verified.user_id == "user_a"
        signed = admin.post("/_fake/sign", json={"body": {"type": "membership.activated"}}).json()
        assert unwrap(signed["body"], headers=signed["headers"], key=fake_whop.webhook_secret)
        assert admin.get("/_fake/manage/mem_a").status_code == 200
        assert admin.get("/_fake/state").json()["memberships"][0]["id"] == "mem_a"
        assert admin.post("/_fake/reset").status_code == 200
    assert fake_whop.calls == [] and fake_whop.memberships == {}


def test_get_whop_builds_the_adapter_from_settings(whop_env: FakeWhop) -> None:
    reset_whop()
    whop_env.set_access("user_1", "biz_1", "customer")

    port = get_whop()

    assert isinstance(port, WhopClient) and port is get_whop()
    assert port.base_url == whop_env.base_url
    assert port.check_access("user_1", "biz_1") == "customer"
    reset_whop()
    assert get_whop() is not port


def test_fake_runs_as_a_cli() -> None:
    process = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "fake_whop.py"), "--port", "0",
                                "--api-key", "cli_key"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert process.stdout is not None
        banner = json.loads(process.stdout.readline())
        keys = httpx.get(banner["jwks_url"]).json()["keys"]
        assert keys and keys[0]["crv"] == "P-256"
        unauthorized = httpx.get(f"{banner['base_url']}/memberships/mem_1")
        assert unauthorized.status_code == 401
        assert httpx.get(f"{banner['base_url']}/memberships/mem_1",
                         headers={"Authorization": "Bearer cli_key"}).status_code == 404
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
