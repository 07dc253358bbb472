"""Deploy a stage: lint, package, preflight, change set, migrate, execute, smoke test, roll back.

Usage:
  python scripts/deploy.py STAGE --bucket ARTIFACT_BUCKET --parameters infra/params-STAGE.json
                           [--stack rebound-STAGE] [--region us-east-1] [--dry-run]

Steps, each printed before it runs:
 1. lint: ruff and mypy (``make lint``): nothing is built from code that does not pass.
 2. package: ``package.py --stage STAGE``: the template, one function per route, cfn-lint.
 3. preflight: the parameters file names only parameters the template has and gives every one
    without a default; the connection budget holds with these values (scripts/connection_budget.py).
 4. upload: ``deployment.zip`` (content-addressed key) and the template to the artifact bucket.
 5. change set: CREATE for a new stack, UPDATE otherwise; wait; print every change. A change set
    with no changes is deleted and the deploy stops there (nothing to do).
 6. migrations gate: ``migrate.py --check`` (owner connection, MIGRATIONS_DATABASE_URL); exit 2
    (an edited applied file, an unreachable database) stops the deploy before anything changed.
 7. migrate: apply pending migrations, then ``--check`` again. Migrations are expand/contract:
    the running release keeps working on the new schema (tests/test_migration_compat.py).
 8. execute the change set and wait. Each function is published as a new version and its ``live``
    alias moves to it gradually (CodeDeploy, infra/functions.toml ``deployment``); a page-severity
    alarm during the shift moves it back and fails the stack update, which CloudFormation rolls
    back.
 9. smoke test: ``GET {EndpointURL}api/health`` and ``?type=database`` (bearer: the stack's
    generated health secret, never printed). If it fails, the previous template is deployed again
    with the previous parameters (the stack's own record of them) and the deploy exits 1.

``--dry-run`` runs 1-6 and stops: the change set is printed and deleted, migrations are only
checked. It changes no stack and no database (the artifacts it uploads are content-addressed).
Any AWS error ends the deploy with one line: ``deploy: step N (what) failed: <Code>: <message>``.

The parameters file is JSON ``{"ParameterKey": "value", ...}`` (lists as comma-separated strings).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(sys.executable).parent
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"]
Runner = Callable[..., subprocess.CompletedProcess[str]]

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class DeployError(RuntimeError):
    pass


class NothingToDeploy(Exception):
    """The change set has no changes: the stack already runs this template and these values."""


@dataclass
class Step:
    title: str
    run: Callable[[], None]


def aws_error_line(exc: BaseException) -> str:
    """Any AWS failure as one line a person can act on (no traceback, no response dump)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        code, message = error.get("Code", type(exc).__name__), error.get("Message", "")
        return f"{code}: {' '.join(str(message).split())}" if message else str(code)
    last = getattr(exc, "last_response", None)
    if isinstance(last, dict):  # a waiter gave up: say on what
        reason = last.get("StatusReason") or last.get("Stacks", [{}])[0].get("StackStatusReason")
        status = last.get("Status") or last.get("Stacks", [{}])[0].get("StackStatus")
        if reason or status:
            return f"{status}: {' '.join(str(reason or '').split())}".strip().rstrip(":")
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


# --- 1-2: local commands -------------------------------------------------------------------------


def lint(run: Runner = subprocess.run) -> None:
    for command in ([str(BIN / "ruff"), "check", "app.py", "chalicelib", "scripts", "tests"],
                    [str(BIN / "mypy")]):
        result = run(command, cwd=ROOT, check=False, capture_output=True, text=True)
        if result.returncode != 0:
            first = (result.stdout or result.stderr).strip().splitlines()[:1]
            raise DeployError(f"{Path(command[0]).name} failed: {first[0] if first else 'see make lint'}")


