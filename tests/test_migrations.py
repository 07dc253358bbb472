"""The migration runner: fresh apply, idempotent re-run, edited files refused, runners serialize."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import migrate as m
from tests.conftest import ROOT, Owner
from tests.helpers import run_concurrently


@pytest.fixture
def fresh_db(owner: Owner) -> Iterator[str]:
    """An empty database on the same server; its owner URL."""
    name = f"migtest_{uuid.uuid4().hex[:10]}"
    owner.run(f"CREATE DATABASE {name}")
    base, _, query = owner.url.partition("?")
    url = base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")
    yield url
    owner.run(f"DROP DATABASE {name} WITH (FORCE)")


def _files() -> list[str]:
    return sorted(p.name for p in (ROOT / "migrations").glob("*.sql"))


def test_fresh_apply_then_rerun_is_a_noop(fresh_db: str) -> None:
    first = m.migrate(fresh_db, log=lambda _: None)
    assert first.applied == _files()
    second = m.migrate(fresh_db, log=lambda _: None)
    assert second.applied == [] and second.pending == []


def test_check_and_dry_run_report_pending_without_applying(fresh_db: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert m.main(["--check", "--database-url", fresh_db]) == 1
    assert "pending: 0001_schema.sql" in capsys.readouterr().out
    assert m.main(["--dry-run", "--database-url", fresh_db]) == 0
    assert m.migrate(fresh_db, check=True, log=lambda _: None).pending == _files()  # still pending
    assert m.main(["--database-url", fresh_db]) == 0
    assert m.main(["--check", "--database-url", fresh_db]) == 0


def test_an_edited_applied_migration_is_refused(fresh_db: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", folder)
    m.migrate(fresh_db, folder, log=lambda _: None)
    first = sorted(folder.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(m.MigrationError, match="edited after it was applied"):
        m.migrate(fresh_db, folder, log=lambda _: None)
    assert m.main(["--database-url", fresh_db, "--dir", str(folder)]) == 2


def test_a_failing_migration_rolls_back_alone(fresh_db: str, tmp_path: Path, owner: Owner) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", folder)
    (folder / "9998_good.sql").write_text("CREATE TABLE good_one (x int);")
    (folder / "9999_bad.sql").write_text("CREATE TABLE half_done (x int); SELECT no_such_fn();")
    with pytest.raises(m.MigrationError, match=r"9999_bad\.sql failed"):
        m.migrate(fresh_db, folder, log=lambda _: None)
    pending = m.migrate(fresh_db, folder, check=True, log=lambda _: None).pending
    assert pending == ["9999_bad.sql"]


def test_two_concurrent_runners_serialize_and_apply_each_file_once(fresh_db: str, owner: Owner) -> None:
    results = run_concurrently(lambda: m.migrate(fresh_db, log=lambda _: None), 2)
    applied = sorted(results, key=lambda r: len(r.applied))
    assert applied[0].applied == [] and applied[1].applied == _files()


def test_misnamed_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "add-things.sql").write_text("SELECT 1;")
    with pytest.raises(m.MigrationError, match="NNNN_snake_case"):
        m.discover(tmp_path)
