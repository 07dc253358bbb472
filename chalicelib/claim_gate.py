"""Which owed ledger rows may go now, and claiming them (the executor's first step).

Rules checked at claim time (what a member would expect):
- nothing is sent for a case that is no longer open, or whose 14-day window has passed;
- automatic messages wait out the company's quiet hours and a 20 h cap per member per channel,
  counting sends in flight (claimed) as well as sent ones (a creator's manual nudge is exempt
  from the cap: it is an explicit decision);
- at most one incentive per member per 90 days per company;
- smart retry's rows (``card_attach``, ``payment_retry``) have rules of their own
  (``recovery_exec.gate``).
A row that must not go is skipped (with the reason) or deferred (owed again from a later time)
in the claim's transaction. ``FOR UPDATE SKIP LOCKED`` keeps two concurrent ticks off the same
rows; the claims themselves are one write (``claims.write_claims``).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from chalicelib import measurement, recovery_exec
from chalicelib.attribution import window_passed
from chalicelib.claims import (
    LEASE,
    MESSAGE_KINDS,
    Claim,
    Stats,
    count_send,
    keep_pending,
    settle,
    write_claims,
)
from chalicelib.db import Transaction
from chalicelib.db_pool import Database
from chalicelib.models import Case, CaseStatus, CreatorSettings
from chalicelib.observability import count
from chalicelib.recovery_policy import RECOVERY_KINDS
from chalicelib.reminders import FREQUENCY_CAP, quiet_until
from chalicelib.store import cases as case_store
from chalicelib.store import settings as settings_store
from chalicelib.tenancy import tenant_transaction

INCENTIVE_COOLDOWN = timedelta(days=90)


_OWED = (
    "SELECT a.id::text AS action_id, a.kind, a.step, a.channel, a.idempotency_key, a.attempts,"
    " a.case_id::text AS case_id, COALESCE(a.owed_at, a.created_at) AS owed_at, a.result -> 'copy' AS copy"
    " FROM recovery_actions a"
    " WHERE a.status IN ('pending', 'claimed') AND a.due_at <= :now"
    # A lease runs on the database's clock, whatever clock the executor reads.
    " AND (a.claimed_until IS NULL OR a.claimed_until <= now())"
    " AND (CAST(:case_id AS uuid) IS NULL OR a.case_id = CAST(:case_id AS uuid))"
    " AND (CAST(:kinds AS text) IS NULL OR a.kind = ANY(string_to_array(CAST(:kinds AS text), ',')))"
    " ORDER BY a.due_at, a.id LIMIT :limit FOR UPDATE SKIP LOCKED"
)


def _member_cap(tx: Transaction, user_id: str, channel: str, exclude: str,
                now: datetime) -> datetime | None:
    """Until when the frequency cap holds this member's channel (None: free). A send in flight
    (claimed, lease live) counts as sent now: two executors must not both message the member."""
    row = tx.one(
        "SELECT max(a.completed_at) FILTER (WHERE a.status = 'sent') AS last_sent,"
        # How long the live lease still runs, on the database's clock (where leases live).
        " max(a.claimed_until - now()) FILTER (WHERE a.status = 'claimed' AND a.claimed_until > now())"
        "   AS busy_for"
        " FROM recovery_actions a JOIN recovery_cases c ON c.id = a.case_id"
        " WHERE c.user_id = :u AND a.channel = :ch AND a.status IN ('sent', 'claimed')"
        " AND a.kind IN ('nudge', 'reminder') AND a.id <> CAST(:x AS uuid)",
        u=user_id, ch=channel, x=exclude)
    if row is None:
        return None
    busy_for: timedelta | None = row["busy_for"]
    if busy_for is not None:
        # By then it is sent (and the cap runs from it) or it failed (and we may go).
        return now + busy_for
    last: datetime | None = row["last_sent"]
    if last is not None and now - last < FREQUENCY_CAP:
        return last + FREQUENCY_CAP
    return None


def _incentive_verdict(tx: Transaction, company_id: str, user_id: str, exclude: str,
                       now: datetime) -> tuple[str, Any] | None:
    """One incentive per member per 90 days: skip when one was granted; wait while another is in
    flight or an older one is still owed (retrying through a Whop outage) — it goes first, and
    if it never goes (its case closed) this one may."""
    # Serialise incentive decisions per member so two cases cannot both grant one.
    tx.query("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))", k=f"{company_id}/{user_id}/incentive")
    row = tx.one(
        # A row that was attempted and then settled as skipped (its case closed while Whop's
        # answer was lost) may have been applied: it counts as granted (found by the chaos run).
        "SELECT count(*) FILTER (WHERE (a.status = 'sent' OR (a.status = 'skipped' AND a.attempts > 0))"
        "   AND COALESCE(a.completed_at, a.updated_at) > :since) AS granted,"
        " count(*) FILTER (WHERE a.status = 'claimed' OR (a.status = 'pending'"
        "   AND (a.created_at, a.id) < (SELECT created_at, id FROM recovery_actions"
        "                               WHERE id = CAST(:x AS uuid)))) AS ahead"
        " FROM recovery_actions a JOIN recovery_cases c ON c.id = a.case_id"
        " WHERE c.user_id = :u AND a.kind = 'incentive' AND a.id <> CAST(:x AS uuid)",
        u=user_id, x=exclude, since=now - INCENTIVE_COOLDOWN)
    if row is not None and row["granted"]:
        return ("skip", "recent_incentive")
    if row is not None and row["ahead"]:
        return ("defer", now + LEASE)
    return None


def _t0_unsent(tx: Transaction, case_id: str, channel: str | None) -> bool:
    return bool(tx.scalar(
        "SELECT count(*) FROM recovery_actions WHERE case_id = CAST(:c AS uuid) AND step = 't0'"
        " AND channel IS NOT DISTINCT FROM :ch AND status IN ('pending', 'claimed')", c=case_id, ch=channel))


def _gate(tx: Transaction, row: dict[str, Any], case: Case, settings: CreatorSettings, now: datetime,
          batch_sends: set[tuple[str, str]]) -> tuple[str, Any] | None:
    """Why this row must not be claimed now: ("skip", reason) or ("defer", until); None = go."""
    kind, channel = row["kind"], row["channel"]
    if case.holdout and kind in ("nudge", "reminder", "incentive"):
        return ("skip", "holdout")  # measured, never messaged automatically (manual nudges still go)
    if case.status is not CaseStatus.OPEN:
        return ("skip", "case_closed")
    if window_passed(case.first_failure_at, now):
        if row["attempts"]:
            count("EffectsAbandoned")  # it was retrying through a Whop problem until the window closed
        return ("skip", "window_passed")
    if kind in MESSAGE_KINDS and not case.user_id:
        return ("skip", "no_user")
    if kind == "reminder" and _t0_unsent(tx, row["case_id"], channel):
        # A reminder never overtakes the T+0 it follows up (a late event can make both due).
        return ("defer", now + LEASE)
    if kind in ("nudge", "reminder"):
        until = quiet_until(now, settings)
        if until is not None:
            return ("defer", until)
        assert case.user_id is not None and channel is not None
        capped_until = _member_cap(tx, case.user_id, channel, row["action_id"], now)
        if capped_until is not None:
            return ("defer", capped_until)
        if (case.user_id, channel) in batch_sends:
            return ("defer", now + FREQUENCY_CAP)
        batch_sends.add((case.user_id, channel))
    if kind == "incentive" and case.user_id:
        return _incentive_verdict(tx, case.company_id, case.user_id, row["action_id"], now)
    return None


def claim(company_id: str, now: datetime, db: Database | None = None, *, case_id: str | None = None,
          kinds: tuple[str, ...] | None = None, limit: int = 50,
          stats: Stats | None = None) -> list[Claim]:
    stats = stats if stats is not None else Stats()
    claims: list[Claim] = []
    with tenant_transaction(company_id, db) as tx:
        settings = settings_store.get_settings(tx)
        rows = tx.query(_OWED, now=now, case_id=case_id, limit=limit,
                        kinds=",".join(kinds) if kinds else None)
        if not rows:
            return claims
        # Every case of the batch in one read, and every claim in one write (below).
        cases = {str(r["id"]): r for r in tx.query(
            "SELECT * FROM recovery_cases WHERE id = ANY(CAST(:ids AS uuid[]))",
            ids=sorted({r["case_id"] for r in rows}))}
        batch_sends: set[tuple[str, str]] = set()
        unwritten: list[Claim] = []
        for row in rows:
            if row["kind"] == "incentive":
                # The incentive limit reads other claims from the table: make ours visible first.
                write_claims(tx, unwritten, now)
                unwritten = []
            case_row = cases[row["case_id"]]
            case = case_store.case_from_row(case_row)
            verdict = (recovery_exec.gate(tx, row, case, settings, now) if row["kind"] in RECOVERY_KINDS
                       else _gate(tx, row, case, settings, now, batch_sends))  # smart retry's own rules
            if verdict is not None and verdict[0] == "skip":
                settle(tx, row["action_id"], now, "skipped", "skipped", verdict[1])
                stats.skipped += 1
                count_send(row["kind"], row["channel"], "skipped")
                continue
            if verdict is not None:
                keep_pending(tx, row["action_id"], verdict[1], None, "deferred")
                stats.deferred += 1
                continue
            c = Claim(action_id=row["action_id"], kind=row["kind"], step=row["step"],
                      channel=row["channel"], key=row["idempotency_key"],
                      attempts=row["attempts"] + 1, case_id=row["case_id"], case=case,
                      link_token=case_row["link_token"], settings=settings, token=str(uuid.uuid4()),
                      owed_at=row["owed_at"], copy=row["copy"], variant=measurement.variant_copy(tx, case))
            unwritten.append(c)
            claims.append(c)
        write_claims(tx, unwritten, now)
    return claims
