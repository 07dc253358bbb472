"""Consuming one queued webhook: store it, re-fold its membership's case, record what is owed.

All of it happens in ONE tenant transaction, under a per-membership lock:
1. insert the event (unique webhook id: a redelivery changes nothing and owes nothing);
2. fold every stored event of the membership into its cases (order and duplicates never matter);
3. write the cases, and the effects a newly opened case owes as pending ledger rows (outbox).
Effects are executed after commit by the effects executor; a crash between commit and effect
leaves pending rows that the next tick picks up, and their idempotency keys stop doubles.

A stored case is matched to its episode by identity (the failures it contains, see
``cases.fold``), never by position: a late event that splits or re-numbers episodes updates
rows in place, and an episode is opened (and messaged) once. A case that closes settles its
still-pending rows as ``skipped`` in the same transaction.

What can never be applied — an "unusable" marker from the route, an event that fails validation
or a constraint — is kept as a poison record (webhook id, reason; no payload) and acknowledged:
retrying it could only fail again and bury it in the DLQ. Anything else (the database is down,
a deadlock) raises, so SQS redelivers the record.
"""

from __future__ import annotations

import secrets
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from pydantic import ValidationError

from chalicelib import erasure, measurement, models, recovery, replan
from chalicelib.budgets import SHARED_PROFILE, worst_case_call_s
from chalicelib.cases import Resume, fold, order_key
from chalicelib.clock import Clock, ClockSkew, checked_now, system_clock
from chalicelib.db import ConstraintViolation, Transaction
from chalicelib.db_pool import Database
from chalicelib.effects import default_context, execute_owed
from chalicelib.models import Case, CaseStatus, CreatorSettings, WhopEvent, event_time_problem
from chalicelib.observability import count, logger
from chalicelib.queue import QueuedWebhook, decode_message
from chalicelib.reminders import covered_offset, initial_effects, next_action_at
from chalicelib.store import cases as case_store
from chalicelib.store import events as event_store
from chalicelib.store import settings as settings_store
from chalicelib.tenancy import service_transaction, tenant_transaction
from chalicelib.webhook_text import event_from_payload, minimal_payload
from chalicelib.webhooks import OUT_OF_RANGE, MalformedWebhook, normalise


@dataclass
class Outcome:
    status: str  # "applied" | "duplicate" | "ignored" | "poisoned"
    company_id: str | None = None
    opened_case_ids: list[str] = field(default_factory=list)
    reopened_case_ids: list[str] = field(default_factory=list)  # opened again, owed a T+0 anew
    owed_actions: int = 0
    recovered: int = 0  # cases this event moved to recovered (CasesRecovered)
    reason: str | None = None
    owed_case_ids: list[str] = field(default_factory=list)  # cases a saved card owes an attach


class Unusable(Exception):
    """A verified webhook that can never be applied; the message says why (never a value)."""


def new_link_token() -> str:
    # 32 random bytes, URL-safe: unguessable, and carries nothing about the member.
    return secrets.token_urlsafe(32)


def _event(msg: QueuedWebhook) -> WhopEvent | None:
    if msg.unusable is not None:
        raise Unusable(msg.unusable)
    try:
        if msg.event is None:
            return normalise(msg.body or b"", msg.webhook_id, msg.received_at)  # a pre-v2 message
        event = event_from_payload(msg.event)
        if event_time_problem(event.occurred_at, event.received_at):  # queued before the route checked
            raise MalformedWebhook("occurred_at", OUT_OF_RANGE)
        return event
    except MalformedWebhook as exc:
        raise Unusable(str(exc)) from None
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors(include_input=False)})
        raise Unusable(f"invalid event: {', '.join(fields)}") from None


def process_webhook(msg: QueuedWebhook, now: datetime, db: Database | None = None) -> Outcome:
    try:
        event = _event(msg)
        if event is None:
            return Outcome(status="ignored")
        if event.type is models.EventType.SETUP_INTENT_SUCCEEDED:
            # A member's saved card, not a membership's event
            saved = recovery.apply_card_saved(event, now, db)
            return Outcome(status=saved.status, company_id=event.company_id,
                           owed_case_ids=saved.owed_case_ids)
        if event.membership_id is None:
            raise Unusable("malformed webhook: membership_id missing or invalid")
        return _apply(event, now, db)
    except Unusable as exc:
        return _poison(msg, str(exc), "Unusable", db)
    except ConstraintViolation as exc:
        # The data itself breaks a rule of the schema: every retry would fail the same way.
        return _poison(msg, f"constraint {exc.sqlstate}", "ConstraintViolation", db)


