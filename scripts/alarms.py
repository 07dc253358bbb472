"""The stack's alarms: few, guarded, grouped by failure domain, each with a severity and a playbook.

Pure, like ``split_template``: ``alarm_resources(...)`` returns CloudFormation resources.

Two severities, two SNS topics (``PageTopic``, ``TicketTopic``, infra/merge-template.json):

- **page**: something members or creators feel now. Page-severity *metric* alarms have no
  actions of their own; each belongs to a composite alarm of its failure domain, and only the
  composites page, so one outage pages once:

  | composite | children |
  |---|---|
  | ``DatabaseDownAlarm`` | ``DatabaseUnavailableAlarm``, ``DatabaseConnectionsAlarm`` |
  | ``WhopDownAlarm`` | ``WhopErrorRateAlarm`` |
  | ``PipelineStuckAlarm`` | ``WebhooksStoppedAlarm``, ``EventsAgeAlarm``, ``DeadLetterAgeAlarm``, |
  | | ``TickMissingAlarm`` |
  | ``ApiDegradedAlarm`` | ``Route<View>Alarm`` (one per route), ``ApiGatewayErrorsAlarm`` |

  ``DependenciesDownAlarm`` (database or Whop down) has no actions: it is the
  ``ActionsSuppressor`` of the last two, whose children a dependency outage also trips (routes
  answer 503, the consumer cannot apply events). The page-severity metric alarms are also the
  rollback triggers of each function's gradual deployment.
- **ticket**: worth a look in working hours (``EffectsFailedRateAlarm``, ``WebhookRefusedAlarm``,
  ``WhopRateLimitedAlarm``, ``WhopPermissionMissingAlarm``, ``TickDurationAlarm``): actions on
  the ticket topic.

Every alarm carries tags ``severity`` and ``playbook`` (its section in docs/runbook.md);
``tests/test_alarms.py`` checks both, and that every metric an alarm reads is emitted by the code.
Metrics are Powertools EMF in our namespace with the single dimension ``service`` = the stack's
name (two stages in one account never mix).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from chalicelib.claims import SEND_CHANNELS
from chalicelib.http import route_metric_names

PAGE, TICKET = "page", "ticket"
PAGE_TOPIC, TICKET_TOPIC = "PageTopic", "TicketTopic"
RUNBOOK = "docs/runbook.md"
PERIOD = 300

# Composite alarms: name -> (what it means, its children's suppressor or None).
DATABASE_DOWN, WHOP_DOWN = "DatabaseDownAlarm", "WhopDownAlarm"
PIPELINE_STUCK, API_DEGRADED = "PipelineStuckAlarm", "ApiDegradedAlarm"
DEPENDENCIES_DOWN = "DependenciesDownAlarm"

# Route alarms: a 5xx rate over this share with at least this many 5xx among at least this many
# requests in 5 minutes, or a p99 over the kind's ``latency_p99_ms`` with at least this many
# requests (a p99 of a handful of requests is just their maximum). A low-traffic route pages on
# three failures in a row; a busy one on a rate, never on one unlucky request.
ROUTE_MIN_REQUESTS = 3
ROUTE_MIN_ERRORS = 3
ROUTE_ERROR_RATE = 0.05
ROUTE_LATENCY_MIN_REQUESTS = 20


@dataclass(frozen=True)
class RouteAlarm:
    view: str  # the view function's name (the route label in the metric names)
    logical_id: str  # RouteGetKpisAlarm
    latency_p99_ms: int


def playbook_key(alarm_name: str) -> str:
    """The runbook section an alarm's playbook lives under (every route shares one)."""
    return "Route<View>Alarm" if alarm_name.startswith("Route") and alarm_name != "RouteAlarm" else alarm_name


def _tags(severity: str, name: str) -> list[dict[str, str]]:
    return [{"Key": "severity", "Value": severity},
            {"Key": "playbook", "Value": f"{RUNBOOK}: {playbook_key(name)}"}]


def _service() -> list[dict[str, Any]]:
    return [{"Name": "service", "Value": {"Ref": "AWS::StackName"}}]


