"""Expand/contract, checked: a release's queries must keep working on every later migration.

While a deploy applies migrations, the previous release still serves (scripts/deploy.py migrates
before the new code runs), so each migration must leave the previous release's queries working.
This holds that with the previous release's *own* queries:

``record``: run a release's own tests (``git archive`` of a revision, its pytest, a plugin that
patches pg8000) and keep every statement its runtime login sent, with its parameters as text:
``tests/compat/release-NNNN.json.gz``, NNNN being that release's last migration. Done once per
release (``python scripts/compat.py record --rev <release tag or commit>``).

``check`` (tests/test_migration_compat.py): for each recorded release and each migration after
it, two databases at the release's schema, one with the migrations after it applied; the recorded
queries replayed on both, in order, each in a savepoint, as a member of ``rebound_app``; every
statement that worked on the release's own schema must work after the migrations too, with the
same result status. Deliberate exceptions are listed, with a reason, in
``tests/compat/allowed.toml``. New migrations from anyone are covered without editing anything.

Usage: python scripts/compat.py record --rev REV [--tests tests/test_pipeline.py ...]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pg8000.native  # noqa: E402

from chalicelib.database_url import parse_database_url  # noqa: E402
from chalicelib.db_pool import connect  # noqa: E402
from scripts.migrate import Migration, discover  # noqa: E402

COMPAT_DIR = ROOT / "tests" / "compat"
ALLOWED = COMPAT_DIR / "allowed.toml"
# The previous release's tests that drive its queries: the pipeline, the API, the tick, retention.
DEFAULT_TESTS = ("tests/test_pipeline.py", "tests/test_api_cases.py", "tests/test_api_actions.py",
                 "tests/test_api_settings.py", "tests/test_nudges.py", "tests/test_retention.py",
                 "tests/test_ratelimit.py", "tests/test_measurement.py", "tests/test_effects_batch.py",
                 "tests/security/test_links.py", "tests/test_privacy_tools.py", "tests/test_health.py")
_CORPUS = re.compile(r"^release-(\d{4})\.json\.gz$")


Statement = tuple[int, str, list[str | None] | None]  # (connection number, text, params as text)


@dataclass(frozen=True)
class Corpus:
    release: str  # the last migration of the recorded release
    statements: list[Statement]


def corpora(directory: Path = COMPAT_DIR) -> list[Corpus]:
    found = []
    for path in sorted(directory.glob("release-*.json.gz")):
        match = _CORPUS.match(path.name)
        if match:
            with gzip.open(path, "rt") as handle:
                found.append(Corpus(match.group(1), [tuple(s) for s in json.load(handle)]))  # type: ignore[misc]
    return found


def allowed(release: str, migration: str, path: Path = ALLOWED) -> list[re.Pattern[str]]:
    """Statements (patterns) a migration may break for a release's code, on purpose."""
    if not path.exists():
        return []
    raw = tomllib.loads(path.read_text())
    entries = raw.get(migration, {}).get("breaks", [])
    return [re.compile(e["statement"]) for e in entries if release in e.get("releases", [release])]


# --- replaying -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    state: str  # "ok", or the SQLSTATE of the error

    def __str__(self) -> str:
        return self.state


def _sqlstate(exc: Exception) -> str:
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return str(info.get("C", type(exc).__name__))


_CONTROL = re.compile(r"^\s*(START TRANSACTION|BEGIN|COMMIT|ROLLBACK)\b", re.I)


def replay(url: str, statements: Iterable[Statement]) -> list[Outcome]:
    """Every statement in order, each on its recorded connection, as the login of ``url``.
    Inside a transaction each runs in a savepoint (a failure does not spoil the rest); lock
    waits end after 200 ms, since recorded concurrent transactions now run one after another."""
    params = parse_database_url(url)
    conns: dict[int, pg8000.native.Connection] = {}
    in_tx: dict[int, bool] = {}
    outcomes: list[Outcome] = []
    try:
        for number, text, values in statements:
            conn = conns.get(number)
            if conn is None:
                conn = conns[number] = connect(params)
                conn.run("SET lock_timeout = '200ms'")
                in_tx[number] = False
            outcomes.append(_one(conn, text, values, in_tx, number))
    finally:
        for conn in conns.values():
            with contextlib.suppress(Exception):  # closing a connection that broke
                conn.close()
    return outcomes