def _apply(event: WhopEvent, now: datetime, db: Database | None) -> Outcome:
    assert event.membership_id is not None
    # Tenant and per-membership lock in one round trip; the insert reads the history back. A
    # failure also takes its member's lock, which a saved card takes too: whichever
    # commits second sees the other, so a card saved as the failure arrives is never missed.
    locks: tuple[str, ...] = (f"{event.company_id}/{event.membership_id}",)
    if event.is_failure and event.user_id:
        locks += (recovery.member_lock(event.company_id, event.user_id),)
    with tenant_transaction(event.company_id, db, lock=locks) as tx:
        history = event_store.insert_event(tx, event, minimal_payload(event))
        if not history:
            if erasure.is_erased(tx):  # the insert trigger dropped it (migration 0014)
                return Outcome(status="ignored", company_id=event.company_id, reason="company_erased")
            return Outcome(status="duplicate", company_id=event.company_id)
        done = refold_membership(tx, event.company_id, event.membership_id, now, history)
    return Outcome(status="applied", company_id=event.company_id, opened_case_ids=done.opened,
                   reopened_case_ids=done.reopened, owed_actions=done.owed, recovered=done.recovered)


def _poison(msg: QueuedWebhook, reason: str, error_class: str, db: Database | None) -> Outcome:
    with service_transaction(db) as tx:
        event_store.insert_poison(tx, msg.webhook_id, reason, error_class, msg.received_at)
    logger.warning("webhook kept as poison record", extra={"webhook_id": msg.webhook_id,
                                                           "reason": reason, "error_class": error_class})
    return Outcome(status="poisoned", reason=reason)


# Validated events of recently folded payloads, by webhook id: a membership with a long history
# re-folds the same stored payloads on every new event, and validating them was most of a
# re-fold's own time. A hit needs an equal payload, so a purged or changed one is validated anew.
_EVENT_CACHE_SIZE = 4096
_event_cache: OrderedDict[str, tuple[dict[str, Any], WhopEvent]] = OrderedDict()


def _cached_event(payload: dict[str, Any]) -> WhopEvent:
    key = payload.get("webhook_id")
    if isinstance(key, str):
        hit = _event_cache.get(key)
        if hit is not None and hit[0] == payload:
            _event_cache.move_to_end(key)
            return hit[1]
    event = event_from_payload(payload)
    if isinstance(key, str):
        _event_cache[key] = (payload, event)
        if len(_event_cache) > _EVENT_CACHE_SIZE:
            _event_cache.popitem(last=False)
    return event


def _stored_events(payloads: list[dict[str, Any]]) -> list[WhopEvent]:
    events = []
    for payload in payloads:
        try:
            events.append(_cached_event(payload))
        except ValidationError:
            # A payload purged by retention (or from a future version) cannot fold; the episodes
            # it belonged to keep their stored rows (unmatched rows are never touched).
            continue
    return events


@dataclass
class Refolded:
    """What a re-fold wrote: the cases it opened, the rows they owe, and how many cases it
    moved to recovered (for metrics counted after commit)."""

    opened: list[str] = field(default_factory=list)
    owed: int = 0
    recovered: int = 0
    reopened: list[str] = field(default_factory=list)  # closed cases a late event opened again, owed anew


