"""The case rows (table ``recovery_cases``) as the consumer's fold and the tick write them, and
the ledger rows (``recovery_actions``) a case's lifecycle owes or settles with it.

Invariants: a case row is its episode (``episode_webhook_id``: the first failure's webhook id),
written only from that episode's fold, and a row the fold would not change is not written
(``case_unchanged``). A newly opened case and the effects it owes are one statement (the ledger
row exists before any send). A closed case owes nothing: its pending rows are settled
(``skipped`` with the reason) in the statement that closes it; claimed rows, a send in flight,
are left to their executor. A duplicate row (a late event joined two episodes) is merged into the
row that stays: ledger, clicks, incentive and link token move with it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chalicelib.db import Transaction
from chalicelib.models import Case
from chalicelib.store import recovery as recovery_store

_CASE_COLUMNS = (
    "user_id", "status", "first_failure_at", "last_failure_at", "failure_count", "payment_id",
    "amount_minor", "currency", "decline_code", "failure_reason", "recovery_url", "recovered_at",
    "recovered_amount_minor", "recovered_currency", "closed_at", "close_reason", "decline_class",
)


# What the consumer reads of a stored case: its identity, what a creator decided, and every
# column a fold writes (to tell an unchanged case from a changed one).
STORED_CASE = ("id::text AS id, seq, episode_webhook_id, cancelled_by, last_reminder_offset, manage_url,"
                " next_action_at, " + ", ".join(_CASE_COLUMNS))


def membership_cases(tx: Transaction, membership_id: str) -> list[dict[str, Any]]:
    """A membership's stored cases, oldest row first."""
    return tx.query("SELECT " + STORED_CASE + " FROM recovery_cases"  # noqa: S608 - constants
                    " WHERE membership_id = :m ORDER BY created_at, id", m=membership_id)


def case_values(case: Case) -> dict[str, Any]:
    """The stored form of the columns a fold writes."""
    values = {c: getattr(case, c) for c in _CASE_COLUMNS}
    values["status"] = case.status.value
    return values


def case_unchanged(row: dict[str, Any], case: Case, next_action_at: datetime | None,
                   episode: str | None) -> bool:
    """True when writing ``case`` over ``row`` would change nothing (so it is not written)."""
    if episode is not None or row["seq"] != case.seq or row["next_action_at"] != next_action_at:
        return False
    if case.manage_url is not None and case.manage_url != row["manage_url"]:
        return False
    return all(row[c] == v for c, v in case_values(case).items())


def open_case(tx: Transaction, case: Case, next_action_at: datetime | None, link_token: str,
              case_id: str, effects: list[tuple[str, str, str | None, datetime, str]],
              last_reminder_offset: int | None = None) -> int:
    """Insert a newly opened case and the effects it owes, ``(kind, step, channel, due_at, key)``,
    as pending ledger rows, in one statement; return how many rows were owed. The id comes from
    the caller so the rows' idempotency keys are known up front."""
    values = case_values(case)
    # Column names come from the _CASE_COLUMNS constant; every value is a bound parameter.
    row = tx.one(
        "WITH c AS (INSERT INTO recovery_cases (id, company_id, membership_id, seq, episode_webhook_id,"  # noqa: S608
        " next_action_at, last_reminder_offset, link_token, manage_url, " + ", ".join(_CASE_COLUMNS)
        + ") VALUES (CAST(:id AS uuid), :company_id, :membership_id, :seq, :episode, :next_action_at,"
        " :last_offset, :link_token, :manage_url, " + ", ".join(f":{c}" for c in _CASE_COLUMNS)
        + ") RETURNING id, company_id),"
        " a AS (INSERT INTO recovery_actions (case_id, company_id, kind, step, channel, status,"
        "   idempotency_key, due_at, owed_at)"
        "   SELECT c.id, c.company_id, e.kind, e.step, e.channel, 'pending', e.key, e.due_at, e.due_at"
        "   FROM c, unnest(CAST(:kinds AS text[]), CAST(:steps AS text[]), CAST(:channels AS text[]),"
        "     CAST(:dues AS timestamptz[]), CAST(:keys AS text[])) AS e(kind, step, channel, due_at, key)"
        "   ON CONFLICT (idempotency_key) DO NOTHING RETURNING 1)"
        " SELECT (SELECT count(*) FROM a) AS owed",
        id=case_id, company_id=case.company_id, membership_id=case.membership_id, seq=case.seq,
        episode=case.failure_ids[0] if case.failure_ids else None, next_action_at=next_action_at,
        link_token=link_token, last_offset=last_reminder_offset, manage_url=case.manage_url,
        kinds=[e[0] for e in effects],
        steps=[e[1] for e in effects], channels=[e[2] for e in effects], dues=[e[3] for e in effects],
        keys=[e[4] for e in effects], **values)
    assert row is not None
    return int(row["owed"])


def update_case(tx: Transaction, case_id: str, case: Case, next_action_at: datetime | None,
                episode: str | None = None, settle: str | None = None) -> None:
    """Rewrite a stored case from its episode's fold (``episode`` fills a legacy row's identity);
    with ``settle``, its pending rows are skipped with that reason in the same statement."""
    assignments = ", ".join(f"{c} = :{c}" for c in _CASE_COLUMNS)  # constant names, bound values
    update = (
        "UPDATE recovery_cases SET " + assignments  # noqa: S608
        # Who gets the credit, re-read whenever a recovered case is written
        + ", recovered_by = " + _RECOVERED_BY
        + ", seq = :seq, episode_webhook_id = COALESCE(episode_webhook_id, :episode),"
        " manage_url = COALESCE(:manage_url, manage_url), next_action_at = :next_action_at,"
        " updated_at = now() WHERE id = CAST(:id AS uuid)")
    params = dict(id=case_id, seq=case.seq, episode=episode, next_action_at=next_action_at,
                  manage_url=case.manage_url, **case_values(case))
    if settle is None:
        tx.execute(update, **params)
        return
    tx.execute("WITH u AS (" + update + " RETURNING id) " + _SETTLE + " AND case_id IN (SELECT id FROM u)",  # noqa: S608
               reason=settle, **params)