def _stat(query_id: str, namespace: str, metric: str, stat: str,
          dimensions: list[dict[str, Any]] | None = None, period: int = PERIOD) -> dict[str, Any]:
    return {"Id": query_id, "ReturnData": False,
            "MetricStat": {"Metric": {"Namespace": namespace, "MetricName": metric,
                                      "Dimensions": _service() if dimensions is None else dimensions},
                           "Period": period, "Stat": stat}}


def _math(name: str, severity: str, description: str, queries: list[dict[str, Any]], expression: Any,
          *, periods: int = 1, to_alarm: int | None = None, threshold: float = 1,
          comparison: str = "GreaterThanOrEqualToThreshold", missing: str = "notBreaching") -> dict[str, Any]:
    props: dict[str, Any] = {
        "AlarmDescription": f"[{severity}] {description} ({RUNBOOK}, '{playbook_key(name)}')",
        "Metrics": [*queries, {"Id": "signal", "Expression": expression, "ReturnData": True,
                               "Label": name}],
        "EvaluationPeriods": periods, "Threshold": threshold, "ComparisonOperator": comparison,
        "TreatMissingData": missing, "Tags": _tags(severity, name)}
    if to_alarm is not None:
        props["DatapointsToAlarm"] = to_alarm
    if severity == TICKET:
        props["AlarmActions"] = [{"Ref": TICKET_TOPIC}]
    return {"Type": "AWS::CloudWatch::Alarm", "Properties": props}


def _single(name: str, severity: str, description: str, namespace: str, metric: str, stat: str,
            threshold: float, *, dimensions: list[dict[str, Any]] | None = None, periods: int = 1,
            comparison: str = "GreaterThanThreshold", missing: str = "notBreaching") -> dict[str, Any]:
    props: dict[str, Any] = {
        "AlarmDescription": f"[{severity}] {description} ({RUNBOOK}, '{playbook_key(name)}')",
        "Namespace": namespace, "MetricName": metric,
        "Dimensions": _service() if dimensions is None else dimensions,
        "Statistic": stat, "Period": PERIOD, "EvaluationPeriods": periods, "Threshold": threshold,
        "ComparisonOperator": comparison, "TreatMissingData": missing, "Tags": _tags(severity, name)}
    if severity == TICKET:
        props["AlarmActions"] = [{"Ref": TICKET_TOPIC}]
    return {"Type": "AWS::CloudWatch::Alarm", "Properties": props}


def _composite(name: str, description: str, children: Iterable[str], *, page: bool = True,
               suppressor: str | None = None) -> dict[str, Any]:
    rule = " OR ".join(f"ALARM(\"${{{child}}}\")" for child in children)
    props: dict[str, Any] = {
        "AlarmName": {"Fn::Sub": "${AWS::StackName}-" + name},
        "AlarmDescription": f"[{PAGE if page else 'suppressor'}] {description} ({RUNBOOK}, '{name}')",
        "AlarmRule": {"Fn::Sub": rule}, "Tags": _tags(PAGE if page else "none", name)}
    if page:
        props["AlarmActions"] = [{"Ref": PAGE_TOPIC}]
        props["OKActions"] = [{"Ref": PAGE_TOPIC}]
    if suppressor is not None:
        props["ActionsSuppressor"] = {"Ref": suppressor}
        # A dependency outage trips its own alarm a period or two after the symptoms: wait for it.
        props["ActionsSuppressorWaitPeriod"] = 2 * PERIOD
        props["ActionsSuppressorExtensionPeriod"] = 2 * PERIOD
    return {"Type": "AWS::CloudWatch::CompositeAlarm", "Properties": props}


