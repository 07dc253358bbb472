"""The on-call engineer's commands (docs/runbook.md): everything a playbook asks of AWS, by stack.

Usage: python scripts/ops.py COMMAND --stack STACK [--region REGION] [options]

  alarms          the stack's alarms in ALARM now, with severity and playbook (the page's first look)
  queues          depth and oldest-message age of the events queue, its DLQ and the tick failures
  redrive         move DLQ messages back to the events queue [--count N] [--dry-run]
  tick-failures   the last failed scheduled ticks (from the failure destination), without removing them
  pause-sends     stop the tick and the consumer: webhooks wait in SQS, nothing goes to Whop
  resume-sends    undo pause-sends
  put-secret      store a new secret value, read from standard input (never from the command line)
                  --secret-id ARN; functions read it again within SECRETS_MAX_AGE_S (300 s)
  health          the deep health checks with the stack's health secret [--type database|webhook]
  tick            run one reminder tick through the HTTP route (needs SchedulerSecretArn)

Names come from the stack (outputs EventsQueueUrl, EventsDeadLetterQueueUrl, TickFailureQueueUrl,
EndpointURL, HealthSecretArn; functions ``<stack>-process_events`` and ``<stack>-process_reminders``).
AWS errors end in one line, as in scripts/deploy.py. Tested against moto (tests/test_runbook.py
runs every command of the runbook).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.deploy import aws_error_line  # noqa: E402
from scripts.redrive import redrive  # noqa: E402

# process_reminders' reserved concurrency when running (infra/functions.toml, kind scheduler).
TICK_CONCURRENCY = 2


class OpsError(RuntimeError):
    pass


@dataclass
class Stack:
    name: str
    client: Callable[[str], Any]  # boto3 client factory by service name

    def outputs(self) -> dict[str, str]:
        stack = self.client("cloudformation").describe_stacks(StackName=self.name)["Stacks"][0]
        return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}

    def parameter(self, key: str) -> str:
        stack = self.client("cloudformation").describe_stacks(StackName=self.name)["Stacks"][0]
        values = {p["ParameterKey"]: p["ParameterValue"] for p in stack.get("Parameters", [])}
        return str(values.get(key, ""))

    def output(self, key: str) -> str:
        value = self.outputs().get(key)
        if not value:
            raise OpsError(f"stack {self.name} has no output {key}")
        return value

    def function(self, view: str) -> str:
        return f"{self.name}-{view}"


def alarms(stack: Stack, out: TextIO) -> int:
    cloudwatch = stack.client("cloudwatch")
    firing = []
    pages = cloudwatch.get_paginator("describe_alarms").paginate(
        AlarmNamePrefix=f"{stack.name}-", StateValue="ALARM", AlarmTypes=["CompositeAlarm", "MetricAlarm"])
    for page in pages:
        firing += page.get("CompositeAlarms", []) + page.get("MetricAlarms", [])
    for alarm in firing:
        description = alarm.get("AlarmDescription", "")
        print(f"{alarm['AlarmName']}: {description}", file=out)
    print(f"{len(firing)} alarm(s) in ALARM", file=out)
    return 0


def _attributes(sqs: Any, url: str) -> dict[str, str]:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    return dict(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"])


def queues(stack: Stack, out: TextIO) -> int:
    sqs, outputs = stack.client("sqs"), stack.outputs()
    for label, key in (("events", "EventsQueueUrl"), ("dead letters", "EventsDeadLetterQueueUrl"),
                       ("tick failures", "TickFailureQueueUrl")):
        attrs = _attributes(sqs, outputs[key])
        print(f"{label}: {attrs.get('ApproximateNumberOfMessages', '?')} waiting, "
              f"{attrs.get('ApproximateNumberOfMessagesNotVisible', '?')} in flight", file=out)
    return 0


def redrive_dlq(stack: Stack, out: TextIO, count: int | None, dry_run: bool) -> int:
    outputs = stack.outputs()
    moved = redrive(stack.client("sqs"), outputs["EventsDeadLetterQueueUrl"], outputs["EventsQueueUrl"],
                    count, dry_run)
    print(f"{'would move' if dry_run else 'moved'} {moved} message(s)", file=out)
    return 0


def tick_failures(stack: Stack, out: TextIO, limit: int = 10) -> int:
    """Look without taking: the messages become visible again at once (visibility 0)."""
    sqs = stack.client("sqs")
    messages = sqs.receive_message(QueueUrl=stack.output("TickFailureQueueUrl"),
                                   MaxNumberOfMessages=min(limit, 10), VisibilityTimeout=0,
                                   WaitTimeSeconds=0).get("Messages", [])
    for message in messages:
        try:
            record = json.loads(message["Body"])
        except ValueError:
            record = {}
        context = record.get("requestContext", {})
        payload = record.get("responsePayload") or {}
        print(f"{record.get('timestamp', '?')} {context.get('condition', '?')}: "
              f"{payload.get('errorType', '')} {payload.get('errorMessage', '')}".rstrip(), file=out)
    print(f"{len(messages)} failed tick(s) shown", file=out)
    return 0


def _consumer_mappings(stack: Stack) -> list[str]:
    lam = stack.client("lambda")
    mappings = lam.list_event_source_mappings(FunctionName=stack.function("process_events"))
    return [m["UUID"] for m in mappings.get("EventSourceMappings", [])]


def pause_sends(stack: Stack, out: TextIO) -> int:
    lam = stack.client("lambda")
    lam.put_function_concurrency(FunctionName=stack.function("process_reminders"),
                                 ReservedConcurrentExecutions=0)
    for uuid in _consumer_mappings(stack):
        lam.update_event_source_mapping(UUID=uuid, Enabled=False)
    print("paused: no tick runs, the consumer reads nothing (webhooks wait in SQS up to 14 days)", file=out)
    return 0


def resume_sends(stack: Stack, out: TextIO) -> int:
    lam = stack.client("lambda")
    lam.put_function_concurrency(FunctionName=stack.function("process_reminders"),
                                 ReservedConcurrentExecutions=TICK_CONCURRENCY)
    for uuid in _consumer_mappings(stack):
        lam.update_event_source_mapping(UUID=uuid, Enabled=True)
    print("resumed: ticks and the consumer run again; owed sends go out unless their window passed",
          file=out)
    return 0


def put_secret(stack: Stack, out: TextIO, secret_id: str, value: str) -> int:
    value = value.strip("\r\n")
    if not value:
        raise OpsError("put-secret: no value on standard input")
    stack.client("secretsmanager").put_secret_value(SecretId=secret_id, SecretString=value)
    print("stored; warm functions read it within SECRETS_MAX_AGE_S (300 s by default)", file=out)
    return 0


def _get(url: str, bearer: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method,  # noqa: S310 - our own endpoint
                                     headers={"Authorization": f"Bearer {bearer}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our own endpoint
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _secret(stack: Stack, arn: str) -> str:
    return str(stack.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"])


def health(stack: Stack, out: TextIO, check: str) -> int:
    endpoint = stack.output("EndpointURL").rstrip("/") + "/"
    status, body = _get(f"{endpoint}api/health?type={check}", _secret(stack, stack.output("HealthSecretArn")))
    print(f"{status} {body}", file=out)
    return 0 if status == 200 else 1


def tick(stack: Stack, out: TextIO) -> int:
    arn = stack.parameter("SchedulerSecretArn")
    if not arn:
        raise OpsError("the stack has no SchedulerSecretArn: the tick route is off (the schedule still runs)")
    endpoint = stack.output("EndpointURL").rstrip("/") + "/"
    status, body = _get(f"{endpoint}api/scheduler/reminders", _secret(stack, arn), method="POST")
    print(f"{status} {body}", file=out)
    return 0 if status == 200 else 1


def main(argv: list[str] | None = None, client: Callable[[str], Any] | None = None,
         stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("command", choices=["alarms", "queues", "redrive", "tick-failures", "pause-sends",
                                            "resume-sends", "put-secret", "health", "tick"])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--region", default=None)
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--secret-id")
    parser.add_argument("--type", default="database", choices=["database", "webhook"])
    args = parser.parse_args(argv)
    out = out or sys.stdout

    def boto(service: str) -> Any:
        import boto3

        return boto3.client(service, region_name=args.region)  # type: ignore[call-overload]

    stack = Stack(args.stack, client or boto)
    commands: dict[str, Callable[[], int]] = {
        "alarms": lambda: alarms(stack, out),
        "queues": lambda: queues(stack, out),
        "redrive": lambda: redrive_dlq(stack, out, args.count, args.dry_run),
        "tick-failures": lambda: tick_failures(stack, out),
        "pause-sends": lambda: pause_sends(stack, out),
        "resume-sends": lambda: resume_sends(stack, out),
        "put-secret": lambda: put_secret(stack, out, args.secret_id or "", (stdin or sys.stdin).read()),
        "health": lambda: health(stack, out, args.type),
        "tick": lambda: tick(stack, out),
    }
    if args.command == "put-secret" and not args.secret_id:
        print("ops: put-secret needs --secret-id", file=sys.stderr)
        return 2
    try:
        return commands[args.command]()
    except OpsError as exc:
        print(f"ops: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - boto3 raises many types; one line each
        print(f"ops: {args.command} failed: {aws_error_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
