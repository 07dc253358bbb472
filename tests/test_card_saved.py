"""``setup_intent.succeeded`` (issue 18): both payload shapes normalise into one PII-free event;
what cannot be used is refused field by field (and kept as a poison record, never retried); the
case engine never folds it; the fake Whop's smart-retry surface behaves like Whop's."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest

from chalicelib.cases import fold
from chalicelib.db_pool import Database
from chalicelib.ingest import accept_webhook
from chalicelib.models import EventType
from chalicelib.processing import process_webhook
from chalicelib.queue import QueuedWebhook
from chalicelib.tenancy import service_transaction
from chalicelib.webhook_signature import verify
from chalicelib.webhook_text import minimal_payload
from chalicelib.webhooks import MalformedWebhook, normalise
from scripts.fake_whop import FakeWhop
from scripts.whop_payloads import SECRET, card_saved_event, payment_event, sign

AT = datetime(2026, 3, 10, 12, tzinfo=UTC)
RECEIVED = datetime(2026, 3, 10, 12, 0, 5, tzinfo=UTC)


@pytest.mark.parametrize("dated", [False, True], ids=["legacy shape", "dated shape"])
def test_both_shapes_normalise_to_the_member_and_the_method_and_nothing_else(dated: bool) -> None:
    msg_id, body = card_saved_event(company="biz_1", user="user_7", payment_method="payt_abc", at=AT,
                                    dated=dated)
    event = normalise(body, msg_id, RECEIVED)
    assert event is not None and event.type is EventType.SETUP_INTENT_SUCCEEDED
    assert (event.company_id, event.user_id, event.payment_method_id) == ("biz_1", "user_7", "payt_abc")
    assert event.membership_id is None and event.payment_id is None
    assert event.occurred_at == AT and not event.occurred_at_inferred  # the envelope's timestamp
    stored = json.dumps(minimal_payload(event))
    for pii in ("buyer@example.com", "Jane", "jane", "4242", "visa", "sint_"):
        assert pii not in stored


def test_the_underscored_name_is_the_same_event() -> None:
    msg_id, body = card_saved_event(at=AT)
    data = json.loads(body)
    data["type"] = "setup_intent_succeeded"
    event = normalise(json.dumps(data).encode(), msg_id, RECEIVED)
    assert event is not None and event.type is EventType.SETUP_INTENT_SUCCEEDED


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d["data"].pop("member"), "user_id"),
    (lambda d: d["data"].pop("payment_method"), "payment_method_id"),
    (lambda d: d["data"]["payment_method"].update(id="payt_1; DROP TABLE events"), "payment_method_id"),
    (lambda d: d["data"]["payment_method"].update(id="p" * 101), "payment_method_id"),
    (lambda d: d["data"]["payment_method"].update(id=12345), "payment_method_id"),
    (lambda d: (d.pop("company_id"), d["data"].pop("company")), "company_id"),
])
def test_a_card_event_missing_what_rebound_needs_is_refused_naming_the_field(change: Any,
                                                                            field: str) -> None:
    msg_id, body = card_saved_event(at=AT)
    data = json.loads(body)
    change(data)
    with pytest.raises(MalformedWebhook) as caught:
        normalise(json.dumps(data).encode(), msg_id, RECEIVED)
    assert caught.value.field == field and "DROP" not in str(caught.value)


def test_a_nul_in_the_method_id_is_stripped_like_every_id_so_the_event_stays_storable() -> None:
    msg_id, body = card_saved_event(payment_method="payt_\u0000x", at=AT)
    event = normalise(body.replace(b"payt_\\u0000x", b"payt_\\u0000x"), msg_id, RECEIVED)
    assert event is not None and event.payment_method_id == "payt_x"


def test_other_events_are_stored_as_before() -> None:
    msg_id, body = payment_event("payment.failed", at=AT)
    event = normalise(body, msg_id, RECEIVED)
    assert event is not None and "payment_method_id" not in minimal_payload(event)


def test_the_case_engine_never_folds_a_saved_card() -> None:
    f_id, f_body = payment_event("payment.failed", at=AT)
    c_id, c_body = card_saved_event(at=AT)
    events = [e for e in (normalise(f_body, f_id, RECEIVED), normalise(c_body, c_id, RECEIVED)) if e]
    (case,) = fold("biz_alpha", "mem_1", events, AT)
    assert case.failure_ids == (f_id,) and case.status.value == "open"


def test_an_unusable_card_event_is_acknowledged_and_kept_as_a_poison_record(database: Database) -> None:
    msg_id, body = card_saved_event(at=AT)
    data = json.loads(body)
    data["data"].pop("payment_method")
    raw = json.dumps(data).encode()
    sent: list[dict[str, Any]] = []

    class Queue:
        def send(self, webhook_id: str, received_at: datetime, **content: Any) -> None:
            sent.append({"webhook_id": webhook_id, **content})

    queue: Any = Queue()
    answer = accept_webhook(raw, sign(raw, msg_id, SECRET), SECRET, datetime.now(UTC), lambda: queue)
    assert (answer.status_code, answer.outcome) == (200, "ignored_unusable")
    assert sent == [{"webhook_id": msg_id,
                     "unusable": "malformed webhook: payment_method_id missing or invalid"}]
    queued = QueuedWebhook(msg_id, RECEIVED, unusable=sent[0]["unusable"])
    outcome = process_webhook(queued, RECEIVED, database)
    assert outcome.status == "poisoned"
    with service_transaction(database) as tx:
        assert tx.query("SELECT count(*) AS n FROM events")[0]["n"] == 0


# --- the fake Whop's smart-retry surface --------------------------------------------------------------


@pytest.fixture
def whop(fake_whop: FakeWhop) -> FakeWhop:
    fake_whop.add_membership("mem_1", company_id="biz_1", user_id="user_1")
    fake_whop.add_payment("pay_1", company_id="biz_1", membership_id="mem_1", user_id="user_1")
    fake_whop.add_payment_method("payt_new", user_id="user_1", company_id="biz_1")
    return fake_whop


def _call(fake: FakeWhop, method: str, path: str, body: Any = None,
          key: str | None = None) -> tuple[int, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {fake.api_key}"}
    if key:
        headers["Idempotency-Key"] = key
    resp = httpx.request(method, fake.base_url + path, headers=headers,
                         content=json.dumps(body).encode() if body is not None else None)
    return resp.status_code, resp.json()


def test_the_fake_checks_a_patch_like_whop(whop: FakeWhop) -> None:
    assert _call(whop, "PATCH", "/memberships/mem_1", {"payment_method": "payt_new"})[0] == 400
    assert _call(whop, "PATCH", "/memberships/mem_1", [1])[0] == 400
    assert _call(whop, "PATCH", "/memberships/mem_1", {"payment_method_id": 7})[0] == 400
    assert _call(whop, "PATCH", "/memberships/mem_nope", {"payment_method_id": "payt_new"})[0] == 404
    assert _call(whop, "PATCH", "/memberships/mem_1", {"payment_method_id": "payt_nobody"})[0] == 404
    assert whop.payments["pay_1"].charges == []
    status, body = _call(whop, "PATCH", "/memberships/mem_1", {"metadata": {"a": 1}})
    assert status == 200 and body["metadata"] == {"a": 1} and whop.payments["pay_1"].charges == []
    # The same key and body again is a replay; the same key with another body is refused.
    first = _call(whop, "PATCH", "/memberships/mem_1", {"payment_method_id": "payt_new"}, key="k1")
    again = _call(whop, "PATCH", "/memberships/mem_1", {"payment_method_id": "payt_new"}, key="k1")
    other = _call(whop, "PATCH", "/memberships/mem_1", {"metadata": {}}, key="k1")
    assert first == again and first[0] == 200 and other[0] == 422
    assert whop.payments["pay_1"].charges == ["attach:payt_new"]
    assert whop.calls_to("PATCH", "/memberships/mem_1")[-2].replayed


def test_the_fake_retries_a_payment_once_and_refuses_without_the_permission(whop: FakeWhop) -> None:
    whop.deny_permission("payment:manage")
    status, body = _call(whop, "POST", "/payments/pay_1/retry")
    assert status == 403 and "payment:manage" in body["error"]["message"]
    whop.deny_permission("payment:manage", denied=False)
    assert _call(whop, "POST", "/payments/pay_1/retry")[0] == 200
    status, body = _call(whop, "POST", "/payments/pay_1/retry")
    assert status == 400 and body["error"]["message"] == "This payment has already been retried"
    whop.add_payment("pay_2", company_id="biz_1", membership_id="mem_1", user_id="user_1", retryable=False)
    assert _call(whop, "POST", "/payments/pay_2/retry")[0] == 400


class _Target(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[bytes, dict[str, str]]]] = []
    arrived = threading.Event()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).received.append((body, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
        type(self).arrived.set()


@pytest.fixture
def target() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Target)
    _Target.received, _Target.arrived = [], threading.Event()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/webhooks/whop"
    server.shutdown()
    server.server_close()


def test_the_fake_sends_whops_signed_webhook_for_the_outcome(whop: FakeWhop, target: str) -> None:
    whop.webhook_target = target
    whop.add_payment_method("payt_bad", user_id="user_1", company_id="biz_1", outcome="failed")
    _call(whop, "PATCH", "/memberships/mem_1", {"payment_method_id": "payt_bad"})
    (sent,) = whop.deliver_webhooks()
    assert sent.status == 200 and sent.type == "payment.failed"
    body, headers = _Target.received[0]
    assert verify(body, headers, whop.webhook_secret, datetime.now(UTC)) == sent.msg_id
    event = normalise(body, sent.msg_id, datetime.now(UTC))
    assert event is not None and (event.type, event.payment_id, event.membership_id) == (
        EventType.PAYMENT_FAILED, "pay_1", "mem_1")
    assert whop.deliver_webhooks() == []  # each is sent once


def test_the_fake_delivers_in_the_background_when_asked(whop: FakeWhop, target: str) -> None:
    whop.webhook_target, whop.auto_deliver = target, True
    _call(whop, "POST", "/payments/pay_1/retry")
    assert _Target.arrived.wait(10)
    body, _ = _Target.received[0]
    assert json.loads(body)["type"] == "payment.succeeded"