def route_alarm(route: RouteAlarm, namespace: str) -> dict[str, Any]:
    latency, errors = route_metric_names(route.view)
    expression = (f"IF((n >= {ROUTE_MIN_REQUESTS} AND e >= {ROUTE_MIN_ERRORS}"
                  f" AND e / n >= {ROUTE_ERROR_RATE})"
                  f" OR (n >= {ROUTE_LATENCY_MIN_REQUESTS} AND p99 > {route.latency_p99_ms}), 1, 0)")
    return _math(route.logical_id, PAGE,
                 f"Route {route.view}: over {ROUTE_ERROR_RATE:.0%} answered 5xx (at least "
                 f"{ROUTE_MIN_ERRORS}), or p99 over {route.latency_p99_ms} ms, in 5 minutes",
                 [_stat("n", namespace, latency, "SampleCount"), _stat("p99", namespace, latency, "p99"),
                  _stat("errors", namespace, errors, "Sum"),
                  {"Id": "e", "Expression": "FILL(errors, 0)", "ReturnData": False}],
                 expression)


def _sends(namespace: str, outcome: str, prefix: str) -> list[dict[str, Any]]:
    return [_stat(f"{prefix}{i}", namespace, f"Send_{channel}_{outcome}", "Sum")
            for i, channel in enumerate(SEND_CHANNELS)]


def _sum(prefix: str, count: int) -> str:
    return " + ".join(f"FILL({prefix}{i}, 0)" for i in range(count))


