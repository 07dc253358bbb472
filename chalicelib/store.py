"""Small named queries over the tenant tables. Every function takes an open tenant Transaction:
RLS already scopes it to one company, and ``company_id`` parameters only fill the column on insert.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.db import SupportsWrite, Transaction
from chalicelib.kpis import StatusCount
from chalicelib.models import Case, CreatorSettings, QuietHours, WhopEvent
from chalicelib.recovery_store import RECOVERED_BY_VIEW, recovered_by_sql

# --- events --------------------------------------------------------------------------------------


def lock_membership(tx: Transaction, company_id: str, membership_id: str) -> None:
    """Serialise work on one membership until the transaction ends (two consumers, one fold)."""
    tx.query("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))",
             key=f"{company_id}/{membership_id}")


@dataclass(frozen=True)
class FoldStart:
    """Where a re-fold may start instead of the membership's first event: just after its last
    closed episode (closed by its events, not by a creator), whose end ``after`` the new event
    is later than. Closed episodes are final, so every event up to ``after`` is already folded
    into stored cases that cannot change: the fold resumes with ``seq_before`` cases behind it
    and the membership's ``manage_url`` as of ``after`` (chosen from ``manage_url_payloads``,
    the stored events that may have set it last)."""

    after: datetime
    seq_before: int
    manage_url_payloads: list[dict[str, Any]]


@dataclass(frozen=True)
class History:
    """What re-folding a membership needs, read in the statement that stored its new event."""

    payloads: list[dict[str, Any]]  # the stored payloads to fold (after ``start``), the new one included
    settings: CreatorSettings
    cases: list[dict[str, Any]] | None = None  # as membership_cases returns them (after ``start``)
    start: FoldStart | None = None  # None: payloads and cases are the membership's whole history
    # issue 18: the member's latest saved cards in this company, (payment method, saved at), newest
    # first: a case that opens attaches one saved shortly before its failure. None: not read.
    saved_cards: list[tuple[str, datetime]] | None = None


# The latest episode the events closed before the new event, as a point to resume the fold
# from. Its row is trusted only when every row up to it reads as the fold wrote it: closed, one
# per episode, numbered 1..n in time order, each episode starting after the previous one ended.
# That rules out a row a creator cancelled, and every row after it (the fold still sees that
# episode open, and the creator's time is not the fold's end to check the next row against), a
# row left behind when a late event joined two episodes (it overlaps its neighbour), a missing
# row, and rows from before episode identity (matched by position: with any such row the fold
# starts at the top). A late event older than that episode's end resumes from an earlier one,
# or from the top.
_FOLD_BOUNDARY = (
    " r AS (SELECT seq, first_failure_at, closed_at,"
    "   bool_and(seq = n AND status <> 'open' AND cancelled_by IS NULL AND episode_webhook_id IS NOT NULL"
    "            AND first_failure_at > COALESCE(previous_end, '-infinity'))"
    "     OVER (ORDER BY n) AS chain"
    "   FROM (SELECT *, row_number() OVER w AS n, lag(closed_at) OVER w AS previous_end"
    "         FROM recovery_cases WHERE membership_id = :membership_id"
    "         WINDOW w AS (ORDER BY first_failure_at, created_at, id)) q),"
    " b AS (SELECT closed_at AS after, seq FROM r"
    "   WHERE chain AND closed_at < :occurred_at"
    "     AND NOT EXISTS (SELECT 1 FROM recovery_cases l WHERE l.membership_id = :membership_id"
    "                     AND l.episode_webhook_id IS NULL)"
    "   ORDER BY first_failure_at DESC LIMIT 1)"
)


def insert_event(tx: Transaction, event: WhopEvent, payload: dict[str, Any]) -> History | None:
    """Store one webhook and return what re-folding its membership needs; None when this webhook
    id was stored before (a redelivery). One round trip: the statement that inserts also reads
    the membership's payloads and cases and the company's settings (it cannot see its own
    insert, so the new payload is added here). When the new event is later than the end of the
    membership's last closed episode, only what follows that end is read (see FoldStart): the
    cost of an event then does not grow with the membership's past."""
    row = tx.one(
        "WITH ins AS (INSERT INTO events (webhook_id, company_id, type, membership_id, user_id,"  # noqa: S608
        " payment_id, occurred_at, occurred_at_inferred, received_at, payload)"
        " VALUES (:webhook_id, :company_id, :type, :membership_id, :user_id, :payment_id,"
        " :occurred_at, :inferred, :received_at, CAST(:payload AS jsonb))"
        " ON CONFLICT (webhook_id) DO NOTHING RETURNING id),"
        + _FOLD_BOUNDARY +
        " SELECT EXISTS (SELECT 1 FROM ins) AS inserted,"
        " (SELECT after FROM b) AS after, (SELECT seq FROM b) AS seq_before,"
        " (SELECT COALESCE(jsonb_agg(e.payload ORDER BY e.occurred_at, e.id), '[]'::jsonb) FROM events e"
        "   WHERE e.membership_id = :membership_id AND EXISTS (SELECT 1 FROM ins)"
        "     AND e.occurred_at > COALESCE((SELECT after FROM b), '-infinity')) AS payloads,"
        # The events that may have set manage_url last before the boundary: those at the latest
        # instant any did (the fold's tie order among them is applied in Python).
        " (SELECT COALESCE(jsonb_agg(m.payload), '[]'::jsonb) FROM events m"
        "   WHERE m.membership_id = :membership_id AND EXISTS (SELECT 1 FROM ins)"
        "     AND m.payload ->> 'manage_url' IS NOT NULL"
        "     AND m.occurred_at = (SELECT max(n.occurred_at) FROM events n, b"
        "                          WHERE n.membership_id = :membership_id AND n.occurred_at <= b.after"
        "                            AND n.payload ->> 'manage_url' IS NOT NULL)) AS manage_url_payloads,"
        " (SELECT to_jsonb(s) FROM creator_settings s WHERE EXISTS (SELECT 1 FROM ins)) AS settings,"
        # issue 18: read after the per-member lock the transaction took (see processing._apply).
        " (SELECT COALESCE(jsonb_agg(jsonb_build_array(k.payload ->> 'payment_method_id', k.occurred_at)"
        "   ORDER BY k.occurred_at DESC, k.id DESC), '[]'::jsonb) FROM (SELECT payload, occurred_at, id"
        "   FROM events WHERE type = 'setup_intent.succeeded' AND user_id = :user_id"
        "   AND EXISTS (SELECT 1 FROM ins) ORDER BY occurred_at DESC, id DESC LIMIT 5) k) AS saved_cards,"
        " (SELECT COALESCE(jsonb_agg(to_jsonb(c) - 'created_at' - 'row_id' ORDER BY c.created_at, c.row_id),"
        "   '[]'::jsonb) FROM (SELECT created_at, recovery_cases.id AS row_id, " + _STORED_CASE
        + " FROM recovery_cases"
        "         WHERE membership_id = :membership_id"
        "           AND first_failure_at > COALESCE((SELECT after FROM b), '-infinity')) c"
        "   WHERE EXISTS (SELECT 1 FROM ins)) AS cases",
        webhook_id=event.webhook_id, company_id=event.company_id, type=event.type.value,
        membership_id=event.membership_id, user_id=event.user_id, payment_id=event.payment_id,
        occurred_at=event.occurred_at, inferred=event.occurred_at_inferred,
        received_at=event.received_at, payload=json.dumps(payload))
    if row is None or not row["inserted"]:
        return None
    start = None
    if row["after"] is not None:
        start = FoldStart(after=row["after"], seq_before=int(row["seq_before"]),
                          manage_url_payloads=row["manage_url_payloads"])
    saved = [(str(m), datetime.fromisoformat(at)) for m, at in row["saved_cards"] if m]
    return History(payloads=[*row["payloads"], payload], settings=settings_from_row(row["settings"]),
                   cases=[_case_from_json(c) for c in row["cases"]], start=start, saved_cards=saved)