def _one(conn: pg8000.native.Connection, text: str, values: list[str | None] | None,
         in_tx: dict[int, bool], number: int) -> Outcome:
    control = _CONTROL.match(text)
    if control:
        word = control.group(1).upper()
        try:
            conn.run(text)
        except Exception as exc:  # noqa: BLE001 - recorded, compared
            return Outcome(False, _sqlstate(exc))
        in_tx[number] = word in ("START TRANSACTION", "BEGIN")
        return Outcome(True, "ok")
    if in_tx[number]:
        conn.run("SAVEPOINT compat")
    try:
        if values is None:
            conn.run(text)
        else:
            import io

            sink = io.BytesIO()
            conn.execute_unnamed(text, vals=values, stream=sink if text.lstrip().upper().startswith("COPY")
                                 else None)
    except Exception as exc:  # noqa: BLE001 - recorded, compared
        if in_tx[number]:
            conn.run("ROLLBACK TO SAVEPOINT compat")
        return Outcome(False, _sqlstate(exc))
    if in_tx[number]:
        conn.run("RELEASE SAVEPOINT compat")
    return Outcome(True, "ok")


# --- databases at a schema version ------------------------------------------------------------------


def apply(owner_url: str, migrations: Iterable[Migration]) -> None:
    conn = connect(parse_database_url(owner_url), timeout_s=600)
    try:
        conn.run("CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY, name text NOT NULL,"
                 " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),"
                 " duration_ms integer NOT NULL)")
        for m in migrations:
            conn.run("START TRANSACTION")
            conn.run(m.sql)
            conn.run("INSERT INTO schema_migrations (version, name, checksum, duration_ms)"
                     " VALUES (:v, :n, :c, 0)", v=m.version, n=m.name, c=m.checksum)
            conn.run("COMMIT")
    finally:
        conn.close()


@contextmanager
def database_at(admin_url: str, name: str, migrations: list[Migration]) -> Iterator[str]:
    """A fresh database with exactly ``migrations`` applied; yields its owner URL."""
    admin = connect(parse_database_url(admin_url))
    try:
        admin.run(f"DROP DATABASE IF EXISTS {pg8000.native.identifier(name)} WITH (FORCE)")
        admin.run(f"CREATE DATABASE {pg8000.native.identifier(name)}")
    finally:
        admin.close()
    parts = admin_url.split("?", 1)
    base = parts[0].rsplit("/", 1)[0]
    url = f"{base}/{name}" + (f"?{parts[1]}" if len(parts) > 1 else "")
    apply(url, migrations)
    try:
        yield url
    finally:
        admin = connect(parse_database_url(admin_url))
        try:
            admin.run(f"DROP DATABASE IF EXISTS {pg8000.native.identifier(name)} WITH (FORCE)")
        finally:
            admin.close()


def migrations_after(release: str) -> tuple[list[Migration], list[Migration]]:
    found = discover()
    return [m for m in found if m.version <= release], [m for m in found if m.version > release]


# --- recording -------------------------------------------------------------------------------------


def record(rev: str, tests: Iterable[str], out_dir: Path = COMPAT_DIR) -> Path:
    """Run ``rev``'s own tests with the recorder and write its corpus; return the file."""
    work = Path(tempfile.mkdtemp(prefix="compat-", dir=ROOT / ".tmp"))
    try:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
        releases = sorted(p.name[:4] for p in (work / "migrations").glob("*.sql"))
        plugins = work / ".compat-plugins"
        plugins.mkdir()
        shutil.copy(COMPAT_DIR / "recorder_plugin.py", plugins / "rebound_compat_recorder.py")
        out = out_dir / f"release-{releases[-1]}.json.gz"
        env = {**os.environ, "PYTHONPATH": f"{plugins}{os.pathsep}{work}", "REBOUND_COMPAT_OUT": str(out),
               "REBOUND_COMPAT_USER": "rebound_runtime"}
        env.pop("DATABASE_URL", None)
        env.pop("MIGRATIONS_DATABASE_URL", None)
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "rebound_compat_recorder",
                        "-p", "no:cacheprovider", *tests], cwd=work, env=env, check=True)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="record a release's queries from its own tests")
    rec.add_argument("--rev", required=True, help="the release's git revision (tag or commit)")
    rec.add_argument("--tests", nargs="*", default=list(DEFAULT_TESTS))
    args = parser.parse_args(argv)
    out = record(args.rev, args.tests)
    with gzip.open(out, "rt") as handle:
        count = len(json.load(handle))
    print(f"{out.relative_to(ROOT)}: {count} statements")
    return 0


def corpus_summary(corpus: Corpus) -> dict[str, Any]:
    return {"release": corpus.release, "statements": len(corpus.statements),
            "distinct": len({s[1] for s in corpus.statements})}


if __name__ == "__main__":
    sys.exit(main())
