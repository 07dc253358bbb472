"""Deploy a stage: migrations gate, migrate, package, CloudFormation change set, smoke test.

Usage:
  python scripts/deploy.py STAGE --bucket ARTIFACT_BUCKET --parameters infra/params-STAGE.json
                           [--stack rebound-STAGE] [--region us-east-1] [--dry-run]

Steps, each printed before it runs (``--dry-run`` prints them and runs none, touching nothing):
 1. ``migrate.py --check`` (owner connection, MIGRATIONS_DATABASE_URL): exit 2 (an applied file
    was edited, the database is unreachable) stops the deploy; exit 1 means migrations are pending.
 2. ``migrate.py`` when some are pending (migrations stay backward compatible with the running
    code, so they go first), then ``--check`` again must report none pending.
 3. ``package.py --stage STAGE``: the template, one function per route, linted by cfn-lint.
 4. Upload ``deployment.zip`` (content-addressed key) and the template to the artifact bucket;
    the template's ``CodeUri`` points at the uploaded zip.
 5. Create a change set (CREATE for a new stack, UPDATE otherwise; CAPABILITY_IAM and
    CAPABILITY_AUTO_EXPAND for the SAM transform), wait for it, print its changes, execute it,
    wait for the stack. A change set with no changes is deleted and the deploy goes on.
 6. Smoke test: ``GET {EndpointURL}api/health`` and ``?type=database`` must answer 200 ``ok``;
    the deep check carries ``Authorization: Bearer`` with the stack's generated health secret
    (output ``HealthSecretArn``, read from Secrets Manager; never printed).

The parameters file is JSON ``{"ParameterKey": "value", ...}`` (lists as comma-separated
strings), e.g. the secret ARNs, WhopAppId, PublicBaseUrl, SubnetIds, SecurityGroupIds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"]


class DeployError(RuntimeError):
    pass


@dataclass
class Step:
    title: str
    run: Callable[[], None]


# --- 1-3: local commands -------------------------------------------------------------------------


def migrations_pending(run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> bool:
    """The gate: True when migrations are pending; DeployError when the runner refuses or fails."""
    check = run([PYTHON, str(ROOT / "scripts" / "migrate.py"), "--check"], cwd=ROOT, check=False,
                capture_output=True, text=True)
    if check.returncode not in (0, 1):
        raise DeployError(f"migrate --check failed (exit {check.returncode}): {check.stderr.strip()}")
    return check.returncode == 1


def migrate(run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> None:
    applied = run([PYTHON, str(ROOT / "scripts" / "migrate.py")], cwd=ROOT, check=False,
                  capture_output=True, text=True)
    if applied.returncode != 0:
        raise DeployError(f"migrate failed: {applied.stderr.strip()}")
    if migrations_pending(run):
        raise DeployError("migrations still pending after migrate")


def package(stage: str, out: Path) -> None:
    subprocess.run([PYTHON, str(ROOT / "scripts" / "package.py"), "--stage", stage, "--out", str(out)],
                   cwd=ROOT, check=True)


# --- 4-5: AWS ------------------------------------------------------------------------------------


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
    body = json.dumps(template).encode()
    template_key = f"rebound/{stage}/{hashlib.sha256(body).hexdigest()}.template.json"
    s3.put_object(Bucket=bucket, Key=template_key, Body=body)
    region = s3.meta.region_name
    return f"https://{bucket}.s3.{region}.amazonaws.com/{template_key}"


def load_parameters(path: Path) -> list[dict[str, str]]:
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise DeployError(f"{path}: expected a JSON object of ParameterKey -> value")
    return [{"ParameterKey": k, "ParameterValue": ",".join(v) if isinstance(v, list) else str(v)}
            for k, v in sorted(raw.items())]


def stack_exists(cfn: Any, stack: str) -> bool:
    try:
        stacks = cfn.describe_stacks(StackName=stack)["Stacks"]
    except cfn.exceptions.ClientError as exc:
        if "does not exist" in str(exc):
            return False
        raise
    return bool(stacks) and stacks[0]["StackStatus"] != "REVIEW_IN_PROGRESS"


def deploy_stack(cfn: Any, stack: str, template_url: str, parameters: list[dict[str, str]],
                 change_set_name: str, log: Callable[[str], None] = print) -> bool:
    """Create, show and execute a change set; return False when there was nothing to change."""
    from botocore.exceptions import WaiterError

    kind = "UPDATE" if stack_exists(cfn, stack) else "CREATE"
    cfn.create_change_set(StackName=stack, ChangeSetName=change_set_name, ChangeSetType=kind,
                          TemplateURL=template_url, Parameters=parameters, Capabilities=CAPABILITIES)
    try:
        cfn.get_waiter("change_set_create_complete").wait(
            StackName=stack, ChangeSetName=change_set_name, WaiterConfig={"Delay": 5, "MaxAttempts": 120})
    except WaiterError as exc:  # FAILED, which includes "no changes"
        described = cfn.describe_change_set(StackName=stack, ChangeSetName=change_set_name)
        reason = str(described.get("StatusReason", ""))
        if "didn't contain changes" in reason or "No updates are to be performed" in reason:
            cfn.delete_change_set(StackName=stack, ChangeSetName=change_set_name)
            log("no changes to deploy")
            return False
        raise DeployError(f"change set failed: {reason or exc}") from exc
    described = cfn.describe_change_set(StackName=stack, ChangeSetName=change_set_name)
    for change in described.get("Changes", []):
        rc = change.get("ResourceChange", {})
        log(f"  {rc.get('Action', '?'):8} {rc.get('LogicalResourceId', '?')} ({rc.get('ResourceType', '?')})")
    cfn.execute_change_set(StackName=stack, ChangeSetName=change_set_name)
    waiter = "stack_create_complete" if kind == "CREATE" else "stack_update_complete"
    cfn.get_waiter(waiter).wait(StackName=stack, WaiterConfig={"Delay": 10, "MaxAttempts": 360})
    return True


def stack_output(cfn: Any, stack: str, key: str) -> str:
    outputs = cfn.describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])
    for output in outputs:
        if output["OutputKey"] == key:
            return str(output["OutputValue"])
    raise DeployError(f"stack {stack} has no output {key}")


# --- 6: smoke test -------------------------------------------------------------------------------


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


def plan(args: argparse.Namespace, clients: Callable[[], tuple[Any, Any]]) -> list[Step]:
    out = ROOT / "build" / args.stage
    stack = args.stack or f"rebound-{args.stage}"
    state: dict[str, str] = {}

    def upload() -> None:
        s3, _ = clients()
        state["template_url"] = upload_artifacts(s3, args.bucket, out, args.stage)

    def deploy() -> None:
        _, cfn = clients()
        deploy_stack(cfn, stack, state["template_url"], load_parameters(args.parameters),
                     f"rebound-{hashlib.sha256(state['template_url'].encode()).hexdigest()[:12]}")

    def check() -> None:
        _, cfn = clients()
        import boto3

        secrets = boto3.client("secretsmanager", region_name=cfn.meta.region_name)
        smoke(stack_output(cfn, stack, "EndpointURL"), health_bearer(cfn, secrets, stack))

    def gate() -> None:
        state["pending"] = "yes" if migrations_pending() else ""

    def apply() -> None:
        if state.get("pending"):
            migrate()

    return [
        Step("migrate --check (gate): stop on an edited migration or an unreachable database", gate),
        Step("migrate: apply pending migrations (owner connection), then --check again", apply),
        Step("package: scripts/package.py --stage " f"{args.stage} --out {out} (cfn-lint included)",
             lambda: package(args.stage, out)),
        Step(f"upload deployment.zip and the template to s3://{args.bucket}/rebound/{args.stage}/", upload),
        Step(f"change set on stack {stack} (create or update), wait, execute, wait", deploy),
        Step(f"smoke test: GET <EndpointURL of {stack}>api/health and ?type=database", check),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("stage")
    parser.add_argument("--bucket", required=True, help="S3 bucket for the zip and the template")
    parser.add_argument("--parameters", type=Path, required=True, help="JSON of stack parameters")
    parser.add_argument("--stack", help="stack name (default rebound-STAGE)")
    parser.add_argument("--region", default=None)
    parser.add_argument("--dry-run", action="store_true", help="print the steps, run none")
    args = parser.parse_args(argv)
    if not args.dry_run and not args.parameters.is_file():
        print(f"deploy: no parameters file {args.parameters}", file=sys.stderr)
        return 2

    def clients() -> tuple[Any, Any]:
        import boto3

        return boto3.client("s3", region_name=args.region), boto3.client("cloudformation",
                                                                          region_name=args.region)

    steps = plan(args, clients)
    for number, step in enumerate(steps, 1):
        print(f"[{number}/{len(steps)}] {step.title}", flush=True)
        if args.dry_run:
            continue
        try:
            step.run()
        except (DeployError, subprocess.CalledProcessError) as exc:
            print(f"deploy: step {number} failed: {exc}", file=sys.stderr)
            return 1
    print("dry run: nothing was changed" if args.dry_run else "deployed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
