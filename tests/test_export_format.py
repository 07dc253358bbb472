"""Postgres formats the export's cells (migration 0009) exactly as the Python rules would."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib.api.cases import EXPORT_COLUMNS
from chalicelib.db_pool import Database
from chalicelib.store import export as export_store
from chalicelib.store import views as view_store
from chalicelib.tenancy import tenant_transaction
from tests import export_reference as reference
from tests.export_reference import csv_cell

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
        expected = reference.export_cases(tx, now=NOW, limit=100)
        got = reference.export_csv_lines(tx, EXPORT_COLUMNS, now=NOW, limit=100)
        page = reference.export_csv_page(tx, EXPORT_COLUMNS, now=NOW, limit=100)
    assert len(got) == len(expected) == len(TRICKY)
    assert "".join(r["line"] for r in got) == _python_csv(expected) == page["text"]
    assert page["rows"] == len(TRICKY) and page["case_id"] == expected[-1]["case_id"]
    assert reference.keyset_time(page["at_us"]) == expected[-1]["first_failure_at"]
    for g, e in zip(got, expected, strict=True):
        assert reference.keyset_time(g["at_us"]) == e["first_failure_at"] and g["case_id"] == e["case_id"]


def test_a_page_that_does_not_fit_is_cut_between_rows_and_resumes(database: Database,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib.api import cases as case_views
    from chalicelib.api.schemas.cases import ExportQuery

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


# --- the COPY path (reference.export_csv_copy) ----------------------------------------------------

# Cells that stress COPY's own CSV writer against the contract's: odd Unicode (no NUL: Postgres
# text cannot hold one), separators, quotes, line breaks (a row ending inside a quoted cell),
# formula starts, empty vs NULL, COPY's end-of-data marker, backslashes.
COPY_TRICKY = [
    *TRICKY,
    '"', '""', "\n", "\r\n", "a\r\nb", "-", "=", "\\.", "\\N", "tab\tinside", "\u2028line sep", "\ufeffbom",
    "zero\u200bwidth", "RTL \u202e", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "e\u0301", 'ends with quote"', "x,\n\"y\"\n,z",
    # A separator, then (maybe quotes and) a formula character (issue 20): anywhere in the cell.
    ";=1+1", ",=1", "|@x", "a\t-b", ';"=1', "\t;=1", "=1;=2,+3", ";\r=1", "x;\"\"-1",
]
# Currencies of every exponent (0: jpy, 2: usd, 3: kwd) and the amounts at their edges.
CURRENCIES = [("jpy", 1), ("usd", 999), ("kwd", 1234), ("eur", 0), ("bhd", 2_147_483_647)]


def _insert_tricky(tx: object, company: str, *, same_time: bool = False) -> None:
    for i, text in enumerate(COPY_TRICKY):
        at = NOW - timedelta(hours=0 if same_time else i, microseconds=i % 3)
        currency, amount = CURRENCIES[i % len(CURRENCIES)]
        tx.execute(  # type: ignore[attr-defined]
            "INSERT INTO recovery_cases (company_id, membership_id, user_id, first_failure_at,"
            " last_failure_at, decline_code, failure_reason, amount_minor, currency, status,"
            " recovered_at, recovered_amount_minor, recovered_currency, decline_class, holdout,"
            " link_clicks)"
            " VALUES (:c, :m, :u, :at, :at, :d, :r, :amount, :cur, :status, :rec, :ramount, :rcur,"
            " :dc, :h, :clicks)",
            c=company, m=f"mem_{i}{text}", u=text or None, at=at, d=text, r=text,
            amount=amount if i % 2 else None, cur=currency if i % 4 else None,
            status="recovered" if i % 3 == 0 else "open", rec=at + timedelta(days=1) if i % 3 == 0 else None,
            ramount=amount if i % 3 == 0 else None, rcur=currency if i % 3 == 0 else None,
            dc=("card_hard", "card_soft", "authentication", "unknown")[i % 4], h=i % 2 == 0, clicks=i)


def test_the_copy_page_is_byte_for_byte_the_formatted_page(database: Database) -> None:
    with tenant_transaction("biz_a", database) as tx:
        _insert_tricky(tx, "biz_a")
        expected = reference.export_cases(tx, now=NOW, limit=100)
        old = reference.export_csv_page(tx, EXPORT_COLUMNS, now=NOW, limit=100)
        new = reference.export_csv_copy(tx, EXPORT_COLUMNS, now=NOW, limit=100)
    assert len(expected) == len(COPY_TRICKY)
    assert new["text"].encode() == old["text"].encode() == _python_csv(expected).encode()
    assert new["rows"] == old["rows"] == len(COPY_TRICKY)
    assert new["after"] == (expected[-1]["first_failure_at"], expected[-1]["case_id"])


@pytest.mark.parametrize("page", [1, 2, 3, 7])
def test_copy_pages_follow_the_keyset_through_ties_and_multi_line_rows(database: Database, page: int) -> None:
    """Every row's last cells may end inside a quoted line break; many rows share a timestamp:
    the keyset read back from each page's last row still resumes exactly after it."""
    with tenant_transaction("biz_a", database) as tx:
        _insert_tricky(tx, "biz_a", same_time=True)
        whole = reference.export_csv_page(tx, EXPORT_COLUMNS, now=NOW, limit=100)["text"]
        texts, after = [], None
        for _ in range(len(COPY_TRICKY) + 2):
            part = reference.export_csv_copy(tx, EXPORT_COLUMNS, now=NOW, after=after, limit=page)
            texts.append(part["text"])
            if part["rows"] < page:
                break
            assert part["rows"] == page
            after = part["after"]
    assert "".join(texts) == whole
    assert part["rows"] < page


