"""Rewrite Chalice's SAM template: one Lambda function per HTTP route, each with its own role.

Chalice serves every route from one ``APIHandler`` with one role (aws/chalice#229, #1308), and
``chalice local`` plus the test client rely on that, so the split happens here, after
``chalice package``: every API Gateway method gets its own ``AWS::Serverless::Function``, named
after its view function, with the same code and the same ``app.app`` entry point (Chalice
dispatches on the route in the event), its own invoke permission, role, log group and alarms.
What each function may touch comes from ``infra/functions.toml``; nothing else is granted.

Pure: ``split(template, routes, settings)`` takes and returns dicts; no AWS, no files except
``load_settings``. Used by ``scripts/package.py``; tested by ``tests/test_package.py``.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The metric names the dashboard lists come from the code that emits them (fixed sets).
from chalicelib.claims import SEND_CHANNELS, SEND_OUTCOMES
from chalicelib.ingest import type_label
from chalicelib.models import EventType
from scripts import alarms

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_FILE = ROOT / "infra" / "functions.toml"

# Setting name -> template parameter holding its Secrets Manager ARN.
SECRET_PARAMETERS = {
    "DATABASE_URL": "DatabaseUrlSecretArn",
    "WHOP_API_KEY": "WhopApiKeySecretArn",
    "WHOP_WEBHOOK_SECRET": "WhopWebhookSecretArn",
    "SCHEDULER_SECRET": "SchedulerSecretArn",
    # Not a parameter: the template generates this secret (infra/merge-template.json, HealthSecret);
    # a Ref to it is its ARN all the same.
    "HEALTH_SECRET": "HealthSecret",
}
# Secrets a function may run without (the route answers 404 when unset): never "required".
OPTIONAL_SECRETS = {"SCHEDULER_SECRET"}
# Every function is published as a version behind this alias; API Gateway, SQS and the schedule
# call the alias, and CodeDeploy shifts it from the old version to the new one gradually.
ALIAS = "live"
# Plain settings every function receives from Globals (not secret, so no IAM grant is involved).
PLAIN_REQUIRED = ("WHOP_APP_ID", "EVENTS_QUEUE_URL", "PUBLIC_BASE_URL")
QUEUE_ACTIONS = {
    "send": ["sqs:SendMessage"],
    "status": ["sqs:GetQueueAttributes"],
    "consume": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes"],
}
# Lambda needs these to attach a function to the VPC; AWS only accepts "*" as their resource.
VPC_ACTIONS = ["ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces",
               "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses",
               "ec2:UnassignPrivateIpAddresses"]
HANDLER_IDS = {"process_events": "ProcessEvents", "process_reminders": "ProcessReminders"}
# The webhook route's rejections (webhook_signature.verify reasons, all 401): a spike means a wrong secret
# after rotation, a clock problem, or someone probing the endpoint.
# (A signed but unusable body is acknowledged, Webhook_ignored_unusable: Whop did nothing wrong.)
WEBHOOK_REJECTIONS = ("Webhook_rejected_missing_headers", "Webhook_rejected_bad_timestamp",
                      "Webhook_rejected_stale_timestamp", "Webhook_rejected_bad_signature")
# CodeDeploy's traffic-shifting types for Lambda (SAM DeploymentPreference.Type).
DEPLOYMENT_TYPES = {"AllAtOnce"} | {f"Canary10Percent{m}Minutes" for m in (5, 10, 15, 30)} | {
    f"Linear10PercentEvery{m}Minute{'s' if m > 1 else ''}" for m in (1, 2, 3, 10)}


class SettingsError(ValueError):
    """infra/functions.toml is inconsistent with the app (a route without a kind, a bad field)."""


@dataclass(frozen=True)
class Kind:
    name: str
    memory_mb: int
    timeout_s: int
    reserved_concurrency: int
    vpc: bool
    secrets: tuple[str, ...]
    queue: tuple[str, ...]
    db_pool_size: int = 0  # database connections one instance may open (0: no database)
    latency_p99_ms: int = 5000  # the route alarm's p99 threshold
    deployment: str = "Canary10Percent5Minutes"
    describe_secrets: tuple[str, ...] = ()  # may check these exist, never read their values
    failure_destination: bool = False  # failed asynchronous invocations go to TickFailureQueue


@dataclass(frozen=True)
class Route:
    view_name: str
    method: str
    path: str


@dataclass(frozen=True)
class FunctionSettings:
    kinds: dict[str, Kind]
    routes: dict[str, str]
    handlers: dict[str, str]
    path_defaults: dict[str, str] = field(default_factory=dict)
    groups: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    # Share of the instance's max_connections the functions may hold together (README, Operations).
    budget_share: float = 0.5
    webhook_silence_minutes: int = 60


@dataclass(frozen=True)
class FunctionPlan:
    name: str  # view function name (or group name): the Lambda's name suffix
    logical_id: str
    kind: Kind
    routes: tuple[Route, ...] = ()


KIND_FIELDS = {"memory_mb", "timeout_s", "reserved_concurrency", "vpc", "secrets", "queue",
               "db_pool_size", "latency_p99_ms", "deployment", "describe_secrets", "failure_destination"}


def _kind(name: str, raw: Mapping[str, Any]) -> Kind:
    unknown = set(raw) - KIND_FIELDS
    if unknown:
        raise SettingsError(f"kind {name!r}: unknown field(s) {sorted(unknown)}")
    secrets = tuple(raw.get("secrets", ()))
    describe = tuple(raw.get("describe_secrets", ()))
    for secret in (*secrets, *describe):
        if secret not in SECRET_PARAMETERS:
            raise SettingsError(f"kind {name!r}: unknown secret {secret!r}")
    queue = tuple(raw.get("queue", ()))
    for access in queue:
        if access not in QUEUE_ACTIONS:
            raise SettingsError(f"kind {name!r}: unknown queue access {access!r}")
    memory, timeout = int(raw.get("memory_mb", 512)), int(raw.get("timeout_s", 30))
    if not 128 <= memory <= 10240 or not 1 <= timeout <= 900:
        raise SettingsError(f"kind {name!r}: memory_mb 128-10240 and timeout_s 1-900")
    pool = int(raw.get("db_pool_size", 0))
    if ("DATABASE_URL" in secrets) != (pool > 0):
        raise SettingsError(f"kind {name!r}: db_pool_size (at least 1) goes with the DATABASE_URL "
                            "secret, and only with it")
    deployment = str(raw.get("deployment", "Canary10Percent5Minutes"))
    if deployment not in DEPLOYMENT_TYPES:
        raise SettingsError(f"kind {name!r}: deployment must be one of {sorted(DEPLOYMENT_TYPES)}")
    return Kind(name=name, memory_mb=memory, timeout_s=timeout,
                reserved_concurrency=int(raw.get("reserved_concurrency", 0)),
                vpc=bool(raw.get("vpc", False)), secrets=secrets, queue=queue, db_pool_size=pool,
                latency_p99_ms=int(raw.get("latency_p99_ms", 5000)), deployment=deployment,
                describe_secrets=describe, failure_destination=bool(raw.get("failure_destination", False)))


def parse_settings(raw: Mapping[str, Any]) -> FunctionSettings:
    kinds = {name: _kind(name, value) for name, value in raw.get("kinds", {}).items()}

    def known(kind: str, where: str) -> str:
        if kind not in kinds:
            raise SettingsError(f"{where}: unknown kind {kind!r}")
        return kind

    groups = {}
    for name, group in raw.get("groups", {}).items():
        groups[name] = (known(group["kind"], f"group {name!r}"), tuple(group["routes"]))
    budget = raw.get("budget", {})
    share = float(budget.get("share_of_max_connections", 0.5))
    if not 0 < share <= 0.9:
        raise SettingsError("budget.share_of_max_connections must be above 0 and at most 0.9")
    silence = int(raw.get("alarms", {}).get("webhook_silence_minutes", 60))
    if silence % 5 or not 15 <= silence <= 1440:
        raise SettingsError("alarms.webhook_silence_minutes: a multiple of 5, 15 to 1440")
    return FunctionSettings(
        kinds=kinds,
        routes={view: known(kind, f"route {view!r}") for view, kind in raw.get("routes", {}).items()},
        handlers={view: known(kind, f"handler {view!r}") for view, kind in raw.get("handlers", {}).items()},
        path_defaults={prefix: known(kind, f"path default {prefix!r}")
                       for prefix, kind in raw.get("path_defaults", {}).items()},
        groups=groups, budget_share=share, webhook_silence_minutes=silence)


def load_settings(path: Path = SETTINGS_FILE) -> FunctionSettings:
    with path.open("rb") as handle:
        return parse_settings(tomllib.load(handle))


def logical_id(name: str) -> str:
    """``get_kpis`` -> ``GetKpis`` (CloudFormation logical ids are alphanumeric)."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name) if part)


