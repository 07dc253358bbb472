"""Row-level security: every tenant table isolates companies, as the runtime role."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from chalicelib.db import TenantViolation
from chalicelib.db_pool import Database
from chalicelib.tenancy import service_transaction, tenant_transaction
from tests.conftest import TENANT_TABLES, Owner

A, B = "biz_alpha", "biz_bravo"


def _case_id(tx_company: str, owner: Owner) -> str:
    case_id = str(uuid.uuid4())
    owner.run(
        "INSERT INTO recovery_cases (id, company_id, membership_id, first_failure_at, last_failure_at)"
        " VALUES (:id, :c, :m, now(), now())", id=case_id, c=tx_company, m=f"mem_{uuid.uuid4().hex[:8]}")
    return case_id


# For each tenant table: an INSERT the runtime role would make for a company.
Inserter = Callable[[str, Owner], tuple[str, dict[str, object]]]

INSERTS: dict[str, Inserter] = {
    "creator_settings": lambda c, o: (
        "INSERT INTO creator_settings (company_id) VALUES (:c)", {"c": c}),
    "events": lambda c, o: (
        "INSERT INTO events (webhook_id, company_id, type, occurred_at, received_at)"
        " VALUES (:w, :c, 'payment.failed', now(), now())", {"w": f"msg_{uuid.uuid4().hex}", "c": c}),
    "recovery_cases": lambda c, o: (
        "INSERT INTO recovery_cases (company_id, membership_id, first_failure_at, last_failure_at)"
        " VALUES (:c, :m, now(), now())", {"c": c, "m": f"mem_{uuid.uuid4().hex[:8]}"}),
    "recovery_actions": lambda c, o: (
        "INSERT INTO recovery_actions (case_id, company_id, kind, step, idempotency_key)"
        " VALUES (:case_id, :c, 'nudge', 't0', :k)",
        {"case_id": _case_id(c, o), "c": c, "k": uuid.uuid4().hex}),
    "experiments": lambda c, o: (
        "INSERT INTO experiments (company_id, name, variants, status, stopped_at)"
        " VALUES (:c, 'copy test', CAST(:v AS jsonb), 'stopped', now())",
        {"c": c, "v": '[{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]'}),
    "case_link_aliases": lambda c, o: (
        "INSERT INTO case_link_aliases (link_token, company_id, case_id) VALUES (:t, :c, :case_id)",
        {"t": uuid.uuid4().hex, "c": c, "case_id": _case_id(c, o)}),
    "rate_limits": lambda c, o: (
        "INSERT INTO rate_limits (company_id, bucket, window_start, count) VALUES (:c, 'reads', now(), 1)",
        {"c": c}),
    # The erasure record (issue 19): ON CONFLICT keeps a second record of the same company quiet.
    "erased_companies": lambda c, o: (
        "INSERT INTO erased_companies (company_id) VALUES (:c) ON CONFLICT DO NOTHING", {"c": c}),
}
# Tables the runtime may not UPDATE at all (the refusal is then the privilege, not the policy).
NO_UPDATE = {"erased_companies"}


def test_every_table_with_company_id_has_forced_rls_and_a_matrix_entry(database: Database,
                                                                       owner: Owner) -> None:
    rows = owner.run(
        "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND EXISTS ("
        "  SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'company_id'"
        "  AND NOT a.attisdropped)")
    tables = {r[0]: (r[1], r[2]) for r in rows}
    assert set(tables) == set(TENANT_TABLES) == set(INSERTS), "a new tenant table needs RLS and a test"
    for name, (enabled, forced) in tables.items():
        assert enabled and forced, f"{name} must ENABLE and FORCE row level security"
        policies = owner.run("SELECT qual, with_check FROM pg_policies WHERE tablename = :t"
                             " AND policyname = 'tenant_isolation'", t=name)
        assert policies, f"{name} has no tenant_isolation policy"
        qual, check = policies[0]
        assert "NULLIF(current_setting('app.company_id'" in str(qual)
        assert "NULLIF(current_setting('app.company_id'" in str(check)


def test_runtime_role_owns_nothing_and_cannot_bypass_rls(database: Database, owner: Owner) -> None:
    with service_transaction(database) as tx:
        me = tx.one("SELECT r.rolname, r.rolsuper, r.rolbypassrls FROM pg_roles r"
                    " WHERE r.rolname = current_user")
        member = tx.scalar("SELECT pg_has_role(current_user, 'rebound_app', 'MEMBER')")
    assert me is not None and me["rolsuper"] is False and me["rolbypassrls"] is False
    assert member is True
    app_role = owner.run("SELECT rolsuper, rolbypassrls, rolcanlogin FROM pg_roles"
                         " WHERE rolname = 'rebound_app'")
    assert app_role == [[False, False, False]]
    owned = owner.run("SELECT c.relname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner"
                      " WHERE r.rolname IN ('rebound_app', :me)", me=me["rolname"])
    assert owned == []


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_company_a_cannot_see_touch_or_write_company_b(table: str, database: Database,
                                                       owner: Owner) -> None:
    sql_a, params_a = INSERTS[table](A, owner)
    sql_b, params_b = INSERTS[table](B, owner)
    with tenant_transaction(A, database) as tx:
        tx.execute(sql_a, **params_a)
    with tenant_transaction(B, database) as tx:
        tx.execute(sql_b, **params_b)

    with tenant_transaction(A, database) as tx:
        seen = {r["company_id"] for r in tx.query(f"SELECT company_id FROM {table}")}
        assert seen == {A}
        if table not in NO_UPDATE:
            assert tx.execute(f"UPDATE {table} SET company_id = company_id WHERE company_id = :b",
                              b=B) == 0
        assert tx.execute(f"DELETE FROM {table} WHERE company_id = :b", b=B) == 0
    # B's row survived A's attempts.
    assert owner.run(f"SELECT count(*) FROM {table} WHERE company_id = :b", b=B)[0][0] >= 1

    sql_b2, params_b2 = INSERTS[table](B, owner)
    with pytest.raises(TenantViolation), tenant_transaction(A, database) as tx:
        tx.execute(sql_b2, **params_b2)

    # Moving A's own row into B is refused too (WITH CHECK on UPDATE, or no UPDATE at all).
    with pytest.raises(TenantViolation), tenant_transaction(A, database) as tx:
        tx.execute(f"UPDATE {table} SET company_id = :b", b=B)


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_without_tenant_context_nothing_is_visible_or_writable(table: str, database: Database,
                                                               owner: Owner) -> None:
    sql_a, params_a = INSERTS[table](A, owner)
    with tenant_transaction(A, database) as tx:
        tx.execute(sql_a, **params_a)
    with service_transaction(database) as tx:
        assert tx.query(f"SELECT * FROM {table}") == []
    sql_a2, params_a2 = INSERTS[table](A, owner)
    with pytest.raises(TenantViolation), service_transaction(database) as tx:
        tx.execute(sql_a2, **params_a2)


def test_tenant_context_does_not_outlive_its_transaction(database: Database) -> None:
    with tenant_transaction(A, database) as tx:
        tx.execute("INSERT INTO creator_settings (company_id) VALUES (:c)", c=A)
    # Same connection, next transaction: the setting is gone ('' → no tenant).
    with service_transaction(database) as tx:
        assert tx.scalar("SELECT current_setting('app.company_id', true)") == ""
        assert tx.query("SELECT * FROM creator_settings") == []


def test_empty_company_id_is_refused(database: Database) -> None:
    with pytest.raises(ValueError), tenant_transaction("", database):
        pass


def test_due_company_ids_returns_ids_only_across_tenants(database: Database, owner: Owner) -> None:
    for company in (A, B):
        owner.run("INSERT INTO recovery_cases (company_id, membership_id, first_failure_at,"
                  " last_failure_at, next_action_at) VALUES (:c, 'mem_1', now(), now(),"
                  " now() - interval '1 minute')", c=company)
    with service_transaction(database) as tx:
        rows = tx.query("SELECT * FROM due_company_ids(now())")
    assert sorted(r["company_id"] for r in rows) == [A, B]
    assert all(set(r) == {"company_id"} for r in rows)
