"""Local SQS plumbing for `make dev` and the tests: queues with a DLQ, and a consumer loop that
feeds ``process_events`` the way Lambda's SQS event source does.

Like Lambda: batches of up to 10, the handler's ``batchItemFailures`` are left on the queue
(visible again after the visibility timeout), successes are deleted, and SQS's redrive policy
moves a message to the DLQ after ``maxReceiveCount`` receives.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_RECEIVE_COUNT = 5


@dataclass
class Queues:
    queue_url: str
    dlq_url: str
    queue_arn: str


def ensure_queues(sqs: Any, name: str = "rebound-events", visibility_timeout: int = 30) -> Queues:
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq",
                               Attributes={"MessageRetentionPeriod": "1209600"})["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(QueueName=name, Attributes={
        "VisibilityTimeout": str(visibility_timeout),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                     "maxReceiveCount": str(MAX_RECEIVE_COUNT)}),
    })["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"]
    return Queues(queue_url=queue_url, dlq_url=dlq_url, queue_arn=arn)


@dataclass
class LambdaContext:
    """What Powertools reads from Lambda's context object."""

    function_name: str = "process_events"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:000000000000:function:process_events"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def to_lambda_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    attributes = {
        name: {"stringValue": value.get("StringValue"), "dataType": value.get("DataType", "String"),
               "stringListValues": [], "binaryListValues": []}
        for name, value in (message.get("MessageAttributes") or {}).items()
    }
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": attributes,
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": queue_arn.split(":")[3] if queue_arn.count(":") >= 5 else "us-east-1",
    }


Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def poll_once(sqs: Any, queues: Queues, handler: Handler, wait_seconds: int = 0) -> tuple[int, int]:
    """Receive one batch, invoke the handler like Lambda, delete what succeeded.

    Returns (succeeded, failed). A handler that raises fails the whole batch, as in Lambda.
    """
    resp = sqs.receive_message(QueueUrl=queues.queue_url, MaxNumberOfMessages=10,
                               WaitTimeSeconds=wait_seconds, MessageAttributeNames=["All"],
                               AttributeNames=["All"])
    messages = resp.get("Messages", [])
    if not messages:
        return 0, 0
    event = {"Records": [to_lambda_record(m, queues.queue_arn) for m in messages]}
    try:
        result = handler(event, LambdaContext())
        failed_ids = {f["itemIdentifier"] for f in (result or {}).get("batchItemFailures", [])}
    except Exception:  # noqa: BLE001 - Lambda treats a raising handler as a failed batch
        failed_ids = {m["MessageId"] for m in messages}
    done = [m for m in messages if m["MessageId"] not in failed_ids]
    if done:
        sqs.delete_message_batch(QueueUrl=queues.queue_url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)])
    return len(done), len(failed_ids)


def drain(sqs: Any, queues: Queues, handler: Handler, max_batches: int = 100) -> tuple[int, int]:
    """Poll until the queue returns nothing visible (bounded); totals of (succeeded, failed)."""
    ok = failed = 0
    for _ in range(max_batches):
        s, f = poll_once(sqs, queues, handler)
        if s == f == 0:
            break
        ok, failed = ok + s, failed + f
    return ok, failed