def refold_membership(tx: Transaction, company_id: str, membership_id: str, now: datetime,
                      history: event_store.History | None = None) -> Refolded:
    """Recompute a membership's cases from its stored events. Only cases the fold changed are
    written; a new case and what it owes go in one statement."""
    if history is None:
        history = event_store.History(payloads=event_store.membership_event_payloads(tx, membership_id),
                                      settings=settings_store.get_settings(tx))
    settings = history.settings
    resume = _resume(history.start)
    if history.start is not None and resume is None:  # cannot tell the resume point's state
        history = event_store.History(payloads=event_store.membership_event_payloads(tx, membership_id),
                                      settings=settings)
    folded = fold(company_id, membership_id, _stored_events(history.payloads), now, resume=resume)
    rows = history.cases if history.cases is not None else case_store.membership_cases(tx, membership_id)
    matched = _match(folded, rows, resume.seq_before if resume else 0)
    done = Refolded()
    for index, case in enumerate(folded):
        own = matched.get(index, [])
        if not own:
            case_id = str(uuid.uuid4())
            covered = covered_offset(case, settings, now)
            effects = [(e.kind, e.step, e.channel, e.due_at, e.idempotency_key(case_id))
                       for e in initial_effects(case, settings, now)]
            effects += recovery.payday_effects(case, settings, now)  # a soft decline's payday retry
            done.owed += case_store.open_case(tx, case, next_action_at(case, settings, covered),
                                              new_link_token(), case_id, effects,
                                              last_reminder_offset=covered)
            done.opened.append(case_id)
            measurement.assign_new_case(tx, case_id, settings)  # holdout / experiment variant (issue 10)
            # A card the member saved shortly before this failure arrived is attached now
            done.owed += recovery.owe_saved_card(tx, case_id, case, settings, now, history.saved_cards)
            done.recovered += int(case.status is CaseStatus.RECOVERED)  # its success came first
            continue
        primary, *duplicates = own
        for duplicate in duplicates:  # a late event joined stored episodes: one row stays
            case_store.merge_duplicate_case(tx, str(duplicate["id"]), into=str(primary["id"]))
        # After the merge: a re-plan of the row that stays sees the ledger it took over.
        done.recovered += int(_update_existing(tx, primary, case, settings, now, done))
    return done


def _resume(start: event_store.FoldStart | None) -> Resume | None:
    """The fold's state at ``start``; None when a payload that may have set manage_url there
    no longer validates (the whole history is folded instead, which skips it as usual)."""
    if start is None:
        return None
    try:
        setters = [event_from_payload(p) for p in start.manage_url_payloads]
    except ValidationError:
        return None
    last = max(setters, key=order_key, default=None)
    return Resume(after=start.after, seq_before=start.seq_before,
                  manage_url=last.manage_url if last is not None else None)


def _match(folded: list[Case], rows: list[dict[str, Any]],
           seq_before: int = 0) -> dict[int, list[dict[str, Any]]]:
    """Which stored rows are which folded episode: by the failure that opened the row. Rows from
    before episode identity existed fall back to their position, once, and then gain identity.
    ``folded`` may be the tail of the cases, after the first ``seq_before``."""
    episode_of = {wid: i for i, case in enumerate(folded) for wid in case.failure_ids}
    matched: dict[int, list[dict[str, Any]]] = {}
    legacy: list[dict[str, Any]] = []
    for row in rows:  # oldest first: the oldest row of an episode stays its primary
        key = row["episode_webhook_id"]
        if key is None:
            legacy.append(row)
        elif key in episode_of:
            matched.setdefault(episode_of[key], []).append(row)
    for row in legacy:
        index = int(row["seq"]) - 1 - seq_before
        if 0 <= index < len(folded) and index not in matched:
            matched[index] = [row]
    return matched


def _update_existing(tx: Transaction, row: dict[str, Any], case: Case, settings: CreatorSettings,
                     now: datetime, done: Refolded) -> bool:
    """Write the re-folded case over its row if it changed; True when it became recovered. A
    row the fold opens again is re-planned from its ledger (``replan.reopened``)."""
    if row["cancelled_by"] is not None and case.status is not CaseStatus.CANCELLED:
        # A creator stopped this case by hand, and cancelled is final (contract): later events
        # update its facts, never its status.
        case = case.model_copy(update={"status": CaseStatus.CANCELLED, "closed_at": row["closed_at"],
                                       "close_reason": row["close_reason"]})
    episode = case.failure_ids[0] if row["episode_webhook_id"] is None and case.failure_ids else None
    next_at = next_action_at(case, settings, row["last_reminder_offset"])
    if case_store.case_unchanged(row, case, next_at, episode):
        return False  # the fold left it as stored (a past episode, a repeated fact): no write
    settle = None
    if case.status is not CaseStatus.OPEN:
        settle = "window_passed" if case.status is CaseStatus.EXPIRED else "case_closed"
    case_store.update_case(tx, str(row["id"]), case, next_at, episode=episode, settle=settle)
    if case.status is CaseStatus.OPEN and row["status"] != CaseStatus.OPEN.value:
        owed = replan.reopened(tx, str(row["id"]), case, settings, now)
        done.owed += owed
        if owed:
            done.reopened.append(str(row["id"]))
    return case.status is CaseStatus.RECOVERED and row["status"] != CaseStatus.RECOVERED.value


# The T+0 sends stop once the function has less than this left: one more Whop call at its
# worst (budgets.SHARED_PROFILE: 26 s) and recording its outcome must still fit in the timeout.
# What is not sent stays owed (pending ledger rows) and the next tick sends it.
SEND_MARGIN_S = worst_case_call_s(SHARED_PROFILE) + 4.0