def test_copy_filters_match_the_parameterised_query(database: Database) -> None:
    with tenant_transaction("biz_a", database) as tx:
        _insert_tricky(tx, "biz_a")
        since = NOW - timedelta(hours=10, microseconds=1)
        for filters in ({"status": "recovered"}, {"status": "expired"}, {"since": since},
                        {"status": "open", "since": since}, {"decline_class": "card_soft"},
                        {"decline_class": "card_hard", "status": "recovered"}, {"q": "mem_1"},
                        {"q": "mem_%"}, {"q": "="}, {"q": "\n"}, {"q": "mem_2", "since": since}):
            old = reference.export_csv_page(tx, EXPORT_COLUMNS, now=NOW, limit=100, **filters)
            new = reference.export_csv_copy(tx, EXPORT_COLUMNS, now=NOW, limit=100, **filters)
            assert new["text"] == old["text"] and new["rows"] == old["rows"], filters
        # q is the list's search: the same cases as the list.
        for text in ("mem_1", "mem_%", "="):
            listed = [r["id"] for r in view_store.list_cases(tx, now=NOW, q=text, limit=100)]
            new = reference.export_csv_copy(tx, EXPORT_COLUMNS, now=NOW, limit=100, q=text)
            assert [r[0] for r in csv.reader(io.StringIO(new["text"], newline=""))] == listed, text
            assert new["rows"] == len(listed)
        # A window that ends before some rows: the upper bound is `now`, as in the list.
        early = reference.export_csv_copy(tx, EXPORT_COLUMNS, now=NOW - timedelta(hours=5), limit=100,
                                      since=since)
        assert early["rows"] == 6  # hours 5..10 before NOW, bounds included


