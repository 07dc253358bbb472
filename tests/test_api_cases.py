"""…/cases (keyset pages, filters, search), …/cases/{id} (timeline), …/cases/export.csv, …/kpis,
and tenant isolation across all of them."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chalicelib.api import cases as case_views
from chalicelib.api.cases import EXPORT_COLUMNS
from chalicelib.kpis import StatusCount, figures
from tests.test_api_support import ADMIN_B, ALPHA, BRAVO, DAY, NOW, Api, api_fixture, parse_csv  # noqa: F401

C = "/api/companies/{company_id}"
LIST, ONE, EXPORT, KPIS = f"{C}/cases", f"{C}/cases/{{case_id}}", f"{C}/cases/export.csv", f"{C}/kpis"


def insert_case(api: Api, *, company: str = ALPHA, membership: str | None = None, user: str | None = "user_1",
                status: str = "open", first: datetime | None = None, **fields: Any) -> str:
    """A case row written directly (as the tenant, RLS on) for bulk and edge data."""
    first = first or NOW - DAY
    values: dict[str, Any] = {
        "company_id": company, "membership_id": membership or f"mem_{uuid.uuid4().hex[:12]}", "user_id": user,
        "status": status, "first_failure_at": first, "last_failure_at": first, "amount_minor": 1999,
        "currency": "usd", "link_token": secrets.token_urlsafe(32),
        "recovered_at": first + timedelta(hours=5) if status == "recovered" else None,
        "recovered_amount_minor": 1999 if status == "recovered" else None,
        "closed_at": first + timedelta(hours=5) if status != "open" else None,
        # issue 17: opened when it failed, with a holdout on (override to test eligibility)
        "opened_at": first, "holdout_percent_at_open": 10, **fields}
    names = ", ".join(values)
    marks = ", ".join(f":{k}" for k in values)
    sql = f"INSERT INTO recovery_cases ({names}) VALUES ({marks}) RETURNING id::text AS id"
    rows = api.rows(company, sql, **values)
    return str(rows[0]["id"])


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def add_ledger(api: Api, case_id: str, kind: str, status: str, channel: str | None = "dm",
               company: str = ALPHA) -> None:
    api.rows(company, "INSERT INTO recovery_actions (case_id, company_id, kind, step, channel, status,"
                      " idempotency_key) VALUES (CAST(:c AS uuid), :co, :k, 's', :ch, :st, :key)"
                      " RETURNING id",
             c=case_id, co=company, k=kind, ch=channel, st=status, key=str(uuid.uuid4()))


# --- list ---------------------------------------------------------------------------------------


def test_list_is_newest_first_with_id_as_tie_break_and_pages_cover_everything(api: Api) -> None:
    same = NOW - 2 * DAY
    ids = [insert_case(api, first=NOW - timedelta(hours=h)) for h in (1, 30, 70, 100)]
    ids += [insert_case(api, first=same) for _ in range(3)]
    expected = sorted([(NOW - timedelta(hours=h), i) for h, i in zip((1, 30, 70, 100), ids[:4], strict=True)]
                      + [(same, i) for i in ids[4:]], reverse=True)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        _, page = api.call("GET", LIST, query=query, status=200)
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        pages += 1
        if cursor is None:
            break
    assert seen == [i for _, i in expected]
    assert pages == 4


def test_pages_stay_stable_while_new_cases_arrive(api: Api) -> None:
    older = [insert_case(api, first=NOW - timedelta(days=d)) for d in (1, 2, 3, 4)]
    _, first = api.call("GET", LIST, query="limit=2", status=200)
    assert [i["id"] for i in first["items"]] == older[:2]
    insert_case(api, first=NOW - timedelta(minutes=1))  # newer than everything already listed
    _, second = api.call("GET", LIST, query=f"limit=2&cursor={first['next_cursor']}", status=200)
    assert [i["id"] for i in second["items"]] == older[2:]
    assert second["next_cursor"] is None


def test_filters_by_status_and_window(api: Api) -> None:
    recent_open = insert_case(api, first=NOW - 2 * DAY)
    recent_won = insert_case(api, status="recovered", first=NOW - 3 * DAY)
    old_open = insert_case(api, first=NOW - 40 * DAY)
    _, body = api.call("GET", LIST, query="status=open", status=200)
    assert {i["id"] for i in body["items"]} == {recent_open, old_open}
    _, body = api.call("GET", LIST, query="window_days=30", status=200)
    assert {i["id"] for i in body["items"]} == {recent_open, recent_won}
    _, body = api.call("GET", LIST, query="status=recovered&window_days=30", status=200)
    assert [i["id"] for i in body["items"]] == [recent_won]


def test_search_matches_membership_or_user_id_exactly_or_by_prefix(api: Api) -> None:
    a = insert_case(api, membership="mem_abc123", user="user_zed")
    b = insert_case(api, membership="mem_abd999", user="user_abc")
    insert_case(api, membership="mem_x_1", user="user_q")
    for q, wanted in (("mem_abc123", {a}), ("mem_ab", {a, b}), ("user_abc", {b}), ("user_z", {a}),
                      ("mem_%", set()), ("mem__", set()), ("nothing", set())):
        _, body = api.call("GET", LIST, query=f"q={q}", status=200)
        assert {i["id"] for i in body["items"]} == wanted, q


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=ten", "status=lost", "window_days=0",
                                   "window_days=366", "cursor=%%%", "cursor=bm90LWEtY3Vyc29y",
                                   "cursor=" + "A" * 300])
def test_bad_list_parameters_are_400_naming_the_parameter(api: Api, query: str) -> None:
    _, err = api.call("GET", LIST, query=query, status=400)
    assert query.split("=")[0] in err["error"]["fields"]


def test_list_items_carry_no_link_token_or_member_urls(api: Api) -> None:
    api.open_case()
    resp, body = api.call("GET", LIST, status=200)
    token = api.rows(ALPHA, "SELECT link_token FROM recovery_cases")[0]["link_token"]
    assert token not in resp.body.decode()
    assert not {"link_token", "recovery_url", "manage_url"} & set(body["items"][0])


# --- one case -----------------------------------------------------------------------------------


def test_case_detail_has_its_timeline_in_time_order_and_no_pii(api: Api) -> None:
    failed_at = NOW - 3 * DAY
    case_id = api.open_case(at=failed_at)
    api.recover(at=failed_at + DAY)
    api.open_case(at=failed_at + 2 * DAY)  # the membership's next episode: not in this timeline
    resp, body = api.call("GET", ONE, params={"case_id": case_id}, status=200)
    assert body["id"] == case_id and body["status"] == "recovered"
    timeline = body["timeline"]
    assert [t["at"] for t in timeline] == sorted(t["at"] for t in timeline)
    events = [t for t in timeline if t["source"] == "event"]
    assert [e["type"] for e in events] == ["payment.failed", "payment.succeeded"]
    assert events[0]["detail"]["decline_code"] == "insufficient_funds" and events[0]["actor"] == "whop"
    # (the payday retry a soft decline may be owed is tests/test_smart_retry.py's: issue 18)
    actions = [t for t in timeline if t["source"] == "action" and t["type"] != "payment_retry"]
    assert sorted((a["type"], a["channel"]) for a in actions) == [("nudge", "dm"), ("nudge", "push")]
    text = resp.body.decode()
    assert "buyer@example.com" not in text and "Jane" not in text


def test_case_ids_malformed_400_unknown_404(api: Api) -> None:
    api.call("GET", ONE, params={"case_id": "not-a-uuid"}, status=400)
    api.call("GET", ONE, params={"case_id": str(uuid.uuid4())}, status=404)


# --- tenant isolation ---------------------------------------------------------------------------


def test_another_companys_case_export_and_membership_are_404_and_nothing_leaks(api: Api) -> None:
    a_case = api.open_case(company=ALPHA, membership="mem_alpha1")
    b_case = api.open_case(company=BRAVO, membership="mem_bravo1", user="user_b")
    api.whop.add_membership("mem_alpha1", company_id=ALPHA, user_id="user_1")
    as_b: dict[str, Any] = {"user": ADMIN_B}
    b = {"company_id": BRAVO}
    for template in (ONE, f"{ONE}/nudge", f"{ONE}/cancel", f"{ONE}/cancel-membership"):
        method = "GET" if template == ONE else "POST"
        resp, err = api.call(method, template, params={**b, "case_id": a_case}, status=404, **as_b)
        assert err["error"]["message"] == "case not found" and "mem_alpha1" not in resp.body.decode()
    api.call("POST", f"{ONE}/terminate", params={**b, "case_id": a_case}, body={"confirm": True}, status=404,
             **as_b)
    assert api.case(a_case)["status"] == "open"  # nothing happened to A's case
    assert api.whop.calls_to("POST", r"/memberships/.*/cancel") == []
    _, listing = api.call("GET", LIST, params=b, status=200, **as_b)
    assert [i["id"] for i in listing["items"]] == [b_case]
    resp, csv_text = api.call("GET", EXPORT, params=b, status=200, **as_b)
    assert [r["case_id"] for r in parse_csv(csv_text)] == [b_case] and a_case not in csv_text
    for template in (f"{C}/memberships/{{membership_id}}", f"{C}/memberships/{{membership_id}}/manage-url"):
        resp, _ = api.call("GET", template, params={**b, "membership_id": "mem_alpha1"}, status=404, **as_b)
        assert "user_1" not in resp.body.decode() and "manage" not in resp.body.decode()
    _, kpis = api.call("GET", KPIS, params=b, status=200, **as_b)
    assert kpis["total_cases"] == 1


# --- export -------------------------------------------------------------------------------------


def test_export_has_the_contract_columns_iso_times_and_nudge_counts(api: Api) -> None:
    case_id = api.open_case(at=NOW - 2 * DAY)
    add_ledger(api, case_id, "reminder", "sent")
    add_ledger(api, case_id, "manual_nudge", "sent", channel="push")
    add_ledger(api, case_id, "manual_nudge", "failed")
    add_ledger(api, case_id, "incentive", "sent", channel=None)
    api.rows(ALPHA, "UPDATE recovery_actions SET status = 'sent' WHERE kind = 'nudge' AND channel = 'dm'"
                    " RETURNING id")
    resp, text = api.call("GET", EXPORT, status=200)
    assert resp.headers["Content-Type"].startswith("text/csv")
    assert resp.headers["Content-Disposition"].startswith("attachment; filename=")
    assert "X-Export-Next-Cursor" not in resp.headers
    assert text.splitlines()[0] == ",".join(EXPORT_COLUMNS)
    # The contract's order: the first 20 columns, then later issues' appended at the end.
    assert ",".join(EXPORT_COLUMNS) == (
        "case_id,membership_id,user_id,status,first_failure_at,last_failure_at,"
        "recovered_at,amount_minor,currency,recovered_amount_minor,failure_count,"
        "decline_code,failure_reason,nudges_sent,incentive_days,"
        "holdout,experiment_id,variant,decline_class,clicks,"
        "opened_at,holdout_percent_at_open,contaminated,incentive_cost_minor,"
        "retried_at,recovered_by")
    (row,) = parse_csv(text)
    assert row["case_id"] == case_id and row["status"] == "open" and row["amount_minor"] == "1999"
    assert row["nudges_sent"] == "3"  # dm nudge, reminder, manual nudge sent; not failed/pending/incentive
    assert (row["holdout"], row["experiment_id"], row["variant"]) == ("false", "", "")
    assert (row["decline_class"], row["clicks"]) == ("card_soft", "0")  # insufficient funds
    assert row["first_failure_at"].endswith("Z")
    parsed = datetime.fromisoformat(row["first_failure_at"].replace("Z", "+00:00"))
    assert abs(parsed - (NOW - 2 * DAY)) < timedelta(milliseconds=1) and parsed.tzinfo == UTC
    assert row["recovered_at"] == "" and "buyer@example.com" not in text and "Jane" not in text
    # issue 17: opened now by the database clock (in time), no holdout, not nudged by hand, no cost
    assert _at(row["opened_at"]) > parsed and row["opened_at"].endswith("Z")
    assert (row["holdout_percent_at_open"], row["contaminated"]) == ("0", "false")
    assert row["incentive_cost_minor"] == ""
    assert (row["retried_at"], row["recovered_by"]) == ("", "")  # never retried, not recovered


def test_export_neutralises_cells_a_spreadsheet_would_run(api: Api) -> None:
    insert_case(api, membership="mem_ok", user="@user", decline_code="-1+1",
                failure_reason='=HYPERLINK("http://evil","x")')
    insert_case(api, membership="mem_ok2", user="+15551234", decline_code="\tcode", failure_reason="\rcr")
    _, text = api.call("GET", EXPORT, status=200)
    rows = {r["membership_id"]: r for r in parse_csv(text)}
    assert rows["mem_ok"]["user_id"] == "'@user" and rows["mem_ok"]["decline_code"] == "'-1+1"
    assert rows["mem_ok"]["failure_reason"] == "'=HYPERLINK(\"http://evil\",\"x\")"
    assert rows["mem_ok2"]["user_id"] == "'+15551234" and rows["mem_ok2"]["decline_code"] == "'\tcode"
    assert rows["mem_ok2"]["failure_reason"] == "'\rcr"


def test_a_large_export_comes_in_parts_that_add_up_to_everything(api: Api,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    api.rows(ALPHA, "INSERT INTO recovery_cases (company_id, membership_id, user_id, first_failure_at,"
                    " last_failure_at, amount_minor, currency, link_token)"
                    " SELECT :c, 'mem_' || g, 'user_' || g,"
                    " CAST(:t AS timestamptz) - g * interval '1 minute',"
                    " CAST(:t AS timestamptz) - g * interval '1 minute', 1999, 'usd', md5(g::text)"
                    " FROM generate_series(1, 230) g"
                    " RETURNING id", c=ALPHA, t=NOW)
    monkeypatch.setattr(case_views, "EXPORT_PAGE_ROWS", 40)  # several DB pages per part
    monkeypatch.setattr(case_views, "EXPORT_MAX_BYTES", 12_000)  # and several parts
    seen: list[str] = []
    parts = 0
    cursor = None
    while True:
        resp, text = api.call("GET", EXPORT, query=f"cursor={cursor}" if cursor else "", status=200)
        assert len(text.encode()) <= 12_000 + 300  # JSON-escaped size is what is capped
        rows = parse_csv(text)
        assert rows, "every part makes progress"
        seen += [r["membership_id"] for r in rows]
        parts += 1
        cursor = resp.headers.get("X-Export-Next-Cursor")
        if cursor is None:
            break
    assert parts > 2
    assert seen == [f"mem_{g}" for g in range(1, 231)]  # all, once each, newest first


def test_export_filters_and_bad_cursor(api: Api) -> None:
    open_recent = insert_case(api, first=NOW - DAY)
    insert_case(api, status="expired", first=NOW - 20 * DAY)
    insert_case(api, first=NOW - 50 * DAY)
    _, text = api.call("GET", EXPORT, query="status=open&window_days=30", status=200)
    assert [r["case_id"] for r in parse_csv(text)] == [open_recent]
    _, err = api.call("GET", EXPORT, query="cursor=garbage!", status=400)
    assert "cursor" in err["error"]["fields"]
    api.call("GET", EXPORT, query="window_days=400", status=400)


# --- KPIs ---------------------------------------------------------------------------------------


def _recompute(rows: list[dict[str, str]]) -> dict[str, Any]:
    total = len(rows)
    recovered = [r for r in rows if r["status"] == "recovered"]
    revenue: dict[str, int] = {}
    for r in recovered:
        if r["recovered_amount_minor"]:
            revenue[r["currency"]] = revenue.get(r["currency"], 0) + int(r["recovered_amount_minor"])
    return {"total_cases": total, "active_cases": sum(r["status"] == "open" for r in rows),
            "recoveries": len(recovered), "recovery_rate": len(recovered) / total if total else 0,
            "recovered_revenue": [{"currency": c, "amount_minor": revenue[c]} for c in sorted(revenue)]}


def test_kpis_reconcile_with_the_csv_export_of_the_same_window(api: Api) -> None:
    # Current window (last 30 days): every status, two currencies; previous window (30–60 days).
    at = lambda days: NOW - timedelta(days=days)  # noqa: E731
    for i, m in enumerate(("mem_c1", "mem_c2", "mem_c3")):
        api.open_case(membership=m, at=at(2 + i))
    api.recover(membership="mem_c1", at=at(1))
    api.open_case(membership="mem_eur", at=at(5), amount=10.50, currency="eur")
    api.recover(membership="mem_eur", at=at(4), amount=10.50, currency="eur")
    api.open_case(membership="mem_gone", at=at(6))
    api.member_cancels(membership="mem_gone", at=at(5))
    api.open_case(membership="mem_late", at=at(25))  # expired: window passed
    insert_case(api, status="recovered", first=at(40), recovered_amount_minor=5000, currency="usd")
    insert_case(api, status="expired", first=at(45))
    insert_case(api, first=at(70))  # outside both windows

    _, kpis = api.call("GET", KPIS, query="window_days=30", status=200)
    _, current_csv = api.call("GET", EXPORT, query="window_days=30", status=200)
    _, both_csv = api.call("GET", EXPORT, query="window_days=60", status=200)
    current = parse_csv(current_csv)
    current_ids = {r["case_id"] for r in current}
    previous = [r for r in parse_csv(both_csv) if r["case_id"] not in current_ids]

    names = ("total_cases", "active_cases", "recoveries", "recovery_rate", "recovered_revenue")
    assert {k: kpis[k] for k in names} == _recompute(current)
    assert {k: kpis["previous"][k] for k in names} == _recompute(previous)
    assert kpis["window_days"] == 30 and kpis["previous"]["window_days"] == 30
    assert set(kpis["previous"]) == set(kpis) - {"previous"}  # the same fields as the current window
    # And the numbers themselves, so a reconciliation of two wrong figures cannot pass.
    assert (kpis["total_cases"], kpis["active_cases"], kpis["recoveries"]) == (6, 2, 2)
    assert kpis["recovery_rate"] == pytest.approx(2 / 6)
    assert kpis["recovered_revenue"] == [{"currency": "eur", "amount_minor": 1050},
                                         {"currency": "usd", "amount_minor": 1999}]
    assert (kpis["previous"]["total_cases"], kpis["previous"]["recoveries"]) == (2, 1)


def test_kpis_default_window_and_validation(api: Api) -> None:
    _, kpis = api.call("GET", KPIS, status=200)
    assert kpis["window_days"] == 30 and kpis["total_cases"] == 0 and kpis["recovery_rate"] == 0
    assert kpis["previous"]["recovered_revenue"] == []
    for bad in ("0", "366", "abc", "1.5"):
        _, err = api.call("GET", KPIS, query=f"window_days={bad}", status=400)
        assert "window_days" in err["error"]["fields"]
    api.call("GET", KPIS, query="window_days=365", status=200)


def test_kpi_arithmetic() -> None:
    rows = [StatusCount("open", "usd", 3), StatusCount("recovered", "usd", 2, 4000),
            StatusCount("recovered", "eur", 1, 900), StatusCount("expired", None, 2),
            StatusCount("recovered", None, 1), StatusCount("cancelled", "usd", 2)]
    result = figures(rows)
    assert (result.total_cases, result.active_cases, result.recoveries) == (11, 3, 4)
    assert result.recovery_rate == 4 / 11
    assert [(m.currency, m.amount_minor) for m in result.recovered_revenue] == [("eur", 900), ("usd", 4000)]
    assert figures([]).recovery_rate == 0


def test_empty_query_values_mean_no_filter(api: Api) -> None:
    case_id = insert_case(api)
    _, body = api.call("GET", LIST, query="status=&q=&limit=&cursor=&window_days=", status=200)
    assert [i["id"] for i in body["items"]] == [case_id]