_CASE_TIMES = ("first_failure_at", "last_failure_at", "recovered_at", "closed_at", "next_action_at")


def _case_from_json(value: dict[str, Any]) -> dict[str, Any]:
    # to_jsonb writes times as ISO 8601 text; everything else already has its Python type.
    for name in _CASE_TIMES:
        if value[name] is not None:
            value[name] = datetime.fromisoformat(value[name])
    return value


def insert_poison(tx: Transaction, webhook_id: str, reason: str, error_class: str,
                  received_at: datetime | None) -> None:
    """Keep the id of a verified webhook that cannot be applied (no payload, no tenant data).
    No conflict target: naming one would need SELECT, and the runtime role may only INSERT here."""
    tx.execute("INSERT INTO poison_events (webhook_id, reason, error_class, received_at)"
               " VALUES (:w, :reason, :ec, :received) ON CONFLICT DO NOTHING",
               w=webhook_id, reason=reason[:300], ec=error_class[:100], received=received_at)


def membership_event_payloads(tx: Transaction, membership_id: str) -> list[dict[str, Any]]:
    rows = tx.query("SELECT payload FROM events WHERE membership_id = :m ORDER BY occurred_at, id",
                    m=membership_id)
    return [r["payload"] for r in rows]


# --- cases ---------------------------------------------------------------------------------------

