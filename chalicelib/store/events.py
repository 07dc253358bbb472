"""Storing webhooks (tables ``events``, ``poison_events``) and reading what re-folding a
membership needs.

Invariants: a webhook id is stored once (``ON CONFLICT (webhook_id) DO NOTHING``: a redelivery
returns None and changes nothing); stored payloads are the minimal, PII-free ones
(``webhook_text.minimal_payload``); ``poison_events`` keeps ids and reasons only, never a payload.
The statement that stores an event also reads the membership's payloads, cases and the
company's settings (one round trip per webhook), from the last closed episode on (FoldStart).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chalicelib.db import Transaction
from chalicelib.models import CreatorSettings, WhopEvent
from chalicelib.store import cases as case_store
from chalicelib.store import settings as settings_store


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
    # The member's latest saved cards in this company, (payment method, saved at), newest
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
        # Saved cards: read after the per-member lock the transaction took (see processing._apply).
        " (SELECT COALESCE(jsonb_agg(jsonb_build_array(k.payload ->> 'payment_method_id', k.occurred_at)"
        "   ORDER BY k.occurred_at DESC, k.id DESC), '[]'::jsonb) FROM (SELECT payload, occurred_at, id"
        "   FROM events WHERE type = 'setup_intent.succeeded' AND user_id = :user_id"
        "   AND EXISTS (SELECT 1 FROM ins) ORDER BY occurred_at DESC, id DESC LIMIT 5) k) AS saved_cards,"
        " (SELECT COALESCE(jsonb_agg(to_jsonb(c) - 'created_at' - 'row_id' ORDER BY c.created_at, c.row_id),"
        "   '[]'::jsonb) FROM (SELECT created_at, recovery_cases.id AS row_id, " + case_store.STORED_CASE
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
    return History(payloads=[*row["payloads"], payload],
                   settings=settings_store.settings_from_row(row["settings"]),
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
