"""What CloudFormation's SAM transform makes of the packaged template, by the SAM translator itself
(the library behind AWS::Serverless-2016-10-31; moto cannot run it): every function published as
a version behind the ``live`` alias, a CodeDeploy deployment group per function that shifts
traffic gradually and rolls back on its page-severity alarms, and everything that calls a
function (API Gateway, the SQS event source, the schedule) calling the alias."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from scripts import alarms as al
from tests.conftest import ROOT, Packaged

# The translator pins pydantic ~=2.13, the app 2.14: it is installed apart (make install,
# requirements-sam.txt) and runs in a process of its own with that folder first on its path.
TRANSLATOR = ROOT / ".venv" / "sam-translator"
TRANSFORM = """
import json, sys
from samtranslator.translator.transform import transform

class NoManagedPolicies:  # every role is written out in full: no managed-policy lookup
    def load(self):
        return {}

template = json.load(sys.stdin)
json.dump(transform(template, {"UseRdsProxy": "true"}, NoManagedPolicies()), sys.stdout)
"""


@pytest.fixture(scope="module")
def transformed(packaged: Packaged) -> dict[str, Any]:
    assert (TRANSLATOR / "samtranslator").is_dir(), "make install puts the translator in .venv/sam-translator"
    template = copy.deepcopy(packaged[0])
    for resource in template["Resources"].values():  # as scripts/deploy.py uploads it
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = "s3://artifacts/rebound/prod/0123abcd.zip"
    env = {**os.environ, "PYTHONPATH": str(TRANSLATOR), "AWS_DEFAULT_REGION": "us-east-1"}
    run = subprocess.run([sys.executable, "-c", TRANSFORM], input=json.dumps(template), env=env,
                         capture_output=True, text=True, check=False, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    return dict(json.loads(run.stdout))


def of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def test_every_function_is_published_behind_the_live_alias_and_shifted_by_codedeploy(
        packaged: Packaged, transformed: dict[str, Any]) -> None:
    functions = of_type(packaged[0], "AWS::Serverless::Function")
    aliases = of_type(transformed, "AWS::Lambda::Alias")
    groups = of_type(transformed, "AWS::CodeDeploy::DeploymentGroup")
    assert len(of_type(transformed, "AWS::Lambda::Version")) == len(functions) == len(aliases) == len(groups)
    for logical, function in functions.items():
        alias = aliases[f"{logical}Aliaslive"]
        assert alias["Properties"]["Name"] == "live"
        assert alias["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]["DeploymentGroupName"] == {
            "Ref": f"{logical}DeploymentGroup"}
        group = groups[f"{logical}DeploymentGroup"]["Properties"]
        kind = function["Properties"]["DeploymentPreference"]["Type"]
        assert json.dumps(group["DeploymentConfigName"]).count(kind) == 1
        assert group["AutoRollbackConfiguration"]["Enabled"] is True
        assert "DEPLOYMENT_STOP_ON_ALARM" in group["AutoRollbackConfiguration"]["Events"]
        triggers = {a["Name"]["Ref"] for a in group["AlarmConfiguration"]["Alarms"]}
        assert triggers and all(al.tag(transformed["Resources"][t], "severity") == al.PAGE for t in triggers)
    assert {g["Properties"]["DeploymentConfigName"]["Fn::Sub"][1]["ConfigName"]
            for g in groups.values()} >= {"Canary10Percent5Minutes", "AllAtOnce"}


def test_api_gateway_the_queue_and_the_schedule_call_the_alias(transformed: dict[str, Any]) -> None:
    body = transformed["Resources"]["RestAPI"]["Properties"]["Body"]
    uris = [op["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]
            for methods in body["paths"].values() for op in methods.values() if isinstance(op, dict)
            and "x-amazon-apigateway-integration" in op]
    assert uris and all(re.search(r"\$\{\w+Aliaslive\}/invocations$", u) for u in uris), uris
    for permission in of_type(transformed, "AWS::Lambda::Permission").values():
        assert permission["Properties"]["FunctionName"]["Ref"].endswith("Aliaslive")
    mapping = next(iter(of_type(transformed, "AWS::Lambda::EventSourceMapping").values()))["Properties"]
    assert mapping["FunctionName"] == {"Ref": "ProcessEventsAliaslive"}
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["EventsQueue", "Arn"]}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    rule = next(iter(of_type(transformed, "AWS::Events::Rule").values()))["Properties"]
    assert rule["Targets"][0]["Arn"] == {"Ref": "ProcessRemindersAliaslive"}


def test_a_failed_tick_goes_to_its_failure_queue_and_is_not_retried(transformed: dict[str, Any]) -> None:
    config = next(iter(of_type(transformed, "AWS::Lambda::EventInvokeConfig").values()))["Properties"]
    assert config["FunctionName"] == {"Ref": "ProcessReminders"} and config["Qualifier"] == "live"
    assert config["MaximumRetryAttempts"] == 0  # the next tick, 5 minutes later, is the retry
    destination = config["DestinationConfig"]["OnFailure"]["Destination"]
    assert destination == {"Fn::GetAtt": ["TickFailureQueue", "Arn"]}


def test_the_stage_has_access_logs_and_the_api_is_named_after_the_stack(transformed: dict[str, Any]) -> None:
    stage = next(iter(of_type(transformed, "AWS::ApiGateway::Stage").values()))["Properties"]
    access = stage["AccessLogSetting"]["Fn::If"]
    assert access[0] == "HasApiAccessLogs"
    logged = json.loads(access[1]["Format"])
    assert logged["resource"] == "$context.resourcePath", "the route template, never a link token"
    assert not {"$context.identity.sourceIp", "$context.path"} & set(logged.values())
    assert stage["TracingEnabled"] is False
    assert transformed["Resources"]["RestAPI"]["Properties"]["Body"]["info"]["title"] == {
        "Fn::Sub": "${AWS::StackName}"}
    waf = transformed["Resources"]["WebAclAssociation"]
    assert waf["Condition"] == "HasWaf" and waf["DependsOn"] == "RestAPIapiStage"
