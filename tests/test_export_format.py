"""Postgres formats the export's cells (migration 0009) exactly as the Python rules would."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib import store
from chalicelib.api.cases import EXPORT_COLUMNS, csv_cell
from chalicelib.db import Database, tenant_transaction

NOW = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
TRICKY = [
    "plain", "", "a,b", 'say "hi"', "line\nbreak", "cr\rinside", "\rstarts with cr", "\tstarts with tab",
    "=SUM(A1)", "+1", "-1", "@me", "'already quoted", " leading space", "trailing space ", "émoji 🎉 ünï",
    '=HYPERLINK("http://evil","x")', "=a,b", "中文,\"引号\"", "x" * 300, "semi;colon", "back\\slash",
]


def _python_csv(rows: list[dict[str, object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for row in rows:
        writer.writerow([csv_cell(row[c]) for c in EXPORT_COLUMNS])
    return out.getvalue()


@pytest.mark.parametrize("offset_us", [0, 1, 999_999])
def test_postgres_cells_match_the_python_rules(database: Database, offset_us: int) -> None:
    with tenant_transaction("biz_a", database) as tx:
        for i, text in enumerate(TRICKY):
            at = NOW - timedelta(hours=i, microseconds=offset_us)
            tx.execute(
                "INSERT INTO recovery_cases (company_id, membership_id, user_id, first_failure_at,"
                " last_failure_at, decline_code, failure_reason, amount_minor, currency, status,"
                " recovered_at, recovered_amount_minor, recovered_currency)"
                " VALUES ('biz_a', :m, :u, :at, :at, :d, :r, :amount, 'usd', :status, :rec, :amount, :cur)",
                m=f"mem_{i}", u=text or None, at=at, d=text, r=text, amount=i * 100 if i % 2 else None,
                status="recovered" if i % 3 == 0 else "open",
                rec=at + timedelta(days=1) if i % 3 == 0 else None, cur="usd" if i % 3 == 0 else None)
        expected = store.export_cases(tx, now=NOW, limit=100)
        got = store.export_csv_lines(tx, EXPORT_COLUMNS, now=NOW, limit=100)
        page = store.export_csv_page(tx, EXPORT_COLUMNS, now=NOW, limit=100)
    assert len(got) == len(expected) == len(TRICKY)
    assert "".join(r["line"] for r in got) == _python_csv(expected) == page["text"]
    assert page["rows"] == len(TRICKY) and page["case_id"] == expected[-1]["case_id"]
    assert store.keyset_time(page["at_us"]) == expected[-1]["first_failure_at"]
    for g, e in zip(got, expected, strict=True):
        assert store.keyset_time(g["at_us"]) == e["first_failure_at"] and g["case_id"] == e["case_id"]


def test_a_page_that_does_not_fit_is_cut_between_rows_and_resumes(database: Database,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib.api import cases as case_views
    from chalicelib.api.schemas import ExportQuery

    with tenant_transaction("biz_a", database) as tx:
        tx.execute("INSERT INTO recovery_cases (company_id, membership_id, first_failure_at, last_failure_at,"
                   " failure_reason) SELECT 'biz_a', 'mem_' || g,"
                   " CAST(:t AS timestamptz) - g * interval '1 s', CAST(:t AS timestamptz), 'r,\"' || g"
                   " FROM generate_series(1, 25) g", t=NOW)
    monkeypatch.setattr(case_views, "EXPORT_PAGE_ROWS", 10)
    monkeypatch.setattr(case_views, "EXPORT_MAX_BYTES", 1500)
    seen: list[str] = []
    after = None
    for _ in range(30):
        with tenant_transaction("biz_a", database) as tx:
            body, cursor = case_views._export_body(tx, ExportQuery(), NOW, after)
        rows = list(csv.DictReader(io.StringIO(body)))
        assert rows and len(body) <= 1500 + 200
        seen += [r["membership_id"] for r in rows]
        if cursor is None:
            break
        after = case_views.decode_cursor(cursor)
    assert seen == [f"mem_{g}" for g in range(1, 26)]
