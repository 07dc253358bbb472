"""`make loadtest`: concurrent producers against the webhook route and the real consumer.

Usage: python scripts/loadtest.py [--producers 4] [--seconds 20] [--companies 50]

Each producer is its own process running the Chalice app (as each Lambda instance does: a
Chalice app serves one request at a time), POSTing signed webhooks through the real route for
a bounded time. SQS is a moto server on 127.0.0.1; one consumer drains it like Lambda's event
source into an embedded Postgres, with the fake Whop taking the T+0 nudges. Reports accepted/s,
processed/s, route latency p50/p95/p99, errors (must be 0) and the queue lag (depth when the
producers stopped, and how long the consumer then took to drain). Only 127.0.0.1 is contacted;
every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import socket
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("APP_ENV", "test")
for _name, _value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                      "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                      "POWERTOOLS_METRICS_NAMESPACE": "ReboundLoad", "POWERTOOLS_LOG_LEVEL": "ERROR",
                      "POWERTOOLS_METRICS_DISABLED": "true"}.items():
    os.environ.setdefault(_name, _value)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _produce(index: int, stop_at: float, companies: int, seed: int, env: dict[str, str],
             out: Any) -> None:
    os.environ.update(env)
    from chalice.test import Client

    from app import app
    from scripts.whop_payloads import payment_event, sign

    rng = random.Random(seed + index)
    latencies: list[float] = []
    errors: list[int] = []
    with Client(app) as http:
        n = 0
        while time.time() < stop_at:
            n += 1
            company = f"biz_load_{rng.randrange(companies):03d}"
            msg_id, body = payment_event("payment.failed", company=company, membership=f"mem_{index}_{n}",
                                         user=f"user_{index}_{n}", at=datetime.now(UTC))
            started = time.perf_counter()
            resp = http.http.post("/webhooks/whop", body=body,
                                  headers=sign(body, msg_id, env["WHOP_WEBHOOK_SECRET"]))
            latencies.append(time.perf_counter() - started)
            if resp.status_code != 200:
                errors.append(resp.status_code)
    out.put((latencies, errors))


def run(producers: int, seconds: float, companies: int, seed: int) -> dict[str, Any]:
    import boto3
    from moto.server import ThreadedMotoServer

    from app import process_events
    from chalicelib import config, db, effects, queue, whop
    from chalicelib.whop import WhopClient
    from scripts import local_sqs, localdb
    from scripts.fake_whop import FakeWhop

    base = ROOT / ".tmp"
    base.mkdir(exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="load-pg-", dir=base))
    local = localdb.start(data_dir, log=lambda _m: None)
    fake = FakeWhop().start()
    moto_port = _free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    try:
        env = {"DATABASE_URL": local.runtime_url, "WHOP_API_BASE": fake.base_url,
               "WHOP_API_KEY": fake.api_key, "WHOP_JWKS_URL": fake.jwks_url, "WHOP_APP_ID": fake.app_id,
               "WHOP_WEBHOOK_SECRET": fake.webhook_secret, "PUBLIC_BASE_URL": "https://rebound.test",
               "AWS_ENDPOINT_URL_SQS": f"http://127.0.0.1:{moto_port}"}
        os.environ.update(env)
        sqs = boto3.client("sqs", region_name="us-east-1")
        queues = local_sqs.ensure_queues(sqs, visibility_timeout=30)
        env["EVENTS_QUEUE_URL"] = os.environ["EVENTS_QUEUE_URL"] = queues.queue_url
        config.reset_config()
        db.reset_database()
        queue.reset_queue()
        whop.set_whop(WhopClient.from_config(config.get_config(), sleep=lambda _s: None))
        effects.clear_experience_cache()
        for c in range(companies):
            fake.add_experience(f"biz_load_{c:03d}", fake.app_id, f"exp_{c}")

        spawn = multiprocessing.get_context("spawn")
        out = spawn.Queue()
        # Producers start together once every process has imported the app.
        stop_at = time.time() + 8.0 + seconds
        procs = [spawn.Process(target=_produce, args=(i, stop_at, companies, seed, env, out))
                 for i in range(producers)]
        for proc in procs:
            proc.start()
        processed = 0
        while time.time() < stop_at:  # the consumer keeps up while the producers run
            ok, _failed = local_sqs.poll_once(sqs, queues, process_events)
            processed += ok
        results = [out.get(timeout=120) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        lag = _depth(sqs, queues.queue_url)
        drain_started = time.monotonic()
        deadline = drain_started + 600
        while time.monotonic() < deadline:
            ok, failed = local_sqs.poll_once(sqs, queues, process_events)
            processed += ok
            if ok == failed == 0 and _depth(sqs, queues.queue_url) == 0:
                break
        drain_s = time.monotonic() - drain_started
        latencies = [x for lat, _ in results for x in lat]
        errors = [x for _, err in results for x in err]
        accepted = len(latencies) - len(errors)
        return {"producers": producers, "seconds": seconds, "accepted": accepted,
                "accepted_per_s": round(accepted / seconds, 1), "processed": processed,
                "processed_per_s": round(processed / (seconds + drain_s), 1),
                "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
                "p95_ms": round(percentile(latencies, 0.95) * 1000, 1),
                "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
                "errors": len(errors), "queue_depth_when_producers_stopped": lag,
                "drain_after_stop_s": round(drain_s, 1)}
    finally:
        whop.reset_whop()
        moto.stop()
        fake.stop()
        db.reset_database()
        local.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(data_dir.parent / f".{data_dir.name}-run", ignore_errors=True)


def _depth(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return sum(int(v) for v in attrs.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--companies", type=int, default=50)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    result = run(args.producers, min(args.seconds, 600.0), args.companies, args.seed)
    print(json.dumps(result))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