def package(stage: str, out: Path, run: Runner = subprocess.run) -> None:
    result = run([PYTHON, str(ROOT / "scripts" / "package.py"), "--stage", stage, "--out", str(out)],
                 cwd=ROOT, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:]
        raise DeployError(f"package failed: {tail[0] if tail else 'exit ' + str(result.returncode)}")


def migrations_pending(run: Runner = subprocess.run) -> bool:
    """The gate: True when migrations are pending; DeployError when the runner refuses or fails."""
    check = run([PYTHON, str(ROOT / "scripts" / "migrate.py"), "--check"], cwd=ROOT, check=False,
                capture_output=True, text=True)
    if check.returncode not in (0, 1):
        raise DeployError(f"migrate --check failed (exit {check.returncode}): {check.stderr.strip()}")
    return check.returncode == 1


def migrate(run: Runner = subprocess.run) -> None:
    applied = run([PYTHON, str(ROOT / "scripts" / "migrate.py")], cwd=ROOT, check=False,
                  capture_output=True, text=True)
    if applied.returncode != 0:
        raise DeployError(f"migrate failed: {applied.stderr.strip()}")
    if migrations_pending(run):
        raise DeployError("migrations still pending after migrate")


# --- 3: preflight --------------------------------------------------------------------------------


def load_parameters(path: Path) -> list[dict[str, str]]:
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise DeployError(f"{path}: expected a JSON object of ParameterKey -> value")
    return [{"ParameterKey": k, "ParameterValue": ",".join(v) if isinstance(v, list) else str(v)}
            for k, v in sorted(raw.items())]


def preflight(template: Mapping[str, Any], parameters: list[dict[str, str]],
              log: Callable[[str], None] = print) -> None:
    """Refuse what CloudFormation would refuse later (unknown or missing parameters), and a
    configuration whose functions could hold more database connections than the budget."""
    from scripts.connection_budget import Unbounded, compute

    declared = template.get("Parameters", {})
    given = {p["ParameterKey"]: p["ParameterValue"] for p in parameters}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise DeployError(f"parameters file: not parameters of the template: {', '.join(unknown)}"
                          " (AlarmTopicArn became PageTopicArn/TicketTopicArn outputs: subscribe to those)")
    missing = sorted(k for k, spec in declared.items() if "Default" not in spec and k not in given)
    if missing:
        raise DeployError(f"parameters file: no value for {', '.join(missing)}")
    try:
        budget = compute(template, given)
    except (Unbounded, ValueError) as exc:
        raise DeployError(f"connection budget: {exc}") from None
    if not budget.within:
        raise DeployError(f"connection budget exceeded: {budget.describe()}; lower ConsumerMaxConcurrency"
                          " or reserved_concurrency in infra/functions.toml, or raise DatabaseMaxConnections")
    log(f"  connections: {budget.describe()}")


# --- 4-5, 8: AWS ---------------------------------------------------------------------------------


def upload_artifacts(s3: Any, bucket: str, out: Path, stage: str) -> str:
    """Upload the zip (content-addressed) and the template pointing at it; return the template URL."""
    zip_path = out / "deployment.zip"
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    zip_key = f"rebound/{stage}/{digest}.zip"
    s3.upload_file(str(zip_path), bucket, zip_key)
    template = json.loads((out / "sam.json").read_text())
    for resource in template["Resources"].values():
        if resource.get("Type") == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = f"s3://{bucket}/{zip_key}"
    return put_template(s3, bucket, stage, json.dumps(template).encode())


def put_template(s3: Any, bucket: str, stage: str, body: bytes) -> str:
    template_key = f"rebound/{stage}/{hashlib.sha256(body).hexdigest()}.template.json"
    s3.put_object(Bucket=bucket, Key=template_key, Body=body)
    region = s3.meta.region_name
    return f"https://{bucket}.s3.{region}.amazonaws.com/{template_key}"


def stack_exists(cfn: Any, stack: str) -> bool:
    try:
        stacks = cfn.describe_stacks(StackName=stack)["Stacks"]
    except cfn.exceptions.ClientError as exc:
        if "does not exist" in str(exc):
            return False
        raise
    return bool(stacks) and stacks[0]["StackStatus"] != "REVIEW_IN_PROGRESS"