def app_routes(app: Any) -> list[Route]:
    """Every (view, method, path) of a Chalice app, from its route table."""
    return [Route(view_name=entry.view_name, method=method.upper(), path=path)
            for path, methods in app.routes.items() for method, entry in methods.items()]


def plan_functions(routes: Iterable[Route], settings: FunctionSettings) -> list[FunctionPlan]:
    """One function per route (or per group of routes); raise SettingsError for a route with no kind."""
    grouped = {view: name for name, (_, views) in settings.groups.items() for view in views}
    by_function: dict[str, list[Route]] = {}
    kinds: dict[str, Kind] = {}
    for route in sorted(routes, key=lambda r: (r.path, r.method)):
        group = grouped.get(route.view_name)
        if group is not None:
            name, kind = group, settings.groups[group][0]
        else:
            name, kind = route.view_name, _route_kind(route, settings)
        by_function.setdefault(name, []).append(route)
        kinds[name] = settings.kinds[kind]
    plans = [FunctionPlan(name=name, logical_id=logical_id(name), kind=kinds[name], routes=tuple(rs))
             for name, rs in by_function.items()]
    ids = [p.logical_id for p in plans] + list(HANDLER_IDS.values())
    clashes = {i for i in ids if ids.count(i) > 1}
    if clashes:
        raise SettingsError(f"function names clash: {sorted(clashes)}")
    return plans


