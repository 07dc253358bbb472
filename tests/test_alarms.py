"""The packaged template's alarms (scripts/alarms.py): fewer than before, each with a severity and
a playbook in docs/runbook.md, page severity only through composites (one outage pages once),
every route guarded, and every metric they read emitted by the code. Routes and metrics are
discovered from the app and the source, so routes added later are covered without editing this.
The metric-math expressions are evaluated here on sample data, to check what each guard lets
through and what it stops."""

from __future__ import annotations

import re
from typing import Any

import pytest

from scripts import alarms as al
from scripts import split_template as st
from tests.conftest import ROOT, Packaged
from tests.test_metrics import emitted_names, is_emitted

ALARMS_BEFORE_ISSUE_19 = 61
NAMESPACE = "Rebound"


@pytest.fixture(scope="module")
def routes() -> list[st.Route]:
    from app import app

    return st.app_routes(app)


def runbook_sections() -> set[str]:
    text = (ROOT / "docs" / "runbook.md").read_text()
    return set(re.findall(r"^#{2,4} `([^`]+)`", text, flags=re.MULTILINE))


def test_fewer_alarms_than_before_each_with_a_severity_and_a_playbook_section(packaged: Packaged) -> None:
    template, _, _ = packaged
    found = al.alarms(template)
    assert 0 < len(found) < ALARMS_BEFORE_ISSUE_19, len(found)
    sections = runbook_sections()
    for name, resource in found.items():
        severity = al.tag(resource, "severity")
        assert severity in (al.PAGE, al.TICKET, "none"), name
        playbook = al.tag(resource, "playbook")
        assert playbook == f"docs/runbook.md: {al.playbook_key(name)}", name
        assert al.playbook_key(name) in sections, f"docs/runbook.md has no section `{al.playbook_key(name)}`"
        assert f"'{al.playbook_key(name)}'" in resource["Properties"]["AlarmDescription"], name


def test_only_composites_page_and_every_page_metric_alarm_belongs_to_one(packaged: Packaged) -> None:
    template, _, _ = packaged
    found = al.alarms(template)
    composites = {k: v for k, v in found.items() if v["Type"] == "AWS::CloudWatch::CompositeAlarm"}
    children = {child for c in composites.values() for child in al.composite_children(c)}
    for name, resource in found.items():
        props, severity = resource["Properties"], al.tag(resource, "severity")
        if resource["Type"] == "AWS::CloudWatch::CompositeAlarm":
            if severity == al.PAGE:
                assert props["AlarmActions"] == [{"Ref": "PageTopic"}], name
            else:
                assert "AlarmActions" not in props, name  # the suppressor pages nobody itself
            assert al.composite_children(resource) <= set(found), name
        elif severity == al.PAGE:
            assert "AlarmActions" not in props, f"{name} would page on its own"
            assert name in children, f"{name} is page severity but in no composite"
        else:
            assert severity == al.TICKET and props["AlarmActions"] == [{"Ref": "TicketTopic"}], name
    # A database or Whop outage trips route and pipeline alarms too: those composites wait for it.
    for name in (al.API_DEGRADED, al.PIPELINE_STUCK):
        assert composites[name]["Properties"]["ActionsSuppressor"] == {"Ref": al.DEPENDENCIES_DOWN}
    assert al.composite_children(composites[al.DEPENDENCIES_DOWN]) == {al.DATABASE_DOWN, al.WHOP_DOWN}
    assert template["Resources"]["PageTopic"]["Type"] == template["Resources"]["TicketTopic"]["Type"] == (
        "AWS::SNS::Topic")


def test_every_route_has_its_own_guarded_alarm_in_the_api_composite(packaged: Packaged,
                                                                     routes: list[st.Route]) -> None:
    template, _, _ = packaged
    found = al.alarms(template)
    api = al.composite_children(found[al.API_DEGRADED])
    for route in routes:
        name = al.route_logical_id(route.view_name)
        assert name in found and name in api, route
        latency, errors = f"RouteLatency_{route.view_name}", f"Route5xx_{route.view_name}"
        assert al.alarm_metric_names(template, NAMESPACE)[name] == {latency, errors}
    assert len([n for n in found if n.startswith("Route")]) == len({r.view_name for r in routes})