_RECOVERED_BY = recovery_store.recovered_by_sql("CAST(:id AS uuid)", "CAST(:status AS text)",
                                                "CAST(:recovered_at AS timestamptz)")


# Pending rows of a closed case (claimed rows, a send in flight, are left to their executor).
_SETTLE = ("UPDATE recovery_actions SET status = 'skipped', error_class = 'skipped', error_detail = :reason,"
           " claimed_until = NULL, completed_at = now(), updated_at = now() WHERE status = 'pending'")


def settle_pending(tx: Transaction, case_id: str, reason: str) -> int:
    """A closed case owes nothing: its pending rows become ``skipped`` with the reason, at once,
    so the timeline never shows sends "pending" for a recovered case. Claimed rows (a send in
    flight) are left to their executor, which records what Whop answered."""
    return tx.execute(_SETTLE + " AND case_id = CAST(:id AS uuid)", id=case_id, reason=reason)


def merge_duplicate_case(tx: Transaction, case_id: str, into: str) -> None:
    """A row whose episode turned out to be another row's (a late event joined two episodes):
    its pending rows are settled, its ledger (what the member was sent, clicks, creator
    actions) moves to the row that stays, with its clicks and incentive, and the row goes. A
    kept duplicate would count the episode twice in KPIs, the list and the export. Its link
    token (and any it had itself taken over) becomes an alias of ``into``: links in messages
    already sent keep resolving, to the case they were about."""
    settle_pending(tx, case_id, f"merged_into:{into}")
    tx.execute(
        "WITH moved AS (UPDATE case_link_aliases SET case_id = CAST(:into AS uuid)"
        "   WHERE case_id = CAST(:id AS uuid))"
        " INSERT INTO case_link_aliases (link_token, company_id, case_id)"
        " SELECT link_token, company_id, CAST(:into AS uuid) FROM recovery_cases"
        " WHERE id = CAST(:id AS uuid) AND link_token IS NOT NULL ON CONFLICT (link_token) DO NOTHING",
        id=case_id, into=into)
    tx.execute("UPDATE recovery_actions SET case_id = CAST(:into AS uuid) WHERE case_id = CAST(:id AS uuid)",
               id=case_id, into=into)
    tx.execute(
        "WITH gone AS (DELETE FROM recovery_cases WHERE id = CAST(:id AS uuid)"
        "   RETURNING link_clicks, last_clicked_at, incentive_days, incentive_cost_minor,"
        "   last_reminder_offset)"
        " UPDATE recovery_cases p SET link_clicks = p.link_clicks + g.link_clicks,"
        " last_clicked_at = GREATEST(p.last_clicked_at, g.last_clicked_at),"
        " incentive_days = p.incentive_days + g.incentive_days,"
        " incentive_cost_minor = CASE WHEN p.incentive_cost_minor IS NULL AND g.incentive_cost_minor IS NULL"
        "   THEN NULL ELSE COALESCE(p.incentive_cost_minor, 0) + COALESCE(g.incentive_cost_minor, 0) END,"
        " last_reminder_offset = GREATEST(p.last_reminder_offset, g.last_reminder_offset),"
        " updated_at = now() FROM gone g WHERE p.id = CAST(:into AS uuid)",
        id=case_id, into=into)


def case_from_row(row: dict[str, Any]) -> Case:
    fields = {name: row[name] for name in Case.model_fields if name in row}
    return Case.model_validate(fields)


# What the tick reads of a due case: what case_from_row needs, and its reminder progress.
DUE_CASE_COLUMNS = ("id, company_id, membership_id, seq, last_reminder_offset, manage_url, "
                    + ", ".join(_CASE_COLUMNS))


def advance_cases(tx: Transaction, rows: list[tuple[str, int | None, datetime | None]]) -> None:
    """Record each case's latest owed reminder offset and next due time, ``(id, offset, next)``."""
    if not rows:
        return
    tx.execute(
        "UPDATE recovery_cases c SET last_reminder_offset = u.last, next_action_at = u.next,"
        " updated_at = now() FROM unnest(CAST(:ids AS uuid[]), CAST(:lasts AS integer[]),"
        "   CAST(:nexts AS timestamptz[])) AS u(id, last, next) WHERE c.id = u.id",
        ids=[r[0] for r in rows], lasts=[r[1] for r in rows], nexts=[r[2] for r in rows])


def mark_contaminated(tx: Transaction, case_id: str) -> None:
    """A creator nudged a holdout case by hand."""
    tx.execute("UPDATE recovery_cases SET contaminated = true, updated_at = now()"
               " WHERE id = CAST(:id AS uuid)", id=case_id)


def close_case_by_creator(tx: Transaction, case_id: str, *, close_reason: str, user_id: str,
                          now: datetime) -> None:
    """Cancel a case on a creator's decision and skip what it still owed."""
    tx.execute(
        "UPDATE recovery_cases SET status = 'cancelled', closed_at = COALESCE(closed_at, :now),"
        " close_reason = :reason, cancelled_by = :user, next_action_at = NULL, updated_at = now()"
        " WHERE id = CAST(:id AS uuid)", id=case_id, now=now, reason=close_reason, user=user_id)
    settle_pending(tx, case_id, close_reason)
