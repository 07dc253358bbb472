"""Smart retry in the consumer: what a saved card and a newly opened case owe.

Both are ledger rows written in the consumer's transaction, executed like a nudge after the batch
(``processing.handle_batch``) and by the tick (``chalicelib.recovery_exec`` runs them):

- a ``setup_intent.succeeded`` (the member saved a payment method) is stored like any event,
  under the member's lock, and owes one ``card_attach`` per open, non-held-out case of that member
  in that company (its own tenant transaction: another company's cases are not even visible),
  keyed per (membership, payment method): the same card saved twice attaches once;
- a case that opens takes the same member lock first (``member_lock``), so a card saved before
  the failure arrived is seen, and owes the attach of the newest card saved since
  ``SAVED_CARD_LOOKBACK`` before its first failure; a ``card_soft`` case also owes its payday
  retry (``recovery_policy.first_payday_retry``), keyed per payment: once per payment, ever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from chalicelib import erasure, experiments
from chalicelib.attribution import window_passed
from chalicelib.db import Transaction
from chalicelib.db_pool import Database
from chalicelib.models import Case, CaseStatus, CreatorSettings, WhopEvent
from chalicelib.recovery_policy import (
    KIND_ATTACH,
    KIND_RETRY,
    SAVED_CARD_LOOKBACK,
    STEP_CARD,
    STEP_PAYDAY,
    attach_key,
    first_payday_retry,
    retry_key,
)
from chalicelib.store import recovery as recovery_store
from chalicelib.store import settings as settings_store
from chalicelib.tenancy import tenant_transaction
from chalicelib.webhook_text import minimal_payload


@dataclass
class CardSaved:
    status: str  # "applied" | "duplicate" | "ignored" (an erased company's: migration 0014)
    owed_case_ids: list[str] = field(default_factory=list)


def member_lock(company_id: str, user_id: str) -> str:
    """The advisory lock a member's saved card and their failures share (never a membership id:
    those are locked as ``company/membership``)."""
    return f"{company_id}/member/{user_id}"


def apply_card_saved(event: WhopEvent, now: datetime, db: Database | None = None) -> CardSaved:
    """Store a saved card and owe its attaches (one tenant transaction, under the member's lock)."""
    assert event.user_id is not None and event.payment_method_id is not None
    method = event.payment_method_id
    with tenant_transaction(event.company_id, db, lock=member_lock(event.company_id, event.user_id)) as tx:
        if not recovery_store.insert_card_event(tx, event, minimal_payload(event)):
            return CardSaved("ignored" if erasure.is_erased(tx) else "duplicate")
        if not settings_store.get_settings(tx).smart_retry:
            return CardSaved("applied")
        owed = [(c["id"], KIND_ATTACH, STEP_CARD, now,
                 attach_key(event.company_id, c["membership_id"], method), {"payment_method_id": method})
                for c in recovery_store.open_cases_of_member(tx, event.user_id)
                if not c["holdout"] and not window_passed(c["first_failure_at"], now)]
        return CardSaved("applied", recovery_store.owe(tx, event.company_id, owed))


def payday_effects(case: Case, settings: CreatorSettings,
                   now: datetime) -> list[tuple[str, str, str | None, datetime, str]]:
    """The payday retry a newly opened case owes, as ``store.cases.open_case`` takes its effects (held
    out cases owe it too, and the executor skips it with reason ``holdout``, as their nudges)."""
    due = first_payday_retry(case, settings, now)
    if due is None or case.payment_id is None:
        return []
    return [(KIND_RETRY, STEP_PAYDAY, None, due, retry_key(case.company_id, case.payment_id))]


def reopened(tx: Transaction, case_id: str, case: Case, settings: CreatorSettings, now: datetime,
             not_open_reasons: tuple[str, ...]) -> int:
    """What smart retry owes a case a late event opened again (``replan.reopened``): its card
    attaches and its payday retry, when they were skipped only because the case was not open and
    never reached Whop (their once-only keys are unspent); a payday retry it never had is owed as
    for a new case. The executor's own checks (holdout, the window, Whop's view) still apply."""
    owed = recovery_store.revive_skipped(tx, case_id, not_open_reasons, kind=KIND_ATTACH, due_at=now)
    for kind, step, _channel, due, key in payday_effects(case, settings, now):
        revived = recovery_store.revive_skipped(tx, case_id, not_open_reasons, kind=kind, due_at=due, key=key)
        owed += revived or len(recovery_store.owe(tx, case.company_id, [(case_id, kind, step, due, key, {})]))
    return owed


def owe_saved_card(tx: Transaction, case_id: str, case: Case, settings: CreatorSettings, now: datetime,
                   saved: list[tuple[str, datetime]] | None) -> int:
    """Owe the attach of the newest card the member saved since shortly before the case's first
    failure (``saved``: the member's latest cards, if the consumer read them; else read here).
    Nothing for a held-out case: its key would be spent on an attach that must never happen."""
    if (not settings.smart_retry or case.status is not CaseStatus.OPEN or not case.user_id
            or window_passed(case.first_failure_at, now)
            or experiments.in_holdout(case_id, settings.holdout_percent)):
        return 0
    since = case.first_failure_at - SAVED_CARD_LOOKBACK
    cards = ([c for c in saved if c[1] >= since] if saved is not None
             else recovery_store.saved_cards(tx, case.user_id, since))
    if not cards:
        return 0
    method = cards[0][0]
    return len(recovery_store.owe(tx, case.company_id, [
        (case_id, KIND_ATTACH, STEP_CARD, now, attach_key(case.company_id, case.membership_id, method),
         {"payment_method_id": method})]))
