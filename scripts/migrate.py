"""Apply pending SQL migrations, in order, each in its own transaction, under an advisory lock.

Usage: python scripts/migrate.py [--check] [--dry-run] [--database-url URL] [--dir migrations]

- Two runners at once: the second waits for the lock, then finds nothing left to apply.
- Each applied file's SHA-256 is recorded; if an applied file was edited since, the runner
  refuses to run (fix forward with a new file instead).
- ``--check`` lists pending files and exits 1 if there are any (a deploy gate); ``--dry-run``
  lists what would be applied and changes nothing.
Connects with MIGRATIONS_DATABASE_URL (the owner), falling back to DATABASE_URL.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chalicelib.database_url import parse_database_url  # noqa: E402
from chalicelib.db import DatabaseError  # noqa: E402
from chalicelib.db_pool import connect  # noqa: E402

MIGRATIONS_DIR = ROOT / "migrations"
# Any constant works; it only has to be the same for every runner of this schema.
ADVISORY_LOCK_KEY = 7_301_946_112
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    """A migration could not be applied, or the applied history does not match the files."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass
class Result:
    applied: list[str]
    pending: list[str]


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_case.sql")
        found.append(Migration(match.group(1), path.name, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


def migrate(url: str, directory: Path = MIGRATIONS_DIR, *, check: bool = False,
            dry_run: bool = False, log: Callable[[str], None] = print) -> Result:
    migrations = discover(directory)
    conn = connect(parse_database_url(url), timeout_s=600, application_name="rebound-migrate")
    try:
        # Session-level lock: held across the per-file transactions below.
        conn.run("SELECT pg_advisory_lock(:key)", key=ADVISORY_LOCK_KEY)
        try:
            conn.run(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now(), duration_ms integer NOT NULL)"
            )
            applied = {row[0]: (row[1], row[2]) for row in
                       conn.run("SELECT version, name, checksum FROM schema_migrations")}
            for m in migrations:
                if m.version in applied and applied[m.version][1] != m.checksum:
                    raise MigrationError(
                        f"{m.name} was edited after it was applied (checksum differs); "
                        "never edit an applied migration: add a new one")
            pending = [m for m in migrations if m.version not in applied]
            if check or dry_run:
                for m in pending:
                    log(f"pending: {m.name}")
                if not pending:
                    log("up to date")
                return Result(applied=[], pending=[m.name for m in pending])
            done: list[str] = []
            for m in pending:
                started = time.monotonic()
                conn.run("START TRANSACTION")
                try:
                    conn.run(m.sql)
                    conn.run(
                        "INSERT INTO schema_migrations (version, name, checksum, duration_ms)"
                        " VALUES (:v, :n, :c, :d)", v=m.version, n=m.name, c=m.checksum,
                        d=int((time.monotonic() - started) * 1000))
                    conn.run("COMMIT")
                except Exception as exc:
                    conn.run("ROLLBACK")
                    detail = exc.args[0].get("M") if exc.args and isinstance(exc.args[0], dict) else exc
                    raise MigrationError(f"{m.name} failed and was rolled back: {detail}") from exc
                log(f"applied: {m.name}")
                done.append(m.name)
            if not done:
                log("up to date")
            return Result(applied=done, pending=[])
        finally:
            conn.run("SELECT pg_advisory_unlock(:key)", key=ADVISORY_LOCK_KEY)
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if any migration is pending")
    parser.add_argument("--dry-run", action="store_true", help="list pending files, change nothing")
    parser.add_argument("--database-url", help="owner connection (default MIGRATIONS_DATABASE_URL)")
    parser.add_argument("--dir", type=Path, default=MIGRATIONS_DIR)
    args = parser.parse_args(argv)
    url = args.database_url or os.environ.get("MIGRATIONS_DATABASE_URL") or os.environ.get(
        "DATABASE_URL")
    if not url:
        print("migrate: set MIGRATIONS_DATABASE_URL (the owner connection)", file=sys.stderr)
        return 2
    try:
        result = migrate(url, args.dir, check=args.check, dry_run=args.dry_run)
    except (MigrationError, DatabaseError, ValueError) as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 2
    return 1 if args.check and result.pending else 0


if __name__ == "__main__":
    sys.exit(main())