def alarm_resources(routes: Iterable[RouteAlarm], namespace: str, *, tick_timeout_s: int,
                    webhook_silence_minutes: int) -> dict[str, Any]:
    """Every alarm of the stack, keyed by logical id."""
    routes = list(routes)
    out: dict[str, Any] = {}
    sqs = "AWS/SQS"

    # --- database --------------------------------------------------------------------------
    out["DatabaseUnavailableAlarm"] = _single(
        "DatabaseUnavailableAlarm", PAGE, "Transactions could not start: the database (or RDS Proxy) "
        "is unreachable, refusing logins or out of connections, 5 or more times in 5 minutes",
        namespace, "DatabaseUnavailable", "Sum", 5, comparison="GreaterThanOrEqualToThreshold")
    out["DatabaseConnectionsAlarm"] = _math(
        "DatabaseConnectionsAlarm", PAGE,
        "Connections to the database instance over 90% of max_connections",
        [_stat("conn", "AWS/RDS", "DatabaseConnections", "Maximum",
               [{"Name": "DBInstanceIdentifier", "Value": {"Ref": "DatabaseInstanceId"}}])],
        {"Fn::Sub": "100 * conn / ${DatabaseMaxConnections}"}, threshold=90)

    # --- Whop --------------------------------------------------------------------------------
    trouble = [_stat("unavailable", namespace, "WhopUnavailable", "Sum"),
               _stat("auth", namespace, "WhopAuthRefused", "Sum"),
               _stat("limited", namespace, "WhopRateLimited", "Sum")]
    attempts = (f"FILL(unavailable, 0) + FILL(auth, 0) + FILL(limited, 0) + {_sum('s', 3)}"
                f" + {_sum('f', 3)}")
    out["WhopErrorRateAlarm"] = _math(
        "WhopErrorRateAlarm", PAGE,
        "Half or more of the sends to Whop met a 5xx, a timeout or our key refused (at least 10 "
        "sends) in 2 of 3 periods of 5 minutes",
        [*trouble, *_sends(namespace, "sent", "s"), *_sends(namespace, "failed", "f")],
        f"IF(({attempts}) >= 10 AND (FILL(unavailable, 0) + FILL(auth, 0)) / ({attempts}) >= 0.5, 1, 0)",
        periods=3, to_alarm=2)

    # --- the pipeline: webhooks in, queue, consumer, tick -------------------------------------
    accepted = [_stat("queued", namespace, "Webhook_queued", "Sum"),
                _stat("ignored", namespace, "Webhook_ignored", "Sum"),
                _stat("unusable", namespace, "Webhook_ignored_unusable", "Sum")]
    out["WebhooksStoppedAlarm"] = _math(
        "WebhooksStoppedAlarm", PAGE,
        f"No webhook accepted for {webhook_silence_minutes} minutes (no data counts as none)",
        accepted, "FILL(queued, 0) + FILL(ignored, 0) + FILL(unusable, 0)",
        periods=webhook_silence_minutes * 60 // PERIOD, threshold=1,
        comparison="LessThanThreshold", missing="breaching")
    out["EventsAgeAlarm"] = _single(
        "EventsAgeAlarm", PAGE, "The oldest queued webhook waits over 10 minutes (2 periods): the "
        "consumer is failing, throttled or paused", sqs, "ApproximateAgeOfOldestMessage", "Maximum",
        600, dimensions=[{"Name": "QueueName", "Value": {"Fn::GetAtt": ["EventsQueue", "QueueName"]}}],
        periods=2)
    out["DeadLetterAgeAlarm"] = _single(
        "DeadLetterAgeAlarm", PAGE, "A webhook sits in the DLQ (its age counts from when it was "
        "first queued, so it is over 30 minutes once there): inspect, fix, redrive", sqs,
        "ApproximateAgeOfOldestMessage", "Maximum", 1800,
        dimensions=[{"Name": "QueueName", "Value": {"Fn::GetAtt": ["EventsDeadLetterQueue", "QueueName"]}}])
    out["TickMissingAlarm"] = _single(
        "TickMissingAlarm", PAGE, "No reminder tick completed for 15 minutes", namespace,
        "TickCompleted", "SampleCount", 1, periods=3, comparison="LessThanThreshold", missing="breaching")

    # --- the API -----------------------------------------------------------------------------
    for route in routes:
        out[route.logical_id] = route_alarm(route, namespace)
    api = [{"Name": "ApiName", "Value": {"Ref": "AWS::StackName"}}, {"Name": "Stage", "Value": "api"}]
    out["ApiGatewayErrorsAlarm"] = _math(
        "ApiGatewayErrorsAlarm", PAGE,
        "API Gateway answered 5xx to over 5% of requests (at least 5) in 5 minutes: includes what "
        "the app cannot count itself (Lambda timeouts, failed cold starts, throttling)",
        [_stat("gw5xx", "AWS/ApiGateway", "5XXError", "Sum", api),
         _stat("requests", "AWS/ApiGateway", "Count", "SampleCount", api)],
        "IF(FILL(gw5xx, 0) >= 5 AND FILL(gw5xx, 0) / requests >= 0.05, 1, 0)")

    # --- tickets -----------------------------------------------------------------------------
    out["EffectsFailedRateAlarm"] = _math(
        "EffectsFailedRateAlarm", TICKET,
        "Whop refused over a quarter of the sends for good (at least 20 sends) in an hour: members "
        "blocking DMs are a few, not a quarter",
        [*_sends(namespace, "sent", "s"), *_sends(namespace, "failed", "f")],
        f"IF(({_sum('s', 3)} + {_sum('f', 3)}) >= 20 AND ({_sum('f', 3)}) / ({_sum('s', 3)} + "
        f"{_sum('f', 3)}) > 0.25, 1, 0)")
    for query in out["EffectsFailedRateAlarm"]["Properties"]["Metrics"]:
        if "MetricStat" in query:
            query["MetricStat"]["Period"] = 3600
    out["WebhookRefusedAlarm"] = _math(
        "WebhookRefusedAlarm", TICKET,
        "Webhooks signed with another secret (30 or more) and not one accepted, for 30 minutes: a "
        "one-sided secret rotation. Unsigned or malformed requests never count, and while Whop's "
        "deliveries are accepted no amount of forged ones trips it",
        [_stat("badsig", namespace, "Webhook_rejected_bad_signature", "Sum", period=1800),
         *[{**q, "MetricStat": {**q["MetricStat"], "Period": 1800}} for q in accepted]],
        "IF(FILL(badsig, 0) >= 30 AND FILL(queued, 0) + FILL(ignored, 0) + FILL(unusable, 0) == 0, 1, 0)")
    out["WhopRateLimitedAlarm"] = _single(
        "WhopRateLimitedAlarm", TICKET, "Whop answered 429 to over 10 sends in each of 3 periods of "
        "5 minutes", namespace, "WhopRateLimited", "Sum", 10, periods=3)
    out["WhopPermissionMissingAlarm"] = _single(
        "WhopPermissionMissingAlarm", TICKET, "Whop refused a card attach or a payment retry for a "
        "permission the app lacks (smart retry): a creator's install or the app's scopes need it",
        namespace, "WhopPermissionMissing", "Sum", 0)
    out["TickDurationAlarm"] = _single(
        "TickDurationAlarm", TICKET, "A reminder tick took over 80% of its timeout", namespace,
        "TickDurationMs", "Maximum", round(tick_timeout_s * 1000 * 0.8))

    # --- composites --------------------------------------------------------------------------
    out[DATABASE_DOWN] = _composite(DATABASE_DOWN, "The database is down, refusing us or out of "
                                    "connections", ["DatabaseUnavailableAlarm", "DatabaseConnectionsAlarm"])
    out[WHOP_DOWN] = _composite(WHOP_DOWN, "Whop is down for us (5xx, timeouts, or our key refused)",
                                ["WhopErrorRateAlarm"])
    out[DEPENDENCIES_DOWN] = _composite(DEPENDENCIES_DOWN, "The database or Whop is down (suppresses "
                                        "the pages their outage would also cause)",
                                        [DATABASE_DOWN, WHOP_DOWN], page=False)
    out[PIPELINE_STUCK] = _composite(
        PIPELINE_STUCK, "Webhooks are not arriving, waiting, dead-lettered, or the tick stopped",
        ["WebhooksStoppedAlarm", "EventsAgeAlarm", "DeadLetterAgeAlarm", "TickMissingAlarm"],
        suppressor=DEPENDENCIES_DOWN)
    out[API_DEGRADED] = _composite(
        API_DEGRADED, "A route fails or is slow (app 5xx and p99 per route; gateway 5xx)",
        [*(r.logical_id for r in routes), "ApiGatewayErrorsAlarm"], suppressor=DEPENDENCIES_DOWN)
    return out


