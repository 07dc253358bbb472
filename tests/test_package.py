"""`make package`: one function per route, each with exactly the access in POLICY_TABLE, in the VPC
where it uses the database, with its log group and alarms; the template passes cfn-lint; the
bundle leaves out what the Lambda runtime ships. The split step's failure paths are unit-tested."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts import split_template as st
from scripts.package import strip_runtime_provided
from tests.conftest import ROOT

# What each function may do. secrets: the Secrets Manager parameters it may read; sqs: actions on
# the events queue; vpc: attached to the VPC (the database is reachable only from there).
DB, WHOP = "DatabaseUrlSecretArn", "WhopApiKeySecretArn"
HOOK, SCHED = "WhopWebhookSecretArn", "SchedulerSecretArn"
CREATOR = {"secrets": {DB, WHOP}, "sqs": set(), "vpc": True}
POLICY_TABLE: dict[str, dict[str, Any]] = {
    "whop_webhook": {"secrets": {HOOK}, "sqs": {"sqs:SendMessage"}, "vpc": False},
    "health": {"secrets": {DB, HOOK}, "sqs": {"sqs:GetQueueAttributes"}, "vpc": True},
    "openapi": {"secrets": set(), "sqs": set(), "vpc": False},
    "dashboard": {"secrets": set(), "sqs": set(), "vpc": False},
    "favicon": {"secrets": set(), "sqs": set(), "vpc": False},
    "tracked_link": {"secrets": {DB, WHOP}, "sqs": set(), "vpc": True},
    "scheduler_reminders": {"secrets": {DB, WHOP, SCHED}, "sqs": set(), "vpc": True},
    "process_events": {"secrets": {DB, WHOP}, "vpc": True,
                       "sqs": {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                               "sqs:GetQueueAttributes"}},
    "process_reminders": {"secrets": {DB, WHOP}, "sqs": set(), "vpc": True},
}
CREATOR_PREFIX = "/api/companies/"
Packaged = tuple[dict[str, Any], Path, str]


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Packaged]:
    out = tmp_path_factory.mktemp("package")
    # package.py runs cfn-lint itself with check=True: a lint error fails this fixture.
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py"), "--out", str(out)],
                         check=False, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    yield json.loads((out / "sam.json").read_text()), out, run.stdout


@pytest.fixture(scope="module")
def routes() -> list[st.Route]:
    from app import app

    return st.app_routes(app)


def functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}


def expected_access(name: str, routes: list[st.Route]) -> dict[str, Any]:
    if name in POLICY_TABLE:
        return POLICY_TABLE[name]
    paths = {r.path for r in routes if r.view_name == name}
    assert paths and all(p.startswith(CREATOR_PREFIX) for p in paths), f"{name} missing from POLICY_TABLE"
    return CREATOR


def function_name(resource: dict[str, Any]) -> str:
    return str(resource["Properties"]["FunctionName"]["Fn::Sub"]).removeprefix("${AWS::StackName}-")


def test_one_function_per_route_each_wired_to_its_own_function(
        packaged: Packaged, routes: list[st.Route]) -> None:
    template, _, _ = packaged
    resources = template["Resources"]
    assert "APIHandler" not in resources and "DefaultRole" not in resources
    funcs = functions(template)
    names = {function_name(f): logical for logical, f in funcs.items()}
    assert set(names) == {r.view_name for r in routes} | {"process_events", "process_reminders"}
    paths = resources["RestAPI"]["Properties"]["DefinitionBody"]["paths"]
    for route in routes:
        logical = names[route.view_name]
        uri = paths[route.path][route.method.lower()]["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]
        assert f"${{{logical}.Arn}}" in uri, (route, uri)
        permission = resources[f"{logical}InvokePermission"]["Properties"]
        assert permission["FunctionName"] == {"Ref": logical}
        source = permission["SourceArn"]["Fn::Sub"][0]
        assert source.endswith("/*/" + route.method + re.sub(r"\{[^}]+\}", "*", route.path))
    for logical, f in funcs.items():  # same code; routes share app.app (Chalice dispatches on the route)
        handler = {"ProcessEvents": "app.process_events", "ProcessReminders": "app.process_reminders"}
        assert f["Properties"]["Handler"] == handler.get(logical, "app.app")
        assert f["Properties"]["CodeUri"] == "./deployment.zip"


def test_every_function_has_exactly_the_access_in_the_table(
        packaged: Packaged, routes: list[st.Route]) -> None:
    template, _, _ = packaged
    resources = template["Resources"]
    for logical, f in functions(template).items():
        name = function_name(f)
        want = expected_access(name, routes)
        props = f["Properties"]
        assert props["Role"] == {"Fn::GetAtt": [f"{logical}Role", "Arn"]}
        role = resources[f"{logical}Role"]["Properties"]
        assert "ManagedPolicyArns" not in role
        statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
        assert all(s["Effect"] == "Allow" for s in statements)
        secrets: set[str] = set()
        sqs: set[str] = set()
        other: set[str] = set()
        for s in statements:
            actions = set(s["Action"])
            if actions == {"secretsmanager:GetSecretValue"}:
                secrets |= {json.dumps(r) for r in s["Resource"]}
            elif all(a.startswith("sqs:") for a in actions):
                assert s["Resource"] == {"Fn::GetAtt": ["EventsQueue", "Arn"]}
                sqs |= actions
            elif actions == {"logs:CreateLogStream", "logs:PutLogEvents"}:
                assert f"/aws/lambda/${{AWS::StackName}}-{name}:*" in s["Resource"]["Fn::Sub"]
            else:
                assert s["Resource"] == "*" and all(a.startswith("ec2:") for a in actions)
                other |= actions
        found = {p for p in re.findall(r'"Ref": "(\w+SecretArn)"', " ".join(secrets))}
        assert found == want["secrets"], name
        assert sqs == want["sqs"], name
        assert bool(other) == want["vpc"], name
        assert ("VpcConfig" in props) == want["vpc"], name
        if want["vpc"]:
            assert props["VpcConfig"] == {"SubnetIds": {"Ref": "SubnetIds"},
                                          "SecurityGroupIds": {"Ref": "SecurityGroupIds"}}
        # The function is told about exactly the secrets it may read, and requires them at start.
        env = props["Environment"]["Variables"]
        arns = {k.removesuffix("_SECRET_ARN") for k in env if k.endswith("_SECRET_ARN")}
        params = {st.SECRET_PARAMETERS[a] for a in arns}
        assert params == want["secrets"], name
        required = set(env["REQUIRED_SETTINGS"].split(","))
        assert required == {"WHOP_APP_ID", "EVENTS_QUEUE_URL", "PUBLIC_BASE_URL",
                            *(a for a in arns if a != "SCHEDULER_SECRET")}, name
    globals_env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert not [k for k in globals_env if k.endswith("_SECRET_ARN")], "no secret may be global"


def test_queue_dlq_partial_batch_responses_schedule_and_throttling(
        packaged: Packaged) -> None:
    template, _, _ = packaged
    resources = template["Resources"]
    source = resources["ProcessEvents"]["Properties"]["Events"]["ProcessEventsSqsEventSource"]
    assert source["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert source["Properties"]["BatchSize"] == 10
    queue = resources["EventsQueue"]["Properties"]
    assert queue["QueueName"] == "rebound-events"
    assert queue["RedrivePolicy"]["maxReceiveCount"] == 5
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["EventsDeadLetterQueue", "Arn"]}
    timeout = resources["ProcessEvents"]["Properties"]["Timeout"]
    assert queue["VisibilityTimeout"] >= 6 * timeout
    assert "rebound-events" in json.dumps(source["Properties"]["Queue"])
    schedule = resources["ProcessReminders"]["Properties"]["Events"]
    assert "rate(5 minutes)" in json.dumps(schedule)
    throttle = resources["RestAPI"]["Properties"]["MethodSettings"][0]
    assert throttle["ThrottlingRateLimit"] > 0 and throttle["ThrottlingBurstLimit"] > 0


def test_route_functions_finish_within_api_gateways_limit(packaged: Packaged) -> None:
    template, _, _ = packaged
    for logical, f in functions(template).items():
        if logical not in ("ProcessEvents", "ProcessReminders"):
            # API Gateway gives up after 29 s: a longer Lambda timeout only hides the failure.
            assert f["Properties"]["Timeout"] <= 29, logical
            assert 128 <= f["Properties"]["MemorySize"] <= 1024, logical


def test_consumer_connections_are_bounded_and_logs_kept_for_a_parameter(
        packaged: Packaged) -> None:
    template, _, _ = packaged
    resources = template["Resources"]
    source = resources["ProcessEvents"]["Properties"]["Events"]["ProcessEventsSqsEventSource"]["Properties"]
    assert source["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "ConsumerMaxConcurrency"}}
    assert template["Parameters"]["ConsumerMaxConcurrency"]["Default"] == 5
    assert template["Parameters"]["LogRetentionDays"]["Default"] == 30
    for logical, f in functions(template).items():
        group = resources[f"{logical}LogGroup"]["Properties"]
        assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        assert group["LogGroupName"]["Fn::Sub"] == f"/aws/lambda/{f['Properties']['FunctionName']['Fn::Sub']}"
        for metric in ("Errors", "Throttles"):
            alarm = resources[f"{logical}{metric}Alarm"]["Properties"]
            assert alarm["MetricName"] == metric
            assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": logical}}]


def test_alarms_cover_the_issue_list_and_each_has_a_playbook(packaged: Packaged) -> None:
    template, _, _ = packaged
    alarms = {k for k, v in template["Resources"].items() if v["Type"] == "AWS::CloudWatch::Alarm"}
    assert {"EventsDeadLetterAlarm", "EventsAgeAlarm", "WebhookRejectedSpikeAlarm",
            "ApiServerErrorRateAlarm", "EffectsFailedAlarm", "EffectsStuckRetryingAlarm",
            "TickMissingAlarm", "TickDurationAlarm", "WhopRateLimitedAlarm"} <= alarms
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    shared = {"ErrorsAlarm", "ThrottlesAlarm"}  # one playbook each, for every function
    for alarm in alarms:
        key = next((s for s in shared if alarm.endswith(s)), alarm)
        assert f"`{key}`" in runbook or f"`<Function>{key}`" in runbook, f"no playbook for {alarm}"
    tick = template["Resources"]["TickMissingAlarm"]["Properties"]
    assert tick["TreatMissingData"] == "breaching" and tick["Period"] * tick["EvaluationPeriods"] == 900
    timeout_ms = template["Resources"]["ProcessReminders"]["Properties"]["Timeout"] * 1000
    threshold = template["Resources"]["TickDurationAlarm"]["Properties"]["Threshold"]
    assert 0.5 * timeout_ms < threshold < timeout_ms
    for name in alarms:  # metrics have low-cardinality dimensions only
        props = template["Resources"][name]["Properties"]
        dims = props.get("Dimensions", []) + [d for m in props.get("Metrics", []) if "MetricStat" in m
                                              for d in m["MetricStat"]["Metric"]["Dimensions"]]
        assert {d["Name"] for d in dims} <= {"service", "FunctionName", "QueueName", "ApiName", "Stage"}


def test_packaged_application_alarms_are_the_ones_checked_against_the_source(packaged: Packaged) -> None:
    template, _, _ = packaged
    namespace = template["Resources"]["WhopWebhook"]["Properties"]["Environment"]["Variables"][
        "POWERTOOLS_METRICS_NAMESPACE"]
    packaged_alarms = {k: v for k, v in st.alarm_metric_names(template, namespace).items() if v}
    expected = st.alarm_metric_names({"Resources": st.metric_alarms(st.load_settings(), namespace,
                                                                     "rebound", "api")}, namespace)
    # tests/test_metrics.py checks these names against the code.
    assert packaged_alarms == {k: v for k, v in expected.items() if v}


def test_dashboard_shows_the_pipeline_and_every_function(packaged: Packaged) -> None:
    template, _, _ = packaged
    body = json.loads(template["Resources"]["OperationsDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"])
    titles = " | ".join(w["properties"]["title"] for w in body["widgets"])
    for words in ("Webhooks", "queue", "latency", "Sends", "Reminders", "Cases opened", "per function"):
        assert words in titles
    text = json.dumps(body)
    for logical in functions(template):
        assert f"${{{logical}}}" in text
    for name in ("Webhook_queued", "EventsApplied", "EffectsSent", "RemindersDue", "CasesOpened"):
        assert f'"{name}"' in text


def test_bundle_leaves_out_the_runtime_sdk_and_reports_its_size(packaged: Packaged) -> None:
    _, out, stdout = packaged
    with zipfile.ZipFile(out / "deployment.zip") as z:
        tops = {n.split("/", 1)[0] for n in z.namelist()}
    assert "app.py" in tops and "chalicelib" in tops and "pg8000" in tops and "whop_sdk" in tops
    assert not tops & {"boto3", "botocore", "s3transfer"}
    size = (out / "deployment.zip").stat().st_size
    assert f"deployment.zip: {size / 1_048_576:.1f} MiB ({size} bytes)" in stdout
    assert size < 20 * 1_048_576


def test_strip_runtime_provided_removes_packages_and_their_metadata_only(tmp_path: Path) -> None:
    path = tmp_path / "b.zip"
    with zipfile.ZipFile(path, "w") as z:
        for name in ("app.py", "botocore/__init__.py", "botocore-1.0.dist-info/METADATA",
                     "botocorex/keep.py", "boto3/x.py", "chalicelib/db.py"):
            z.writestr(name, "x")
    removed = strip_runtime_provided(path)
    assert removed == ["boto3", "botocore", "botocore-1.0.dist-info"]
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["app.py", "botocorex/keep.py", "chalicelib/db.py"]


# --- the split step's own rules ------------------------------------------------------------------

MINI = {
    "Resources": {
        "APIHandler": {"Type": "AWS::Serverless::Function",
                       "Properties": {"Handler": "app.app", "Role": {"Fn::GetAtt": ["DefaultRole", "Arn"]},
                                      "Environment": {"Variables": {"APP_ENV": "production"}}}},
        "APIHandlerInvokePermission": {"Type": "AWS::Lambda::Permission", "Properties": {}},
        "DefaultRole": {"Type": "AWS::IAM::Role", "Properties": {}},
        "RestAPI": {"Type": "AWS::Serverless::Api", "Properties": {"StageName": "api", "DefinitionBody": {
            "info": {"title": "rebound"},
            "paths": {"/a/{x}": {"get": {"x-amazon-apigateway-integration": {"uri": "old"}}},
                      "/b": {"post": {"x-amazon-apigateway-integration": {"uri": "old"}}}}}}},
    },
    "Outputs": {"APIHandlerArn": {}, "APIHandlerName": {}},
}
MINI_ROUTES = [st.Route("get_a", "GET", "/a/{x}"), st.Route("post_b", "POST", "/b")]
KINDS = {"web": {"memory_mb": 256, "timeout_s": 5, "secrets": [], "queue": []},
         "db": {"vpc": True, "secrets": ["DATABASE_URL"], "queue": []},
         "tick": {"timeout_s": 100}}


def settings(**extra: Any) -> st.FunctionSettings:
    return st.parse_settings({"kinds": KINDS, "handlers": {"process_reminders": "tick"}, **extra})


def test_a_route_without_a_kind_fails_the_build() -> None:
    with pytest.raises(st.SettingsError, match="post_b"):
        st.split(MINI, MINI_ROUTES, settings(routes={"get_a": "web"}))


def test_path_default_gives_a_kind_and_the_plan_names_functions_after_views() -> None:
    out = st.split(MINI, MINI_ROUTES, settings(routes={"get_a": "web"}, path_defaults={"/b": "db"}))
    res = out["Resources"]
    assert res["PostB"]["Properties"]["VpcConfig"]["SubnetIds"] == {"Ref": "SubnetIds"}
    assert "VpcConfig" not in res["GetA"]["Properties"] and res["GetA"]["Properties"]["MemorySize"] == 256
    assert res["GetAInvokePermission"]["Properties"]["SourceArn"]["Fn::Sub"][0].endswith("/*/GET/a/*")
    assert "APIHandler" not in res and "DefaultRole" not in res and not out["Outputs"]
    assert MINI["Resources"]["APIHandler"]["Properties"]["Role"], "the input is not modified"


def test_a_group_serves_several_routes_from_one_function() -> None:
    group = {"both": {"kind": "db", "routes": ["get_a", "post_b"]}}
    out = st.split(MINI, MINI_ROUTES, settings(groups=group))
    res = out["Resources"]
    funcs = [k for k, v in res.items() if v["Type"] == "AWS::Serverless::Function"]
    assert funcs == ["Both"]
    permissions = [res[f"BothInvokePermission{i}"]["Properties"] for i in (0, 1)]
    assert {p["FunctionName"]["Ref"] for p in permissions} == {"Both"}
    paths = res["RestAPI"]["Properties"]["DefinitionBody"]["paths"]
    assert "${Both.Arn}" in paths["/b"]["post"]["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]


@pytest.mark.parametrize("raw, message", [
    ({"kinds": {"k": {"secrets": ["AWS_ROOT_KEY"]}}}, "unknown secret"),
    ({"kinds": {"k": {"queue": ["purge"]}}}, "unknown queue access"),
    ({"kinds": {"k": {"memory_mb": 64}}}, "memory_mb"),
    ({"kinds": {"k": {"vpcc": True}}}, "unknown field"),
    ({"kinds": {}, "routes": {"x": "nope"}}, "unknown kind"),
])
def test_bad_settings_are_named(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(st.SettingsError, match=message):
        st.parse_settings(raw)


def test_a_view_named_like_a_template_resource_is_refused() -> None:
    routes = [st.Route("rest_a_p_i", "GET", "/a/{x}"), st.Route("post_b", "POST", "/b")]
    with pytest.raises(st.SettingsError, match="clash"):
        st.split(MINI, routes, settings(routes={"rest_a_p_i": "web", "post_b": "web"}))


def test_the_real_settings_file_gives_every_app_route_a_kind(routes: list[st.Route]) -> None:
    plans = st.plan_functions(routes, st.load_settings())
    assert sorted(p.name for p in plans) == sorted({r.view_name for r in routes})
