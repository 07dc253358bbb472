"""`make bench`: performance as ratios (JSON lines), so results compare across machines.

- fold_scaling: time to fold 4N events / time to fold N events (linear ≈ 4).
- tick_vs_open_cases: a reminder tick's time with 20 due cases among 20,000 open ones / among
  200 open ones (cost follows due work, not open cases ≈ 1).
- webhook_verify_normalise: per-webhook time of verify + normalise, in microseconds (absolute,
  for orientation), and its ratio to a bare json.loads of the same body.
Uses an embedded Postgres in a temporary folder (or DATABASE_URL/MIGRATIONS_DATABASE_URL).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("APP_ENV", "test")


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def fold_scaling() -> dict[str, object]:
    from chalicelib.cases import fold
    from chalicelib.models import EventType, WhopEvent

    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def events(n: int) -> list[WhopEvent]:
        kinds = [EventType.PAYMENT_FAILED, EventType.PAYMENT_FAILED, EventType.PAYMENT_SUCCEEDED]
        return [WhopEvent(webhook_id=f"msg_{i}", type=kinds[i % 3], company_id="biz", membership_id="mem",
                          occurred_at=t0 + timedelta(hours=7 * i), received_at=t0) for i in range(n)]

    small, large = events(500), events(2000)
    ts = best_of(lambda: fold("biz", "mem", small))
    tl = best_of(lambda: fold("biz", "mem", large))
    return {"bench": "fold_scaling", "ratio": round(tl / ts, 2), "expect": "≈4 (linear)",
            "small_ms": round(ts * 1000, 2), "large_ms": round(tl * 1000, 2)}


def webhook_cost() -> dict[str, object]:
    from chalicelib.webhooks import normalise, verify
    from scripts.whop_payloads import SECRET, payment_event, sign

    now = datetime.now(UTC)
    msg_id, body = payment_event("payment.failed", at=now)
    headers = sign(body, msg_id)
    n = 2000

    def full() -> None:
        for _ in range(n):
            normalise(body, verify(body, headers, SECRET, now), now)

    def bare() -> None:
        for _ in range(n):
            json.loads(body)

    tf, tb = best_of(full, 3), best_of(bare, 3)
    return {"bench": "webhook_verify_normalise", "ratio": round(tf / tb, 1),
            "per_webhook_us": round(tf / n * 1e6, 1), "expect": "tens of µs per webhook"}


def tick_vs_open_cases() -> dict[str, object]:
    from chalicelib import db as dbmod
    from chalicelib.db import Database, connect, parse_database_url
    from chalicelib.scheduler import owe_reminders
    from scripts import localdb

    data = Path(tempfile.mkdtemp(prefix="bench-pg-", dir=str(ROOT / ".tmp") if (ROOT / ".tmp").exists()
                                 else None))
    local = localdb.start(data, log=lambda _m: None)
    owner = connect(parse_database_url(local.owner_url))
    now = datetime.now(UTC)
    try:
        timings = {}
        for open_cases in (200, 20_000):
            company = f"biz_bench_{open_cases}"
            owner.run("INSERT INTO recovery_cases (company_id, membership_id, first_failure_at,"
                      " last_failure_at, next_action_at) SELECT :c, 'mem_' || g, :ff, :ff, :later"
                      " FROM generate_series(1, :n) g", c=company, n=open_cases - 20,
                      ff=now - timedelta(hours=1), later=now + timedelta(days=1))
            owner.run("INSERT INTO recovery_cases (company_id, membership_id, first_failure_at,"
                      " last_failure_at, next_action_at) SELECT :c, 'due_' || g, :ff, :ff, :due"
                      " FROM generate_series(1, 20) g", c=company,
                      ff=now - timedelta(days=2, hours=1), due=now - timedelta(hours=1))
            owner.run("ANALYZE recovery_cases")
            database = Database(local.runtime_url)

            def run(company: str = company, database: Database = database) -> None:
                # Each run re-arms the 20 due cases so every run does the same work.
                owner.run("UPDATE recovery_cases SET last_reminder_offset = NULL, next_action_at = :due"
                          " WHERE company_id = :c AND membership_id LIKE 'due_%'",
                          c=company, due=now - timedelta(hours=1))
                owner.run("DELETE FROM recovery_actions WHERE company_id = :c", c=company)
                owe_reminders(company, now, database)

            timings[open_cases] = statistics.median([best_of(run, 1) for _ in range(7)])
            database.close()
        return {"bench": "tick_vs_open_cases", "ratio": round(timings[20_000] / timings[200], 2),
                "expect": "≈1 (cost follows due work)",
                "ms_200_open": round(timings[200] * 1000, 2),
                "ms_20000_open": round(timings[20_000] * 1000, 2)}
    finally:
        owner.close()
        dbmod.reset_database()
        local.stop()
        shutil.rmtree(data, ignore_errors=True)


def main() -> int:
    for bench in (fold_scaling, webhook_cost, tick_vs_open_cases):
        print(json.dumps(bench(), ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
