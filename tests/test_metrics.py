"""Metrics as code: each path emits the EMF metrics the alarms and dashboard read (captured from
the real Powertools output), with the `service` dimension only; and every alarm in the template
watches a metric the source emits (found by scanning it, so new names count automatically)."""

from __future__ import annotations

import ast
import json
from datetime import timedelta
from typing import Any

import pytest
from chalice.test import Client

from scripts import split_template as st
from tests.conftest import ROOT, Owner
from tests.helpers import payment_event
from tests.test_pipeline import NOW, Pipeline, pipeline  # noqa: F401 - the fixture is used by name

# Named in alarms, emitted once issue 8 (lead) merges: see test_issue8_alarm_metrics_are_emitted.


def emf(out: str) -> list[dict[str, Any]]:
    """The EMF documents Powertools printed (one JSON object per flush)."""
    docs = []
    for line in out.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            docs.append(json.loads(line))
    return docs


def metric_values(docs: list[dict[str, Any]]) -> dict[str, float]:
    values: dict[str, float] = {}
    for doc in docs:
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            assert directive["Dimensions"] == [["service"]], "low-cardinality dimensions only"
            for metric in directive["Metrics"]:
                value = doc[metric["Name"]]
                values[metric["Name"]] = values.get(metric["Name"], 0) + (
                    sum(value) if isinstance(value, list) else value)
        assert doc["service"] == "rebound"
    return values


def test_accepted_webhook_and_applied_event_emit_their_metrics(
        pipeline: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    capsys.readouterr()
    msg_id, body = payment_event("payment.failed", at=NOW - timedelta(hours=1), company="biz_alpha")
    assert pipeline.deliver(msg_id, body).status_code == 200
    accepted = metric_values(emf(capsys.readouterr().out))
    assert accepted == {"Webhook_queued": 1}

    assert pipeline.drain() == (1, 0)
    applied = metric_values(emf(capsys.readouterr().out))
    assert applied["EventsApplied"] == 1 and applied["CasesOpened"] == 1
    assert applied["EffectsSent"] >= 1  # the T+0 push and DM went to the fake Whop

    bad = pipeline.client.http.post("/webhooks/whop", body=body, headers={"webhook-id": msg_id})
    assert bad.status_code == 401
    assert metric_values(emf(capsys.readouterr().out)) == {"Webhook_rejected_missing_headers": 1}


def test_a_tick_emits_its_metrics(pipeline: Pipeline, owner: Owner,  # noqa: F811
                                  capsys: pytest.CaptureFixture[str]) -> None:
    msg_id, body = payment_event("payment.failed", at=NOW - timedelta(days=1), membership="mem_old")
    pipeline.deliver(msg_id, body)
    pipeline.drain()
    # Two days pass (the clock of a Lambda cannot be injected): the day-2 reminder is now due.
    owner.run("UPDATE recovery_cases SET first_failure_at = first_failure_at - interval '2 days',"
              " last_failure_at = last_failure_at - interval '2 days', next_action_at = now()")
    owner.run("UPDATE recovery_actions SET completed_at = completed_at - interval '2 days'")
    capsys.readouterr()
    from app import app

    with Client(app) as c:
        event = c.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event",
                                           detail={}, resources=[])
        c.lambda_.invoke("process_reminders", event)
    values = metric_values(emf(capsys.readouterr().out))
    assert values["RemindersDue"] == 1 and values["RemindersOwed"] >= 1
    for name in ("CasesExpired", "EffectsSent", "EffectsFailed", "EffectsRetrying", "EffectsDeferred",
                 "TickDurationMs", "RetentionPurged"):
        assert name in values, name


def test_a_send_that_whop_refuses_emits_effects_failed(pipeline: Pipeline, owner: Owner,  # noqa: F811
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # The T+0 nudges meet a Whop outage (retryable), then their retry meets a permanent 422.
    pipeline.whop.inject("POST", "/.*", "500", times=None)
    msg_id, body = payment_event("payment.failed", at=NOW - timedelta(hours=2), membership="mem_refused")
    pipeline.deliver(msg_id, body)
    pipeline.drain()
    pending = owner.run("SELECT count(*) FROM recovery_actions WHERE status = 'pending'"
                        " AND error_class = 'unavailable'")[0][0]
    assert pending >= 1
    # The clock passing the backoff, without waiting: the retries are due now.
    owner.run("UPDATE recovery_actions SET due_at = now() - interval '1 minute' WHERE status = 'pending'")
    pipeline.whop.clear_faults()
    pipeline.whop.inject("POST", "/.*", "422", times=None)
    capsys.readouterr()
    from app import app

    with Client(app) as c:
        event = c.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event",
                                           detail={}, resources=[])
        c.lambda_.invoke("process_reminders", event)
    values = metric_values(emf(capsys.readouterr().out))
    assert values["EffectsFailed"] >= 1 and values["EffectsSent"] == 0


