"""The chaos run, small: the full one (10,000 deliveries) is `make chaos`, documented in the README.

Runs scripts/chaos.py --quick as its own process (its own embedded Postgres, moto SQS and fake
Whop) and requires every invariant it checks to hold.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import OPS_TABLES, TENANT_TABLES, Owner

ROOT = Path(__file__).resolve().parent.parent


def test_the_quick_chaos_run_keeps_every_invariant(owner: Owner) -> None:
    # With DATABASE_URL set the run uses that Postgres too (and its data is removed after).
    try:
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / "chaos.py"), "--quick"], cwd=ROOT,
                              env=dict(os.environ), capture_output=True, text=True, timeout=900, check=False)
    finally:
        if os.environ.get("DATABASE_URL"):
            owner.run("TRUNCATE " + ", ".join(TENANT_TABLES + OPS_TABLES) + " CASCADE")
    lines = [line for line in done.stdout.splitlines() if not line.startswith("{")]
    assert done.returncode == 0, "\n".join(lines[-15:]) + done.stderr[-3000:]
    assert any(line.startswith("chaos: ") and "16/16 checks passed" in line for line in lines)
    assert not [line for line in lines if line.startswith("FAIL")]