# --- reading a rendered template (tests, docs) ---------------------------------------------------


def alarms(template: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items()
            if v.get("Type") in ("AWS::CloudWatch::Alarm", "AWS::CloudWatch::CompositeAlarm")}


def tag(resource: Mapping[str, Any], key: str) -> str | None:
    for item in resource.get("Properties", {}).get("Tags", []):
        if item.get("Key") == key:
            return str(item.get("Value"))
    return None


def composite_children(resource: Mapping[str, Any]) -> set[str]:
    """The logical ids a composite alarm's rule names (its ``${Id}`` references)."""
    import re

    rule = resource["Properties"]["AlarmRule"]
    text = rule["Fn::Sub"] if isinstance(rule, dict) else str(rule)
    return set(re.findall(r"\$\{(\w+)\}", text))


def alarm_metric_names(template: Mapping[str, Any], namespace: str = "Rebound") -> dict[str, set[str]]:
    """Metric alarm logical id -> the metric names in our namespace it reads."""
    found: dict[str, set[str]] = {}
    for name, resource in alarms(template).items():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = resource["Properties"]
        stats = [m["MetricStat"]["Metric"] for m in props.get("Metrics", []) if "MetricStat" in m]
        if "MetricName" in props:
            stats.append({"Namespace": props["Namespace"], "MetricName": props["MetricName"]})
        found[name] = {m["MetricName"] for m in stats if m["Namespace"] == namespace}
    return found


def rollback_alarms(function_views: Iterable[str], handler: str | None) -> list[str]:
    """The page-severity alarms that roll back a function's gradual deployment."""
    if handler == "process_events":
        return ["EventsAgeAlarm", "DeadLetterAgeAlarm"]
    if handler == "process_reminders":
        return ["TickMissingAlarm"]
    return [*(route_logical_id(view) for view in function_views), "ApiGatewayErrorsAlarm"]


def route_logical_id(view: str) -> str:
    return "Route" + "".join(p[:1].upper() + p[1:] for p in view.split("_") if p) + "Alarm"
