"""Local stand-ins for Lambda's event sources, used by `make dev`.

- ``consumer``: polls the local SQS queue (moto server) and invokes ``app.process_events`` with
  real SQS-shaped batches, honouring partial failures (failed messages become visible again after
  the visibility timeout and reach the DLQ after 5 receives).
- ``scheduler``: invokes ``app.process_reminders`` every ``--every`` seconds, like EventBridge.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import local_sqs  # noqa: E402

_running = True


def _stop(*_: Any) -> None:
    global _running
    _running = False


def run_consumer(queue_name: str) -> None:
    import boto3

    from app import process_events

    sqs = boto3.client("sqs")
    queues = local_sqs.ensure_queues(sqs, queue_name, visibility_timeout=10)
    while _running:
        try:
            ok, failed = local_sqs.poll_once(sqs, queues, process_events, wait_seconds=1)
        except Exception as exc:  # noqa: BLE001 - keep polling through a moto restart or hiccup
            print(f"consumer: poll failed ({type(exc).__name__}); retrying", file=sys.stderr)
            time.sleep(1)
            continue
        if ok or failed:
            retry = f", {failed} failed (visible again after the visibility timeout)" if failed else ""
            print(f"consumer: batch of {ok + failed}: {ok} applied{retry}", flush=True)


def run_scheduler(every_s: float) -> None:
    from app import process_reminders

    while _running:
        try:
            process_reminders({"id": "local-tick", "detail-type": "Scheduled Event", "source": "aws.events",
                               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "region": "us-east-1", "resources": [], "detail": {},
                               "account": "000000000000", "version": "0"},
                              local_sqs.LambdaContext(function_name="process_reminders"))
        except Exception as exc:  # noqa: BLE001 - the next tick tries again, as EventBridge would
            print(f"scheduler: tick failed ({type(exc).__name__})", file=sys.stderr)
        deadline = time.monotonic() + every_s
        while _running and time.monotonic() < deadline:
            time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["consumer", "scheduler"])
    parser.add_argument("--queue-name", default=os.environ.get("EVENTS_QUEUE_NAME", "rebound-events"))
    parser.add_argument("--every", type=float, default=float(os.environ.get("SCHEDULER_EVERY_S", "30")))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if args.mode == "consumer":
        run_consumer(args.queue_name)
    else:
        run_scheduler(args.every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
