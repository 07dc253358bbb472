"""Move messages from the dead-letter queue back to the events queue.

Usage: python scripts/redrive.py [--count N] [--dry-run] [--dlq-url URL] [--queue-url URL]
Defaults: EVENTS_QUEUE_URL and EVENTS_DLQ_URL (or <EVENTS_QUEUE_URL>-dlq). Body and message
attributes are preserved, so a redriven webhook is processed exactly as the original (and a
webhook that was in fact applied before is a no-op: its id is unique in the events table).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def redrive(sqs: Any, dlq_url: str, queue_url: str, count: int | None = None,
            dry_run: bool = False) -> int:
    """Move up to ``count`` messages (all when None); return how many were moved (or would be)."""
    if dry_run:
        attrs = sqs.get_queue_attributes(QueueUrl=dlq_url,
                                          AttributeNames=["ApproximateNumberOfMessages"])
        available = int(attrs["Attributes"]["ApproximateNumberOfMessages"])
        return available if count is None else min(count, available)
    moved = 0
    while count is None or moved < count:
        want = 10 if count is None else min(10, count - moved)
        messages = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=want,
                                       MessageAttributeNames=["All"], VisibilityTimeout=60,
                                       WaitTimeSeconds=0).get("Messages", [])
        if not messages:
            break
        for m in messages:
            # Send first, then delete: a crash in between duplicates (harmless), never loses.
            sqs.send_message(QueueUrl=queue_url, MessageBody=m["Body"],
                             MessageAttributes=m.get("MessageAttributes") or {})
            sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=m["ReceiptHandle"])
            moved += 1
    return moved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Move DLQ messages back to the events queue")
    parser.add_argument("--count", type=int, default=None, help="at most this many (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="say how many would move")
    parser.add_argument("--queue-url", default=os.environ.get("EVENTS_QUEUE_URL"))
    parser.add_argument("--dlq-url", default=os.environ.get("EVENTS_DLQ_URL"))
    args = parser.parse_args(argv)
    if not args.queue_url:
        print("redrive: set EVENTS_QUEUE_URL or --queue-url", file=sys.stderr)
        return 2
    dlq_url = args.dlq_url or f"{args.queue_url}-dlq"
    import boto3

    n = redrive(boto3.client("sqs"), dlq_url, args.queue_url, args.count, args.dry_run)
    print(f"{'would move' if args.dry_run else 'moved'} {n} message(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
