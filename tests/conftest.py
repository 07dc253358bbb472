"""Shared fixtures: one embedded Postgres per test session (or DATABASE_URL), migrated, and the
app connecting as the non-owner runtime login so row-level security is always on in tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# Deadlines are timed assertions: on a busy 2-core machine they fail for reasons no code change
# made. Speed is measured by scripts/bench.py, never by tests.
settings.register_profile("rebound", deadline=None)
settings.load_profile("rebound")

os.environ.setdefault("APP_ENV", "test")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# Tests never talk to AWS: fake credentials, and moto intercepts every client we create.
for _name, _value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                      "AWS_SESSION_TOKEN": "testing", "POWERTOOLS_METRICS_NAMESPACE": "ReboundTest",
                      "POWERTOOLS_SERVICE_NAME": "rebound",
                      # Never Whop for real: anything not pointed at the fake fails fast on 127.0.0.1.
                      "WHOP_API_BASE": "http://127.0.0.1:9/api/v1",
                      "WHOP_JWKS_URL": "http://127.0.0.1:9/.well-known/jwks.json"}.items():
    os.environ.setdefault(_name, _value)

from chalicelib import config, db_pool, tenancy  # noqa: E402
from chalicelib.database_url import parse_database_url  # noqa: E402
from chalicelib.db_pool import connect  # noqa: E402
from scripts import localdb  # noqa: E402

pytest_plugins = ["tests.whop_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
TENANT_TABLES = ("creator_settings", "events", "recovery_cases", "recovery_actions", "rate_limits",
                 "experiments", "erased_companies", "case_link_aliases")
# Not tenant data (no company_id, no RLS), emptied after each test all the same
# (request_limits: the limits that hold before a tenant is known, issue 9; ops_audit: what
# operators looked at through the rebound_ops functions, issue 19).
OPS_TABLES = ("poison_events", "request_limits", "ops_audit")


@pytest.fixture(autouse=True)
def _closed_breaker() -> Iterator[None]:
    """The Whop circuit breaker is process-wide (issue 20): every test starts with it closed."""
    from chalicelib.breaker import get_breaker

    get_breaker().reset()
    yield
    get_breaker().reset()


@pytest.fixture(scope="session")
def local_database() -> Iterator[localdb.LocalDatabase]:
    base = ROOT / ".tmp"
    base.mkdir(exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="pg-", dir=base))
    started = localdb.start(data_dir, log=lambda _msg: None)
    yield started
    started.stop()
    # Each session gets a fresh server: leave no data directories behind.
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.rmtree(data_dir.parent / f".{data_dir.name}-run", ignore_errors=True)


class Owner:
    """The schema owner's connection: for cleanup and catalog checks, never for app code."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = connect(parse_database_url(url))

    def run(self, sql: str, **params: object) -> list[list[object]]:
        return list(self.conn.run(sql, **params) or [])

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="session")
def owner(local_database: localdb.LocalDatabase) -> Iterator[Owner]:
    o = Owner(local_database.owner_url)
    yield o
    o.close()


@pytest.fixture
def database(local_database: localdb.LocalDatabase, owner: Owner,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[db_pool.Database]:
    """The app's Database as the runtime role; every tenant table is emptied after the test."""
    monkeypatch.setenv("DATABASE_URL", local_database.runtime_url)
    config.reset_config()
    tenancy.reset_database()
    yield tenancy.get_database()
    tenancy.reset_database()
    config.reset_config()
    owner.run("TRUNCATE " + ", ".join(TENANT_TABLES + OPS_TABLES) + " CASCADE")


HEALTH_SECRET = "health-test-secret"
HEALTH_SCHEDULER_SECRET = "scheduler-secret-for-tests"


@pytest.fixture
def health_client(database: db_pool.Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The app's test client with both secrets that open health's deep checks set, and
    the deep-check cache empty before and after."""
    from chalice.test import Client

    from app import app
    from chalicelib import config, health

    monkeypatch.setenv("HEALTH_SECRET", HEALTH_SECRET)
    monkeypatch.setenv("SCHEDULER_SECRET", HEALTH_SCHEDULER_SECRET)
    config.reset_config()
    health.deep_cache.clear()
    with Client(app) as c:
        yield c
    health.deep_cache.clear()
    config.reset_config()


Packaged = tuple[dict[str, Any], Path, str]


@pytest.fixture(scope="session")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Packaged]:
    """`make package` once per session: (the rendered template, the output folder, its stdout).
    package.py runs cfn-lint itself with check=True: a lint error fails this fixture."""
    import json
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("package")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py"), "--out", str(out)],
                         check=False, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    yield json.loads((out / "sam.json").read_text()), out, run.stdout
