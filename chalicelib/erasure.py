"""Erased companies stay erased (migration 0014, ``erased_companies``).

``scripts/purge_company.py`` deletes a company's rows and records the erasure in one tenant
transaction, holding the company's erase lock; the ``events`` insert trigger takes the same lock
(shared) and drops a webhook of an erased company, so Whop's next delivery cannot bring it back.
The consumer then acknowledges that webhook as ignored. ``readmit`` removes the record (a
creator who comes back).
"""

from __future__ import annotations

from chalicelib.db import Transaction


def erase_lock_key(company_id: str) -> str:
    """The advisory-lock key the events trigger takes (shared) and a purge takes (exclusive)."""
    return f"erase:{company_id}"


def lock_for_erasure(tx: Transaction, company_id: str) -> None:
    """Wait for in-flight webhooks of the company to commit; hold new ones off until we do."""
    tx.query("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))", key=erase_lock_key(company_id))


def record_erasure(tx: Transaction, company_id: str) -> None:
    tx.execute("INSERT INTO erased_companies (company_id) VALUES (:c) ON CONFLICT DO NOTHING", c=company_id)


def readmit(tx: Transaction, company_id: str) -> bool:
    """Forget the erasure: the company's webhooks are stored again. True when there was one."""
    return tx.execute("DELETE FROM erased_companies WHERE company_id = :c", c=company_id) > 0


def is_erased(tx: Transaction) -> bool:
    """Inside the company's tenant transaction: was it erased?"""
    return bool(tx.scalar("SELECT EXISTS (SELECT 1 FROM erased_companies)"))
