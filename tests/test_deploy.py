"""scripts/deploy.py, step by step, against real parts that stand in for AWS (moto S3,
CloudFormation and Secrets Manager, the test Postgres, a local HTTP server). Nothing here contacts
AWS. The whole flow (lint, package, preflight, change set, migrations, execute, smoke test,
rollback) and its failure paths are in tests/test_deploy_flow.py."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from scripts import deploy, localdb
from tests.conftest import ROOT
from tests.helpers import FakeHealth, serve_health


def test_migration_gate_passes_on_a_migrated_database_and_stops_on_an_unreachable_one(
        local_database: localdb.LocalDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATIONS_DATABASE_URL", local_database.owner_url)
    assert deploy.migrations_pending() is False
    monkeypatch.setenv("MIGRATIONS_DATABASE_URL", "postgresql://nobody:pw@127.0.0.1:9/rebound")
    with pytest.raises(deploy.DeployError, match="migrate --check failed"):
        deploy.migrations_pending()


def test_migrate_runs_then_rechecks(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    codes = iter([0, 1])  # migrate succeeds, but the re-check still finds one pending

    def run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd[1:])
        return subprocess.CompletedProcess(cmd, next(codes), "", "")

    with pytest.raises(deploy.DeployError, match="still pending"):
        deploy.migrate(run)
    assert [c[-1] for c in calls] == [str(ROOT / "scripts" / "migrate.py"), "--check"]


@pytest.fixture
def aws() -> Iterator[tuple[Any, Any]]:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="artifacts")
        yield s3, boto3.client("cloudformation", region_name="us-east-1")


def test_upload_points_every_function_at_the_uploaded_zip(aws: tuple[Any, Any], tmp_path: Path) -> None:
    s3, _ = aws
    (tmp_path / "deployment.zip").write_bytes(b"PK zip bytes")
    function = {"Type": "AWS::Serverless::Function", "Properties": {"CodeUri": "./d.zip"}}
    template = {"Resources": {"A": function,
                              "Q": {"Type": "AWS::SQS::Queue", "Properties": {}}}}
    (tmp_path / "sam.json").write_text(json.dumps(template))
    url = deploy.upload_artifacts(s3, "artifacts", tmp_path, "prod")
    key = url.split(".amazonaws.com/", 1)[1]
    stored = json.loads(s3.get_object(Bucket="artifacts", Key=key)["Body"].read())
    code = stored["Resources"]["A"]["Properties"]["CodeUri"]
    assert code.startswith("s3://artifacts/rebound/prod/") and code.endswith(".zip")
    zip_key = code.removeprefix("s3://artifacts/")
    assert s3.get_object(Bucket="artifacts", Key=zip_key)["Body"].read() == b"PK zip bytes"


QUEUE_TEMPLATE = {
    "Parameters": {"Name": {"Type": "String"}},
    "Resources": {"Q": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": {"Ref": "Name"}}}},
    "Outputs": {"EndpointURL": {"Value": "http://127.0.0.1:1/api/"}},
}


def test_change_set_creates_then_updates_the_stack(aws: tuple[Any, Any], tmp_path: Path) -> None:
    s3, cfn = aws
    s3.put_object(Bucket="artifacts", Key="t1.json", Body=json.dumps(QUEUE_TEMPLATE).encode())
    url = "https://artifacts.s3.us-east-1.amazonaws.com/t1.json"
    (tmp_path / "p.json").write_text(json.dumps({"Name": "rebound-q1"}))
    log: list[str] = []
    assert deploy.stack_exists(cfn, "rebound-test") is False
    assert deploy.deploy_stack(cfn, "rebound-test", url, deploy.load_parameters(tmp_path / "p.json"),
                               "cs-1", log.append) is True
    assert deploy.stack_exists(cfn, "rebound-test") is True
    assert any("Q" in line for line in log)
    assert boto3.client("sqs", region_name="us-east-1").get_queue_url(QueueName="rebound-q1")
    # The second deploy is an UPDATE of the existing stack.
    second = [{"ParameterKey": "Name", "ParameterValue": "rebound-q2"}]
    assert deploy.deploy_stack(cfn, "rebound-test", url, second, "cs-2", log.append)
    assert cfn.describe_stacks(StackName="rebound-test")["Stacks"][0]["Parameters"] == [
        {"ParameterKey": "Name", "ParameterValue": "rebound-q2"}]


def test_stack_output_is_read_or_named_missing(aws: tuple[Any, Any]) -> None:
    _, cfn = aws
    cfn.create_stack(StackName="rebound-out", TemplateBody=json.dumps(QUEUE_TEMPLATE),
                     Parameters=[{"ParameterKey": "Name", "ParameterValue": "rebound-q3"}])
    assert deploy.stack_output(cfn, "rebound-out", "EndpointURL") == "http://127.0.0.1:1/api/"
    with pytest.raises(deploy.DeployError, match="no output"):
        deploy.stack_output(cfn, "rebound-out", "Missing")


def test_the_smoke_tests_bearer_is_the_stacks_generated_health_secret(aws: tuple[Any, Any]) -> None:
    _, cfn = aws
    # moto's CloudFormation cannot generate a secret: make it, and let the stack output its ARN
    # as the real template's HealthSecretArn output does.
    secrets = boto3.client("secretsmanager", region_name="us-east-1")
    arn = secrets.create_secret(Name="rebound/health", SecretString="generated-48-chars")["ARN"]
    template = {**QUEUE_TEMPLATE, "Parameters": {"Name": {"Type": "String"}, "Arn": {"Type": "String"}},
                "Outputs": {"HealthSecretArn": {"Value": {"Ref": "Arn"}}}}
    cfn.create_stack(StackName="rebound-health", TemplateBody=json.dumps(template),
                     Parameters=[{"ParameterKey": "Name", "ParameterValue": "rebound-q5"},
                                 {"ParameterKey": "Arn", "ParameterValue": arn}])
    assert deploy.health_bearer(cfn, secrets, "rebound-health") == "generated-48-chars"
    cfn.create_stack(StackName="rebound-old", TemplateBody=json.dumps(QUEUE_TEMPLATE),
                     Parameters=[{"ParameterKey": "Name", "ParameterValue": "rebound-q4"}])
    with pytest.raises(deploy.DeployError, match="no output HealthSecretArn"):
        deploy.health_bearer(cfn, secrets, "rebound-old")


def test_parameters_file_lists_become_comma_separated(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps({"SubnetIds": ["subnet-1", "subnet-2"], "Days": 30}))
    assert deploy.load_parameters(tmp_path / "p.json") == [
        {"ParameterKey": "Days", "ParameterValue": "30"},
        {"ParameterKey": "SubnetIds", "ParameterValue": "subnet-1,subnet-2"}]
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(deploy.DeployError, match="JSON object"):
        deploy.load_parameters(tmp_path / "bad.json")


@pytest.fixture
def health() -> Iterator[FakeHealth]:
    with serve_health("the-health-secret") as state:
        yield state


def test_smoke_test_passes_only_when_both_checks_are_ok(health: FakeHealth) -> None:
    health.answers = {"/api/api/health": (200, {"status": "ok"}),
                      "/api/api/health?type=database": (200, {"status": "ok"})}
    deploy.smoke(health.url, health.bearer)
    with pytest.raises(deploy.DeployError, match="401"):
        deploy.smoke(health.url)  # the deep check without the health secret
    with pytest.raises(deploy.DeployError, match="401"):
        deploy.smoke(health.url, "a-guess")
    health.answers["/api/api/health?type=database"] = (503, {"status": "error"})
    with pytest.raises(deploy.DeployError, match="503"):
        deploy.smoke(health.url, health.bearer)
    health.answers["/api/api/health?type=database"] = (200, {"status": "degraded"})
    with pytest.raises(deploy.DeployError, match="degraded"):
        deploy.smoke(health.url, health.bearer)
    with pytest.raises(deploy.DeployError, match="URLError"):
        deploy.smoke("http://127.0.0.1:9/api/")