@dataclass
class ChangeSet:
    stack: str
    name: str
    kind: str  # CREATE or UPDATE
    changes: list[str] = field(default_factory=list)


def create_change_set(cfn: Any, stack: str, template_url: str, parameters: list[dict[str, str]],
                      name: str, log: Callable[[str], None] = print) -> ChangeSet:
    """Create and describe a change set; NothingToDeploy when it has no changes (it is deleted)."""
    from botocore.exceptions import WaiterError

    kind = "UPDATE" if stack_exists(cfn, stack) else "CREATE"
    cfn.create_change_set(StackName=stack, ChangeSetName=name, ChangeSetType=kind,
                          TemplateURL=template_url, Parameters=parameters, Capabilities=CAPABILITIES)
    try:
        cfn.get_waiter("change_set_create_complete").wait(
            StackName=stack, ChangeSetName=name, WaiterConfig={"Delay": 5, "MaxAttempts": 120})
    except WaiterError as exc:  # FAILED, which includes "no changes"
        described = cfn.describe_change_set(StackName=stack, ChangeSetName=name)
        reason = str(described.get("StatusReason", ""))
        if "didn't contain changes" in reason or "No updates are to be performed" in reason:
            cfn.delete_change_set(StackName=stack, ChangeSetName=name)
            raise NothingToDeploy() from None
        raise DeployError(f"change set failed: {' '.join((reason or aws_error_line(exc)).split())}") from exc
    described = cfn.describe_change_set(StackName=stack, ChangeSetName=name)
    change_set = ChangeSet(stack, name, kind)
    for change in described.get("Changes", []):
        rc = change.get("ResourceChange", {})
        line = (f"  {rc.get('Action', '?'):8} {rc.get('LogicalResourceId', '?')} "
                f"({rc.get('ResourceType', '?')})" + (" REPLACED" if rc.get("Replacement") == "True" else ""))
        change_set.changes.append(line)
        log(line)
    return change_set


def execute_change_set(cfn: Any, change_set: ChangeSet) -> None:
    cfn.execute_change_set(StackName=change_set.stack, ChangeSetName=change_set.name)
    waiter = "stack_create_complete" if change_set.kind == "CREATE" else "stack_update_complete"
    cfn.get_waiter(waiter).wait(StackName=change_set.stack, WaiterConfig={"Delay": 10, "MaxAttempts": 360})


def deploy_stack(cfn: Any, stack: str, template_url: str, parameters: list[dict[str, str]],
                 change_set_name: str, log: Callable[[str], None] = print) -> bool:
    """Create, show and execute a change set; return False when there was nothing to change."""
    try:
        change_set = create_change_set(cfn, stack, template_url, parameters, change_set_name, log)
    except NothingToDeploy:
        log("no changes to deploy")
        return False
    execute_change_set(cfn, change_set)
    return True


@dataclass(frozen=True)
class Previous:
    """What the stack ran before this deploy: the way back."""

    template_url: str
    parameters: list[dict[str, Any]]


def previous_state(cfn: Any, s3: Any, bucket: str, stage: str, stack: str) -> Previous | None:
    """The stack's current template (as submitted, before the SAM transform) and parameters."""
    if not stack_exists(cfn, stack):
        return None
    body = cfn.get_template(StackName=stack, TemplateStage="Original")["TemplateBody"]
    text = body if isinstance(body, str) else json.dumps(body)
    described = cfn.describe_stacks(StackName=stack)["Stacks"][0]
    parameters = [{"ParameterKey": p["ParameterKey"], "UsePreviousValue": True}
                  for p in described.get("Parameters", [])]
    return Previous(put_template(s3, bucket, stage, text.encode()), parameters)


