"""Whop webhook verification and normalisation (pure: no database, no network)."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from chalicelib.models import EventType, WhopEvent
from chalicelib.webhook_signature import WebhookVerificationFailed, verify
from chalicelib.webhook_text import event_from_payload, minimal_payload
from chalicelib.webhooks import MalformedWebhook, normalise, parse_time

SECRET = "ws_" + "3f" * 32
MSG_ID = "msg_2pQeXnq7Yb1vZ9rT0cL4kW8aHs"
RECEIVED = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)  # after every fixture's own time
PII = ("buyer@example.com", "Jane", "jane", "aa@aaa.com", "stripetestt", "+15555550123")


# --- signing helpers ----------------------------------------------------------------------------


def library_sign(body: bytes, msg_id: str, at: datetime, secret: str = SECRET) -> str:
    """An independent signer: the standardwebhooks library, keyed the way Whop keys it."""
    return Webhook(base64.b64encode(secret.encode()).decode()).sign(msg_id, at, body.decode())


def hand_sign(body: bytes, msg_id: str, ts: str, secret: str = SECRET) -> str:
    """HMAC-SHA256 over the literal bytes of the ws_ secret, as Whop's backend does."""
    mac = hmac.new(secret.encode(), f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(body: bytes, at: datetime, msg_id: str = MSG_ID) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": library_sign(body, msg_id, at)}


def real_now() -> datetime:
    # The library also checks the timestamp against the real clock, so passing cases use it.
    return datetime.now(UTC).replace(microsecond=0)


BODY = json.dumps({"id": MSG_ID, "type": "payment.failed", "data": {}}).encode()


# --- verification -------------------------------------------------------------------------------


def test_library_signed_vector_verifies_and_returns_the_webhook_id() -> None:
    now = real_now()
    assert verify(BODY, signed_headers(BODY, now), SECRET, now) == MSG_ID


def test_hand_made_hmac_over_literal_secret_verifies() -> None:
    now = real_now()
    ts = str(int(now.timestamp()))
    headers = {"webhook-id": MSG_ID, "webhook-timestamp": ts,
               "webhook-signature": hand_sign(BODY, MSG_ID, ts)}
    assert verify(BODY, headers, SECRET, now) == MSG_ID


def test_hand_signature_equals_library_signature() -> None:
    at = datetime(2024, 9, 29, 10, 40, tzinfo=UTC)
    assert hand_sign(BODY, MSG_ID, str(int(at.timestamp()))) == library_sign(BODY, MSG_ID, at)


def test_header_names_are_case_insensitive() -> None:
    now = real_now()
    headers = {k.title(): v for k, v in signed_headers(BODY, now).items()}
    headers["WEBHOOK-ID"] = headers.pop("Webhook-Id")
    assert verify(BODY, headers, SECRET, now) == MSG_ID


def reason(body: bytes, headers: dict[str, str], now: datetime, secret: str = SECRET) -> str:
    with pytest.raises(WebhookVerificationFailed) as info:
        verify(body, headers, secret, now)
    return info.value.reason


def test_tampered_body_is_rejected() -> None:
    now = real_now()
    headers = signed_headers(BODY, now)
    assert reason(BODY.replace(b"failed", b"succeeded"), headers, now) == "bad_signature"


def test_wrong_secret_is_rejected() -> None:
    now = real_now()
    assert reason(BODY, signed_headers(BODY, now), now, secret="ws_" + "00" * 32) == "bad_signature"


def test_secret_must_not_be_base64_decoded() -> None:
    # Signing with the library keyed by the raw secret (the usual whsec_ mistake) must not verify.
    now = real_now()
    wrong = Webhook(base64.b64encode(b"\x00" * 8).decode()).sign(MSG_ID, now, BODY.decode())
    headers = {**signed_headers(BODY, now), "webhook-signature": wrong}
    assert reason(BODY, headers, now) == "bad_signature"


@pytest.mark.parametrize("offset", [timedelta(minutes=-6), timedelta(minutes=6)])
def test_timestamps_more_than_five_minutes_off_are_stale(offset: timedelta) -> None:
    now = real_now()
    assert reason(BODY, signed_headers(BODY, now + offset), now) == "stale_timestamp"


def test_injected_now_is_what_the_timestamp_is_checked_against() -> None:
    signed_at = real_now()
    headers = signed_headers(BODY, signed_at)
    assert reason(BODY, headers, signed_at + timedelta(minutes=6)) == "stale_timestamp"
    assert verify(BODY, headers, SECRET, signed_at + timedelta(minutes=4)) == MSG_ID


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_each_missing_header_is_rejected(missing: str) -> None:
    now = real_now()
    headers = signed_headers(BODY, now)
    del headers[missing]
    assert reason(BODY, headers, now) == "missing_headers"
    assert reason(BODY, {**headers, missing: ""}, now) == "missing_headers"


@pytest.mark.parametrize("ts", ["abc", "12.5", "-5", "1e9", "99999999999999999999"])
def test_non_numeric_timestamp_is_bad(ts: str) -> None:
    now = real_now()
    headers = {**signed_headers(BODY, now), "webhook-timestamp": ts}
    assert reason(BODY, headers, now) == "bad_timestamp"


def test_any_valid_signature_among_several_passes() -> None:
    now = real_now()
    good = signed_headers(BODY, now)["webhook-signature"]
    other = library_sign(BODY, MSG_ID, now, secret="ws_rotated_old_secret")
    for header in (f"{other} {good}", f"{good} {other}", f"v1,garbage!! nocomma {good}",
                   f"v2,{good[3:]} {good}", f"{good}  {other}", f"v1,a,b {good}"):
        assert verify(BODY, {**signed_headers(BODY, now), "webhook-signature": header}, SECRET, now) == MSG_ID


@pytest.mark.parametrize("garbage", ["nocomma", "v1,", "v1,***", "v1,abc", "v1,a,b", ",", "v1,AAAA====",
                                     "v2,AAAA", "v1,AAAA v1,BBBB", " ", "v1,\u00e9\u00e9"])
def test_garbage_signatures_are_bad_signature(garbage: str) -> None:
    now = real_now()
    headers = {**signed_headers(BODY, now), "webhook-signature": garbage}
    assert reason(BODY, headers, now) == "bad_signature"


@given(st.text(max_size=80))
def test_arbitrary_signature_headers_only_ever_fail_verification(garbage: str) -> None:
    now = real_now()
    with pytest.raises(WebhookVerificationFailed):
        verify(BODY, {**signed_headers(BODY, now), "webhook-signature": garbage}, SECRET, now)


def test_non_utf8_body_is_bad_signature() -> None:
    now = real_now()
    body = b"\xff\xfe{\"id\": 1}"
    ts = str(int(now.timestamp()))
    headers = {"webhook-id": MSG_ID, "webhook-timestamp": ts,
               "webhook-signature": hand_sign(body, MSG_ID, ts)}
    assert reason(body, headers, now) == "bad_signature"


def test_empty_secret_is_a_configuration_error() -> None:
    now = real_now()
    with pytest.raises(ValueError, match="secret"):
        verify(BODY, signed_headers(BODY, now), "", now)


# --- payloads (whop-api.md §1.5, plus the dated and membership shapes of §1.3/1.4) --------------


V1_LEGACY_FAILED: dict[str, Any] = {
    "id": MSG_ID, "api_version": "v1", "api_version_date": None,
    "timestamp": "2025-01-01T00:00:05.000Z", "type": "payment.failed", "company_id": "biz_xxxxxxxxxxxxxx",
    "data": {
        "id": "pay_xxxxxxxxxxxxxx", "status": "open", "substatus": "past_due",
        "billing_reason": "subscription_cycle", "currency": "usd", "subtotal": 19.99, "total": 19.99,
        "usd_total": 19.99, "payments_failed": 1, "failure_message": "Your card has insufficient funds.",
        "decline_code": "insufficient_funds", "recovery_url": "https://whop.com/pay/recover/pay_x",
        "retryable": True, "voidable": False, "refundable": False,
        "created_at": "2024-12-01T00:00:00.000Z", "paid_at": None,
        "last_payment_attempt": "2025-01-01T00:00:00.000Z", "next_payment_attempt": None,
        "card_brand": "visa", "card_last4": "4242",
        "membership": {"id": "mem_xxxxxxxxxxxxxx", "status": "past_due"},
        "member": {"id": "mber_xxxxxxxxxxxxx", "phone": "+15555550123"},
        "user": {"id": "user_xxxxxxxxxxxxx", "email": "buyer@example.com", "name": "Jane",
                 "username": "jane"},
        "company": {"id": "biz_xxxxxxxxxxxxxx", "route": "acme", "title": "Acme"},
        "product": {"id": "prod_xxxxxxxxxxxxx", "route": "pro", "title": "Pro"},
        "plan": {"id": "plan_xxxxxxxxxxxxx"},
    },
}

V1_DATED_FAILED: dict[str, Any] = {
    "id": MSG_ID, "api_version": "v1", "api_version_date": "2026-08-14",
    "timestamp": "2026-09-01T10:00:05Z", "type": "payment.failed", "account_id": "biz_dated000001",
    "data": {
        "id": "pay_dated000001", "account_id": "biz_dated000001", "membership_id": "mem_dated000001",
        "member_id": "mber_dated00001", "plan_id": "plan_dated00001", "product_id": "prod_dated00001",
        "user": {"id": "user_dated00001", "name": "Jane", "username": "jane", "profile_picture": None},
        "customer_email": "buyer@example.com", "customer_phone": "+15555550123",
        "last_payment_attempt_at": "2026-09-01T10:00:00+02:00", "next_payment_attempt_at": None,
        "created_at": "2026-08-01T10:00:00Z", "payments_failed": 2,
        "failure_message": "The card was declined.", "decline_code": "generic_decline",
        "recovery_url": "https://whop.com/pay/recover/pay_dated", "retryable": True,
        "total": {"amount": "10.00", "currency": "usd", "decimals": 2, "display_decimals": 2},
        "subtotal": {"amount": "12.00", "currency": "usd", "decimals": 2, "display_decimals": 2},
    },
}

V5_FAILED: dict[str, Any] = {
    "action": "payment.failed", "api_version": "v5", "company": "biz_v5company01",
    "data": {
        "id": "pay_v5payment001", "membership_id": "mem_v5member0001", "product_id": "prod_v5",
        "user_id": "user_v5user00001", "plan_id": "plan_v5", "company_id": "biz_v5company01",
        "created_at": 1735689000, "paid_at": None, "last_payment_attempt": 1735689600,
        "next_payment_attempt": None, "status": "open", "subtotal": 25.0, "final_amount": 24.5,
        "amount_after_fees": 22.0, "currency": "eur", "refunded_amount": 0, "payments_failed": 1,
        "card_brand": "visa", "card_last_4": "4242",
    },
}

V2_FAILED: dict[str, Any] = {
    "action": "payment.failed",
    "body": {
        "id": "pay_cJ5C52xzGQftKH", "membership": "mem_vi6Xw8ZDO8rjjR",
        "product": {"id": "pass_0SdhdxmiNhQZb", "name": "ResellerUnity Monthly Membership"},
        "plan": {"id": "plan_ACoSACuzLHnrE", "plan_type": "renewal", "billing_period": 30,
                 "renewal_price": "19.99", "base_currency": "usd"},
        "user": {"id": "user_T1h3xycVulUVN", "username": "stripetestt", "email": "aa@aaa.com"},
        "page_id": "biz_v2page000001",
        "final_amount": 0, "subtotal": 19, "currency": "usd", "last4": "1006", "payments_failed": 4,
        "payment_processor": "stripe", "refunded_amount": 0, "status": "open", "created_at": 1642558479,
        "paid_at": None, "last_payment_attempt": 1642558479, "next_payment_attempt": None,
    },
}

V1_SUCCEEDED: dict[str, Any] = {
    "id": MSG_ID, "api_version": "v1", "api_version_date": None,
    "timestamp": "2025-01-05T09:00:01.000Z", "type": "payment.succeeded", "company_id": "biz_xxxxxxxxxxxxxx",
    "data": {
        "id": "pay_xxxxxxxxxxxxxx", "status": "paid", "substatus": "succeeded", "currency": "usd",
        "total": 19.99, "subtotal": 19.99, "created_at": "2024-12-01T00:00:00.000Z",
        "paid_at": "2025-01-05T09:00:00.000Z", "last_payment_attempt": "2025-01-05T09:00:00.000Z",
        "membership": {"id": "mem_xxxxxxxxxxxxxx", "status": "active"},
        "user": {"id": "user_xxxxxxxxxxxxx", "email": "buyer@example.com", "name": "Jane",
                 "username": "jane"},
    },
}

V1_MEMBERSHIP_DEACTIVATED: dict[str, Any] = {
    "id": MSG_ID, "api_version": "v1", "api_version_date": None,
    "timestamp": "2025-01-06T00:00:00.000Z", "type": "membership.deactivated",
    "company_id": "biz_xxxxxxxxxxxxxx",
    "data": {
        "id": "mem_xxxxxxxxxxxxxx", "status": "canceled", "cancel_at_period_end": False,
        "canceled_at": "2025-01-05T23:59:00.000Z", "cancellation_reason": "too_expensive",
        "cancel_option": "now", "manage_url": "https://whop.com/orders/mem_xxxxxxxxxxxxxx/manage",
        "created_at": "2024-06-01T00:00:00.000Z",
        "updated_at": "2025-01-05T23:59:00.000Z", "currency": "usd",
        "company": {"id": "biz_xxxxxxxxxxxxxx", "title": "Acme"}, "member": {"id": "mber_xxxxxxxxxxxxx"},
        "user": {"id": "user_xxxxxxxxxxxxx", "username": "jane", "name": "Jane",
                 "email": "buyer@example.com"},
    },
}


def norm(payload: dict[str, Any], webhook_id: str = MSG_ID) -> WhopEvent:
    event = normalise(json.dumps(payload).encode(), webhook_id, RECEIVED)
    assert event is not None
    return event


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_v1_legacy_payment_failed() -> None:
    event = norm(V1_LEGACY_FAILED)
    assert event.type is EventType.PAYMENT_FAILED
    assert (event.company_id, event.membership_id, event.user_id, event.payment_id) == (
        "biz_xxxxxxxxxxxxxx", "mem_xxxxxxxxxxxxxx", "user_xxxxxxxxxxxxx", "pay_xxxxxxxxxxxxxx")
    assert (event.amount_minor, event.currency) == (1999, "usd")
    assert event.decline_code == "insufficient_funds"
    assert event.failure_message == "Your card has insufficient funds."
    assert event.recovery_url == "https://whop.com/pay/recover/pay_x"
    assert event.occurred_at == utc("2025-01-01T00:00:00+00:00")  # last_payment_attempt, not created_at
    assert not event.occurred_at_inferred
    assert event.received_at == RECEIVED and event.api_version == "v1"


def test_v1_dated_payment_failed() -> None:
    event = norm(V1_DATED_FAILED)
    assert (event.company_id, event.membership_id, event.user_id, event.payment_id) == (
        "biz_dated000001", "mem_dated000001", "user_dated00001", "pay_dated000001")
    assert (event.amount_minor, event.currency) == (1000, "usd")  # Money "10.00", total before subtotal
    assert event.occurred_at == datetime(2026, 9, 1, 8, 0, tzinfo=UTC)  # +02:00 offset read correctly
    assert event.occurred_at.tzinfo == UTC


def test_v1_dated_with_flat_user_id_and_account_only_in_data() -> None:
    payload = copy.deepcopy(V1_DATED_FAILED)
    del payload["account_id"]
    payload["data"]["user_id"] = payload["data"].pop("user")["id"]
    event = norm(payload)
    assert (event.company_id, event.user_id) == ("biz_dated000001", "user_dated00001")


def test_v5_payment_failed() -> None:
    event = norm(V5_FAILED)
    assert (event.company_id, event.membership_id, event.user_id, event.payment_id) == (
        "biz_v5company01", "mem_v5member0001", "user_v5user00001", "pay_v5payment001")
    assert (event.amount_minor, event.currency) == (2450, "eur")
    assert event.occurred_at == datetime.fromtimestamp(1735689600, UTC)
    assert event.api_version == "v5" and event.failure_message is None


def test_v5_company_only_in_data() -> None:
    payload = copy.deepcopy(V5_FAILED)
    payload["company"] = None
    assert norm(payload).company_id == "biz_v5company01"


def test_v2_payment_failed_with_string_membership() -> None:
    event = norm(V2_FAILED)
    assert (event.company_id, event.membership_id, event.user_id) == (
        "biz_v2page000001", "mem_vi6Xw8ZDO8rjjR", "user_T1h3xycVulUVN")
    assert (event.amount_minor, event.currency) == (1900, "usd")  # final_amount 0 is not informative
    assert event.occurred_at == datetime.fromtimestamp(1642558479, UTC)
    assert event.api_version == "v2"


def test_succeeded_uses_paid_at_never_created_at() -> None:
    event = norm(V1_SUCCEEDED)
    assert event.type is EventType.PAYMENT_SUCCEEDED
    assert event.occurred_at == utc("2025-01-05T09:00:00+00:00")
    payload = copy.deepcopy(V1_SUCCEEDED)
    payload["data"]["paid_at"] = None
    event = norm(payload)  # falls back to the envelope timestamp, not the reused created_at
    assert event.occurred_at == utc("2025-01-05T09:00:01+00:00") and not event.occurred_at_inferred
    del payload["timestamp"]
    event = norm(payload)
    assert event.occurred_at == RECEIVED and event.occurred_at_inferred


def test_failed_falls_back_to_created_at_then_timestamp_then_received() -> None:
    payload = copy.deepcopy(V1_LEGACY_FAILED)
    payload["data"]["last_payment_attempt"] = "not a time"
    assert norm(payload).occurred_at == utc("2024-12-01T00:00:00+00:00")
    del payload["data"]["created_at"]
    assert norm(payload).occurred_at == utc("2025-01-01T00:00:05+00:00")
    payload["timestamp"] = None
    event = norm(payload)
    assert event.occurred_at == RECEIVED and event.occurred_at_inferred


def test_membership_events_use_the_envelope_timestamp() -> None:
    event = norm(V1_MEMBERSHIP_DEACTIVATED)
    assert event.type is EventType.MEMBERSHIP_DEACTIVATED
    assert event.membership_id == "mem_xxxxxxxxxxxxxx" and event.payment_id is None
    assert event.occurred_at == utc("2025-01-06T00:00:00+00:00")  # not canceled_at / updated_at
    assert event.manage_url == "https://whop.com/orders/mem_xxxxxxxxxxxxxx/manage"
    assert event.deactivation_cause == "member_cancelled"
    assert event.cancel_at_period_end is False


def test_v5_membership_without_envelope_timestamp_is_inferred() -> None:
    payload = {"action": "membership.went_valid", "api_version": "v5",
               "data": {"id": "mem_v5member0001", "page_id": "biz_v5page", "user_id": "user_v5",
                        "created_at": 1735689000, "status": "active", "valid": True,
                        "manage_url": "https://whop.com/orders/mem_v5member0001/manage"}}
    event = norm(payload)
    assert event.type is EventType.MEMBERSHIP_ACTIVATED
    assert (event.company_id, event.membership_id) == ("biz_v5page", "mem_v5member0001")
    assert event.occurred_at == RECEIVED and event.occurred_at_inferred


@pytest.mark.parametrize(("status", "extra", "cause"), [
    ("canceled", {"canceled_at": "2025-01-05T00:00:00Z"}, "member_cancelled"),
    ("canceled", {"cancellation_reason": "switching_product"}, "member_cancelled"),
    ("canceled", {"cancel_option": "at_period_end"}, "member_cancelled"),
    ("expired", {"cancel_at_period_end": True}, "member_cancelled"),
    ("past_due", {}, "payment_failed"),
    ("unresolved", {}, "payment_failed"),
    ("expired", {}, "payment_failed"),
    ("canceled", {"canceled_at": "2025-01-05T00:00:00Z", "cancellation_reason": "payment_failed"},
     "payment_failed"),
    ("canceled", {}, "unknown"),
    ("completed", {}, "unknown"),
])
def test_deactivation_cause(status: str, extra: dict[str, Any], cause: str) -> None:
    data = {"id": "mem_1", "status": status, "cancel_at_period_end": False, **extra}
    payload = {"id": MSG_ID, "type": "membership.deactivated", "company_id": "biz_1",
               "timestamp": "2025-01-06T00:00:00Z", "data": data}
    assert norm(payload).deactivation_cause == cause


def test_cancel_at_period_end_changed() -> None:
    payload = {"id": MSG_ID, "type": "membership_cancel_at_period_end_changed", "company_id": "biz_1",
               "timestamp": "2025-01-06T00:00:00Z",
               "data": {"id": "mem_1", "status": "canceling", "cancel_at_period_end": True}}
    event = norm(payload)
    assert event.type is EventType.MEMBERSHIP_CANCEL_AT_PERIOD_END_CHANGED
    assert event.cancel_at_period_end is True and event.deactivation_cause is None


@pytest.mark.parametrize(("raw", "expected"), [
    ("payment_failed", EventType.PAYMENT_FAILED),
    ("app_payment.failed", EventType.PAYMENT_FAILED),
    ("app_payment_failed", EventType.PAYMENT_FAILED),
    ("payment_succeeded", EventType.PAYMENT_SUCCEEDED),
    ("app_payment.succeeded", EventType.PAYMENT_SUCCEEDED),
    ("payment_requires_action", EventType.PAYMENT_REQUIRES_ACTION),
    ("payment.requires_action", EventType.PAYMENT_REQUIRES_ACTION),
    ("membership_went_valid", EventType.MEMBERSHIP_ACTIVATED),
    ("membership.went_valid", EventType.MEMBERSHIP_ACTIVATED),
    ("membership_activated", EventType.MEMBERSHIP_ACTIVATED),
    ("membership_went_invalid", EventType.MEMBERSHIP_DEACTIVATED),
    ("membership.went_invalid", EventType.MEMBERSHIP_DEACTIVATED),
    ("membership_deactivated", EventType.MEMBERSHIP_DEACTIVATED),
    ("membership_cancel_at_period_end_changed", EventType.MEMBERSHIP_CANCEL_AT_PERIOD_END_CHANGED),
])
def test_legacy_type_names(raw: str, expected: EventType) -> None:
    payload = {"action": raw, "api_version": "v5",
               "data": {"id": "mem_1" if raw.startswith("membership") else "pay_1", "membership_id": "mem_1",
                        "company_id": "biz_1"}}
    event = norm(payload)
    assert event.type is expected and event.membership_id == "mem_1"


@pytest.mark.parametrize("kind", ["payment.pending", "refund.created", "membership.updated",
                                  "course_lesson_interaction.completed", "invoice.paid"])
def test_unhandled_types_are_none(kind: str) -> None:
    payload = {"id": MSG_ID, "api_version": "v1", "type": kind, "company_id": "biz_1", "data": {"id": "x"}}
    assert normalise(json.dumps(payload).encode(), MSG_ID, RECEIVED) is None


def malformed(body: bytes | dict[str, Any], webhook_id: str = MSG_ID) -> str:
    with pytest.raises(MalformedWebhook) as info:
        normalise(body, webhook_id, RECEIVED)
    message = str(info.value)
    for secret_value in (*PII, "biz_", "mem_", "pay_", "user_", "19.99", "SECRETVALUE"):
        assert secret_value not in message
    return message


def without(payload: dict[str, Any], *path: str) -> dict[str, Any]:
    copied = copy.deepcopy(payload)
    node = copied
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return copied


def test_malformed_bodies() -> None:
    assert "body" in malformed(b"{not json SECRETVALUE")
    assert "body" in malformed(b"[1, 2, 3]")
    assert "body" in malformed(b"\xff\xfe")
    assert "body" in malformed(b'"buyer@example.com"')
    assert "type" in malformed(json.dumps({"data": {"user": {"email": "buyer@example.com"}}}).encode())
    assert "data" in malformed(json.dumps({"type": "payment.failed", "company_id": "biz_1",
                                           "data": "SECRETVALUE"}).encode())


def test_malformed_missing_company_or_membership() -> None:
    no_company = without(without(V1_LEGACY_FAILED, "company_id"), "data", "company")
    assert "company_id" in malformed(json.dumps(no_company).encode())
    no_membership = without(V1_LEGACY_FAILED, "data", "membership")
    assert "membership_id" in malformed(json.dumps(no_membership).encode())
    assert "membership_id" in malformed(json.dumps(without(V5_FAILED, "data", "membership_id")).encode())


def test_envelope_id_must_match_the_header() -> None:
    assert "id" in malformed(json.dumps(V1_LEGACY_FAILED).encode(), webhook_id="msg_other")
    # Unhandled types too: a mismatch is never silently accepted.
    other = {"id": "msg_a", "type": "refund.created", "data": {}}
    assert "id" in malformed(json.dumps(other).encode(), "msg_b")


def test_invalid_field_values_name_the_field_only() -> None:
    payload = copy.deepcopy(V1_LEGACY_FAILED)
    payload["company_id"] = "biz_" + "SECRETVALUE" * 30  # longer than 255: not an id
    payload["data"]["company"] = None
    assert "company_id" in malformed(json.dumps(payload).encode())
    assert "webhook_id" in malformed(json.dumps(without(V1_LEGACY_FAILED, "id")).encode(), webhook_id="")


def test_mapping_bodies_are_accepted() -> None:
    event = normalise(V1_LEGACY_FAILED, MSG_ID, RECEIVED)
    assert event is not None and event.membership_id == "mem_xxxxxxxxxxxxxx"


@pytest.mark.parametrize(("data", "expected"), [
    ({"total": 19.99, "currency": "usd"}, (1999, "usd")),
    ({"total": 0.1 + 0.2, "currency": "usd"}, (30, "usd")),
    ({"total": 10.005, "currency": "usd"}, (1001, "usd")),  # half up, read as written
    ({"total": "10.00", "currency": "USD"}, (1000, "usd")),
    ({"total": {"amount": "10.00", "currency": "usd", "decimals": 2}}, (1000, "usd")),
    ({"total": {"amount": "1500", "currency": "jpy", "decimals": 0}}, (1500, "jpy")),
    ({"amount": {"amount": "7.5", "currency": "eur", "decimals": 2}}, (750, "eur")),
    ({"final_amount": 500, "currency": "jpy"}, (500, "jpy")),
    ({"total": 12000, "currency": "krw"}, (12000, "krw")),
    ({"total": 1.5, "currency": "kwd"}, (1500, "kwd")),
    ({"final_amount": 0, "subtotal": 0, "currency": "usd"}, (0, "usd")),
    ({"total": -5, "currency": "usd"}, (None, "usd")),
    ({"total": "abc", "currency": "usd"}, (None, "usd")),
    ({"total": "NaN", "currency": "usd"}, (None, "usd")),
    ({"total": True, "currency": "usd"}, (None, "usd")),
    ({"total": 19.99}, (None, None)),
    ({"total": 19.99, "currency": "dollars"}, (None, None)),
])
def test_amounts_in_minor_units(data: dict[str, Any], expected: tuple[int | None, str | None]) -> None:
    payload = {"id": MSG_ID, "type": "payment.failed", "company_id": "biz_1",
               "data": {"id": "pay_1", "membership_id": "mem_1", **data}}
    event = norm(payload)
    assert (event.amount_minor, event.currency) == expected


def test_failure_message_truncated_and_urls_must_be_http() -> None:
    payload = copy.deepcopy(V1_LEGACY_FAILED)
    payload["data"]["failure_message"] = "x" * 900
    payload["data"]["recovery_url"] = "javascript:alert(1)"
    event = norm(payload)
    assert event.failure_message == "x" * 500 and event.recovery_url is None


@pytest.mark.parametrize("payload", [V1_LEGACY_FAILED, V1_DATED_FAILED, V5_FAILED, V2_FAILED, V1_SUCCEEDED,
                                     V1_MEMBERSHIP_DEACTIVATED])
def test_minimal_payload_has_no_pii_and_round_trips(payload: dict[str, Any]) -> None:
    event = norm(payload)
    stored = minimal_payload(event)
    text = json.dumps(stored)
    for value in PII:
        assert value not in text
    for key in ("email", "name", "username", "phone", "card", "last4"):
        assert key not in stored
    assert event_from_payload(json.loads(text)) == event


@pytest.mark.parametrize(("value", "expected"), [
    ("2025-01-01T00:00:00.000Z", datetime(2025, 1, 1, tzinfo=UTC)),
    ("2025-01-01T02:00:00+02:00", datetime(2025, 1, 1, tzinfo=UTC)),
    ("2025-01-01T00:00:00", datetime(2025, 1, 1, tzinfo=UTC)),
    (1735689600, datetime(2025, 1, 1, tzinfo=UTC)),
    (1735689600.0, datetime(2025, 1, 1, tzinfo=UTC)),
    ("1735689600", datetime(2025, 1, 1, tzinfo=UTC)),
    (None, None), ("", None), ("yesterday", None), (True, None), (0, None), (-1, None),
    (1e30, None), ("nan", None), ({"t": 1}, None),
])
def test_parse_time(value: Any, expected: datetime | None) -> None:
    assert parse_time(value) == expected


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.sampled_from(["id", "type", "action", "data", "body", "company_id",
                                                       "membership", "membership_id", "total", "currency",
                                                       "paid_at", "timestamp", "user", "status"]),
                                      children, max_size=5),
                    max_leaves=20))
def test_normalise_only_ever_returns_an_event_none_or_malformed(body: Any) -> None:
    try:
        result = normalise(json.dumps(body).encode(), MSG_ID, RECEIVED)
    except MalformedWebhook:
        return
    assert result is None or isinstance(result, WhopEvent)