def test_every_metric_an_alarm_reads_is_emitted_by_the_code(packaged: Packaged) -> None:
    from app import app
    from chalicelib import claims

    template, _, _ = packaged
    exact, prefixes, literals = emitted_names()
    # Sends count under claims.send_metric's names (push and DM by channel, incentives by kind).
    exact |= {claims.send_metric(kind, channel, outcome) or "" for outcome in claims.SEND_OUTCOMES
              for kind, channel in (("nudge", "push"), ("nudge", "dm"), ("incentive", None))}
    # Route metrics are named after each view by handle_errors, which wraps every route.
    route_metrics: set[str] = set()
    for path, methods in app.routes.items():
        for method, entry in methods.items():
            names = getattr(entry.view_function, "route_metrics", None)
            assert names == (f"RouteLatency_{entry.view_name}", f"Route5xx_{entry.view_name}"), (
                f"{method} {path} is not wrapped by handle_errors: no per-route metrics")
            route_metrics |= set(names)
    read = al.alarm_metric_names(template, NAMESPACE)
    missing = {alarm: sorted(n for n in names if n not in route_metrics
                             and not is_emitted(n, exact, prefixes, literals))
               for alarm, names in read.items()}
    assert not any(missing.values()), missing
    assert {n for names in read.values() for n in names} & route_metrics, "route alarms read route metrics"


# --- what the guards let through: the alarms' metric math evaluated on sample data ---------------


def evaluate(expression: str, values: dict[str, float | None]) -> float | None:
    """CloudWatch metric math, for the functions these alarms use (IF, FILL, AND, OR, + - * /,
    comparisons), on one datapoint. None is a missing datapoint: an expression that uses one
    outside FILL has no datapoint either (None, like CloudWatch's empty result)."""
    python = re.sub(r"\bAND\b", " and ", re.sub(r"\bOR\b", " or ", expression))

    def fill(value: float | None, default: float) -> float:
        return default if value is None else value

    def if_(condition: Any, yes: float, no: float) -> float:
        return yes if condition else no

    try:
        return float(eval(python, {"__builtins__": {}}, {"IF": if_, "FILL": fill, **values}))  # noqa: S307
    except TypeError:  # arithmetic or a comparison on a missing datapoint
        return None


def signal(template: dict[str, Any], name: str) -> str:
    props = template["Resources"][name]["Properties"]
    expression = next(m["Expression"] for m in props["Metrics"] if m.get("ReturnData"))
    nested = {m["Id"]: m["Expression"] for m in props["Metrics"]
              if "Expression" in m and not m.get("ReturnData")}
    for query_id, inner in nested.items():
        expression = re.sub(rf"\b{query_id}\b", f"({inner})", expression)
    return str(expression if isinstance(expression, str) else expression["Fn::Sub"])


def test_route_alarm_needs_three_failures_and_five_percent_or_a_slow_p99_over_twenty_requests(
        packaged: Packaged) -> None:
    template, _, _ = packaged
    expression = signal(template, al.route_logical_id("get_kpis"))
    threshold = template["Resources"]["RouteGetKpisAlarm"]["Properties"]["Threshold"]

    def fires(n: float, errors: float | None, p99: float) -> bool:
        value = evaluate(expression, {"n": n, "errors": errors, "p99": p99})
        return value is not None and value >= threshold

    assert fires(3, 3, 50), "a low-traffic route failing every time pages"
    assert not fires(2, 2, 50), "two failures are not yet a pattern"
    assert not fires(1000, 40, 50), "4% is under the rate"
    assert fires(1000, 60, 50)
    assert not fires(100, None, 50), "no 5xx at all (no datapoint) is healthy"
    assert not fires(10, None, 60_000), "a slow p99 of ten requests is just their slowest"
    assert fires(20, None, 5_001) and not fires(20, None, 4_999)


def test_whop_down_needs_half_of_ten_sends_failing_on_whop(packaged: Packaged) -> None:
    template, _, _ = packaged
    expression = signal(template, "WhopErrorRateAlarm")
    zero = {k: None for k in ("unavailable", "auth", "limited", "s0", "s1", "s2", "f0", "f1", "f2")}
    assert evaluate(expression, {**zero, "unavailable": 6, "s0": 4}) == 1
    assert evaluate(expression, {**zero, "auth": 10}) == 1, "our key refused is Whop down for us"
    assert evaluate(expression, {**zero, "unavailable": 4, "s0": 5}) == 0, "four of nine sends"
    assert evaluate(expression, {**zero, "unavailable": 2, "f0": 10}) == 0, \
        "members refusing is not Whop down"


def test_effects_failed_is_a_rate_over_an_hour_not_one_row(packaged: Packaged) -> None:
    template, _, _ = packaged
    props = template["Resources"]["EffectsFailedRateAlarm"]["Properties"]
    assert {m["MetricStat"]["Period"] for m in props["Metrics"] if "MetricStat" in m} == {3600}
    expression = signal(template, "EffectsFailedRateAlarm")
    none = {k: None for k in ("s0", "s1", "s2", "f0", "f1", "f2")}
    assert evaluate(expression, {**none, "f0": 1}) == 0, "one refused send (a member who blocks DMs)"
    assert evaluate(expression, {**none, "s0": 100, "f1": 20}) == 0, "a sixth"
    assert evaluate(expression, {**none, "s0": 30, "f1": 20}) == 1, "two fifths"