# --- alarms watch metrics the code emits ----------------------------------------------------------


def _literal_prefix(node: ast.JoinedStr) -> str:
    prefix = ""
    for part in node.values:
        if isinstance(part, ast.Constant) and isinstance(part.value, str):
            prefix += part.value
        else:
            break
    return prefix


def _called(node: ast.Call) -> str:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _metric_args(node: ast.Call) -> list[ast.expr]:
    if _called(node) not in ("count", "add_metric"):
        return []
    return [*node.args[:1], *(k.value for k in node.keywords if k.arg == "name")]


def _string_keys(function: ast.FunctionDef) -> set[str]:
    return {k.value for sub in ast.walk(function) if isinstance(sub, ast.Dict)
            for k in sub.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}


def emitted_names() -> tuple[set[str], set[str], set[str]]:
    """(exact metric names, f-string name prefixes, string literals and "prefix*" patterns) found
    in app.py and chalicelib: arguments of count(...) / add_metric(name=...), keys of as_metrics()."""
    exact: set[str] = set()
    prefixes: set[str] = set()
    literals: set[str] = set()
    for path in [ROOT / "app.py", *sorted((ROOT / "chalicelib").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                # The code capitalises some outcomes into names (f"Events{status.capitalize()}").
                literals |= {node.value, node.value.capitalize()}
            elif isinstance(node, ast.JoinedStr) and _literal_prefix(node):
                literals.add(_literal_prefix(node) + "*")
            elif isinstance(node, ast.Call):
                for arg in _metric_args(node):
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        exact.add(arg.value)
                    elif isinstance(arg, ast.JoinedStr) and _literal_prefix(arg):
                        prefixes.add(_literal_prefix(arg))
            elif isinstance(node, ast.FunctionDef) and node.name == "as_metrics":
                exact |= _string_keys(node)
    return exact, prefixes, literals


def is_emitted(name: str, exact: set[str], prefixes: set[str], literals: set[str]) -> bool:
    """Exact, or an f-string prefix whose rest the source can spell (a literal, or a nested
    f-string's prefix plus a literal: Webhook_ + rejected_ + bad_signature)."""
    if name in exact:
        return True

    def spelled(rest: str, depth: int = 0) -> bool:
        if rest in literals:
            return True
        return depth < 2 and any(rest.startswith(p[:-1]) and spelled(rest[len(p) - 1:], depth + 1)
                                 for p in literals if p.endswith("*") and len(p) > 1)

    return any(name.startswith(p) and spelled(name[len(p):]) for p in prefixes)


def custom_alarm_metrics() -> dict[str, set[str]]:
    alarms = st.metric_alarms(st.load_settings(), "Rebound", "rebound", "api")
    return st.alarm_metric_names({"Resources": alarms}, "Rebound")


def test_the_scan_finds_names_emitted_today() -> None:
    exact, prefixes, literals = emitted_names()
    for name in ("EventsApplied", "CasesOpened", "RemindersDue", "TickDurationMs", "EffectsFailed",
                 "Webhook_queued", "Webhook_rejected_bad_signature", "Webhook_malformed", "RetentionPurged"):
        assert is_emitted(name, exact, prefixes, literals), name
    for name in ("Webhook_bogus", "NotAMetric", "EffectsExploded"):
        assert not is_emitted(name, exact, prefixes, literals), name


def test_every_alarm_watches_a_metric_the_code_emits() -> None:
    exact, prefixes, literals = emitted_names()
    watched = custom_alarm_metrics()
    assert watched, "the template has application alarms"
    missing = {alarm: sorted(n for n in names if not is_emitted(n, exact, prefixes, literals))
               for alarm, names in watched.items()}
    assert not any(missing.values()), missing

