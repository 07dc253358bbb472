"""docs/runbook.md works: every SQL block and every command on the page is run here, in the page's
order, and must find what its playbook is meant to find.

- ```` ```sql <role> ```` blocks run against the migrated test database, with a bad day's data in it
  (failed and retrying sends, overdue work, poison records), as a login holding the role the block
  names (``rebound_ops`` through the login the page itself creates; ``owner`` as the owner), with
  forced RLS on: each must return rows, and the rows it is meant to find.
- ```` ```sh ```` lines run the page's scripts in-process against moto (a ``rebound-prod`` stack with
  its outputs, queues, functions, secrets and an alarm in ALARM) and the app served on 127.0.0.1;
  each command's effect is checked (messages moved, functions paused, secrets rotated and picked up
  by the running app without a restart).
- ```` ```logs <group> ```` blocks are Logs Insights queries, which only CloudWatch runs: every field
  they read must be one the code logs (or the access log's format declares).
A block or command this test does not know how to check fails it: the page cannot grow untested."""

from __future__ import annotations

import ast
import io
import json
import re
import shlex
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import boto3
import pytest
from chalice.test import Client
from moto import mock_aws

from chalicelib import config, db_pool, health, tenancy, whop, whop_client
from chalicelib.database_url import parse_database_url
from chalicelib.db_pool import connect
from scripts import localdb, migrate, ops
from scripts.fake_whop import FakeWhop
from tests.conftest import ROOT, Owner
from tests.helpers import payment_event, serve_chalice, sign

RUNBOOK = ROOT / "docs" / "runbook.md"
STACK = "rebound-prod"
REGION = "us-east-1"
COMPANY = "biz_ops_a"


@dataclass
class Block:
    section: str
    language: str
    label: str  # the word after the language: the role, or the log group
    text: str


def blocks(path: Path = RUNBOOK) -> list[Block]:
    found: list[Block] = []
    section = ""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        elif line.startswith("```") and line.strip() != "```":
            info = line[3:].split()
            body = []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            found.append(Block(section, info[0], info[1] if len(info) > 1 else "", "\n".join(body)))
        i += 1
    return found


# --- the bad day ---------------------------------------------------------------------------------


def seed_bad_day(owner: Owner) -> str:
    case_id = str(uuid.uuid4())
    owner.run("INSERT INTO recovery_cases (id, company_id, membership_id, user_id, first_failure_at,"
              " last_failure_at, status, next_action_at) VALUES (CAST(:id AS uuid), :c, 'mem_ops_1',"
              " 'user_ops_1', now() - interval '2 days', now() - interval '2 days', 'open',"
              " now() - interval '1 hour')", id=case_id, c=COMPANY)
    rows = [("failed", "nudge", "dm", None, "http_403: messaging blocked by the member"),
            ("failed", "nudge", "push", None, "http_422: no push target"),
            ("pending", "reminder", "dm", "credentials", "http_401"),
            ("pending", "reminder", "push", "unavailable", "timeout")]
    for status, kind, channel, error_class, detail in rows:
        owner.run("INSERT INTO recovery_actions (case_id, company_id, kind, step, channel, status,"
                  " idempotency_key, error_class, error_detail, due_at, updated_at)"
                  " VALUES (CAST(:case AS uuid), :c, :kind, :step, :channel, :status, :key, :class,"
                  " :detail, now() - interval '10 minutes', now() - interval '5 minutes')",
                  case=case_id, c=COMPANY, kind=kind, step=f"{kind}_{channel}", channel=channel,
                  status=status, key=uuid.uuid4().hex, **{"class": error_class}, detail=detail)
    owner.run("INSERT INTO poison_events (webhook_id, reason, error_class) VALUES"
              " ('msg_poison_1', 'malformed webhook: membership_id missing or invalid', 'Unusable')")
    return case_id


# What each ops function must find in the bad day (a check per function the page calls).
EXPECT: dict[str, Callable[[list[dict[str, Any]]], bool]] = {
    "ops_failed_sends": lambda rows: {(r["company_id"], r["channel"]) for r in rows} >= {
        (COMPANY, "dm"), (COMPANY, "push")} and any("blocked" in r["error_detail"] for r in rows),
    "ops_retrying_sends": lambda rows: {r["error_class"] for r in rows} >= {"credentials", "unavailable"},
    "ops_backlog": lambda rows: any(r["company_id"] == COMPANY and r["due_cases"] >= 1
                                    and r["owed_rows"] >= 2 for r in rows),
    "ops_poison_events": lambda rows: any(r["reason"].startswith("malformed webhook") for r in rows),
    "ops_connections": lambda rows: any(r["login"] == "ops_oncall" for r in rows)
    and all(r["max_connections"] > 0 for r in rows),
    "ops_audit": lambda rows: {r["function"] for r in rows} >= {"ops_failed_sends", "ops_connections"}
    and {r["login"] for r in rows} == {"ops_oncall"},
}


