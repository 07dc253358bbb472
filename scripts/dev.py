"""`make dev`: the whole service on this machine, with no system installs.

Starts embedded Postgres (pgserver) and migrates it, then `chalice local --no-autoreload` on
127.0.0.1:${PORT:-8000}. State lives under ${REBOUND_DATA_DIR:-.dev}; a new folder is a fresh
start. Ctrl-C stops everything this started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import localdb  # noqa: E402

BIN = Path(sys.executable).parent


def wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our own 127.0.0.1 server
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f}s")


def main() -> int:
    data_dir = Path(os.environ.get("REBOUND_DATA_DIR", ROOT / ".dev")).resolve()
    port = int(os.environ.get("PORT", "8000"))
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"rebound dev: state in {data_dir}")

    database = localdb.start(data_dir / "postgres")
    env = dict(os.environ)
    env.update({
        "APP_ENV": env.get("APP_ENV", "development"),
        "DATABASE_URL": database.runtime_url,
        "MIGRATIONS_DATABASE_URL": database.owner_url,
        "PUBLIC_BASE_URL": env.get("PUBLIC_BASE_URL", f"http://127.0.0.1:{port}"),
        "AWS_DEFAULT_REGION": env.get("AWS_DEFAULT_REGION", "us-east-1"),
    })
    children: list[subprocess.Popen[bytes]] = []

    def stop(*_: object) -> None:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
        database.stop()

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        children.append(subprocess.Popen(
            [str(BIN / "chalice"), "local", "--no-autoreload", "--host", "127.0.0.1",
             "--port", str(port), "--stage", "dev"], cwd=ROOT, env=env))
        wait_http(f"http://127.0.0.1:{port}/api/health")
        print(f"rebound dev: API on http://127.0.0.1:{port}  (health: /api/health?type=database)")
        print("rebound dev: Ctrl-C stops everything")
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("rebound dev: a service exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())