def _route_kind(route: Route, settings: FunctionSettings) -> str:
    if route.view_name in settings.routes:
        return settings.routes[route.view_name]
    for prefix, kind in settings.path_defaults.items():
        if route.path.startswith(prefix):
            return kind
    raise SettingsError(f"route {route.method} {route.path} ({route.view_name}) has no kind in "
                        "infra/functions.toml: add it under [routes]")


# --- IAM -----------------------------------------------------------------------------------------


def _secret_ref(secret: str) -> Any:
    ref = {"Ref": SECRET_PARAMETERS[secret]}
    if secret in OPTIONAL_SECRETS:
        return {"Fn::If": ["HasSchedulerSecret", ref, {"Ref": "AWS::NoValue"}]}
    return ref


def policy_statements(plan: FunctionPlan) -> list[dict[str, Any]]:
    """Exactly what this function's kind uses: its log group, its secrets, its queue actions."""
    statements: list[dict[str, Any]] = [{
        "Effect": "Allow",
        "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": {"Fn::Sub": "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}"
                                ":log-group:/aws/lambda/${AWS::StackName}-" + plan.name + ":*"},
    }]
    if plan.kind.secrets:
        statements.append({"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"],
                           "Resource": [_secret_ref(s) for s in plan.kind.secrets]})
    if plan.kind.describe_secrets:
        statements.append({"Effect": "Allow", "Action": ["secretsmanager:DescribeSecret"],
                           "Resource": [_secret_ref(s) for s in plan.kind.describe_secrets]})
    actions = sorted({a for access in plan.kind.queue for a in QUEUE_ACTIONS[access]})
    if actions:
        statements.append({"Effect": "Allow", "Action": actions,
                           "Resource": {"Fn::GetAtt": ["EventsQueue", "Arn"]}})
    if plan.kind.failure_destination:
        statements.append({"Effect": "Allow", "Action": ["sqs:SendMessage"],
                           "Resource": {"Fn::GetAtt": ["TickFailureQueue", "Arn"]}})
    if plan.kind.vpc:
        statements.append({"Effect": "Allow", "Action": VPC_ACTIONS, "Resource": "*"})
    return statements


