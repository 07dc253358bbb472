"""Migration 0011 (issue 17) backfills what measurement needs on cases that already exist."""

from __future__ import annotations

import secrets
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from scripts import migrate as m
from tests.conftest import ROOT
from tests.test_migrations import fresh_db  # noqa: F401 - the fixture

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _case(conn: Any, company: str, created: datetime, *, holdout: bool = False) -> str:
    case_id = str(uuid.uuid4())
    conn.run(
        "INSERT INTO recovery_cases (id, company_id, membership_id, status, first_failure_at,"
        " last_failure_at, link_token, holdout, created_at)"
        " VALUES (CAST(:id AS uuid), :c, :m, 'open', :at, :at, :tok, :h, :at)",
        id=case_id,
        c=company,
        m=f"mem_{case_id[:8]}",
        at=created,
        tok=secrets.token_urlsafe(16),
        h=holdout,
    )
    return case_id


def test_0011_backfills_opened_at_the_holdout_percent_at_open_and_contamination(
    fresh_db: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for path in sorted((ROOT / "migrations").glob("*.sql")):
        if path.name < "0011":
            shutil.copy(path, folder)
    m.migrate(fresh_db, folder, log=lambda _: None)
    conn = m.connect(m.parse_database_url(fresh_db))
    try:
        at = {
            name: T0 + timedelta(days=d)
            for name, d in (("early", 1), ("held", 3), ("between", 5), ("saved", 7), ("after", 9))
        }
        # never saved settings: no holdout ever
        none = _case(conn, "biz_none", at["early"])
        # holdout 20% today, last saved on day 7
        on = {
            k: _case(conn, "biz_on", at[k], holdout=k == "held")
            for k in ("early", "held", "between", "after")
        }
        # holdout switched off (0%) when last saved on day 7
        off = {
            k: _case(conn, "biz_off", at[k], holdout=k == "held")
            for k in ("early", "held", "between", "after")
        }
        for company, percent in (("biz_on", 20), ("biz_off", 0)):
            conn.run(
                "INSERT INTO creator_settings (company_id, holdout_percent, updated_at) VALUES (:c, :p, :u)",
                c=company,
                p=percent,
                u=at["saved"],
            )
        conn.run(
            "INSERT INTO recovery_actions (case_id, company_id, kind, step, channel, status,"
            " idempotency_key, actor) VALUES (CAST(:id AS uuid), 'biz_on', 'manual_nudge', 'm1', 'dm',"
            " 'sent', 'k1', 'user_admin')",
            id=on["held"],
        )
        shutil.copy(ROOT / "migrations" / "0011_measurement_eligibility.sql", folder)
        assert m.migrate(fresh_db, folder, log=lambda _: None).applied == [
            "0011_measurement_eligibility.sql"
        ]
        rows = {
            str(r[0]): r[1:]
            for r in conn.run(
                "SELECT id, opened_at, holdout_percent_at_open, contaminated, created_at FROM recovery_cases"
            )
        }
        assert all(opened == created for opened, _, _, created in rows.values())
        assert rows[none][1] == 0
        assert [rows[on[k]][1] for k in ("early", "held", "between", "after")] == [0, 20, 20, 20]
        assert [rows[off[k]][1] for k in ("early", "held", "between", "after")] == [0, None, None, 0]
        assert {k for k, cid in on.items() if rows[cid][2]} == {"held"}  # the nudged holdout case
        # RLS is forced again, and new rows get the database clock.
        forced = conn.run("SELECT relforcerowsecurity FROM pg_class WHERE relname = 'recovery_cases'")
        assert forced == [[True]]
        new = _case(conn, "biz_none", at["after"])  # opened_at not given: the default
        (late,) = conn.run(
            "SELECT opened_at > now() - interval '1 minute' FROM recovery_cases"
            " WHERE id = CAST(:id AS uuid)",
            id=new,
        )
        assert late == [True]
    finally:
        conn.close()
