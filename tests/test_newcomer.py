"""Newcomer trips (issue 20): simulate.py with no `make dev` running says what is wrong and what to
do in one line, and `make dev`'s terminal shows one readable line per log record (Lambda keeps
Powertools' JSON)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import dev

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _simulate(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "simulate.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    """A newcomer's shell: no make dev settings, a data folder nobody wrote, ports nobody serves."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("REBOUND_URL", "FAKE_WHOP_URL", "SCHEDULER_SECRET", "WHOP_WEBHOOK_SECRET")}
    env.update({"REBOUND_DATA_DIR": str(tmp_path), "PORT": str(_free_port()),
                "FAKE_WHOP_PORT": str(_free_port())})
    return env


@pytest.mark.parametrize("scenario", ["failure", "tick", "story", "churn"])
def test_simulate_without_make_dev_says_what_to_do_in_one_line(shell_env: dict[str, str],
                                                               scenario: str) -> None:
    if scenario == "tick":
        shell_env["SCHEDULER_SECRET"] = "x"  # else it stops earlier, with its own hint
    done = _simulate([scenario], shell_env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "make dev" in lines[0], lines[0]
    assert any(f"127.0.0.1:{shell_env[port]}" in lines[0] for port in ("PORT", "FAKE_WHOP_PORT")), lines[0]
    assert "no dev.json" in lines[0] and shell_env["REBOUND_DATA_DIR"] in lines[0]


def test_simulate_with_a_stale_dev_json_names_it(shell_env: dict[str, str]) -> None:
    # make dev ran with this data folder once, and is not running now.
    gone = f"http://127.0.0.1:{_free_port()}"
    dev.write_dev_file(Path(shell_env["REBOUND_DATA_DIR"]) / "dev.json",
                       {"api": gone, "fake_whop": f"http://127.0.0.1:{_free_port()}"})
    done = _simulate(["recovery"], shell_env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert gone in line and "dev.json" in line and "make dev" in line


def _log_line(env: dict[str, str]) -> str:
    code = ("from chalicelib.observability import logger\n"
            "logger.info('webhook processed', extra={'company_id': 'biz_a', 'webhook_id': 'msg_1',"
            " 'outcome': 'applied', 'opened': 1})\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    return lines[0]


def test_make_dev_logs_one_readable_line_per_record() -> None:
    env = {k: v for k, v in os.environ.items() if k != "AWS_LAMBDA_FUNCTION_NAME"}
    line = _log_line({**env, "REBOUND_LOG_FORMAT": "text"})
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} INFO +webhook processed +company_id=biz_a webhook_id=msg_1"
                        r" outcome=applied opened=1", line), line
    assert json.loads(_log_line({k: v for k, v in env.items() if k != "REBOUND_LOG_FORMAT"}))["message"] \
        == "webhook processed"  # JSON unless asked
    in_lambda = {**env, "REBOUND_LOG_FORMAT": "text", "AWS_LAMBDA_FUNCTION_NAME": "process_events"}
    lambda_line = _log_line(in_lambda)
    assert json.loads(lambda_line)["company_id"] == "biz_a"  # Lambda keeps JSON whatever is set
    assert dev.LOCAL_ENV["REBOUND_LOG_FORMAT"] == "text"  # what make dev gives its processes
