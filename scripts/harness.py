"""The local stack the chaos and load runs stand on: an embedded Postgres (or DATABASE_URL),
the fake Whop on 127.0.0.1, and the app's settings pointed at both. Never AWS, never Whop."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# What a script run needs before any AWS or Powertools import: fake credentials (moto intercepts
# every client) and quiet logs.
SCRIPT_ENV = {"APP_ENV": "test", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
              "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
              "POWERTOOLS_LOG_LEVEL": "ERROR"}


def script_env(namespace: str) -> None:
    for name, value in {**SCRIPT_ENV, "POWERTOOLS_METRICS_NAMESPACE": namespace}.items():
        os.environ.setdefault(name, value)


@dataclass
class Stack:
    local: Any  # scripts.localdb.LocalDatabase
    fake: Any  # scripts.fake_whop.FakeWhop
    env: dict[str, str]


@contextmanager
def local_stack(prefix: str, **client_options: Any) -> Iterator[Stack]:
    """Start Postgres and the fake Whop, point the app at them (the process-wide Whop client
    built with ``client_options``), and take everything down again afterwards."""
    from chalicelib import config, effects, tenancy, whop_client
    from chalicelib.whop_client import WhopClient
    from scripts import localdb
    from scripts.fake_whop import FakeWhop

    base = ROOT / ".tmp"
    base.mkdir(exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-pg-", dir=base))
    local = localdb.start(data_dir, log=lambda _m: None)
    fake = FakeWhop().start()
    try:
        env = {"DATABASE_URL": local.runtime_url, "WHOP_API_BASE": fake.base_url,
               "WHOP_API_KEY": fake.api_key, "WHOP_JWKS_URL": fake.jwks_url, "WHOP_APP_ID": fake.app_id,
               "WHOP_WEBHOOK_SECRET": fake.webhook_secret, "PUBLIC_BASE_URL": "https://rebound.test"}
        os.environ.update(env)
        config.reset_config()
        tenancy.reset_database()
        # No real waiting inside the client: backoff is the ledger's job, and runs stay short.
        whop_client.set_whop(WhopClient.from_config(config.get_config(), sleep=lambda _s: None,
                                                    **client_options))
        effects.clear_experience_cache()
        yield Stack(local, fake, env)
    finally:
        whop_client.reset_whop()
        fake.stop()
        tenancy.reset_database()
        local.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(data_dir.parent / f".{data_dir.name}-run", ignore_errors=True)