def statements(sql: str) -> list[str]:
    return [s.strip() for s in re.split(r";\s*(?:\n|$)", sql) if s.strip()]


# --- the deployed world, in moto and on 127.0.0.1 -------------------------------------------------


@dataclass
class World:
    owner_url: str
    runtime_base: tuple[str, str]  # (database, socket dir) for URLs of other logins
    endpoint: str
    fake: FakeWhop
    arns: dict[str, str]
    files: dict[str, str] = field(default_factory=dict)  # what `< file` redirects read
    clock_offset: list[float] = field(default_factory=lambda: [0.0])
    secrets_now: dict[str, str] = field(default_factory=dict)

    def url(self, login: str, password: str) -> str:
        database, socket_dir = self.runtime_base
        return f"postgresql://{login}:{quote(password)}@/{database}?host={socket_dir}"

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=REGION)


@pytest.fixture
def world(local_database: localdb.LocalDatabase, owner: Owner, database: db_pool.Database,
          fake_whop: FakeWhop, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    runtime = urlsplit(local_database.runtime_url)
    base = (runtime.path.lstrip("/"), parse_qs(runtime.query)["host"][0])
    # The embedded server trusts local logins; the two logins here must prove their password, as
    # on RDS, or a rotated password would prove nothing.
    hba = Path(str(owner.run("SHOW hba_file")[0][0]))
    trusting = hba.read_text()
    hba.write_text("local all rebound_service,ops_oncall scram-sha-256\n" + trusting)
    owner.run("SELECT pg_reload_conf()")
    try:
        owner.run("DROP ROLE IF EXISTS ops_oncall")  # the page creates it
        if not owner.run("SELECT 1 FROM pg_roles WHERE rolname = 'rebound_service'"):
            owner.run("CREATE ROLE rebound_service LOGIN NOSUPERUSER NOBYPASSRLS")
        owner.run("GRANT rebound_app TO rebound_service")
        owner.run("ALTER ROLE rebound_service PASSWORD 'first-password'")
        seed_bad_day(owner)
        with mock_aws():
            world = World(local_database.owner_url, base, "", fake_whop, {})
            sm = world.client("secretsmanager")
            values = {"DatabaseUrlSecretArn": world.url("rebound_service", "first-password"),
                      "RuntimeLoginSecretArn": json.dumps({"username": "rebound_service",
                                                           "password": "first-password"}),
                      "WhopApiKeySecretArn": fake_whop.api_key,
                      "WhopWebhookSecretArn": fake_whop.webhook_secret,
                      "SchedulerSecretArn": "scheduler-secret-from-secrets-manager",
                      "HealthSecretArn": "health-secret-generated-by-the-stack"}
            for name, value in values.items():
                world.arns[name] = sm.create_secret(Name=f"{STACK}/{name}", SecretString=value)["ARN"]
            # The app as deployed: every secret from Secrets Manager, read again when 300 s old.
            for setting, parameter in (("DATABASE_URL", "DatabaseUrlSecretArn"),
                                       ("WHOP_API_KEY", "WhopApiKeySecretArn"),
                                       ("WHOP_WEBHOOK_SECRET", "WhopWebhookSecretArn"),
                                       ("SCHEDULER_SECRET", "SchedulerSecretArn"),
                                       ("HEALTH_SECRET", "HealthSecretArn")):
                monkeypatch.delenv(setting, raising=False)
                monkeypatch.setenv(f"{setting}_SECRET_ARN", world.arns[parameter])
            monkeypatch.setenv("WHOP_WEBHOOK_SECRET_DESCRIBE_ARN", world.arns["WhopWebhookSecretArn"])
            monkeypatch.setenv("WHOP_API_BASE", fake_whop.base_url)
            monkeypatch.setenv("WHOP_JWKS_URL", fake_whop.jwks_url)
            monkeypatch.setenv("WHOP_APP_ID", fake_whop.app_id)
            real_clock = config.clock
            monkeypatch.setattr(config, "clock", lambda: real_clock() + world.clock_offset[0])
            sqs = world.client("sqs")
            urls = {name: sqs.create_queue(QueueName=f"{STACK}-{name}")["QueueUrl"]
                    for name in ("events", "events-dlq", "tick-failures")}
            monkeypatch.setenv("EVENTS_QUEUE_URL", urls["events"])
            config.reset_config()
            tenancy.reset_database()
            whop_client.reset_whop()
            health.deep_cache.clear()
            from app import app

            with serve_chalice(app) as endpoint:
                world.endpoint = endpoint + "/"
                _stack(world, urls)
                yield world
            config.reset_config()
            tenancy.reset_database()
            whop_client.reset_whop()
            health.deep_cache.clear()
    finally:
        hba.write_text(trusting)
        owner.run("SELECT pg_reload_conf()")
        owner.run("DROP ROLE IF EXISTS ops_oncall")


def _stack(world: World, urls: dict[str, str]) -> None:
    """The stack's outputs, parameters, functions and one alarm in ALARM, as ops.py finds them."""
    outputs = {"EndpointURL": world.endpoint, "HealthSecretArn": world.arns["HealthSecretArn"],
               "EventsQueueUrl": urls["events"], "EventsDeadLetterQueueUrl": urls["events-dlq"],
               "TickFailureQueueUrl": urls["tick-failures"]}
    body = {"Parameters": {"SchedulerSecretArn": {"Type": "String"}},
            "Resources": {"Placeholder": {"Type": "AWS::SQS::Queue",
                                          "Properties": {"QueueName": f"{STACK}-x"}}},
            "Outputs": {k: {"Value": v} for k, v in outputs.items()}}
    world.client("cloudformation").create_stack(
        StackName=STACK, TemplateBody=json.dumps(body),
        Parameters=[{"ParameterKey": "SchedulerSecretArn",
                     "ParameterValue": world.arns["SchedulerSecretArn"]}])
    iam = world.client("iam")
    role = iam.create_role(RoleName="rebound-ops-test", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("app.py", "def handler(event, context):\n    return None\n")
    lam = world.client("lambda")
    for view in ("process_events", "process_reminders"):
        lam.create_function(FunctionName=f"{STACK}-{view}", Runtime="python3.11", Role=role,
                            Handler="app.handler", Code={"ZipFile": code.getvalue()})
    lam.put_function_concurrency(FunctionName=f"{STACK}-process_reminders", ReservedConcurrentExecutions=2)
    sqs = world.client("sqs")
    # The mapping reads a queue of its own: moto would run the (docker) function on the events queue.
    source = sqs.create_queue(QueueName=f"{STACK}-mapping-source")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=source, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    lam.create_event_source_mapping(EventSourceArn=arn, FunctionName=f"{STACK}-process_events", BatchSize=10)
    for i in range(12):  # twelve webhooks parked in the DLQ
        _, payload = payment_event("payment.failed", at=datetime.now(UTC) - timedelta(hours=1),
                                        company=COMPANY, membership=f"mem_dlq_{i}", msg_id=f"msg_dlq_{i}")
        sqs.send_message(QueueUrl=urls["events-dlq"], MessageBody=payload.decode())
    sqs.send_message(QueueUrl=urls["tick-failures"], MessageBody=json.dumps({
        "timestamp": "2026-12-01T10:00:00.000Z", "requestContext": {"condition": "RetriesExhausted"},
        "responsePayload": {"errorType": "DatabaseUnavailable", "errorMessage": "cannot connect"}}))
    cw = world.client("cloudwatch")
    cw.put_metric_alarm(AlarmName=f"{STACK}-RouteGetKpisAlarm-1A2B3C",
                        AlarmDescription="[page] Route get_kpis: over 5% answered 5xx",
                        Namespace="Rebound", MetricName="Route5xx_get_kpis", Statistic="Sum", Period=300,
                        EvaluationPeriods=1, Threshold=1, ComparisonOperator="GreaterThanOrEqualToThreshold")
    cw.set_alarm_state(AlarmName=f"{STACK}-RouteGetKpisAlarm-1A2B3C", StateValue="ALARM", StateReason="test")


# --- running the page ----------------------------------------------------------------------------


def run_sql(world: World, block: Block, owner: Owner) -> None:
    if block.label == "owner":
        for statement in statements(block.text):
            statement = statement.replace("<password>", "ops-oncall-password").replace(
                "<new password>", "second-password")
            owner.run(statement)
            if statement.startswith("ALTER ROLE rebound_service PASSWORD"):
                world.files["database-url.txt"] = world.url("rebound_service", "second-password")
                world.files["runtime-login.json"] = json.dumps(
                    {"username": "rebound_service", "password": "second-password"})
        return
    assert block.label == "rebound_ops", f"{block.section}: unknown role {block.label!r}"
    conn = connect(parse_database_url(world.url("ops_oncall", "ops-oncall-password")))
    try:
        for statement in statements(block.text):
            result = conn.run(statement)
            names = [c["name"] for c in conn.columns or []]
            rows = [dict(zip(names, row, strict=True)) for row in result or []]
            called = re.search(r"\b(ops_\w+)\b", statement)
            assert called and called.group(1) in EXPECT, f"{block.section}: no expectation for {statement!r}"
            assert rows, f"{block.section}: {statement!r} found nothing"
            assert EXPECT[called.group(1)](rows), f"{block.section}: {statement!r} -> {rows}"
    finally:
        conn.close()


def run_sh(world: World, block: Block, checks: dict[str, Callable[[World, list[str], str], None]]) -> None:
    for line in block.text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        words = shlex.split(line)
        stdin_text = None
        if "<" in words:
            at = words.index("<")
            stdin_text = world.files[words[at + 1]]
            words = words[:at]
        words = [w.replace("<", "").replace(">", "") for w in words]
        words = [world.arns.get(w, w) for w in words]
        assert words[:1] == ["python"], f"{block.section}: {line!r} is not one of our scripts"
        script, argv = words[1], words[2:]
        out = io.StringIO()
        if script == "scripts/ops.py":
            code = ops.main(argv, client=world.client, stdin=io.StringIO(stdin_text or ""), out=out)
        elif script == "scripts/migrate.py":
            code = migrate.main([*argv, "--database-url", world.owner_url])
        else:
            raise AssertionError(f"{block.section}: {line!r}: the test does not know {script}")
        assert code == 0, f"{block.section}: {line!r} exited {code}: {out.getvalue()}"
        first = [] if not argv or argv[0].startswith("--") else argv[:1]
        flags = [a for a in argv if a.startswith("--") and a != "--stack"]
        key = " ".join([script.split("/")[-1], *first, *flags])
        check = checks.get(key)
        assert check is not None, f"{block.section}: no check for {key!r}"
        check(world, argv, out.getvalue())


def depth(world: World, output: str) -> int:
    attrs = world.client("sqs").get_queue_attributes(
        QueueUrl=ops.Stack(STACK, world.client).output(output),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return sum(int(v) for v in attrs.values())


def later(world: World, seconds: float = 301) -> None:
    """Time passes (the secrets' age), without waiting."""
    world.clock_offset[0] += seconds
    health.deep_cache.clear()


def check_put_secret(world: World, argv: list[str], out: str) -> None:
    arn = argv[argv.index("--secret-id") + 1]
    name = next(k for k, v in world.arns.items() if v == arn)
    stored = world.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]
    assert "within SECRETS_MAX_AGE_S" in out
    from app import app

    if name == "WhopWebhookSecretArn":
        # Whop now signs with the new secret: refused until our copy is read again, then accepted.
        msg_id, body = payment_event("payment.failed", at=datetime.now(UTC), company=COMPANY,
                                     membership="mem_rotation")
        headers = sign(body, msg_id, secret=stored)
        with Client(app) as client:
            assert client.http.post("/webhooks/whop", body=body, headers=headers).status_code == 401
            later(world)
            assert client.http.post("/webhooks/whop", body=body, headers=headers).status_code == 200
    elif name == "WhopApiKeySecretArn":
        world.fake.api_key = stored  # Whop knows only the new key now
        world.fake.add_membership("mem_rotation", company_id=COMPANY, user_id="user_rotation")
        before = whop_client.get_whop()
        with pytest.raises(whop.WhopError):
            before.retrieve_membership("mem_rotation")  # still the old key: 401
        later(world)
        after = whop_client.get_whop()
        assert after is not before and after.retrieve_membership("mem_rotation").id == "mem_rotation"
    elif name == "DatabaseUrlSecretArn":
        current = tenancy.get_database()
        current.close()  # the next transaction opens a connection, with the cached old password
        _, version = tenancy.ping()
        assert version is not None, "refused, read the secret again at once, connected"
        assert tenancy.get_database().url == stored
    else:
        assert name == "RuntimeLoginSecretArn"  # RDS Proxy's copy: read by the proxy, not by us
        assert json.loads(stored) == {"username": "rebound_service", "password": "second-password"}


def _tick_and_consumer(world: World) -> tuple[int, str]:
    """The tick's reserved concurrency and the consumer's event source mapping state."""
    lam = world.client("lambda")
    reserved = lam.get_function_concurrency(FunctionName=f"{STACK}-process_reminders")[
        "ReservedConcurrentExecutions"]
    mapping = lam.list_event_source_mappings(FunctionName=f"{STACK}-process_events")[
        "EventSourceMappings"][0]
    return reserved, mapping["State"]


def checks() -> dict[str, Callable[[World, list[str], str], None]]:
    def alarms(world: World, argv: list[str], out: str) -> None:
        assert f"{STACK}-RouteGetKpisAlarm-1A2B3C: [page]" in out and "1 alarm(s) in ALARM" in out

    def queues(world: World, argv: list[str], out: str) -> None:
        assert re.search(r"^dead letters: \d+ waiting", out, re.M) and "tick failures: 1 waiting" in out

    def redrive_dry(world: World, argv: list[str], out: str) -> None:
        assert out.strip() == "would move 12 message(s)" and depth(world, "EventsDeadLetterQueueUrl") == 12

    def redrive_some(world: World, argv: list[str], out: str) -> None:
        assert out.strip() == "moved 10 message(s)" and depth(world, "EventsDeadLetterQueueUrl") == 2

    def redrive_all(world: World, argv: list[str], out: str) -> None:
        assert out.strip() == "moved 2 message(s)" and depth(world, "EventsDeadLetterQueueUrl") == 0
        assert depth(world, "EventsQueueUrl") == 12

    def tick_failures(world: World, argv: list[str], out: str) -> None:
        assert "RetriesExhausted: DatabaseUnavailable cannot connect" in out
        assert depth(world, "TickFailureQueueUrl") == 1, "looked at, not taken"

    def paused(world: World, argv: list[str], out: str) -> None:
        assert _tick_and_consumer(world) == (0, "Disabled")

    def resumed(world: World, argv: list[str], out: str) -> None:
        assert _tick_and_consumer(world) == (2, "Enabled")

    def healthy(world: World, argv: list[str], out: str) -> None:
        kind = argv[argv.index("--type") + 1]
        status, body = out.split(" ", 1)
        assert status == "200" and json.loads(body)["status"] == "ok" and json.loads(body)["check"] == kind

    def ticked(world: World, argv: list[str], out: str) -> None:
        status, body = out.split(" ", 1)
        assert status == "200" and "companies" in json.loads(body)

    def migrated(world: World, argv: list[str], out: str) -> None:
        pass  # exit 0 is the check: --check finds nothing pending on the migrated database

    return {"ops.py alarms": alarms, "ops.py queues": queues, "ops.py redrive --dry-run": redrive_dry,
            "ops.py redrive --count": redrive_some, "ops.py redrive": redrive_all,
            "ops.py tick-failures": tick_failures, "ops.py pause-sends": paused,
            "ops.py resume-sends": resumed, "ops.py put-secret --secret-id": check_put_secret,
            "ops.py health --type": healthy, "ops.py tick": ticked,
            "migrate.py --check": migrated, "migrate.py": migrated}


def check_logs(block: Block, known: set[str]) -> None:
    text = re.sub(r'"[^"]*"|/[^/]*/', " ", block.text)  # string and regex literals
    words = set(re.findall(r"(?<![@\w])([A-Za-z_]\w*)", text))
    unknown = sorted(words - known - INSIGHTS_WORDS)
    assert not unknown, f"{block.section}: {block.label} has no field(s) {unknown}"


INSIGHTS_WORDS = {"fields", "filter", "sort", "desc", "asc", "limit", "stats", "count", "by", "and", "or",
                  "not", "like", "in", "display", "parse", "as"}
# Powertools Logger's own keys (every line), and CloudWatch's.
POWERTOOLS_KEYS = {"level", "message", "location", "timestamp", "service", "cold_start", "function_name",
                   "function_memory_size", "function_arn", "function_request_id", "xray_trace_id",
                   "exception", "exception_name"}


def _dict_keys(node: ast.expr, named: dict[str, ast.expr]) -> set[str]:
    """The string keys of a dict literal, following names and ``**`` unpacking in the function."""
    if isinstance(node, ast.Name) and node.id in named:
        return _dict_keys(named[node.id], named)
    if not isinstance(node, ast.Dict):
        return set()
    found = {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    for key, value in zip(node.keys, node.values, strict=True):
        if key is None:  # {**log, ...}
            found |= _dict_keys(value, named)
    return found


def _call_keys(function: ast.FunctionDef) -> set[str]:
    named = {t.id: n.value for n in ast.walk(function) if isinstance(n, ast.Assign)
             for t in n.targets if isinstance(t, ast.Name)}
    keys: set[str] = set()
    for node in ast.walk(function):
        for keyword in node.keywords if isinstance(node, ast.Call) else []:
            if keyword.arg == "extra":
                keys |= _dict_keys(keyword.value, named)
            elif keyword.arg and getattr(node.func, "attr", "") == "append_keys":
                keys.add(keyword.arg)
    return keys


def logged_keys() -> set[str]:
    """Every key the code puts on a log line: ``extra=`` of logger calls, append_keys(...)."""
    keys = set(POWERTOOLS_KEYS)
    for path in [ROOT / "app.py", *sorted((ROOT / "chalicelib").rglob("*.py"))]:
        for function in ast.walk(ast.parse(path.read_text())):
            if isinstance(function, ast.FunctionDef):
                keys |= _call_keys(function)
    from chalicelib.scheduler import TickResult

    return keys | set(TickResult().as_metrics())  # the tick's line carries its figures


def access_log_keys(packaged_template: dict[str, Any]) -> set[str]:
    stage = packaged_template["Resources"]["RestAPI"]["Properties"]["AccessLogSetting"]["Fn::If"][1]
    return set(json.loads(stage["Format"]))


def counting(key: str, check: Callable[[World, list[str], str], None],
             used: set[str]) -> Callable[[World, list[str], str], None]:
    def run(world: World, argv: list[str], out: str) -> None:
        used.add(key)
        check(world, argv, out)

    return run


def test_every_block_of_the_runbook_runs_and_finds_what_it_is_for(world: World, owner: Owner) -> None:
    world.files.update({"webhook-secret.txt": "ws_rotated_" + uuid.uuid4().hex,
                        "whop-key.txt": "whop_key_rotated_" + uuid.uuid4().hex})
    used: set[str] = set()
    all_checks = checks()
    counted = {key: counting(key, check, used) for key, check in all_checks.items()}
    seen = {"sql": 0, "sh": 0, "logs": 0}
    for block in blocks():
        assert block.language in seen, f"{block.section}: a ```{block.language} block nobody runs"
        seen[block.language] += 1
        if block.language == "sql":
            run_sql(world, block, owner)
        elif block.language == "sh":
            run_sh(world, block, counted)
    assert seen["sql"] >= 7 and seen["sh"] >= 8 and seen["logs"] >= 6, seen
    assert used == set(all_checks), f"commands the page no longer runs: {set(all_checks) - used}"


def test_every_logs_insights_query_reads_fields_that_are_logged(packaged: Any) -> None:
    known = logged_keys()
    queries = [b for b in blocks() if b.language == "logs"]
    assert queries
    for block in queries:
        if block.label.startswith("/aws/apigateway/"):
            check_logs(block, access_log_keys(packaged[0]))
        else:
            assert block.label.startswith("/aws/lambda/rebound-prod-"), block.label
            check_logs(block, known)


def test_the_ops_role_reads_only_through_its_audited_functions(world: World, owner: Owner) -> None:
    owner_block = next(b for b in blocks() if b.language == "sql" and b.label == "owner"
                       and "GRANT rebound_ops" in b.text)
    run_sql(world, owner_block, owner)  # the operator's login, as the page creates it
    conn = connect(parse_database_url(world.url("ops_oncall", "ops-oncall-password")))
    try:
        for table in ("recovery_actions", "recovery_cases", "events", "poison_events", "request_limits"):
            with pytest.raises(Exception, match="permission denied"):
                conn.run(f"SELECT count(*) FROM {table}")
        assert conn.run("SELECT count(*) FROM ops_failed_sends(1)")[0][0] >= 1
        with pytest.raises(Exception, match="permission denied"):
            conn.run("INSERT INTO ops_audit (function) VALUES ('forged')")
    finally:
        conn.close()
    # What the functions run as may read and append to the audit trail, and nothing else.
    writes = owner.run(
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants"
        " WHERE grantee = 'rebound_ops_reader' AND privilege_type <> 'SELECT'")
    assert writes == [["ops_audit", "INSERT"]]
    audited = owner.run("SELECT login, function FROM ops_audit WHERE login = 'ops_oncall'")
    assert ["ops_oncall", "ops_failed_sends"] in audited