def roll_back(cfn: Any, stack: str, previous: Previous, log: Callable[[str], None] = print) -> None:
    """Deploy the previous template again with the previous values (migrations only expand, so
    the previous code runs on the migrated schema)."""
    name = f"rollback-{hashlib.sha256(previous.template_url.encode()).hexdigest()[:12]}"
    try:
        change_set = create_change_set(cfn, stack, previous.template_url, previous.parameters, name, log)
    except NothingToDeploy:
        log("  rollback: the stack already runs the previous template")
        return
    execute_change_set(cfn, change_set)


def stack_output(cfn: Any, stack: str, key: str) -> str:
    outputs = cfn.describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])
    for output in outputs:
        if output["OutputKey"] == key:
            return str(output["OutputValue"])
    raise DeployError(f"stack {stack} has no output {key}")


# --- 9: smoke test -------------------------------------------------------------------------------


def health_bearer(cfn: Any, secrets: Any, stack: str) -> str:
    """The deep health checks' bearer: the secret the template generated for the health function."""
    arn = stack_output(cfn, stack, "HealthSecretArn")
    return str(secrets.get_secret_value(SecretId=arn)["SecretString"])


def smoke(endpoint: str, bearer: str | None = None, timeout_s: float = 10.0) -> None:
    base = endpoint if endpoint.endswith("/") else endpoint + "/"
    for query in ("", "?type=database"):
        url = f"{base}api/health{query}"
        # Liveness is public; the deep check needs the bearer (chalicelib/health.py).
        headers = {"Authorization": f"Bearer {bearer}"} if query and bearer else {}
        try:
            request = urllib.request.Request(url, headers=headers)  # noqa: S310 - our URL
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - our URL
                status, body = response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise DeployError(f"smoke test: {url} answered {exc.code}") from None
        except (urllib.error.URLError, TimeoutError, ValueError) as exc:
            raise DeployError(f"smoke test: {url} failed ({type(exc).__name__})") from None
        if status != 200 or body.get("status") != "ok":
            raise DeployError(f"smoke test: {url} answered {status} {body.get('status')!r}")


# --- the plan ------------------------------------------------------------------------------------


@dataclass
class Clients:
    s3: Any
    cfn: Any
    secrets: Any


