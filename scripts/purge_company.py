"""Delete everything Rebound holds for one company (a creator who uninstalled or asked).

Usage: python scripts/purge_company.py COMPANY_ID [--dry-run] [--yes]
       python scripts/purge_company.py COMPANY_ID --readmit --yes

Connects with DATABASE_URL (the runtime login, row-level security on) and works inside that
company's tenant transaction, so it cannot touch another company's rows whatever goes wrong.
Tables are found from the catalog (every table with a company_id column the runtime role may
delete from), children before parents, so tables added later are purged too. All in ONE
transaction: either every row of the company goes, or none. ``--dry-run`` prints the counts and
changes nothing; a real purge needs ``--yes``. Output is JSON (table -> rows); never row contents.
Messages still in SQS or its DLQ expire with the queues' retention (14 days).

The erasure is recorded (``erased_companies``, migration 0014) in the same transaction, under
the company's erase lock: webhooks of the company still arriving from Whop are acknowledged and
not stored, so the company is not recreated by its next webhook. ``--readmit --yes`` removes the
record (the creator came back); nothing deleted comes back.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chalicelib import erasure  # noqa: E402
from chalicelib.db import Transaction  # noqa: E402
from chalicelib.db_pool import Database  # noqa: E402
from chalicelib.tenancy import get_database, tenant_transaction  # noqa: E402

# Whop ids are short ASCII tokens (biz_…, user_…); anything else is a typo or an attack.
_ID = re.compile(r"^[A-Za-z0-9_\-]{1,255}$")


class BadArgument(ValueError):
    pass


def check_id(name: str, value: str) -> str:
    if not _ID.match(value):
        raise BadArgument(f"{name} must be 1-255 letters, digits, '_' or '-'")
    return value


def tenant_tables(tx: Transaction) -> list[str]:
    """Tables with a company_id the runtime role may delete from, children before parents."""
    rows = tx.query(
        "SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_attribute a ON a.attrelid = c.oid"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND a.attname = 'company_id'"
        " AND NOT a.attisdropped AND has_table_privilege(c.oid, 'DELETE')"
        " AND c.relname <> 'erased_companies' ORDER BY c.relname")  # the record this writes
    tables = [r["name"] for r in rows]
    edges = tx.query(
        "SELECT child.relname AS child, parent.relname AS parent FROM pg_constraint f"
        " JOIN pg_class child ON child.oid = f.conrelid JOIN pg_class parent ON parent.oid = f.confrelid"
        " WHERE f.contype = 'f' AND f.conrelid <> f.confrelid")
    parents = {t: {e["parent"] for e in edges if e["child"] == t and e["parent"] in tables} for t in tables}
    ordered: list[str] = []
    while len(ordered) < len(tables):
        # A table goes once every table that references it has gone (children first).
        ready = [t for t in tables if t not in ordered
                 and not any(t in parents[c] for c in tables if c not in ordered and c != t)]
        if not ready:  # a reference cycle: fall back to the catalog order, inside one transaction
            ready = [t for t in tables if t not in ordered]
        ordered.extend(ready)
    return ordered


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def purge_company(company_id: str, dry_run: bool, db: Database | None = None) -> dict[str, int]:
    check_id("COMPANY_ID", company_id)
    counts: dict[str, int] = {}
    with tenant_transaction(company_id, db or get_database()) as tx:
        if not dry_run:
            erasure.lock_for_erasure(tx, company_id)  # webhooks in flight commit first, or wait
        for table in tenant_tables(tx):
            if dry_run:
                counts[table] = int(tx.scalar(f"SELECT count(*) FROM {_quote(table)}"))
            else:
                counts[table] = tx.execute(f"DELETE FROM {_quote(table)} WHERE company_id = :c",
                                           c=company_id)
        if not dry_run:
            erasure.record_erasure(tx, company_id)
    return counts


def readmit_company(company_id: str, db: Database | None = None) -> dict[str, int]:
    check_id("COMPANY_ID", company_id)
    with tenant_transaction(company_id, db or get_database()) as tx:
        return {"erased_companies": int(erasure.readmit(tx, company_id))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Delete all of one company's data")
    parser.add_argument("company_id")
    parser.add_argument("--dry-run", action="store_true", help="count the rows, change nothing")
    parser.add_argument("--yes", action="store_true", help="really delete (required unless --dry-run)")
    parser.add_argument("--readmit", action="store_true",
                        help="forget a past erasure: the company's webhooks are stored again")
    args = parser.parse_args(argv)
    if args.readmit:
        if not args.yes:
            print("purge_company: --readmit needs --yes", file=sys.stderr)
            return 2
        return report("purge_company", args.company_id, False, lambda: readmit_company(args.company_id),
                      verb="readmitted")
    if not args.dry_run and not args.yes:
        print("purge_company: this deletes every row of the company; run with --dry-run first, "
              "then again with --yes", file=sys.stderr)
        return 2
    return report("purge_company", args.company_id, args.dry_run,
                  lambda: purge_company(args.company_id, args.dry_run))


def report(tool: str, company_id: str, dry_run: bool, work: Callable[[], dict[str, int]],
           verb: str = "deleted") -> int:
    """The erasure tools' common ending: JSON counts on stdout (never row contents), or the
    argument error on stderr with exit status 2."""
    try:
        counts = work()
    except BadArgument as exc:
        print(f"{tool}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"company_id": company_id, "dry_run": dry_run,
                      "would_delete" if dry_run else verb: counts}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
