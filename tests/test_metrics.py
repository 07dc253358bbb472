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

from chalicelib import config, effects, queue, tenancy
from chalicelib.observability import metrics
from scripts import split_template as st
from scripts.whop_payloads import card_saved_event
from tests.conftest import ROOT, Owner
from tests.helpers import membership_event, payment_event, sign
from tests.test_pipeline import NOW, Pipeline, pipeline  # noqa: F401 - the fixture is used by name


@pytest.fixture(autouse=True)
def no_metrics_left_over() -> None:
    """Start from an empty metric set: code run outside a handler by an earlier test (a tick
    called directly, say) leaves metrics that the next flush here would print."""
    metrics.clear_metrics()


def emf(out: str) -> list[dict[str, Any]]:
    """The EMF documents Powertools printed (one JSON object per flush)."""
    docs = []
    for line in out.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            docs.append(json.loads(line))
    return docs


ROUTE_METRIC = ("RouteLatency_", "Route5xx_")


def metric_values(docs: list[dict[str, Any]], routes: bool = False) -> dict[str, float]:
    """Each metric's total. The per-route metrics every HTTP call adds (RouteLatency_<view>,
    Route5xx_<view>: tests/test_route_metrics.py) are left out unless ``routes``."""
    values: dict[str, float] = {}
    for doc in docs:
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            assert directive["Dimensions"] == [["service"]], "low-cardinality dimensions only"
            for metric in directive["Metrics"]:
                if metric["Name"].startswith(ROUTE_METRIC) and not routes:
                    continue
                value = doc[metric["Name"]]
                values[metric["Name"]] = values.get(metric["Name"], 0) + (
                    sum(value) if isinstance(value, list) else value)
        assert doc["service"] == "rebound"
    return values


def has(values: dict[str, float], expected: dict[str, float]) -> bool:
    """These metrics, with exactly these values (others may be there too)."""
    return {name: values.get(name) for name in expected} == expected


