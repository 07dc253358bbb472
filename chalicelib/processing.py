"""Consuming one queued webhook: store it, re-fold its membership's case, record what is owed.

All of it happens in ONE tenant transaction, under a per-membership lock:
1. insert the event (unique webhook id: a redelivery changes nothing and owes nothing);
2. fold every stored event of the membership into its cases (order and duplicates never matter);
3. write the cases, and the effects a newly opened case owes as pending ledger rows (outbox).
Effects are executed after commit by the effects executor; a crash between commit and effect
leaves pending rows that the next tick picks up, and their idempotency keys stop doubles.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from chalicelib import measurement, store
from chalicelib.cases import fold
from chalicelib.db import Database, Transaction, tenant_transaction
from chalicelib.effects import default_context, execute_owed
from chalicelib.models import Case, CaseStatus, CreatorSettings
from chalicelib.observability import count, logger
from chalicelib.queue import QueuedWebhook, decode_message
from chalicelib.reminders import initial_effects, next_action_at
from chalicelib.webhooks import event_from_payload, minimal_payload, normalise


@dataclass
class Outcome:
    status: str  # "applied" | "duplicate" | "ignored"
    company_id: str | None = None
    opened_case_ids: list[str] = field(default_factory=list)
    owed_actions: int = 0


def new_link_token() -> str:
    # 32 random bytes, URL-safe: unguessable, and carries nothing about the member.
    return secrets.token_urlsafe(32)


def process_webhook(msg: QueuedWebhook, now: datetime, db: Database | None = None) -> Outcome:
    event = normalise(msg.body, msg.webhook_id, msg.received_at)
    if event is None or event.membership_id is None:
        return Outcome(status="ignored")
    with tenant_transaction(event.company_id, db) as tx:
        store.lock_membership(tx, event.company_id, event.membership_id)
        if not store.insert_event(tx, event, minimal_payload(event)):
            return Outcome(status="duplicate", company_id=event.company_id)
        opened, owed = refold_membership(tx, event.company_id, event.membership_id, now)
    return Outcome(status="applied", company_id=event.company_id, opened_case_ids=opened,
                   owed_actions=owed)


def refold_membership(tx: Transaction, company_id: str, membership_id: str,
                      now: datetime) -> tuple[list[str], int]:
    """Recompute a membership's cases from its stored events; return (opened case ids, owed rows)."""
    events = [event_from_payload(p) for p in store.membership_event_payloads(tx, membership_id)]
    folded = fold(company_id, membership_id, events, now)
    existing = store.membership_cases(tx, membership_id)
    settings = store.get_settings(tx)
    opened: list[str] = []
    owed = 0
    for case in folded:
        row = existing.get(case.seq)
        if row is None:
            created = store.insert_case(tx, case, next_action_at(case, settings, None),
                                        new_link_token())
            case_id = str(created["id"])
            opened.append(case_id)
            measurement.assign_new_case(tx, case_id, settings)  # holdout / experiment variant (issue 10)
            owed += _record_initial_effects(tx, case_id, case, settings, now)
        else:
            _update_existing(tx, row, case, settings)
    return opened, owed


def _update_existing(tx: Transaction, row: dict[str, Any], case: Case, settings: CreatorSettings) -> None:
    if row["cancelled_by"] is not None and case.status is not CaseStatus.CANCELLED:
        # A creator stopped this case by hand, and cancelled is final (contract): later events
        # update its facts, never its status.
        case = case.model_copy(update={"status": CaseStatus.CANCELLED, "closed_at": row["closed_at"],
                                       "close_reason": row["close_reason"]})
    store.update_case(tx, str(row["id"]), case,
                      next_action_at(case, settings, row["last_reminder_offset"]))


def _record_initial_effects(tx: Transaction, case_id: str, case: Case, settings: CreatorSettings,
                            now: datetime) -> int:
    owed = 0
    for effect in initial_effects(case, settings, now):
        owed += store.add_action(tx, case_id=case_id, company_id=case.company_id, kind=effect.kind,
                                 step=effect.step, channel=effect.channel, due_at=effect.due_at,
                                 idempotency_key=effect.idempotency_key(case_id))
    return owed


def send_opening_nudges(company_id: str, case_ids: list[str], now: datetime) -> None:
    """The T+0 nudge goes out promptly, after commit. If Whop is down the rows stay pending and
    the next tick retries them: the webhook itself is applied and must not be redelivered."""
    try:
        ctx = default_context()
        for case_id in case_ids:
            stats = execute_owed(ctx, company_id, now, case_id=case_id)
            count("EffectsSent", stats.sent)
    except Exception:  # noqa: BLE001 - effects are retried by the tick; the event is committed
        logger.exception("opening nudges deferred to the next tick", extra={"company_id": company_id})


# --- the SQS batch (Lambda event source, or the local consumer in make dev) --------------------


def _apply_record(record: SQSRecord, opened: dict[str, list[str]]) -> None:
    attributes = record.raw_event.get("messageAttributes") or {}
    msg = decode_message(record.body, attributes)
    logger.append_keys(message_id=record.message_id, webhook_id=msg.webhook_id)
    outcome = process_webhook(msg, now=datetime.now(UTC))
    count(f"Events{outcome.status.capitalize()}")
    if outcome.opened_case_ids and outcome.company_id:
        count("CasesOpened", len(outcome.opened_case_ids))
        opened.setdefault(outcome.company_id, []).extend(outcome.opened_case_ids)
    logger.info("webhook processed", extra={"outcome": outcome.status, "company_id": outcome.company_id,
                                             "opened": len(outcome.opened_case_ids)})


def handle_batch(event: dict[str, Any], context: Any = None) -> PartialItemFailureResponse:
    """Each record succeeds or fails alone; failures come back in ``batchItemFailures``."""
    # A fresh processor per batch: BatchProcessor keeps per-batch state on the instance.
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    opened: dict[str, list[str]] = {}
    result = process_partial_response(
        event=event, record_handler=lambda record: _apply_record(record, opened), processor=processor,
        context=context)
    failures = len(result.get("batchItemFailures", []))
    if failures:
        count("EventRecordsFailed", failures)
    # T+0 nudges go out once the whole batch is applied: a payment that succeeded in the same
    # batch closes the case first, and the executor then owes that member nothing.
    now = datetime.now(UTC)
    for company_id, case_ids in opened.items():
        send_opening_nudges(company_id, case_ids, now)
    return result