def test_copy_sees_only_the_tenants_rows_and_refuses_unknown_filters(database: Database) -> None:
    with tenant_transaction("biz_b", database) as tx:
        _insert_tricky(tx, "biz_b")
    with tenant_transaction("biz_a", database) as tx:
        empty = reference.export_csv_copy(tx, EXPORT_COLUMNS, now=NOW)
        assert empty == {"text": "", "rows": 0, "after": None}
        with pytest.raises(ValueError, match="variant"):
            reference.export_csv_copy(tx, EXPORT_COLUMNS, now=NOW, variant="a")
        # A filter given as None is no filter.
        assert reference.export_csv_copy(tx, EXPORT_COLUMNS, now=NOW, status=None)["rows"] == 0
    with tenant_transaction("biz_b", database) as tx:
        assert reference.export_csv_copy(tx, EXPORT_COLUMNS, now=NOW)["rows"] == len(COPY_TRICKY)


def test_the_settings_that_carry_copy_values_end_with_the_transaction(database: Database) -> None:
    with tenant_transaction("biz_a", database) as tx:
        reference.export_csv_copy(tx, EXPORT_COLUMNS, now=NOW, status="open")
        assert tx.scalar("SELECT current_setting('rebound.export_status', true)") == "open"
    with tenant_transaction("biz_a", database) as tx:
        assert tx.scalar("SELECT current_setting('rebound.export_status', true)") in ("", None)


@pytest.mark.parametrize(("data", "rows", "last"), [
    (b"", 0, 0),
    (b"a,b\n", 1, 0),
    (b"a,b\nc,d\n", 2, 5),
    (b'a,"x\ny"\nc,"""q\n"""\n', 2, 9),
    (b'"\n",1\n"a""\n""b",2\n', 2, 7),
])
def test_crlf_rows_ends_rows_only_outside_quotes(data: bytes, rows: int, last: int) -> None:
    out, n, start = export_store.crlf_rows(data)
    assert n == rows and start == last
    assert list(csv.reader(io.StringIO(out.decode(), newline=""))) == list(
        csv.reader(io.StringIO(data.decode(), newline="")))
    if rows:
        assert out.endswith(b"\r\n") and out[start - 2:start] in (b"", b"\r\n")


@pytest.mark.parametrize(("chunk", "max_bytes", "page_rows"), [
    (1, 1500, 10), (300, 1500, 10), (300, 4000, 3), (10**6, 2500, 10), (10**6, 10**7, 10), (700, 10**7, 4)])
def test_export_parts_add_up_to_the_formatted_rows_whatever_the_chunk_and_budget(
        database: Database, monkeypatch: pytest.MonkeyPatch, chunk: int, max_bytes: int,
        page_rows: int) -> None:
    from chalicelib.api import cases as case_views
    from chalicelib.api.schemas.cases import ExportQuery

    with tenant_transaction("biz_a", database) as tx:
        _insert_tricky(tx, "biz_a", same_time=True)  # ties: the cursor must split them exactly
        _insert_tricky(tx, "biz_a")
        whole = reference.export_csv_page(tx, EXPORT_COLUMNS, now=NOW, limit=1000)["text"]
    monkeypatch.setattr(case_views, "_EXPORT_CHUNK_BYTES", chunk)
    monkeypatch.setattr(case_views, "EXPORT_MAX_BYTES", max_bytes)
    monkeypatch.setattr(case_views, "EXPORT_PAGE_ROWS", page_rows)
    header = ",".join(EXPORT_COLUMNS) + "\r\n"
    bodies: list[str] = []
    after = None
    for _ in range(200):
        with tenant_transaction("biz_a", database) as tx:
            body, cursor = case_views._export_body(tx, ExportQuery(), NOW, after)
        assert body.startswith(header) and len(body) > len(header)
        rows = list(csv.reader(io.StringIO(body, newline="")))
        assert case_views._wire_size(body) <= max_bytes or len(rows) == 2  # one row that cannot fit
        bodies.append(body[len(header):])
        if cursor is None:
            break
        after = case_views.decode_cursor(cursor)
    assert "".join(bodies) == whole
    assert (len(bodies) > 1) == (case_views._wire_size(header + whole) > max_bytes)
