"""Time budgets: the consumer's T+0 sends stop before its remaining time runs low and leave the rest
owed for the tick; the HTTP-triggered tick's budget plus one Whop call at its worst fits in API
Gateway's 29 s; every margin is under the timeout it protects. Time is a simulated clock that a
slow Whop advances, never waited for."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

import app as app_module
from chalicelib import budgets, config, effects, measurement, processing, whop_client
from scripts import local_sqs
from scripts import split_template as st
from tests.conftest import Owner
from tests.test_metrics import emf, metric_values
from tests.test_pipeline import NOW, Pipeline, pipeline  # noqa: F401 - the fixture is used by name


def test_the_http_tick_and_one_whop_call_fit_in_api_gateways_29_seconds() -> None:
    short = budgets.worst_case_call_s(budgets.SHORT_PROFILE)
    assert short == 7.0
    limit = budgets.API_GATEWAY_TIMEOUT_S
    assert app_module.HTTP_TICK_BUDGET_S + short + app_module.HTTP_TICK_SLACK_S <= limit
    # The shared profile would not: 15 + 26 > 29. The route must use the short one.
    assert app_module.HTTP_TICK_BUDGET_S + budgets.worst_case_call_s(budgets.SHARED_PROFILE) > 29
    settings = st.load_settings()
    route_timeout = settings.kinds[settings.routes["scheduler_reminders"]].timeout_s
    assert route_timeout <= budgets.API_GATEWAY_TIMEOUT_S
    # Margins are under the timeouts they protect (else nothing would ever be sent).
    consumer = settings.kinds[settings.handlers["process_events"]].timeout_s
    assert budgets.worst_case_call_s(budgets.SHARED_PROFILE) < processing.SEND_MARGIN_S < consumer
    scheduler = settings.kinds[settings.handlers["process_reminders"]].timeout_s
    assert budgets.worst_case_call_s(budgets.SHARED_PROFILE) < app_module.TICK_MARGIN_S < scheduler


def test_the_http_tick_calls_whop_with_the_short_profile(whop_env: Any) -> None:
    whop_client.reset_whop()
    try:
        client = whop_client.get_whop("short")
        assert isinstance(client, whop_client.WhopClient)
        assert client.max_attempts == 1 and client.max_total_sleep_s == 0
        timeout = client._http.timeout
        assert (timeout.connect, timeout.read) == (2.0, 5.0)
        assert whop_client.get_whop("short") is client and whop_client.get_whop() is not client
    finally:
        whop_client.reset_whop()


class SlowWhop:
    """The Whop port, where every call takes ``seconds`` of the simulated clock; it notes the time
    left when each call starts."""

    def __init__(self, port: Any, clock: list[float], seconds: float, timeout_s: float = 60.0) -> None:
        self._port, self._clock, self._seconds, self._timeout = port, clock, seconds, timeout_s
        self.left_at_start: list[float] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._port, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            self.left_at_start.append(self._timeout - self._clock[0])
            self._clock[0] += self._seconds
            return target(*args, **kwargs)

        return call


@dataclass
class Context:
    """A Lambda context whose remaining time follows the simulated clock."""

    clock: list[float]
    timeout_s: float = 60.0
    function_name: str = "process_events"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:000000000000:function:process_events"
    aws_request_id: str = "req-time-budget"

    def get_remaining_time_in_millis(self) -> int:
        return int((self.timeout_s - self.clock[0]) * 1000)


def test_t0_sends_stop_before_the_time_runs_out_and_the_tick_sends_the_rest(
        pipeline: Pipeline, owner: Owner, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    clock = [0.0]
    # Whop answers, slowly (a client of its own: set_whop closes the one it replaces).
    slow = SlowWhop(whop_client.WhopClient.from_config(config.get_config(), sleep=lambda _s: None), clock,
                    seconds=12.0)
    whop_client.set_whop(slow)  # type: ignore[arg-type]
    effects.clear_experience_cache()
    measurement.clear_product_cache()  # every name is read through the slow Whop
    for n in range(3):
        msg_id, body = payment_event_for(n)
        assert pipeline.deliver(msg_id, body).status_code == 200
    capsys.readouterr()
    from app import process_events

    ok, failed = local_sqs.poll_once(pipeline.sqs, pipeline.queues,
                                     lambda event, _ctx: process_events(event, Context(clock)))
    assert (ok, failed) == (3, 0), "every webhook is applied and acknowledged, whatever the sends do"
    # Every call started with room for one more call at its worst, and recording it.
    assert slow.left_at_start and min(slow.left_at_start) >= processing.SEND_MARGIN_S, slow.left_at_start
    values = metric_values(emf(capsys.readouterr().out))
    sent = owner.run("SELECT count(*) FROM recovery_actions WHERE status = 'sent'")[0][0]
    # (A soft decline also owes its payday retry, issue 18: not due now, and not a T+0 send.)
    owed = owner.run("SELECT count(*) FROM recovery_actions WHERE status = 'pending'"
                     " AND claimed_until IS NULL AND kind <> 'payment_retry'")
    assert sent >= 1 and owed[0][0] >= 2, (sent, owed)
    assert values["OpeningNudgesDeferred"] >= 1
    # The next tick (a fresh clock) sends what was left: nothing is lost.
    clock[0] = 0.0
    result = app_module.run_tick()
    assert result["EffectsSent"] >= owed[0][0]
    assert owner.run("SELECT count(*) FROM recovery_actions WHERE status = 'pending'"
                     " AND kind <> 'payment_retry'") == [[0]]


def payment_event_for(n: int) -> tuple[str, bytes]:
    from tests.helpers import payment_event

    return payment_event("payment.failed", at=NOW - timedelta(hours=1), membership=f"mem_budget_{n}",
                         user=f"user_budget_{n}", payment=f"pay_budget_{n}")