def test_accepted_webhook_and_applied_event_emit_their_metrics(
        pipeline: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    capsys.readouterr()
    msg_id, body = payment_event("payment.failed", at=NOW - timedelta(hours=1), company="biz_alpha")
    assert pipeline.deliver(msg_id, body).status_code == 200
    accepted = metric_values(emf(capsys.readouterr().out))
    assert accepted == {"Webhook_queued": 1, "WebhookType_payment_failed": 1}

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


def test_a_case_whose_payment_succeeded_before_its_failure_arrived_counts_as_recovered(
        pipeline: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    # Whop's deliveries can arrive out of order: the case opens already recovered.
    pipeline.deliver(*payment_event("payment.succeeded", at=NOW, membership="mem_order", payment="pay_o"))
    pipeline.drain()
    capsys.readouterr()
    pipeline.deliver(*payment_event("payment.failed", at=NOW - timedelta(hours=1), membership="mem_order",
                                    payment="pay_o"))
    pipeline.drain()
    values = metric_values(emf(capsys.readouterr().out))
    assert has(values, {"EventsApplied": 1, "CasesOpened": 1, "CasesRecovered": 1})
    # Another success notice for the same payment: the case is already recovered, not again.
    pipeline.deliver(*payment_event("payment.succeeded", at=NOW, membership="mem_order", payment="pay_o",
                                    msg_id="msg_order_again"))
    pipeline.drain()
    again = metric_values(emf(capsys.readouterr().out))
    assert "CasesRecovered" not in again and "CasesOpened" not in again


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


def test_the_scan_finds_names_emitted_today() -> None:
    exact, prefixes, literals = emitted_names()
    for name in ("EventsApplied", "CasesOpened", "RemindersDue", "TickDurationMs", "EffectsFailed",
                 "Webhook_queued", "Webhook_rejected_bad_signature", "Webhook_malformed", "RetentionPurged"):
        assert is_emitted(name, exact, prefixes, literals), name
    for name in ("Webhook_bogus", "NotAMetric", "EffectsExploded"):
        assert not is_emitted(name, exact, prefixes, literals), name


# --- every dashboard and alarm metric is emitted by a path this test drives ----------------------


def _deliver_signed(pipeline: Pipeline, event: tuple[str, bytes], **sign_kw: Any) -> Any:  # noqa: F811
    msg_id, body = event
    return pipeline.client.http.post("/webhooks/whop", body=body, headers=sign(body, msg_id, **sign_kw))


def _admin_acts_on_case(pipeline: Pipeline, company: str, membership: str,  # noqa: F811
                        action: str) -> None:
    """The company's admin POSTs ``action`` (nudge, retry) on the case of ``membership``."""
    case_id = pipeline.rows(company, "SELECT id::text FROM recovery_cases WHERE membership_id = :m",
                            m=membership)
    resp = pipeline.client.http.post(
        f"/api/companies/{company}/cases/{case_id[0]['id']}/{action}", body=b"",
        headers={"x-whop-user-token": pipeline.whop.mint_user_token("user_admin"),
                 "content-type": "application/json"})
    assert resp.status_code == 200, resp.body


def _tick() -> None:
    from app import app

    with Client(app) as c:
        event = c.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event",
                                           detail={}, resources=[])
        c.lambda_.invoke("process_reminders", event)


def test_every_dashboard_and_alarm_metric_is_emitted_by_a_real_path(
        pipeline: Pipeline, owner: Owner, capsys: pytest.CaptureFixture[str],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One tour through the routes, the consumer, the executor (fake Whop) and the tick, reading
    the EMF lines each prints. Every metric the packaged dashboard or an alarm reads must appear,
    and no line may carry a dimension other than ``service`` (never a company or member id)."""
    seen: dict[str, float] = {}

    def take() -> dict[str, float]:
        values = metric_values(emf(capsys.readouterr().out))  # asserts the dimensions
        for name, value in values.items():
            seen[name] = seen.get(name, 0) + value
        return values

    company = "biz_alpha"
    # Smart retry's sends have their own tour (tests/test_smart_retry.py): off here, so the counts
    # below stay the same whatever the date (a payday may or may not fall inside a window).
    owner.run("INSERT INTO creator_settings (company_id, incentive_days, smart_retry) VALUES (:c, 3, false)"
              " ON CONFLICT (company_id) DO UPDATE SET incentive_days = 3, smart_retry = false", c=company)
    for member in ("ok", "retry", "late"):
        pipeline.whop.add_membership(f"mem_{member}", company_id=company, user_id=f"user_{member}")
    capsys.readouterr()

    # A failure accepted by the route, applied by the consumer; its T+0 sends all go out.
    msg_id, failed = payment_event("payment.failed", at=NOW - timedelta(hours=1), membership="mem_ok",
                                   user="user_ok", payment="pay_ok", recovery_url="https://whop.com/pay/ok")
    assert pipeline.deliver(msg_id, failed).status_code == 200
    assert take() == {"Webhook_queued": 1, "WebhookType_payment_failed": 1}
    assert pipeline.drain() == (1, 0)
    applied = take()
    assert applied["EventsApplied"] == 1 and applied["CasesOpened"] == 1
    assert has(applied, {"Send_push_sent": 1, "Send_dm_sent": 1, "Send_incentive_sent": 1})

    # Whop redelivers it: accepted again, applied once.
    assert pipeline.deliver(msg_id, failed).status_code == 200
    pipeline.drain()
    assert take()["EventsDuplicate"] == 1

    # The member follows the link in the nudge, then pays: the case is recovered.
    token = pipeline.rows(company, "SELECT link_token FROM recovery_cases WHERE membership_id = 'mem_ok'")
    assert pipeline.client.http.get(f"/r/{token[0]['link_token']}").status_code == 302
    assert take() == {"LinkClick_redirect": 1}
    paid = payment_event("payment.succeeded", at=NOW, membership="mem_ok", user="user_ok",
                            payment="pay_ok")
    assert _deliver_signed(pipeline, paid).status_code == 200
    assert take()["WebhookType_payment_succeeded"] == 1
    pipeline.drain()
    assert take()["CasesRecovered"] == 1

    # Every other handled type, and one Rebound ignores ("other": never the raw type).
    for kind in ("membership.activated", "membership.deactivated", "membership.cancel_at_period_end_changed"):
        event = membership_event(kind, membership="mem_types", at=NOW)
        assert _deliver_signed(pipeline, event).status_code == 200
    event = payment_event("payment.requires_action", at=NOW, membership="mem_types", user="user_types")
    assert _deliver_signed(pipeline, event).status_code == 200
    assert _deliver_signed(pipeline, card_saved_event(user="user_types", at=NOW)).status_code == 200
    assert _deliver_signed(pipeline, payment_event("refund.created", at=NOW)).status_code == 200
    types = take()
    assert types == {"Webhook_queued": 5, "Webhook_ignored": 1, "WebhookType_membership_activated": 1,
                     "WebhookType_membership_deactivated": 1, "WebhookType_payment_requires_action": 1,
                     "WebhookType_membership_cancel_at_period_end_changed": 1,
                     "WebhookType_setup_intent_succeeded": 1, "WebhookType_other": 1}

    # Signed but unusable: acknowledged, kept as a poison record by the consumer.
    assert _deliver_signed(pipeline, ("msg_unusable", b"not json \x00")).status_code == 200
    assert take() == {"Webhook_ignored_unusable": 1}
    pipeline.drain()
    assert take()["EventsPoisoned"] == 1

    # Refused by the route: each verification failure, a huge body, the queue down.
    event = payment_event("payment.failed", at=NOW, membership="mem_never")
    msg_id, body = event
    assert pipeline.client.http.post("/webhooks/whop", body=body, headers={}).status_code == 401
    headers = {**sign(body, msg_id), "webhook-timestamp": "soon"}
    assert pipeline.deliver(msg_id, body, headers).status_code == 401
    assert _deliver_signed(pipeline, event, at=NOW - timedelta(hours=1)).status_code == 401
    assert _deliver_signed(pipeline, event, secret="ws_someone_else").status_code == 401
    assert pipeline.deliver("msg_big", b"{" + b" " * (256 * 1024) + b"}").status_code == 413
    assert take() == {"Webhook_rejected_missing_headers": 1, "Webhook_rejected_bad_timestamp": 1,
                      "Webhook_rejected_stale_timestamp": 1, "Webhook_rejected_bad_signature": 1,
                      "Webhook_too_large": 1}
    monkeypatch.setenv("EVENTS_QUEUE_URL", pipeline.queues.queue_url + "-missing")
    config.reset_config()
    queue.reset_queue()
    assert _deliver_signed(pipeline, event).status_code == 503
    assert take() == {"Webhook_queue_unavailable": 1}
    monkeypatch.setenv("EVENTS_QUEUE_URL", pipeline.queues.queue_url)
    config.reset_config()
    queue.reset_queue()

    # Straight into the queue: a message from before the minimised format (an ignored type), and
    # one we never wrote (it fails until the DLQ takes it).
    legacy = {"webhook_id": {"DataType": "String", "StringValue": "msg_legacy"},
              "received_at": {"DataType": "String", "StringValue": NOW.isoformat()}}
    old_body = json.dumps({"id": "msg_legacy", "type": "refund.created", "data": {}})
    url = pipeline.queues.queue_url
    pipeline.sqs.send_message(QueueUrl=url, MessageAttributes=legacy, MessageBody=old_body)
    pipeline.sqs.send_message(QueueUrl=url, MessageBody="{}")
    pipeline.drain()
    stray = take()
    assert stray["EventsIgnored"] == 1 and stray["EventRecordsFailed"] >= 1

    # Whop is down at T+0: every send retries; then it refuses them for good (a tick).
    pipeline.whop.inject("POST", "/.*", "500", times=None)
    event = payment_event("payment.failed", at=NOW - timedelta(hours=2), membership="mem_retry",
                          user="user_retry", payment="pay_retry")
    assert _deliver_signed(pipeline, event).status_code == 200
    pipeline.drain()
    retrying = take()
    assert has(retrying, {"Send_push_retrying": 1, "Send_dm_retrying": 1, "Send_incentive_retrying": 1})
    assert retrying["WhopUnavailable"] == 3
    owner.run("UPDATE recovery_actions SET due_at = now() - interval '1 minute' WHERE status = 'pending'")
    pipeline.whop.clear_faults()
    pipeline.whop.inject("POST", "/.*", "422", times=None)
    _tick()
    refused = take()
    assert has(refused, {"Send_push_failed": 1, "Send_dm_failed": 1, "Send_incentive_failed": 1})
    assert refused["EffectsFailed"] == 3 and refused["TickCompleted"] == 1

    # Another member, and Whop in trouble each its own way (our key refused for the push, rate
    # limits on DMs, down for the incentive) until the case's 14 days pass: every retry given up.
    pipeline.whop.clear_faults()
    pipeline.whop.inject("POST", "/notifications", "401", times=None)
    pipeline.whop.inject("POST", "/messages", "429", times=None)
    pipeline.whop.inject("POST", "/memberships/.*", "500", times=None)
    event = payment_event("payment.failed", at=NOW - timedelta(hours=3), membership="mem_late",
                          user="user_late", payment="pay_late")
    assert _deliver_signed(pipeline, event).status_code == 200
    pipeline.drain()
    trouble = take()
    assert has(trouble, {"WhopAuthRefused": 1, "WhopRateLimited": 1, "WhopUnavailable": 1})
    stats = effects.execute_owed(effects.default_context(), company, NOW + timedelta(days=15))
    metrics.flush_metrics()
    late = take()
    assert stats.skipped == 3
    assert has(late, {"Send_push_skipped": 1, "Send_dm_skipped": 1, "Send_incentive_skipped": 1})
    assert late["EffectsAbandoned"] == 3

    # A creator's manual nudge (the tracked-link case is recovered: nudge the refused one).
    pipeline.whop.clear_faults()
    pipeline.whop.set_access("user_admin", company, "admin")
    _admin_acts_on_case(pipeline, company, "mem_retry", "nudge")
    assert take()["ManualNudges"] == 1

    # Smart retry (issue 18), in a company of its own with it on: a saved card attached; one
    # refused for a permission the app lacks; a creator's manual retry of a payment.
    sr = "biz_smart"
    for n, decline in ((1, "expired_card"), (2, "expired_card"), (3, "insufficient_funds"),
                       (4, "insufficient_funds")):
        member, user = f"mem_sr{n}", f"user_sr{n}"
        pipeline.whop.add_membership(member, company_id=sr, user_id=user)
        pipeline.whop.add_payment(f"pay_sr{n}", company_id=sr, membership_id=member, user_id=user)
        pipeline.whop.add_payment_method(f"payt_sr{n}", user_id=user, company_id=sr)
        fail = payment_event("payment.failed", company=sr, at=NOW - timedelta(hours=1), membership=member,
                             user=user, payment=f"pay_sr{n}", decline_code=decline)
        assert _deliver_signed(pipeline, fail).status_code == 200
    pipeline.drain()
    take()
    assert _deliver_signed(pipeline, card_saved_event(company=sr, user="user_sr1", payment_method="payt_sr1",
                                                      at=NOW)).status_code == 200
    pipeline.drain()
    assert take()["Send_attach_sent"] == 1
    pipeline.whop.deny_permission("member:payment_methods:manage")
    assert _deliver_signed(pipeline, card_saved_event(company=sr, user="user_sr2", payment_method="payt_sr2",
                                                      at=NOW)).status_code == 200
    pipeline.drain()
    refused = take()
    assert refused["Send_attach_failed"] == 1 and refused["WhopPermissionMissing"] == 1
    pipeline.whop.deny_permission("member:payment_methods:manage", denied=False)
    pipeline.whop.set_access("user_admin", sr, "admin")
    _admin_acts_on_case(pipeline, sr, "mem_sr3", "retry")
    retried = take()
    assert retried["ManualRetries"] == 1 and retried["Send_retry_sent"] == 1
    pipeline.whop.payments["pay_sr4"].retries = 1  # retried elsewhere already: Whop answers 400
    case_id = pipeline.rows(sr, "SELECT id::text FROM recovery_cases WHERE membership_id = 'mem_sr4'")
    resp = pipeline.client.http.post(
        f"/api/companies/{sr}/cases/{case_id[0]['id']}/retry", body=b"",
        headers={"x-whop-user-token": pipeline.whop.mint_user_token("user_admin"),
                 "content-type": "application/json"})
    assert resp.status_code == 409, resp.body
    assert take()["Send_retry_failed"] == 1

    # The database goes away: the creator API answers 503 and says so (DatabaseDownAlarm).
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody:pw@127.0.0.1:9/rebound?sslmode=disable")
    config.reset_config()
    tenancy.reset_database()
    token = pipeline.whop.mint_user_token("user_admin")
    resp = pipeline.client.http.get(f"/api/companies/{company}/settings",
                                    headers={"x-whop-user-token": token})
    assert resp.status_code == 503
    assert take()["DatabaseUnavailable"] == 1

    # What the packaged dashboard and alarms read (the same functions `make package` calls).
    from app import app

    template = st.split(chalice_template(), st.app_routes(app), st.load_settings())
    shown = st.dashboard_metric_names(template, "Rebound")
    # Per-route metrics are every route's (tests/test_alarms.py, tests/test_route_metrics.py).
    alarmed = {n for names in st.alarm_metric_names(template, "Rebound").values() for n in names
               if not n.startswith(ROUTE_METRIC)}
    assert len(shown) >= 40 and {"CasesRecovered", "WebhookType_other", "Send_incentive_failed"} <= shown
    assert sorted((shown | alarmed) - set(seen)) == []


def chalice_template() -> dict[str, Any]:
    """The smallest template ``split`` accepts: what ``chalice package`` gives, without running it."""
    from app import app

    paths: dict[str, Any] = {}
    for route in st.app_routes(app):
        paths.setdefault(route.path, {})[route.method.lower()] = {
            "x-amazon-apigateway-integration": {"uri": "chalice"}}
    function = {"Type": "AWS::Serverless::Function", "Properties": {
        "Handler": "app.app", "Environment": {"Variables": {"POWERTOOLS_METRICS_NAMESPACE": "Rebound"}}}}
    return {"Resources": {
        "APIHandler": function,
        "ProcessEvents": json.loads(json.dumps(function)),
        "ProcessReminders": json.loads(json.dumps(function)),
        "RestAPI": {"Type": "AWS::Serverless::Api", "Properties": {
            "StageName": "api", "DefinitionBody": {"info": {"title": "rebound"}, "paths": paths}}}}}


def test_with_metrics_off_nothing_is_kept_or_printed(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # make dev, chaos and the load test turn metrics off. Powertools would keep collecting (its
    # flush prints nothing, so never clears) and print a set anyway once a metric holds 100
    # values: the chaos report filled with EMF lines.
    from chalicelib.observability import MetricUnit, count, measure

    metrics.clear_metrics()
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    for _ in range(150):
        count("EffectsSent")
        measure("RouteLatency_health", 1.5, MetricUnit.Milliseconds)
    assert metrics.metric_set == {}
    assert "_aws" not in capsys.readouterr().out
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED")
    count("EffectsSent")
    assert "EffectsSent" in metrics.metric_set
    metrics.clear_metrics()
