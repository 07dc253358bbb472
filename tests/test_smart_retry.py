"""Smart retry through the real path (issue 18): a signed webhook into the route → moto SQS → the
consumer → the ledger (Postgres, RLS, the runtime role) → the executor → the fake Whop over HTTP →
the fake's own signed webhook back into the route (through a small HTTP relay to the app) → SQS →
the consumer again.

The consumer's clock is fixed where a test needs simulated time (a payday); the fake Whop's
charges follow the same clock."""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from chalicelib import api as api_module
from chalicelib import claims, config, effects, health, processing, recovery_exec
from chalicelib.effects import default_context, execute_owed
from chalicelib.recovery_policy import attach_key, retry_key
from chalicelib.scheduler import tick
from chalicelib.tenancy import tenant_transaction
from scripts.fake_whop import FakeWhop
from scripts.whop_payloads import card_saved_event, payment_event
from tests.conftest import Owner
from tests.helpers import run_concurrently
from tests.test_pipeline import Pipeline, pipeline  # noqa: F401 - the fixture

ALPHA, BRAVO = "biz_alpha", "biz_bravo"
PATCH = r"/memberships/[^/]+"
RETRY = r"/payments/[^/]+/retry"


class Relay(ThreadingHTTPServer):
    """What stands between the fake Whop and the app: an HTTP endpoint that hands each webhook
    to the app's route (Chalice's test client, as API Gateway would)."""

    daemon_threads = True
    pipeline: Pipeline


class _RelayHandler(BaseHTTPRequestHandler):
    server: Relay

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()
                   if k.lower().startswith(("webhook-", "content-"))}
        resp = self.server.pipeline.client.http.post("/webhooks/whop", body=body, headers=headers)
        self.send_response(resp.status_code)
        self.send_header("Content-Length", "0")
        self.end_headers()


@dataclass
class World:
    p: Pipeline
    owner: Owner
    clock: list[datetime]
    relay: str  # where the fake Whop (and simulate.py) send webhooks

    @property
    def fake(self) -> FakeWhop:
        return self.p.whop

    @property
    def now(self) -> datetime:
        return self.clock[0]

    def member(self, membership: str, user: str, *, company: str = ALPHA, payment: str | None = None,
               **payment_kw: Any) -> str:
        """A membership with an open payment at the fake Whop; returns the payment id."""
        payment = payment or f"pay_{membership}"
        self.fake.add_membership(membership, company_id=company, user_id=user)
        self.fake.add_payment(payment, company_id=company, membership_id=membership, user_id=user,
                              **payment_kw)
        return payment

    def card(self, method: str, user: str, company: str = ALPHA, outcome: str = "paid") -> None:
        self.fake.add_payment_method(method, user_id=user, company_id=company, outcome=outcome)

    def deliver(self, pair: tuple[str, bytes]) -> None:
        resp = self.p.deliver(*pair)
        assert resp.status_code == 200, resp.body

    def fail(self, membership: str, user: str, *, company: str = ALPHA, decline: str = "insufficient_funds",
             at: datetime | None = None, kind: str = "payment.failed") -> None:
        self.deliver(payment_event(kind, company=company, membership=membership, user=user,
                                   at=at or self.now - timedelta(hours=1), payment=f"pay_{membership}",
                                   decline_code=decline, failure_message=None))
        self.drain()

    def save_card(self, user: str, method: str, *, company: str = ALPHA, msg_id: str | None = None,
                  dated: bool = False) -> str:
        msg_id, body = card_saved_event(company=company, user=user, payment_method=method, at=self.now,
                                        msg_id=msg_id, dated=dated)
        self.deliver((msg_id, body))
        self.drain()
        return msg_id

    def drain(self) -> None:
        assert self.p.drain()[1] == 0

    def whop_answers(self) -> None:
        """The fake Whop's webhooks (payment outcomes) into the route, then the consumer."""
        for sent in self.fake.deliver_webhooks():
            assert sent.status == 200, sent
        self.drain()

    def tick(self, at: datetime) -> claims.Stats:
        self.clock[0] = at
        return tick(default_context(), at).effects

    def case(self, membership: str, company: str = ALPHA) -> dict[str, Any]:
        rows = self.p.rows(company, "SELECT * FROM recovery_cases WHERE membership_id = :m", m=membership)
        assert len(rows) == 1, rows
        return rows[0]

    def ledger(self, membership: str, kind: str, company: str = ALPHA) -> list[dict[str, Any]]:
        return self.p.rows(company, "SELECT a.* FROM recovery_actions a"
                                    " JOIN recovery_cases c ON c.id = a.case_id WHERE c.membership_id = :m"
                                    " AND a.kind = :k ORDER BY a.created_at", m=membership, k=kind)

    def api(self, method: str, path: str, company: str = ALPHA, body: bytes = b"") -> Any:
        self.fake.set_access("user_admin", company, "admin")
        headers = {"x-whop-user-token": self.fake.mint_user_token("user_admin"),
                   "content-type": "application/json"}
        url = f"/api/companies/{company}{path}"
        if method == "post":
            return self.p.client.http.post(url, headers=headers, body=body)
        return self.p.client.http.get(url, headers=headers)