_CASE_COLUMNS = (
    "user_id", "status", "first_failure_at", "last_failure_at", "failure_count", "payment_id",
    "amount_minor", "currency", "decline_code", "failure_reason", "recovery_url", "recovered_at",
    "recovered_amount_minor", "recovered_currency", "closed_at", "close_reason", "decline_class",
)


# What the consumer reads of a stored case: its identity, what a creator decided, and every
# column a fold writes (to tell an unchanged case from a changed one).
_STORED_CASE = ("id::text AS id, seq, episode_webhook_id, cancelled_by, last_reminder_offset, manage_url,"
                " next_action_at, " + ", ".join(_CASE_COLUMNS))


def membership_cases(tx: Transaction, membership_id: str) -> list[dict[str, Any]]:
    """A membership's stored cases, oldest row first."""
    return tx.query("SELECT " + _STORED_CASE + " FROM recovery_cases"  # noqa: S608 - constants
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


def insert_case(tx: Transaction, case: Case, next_action_at: datetime | None,
                link_token: str, last_reminder_offset: int | None = None) -> dict[str, Any]:
    values = {c: getattr(case, c) for c in _CASE_COLUMNS}
    values["status"] = case.status.value
    # Column names come from the _CASE_COLUMNS constant; every value is a bound parameter.
    row = tx.one(
        "INSERT INTO recovery_cases (company_id, membership_id, seq, episode_webhook_id,"  # noqa: S608
        " next_action_at, last_reminder_offset, link_token, manage_url, " + ", ".join(_CASE_COLUMNS)
        + ") VALUES (:company_id, :membership_id, :seq, :episode, :next_action_at, :last_offset,"
        " :link_token, :manage_url, "
        + ", ".join(f":{c}" for c in _CASE_COLUMNS) + ") RETURNING *",
        company_id=case.company_id, membership_id=case.membership_id, seq=case.seq,
        episode=case.failure_ids[0] if case.failure_ids else None, last_offset=last_reminder_offset,
        next_action_at=next_action_at, link_token=link_token, manage_url=case.manage_url, **values)
    assert row is not None
    return row


def update_case(tx: Transaction, case_id: str, case: Case, next_action_at: datetime | None,
                episode: str | None = None, settle: str | None = None) -> None:
    """Rewrite a stored case from its episode's fold (``episode`` fills a legacy row's identity);
    with ``settle``, its pending rows are skipped with that reason in the same statement."""
    assignments = ", ".join(f"{c} = :{c}" for c in _CASE_COLUMNS)  # constant names, bound values
    update = (
        "UPDATE recovery_cases SET " + assignments  # noqa: S608
        # issue 18: who gets the credit, re-read whenever a recovered case is written
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


_RECOVERED_BY = recovered_by_sql("CAST(:id AS uuid)", "CAST(:status AS text)",
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
    already sent keep resolving, to the case they were about (issue 20)."""
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


# --- ledger --------------------------------------------------------------------------------------


def add_action(tx: Transaction, *, case_id: str, company_id: str, kind: str, step: str,
               idempotency_key: str, channel: str | None = None, status: str = "pending",
               due_at: datetime | None = None, actor: str = "system",
               result: dict[str, Any] | None = None) -> bool:
    """Record an owed effect (or a done action); False if its key exists (it is already owed)."""
    row = tx.one(
        "INSERT INTO recovery_actions (case_id, company_id, kind, step, channel, status,"
        " idempotency_key, due_at, owed_at, actor, result, completed_at)"
        " VALUES (CAST(:case_id AS uuid), :company_id, :kind, :step, :channel, :status, :key,"
        " COALESCE(:due_at, now()), COALESCE(:due_at, now()), :actor, CAST(:result AS jsonb),"
        " CASE WHEN :status IN ('done', 'skipped') THEN now() END)"
        " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        case_id=case_id, company_id=company_id, kind=kind, step=step, channel=channel,
        status=status, key=idempotency_key, due_at=due_at, actor=actor,
        result=json.dumps(result or {}))
    return row is not None


def add_pending_actions(tx: Transaction, company_id: str,
                        rows: list[tuple[str, str, str, str | None, datetime, str]]) -> int:
    """Owe many effects at once, ``(case_id, kind, step, channel, due_at, key)`` each, as pending
    ledger rows in one statement; return how many were new (a known key is already owed)."""
    if not rows:
        return 0
    return tx.execute(
        "INSERT INTO recovery_actions (case_id, company_id, kind, step, channel, status, idempotency_key,"
        " due_at, owed_at) SELECT e.case_id, :company_id, e.kind, e.step, e.channel, 'pending', e.key,"
        " e.due_at, e.due_at"
        " FROM unnest(CAST(:case_ids AS uuid[]), CAST(:kinds AS text[]), CAST(:steps AS text[]),"
        "   CAST(:channels AS text[]), CAST(:dues AS timestamptz[]), CAST(:keys AS text[]))"
        "   AS e(case_id, kind, step, channel, due_at, key)"
        " ON CONFLICT (idempotency_key) DO NOTHING",
        company_id=company_id, case_ids=[r[0] for r in rows], kinds=[r[1] for r in rows],
        steps=[r[2] for r in rows], channels=[r[3] for r in rows], dues=[r[4] for r in rows],
        keys=[r[5] for r in rows])


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


# --- settings ------------------------------------------------------------------------------------


def get_settings(tx: Transaction) -> CreatorSettings:
    return settings_from_row(tx.one("SELECT * FROM creator_settings"))


def _hh_mm(value: Any) -> str:
    # A time column (time) or the same column inside to_jsonb(...) ("HH:MM:SS").
    return value.strftime("%H:%M") if hasattr(value, "strftime") else str(value)[:5]


def settings_from_row(row: dict[str, Any] | None) -> CreatorSettings:
    """A company's settings from its creator_settings row (or that row as JSON); defaults if none."""
    if row is None:
        return CreatorSettings()
    quiet = None
    if row["quiet_hours_start"] is not None:
        quiet = QuietHours(start=_hh_mm(row["quiet_hours_start"]), end=_hh_mm(row["quiet_hours_end"]))
    return CreatorSettings(
        enable_push=row["enable_push"], enable_dm=row["enable_dm"],
        incentive_days=row["incentive_days"],
        reminder_offsets_days=tuple(row["reminder_offsets_days"]), timezone=row["timezone"],
        quiet_hours=quiet, push_experience_id=row["push_experience_id"],
        holdout_percent=row["holdout_percent"], smart_retry=row.get("smart_retry", True),
        updated_at=row["updated_at"])


def upsert_settings(tx: Transaction, company_id: str, settings: CreatorSettings) -> CreatorSettings:
    """Store a company's settings (insert or replace); return them as stored."""
    quiet = settings.quiet_hours
    tx.execute(
        "INSERT INTO creator_settings (company_id, enable_push, enable_dm, incentive_days,"
        " reminder_offsets_days, timezone, quiet_hours_start, quiet_hours_end, push_experience_id,"
        " holdout_percent, smart_retry)"
        " VALUES (:company_id, :enable_push, :enable_dm, :incentive_days, CAST(:offsets AS integer[]),"
        " :timezone, CAST(:quiet_start AS time), CAST(:quiet_end AS time), :push_experience_id,"
        " :holdout_percent, :smart_retry)"
        " ON CONFLICT (company_id) DO UPDATE SET enable_push = EXCLUDED.enable_push,"
        " enable_dm = EXCLUDED.enable_dm, incentive_days = EXCLUDED.incentive_days,"
        " reminder_offsets_days = EXCLUDED.reminder_offsets_days, timezone = EXCLUDED.timezone,"
        " quiet_hours_start = EXCLUDED.quiet_hours_start, quiet_hours_end = EXCLUDED.quiet_hours_end,"
        " push_experience_id = EXCLUDED.push_experience_id,"
        " holdout_percent = EXCLUDED.holdout_percent, smart_retry = EXCLUDED.smart_retry, updated_at = now()",
        company_id=company_id, enable_push=settings.enable_push, enable_dm=settings.enable_dm,
        incentive_days=settings.incentive_days, offsets=list(settings.reminder_offsets_days),
        timezone=settings.timezone, quiet_start=quiet.start if quiet else None,
        quiet_end=quiet.end if quiet else None, push_experience_id=settings.push_experience_id,
        holdout_percent=settings.holdout_percent, smart_retry=settings.smart_retry)
    return get_settings(tx)


# --- creator API: case views --------------------------------------------------------------------

# What the creator API shows of a case: no link token, no member-specific URLs.
CASE_VIEW_COLUMNS = (
    "id::text AS id, membership_id, user_id, status, first_failure_at, last_failure_at, failure_count,"
    " amount_minor, currency, decline_code, failure_reason, recovered_at, recovered_amount_minor,"
    " recovered_currency, closed_at, close_reason, cancelled_by, incentive_days, link_clicks,"
    " last_clicked_at, next_action_at, created_at, updated_at,"
    " holdout, experiment_id::text AS experiment_id, variant, decline_class,"
    " contaminated, opened_at, holdout_percent_at_open,"  # issue 17
    # issue 18 (smart retry): what Rebound did to the charge, and the recovery's credit
    " retried_at, retry_reason, " + RECOVERED_BY_VIEW + " AS recovered_by"
)

# Optional filters as bound parameters (NULL = no filter); the keyset is (first_failure_at, id).
# Statements are prepared once and may run on a generic plan (no parameter values known), so
# the window start and the keyset are written as bounds that always apply (-infinity/infinity
# when absent): an index range scan serves every page, never a scan from the newest case.
_CASE_FILTERS = (
    " WHERE (CAST(:status AS text) IS NULL OR status = :status)"
    " AND (CAST(:decline_class AS text) IS NULL OR decline_class = :decline_class)"
    " AND first_failure_at >= COALESCE(CAST(:since AS timestamptz), '-infinity')"
    " AND (CAST(:since AS timestamptz) IS NULL OR first_failure_at <= :now)"
    " AND (CAST(:q AS text) IS NULL OR membership_id LIKE :q OR user_id LIKE :q)"
    " AND (first_failure_at, id) < (COALESCE(CAST(:after_at AS timestamptz), 'infinity'),"
    "      COALESCE(CAST(:after_id AS uuid), 'ffffffff-ffff-ffff-ffff-ffffffffffff'))"
)


def _filter_params(*, now: datetime, status: str | None, decline_class: str | None,
                   since: datetime | None, q: str | None, after: tuple[datetime, str] | None,
                   limit: int) -> dict[str, Any]:
    """The bound values of _CASE_FILTERS (the list and the export filter alike, so an export holds
    exactly the cases the list shows)."""
    return {"now": now, "status": status, "decline_class": decline_class, "since": since,
            "q": like_prefix(q) if q else None, "after_at": after[0] if after else None,
            "after_id": after[1] if after else None, "limit": limit}


def like_prefix(text: str) -> str:
    """A LIKE pattern matching ``text`` exactly or as a prefix (wildcards in it escaped)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


# Messages that reached Whop (the export's nudges_sent counts the same rows): every automatic
# nudge and reminder and every manual nudge, each channel its own message.
_SENT_MESSAGE = "a.kind IN ('nudge', 'reminder', 'manual_nudge') AND a.status = 'sent'"
# A creator's own ledger rows (actor is their user id), whatever came of them.
_CREATOR_ROW = "a.actor NOT IN ('system', 'member')"


def list_cases(tx: Transaction, *, now: datetime, status: str | None = None,
               decline_class: str | None = None, since: datetime | None = None, q: str | None = None,
               after: tuple[datetime, str] | None = None, limit: int = 25) -> list[dict[str, Any]]:
    """Cases newest first (first_failure_at, then id, descending), after the keyset ``after``,
    each with ``nudges_sent`` and ``last_action_at``.

    One statement per page: the lateral aggregate runs in a nested loop under the LIMIT, so it
    reads the ledger rows (recovery_actions_by_case) of the page's cases only."""
    return tx.query(
        "SELECT " + CASE_VIEW_COLUMNS + ", s.nudges_sent, s.last_action_at"  # noqa: S608 - constants
        " FROM recovery_cases CROSS JOIN LATERAL ("
        "  SELECT count(*) FILTER (WHERE " + _SENT_MESSAGE + ") AS nudges_sent,"
        "   max(COALESCE(a.completed_at, a.created_at)) AS last_action_at"
        "  FROM recovery_actions a WHERE a.case_id = recovery_cases.id"
        "   AND ((" + _SENT_MESSAGE + ") OR " + _CREATOR_ROW + ")) s"
        + _CASE_FILTERS + " ORDER BY first_failure_at DESC, id DESC LIMIT :limit",
        **_filter_params(now=now, status=status, decline_class=decline_class, since=since, q=q,
                         after=after, limit=limit))


# The export's rows (its contract columns by name); keyset pages of it are read below.
EXPORT_SELECT = (
    "SELECT id::text AS case_id, membership_id, user_id, status, first_failure_at, last_failure_at,"  # noqa: S608
    " recovered_at, amount_minor, COALESCE(currency, recovered_currency) AS currency,"
    " recovered_amount_minor, failure_count, decline_code, failure_reason,"
    " (SELECT count(*) FROM recovery_actions a WHERE a.case_id = recovery_cases.id"
    "   AND " + _SENT_MESSAGE + ") AS nudges_sent,"
    " incentive_days, holdout, experiment_id::text AS experiment_id, variant, decline_class,"
    " link_clicks AS clicks,"
    " opened_at, holdout_percent_at_open, contaminated, incentive_cost_minor,"  # issue 17
    " retried_at, " + RECOVERED_BY_VIEW + " AS recovered_by"  # issue 18
    " FROM recovery_cases"
)


# Export columns whose values can never need quoting or neutralising (uuids, enums, lower-case
# currency codes, counts and amounts that are never negative, a boolean): written as plain text.
_CSV_PLAIN = frozenset({"case_id", "status", "currency", "amount_minor", "recovered_amount_minor",
                        "failure_count", "nudges_sent", "incentive_days", "holdout", "experiment_id",
                        "holdout_percent_at_open", "contaminated", "incentive_cost_minor",
                        "recovered_by"})


# --- the export through COPY ----------------------------------------------------------------------
#
# COPY … TO STDOUT (FORMAT csv) formats, quotes and streams the rows natively; the cells only
# need the export's own rules applied first (ISO times, formula neutralisation, '' written as
# an empty cell, not as COPY's quoted ""). COPY takes no bind parameters: the keyset, the page
# size and each filter reach it as transaction-local settings (set_config(…, true), bound like
# any parameter) that its constant SQL reads with current_setting. No value is ever formatted
# into SQL. Only the filters actually given appear in the WHERE clause: an always-present
# "NULL means no filter" test defeats the planner's estimates (it then sorts the whole table).

EXPORT_SETTING_PREFIX = "rebound.export_"

# One entry per export filter: its SQL over recovery_cases, reading its value (text) from
# ``rebound.export_<name>``. A filter the route passes must be listed here (and in
# _CASE_FILTERS for the parameterised queries): an unknown one is refused, never ignored.
EXPORT_COPY_FILTERS: dict[str, str] = {
    "status": "status = current_setting('rebound.export_status')",
    "decline_class": "decline_class = current_setting('rebound.export_decline_class')",
    "since": "first_failure_at >= CAST(current_setting('rebound.export_since') AS timestamptz)"
             " AND first_failure_at <= CAST(current_setting('rebound.export_now') AS timestamptz)",
    # q is the search text, as the list takes it: a membership or user id or a prefix of one.
    "q": "(membership_id LIKE current_setting('rebound.export_q')"
         " OR user_id LIKE current_setting('rebound.export_q'))",
}
_NO_CURSOR = ("infinity", "ffffffff-ffff-ffff-ffff-ffffffffffff")
# ascii() of the first character: = + - @ tab CR make a spreadsheet run the cell as a formula.
_FORMULA_CODES = "(9, 13, 43, 45, 61, 64)"
# A separator (of any spreadsheet's choosing), then maybe quotes, then a formula character: split
# on that separator, the next cell would start a formula. A quote goes after the separator
# (issue 20; migration 0012's rebound_csv_cell says why a leading quote alone cannot help).
_SEPARATED_FORMULA = r"""'[,;|\t]"*[-=+@\t\r]'"""
_SEPARATED_FORMULA_SPLIT = r"""'([,;|\t])(?="*[-=+@\t\r])'"""
# Text columns whose values Rebound itself chose or validated on input (a decline class, an
# experiment variant name: letters, digits, space, _ . -): they never hold a separator.
_CSV_NO_SEPARATORS = frozenset({"decline_class", "variant"})


# Plain columns whose type COPY writes exactly as the contract does, and never empty (so never
# COPY's quoted ""): no expression at all. A boolean is not one (COPY writes t/f).
_COPY_NATIVE = _CSV_PLAIN - {"holdout", "contaminated"}


def _copy_expression(column: str) -> str:
    # The same rules as _csv_expression, minus the quoting (COPY's CSV writer quotes exactly
    # where Python's csv module and rebound_csv_cell do: a comma, a quote, CR or LF). NULL is
    # COPY's bare empty cell; an empty string must become NULL too (COPY would write "").
    if column.endswith("_at"):  # rebound_csv_time's format; NULL stays NULL
        return f"to_char(x.{column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    if column in _COPY_NATIVE:
        return f"x.{column}"
    value = f"x.{column}::text"
    if column in _CSV_PLAIN:
        return f"NULLIF({value}, '')"
    split = value
    if column not in _CSV_NO_SEPARATORS:
        # strpos first: most cells hold no separator, and four strpos cost less than one regex.
        split = (f"CASE WHEN (strpos({value}, ',') > 0 OR strpos({value}, ';') > 0"
                 f" OR strpos({value}, '|') > 0 OR strpos({value}, E'\\t') > 0)"
                 f" AND {value} ~ {_SEPARATED_FORMULA} THEN"
                 rf" regexp_replace({value}, {_SEPARATED_FORMULA_SPLIT}, '\1''', 'g') ELSE {value} END")
    return f"CASE WHEN ascii({value}) IN {_FORMULA_CODES} THEN '''' || {split} ELSE NULLIF({split}, '') END"


def export_copy_sql(columns: tuple[str, ...], filters: tuple[str, ...]) -> str:
    """The COPY statement of one export page with the given filters (constant text only)."""
    where = [EXPORT_COPY_FILTERS[name] for name in filters]
    where.append("(first_failure_at, id) < (CAST(current_setting('rebound.export_after_at') AS timestamptz),"
                 " CAST(current_setting('rebound.export_after_id') AS uuid))")
    return (
        "COPY (SELECT " + ", ".join(_copy_expression(c) for c in columns)  # noqa: S608 - constants
        + " FROM (" + EXPORT_SELECT + " WHERE " + " AND ".join(where)
        + " ORDER BY first_failure_at DESC, id DESC"
        " LIMIT CAST(current_setting('rebound.export_limit') AS integer)) x) TO STDOUT (FORMAT csv)")


def _setting_text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()  # exact to the microsecond, read back as timestamptz
    return str(value)


def crlf_rows(data: bytes) -> tuple[bytes, int, int]:
    """COPY's CSV with CRLF row ends (the contract's, as Python's csv writer used): the data, its
    number of rows and where its last row starts. A row ends at an LF outside quotes; COPY
    doubles every quote inside a quoted cell, so the text between two quote characters is
    alternately outside and inside a quoted cell (a doubled quote leaves an empty "outside"
    stretch, which holds no LF)."""
    if not data:
        return data, 0, 0
    parts = data.split(b'"')
    parts[0::2] = [p.replace(b"\n", b"\r\n") for p in parts[0::2]]
    out = b'"'.join(parts)
    rows = len(out) - len(data)  # one CR added per row end
    end = len(out)
    last = len(parts) - 1  # COPY's output holds an even number of quotes: the last part is outside
    for i in range(last, -1, -1):
        part = parts[i]
        start = end - len(part)
        if i % 2 == 0:
            at = part.rfind(b"\n", 0, len(part) - 1 if i == last else len(part))
            if at >= 0:
                return out, rows, start + at + 1
        end = start - 1
    return out, rows, 0


def copy_export_rows(tx: Transaction, columns: tuple[str, ...], sink: SupportsWrite, *, now: datetime,
                     after: tuple[datetime, str] | None = None, limit: int = 1000,
                     **filters: Any) -> int:
    """Stream up to ``limit`` export rows after the keyset ``after`` into ``sink``, each as COPY's
    CSV with an LF row end (see crlf_rows); return how many there were. ``filters`` are the
    export's filters by name (None: not filtered), each listed in EXPORT_COPY_FILTERS."""
    given = {name: value for name, value in filters.items() if value is not None}
    unknown = set(given) - set(EXPORT_COPY_FILTERS)
    if unknown:
        raise ValueError(f"export filters without a COPY form: {', '.join(sorted(unknown))}")
    if "q" in given:
        given["q"] = like_prefix(given["q"])  # as _filter_params does for the list
    settings = {"now": now, **given, "limit": limit,
                "after_at": after[0] if after else _NO_CURSOR[0],
                "after_id": after[1] if after else _NO_CURSOR[1]}
    # One round trip for every setting: parallel arrays (a fixed statement text), set inside a
    # function: set_config in a statement's own text pins an RDS Proxy session (migration 0014).
    tx.query("SELECT rebound_set_local(CAST(:names AS text[]), CAST(:values AS text[]))",
             names=[EXPORT_SETTING_PREFIX + n for n in settings],
             values=[_setting_text(v) for v in settings.values()])
    return tx.copy_out(export_copy_sql(columns, tuple(sorted(given))), sink)


def export_row_keyset(columns: tuple[str, ...], line: str) -> tuple[datetime, str]:
    """The keyset (first_failure_at, case_id) of one finished export row, read back from it."""
    cells = next(csv.reader(io.StringIO(line, newline="")))
    return datetime.fromisoformat(cells[columns.index("first_failure_at")]), cells[columns.index("case_id")]


def case_view(tx: Transaction, case_id: str, *, lock: bool = False) -> dict[str, Any] | None:
    """One case as the creator API shows it; ``lock`` holds it until the transaction ends."""
    return tx.one("SELECT " + CASE_VIEW_COLUMNS + " FROM recovery_cases WHERE id = CAST(:id AS uuid)"  # noqa: S608
                  + (" FOR UPDATE" if lock else ""), id=case_id)


def case_events(tx: Transaction, membership_id: str, start: datetime, end: datetime,
                limit: int = 500) -> list[dict[str, Any]]:
    """The membership's stored events dated within [start, end], oldest first."""
    return tx.query(
        "SELECT webhook_id, type, occurred_at, payload FROM events WHERE membership_id = :m"
        " AND occurred_at >= :start AND occurred_at <= :end ORDER BY occurred_at, id LIMIT :limit",
        m=membership_id, start=start, end=end, limit=limit)


def case_actions(tx: Transaction, case_id: str, limit: int = 500) -> list[dict[str, Any]]:
    """A case's ledger rows for its timeline, oldest first: the newest ``limit`` rows, plus every
    row a creator made (actor not system/member) however old, so member clicks or system rows
    can never push a creator's own action out of the timeline (issue 8)."""
    columns = ("id::text AS id, kind, step, channel, status, actor, attempts, error_class, error_detail,"
               " created_at, completed_at,"
               # issue 18: Whop's answer to an attach or a retry (statuses and Whop's own text only)
               " result ->> 'status' AS whop_status, result ->> 'failure_message' AS whop_failure,"
               " result ->> 'whop_reason' AS whop_reason, result ->> 'permission' AS permission")
    return tx.query(
        "SELECT * FROM ("  # noqa: S608 - constant column list
        " (SELECT " + columns + " FROM recovery_actions WHERE case_id = CAST(:id AS uuid)"
        "  ORDER BY created_at DESC, id DESC LIMIT :limit)"
        " UNION"
        " (SELECT " + columns + " FROM recovery_actions WHERE case_id = CAST(:id AS uuid)"
        "  AND actor NOT IN ('system', 'member'))"
        ") AS timeline ORDER BY created_at, id", id=case_id, limit=limit)


def actions_by_keys(tx: Transaction, keys: list[str]) -> list[dict[str, Any]]:
    return tx.query(
        "SELECT id::text AS id, kind, step, channel, status, error_detail FROM recovery_actions"
        " WHERE idempotency_key = ANY(CAST(:keys AS text[])) ORDER BY channel", keys=keys)


def manual_nudge_wait_s(tx: Transaction, case_id: str, cooldown: timedelta) -> int:
    """Seconds until the case's manual-nudge cooldown ends (0: a nudge may go now). DB time."""
    wait = tx.scalar(
        "SELECT ceil(extract(epoch FROM max(created_at) + :cooldown - now())) FROM recovery_actions"
        " WHERE case_id = CAST(:id AS uuid) AND kind = 'manual_nudge'", id=case_id, cooldown=cooldown)
    return max(0, int(wait)) if wait is not None else 0


def mark_contaminated(tx: Transaction, case_id: str) -> None:
    """A creator nudged a holdout case by hand (issue 17)."""
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


def kpi_counts(tx: Transaction, *, now: datetime, window: timedelta) -> tuple[list[StatusCount],
                                                                              list[StatusCount]]:
    """Case counts per status and currency for [now - window, now] and the window before it."""
    rows = tx.query(
        "SELECT first_failure_at >= :mid AS current, status,"
        " COALESCE(currency, recovered_currency) AS currency, count(*) AS cases,"
        " COALESCE(sum(recovered_amount_minor) FILTER (WHERE status = 'recovered'), 0) AS recovered"
        " FROM recovery_cases WHERE first_failure_at >= :start AND first_failure_at <= :now"
        " GROUP BY 1, 2, 3", mid=now - window, start=now - 2 * window, now=now)
    current: list[StatusCount] = []
    previous: list[StatusCount] = []
    for row in rows:
        counted = StatusCount(status=row["status"], currency=row["currency"], cases=int(row["cases"]),
                              recovered_minor=int(row["recovered"]))
        (current if row["current"] else previous).append(counted)
    return current, previous


def lock_settings(tx: Transaction, company_id: str) -> None:
    """Serialise read-modify-write of a company's settings until the transaction ends."""
    tx.query("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))", key=f"{company_id}/settings")
