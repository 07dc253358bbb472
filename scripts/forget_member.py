"""Erase one member's data from one company (a member's erasure request, GDPR art. 17).

Usage: python scripts/forget_member.py COMPANY_ID USER_ID [--dry-run]

Rebound stores no name, email, username or phone (docs/privacy.md); what it holds about a member
are Whop ids (user, membership, payment) and what happened: events, recovery cases, their ledger
rows (nudges, reminders, clicks) and member URLs. This deletes all of it for USER_ID in
COMPANY_ID: every event and case of the user, and of any membership the user held there (a
membership event may not name the user). Ledger rows go with their cases (ON DELETE CASCADE).

Runs as the runtime login inside the company's tenant transaction (RLS: another company's member
with the same Whop user id is untouched) and in ONE transaction. KPIs of past windows lose the
member's cases: that is what erasure means. Output is JSON counts, never row contents.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chalicelib.db_pool import Database  # noqa: E402
from chalicelib.tenancy import get_database, tenant_transaction  # noqa: E402
from scripts.purge_company import check_id, report  # noqa: E402

# The member's memberships in this company, from cases and events (the tenant transaction scopes it).
_MEMBERSHIPS = ("SELECT membership_id FROM recovery_cases WHERE user_id = :u"
                " UNION SELECT membership_id FROM events WHERE user_id = :u AND membership_id IS NOT NULL")


def forget_member(company_id: str, user_id: str, dry_run: bool,
                  db: Database | None = None) -> dict[str, int]:
    check_id("COMPANY_ID", company_id)
    check_id("USER_ID", user_id)
    with tenant_transaction(company_id, db or get_database()) as tx:
        memberships = [r["membership_id"] for r in tx.query(_MEMBERSHIPS, u=user_id)]
        where = "(user_id = :u OR membership_id = ANY(CAST(:m AS text[])))"
        params = {"u": user_id, "m": memberships}
        counts = {
            "memberships": len(memberships),
            "recovery_actions": int(tx.scalar(
                "SELECT count(*) FROM recovery_actions a JOIN recovery_cases c ON c.id = a.case_id"
                f" WHERE {where.replace('user_id', 'c.user_id').replace('membership_id', 'c.membership_id')}",
                **params)),
            "recovery_cases": int(tx.scalar(f"SELECT count(*) FROM recovery_cases WHERE {where}", **params)),
            "events": int(tx.scalar(f"SELECT count(*) FROM events WHERE {where}", **params)),
        }
        if not dry_run:
            tx.execute(f"DELETE FROM recovery_cases WHERE {where}", **params)  # ledger rows cascade
            tx.execute(f"DELETE FROM events WHERE {where}", **params)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Erase one member's data from one company")
    parser.add_argument("company_id")
    parser.add_argument("user_id")
    parser.add_argument("--dry-run", action="store_true", help="count the rows, change nothing")
    args = parser.parse_args(argv)
    return report("forget_member", args.company_id, args.dry_run,
                  lambda: forget_member(args.company_id, args.user_id, args.dry_run))


if __name__ == "__main__":
    sys.exit(main())