@pytest.fixture
def world(pipeline: Pipeline, owner: Owner, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:  # noqa: F811
    relay = Relay(("127.0.0.1", 0), _RelayHandler)
    relay.pipeline = pipeline
    thread = threading.Thread(target=relay.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    origin = f"http://127.0.0.1:{relay.server_address[1]}"
    pipeline.whop.webhook_target = f"{origin}/webhooks/whop"
    clock = [datetime(2026, 3, 10, 12, tzinfo=UTC)]

    class _Clock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return clock[0]

    # The edges' clocks: the consumer's and the creator API's (webhook signatures and user tokens
    # keep the real one). The consumer acts on the database's time (issue 20): here, on the
    # simulated one (tests/test_clock.py covers the database clock and its skew check).
    monkeypatch.setattr(processing, "datetime", _Clock)
    monkeypatch.setattr(processing, "checked_now", lambda *_args, **_kw: clock[0])
    monkeypatch.setattr(api_module, "datetime", _Clock)
    pipeline.whop.clock = lambda: clock[0]
    recovery_exec.clear_paid_cache()
    yield World(pipeline, owner, clock, origin)
    relay.shutdown()
    relay.server_close()
    thread.join(timeout=5)


def calls(fake: FakeWhop, method: str, path: str) -> list[Any]:
    return fake.calls_to(method, path)


def applied(fake: FakeWhop, method: str, path: str) -> list[Any]:
    """Calls Whop acted on: answered 2xx (or acted, then lost the answer), not a replay."""
    return [c for c in fake.calls_to(method, path) if not c.replayed
            and ((c.status is not None and 200 <= c.status < 300) or c.fault == "drop_after")]


# --- a saved card -----------------------------------------------------------------------------------


def test_a_saved_card_recovers_an_open_case_with_exactly_one_attach(world: World) -> None:
    world.member("mem_1", "user_1")
    world.card("payt_new", "user_1")
    world.fail("mem_1", "user_1", decline="expired_card")  # a hard decline: a new card fixes it
    assert world.case("mem_1")["decline_class"] == "card_hard"

    world.save_card("user_1", "payt_new")

    # In the same consumer run (no tick): one PATCH with the payment method and the ledger's key.
    (patch,) = calls(world.fake, "PATCH", PATCH)
    assert patch.path == "/api/v1/memberships/mem_1" and patch.json == {"payment_method_id": "payt_new"}
    assert patch.idempotency_key == attach_key(ALPHA, "mem_1", "payt_new")
    assert world.fake.payments["pay_mem_1"].charges == ["attach:payt_new"]
    (row,) = world.ledger("mem_1", "card_attach")
    assert (row["status"], row["step"]) == ("sent", "card_updated")
    # Whop's payment.succeeded comes back through the route: the case is recovered, by Rebound.
    world.whop_answers()
    case = world.case("mem_1")
    assert case["status"] == "recovered" and case["recovered_by"] == "rebound_retry"
    assert case["retry_reason"] == "card_updated" and case["retried_at"] == world.now
    assert world.fake.deliveries[0].type == "payment.succeeded"

    # What the creator sees: the case, its timeline, the list, the KPIs and the CSV agree.
    detail = json.loads(world.api("get", f"/cases/{case['id']}").body)
    assert (detail["recovered_by"], detail["retry_reason"]) == ("rebound_retry", "card_updated")
    (attach,) = [t for t in detail["timeline"] if t["type"] == "card_attach"]
    assert (attach["status"], attach["actor"], attach["detail"]["step"]) == ("sent", "system", "card_updated")
    assert [t["type"] for t in detail["timeline"] if t["source"] == "event"] == [
        "payment.failed", "payment.succeeded"]
    items = json.loads(world.api("get", "/cases").body)["items"]
    assert items[0]["recovered_by"] == "rebound_retry" and items[0]["retried_at"] is not None
    sources = json.loads(world.api("get", "/kpis?window_days=30").body)["by_recovery_source"]
    assert sources["rebound_retry"] == {"recoveries": 1,
                                        "recovered_revenue": [{"currency": "usd", "amount_minor": 1999}]}
    assert sources["after_click"]["recoveries"] == sources["other"]["recoveries"] == 0
    rows = list(csv.DictReader(io.StringIO(world.api("get", "/cases/export.csv").body.decode())))
    assert [(r["recovered_by"], r["retried_at"][:10]) for r in rows] == [("rebound_retry", "2026-03-10")]


def test_the_same_card_saved_twice_attaches_once(world: World) -> None:
    world.member("mem_1", "user_1")
    world.card("payt_new", "user_1", outcome="failed")  # declined too: the case stays open
    world.fail("mem_1", "user_1")
    first = world.save_card("user_1", "payt_new")
    world.save_card("user_1", "payt_new")  # Whop sent a second setup intent for the same card
    world.deliver(card_saved_event(user="user_1", payment_method="payt_new", msg_id=first))  # a redelivery
    world.drain()
    world.tick(world.now + timedelta(hours=1))

    assert len(calls(world.fake, "PATCH", PATCH)) == 1
    assert [r["status"] for r in world.ledger("mem_1", "card_attach")] == ["sent"]
    world.whop_answers()
    case = world.case("mem_1")
    assert case["status"] == "open" and case["retry_reason"] == "card_updated"  # tried, declined again
    saved = world.p.rows(ALPHA, "SELECT count(*) AS n FROM events WHERE type = 'setup_intent.succeeded'")
    assert saved[0]["n"] == 2


def test_a_card_saved_before_the_failure_arrives_is_used_when_the_case_opens(world: World) -> None:
    world.member("mem_1", "user_1")
    world.card("payt_new", "user_1")
    world.save_card("user_1", "payt_new", dated=True)  # the pinned (dated) payload shape
    assert calls(world.fake, "PATCH", PATCH) == []  # no open case yet: nothing owed

    world.fail("mem_1", "user_1", at=world.now - timedelta(hours=2))  # the failure's webhook is late

    (patch,) = calls(world.fake, "PATCH", PATCH)
    assert patch.json == {"payment_method_id": "payt_new"}
    world.whop_answers()
    assert world.case("mem_1")["recovered_by"] == "rebound_retry"


def test_a_card_saved_while_the_failure_is_being_applied_is_never_missed(world: World) -> None:
    """The consumer applies the failure and the saved card at the same moment (two Lambda
    instances): the member lock they share means whichever commits second sees the other."""
    from chalicelib.queue import QueuedWebhook

    def apply(pair: tuple[str, bytes]) -> None:
        processing.process_webhook(QueuedWebhook(pair[0], world.now, pair[1]), world.now, world.p.db)

    for n in range(20):  # without the shared lock, a few of 20 races lose the attach
        membership, user = f"mem_race_{n}", f"user_race_{n}"
        failure = payment_event("payment.failed", membership=membership, user=user,
                                at=world.now - timedelta(hours=1), payment=f"pay_{membership}")
        card = card_saved_event(user=user, payment_method=f"payt_race_{n}", at=world.now)
        pending = [failure, card]
        taking = threading.Lock()

        def take_one(pending: list[tuple[str, bytes]] = pending, taking: threading.Lock = taking) -> None:
            with taking:
                pair = pending.pop()
            apply(pair)

        run_concurrently(take_one, 2, after=world.p.db.close)
        (row,) = world.ledger(membership, "card_attach")
        assert row["idempotency_key"] == attach_key(ALPHA, membership, f"payt_race_{n}")


def test_a_card_saved_in_one_company_attaches_only_that_companys_membership(world: World) -> None:
    world.member("mem_a", "user_1", company=ALPHA)
    world.member("mem_b", "user_1", company=BRAVO)
    world.card("payt_alpha", "user_1", company=ALPHA)
    world.fail("mem_a", "user_1", company=ALPHA)
    world.fail("mem_b", "user_1", company=BRAVO)

    world.save_card("user_1", "payt_alpha", company=ALPHA)

    assert [c.path for c in calls(world.fake, "PATCH", PATCH)] == ["/api/v1/memberships/mem_a"]
    assert world.ledger("mem_b", "card_attach", company=BRAVO) == []
    world.whop_answers()
    assert world.case("mem_a", ALPHA)["status"] == "recovered"
    assert world.case("mem_b", BRAVO)["status"] == "open" and world.case("mem_b", BRAVO)["retried_at"] is None


def test_no_attach_for_a_held_out_case_a_closed_case_or_with_smart_retry_off(world: World) -> None:
    for m in ("mem_hold", "mem_done", "mem_off"):
        world.member(m, f"user_{m}", company=BRAVO if m == "mem_off" else ALPHA)
        world.card(f"payt_{m}", f"user_{m}", company=BRAVO if m == "mem_off" else ALPHA)
    world.fail("mem_hold", "user_mem_hold")
    world.owner.run("UPDATE recovery_cases SET holdout = true WHERE membership_id = 'mem_hold'")
    world.fail("mem_done", "user_mem_done")
    world.deliver(payment_event("payment.succeeded", membership="mem_done", user="user_mem_done",
                                at=world.now, payment="pay_mem_done"))
    world.owner.run("INSERT INTO creator_settings (company_id, smart_retry) VALUES (:c, false)", c=BRAVO)
    world.fail("mem_off", "user_mem_off", company=BRAVO)

    for m, company in (("mem_hold", ALPHA), ("mem_done", ALPHA), ("mem_off", BRAVO)):
        world.save_card(f"user_{m}", f"payt_{m}", company=company)
    world.tick(datetime(2026, 3, 15, 9, tzinfo=UTC))  # the payday slot too

    assert calls(world.fake, "PATCH", PATCH) == [] and calls(world.fake, "POST", RETRY) == []
    assert world.ledger("mem_hold", "card_attach") == []
    assert world.ledger("mem_off", "card_attach", BRAVO) == []
    # The held-out case's payday retry is a ledger row like its nudges: skipped, with the reason.
    assert [(r["status"], r["error_detail"]) for r in world.ledger("mem_hold", "payment_retry")] == [
        ("skipped", "holdout")]
    assert world.ledger("mem_off", "payment_retry", BRAVO) == []


def test_simulate_card_updated_recovers_a_simulated_failure(world: World, tmp_path: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from scripts import simulate

    monkeypatch.setenv("REBOUND_DATA_DIR", str(tmp_path))  # no make dev here: the flags say where
    world.clock[0] = datetime.now(UTC)  # simulate.py dates its webhooks now: the real clock here
    world.fake.clock = None
    common = ["--base", world.relay, "--fake-whop", world.fake.origin, "--company", ALPHA,
              "--user", "user_sim"]
    assert simulate.main(["failure", "--membership", "mem_sim", *common]) == 0
    world.drain()
    assert simulate.main(["card-updated", "--payment-method", "payt_sim", *common]) == 0
    world.drain()

    (patch,) = calls(world.fake, "PATCH", PATCH)
    assert patch.path == "/api/v1/memberships/mem_sim" and patch.json == {"payment_method_id": "payt_sim"}
    world.whop_answers()
    assert world.case("mem_sim")["recovered_by"] == "rebound_retry"


# --- the payday retry ---------------------------------------------------------------------------------


SLOT = datetime(2026, 3, 15, 9, tzinfo=UTC)  # the next payday after the clock's 10 March, 12:00 UTC


def test_a_soft_decline_gets_exactly_one_retry_at_the_next_payday(world: World) -> None:
    world.member("mem_1", "user_1")
    world.fail("mem_1", "user_1")
    (row,) = world.ledger("mem_1", "payment_retry")
    assert (row["status"], row["step"], row["due_at"]) == ("pending", "payday", SLOT)
    assert row["idempotency_key"] == retry_key(ALPHA, "pay_mem_1")

    world.tick(SLOT - timedelta(minutes=1))
    assert calls(world.fake, "POST", RETRY) == []
    # Two ticks at once at the slot: one retry.
    world.clock[0] = SLOT
    run_concurrently(lambda: tick(default_context(), SLOT), 2, after=world.p.db.close)
    (retry,) = calls(world.fake, "POST", RETRY)
    assert retry.path == "/api/v1/payments/pay_mem_1/retry"
    assert retry.idempotency_key == row["idempotency_key"]
    world.whop_answers()
    case = world.case("mem_1")
    assert (case["status"], case["recovered_by"]) == ("recovered", "rebound_retry")
    assert case["retry_reason"] == "payday"
    assert case["retried_at"] == SLOT
    world.tick(SLOT + timedelta(days=1))
    assert len(calls(world.fake, "POST", RETRY)) == 1  # once per payment, ever


def test_hard_declines_and_3ds_are_never_retried_automatically(world: World) -> None:
    world.member("mem_hard", "user_hard")
    world.member("mem_3ds", "user_3ds")
    world.fail("mem_hard", "user_hard", decline="expired_card")
    world.fail("mem_3ds", "user_3ds", kind="payment.requires_action", decline="authentication_required")
    for at in (SLOT, datetime(2026, 4, 1, 9, tzinfo=UTC)):
        world.tick(at)
    assert calls(world.fake, "POST", RETRY) == []
    assert world.ledger("mem_hard", "payment_retry") == [] and world.ledger("mem_3ds", "payment_retry") == []


def test_the_payday_retry_waits_for_whops_own_attempts_and_quiet_hours(world: World) -> None:
    world.owner.run("INSERT INTO creator_settings (company_id, quiet_hours_start, quiet_hours_end)"
                    " VALUES (:c, '08:00', '09:30')", c=ALPHA)
    world.member("mem_1", "user_1", next_payment_attempt_at=SLOT + timedelta(days=2))
    world.member("mem_2", "user_2")
    world.fail("mem_1", "user_1", at=world.now - timedelta(hours=1))
    world.fail("mem_2", "user_2")
    # 09:00 falls in the quiet hours: the retry waits until they end, 09:30.
    assert world.ledger("mem_2", "payment_retry")[0]["due_at"] == SLOT + timedelta(minutes=30)

    world.tick(SLOT + timedelta(minutes=30))
    assert [c.path for c in calls(world.fake, "POST", RETRY)] == ["/api/v1/payments/pay_mem_2/retry"]
    # Whop still has an attempt of its own on the 17th: the next slot after it, 1 April, is past
    # the window (10 March + 14 days, less a day): no retry, and the reason.
    (row,) = world.ledger("mem_1", "payment_retry")
    assert (row["status"], row["error_detail"]) == ("skipped", "whop_still_retrying")


# --- Whop in trouble ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["429", "500", "drop", "drop_after"])
def test_a_busy_or_flaky_whop_delays_the_attach_and_never_doubles_it(world: World, fault: str) -> None:
    world.member("mem_1", "user_1")
    world.card("payt_new", "user_1")
    world.fail("mem_1", "user_1")
    world.fake.inject("PATCH", PATCH, fault, times=2, retry_after=1)  # the client's own two tries

    world.save_card("user_1", "payt_new")
    (row,) = world.ledger("mem_1", "card_attach")
    assert row["status"] == "pending" and row["error_class"] in ("rate_limited", "unavailable")
    world.tick(world.now + timedelta(hours=1))

    assert len(applied(world.fake, "PATCH", PATCH)) == 1
    assert world.fake.payments["pay_mem_1"].charges == ["attach:payt_new"]
    assert {c.idempotency_key for c in calls(world.fake, "PATCH", PATCH)} == {row["idempotency_key"]}
    assert world.ledger("mem_1", "card_attach")[0]["status"] == "sent"


def test_a_whop_timeout_is_retried_under_the_same_key(world: World) -> None:
    from chalicelib import whop_client
    from chalicelib.config import get_config

    world.member("mem_1", "user_1")
    world.card("payt_new", "user_1")
    world.fail("mem_1", "user_1")
    whop_client.set_whop(whop_client.WhopClient.from_config(get_config(), sleep=lambda _s: None,
                                                            read_timeout_s=0.2, max_attempts=1))
    world.fake.inject("PATCH", PATCH, "slow", times=1, delay_s=0.6)  # answers after the client gave up

    world.save_card("user_1", "payt_new")
    assert world.ledger("mem_1", "card_attach")[0]["error_detail"] == "timeout"
    assert world.fake.wait_idle()  # Whop finished the slow request after the client gave up
    world.tick(world.now + timedelta(hours=1))
    patches = calls(world.fake, "PATCH", PATCH)
    assert len(patches) == 2 and patches[1].replayed  # the slow one applied; the repeat was replayed
    assert world.fake.payments["pay_mem_1"].charges == ["attach:payt_new"]
    assert world.ledger("mem_1", "card_attach")[0]["status"] == "sent"


def test_a_missing_permission_is_final_and_reported(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.member("mem_1", "user_1")
    world.member("mem_2", "user_2")
    world.card("payt_1", "user_1")
    world.fail("mem_1", "user_1")
    world.fake.deny_permission("member:payment_methods:manage")

    world.save_card("user_1", "payt_1")
    (row,) = world.ledger("mem_1", "card_attach")
    assert (row["status"], row["error_detail"]) == ("failed", "permission_missing")
    assert row["result"]["permission"] == "member:payment_methods:manage"
    world.tick(world.now + timedelta(hours=2))
    assert len(calls(world.fake, "PATCH", PATCH)) == 1  # never retried

    gaps = json.loads(world.api("get", "/settings").body)["whop_permissions_missing"]
    assert [g["permission"] for g in gaps] == ["member:payment_methods:manage"]
    assert "grant member:payment_methods:manage" in gaps[0]["message"]
    monkeypatch.setenv("HEALTH_PUBLIC", "true")
    config.reset_config()
    health.deep_cache.clear()
    answer = json.loads(world.p.client.http.get("/api/health?type=database").body)
    assert answer["whop_permissions_missing"] == {"member:payment_methods:manage": 1}

    # Granted again: the next card attaches and the warning goes.
    world.fake.deny_permission("member:payment_methods:manage", denied=False)
    world.card("payt_2", "user_2")
    world.fail("mem_2", "user_2")
    world.save_card("user_2", "payt_2")
    assert json.loads(world.api("get", "/settings").body)["whop_permissions_missing"] == []


def test_whop_refusing_a_retry_is_final_with_its_reason(world: World) -> None:
    payment = world.member("mem_1", "user_1")
    world.fail("mem_1", "user_1")
    world.fake.payments[payment].retries = 1  # retried elsewhere already: Whop answers 400

    world.tick(SLOT)
    (row,) = world.ledger("mem_1", "payment_retry")
    assert (row["status"], row["error_detail"]) == ("failed", "http_400")
    assert row["result"]["whop_reason"] == "This payment has already been retried"
    world.tick(SLOT + timedelta(hours=3))
    assert len(calls(world.fake, "POST", RETRY)) == 1
    detail = json.loads(world.api("get", f"/cases/{world.case('mem_1')['id']}").body)
    (item,) = [t for t in detail["timeline"] if t["type"] == "payment_retry"]
    assert item["detail"]["whop_reason"] == "This payment has already been retried"


def test_a_crash_between_the_call_and_its_record_repeats_harmlessly(world: World,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    world.member("mem_1", "user_1")
    world.card("payt_new", "user_1")
    world.fail("mem_1", "user_1")
    monkeypatch.setattr(processing, "send_opening_nudges", lambda *_a, **_k: None)  # run it by hand below
    world.save_card("user_1", "payt_new")

    def crash(*_a: Any, **_k: Any) -> None:
        raise SystemExit("the process died after Whop answered")  # nothing below it runs

    with monkeypatch.context() as patched, pytest.raises(SystemExit):
        patched.setattr(effects, "_record_all", crash)
        execute_owed(default_context(), ALPHA, world.now, kinds=("card_attach",))
    assert world.ledger("mem_1", "card_attach")[0]["status"] == "claimed"  # its lease runs on

    # The lease ends (leases run on the database's clock, issue 20: age it there) …
    with tenant_transaction(ALPHA, world.p.db) as tx:
        tx.execute("UPDATE recovery_actions SET claimed_until = claimed_until - interval '6 minutes'"
                   " WHERE claimed_until IS NOT NULL")
    world.tick(world.now + timedelta(minutes=6))  # … claimed again, sent again
    patches = calls(world.fake, "PATCH", PATCH)
    assert [p.replayed for p in patches] == [False, True] and len({p.idempotency_key for p in patches}) == 1
    assert world.fake.payments["pay_mem_1"].charges == ["attach:payt_new"]
    assert world.ledger("mem_1", "card_attach")[0]["status"] == "sent"


def test_no_reminder_for_a_payment_whop_already_shows_paid(world: World) -> None:
    payment = world.member("mem_1", "user_1")
    world.fail("mem_1", "user_1", decline="expired_card")
    pushes = len(world.fake.notifications)
    world.fake.payments[payment].status = "paid"  # paid at Whop; its webhook has not arrived
    world.fake.payments[payment].paid_at = world.now

    world.tick(world.now + timedelta(days=2))

    reminders = world.ledger("mem_1", "reminder")
    assert reminders
    assert {(r["status"], r["error_detail"]) for r in reminders} == {("skipped", "already_paid")}
    assert len(world.fake.notifications) == pushes


# --- a creator's retry ----------------------------------------------------------------------------------


def test_a_manual_retry_goes_once_and_then_answers_409(world: World) -> None:
    world.member("mem_1", "user_1")
    world.fail("mem_1", "user_1", decline="expired_card")
    case_id = world.case("mem_1")["id"]
    checks = len(calls(world.fake, "GET", r"/users/user_admin/access/biz_alpha"))

    resp = world.api("post", f"/cases/{case_id}/retry")
    assert resp.status_code == 200, resp.body
    body = json.loads(resp.body)
    assert body["action"]["status"] == "sent" and body["payment_status"] == "paid"
    assert body["retry_reason"] == "manual"
    # Admin access was asked of Whop again, uncached (it charges a member's card).
    assert len(calls(world.fake, "GET", r"/users/user_admin/access/biz_alpha")) == checks + 1
    (row,) = world.ledger("mem_1", "payment_retry")
    assert (row["actor"], row["step"]) == ("user_admin", "manual")

    again = world.api("post", f"/cases/{case_id}/retry")
    assert again.status_code == 409
    world.whop_answers()
    assert world.case("mem_1")["recovered_by"] == "rebound_retry"
    assert len(calls(world.fake, "POST", RETRY)) == 1


def test_a_manual_retry_takes_over_the_owed_payday_retry(world: World) -> None:
    world.member("mem_1", "user_1")
    world.fail("mem_1", "user_1")
    case_id = world.case("mem_1")["id"]

    assert world.api("post", f"/cases/{case_id}/retry").status_code == 200
    world.tick(SLOT)
    (row,) = world.ledger("mem_1", "payment_retry")
    assert (row["step"], row["status"]) == ("manual", "sent")
    assert len(calls(world.fake, "POST", RETRY)) == 1


@pytest.mark.parametrize("why", ["not_retryable", "paid", "holdout", "recovered", "retried"])
def test_a_manual_retry_that_is_not_possible_is_409(world: World, why: str) -> None:
    payment = world.member("mem_1", "user_1")
    world.fail("mem_1", "user_1")
    case_id = world.case("mem_1")["id"]
    if why == "not_retryable":
        world.fake.payments[payment].retryable = False
    elif why == "paid":
        world.fake.payments[payment].status = "paid"
    elif why == "holdout":
        world.owner.run("UPDATE recovery_cases SET holdout = true")
    elif why == "recovered":
        world.deliver(payment_event("payment.succeeded", at=world.now, payment=payment, membership="mem_1"))
        world.drain()
    else:
        world.tick(SLOT)
    resp = world.api("post", f"/cases/{case_id}/retry")
    assert resp.status_code == 409, resp.body
    assert len(calls(world.fake, "POST", RETRY)) == (1 if why == "retried" else 0)


def test_a_manual_retry_of_another_companys_case_is_404(world: World) -> None:
    world.member("mem_1", "user_1")
    world.fail("mem_1", "user_1")
    case_id = world.case("mem_1")["id"]
    assert world.api("post", f"/cases/{case_id}/retry", company=BRAVO).status_code == 404
    assert calls(world.fake, "POST", RETRY) == []