class Deployment:
    """One run's steps and what they hand each other (the parameters, the change set, the way back)."""

    def __init__(self, args: argparse.Namespace, clients: Callable[[], Clients], run: Runner,
                 log: Callable[[str], None]) -> None:
        self.args, self.clients, self.run, self.log = args, clients, run, log
        self.out: Path = args.out or (ROOT / "build" / args.stage)
        self.stack: str = args.stack or f"rebound-{args.stage}"
        self.parameters: list[dict[str, str]] = []
        self.template_url = ""
        self.change_set: ChangeSet | None = None
        self.previous: Previous | None = None
        self.pending = False

    def preflight(self) -> None:
        self.parameters = load_parameters(self.args.parameters)
        preflight(json.loads((self.out / "sam.json").read_text()), self.parameters, self.log)

    def upload(self) -> None:
        self.template_url = upload_artifacts(self.clients().s3, self.args.bucket, self.out, self.args.stage)

    def preview(self) -> None:
        c = self.clients()
        self.previous = previous_state(c.cfn, c.s3, self.args.bucket, self.args.stage, self.stack)
        name = f"rebound-{hashlib.sha256(self.template_url.encode()).hexdigest()[:12]}"
        self.change_set = create_change_set(c.cfn, self.stack, self.template_url, self.parameters,
                                            name, self.log)
        if self.args.dry_run:
            c.cfn.delete_change_set(StackName=self.stack, ChangeSetName=name)
            self.log("  (dry run: change set deleted)")

    def gate(self) -> None:
        if self.args.dry_run and not os.environ.get("MIGRATIONS_DATABASE_URL"):
            self.log("  (dry run without MIGRATIONS_DATABASE_URL: not checked)")
            return
        self.pending = migrations_pending(self.run)
        self.log(f"  migrations {'pending' if self.pending else 'up to date'}")

    def migrate(self) -> None:
        if self.pending:
            migrate(self.run)

    def execute(self) -> None:
        assert self.change_set is not None
        execute_change_set(self.clients().cfn, self.change_set)

    def smoke(self) -> None:
        c = self.clients()
        try:
            smoke(stack_output(c.cfn, self.stack, "EndpointURL"), health_bearer(c.cfn, c.secrets, self.stack))
        except DeployError as failure:
            if self.previous is None:
                raise DeployError(f"{failure}; a new stack: nothing to roll back to") from None
            self.log(f"  {failure}: rolling back to the previous template")
            roll_back(c.cfn, self.stack, self.previous, self.log)
            raise DeployError(f"{failure}; rolled back to the previous template") from None

    def steps(self) -> list[Step]:
        args, stack = self.args, self.stack
        steps = [
            Step("lint: ruff and mypy", lambda: lint(self.run)),
            Step(f"package: scripts/package.py --stage {args.stage} --out {self.out} (cfn-lint included)",
                 lambda: package(args.stage, self.out, self.run)),
            Step("preflight: parameters and the connection budget", self.preflight),
            Step(f"upload deployment.zip and the template to s3://{args.bucket}/rebound/{args.stage}/",
                 self.upload),
            Step(f"change set on stack {stack} (create or update): what would change", self.preview),
            Step("migrate --check (gate): stop on an edited migration or an unreachable database", self.gate),
        ]
        if args.dry_run:
            return steps
        return [*steps,
                Step("migrate: apply pending migrations (owner connection), then --check again",
                     self.migrate),
                Step(f"execute the change set on {stack} and wait (aliases shift gradually)", self.execute),
                Step(f"smoke test: GET <EndpointURL of {stack}>api/health and ?type=database; "
                     "roll back if it fails", self.smoke)]


def plan(args: argparse.Namespace, clients: Callable[[], Clients], run: Runner = subprocess.run,
         log: Callable[[str], None] = print) -> list[Step]:
    return Deployment(args, clients, run, log).steps()


def main(argv: list[str] | None = None, clients: Callable[[], Clients] | None = None,
         run: Runner = subprocess.run) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("stage")
    parser.add_argument("--bucket", required=True, help="S3 bucket for the zip and the template")
    parser.add_argument("--parameters", type=Path, required=True, help="JSON of stack parameters")
    parser.add_argument("--stack", help="stack name (default rebound-STAGE)")
    parser.add_argument("--region", default=None)
    parser.add_argument("--out", type=Path, default=None, help="package folder (default build/STAGE)")
    parser.add_argument("--dry-run", action="store_true",
                        help="lint, package, preview the change set and check migrations; change nothing")
    args = parser.parse_args(argv)
    if not args.parameters.is_file():
        print(f"deploy: no parameters file {args.parameters}", file=sys.stderr)
        return 2

    def default_clients() -> Clients:
        import boto3

        return Clients(boto3.client("s3", region_name=args.region),
                       boto3.client("cloudformation", region_name=args.region),
                       boto3.client("secretsmanager", region_name=args.region))

    made: list[Clients] = []

    def cached() -> Clients:
        if not made:
            made.append((clients or default_clients)())
        return made[0]

    steps = plan(args, cached, run)
    for number, step in enumerate(steps, 1):
        print(f"[{number}/{len(steps)}] {step.title}", flush=True)
        try:
            step.run()
        except NothingToDeploy:
            print("no changes to deploy: the stack already runs this template with these values")
            return 0
        except DeployError as exc:
            print(f"deploy: step {number} failed: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # noqa: BLE001 - boto3/botocore raise many types; one line each
            print(f"deploy: step {number} ({step.title.split(':')[0]}) failed: {aws_error_line(exc)}",
                  file=sys.stderr)
            return 1
    print("dry run: no stack or database was changed" if args.dry_run else "deployed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