def role_resource(plan: FunctionPlan) -> dict[str, Any]:
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                               "Action": "sts:AssumeRole"}],
            },
            "Policies": [{"PolicyName": f"rebound-{plan.name}",
                          "PolicyDocument": {"Version": "2012-10-17",
                                             "Statement": policy_statements(plan)}}],
        },
    }


# --- functions -----------------------------------------------------------------------------------


def _environment(kind: Kind) -> dict[str, Any]:
    variables: dict[str, Any] = {
        f"{secret}_SECRET_ARN": _secret_ref(secret) for secret in kind.secrets
    }
    for secret in kind.describe_secrets:
        variables[f"{secret}_DESCRIBE_ARN"] = _secret_ref(secret)
    required = [*PLAIN_REQUIRED, *(s for s in kind.secrets if s not in OPTIONAL_SECRETS)]
    # chalicelib.config checks exactly these at cold start: a function without the database
    # secret must not fail for lack of DATABASE_URL, and one with it must fail fast without it.
    variables["REQUIRED_SETTINGS"] = ",".join(required)
    # The service dimension of every metric: the stack, so two stages in one account never mix.
    variables["POWERTOOLS_SERVICE_NAME"] = {"Ref": "AWS::StackName"}
    if kind.db_pool_size:
        variables["DB_POOL_SIZE"] = str(kind.db_pool_size)
        # Behind RDS Proxy: its endpoint, and statements that leave no session state (no pinning).
        variables["DATABASE_PROXY_HOST"] = {"Fn::If": ["UseRdsProxy", {"Fn::GetAtt": [
            "DatabaseProxy", "Endpoint"]}, {"Ref": "AWS::NoValue"}]}
        variables["DB_STATEMENTS"] = {"Fn::If": ["UseRdsProxy", "unnamed", "prepared"]}
    return variables


def _configure(function: dict[str, Any], plan: FunctionPlan) -> dict[str, Any]:
    props = function["Properties"]
    kind = plan.kind
    props["FunctionName"] = {"Fn::Sub": "${AWS::StackName}-" + plan.name}
    props["MemorySize"] = kind.memory_mb
    props["Timeout"] = kind.timeout_s
    props["Role"] = {"Fn::GetAtt": [f"{plan.logical_id}Role", "Arn"]}
    env = props.setdefault("Environment", {}).setdefault("Variables", {})
    env.update(_environment(kind))
    if kind.reserved_concurrency:
        props["ReservedConcurrentExecutions"] = kind.reserved_concurrency
    else:
        props.pop("ReservedConcurrentExecutions", None)
    if kind.vpc:
        props["VpcConfig"] = {"SubnetIds": {"Ref": "SubnetIds"},
                              "SecurityGroupIds": {"Ref": "SecurityGroupIds"}}
    else:
        props.pop("VpcConfig", None)
    # No X-Ray (README, Operations, "Choices"): logs and per-route metrics connect a request.
    props["Tracing"] = "PassThrough"
    props["AutoPublishAlias"] = ALIAS
    props["DeploymentPreference"] = {
        "Type": kind.deployment,
        "Alarms": [{"Ref": a} for a in alarms.rollback_alarms(
            [r.view_name for r in plan.routes], plan.name if not plan.routes else None)]}
    if kind.failure_destination:
        # The next tick (5 minutes) is the retry; a failed one is kept for the on-call to read.
        props["EventInvokeConfig"] = {
            "MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": 300,
            "DestinationConfig": {"OnFailure": {"Type": "SQS", "Destination": {
                "Fn::GetAtt": ["TickFailureQueue", "Arn"]}}}}
    return function


