"""A claimed ledger row and everything that holds it: what the executor carries (``Claim``,
``Context``), how a run is counted (``Stats``, the ``Send_*`` metrics), and every write its lease
guards.

A claimed row carries a lease (``claimed_until``, on the database's clock) and a random lease
token; an outcome is recorded only while the row is still claimed with that token, so an
executor whose lease ran out cannot overwrite the next one's result. A crash after the claim
leaves the row claimed; the next tick re-claims it once the lease ends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from chalicelib.db import Transaction
from chalicelib.messages import VariantCopy
from chalicelib.models import Case, CreatorSettings
from chalicelib.observability import count
from chalicelib.recovery_policy import KIND_ATTACH, KIND_RETRY
from chalicelib.whop import WhopPort

LEASE = timedelta(minutes=5)
MESSAGE_KINDS = ("nudge", "reminder", "manual_nudge")


@dataclass
class Stats:
    sent: int = 0
    failed: int = 0
    retrying: int = 0
    deferred: int = 0
    skipped: int = 0
    errors: int = 0  # rows whose execution raised: released alone
    lost: int = 0  # outcomes not recorded because this executor no longer held the claim

    def add(self, other: Stats) -> None:
        for name in ("sent", "failed", "retrying", "deferred", "skipped", "errors", "lost"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Claim:
    action_id: str
    kind: str
    step: str
    channel: str | None
    key: str
    attempts: int
    case_id: str
    case: Case
    link_token: str
    settings: CreatorSettings
    token: str = ""  # the lease token: outcomes are recorded only by its holder
    owed_at: datetime | None = None  # when the row was written: the copy is rendered as of then
    copy: dict[str, str] | None = None  # the message as first attempted (pinned in the row)
    extra: dict[str, Any] = field(default_factory=dict)
    variant: VariantCopy | None = None  # the case's experiment copy, if any


@dataclass(frozen=True)
class Context:
    whop: WhopPort
    app_id: str
    public_base_url: str


# --- metrics: sends by channel and outcome --------------------------------------------------------

# One metric name per (channel, outcome), e.g. ``Send_push_sent``, rather than dimensions:
# Powertools gives every metric of a flush the same dimensions (``single_metric`` would print one
# EMF line per send), and both sets are fixed, so the names stay few and the dashboard lists them.
SEND_CHANNELS = ("push", "dm", "incentive")
SEND_OUTCOMES = ("sent", "failed", "retrying", "skipped")
# Smart retry's rows count as Send_attach_* and Send_retry_*.
METRIC_LABEL = {KIND_ATTACH: "attach", KIND_RETRY: "retry"}


def send_metric(kind: str, channel: str | None, outcome: str) -> str | None:
    """The metric an executed row's outcome counts in (None: not a send outcome, e.g. deferred)."""
    if outcome not in SEND_OUTCOMES:
        return None
    label = "incentive" if kind == "incentive" else channel if channel in SEND_CHANNELS else "other"
    label = METRIC_LABEL.get(kind, label)
    return f"Send_{label}_{outcome}"


def count_send(kind: str, channel: str | None, outcome: str) -> None:
    name = send_metric(kind, channel, outcome)
    if name is not None:
        count(name)


# --- the lease's writes ------------------------------------------------------------------------------

# Every outcome UPDATE below is guarded by the claim it answers (WHERE … claim_token = :token):
# the row must still be claimed by this executor.


def write_claims(tx: Transaction, claims: list[Claim], now: datetime) -> None:
    if not claims:
        return
    # The lease ends on the database's clock: an executor whose own clock is wrong (a day ahead,
    # say) must not hold rows for a day when it dies.
    tx.execute("UPDATE recovery_actions a SET status = 'claimed',"
               " claimed_until = clock_timestamp() + CAST(:lease AS interval),"
               " claim_token = u.token, attempts = a.attempts + 1, updated_at = now()"
               " FROM unnest(CAST(:ids AS uuid[]), CAST(:tokens AS uuid[])) AS u(id, token)"
               " WHERE a.id = u.id",
               lease=LEASE, ids=[c.action_id for c in claims], tokens=[c.token for c in claims])


def keep_pending(tx: Transaction, action_id: str, due: datetime, error_class: str | None,
                  detail: str | None, *, token: str | None = None, give_back_attempt: bool = False) -> int:
    """Back to pending until ``due``. With ``token``, only while this executor's claim holds.
    A claim released unperformed gives its attempt back. No error class keeps the previous one."""
    return tx.execute(
        "UPDATE recovery_actions SET status = 'pending', claimed_until = NULL, claim_token = NULL,"
        " due_at = :due, error_class = COALESCE(:ec, error_class), error_detail = :detail,"
        " attempts = attempts - CASE WHEN :give_back THEN 1 ELSE 0 END, updated_at = now()"
        " WHERE id = CAST(:id AS uuid) AND (CAST(:token AS uuid) IS NULL"
        "   OR (status = 'claimed' AND claim_token = CAST(:token AS uuid)))",
        due=due, ec=error_class, detail=detail, give_back=give_back_attempt, id=action_id, token=token)


def settle(tx: Transaction, action_id: str, now: datetime, status: str, error_class: str | None = None,
            detail: str | None = None, result: dict[str, Any] | None = None, *,
            token: str | None = None) -> int:
    """Final outcome. With ``token``, only while this executor's claim holds (else 0 rows)."""
    # completed_at is the injected clock: the frequency cap and incentive limit compare with it.
    return tx.execute(
        "UPDATE recovery_actions SET status = :status, error_class = :ec, error_detail = :detail,"
        " result = result || CAST(:result AS jsonb), claimed_until = NULL, claim_token = NULL,"
        " completed_at = :now, updated_at = now()"
        " WHERE id = CAST(:id AS uuid) AND (CAST(:token AS uuid) IS NULL"
        "   OR (status = 'claimed' AND claim_token = CAST(:token AS uuid)))",
        status=status, ec=error_class, detail=detail, now=now, id=action_id, token=token,
        result=json.dumps(result or {}, default=str))