def time_budget(context: Any, margin_s: float = SEND_MARGIN_S) -> Callable[[], bool] | None:
    """``out_of_time`` for a Lambda context: True once less than ``margin_s`` remains."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return None
    return lambda: float(remaining()) < margin_s * 1000


def send_opening_nudges(company_id: str, case_ids: list[str], now: datetime,
                        out_of_time: Callable[[], bool] | None = None) -> int:
    """The T+0 nudge goes out promptly, after commit. If Whop is down the rows stay pending and
    the next tick retries them: the webhook itself is applied and must not be redelivered.
    Returns how many cases were left for the tick because the time ran low."""
    try:
        ctx = default_context()
        for index, case_id in enumerate(case_ids):
            if out_of_time is not None and out_of_time():
                left = len(case_ids) - index
                count("OpeningNudgesDeferred", left)
                logger.warning("opening nudges left for the tick: time is running out",
                               extra={"company_id": company_id, "cases_left": left})
                return left
            stats = execute_owed(ctx, company_id, now, case_id=case_id, out_of_time=out_of_time)
            count("EffectsSent", stats.sent)
    except Exception:  # noqa: BLE001 - effects are retried by the tick; the event is committed
        logger.exception("opening nudges deferred to the next tick", extra={"company_id": company_id})
    return 0


# --- the SQS batch (Lambda event source, or the local consumer in make dev) --------------------


def _apply_record(record: SQSRecord, opened: dict[str, list[str]], now: datetime) -> None:
    attributes = record.raw_event.get("messageAttributes") or {}
    webhook_id = (attributes.get("webhook_id") or {}).get("stringValue")
    logger.append_keys(message_id=record.message_id, webhook_id=webhook_id)
    try:
        msg = decode_message(record.body, attributes)
        outcome = process_webhook(msg, now=now)
    except Exception as exc:
        # The batch processor reports the failure to SQS but logs no cause: say which and why
        # (the class only; a message could hold data).
        logger.warning("webhook record failed; SQS will redeliver it",
                       extra={"webhook_id": webhook_id, "error_class": type(exc).__name__})
        raise
    count(f"Events{outcome.status.capitalize()}")
    if outcome.opened_case_ids and outcome.company_id:
        count("CasesOpened", len(outcome.opened_case_ids))
        opened.setdefault(outcome.company_id, []).extend(outcome.opened_case_ids)
    if outcome.owed_case_ids and outcome.company_id:  # attaches go out with the T+0s
        opened.setdefault(outcome.company_id, []).extend(outcome.owed_case_ids)
    if outcome.reopened_case_ids and outcome.company_id:  # their T+0, owed again, goes out promptly too
        count("CasesReopened", len(outcome.reopened_case_ids))
        opened.setdefault(outcome.company_id, []).extend(outcome.reopened_case_ids)
    if outcome.recovered:  # counted once committed: a rolled-back fold recovered nothing
        count("CasesRecovered", outcome.recovered)
    logger.info("webhook processed", extra={"outcome": outcome.status, "company_id": outcome.company_id,
                                             "opened": len(outcome.opened_case_ids)})


def handle_batch(event: dict[str, Any], context: Any = None,
                 clock: Clock = system_clock) -> PartialItemFailureResponse:
    """Each record succeeds or fails alone; failures come back in ``batchItemFailures``. On a
    host clock that disagrees with the database's (``clock.checked_now``) the whole batch goes
    back to SQS untouched."""
    try:
        now = checked_now("consumer", clock)
    except ClockSkew:
        return {"batchItemFailures": [{"itemIdentifier": str(r.get("messageId", ""))}
                                      for r in event.get("Records", [])]}
    # A fresh processor per batch: BatchProcessor keeps per-batch state on the instance.
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    opened: dict[str, list[str]] = {}
    result = process_partial_response(
        event=event, record_handler=lambda record: _apply_record(record, opened, now), processor=processor,
        context=context)
    failures = len(result.get("batchItemFailures", []))
    if failures:
        count("EventRecordsFailed", failures)
    # T+0 nudges go out once the whole batch is applied: a payment that succeeded in the same
    # batch closes the case first, and the executor then owes that member nothing.
    out_of_time = time_budget(context)
    for company_id, case_ids in opened.items():
        send_opening_nudges(company_id, case_ids, now, out_of_time)
    return result