def _log_group(plan: FunctionPlan) -> dict[str, Any]:
    # Kept when the stack is deleted or the group replaced: logs are evidence.
    return {"Type": "AWS::Logs::LogGroup", "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain",
            "Properties": {"LogGroupName": {"Fn::Sub": "/aws/lambda/${AWS::StackName}-" + plan.name},
                           "RetentionInDays": {"Ref": "LogRetentionDays"}}}


def alias_id(function_id: str) -> str:
    """The logical id of the alias SAM creates for ``AutoPublishAlias`` (its Ref is the alias ARN)."""
    return f"{function_id}Alias{ALIAS}"


def _integration_uri(function_id: str) -> dict[str, Any]:
    # The alias, not the function: API Gateway follows CodeDeploy's traffic shifting.
    return {"Fn::Sub": "arn:${AWS::Partition}:apigateway:${AWS::Region}:lambda:path/2015-03-31"
                       "/functions/${" + alias_id(function_id) + "}/invocations"}


def _permission(plan: FunctionPlan, route: Route) -> dict[str, Any]:
    # API Gateway's source ARN has the path with each {parameter} as a wildcard.
    path = re.sub(r"\{[^}]+\}", "*", route.path)
    return {"Type": "AWS::Lambda::Permission",
            "Properties": {
                "FunctionName": {"Ref": alias_id(plan.logical_id)},
                "Action": "lambda:InvokeFunction",
                "Principal": "apigateway.amazonaws.com",
                "SourceArn": {"Fn::Sub": ["arn:${AWS::Partition}:execute-api:${AWS::Region}"
                                          ":${AWS::AccountId}:${RestAPIId}/*/" + route.method + path,
                                          {"RestAPIId": {"Ref": "RestAPI"}}]}}}


def split(template: Mapping[str, Any], routes: Iterable[Route],
          settings: FunctionSettings) -> dict[str, Any]:
    """The template with ``APIHandler`` and ``DefaultRole`` replaced by one function per route."""
    out = copy.deepcopy(dict(template))
    resources: dict[str, Any] = out["Resources"]
    base = resources.pop("APIHandler")
    resources.pop("APIHandlerInvokePermission", None)
    resources.pop("DefaultRole", None)
    for key in ("APIHandlerName", "APIHandlerArn"):
        out.get("Outputs", {}).pop(key, None)
    base["Properties"].pop("Role", None)
    paths = resources["RestAPI"]["Properties"]["DefinitionBody"]["paths"]
    plans = plan_functions(routes, settings)
    taken = set(resources) | {"OperationsDashboard"}
    clashes = sorted(p.logical_id for p in plans if p.logical_id in taken)
    if clashes:
        raise SettingsError(f"function names clash with template resources: {clashes}")
    for plan in plans:
        resources[plan.logical_id] = _configure(copy.deepcopy(base), plan)
        for index, route in enumerate(plan.routes):
            operation = paths[route.path][route.method.lower()]
            operation["x-amazon-apigateway-integration"]["uri"] = _integration_uri(plan.logical_id)
            suffix = "" if len(plan.routes) == 1 else str(index)
            resources[f"{plan.logical_id}InvokePermission{suffix}"] = _permission(plan, route)
    consumer = resources.get("ProcessEvents", {}).get("Properties", {}).get("Events", {})
    for event in consumer.values():
        if event.get("Type") == "SQS":
            # Chalice names the queue (rebound-events); the stack names its own, per stage.
            event["Properties"]["Queue"] = {"Fn::GetAtt": ["EventsQueue", "Arn"]}
    for view, handler_id in HANDLER_IDS.items():
        if handler_id in resources:
            kind = settings.kinds[settings.handlers[view]]
            plans.append(FunctionPlan(name=view, logical_id=handler_id, kind=kind))
            _configure(resources[handler_id], plans[-1])
    for plan in plans:
        resources[f"{plan.logical_id}Role"] = role_resource(plan)
        resources[f"{plan.logical_id}LogGroup"] = _log_group(plan)
    namespace = str(base["Properties"].get("Environment", {}).get("Variables", {})
                    .get("POWERTOOLS_METRICS_NAMESPACE", "Rebound"))
    # The connection budget (README, Operations): the functions together may hold this share of
    # max_connections, and RDS Proxy may open no more than that to the database either.
    out.setdefault("Metadata", {})["Rebound::ConnectionBudget"] = {
        "PercentOfMaxConnections": round(settings.budget_share * 100)}
    if "DatabaseProxyTargetGroup" in resources:
        pool = resources["DatabaseProxyTargetGroup"]["Properties"]["ConnectionPoolConfigurationInfo"]
        pool["MaxConnectionsPercent"] = round(settings.budget_share * 100)
    # The API's name is the stack's (the ApiName dimension of API Gateway's metrics).
    out["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]["info"]["title"] = {
        "Fn::Sub": "${AWS::StackName}"}
    resources.update(metric_alarms(plans, settings, namespace))
    resources["OperationsDashboard"] = dashboard(plans, namespace, stage_name(out))
    return out


