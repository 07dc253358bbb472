"""Expand/contract, checked (scripts/compat.py): every recorded release's own queries, replayed as
the runtime role on its own schema and on its schema with every later migration applied, must
have the same outcomes, except what tests/compat/allowed.toml lists with a reason. Releases and
migrations are discovered from the files, so a migration added by anyone is checked against the
release before it without editing this test. A deliberately breaking migration shows the check
bites."""

from __future__ import annotations

import re

import pytest

from scripts import compat, localdb
from scripts.migrate import Migration

CORPORA = compat.corpora()


def runtime(owner_url: str) -> str:
    # The recorded login: the runtime role's member, as in the recorded release's tests.
    return re.sub(r"^postgresql://[^@]*@", f"postgresql://{localdb.RUNTIME_LOGIN}:{localdb.RUNTIME_PASSWORD}@",
                  owner_url)


def differences(admin_url: str, corpus: compat.Corpus, later: list[Migration],
                statements: list[compat.Statement] | None = None) -> list[tuple[str, str, str]]:
    """(statement, outcome on the release's schema, outcome after ``later``) where they differ."""
    before, _ = compat.migrations_after(corpus.release)
    statements = corpus.statements if statements is None else statements
    with compat.database_at(admin_url, f"compat_{corpus.release}_base", before) as url:
        base = compat.replay(runtime(url), statements)
    with compat.database_at(admin_url, f"compat_{corpus.release}_later", before + later) as url:
        after = compat.replay(runtime(url), statements)
    assert len(base) == len(after) == len(statements)
    pairs = zip(statements, base, after, strict=True)
    return [(s[1], str(a), str(b)) for s, a, b in pairs if a.state != b.state]


def admin_url(local_database: localdb.LocalDatabase) -> str:
    return local_database.owner_url.replace("/rebound?", "/postgres?")


def test_a_release_is_recorded_for_the_checks() -> None:
    assert CORPORA, "tests/compat holds at least the previous release's queries"
    summary = compat.corpus_summary(CORPORA[-1])
    assert summary["statements"] > 1000 and summary["distinct"] > 100, summary


@pytest.mark.parametrize("corpus", CORPORA, ids=[f"release-{c.release}" for c in CORPORA])
def test_every_later_migration_keeps_the_release_queries_working(
        local_database: localdb.LocalDatabase, corpus: compat.Corpus) -> None:
    _, later = compat.migrations_after(corpus.release)
    if not later:
        return  # the newest release: nothing after it yet
    found = differences(admin_url(local_database), corpus, later)
    unexpected = []
    for statement, base, after in found:
        excused = [m.version for m in later
                   if any(p.search(statement) for p in compat.allowed(corpus.release, m.version))]
        if not excused:
            unexpected.append((statement[:120], base, after))
    if unexpected:  # name the migration that broke them: apply them one by one
        culprits = []
        for k in range(1, len(later) + 1):
            if differences(admin_url(local_database), corpus, later[:k],
                           [s for s in corpus.statements if s[1][:120] in {u[0] for u in unexpected}]):
                culprits.append(later[k - 1].name)
                break
        pytest.fail(f"{culprits or [m.name for m in later]} break release {corpus.release}'s queries: "
                    f"{unexpected[:10]}")
    # What the allowed list excuses really happened (the list stays true).
    for m in later:
        for pattern in compat.allowed(corpus.release, m.version):
            assert any(pattern.search(s) for s, _, _ in found), f"{m.version}: {pattern.pattern} is stale"


def test_a_contracting_migration_is_caught(local_database: localdb.LocalDatabase) -> None:
    corpus = CORPORA[-1]
    _, later = compat.migrations_after(corpus.release)
    breaking = Migration("9999", "9999_contract_too_early.sql",
                         "ALTER TABLE creator_settings RENAME COLUMN timezone TO time_zone;"
                         " ALTER TABLE events ADD COLUMN source text NOT NULL DEFAULT 'x';"
                         " ALTER TABLE events ALTER COLUMN source DROP DEFAULT;")
    sample = corpus.statements[:4000]
    found = differences(admin_url(local_database), corpus, [*later, breaking], sample)
    states = {(re.sub(r"\s+", " ", s)[:30], after) for s, _, after in found}
    assert any(after == "42703" for _, after in states), "a renamed column the release reads: undefined"
    assert any(after == "23502" for _, after in states), "a NOT NULL column the release does not write"

