"""`make bench` stays runnable: the quick smoke run emits every figure and a summary (never timed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from scripts.bench import NAMES

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_emits_every_figure_then_a_summary() -> None:
    proc = subprocess.run([sys.executable, "scripts/bench.py", "--quick"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    figures, summary = lines[:-1], lines[-1]
    assert [f["name"] for f in figures] != [] and {f["name"] for f in figures} == set(NAMES)
    for figure in figures:
        assert set(figure) == {"name", "value", "goal", "unit", "detail", "met"}, figure
        assert figure["value"] is None or isinstance(figure["value"], (int, float)), figure
    assert summary["summary"] is True
    assert set(summary["met"]) | set(summary["missed"]) | set(summary["not_measured"]) == set(NAMES)
    assert summary["machine"]["cores"] >= 1


def test_bench_refuses_an_unknown_figure() -> None:
    proc = subprocess.run([sys.executable, "scripts/bench.py", "--only", "no_such_figure"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "no_such_figure" in proc.stderr