def route_alarms(plans: Iterable[FunctionPlan]) -> list[alarms.RouteAlarm]:
    return [alarms.RouteAlarm(view=r.view_name, logical_id=alarms.route_logical_id(r.view_name),
                              latency_p99_ms=p.kind.latency_p99_ms)
            for p in plans for r in p.routes]


def metric_alarms(plans: Iterable[FunctionPlan], settings: FunctionSettings,
                  namespace: str) -> dict[str, Any]:
    tick_timeout_s = settings.kinds[settings.handlers["process_reminders"]].timeout_s
    return alarms.alarm_resources(route_alarms(plans), namespace, tick_timeout_s=tick_timeout_s,
                                  webhook_silence_minutes=settings.webhook_silence_minutes)


def stage_name(template: Mapping[str, Any]) -> str:
    return str(template["Resources"]["RestAPI"]["Properties"]["StageName"])


# Kept for readers of rendered templates (tests, docs): see scripts/alarms.py.
alarm_metric_names = alarms.alarm_metric_names


# --- dashboard -----------------------------------------------------------------------------------


def _custom(namespace: str, names: Iterable[str], stat: str = "Sum") -> list[list[Any]]:
    return [[namespace, name, "service", "${AWS::StackName}", {"stat": stat}] for name in names]


def _search(namespace: str, token: str, stat: str, query_id: str) -> list[list[Any]]:
    # One line per route without listing them: every metric of ours whose name holds the token
    # (CloudWatch search splits names at "_": Route5xx_get_kpis holds Route5xx).
    query = (f"SEARCH('{{{namespace},service}} service=\"${{AWS::StackName}}\" MetricName={token}', "
             f"'{stat}', 300)")
    return [[{"expression": query, "id": query_id}]]


def _widget(title: str, metrics: list[list[Any]], x: int, y: int, period: int = 300) -> dict[str, Any]:
    return {"type": "metric", "x": x, "y": y, "width": 12, "height": 6,
            "properties": {"title": title, "region": "${AWS::Region}", "period": period,
                           "view": "timeSeries", "stacked": False, "metrics": metrics}}


