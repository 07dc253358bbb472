"""Tracked links (``/r/{token}``): record the click, then send the member to fix their payment.

The token is 32 random bytes: unguessable, and it says nothing about the member. A link works
while its case is open; after that it has expired with the case.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from chalicelib import store
from chalicelib.db import Database, service_transaction, tenant_transaction
from chalicelib.whop import WhopError, WhopPort

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,100}$")


@dataclass(frozen=True)
class Click:
    status: str  # "redirect" | "expired" | "unknown" | "unavailable"
    location: str | None = None


def _safe(url: str | None) -> str | None:
    # Targets come from signed Whop payloads or Whop's API; still, only ever redirect to http(s).
    return url if url and url.startswith(("https://", "http://")) else None


def follow(token: str, now: datetime, whop: WhopPort, db: Database | None = None) -> Click:
    if not _TOKEN.match(token):
        return Click("unknown")
    with service_transaction(db) as tx:
        found = tx.one("SELECT company_id, case_id::text AS case_id FROM case_for_link_token(:t)", t=token)
    if found is None:
        return Click("unknown")
    company_id, case_id = found["company_id"], found["case_id"]
    with tenant_transaction(company_id, db) as tx:
        row = tx.one("UPDATE recovery_cases SET link_clicks = link_clicks + 1, last_clicked_at = :now"
                     " WHERE id = CAST(:id AS uuid) AND status = 'open'"
                     " RETURNING membership_id, recovery_url, manage_url", id=case_id, now=now)
        if row is None:
            return Click("expired")
        store.add_action(tx, case_id=case_id, company_id=company_id, kind="link_click", step="click",
                         status="done", idempotency_key=f"{case_id}:click:{uuid.uuid4()}", actor="member")
    target = _safe(row["recovery_url"]) or _safe(row["manage_url"])
    if target is None:
        try:
            target = _safe(whop.retrieve_membership(row["membership_id"]).manage_url)
        except WhopError:
            return Click("unavailable")
        if target is None:
            return Click("unavailable")
        with tenant_transaction(company_id, db) as tx:
            tx.execute("UPDATE recovery_cases SET manage_url = :u WHERE id = CAST(:id AS uuid)",
                       u=target, id=case_id)
    return Click("redirect", target)
