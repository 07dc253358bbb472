"""`make sizing`: what a Lambda memory size buys, as bench-style ratios measured on this machine.

Lambda gives a function CPU in proportion to its memory (1,769 MB is one vCPU). This runs the
webhook function's work — a cold start (``import app`` and the first signed webhook through the
route) and warm webhooks — in fresh processes held to the CPU share of each size by a CFS quota
(a cgroup of its own, as Lambda's own sandbox does), or, where cgroups cannot be written, projects
the measured CPU time onto the share. The webhook route is the hot path and pure CPU (no
database); functions that wait on Postgres or Whop gain less from more CPU.

Prints one JSON line per figure and a last line with the choice. Each figure is the median of
``--repeat`` fresh processes per size; the machine is shared, so ratios between sizes measured in
the same run are what to read, not absolute times. x86_64 only: arm64 cannot run here.

Usage: python scripts/sizing.py [--sizes 512,1024] [--repeat 5] [--warm 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ONE_VCPU_MB = 1769  # AWS: "at 1,769 MB, a function has the equivalent of one vCPU"
PERIOD_US = 100_000
# us-east-1, per GB-second (x86_64; arm64 is 20% less): the cost of one invocation is linear in
# memory × billed duration.
PRICE_GB_S = {"x86_64": 0.0000166667, "arm64": 0.0000133334}
CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")

CHILD = r'''
import json, os, sys, time, resource
sys.path.insert(0, os.environ["REBOUND_ROOT"])
wall0 = time.perf_counter()
cpu0 = time.process_time()
import app
from chalice.test import Client
from datetime import UTC, datetime
from scripts.whop_payloads import payment_event, sign

class Queue:
    def send(self, webhook_id, received_at, *, event=None, unusable=None):
        return "m-" + webhook_id

app.get_queue = lambda: Queue()
client = Client(app.app)
def deliver(n):
    msg_id, body = payment_event("payment.failed", at=datetime.now(UTC), membership=f"mem_{n}")
    r = client.http.post("/webhooks/whop", body=body, headers=sign(body, msg_id))
    assert r.status_code == 200, r.body
deliver(0)
cold_ms = (time.perf_counter() - wall0) * 1000
cold_cpu_ms = (time.process_time() - cpu0) * 1000
warm = []
for n in range(1, int(os.environ["REBOUND_WARM"]) + 1):
    t = time.perf_counter()
    deliver(n)
    warm.append((time.perf_counter() - t) * 1000)
warm.sort()
print(json.dumps({"cold_ms": cold_ms, "cold_cpu_ms": cold_cpu_ms, "warm_ms": warm[len(warm) // 2]}))
'''


@contextmanager
def cpu_share(memory_mb: int) -> Iterator[Path | None]:
    """A cgroup holding its processes to ``memory_mb``'s CPU share; None where none can be made."""
    group = CGROUP_ROOT / f"rebound_sizing_{os.getpid()}_{memory_mb}"
    try:
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(int(PERIOD_US * memory_mb / ONE_VCPU_MB)))
    except OSError:
        yield None
        return
    try:
        yield group
    finally:
        group.rmdir()


def run_once(group: Path | None, warm: int) -> dict[str, float]:
    env = {**os.environ, "REBOUND_ROOT": str(ROOT), "REBOUND_WARM": str(warm), "APP_ENV": "test",
           "POWERTOOLS_METRICS_NAMESPACE": "Sizing", "AWS_DEFAULT_REGION": "us-east-1",
           "PYTHONDONTWRITEBYTECODE": "1"}

    def enter() -> None:
        if group is not None:
            (group / "cgroup.procs").write_text(str(os.getpid()))

    with tempfile.TemporaryFile() as out:
        subprocess.run([sys.executable, "-c", CHILD], env=env, stdout=out, stderr=subprocess.DEVNULL,
                       preexec_fn=enter, check=True, cwd=ROOT)  # the child joins our own cgroup
        out.seek(0)
        lines = [line for line in out.read().decode().splitlines() if line.startswith('{"cold_ms"')]
    return dict(json.loads(lines[-1]))


def measure(memory_mb: int, repeat: int, warm: int) -> dict[str, Any]:
    with cpu_share(memory_mb) as group:
        runs = [run_once(group, warm) for _ in range(repeat)]
    figures = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    share = memory_mb / ONE_VCPU_MB
    if group is None:  # no cgroup: project the CPU time onto the share
        figures["cold_ms"] = figures["cold_cpu_ms"] / min(share, 1.0)
        figures["warm_ms"] = figures["warm_ms"] / min(share, 1.0)
    method = "cgroup" if group else "projected"
    return {"memory_mb": memory_mb, "vcpu_share": round(share, 3), "method": method,
            **{k: round(v, 1) for k, v in figures.items()}}


def cost_per_million(memory_mb: int, duration_ms: float, arch: str = "x86_64") -> float:
    billed_s = max(1.0, round(duration_ms)) / 1000  # billed by the millisecond
    return 1_000_000 * memory_mb / 1024 * billed_s * PRICE_GB_S[arch]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warm", type=int, default=200)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = [measure(size, args.repeat, args.warm) for size in sizes]
    for r in results:
        for arch, suffix in (("x86_64", ""), ("arm64", "_arm64")):
            cost = cost_per_million(r["memory_mb"], r["warm_ms"], arch)
            r[f"warm_cost_per_million_usd{suffix}"] = round(cost, 4)
        print(json.dumps(r))
    base, big = results[0], results[-1]
    ratios = {"sizes": [base["memory_mb"], big["memory_mb"]],
              "cold_ratio": round(big["cold_ms"] / base["cold_ms"], 2),
              "warm_ratio": round(big["warm_ms"] / base["warm_ms"], 2),
              "cost_ratio": round(big["warm_cost_per_million_usd"] / base["warm_cost_per_million_usd"], 2)}
    print(json.dumps(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