def dashboard(plans: list[FunctionPlan], namespace: str, stage: str) -> dict[str, Any]:
    api = "${AWS::StackName}"
    webhook_outcomes = ["Webhook_queued", "Webhook_ignored", "Webhook_ignored_unusable",
                        *WEBHOOK_REJECTIONS, "Webhook_too_large", "Webhook_queue_unavailable"]
    webhook_types = [f"WebhookType_{type_label(t)}" for t in (*EventType, None)]
    sends = [f"Send_{channel}_{outcome}" for channel in SEND_CHANNELS for outcome in SEND_OUTCOMES]
    queues = [["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", "${EventsQueue.QueueName}"],
              ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName",
               "${EventsDeadLetterQueue.QueueName}"],
              ["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", "${EventsQueue.QueueName}",
               {"yAxis": "right"}]]
    durations = [["AWS/Lambda", "Duration", "FunctionName", "${" + p.logical_id + "}", {"stat": "p99"}]
                 for p in plans]
    errors = [["AWS/Lambda", "Errors", "FunctionName", "${" + p.logical_id + "}", {"stat": "Sum"}]
              for p in plans]
    widgets = [
        _widget("Webhooks by outcome", _custom(namespace, webhook_outcomes), 0, 0),
        _widget("Webhooks by type (accepted)", _custom(namespace, webhook_types), 12, 0),
        _widget("Events queue: depth, DLQ, oldest message (s)", queues, 0, 6),
        _widget("Processing: events by outcome", _custom(
            namespace, ["EventsApplied", "EventsDuplicate", "EventsIgnored", "EventsPoisoned",
                        "EventRecordsFailed"]), 12, 6),
        _widget("Processing latency (process_events, ms)", [
            ["AWS/Lambda", "Duration", "FunctionName", "${ProcessEvents}", {"stat": "p50"}],
            ["AWS/Lambda", "Duration", "FunctionName", "${ProcessEvents}", {"stat": "p99"}]], 0, 12),
        _widget("Sends by outcome, Whop trouble", _custom(
            namespace, ["EffectsSent", "EffectsFailed", "EffectsRetrying", "EffectsDeferred",
                        "EffectsSkipped", "WhopRateLimited", "WhopUnavailable", "WhopAuthRefused"]), 12, 12),
        _widget("Sends by channel and outcome", _custom(namespace, sends), 0, 18),
        _widget("Smart retry: cards attached, payments retried, permissions missing", _custom(
            namespace, ["Send_attach_sent", "Send_attach_failed", "Send_retry_sent", "Send_retry_failed",
                        "ManualRetries", "WhopPermissionMissing"]), 0, 48),
        _widget("Reminders per tick",
                _custom(namespace, ["RemindersDue", "RemindersOwed", "CasesExpired"]), 12, 18),
        _widget("Cases opened and recovered, manual nudges, link clicks", _custom(
            namespace, ["CasesOpened", "CasesRecovered", "ManualNudges", "LinkClick_redirect"]), 0, 24),
        _widget("Tick duration (ms)", _custom(namespace, ["TickDurationMs"], "Maximum"), 12, 24),
        _widget("API: 4xx, 5xx, latency", [
            ["AWS/ApiGateway", "4XXError", "ApiName", api, "Stage", stage, {"stat": "Sum"}],
            ["AWS/ApiGateway", "5XXError", "ApiName", api, "Stage", stage, {"stat": "Sum"}],
            ["AWS/ApiGateway", "Latency", "ApiName", api, "Stage", stage,
             {"stat": "p99", "yAxis": "right"}]], 0, 30),
        _widget("Duration per function (p99, ms)", durations, 12, 30),
        _widget("Errors per function", errors, 0, 36),
        _widget("Routes: 5xx per route (Route5xx_<view>)",
                _search(namespace, "Route5xx", "Sum", "route5xx"), 12, 36),
        _widget("Routes: p99 per route (RouteLatency_<view>, ms)",
                _search(namespace, "RouteLatency", "p99", "routep99"), 0, 42),
        _widget("Database: unavailable, connections", [
            *_custom(namespace, ["DatabaseUnavailable"]),
            ["AWS/RDS", "DatabaseConnections", "DBInstanceIdentifier", "${DatabaseInstanceId}",
             {"stat": "Maximum", "yAxis": "right"}]], 12, 42),
    ]
    body = json.dumps({"widgets": widgets}, separators=(",", ":"))
    return {"Type": "AWS::CloudWatch::Dashboard",
            "Properties": {"DashboardName": {"Fn::Sub": "${AWS::StackName}"},
                           "DashboardBody": {"Fn::Sub": body}}}


def dashboard_metric_names(template: Mapping[str, Any], namespace: str = "Rebound") -> set[str]:
    """The metric names in our namespace the dashboard shows (for tests and docs)."""
    body = json.loads(template["Resources"]["OperationsDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"])
    return {str(m[1]) for w in body["widgets"] for m in w["properties"]["metrics"] if m[0] == namespace}
