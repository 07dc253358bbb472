"""The embedded Postgres for ``make dev`` and ``make test`` (pgserver: no system install).

``start(data_dir)`` starts (or reuses) a server on a Unix socket inside ``data_dir``, creates
the ``rebound`` database, migrates it as the owner, and creates the runtime login
``rebound_runtime`` as a member of ``rebound_app`` — exactly what an operator does on RDS.
It returns the owner URL (migrations, test cleanup) and the runtime URL (the app: RLS applies).
When ``DATABASE_URL`` is set, that server is used instead and nothing is started.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pg8000.native import identifier  # noqa: E402

from chalicelib.database_url import parse_database_url  # noqa: E402
from chalicelib.db_pool import connect  # noqa: E402
from scripts.migrate import migrate  # noqa: E402

DB_NAME = "rebound"
RUNTIME_LOGIN = "rebound_runtime"
RUNTIME_PASSWORD = "rebound_runtime_local"  # local only: the embedded server listens on a socket


@dataclass
class LocalDatabase:
    owner_url: str
    runtime_url: str
    server: Any = None  # the pgserver handle when we started one

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None


def _prepare_runtime_dir(data_dir: Path) -> None:
    # pgserver writes a lock under XDG_RUNTIME_DIR and wants it private (mode 0700).
    run_dir = data_dir.parent / f".{data_dir.name}-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(run_dir)


def ensure_runtime_login(owner_url: str, login: str = RUNTIME_LOGIN,
                         password: str = RUNTIME_PASSWORD) -> None:
    """Create the service login and grant it the runtime role (what an operator runs on RDS)."""
    conn = connect(parse_database_url(owner_url))
    try:
        exists = conn.run("SELECT 1 FROM pg_roles WHERE rolname = :r", r=login)
        if not exists:
            # Role names and passwords cannot be bind parameters; both are our constants.
            conn.run(f"CREATE ROLE {login} LOGIN PASSWORD '{password}' NOSUPERUSER NOBYPASSRLS")
        conn.run(f"GRANT rebound_app TO {login}")
    finally:
        conn.close()


def grant_runtime_role(owner_url: str, login: str) -> None:
    """What the operator runs once per login (README): ``GRANT rebound_app TO <login>``."""
    conn = connect(parse_database_url(owner_url))
    try:
        if not conn.run("SELECT pg_has_role(:u, 'rebound_app', 'MEMBER')", u=login)[0][0]:
            conn.run(f"GRANT rebound_app TO {identifier(login)}")
    finally:
        conn.close()


def start(data_dir: Path, log: Any = print) -> LocalDatabase:
    if os.environ.get("DATABASE_URL"):
        runtime_url = os.environ["DATABASE_URL"]
        owner_url = os.environ.get("MIGRATIONS_DATABASE_URL", runtime_url)
        migrate(owner_url, log=log)
        runtime_user = parse_database_url(runtime_url).user
        if runtime_url != owner_url:
            grant_runtime_role(owner_url, runtime_user)
        return LocalDatabase(owner_url=owner_url, runtime_url=runtime_url)

    data_dir = data_dir.resolve()
    _prepare_runtime_dir(data_dir)
    import pgserver  # imported late: XDG_RUNTIME_DIR must be set first

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data_dir), cleanup_mode="stop")
    socket_dir = str(data_dir)
    admin_url = f"postgresql://postgres@/postgres?host={socket_dir}"
    conn = connect(parse_database_url(admin_url))
    try:
        if not conn.run("SELECT 1 FROM pg_database WHERE datname = :d", d=DB_NAME):
            conn.run(f"CREATE DATABASE {DB_NAME}")
    finally:
        conn.close()
    owner_url = f"postgresql://postgres@/{DB_NAME}?host={socket_dir}"
    migrate(owner_url, log=log)
    ensure_runtime_login(owner_url)
    runtime_url = f"postgresql://{RUNTIME_LOGIN}:{RUNTIME_PASSWORD}@/{DB_NAME}?host={socket_dir}"
    return LocalDatabase(owner_url=owner_url, runtime_url=runtime_url, server=server)
