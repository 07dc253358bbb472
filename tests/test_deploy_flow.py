"""scripts/deploy.py end to end against moto (S3, CloudFormation, Secrets Manager) and a local
health endpoint: the order of the steps, the dry run's preview, the rollback after a failed smoke
test, and every failure ending in one readable line.

moto cannot run the SAM transform, CodeDeploy or Lambda, so the stacks here are plain templates
with the parts deploy.py reads (parameters, the connection budget's metadata, a database function
with its pool size, the EndpointURL and HealthSecretArn outputs); what SAM does with the real
template is checked by tests/test_template_transform.py with the SAM translator itself."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from scripts import deploy
from tests.conftest import ROOT
from tests.helpers import FakeHealth, serve_health

STACK = "rebound-flow"
BEARER = "generated-health-secret"


@pytest.fixture
def health() -> Iterator[FakeHealth]:
    with serve_health(BEARER) as state:
        state.default = OK
        yield state


@pytest.fixture
def endpoint(health: FakeHealth) -> str:
    return health.url


OK, DOWN = (200, {"status": "ok"}), (503, {"status": "error"})


def template(endpoint: str, version: int, consumer_concurrency: int = 5) -> dict[str, Any]:
    """A plain template shaped like the packaged one where deploy.py looks."""
    return {
        "Metadata": {"Rebound::ConnectionBudget": {"PercentOfMaxConnections": 50}},
        "Parameters": {"QueueName": {"Type": "String"}, "HealthArn": {"Type": "String"},
                       "DatabaseMaxConnections": {"Type": "Number", "Default": 100},
                       "ConsumerMaxConcurrency": {"Type": "Number", "Default": consumer_concurrency}},
        "Resources": {
            "Queue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": {"Ref": "QueueName"}}},
            f"Version{version}": {"Type": "AWS::SQS::Queue",
                                  "Properties": {"QueueName": f"rebound-flow-v{version}"}},
            # Only read by the budget (moto never creates a Serverless function: no transform here).
        },
        "Outputs": {"EndpointURL": {"Value": endpoint}, "HealthSecretArn": {"Value": {"Ref": "HealthArn"}}},
    }


def with_db_function(body: dict[str, Any], reserved: int | None) -> dict[str, Any]:
    """The budget reads Serverless functions: add one for preflight only (never sent to moto)."""
    scaling = {"MaximumConcurrency": {"Ref": "ConsumerMaxConcurrency"}}
    props: dict[str, Any] = {"Environment": {"Variables": {"DB_POOL_SIZE": "1"}},
                             "FunctionName": {"Fn::Sub": "${AWS::StackName}-process_events"},
                             "Events": {"Sqs": {"Type": "SQS", "Properties": {"ScalingConfig": scaling}}}}
    if reserved:
        props["ReservedConcurrentExecutions"] = reserved
    function = {"Type": "AWS::Serverless::Function", "Properties": props}
    return {**body, "Resources": {**body["Resources"], "ProcessEvents": function}}


class FakeTools:
    """Stands in for subprocess.run: lint, package (writes the template), migrate; records order."""

    def __init__(self, out: Path, body: dict[str, Any], *, lint_code: int = 0, pending: bool = True) -> None:
        self.out, self.body, self.lint_code, self.pending = out, body, lint_code, pending
        self.calls: list[str] = []

    def __call__(self, cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        tool = Path(cmd[0]).name if "python" not in Path(cmd[0]).name else Path(cmd[1]).name
        label = tool + ("" if tool != "migrate.py" else (" --check" if "--check" in cmd else ""))
        self.calls.append(label)
        if tool in ("ruff", "mypy"):
            return subprocess.CompletedProcess(cmd, self.lint_code, "app.py:1:1: F401 unused import", "")
        if tool == "package.py":
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "sam.json").write_text(json.dumps(self.body))
            (self.out / "deployment.zip").write_bytes(b"PK zip " + json.dumps(self.body).encode())
            return subprocess.CompletedProcess(cmd, 0, "", "")
        if label == "migrate.py --check":
            return subprocess.CompletedProcess(cmd, 1 if self.pending else 0, "", "")
        self.pending = False  # migrate.py applied them
        return subprocess.CompletedProcess(cmd, 0, "", "")


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[deploy.Clients]:
    monkeypatch.setenv("MIGRATIONS_DATABASE_URL", "postgresql://owner@127.0.0.1:9/rebound")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="artifacts")
        secrets = boto3.client("secretsmanager", region_name="us-east-1")
        yield deploy.Clients(s3, boto3.client("cloudformation", region_name="us-east-1"), secrets)


def health_arn(aws: deploy.Clients) -> str:
    return str(aws.secrets.create_secret(Name="rebound/health", SecretString=BEARER)["ARN"])


def params_file(tmp_path: Path, arn: str, **extra: Any) -> Path:
    path = tmp_path / "params.json"
    path.write_text(json.dumps({"QueueName": "rebound-flow-events", "HealthArn": arn, **extra}))
    return path


def existing_stack(aws: deploy.Clients, endpoint: str, arn: str) -> None:
    aws.cfn.create_stack(StackName=STACK, TemplateBody=json.dumps(template(endpoint, 1)),
                         Parameters=[{"ParameterKey": "QueueName", "ParameterValue": "rebound-flow-events"},
                                     {"ParameterKey": "HealthArn", "ParameterValue": arn}])


def run_deploy(tmp_path: Path, aws: deploy.Clients, tools: FakeTools, params: Path, *extra: str) -> int:
    argv = ["flow", "--bucket", "artifacts", "--parameters", str(params), "--stack", STACK,
            "--out", str(tools.out), *extra]
    return deploy.main(argv, clients=lambda: aws, run=tools)


def stack_resources(aws: deploy.Clients) -> set[str]:
    body = aws.cfn.get_template(StackName=STACK)["TemplateBody"]
    return set(json.loads(json.dumps(body))["Resources"])


def test_lint_and_package_come_before_migrations_and_the_stack_changes_after(
        tmp_path: Path, aws: deploy.Clients, endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    arn = health_arn(aws)
    existing_stack(aws, endpoint, arn)
    tools = FakeTools(tmp_path / "out", template(endpoint, 2))
    assert run_deploy(tmp_path, aws, tools, params_file(tmp_path, arn)) == 0
    assert tools.calls == ["ruff", "mypy", "package.py", "migrate.py --check", "migrate.py",
                           "migrate.py --check"]
    out = capsys.readouterr().out
    titles = [line.split("] ", 1)[1].split(":")[0] for line in out.splitlines() if line.startswith("[")]
    assert titles == ["lint", "package", "preflight", "upload deployment.zip and the template to s3",
                      "change set on stack rebound-flow (create or update)", "migrate --check (gate)",
                      "migrate", "execute the change set on rebound-flow and wait (aliases shift gradually)",
                      "smoke test"]
    assert "Add      Version2" in out and out.rstrip().endswith("deployed")
    assert "Version2" in stack_resources(aws)


def test_dry_run_previews_the_change_set_and_changes_no_stack_and_no_database(
        tmp_path: Path, aws: deploy.Clients, endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    arn = health_arn(aws)
    existing_stack(aws, endpoint, arn)
    tools = FakeTools(tmp_path / "out", template(endpoint, 2))
    assert run_deploy(tmp_path, aws, tools, params_file(tmp_path, arn), "--dry-run") == 0
    out = capsys.readouterr().out
    assert "Add      Version2 (AWS::SQS::Queue)" in out  # the preview
    assert "change set deleted" in out and "migrations pending" in out
    assert out.rstrip().endswith("dry run: no stack or database was changed")
    assert tools.calls == ["ruff", "mypy", "package.py", "migrate.py --check"]  # checked, not applied
    assert stack_resources(aws) == {"Queue", "Version1"}
    assert aws.cfn.list_change_sets(StackName=STACK)["Summaries"] == []


def test_a_failed_smoke_test_rolls_the_stack_back_to_the_previous_template(
        tmp_path: Path, aws: deploy.Clients, health: FakeHealth, endpoint: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    arn = health_arn(aws)
    existing_stack(aws, endpoint, arn)
    tools = FakeTools(tmp_path / "out", template(endpoint, 2))
    health.default = DOWN  # the new release answers its health check with 503
    assert run_deploy(tmp_path, aws, tools, params_file(tmp_path, arn)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "answered 503" in err[0] and "rolled back to the previous template" in err[0]
    assert stack_resources(aws) == {"Queue", "Version1"}, "the previous template runs again"
    stack = aws.cfn.describe_stacks(StackName=STACK)["Stacks"][0]
    assert {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}["HealthArn"] == arn


def test_a_failed_smoke_test_of_a_new_stack_says_there_is_nothing_to_roll_back(
        tmp_path: Path, aws: deploy.Clients, health: FakeHealth, endpoint: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    arn = health_arn(aws)
    tools = FakeTools(tmp_path / "out", template(endpoint, 1))
    health.default = DOWN
    assert run_deploy(tmp_path, aws, tools, params_file(tmp_path, arn)) == 1
    assert "nothing to roll back to" in capsys.readouterr().err


def test_lint_failure_stops_before_anything_is_built(tmp_path: Path, aws: deploy.Clients, endpoint: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    tools = FakeTools(tmp_path / "out", template(endpoint, 1), lint_code=1)
    assert run_deploy(tmp_path, aws, tools, params_file(tmp_path, "arn:x")) == 1
    assert tools.calls == ["ruff"]
    assert capsys.readouterr().err.strip() == (
        "deploy: step 1 failed: ruff failed: app.py:1:1: F401 unused import")


@pytest.mark.parametrize("extra, message", [
    ({"AlarmTopicArn": "arn:aws:sns:us-east-1:1:old"}, "not parameters of the template: AlarmTopicArn"),
    ({"ConsumerMaxConcurrency": 80}, "connection budget exceeded: 80 connections at most"),
])
def test_preflight_refuses_before_aws_or_the_database_is_touched(
        tmp_path: Path, aws: deploy.Clients, endpoint: str, capsys: pytest.CaptureFixture[str],
        extra: dict[str, Any], message: str) -> None:
    tools = FakeTools(tmp_path / "out", with_db_function(template(endpoint, 1), None))
    assert run_deploy(tmp_path, aws, tools, params_file(tmp_path, "arn:x", **extra)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deploy: step 3 failed:") and message in err[0]
    assert "migrate.py --check" not in tools.calls
    assert aws.s3.list_objects_v2(Bucket="artifacts").get("KeyCount") == 0, "nothing uploaded"


def test_an_unbounded_database_function_fails_the_preflight(tmp_path: Path) -> None:
    body = with_db_function(template("http://x/", 1), None)
    del body["Resources"]["ProcessEvents"]["Properties"]["Events"]
    with pytest.raises(deploy.DeployError, match="process_events uses the database with no concurrency"):
        deploy.preflight(body, [{"ParameterKey": "QueueName", "ParameterValue": "q"},
                                {"ParameterKey": "HealthArn", "ParameterValue": "a"}])


class Denied:
    """CloudFormation as a role without cloudformation:CreateChangeSet sees it (moto grants all)."""

    def __init__(self, cfn: Any) -> None:
        self._cfn = cfn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cfn, name)

    def create_change_set(self, **_: Any) -> None:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "AccessDenied", "Message": (
            "User: arn:aws:iam::123456789012:user/ci is not authorized to perform:\n"
            "cloudformation:CreateChangeSet on resource: rebound-flow")}}, "CreateChangeSet")


@pytest.mark.parametrize("breakage, expected", [
    ("bucket", "deploy: step 4 (upload deployment.zip and the template to s3"),
    ("denied", "deploy: step 5 (change set on stack rebound-flow (create or update)) failed: AccessDenied: "
               "User: arn:aws:iam::123456789012:user/ci is not authorized to perform: "
               "cloudformation:CreateChangeSet on resource: rebound-flow"),
])
def test_aws_errors_end_the_deploy_in_one_readable_line(
        tmp_path: Path, aws: deploy.Clients, endpoint: str, capsys: pytest.CaptureFixture[str],
        breakage: str, expected: str) -> None:
    arn = health_arn(aws)
    tools = FakeTools(tmp_path / "out", template(endpoint, 1))
    clients = deploy.Clients(aws.s3, Denied(aws.cfn), aws.secrets) if breakage == "denied" else aws
    bucket = "missing-bucket" if breakage == "bucket" else "artifacts"
    code = deploy.main(["flow", "--bucket", bucket, "--parameters", str(params_file(tmp_path, arn)),
                        "--stack", STACK, "--out", str(tools.out)], clients=lambda: clients, run=tools)
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected), err
    assert "migrate.py" not in " ".join(tools.calls), "nothing migrated before the stack could change"


def test_without_credentials_the_deploy_says_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps({"QueueName": "q", "HealthArn": "a"}))
    out = tmp_path / "out"
    out.mkdir()
    (out / "sam.json").write_text(json.dumps(template("http://x/", 1)))
    (out / "deployment.zip").write_bytes(b"PK")
    script = ("import sys; from scripts import deploy; import subprocess as sp\n"
              "ok = lambda cmd, **kw: sp.CompletedProcess(cmd, 0, '', '')\n"
              f"sys.exit(deploy.main(['flow', '--bucket', 'b', '--parameters', {str(tmp_path / 'p.json')!r},"
              f" '--out', {str(out)!r}, '--region', 'us-east-1'], run=ok))")
    env = {"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
           "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
           "AWS_EC2_METADATA_DISABLED": "true", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                         check=False, env=env)
    assert run.returncode == 1
    err = run.stderr.strip().splitlines()
    assert len(err) == 1 and "credentials" in err[0].lower() and err[0].startswith("deploy: step 4"), err