def test_forged_webhooks_cannot_trip_the_refused_alarm_while_whop_gets_through(packaged: Packaged) -> None:
    template, _, _ = packaged
    expression = signal(template, "WebhookRefusedAlarm")
    names = al.alarm_metric_names(template, NAMESPACE)["WebhookRefusedAlarm"]
    assert "Webhook_rejected_missing_headers" not in names and "Webhook_rejected_bad_timestamp" not in names
    assert evaluate(expression, {"badsig": 100_000, "queued": 1, "ignored": None, "unusable": None}) == 0
    assert evaluate(expression, {"badsig": 30, "queued": None, "ignored": None, "unusable": None}) == 1, \
        "a one-sided rotation: Whop's retries refused and nothing accepted"
    assert evaluate(expression, {"badsig": 29, "queued": None, "ignored": None, "unusable": None}) == 0


def test_silence_pages_and_missing_data_counts_as_silence(packaged: Packaged) -> None:
    template, _, _ = packaged
    props = template["Resources"]["WebhooksStoppedAlarm"]["Properties"]
    assert props["TreatMissingData"] == "breaching" and props["ComparisonOperator"] == "LessThanThreshold"
    assert props["EvaluationPeriods"] * 300 == st.load_settings().webhook_silence_minutes * 60
    assert "DatapointsToAlarm" not in props, "every period of the window must be silent"
    expression = signal(template, "WebhooksStoppedAlarm")
    assert evaluate(expression, {"queued": None, "ignored": 1, "unusable": None}) >= props["Threshold"]
    tick = template["Resources"]["TickMissingAlarm"]["Properties"]
    assert tick["TreatMissingData"] == "breaching" and tick["Period"] * tick["EvaluationPeriods"] == 900


def test_the_dead_letter_and_queue_alarms_watch_this_stacks_queues(packaged: Packaged) -> None:
    template, _, _ = packaged
    res = template["Resources"]
    dlq = res["DeadLetterAgeAlarm"]["Properties"]
    assert dlq["MetricName"] == "ApproximateAgeOfOldestMessage"
    assert dlq["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["EventsDeadLetterQueue", "QueueName"]}
    assert res["EventsAgeAlarm"]["Properties"]["Dimensions"][0]["Value"] == {
        "Fn::GetAtt": ["EventsQueue", "QueueName"]}
    timeout_ms = res["ProcessReminders"]["Properties"]["Timeout"] * 1000
    assert 0.5 * timeout_ms < res["TickDurationAlarm"]["Properties"]["Threshold"] < timeout_ms
    for name, resource in al.alarms(template).items():  # the stack's service, never a tenant
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = resource["Properties"]
        dims = props.get("Dimensions", []) + [d for m in props.get("Metrics", []) if "MetricStat" in m
                                              for d in m["MetricStat"]["Metric"]["Dimensions"]]
        assert {d["Name"] for d in dims} <= {"service", "QueueName", "ApiName", "Stage",
                                             "DBInstanceIdentifier"}, name
        for d in dims:
            if d["Name"] in ("service", "ApiName"):
                assert d["Value"] == {"Ref": "AWS::StackName"}, name


def test_each_functions_gradual_deployment_rolls_back_on_its_page_alarms(packaged: Packaged) -> None:
    template, _, _ = packaged
    res = template["Resources"]
    found = al.alarms(template)
    for logical, resource in res.items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        props = resource["Properties"]
        assert props["AutoPublishAlias"] == "live", logical
        triggers = [a["Ref"] for a in props["DeploymentPreference"]["Alarms"]]
        assert triggers, logical
        for trigger in triggers:
            assert al.tag(found[trigger], "severity") == al.PAGE, (logical, trigger)
            assert found[trigger]["Type"] == "AWS::CloudWatch::Alarm", "CodeDeploy watches metric alarms"


def test_the_readme_alarm_table_lists_every_alarm_with_its_severity(packaged: Packaged) -> None:
    template, _, _ = packaged
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Alarms"):readme.index("### Deploys and rollback")]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)`(?: \(one per route\))? \| ([^|]+) \|",
                                                         table, flags=re.MULTILINE)}
    for name, resource in al.alarms(template).items():
        key = al.playbook_key(name)
        assert key in rows, f"README's alarm table has no row for {key}"
        severity = al.tag(resource, "severity")
        assert rows[key].startswith(severity if severity != "none" else "none"), (key, rows[key])
    count = len(al.alarms(template))
    assert f"{count} alarms (there were {ALARMS_BEFORE_ISSUE_19})" in table


def test_no_function_is_traced(packaged: Packaged) -> None:
    template, _, _ = packaged
    for logical, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            assert resource["Properties"]["Tracing"] == "PassThrough", logical
