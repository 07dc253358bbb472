"""The case engine: a membership's recovery cases as a pure function of its events.

A case's state depends on the SET of the membership's events, never on the order they arrived
in. ``fold`` drops duplicate deliveries (same ``webhook_id``), sorts the rest by event time
(ties: the type rank below, then ``webhook_id``) and applies these rules one event at a time.
"The window" is first failure → first failure + 14 days, both ends inclusive.

| event                                          | the open case, if any                  | no open case  |
|------------------------------------------------|----------------------------------------|---------------|
| any event dated after the open case's window   | first → expired (closed at the window  |               |
|                                                | end, "window_passed"), then the event  |               |
|                                                | applies as if there were no open case  |               |
| payment.failed / payment.requires_action       | merged: failure_count + 1, latest      | opens a new   |
|                                                | failure time, latest non-empty details | case (seq +1) |
| payment.succeeded / membership.activated       | → recovered at the event time          | nothing       |
| membership.cancel_at_period_end_changed, true  | → cancelled ("member_cancelled")       | nothing       |
| membership.cancel_at_period_end_changed, false | nothing                                | nothing       |
| membership.deactivated, the member cancelled   | → cancelled ("member_cancelled")       | nothing       |
| membership.deactivated, payment failed/unknown | nothing: the member can still fix it   | nothing       |
| end: ``now`` given, after the open case window | → expired (closed at the window end)   |               |

Recovered and cancelled are final; the next failure opens a new case. Each case lists the webhook
ids of its failures (``failure_ids``): every failure belongs to exactly one case, which is how a
stored case is matched to its episode whatever order the events arrived in. Because events apply in
time order, a success dated inside the window recovers the case even when it arrives after the
window has passed. Events before the membership's first failure change nothing, except that the
latest ``manage_url`` seen on any membership event is carried onto the cases.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from chalicelib import attribution
from chalicelib.messages import case_decline_class
from chalicelib.models import Case, CaseStatus, EventType, WhopEvent, event_time_problem, window_end

__all__ = ["Resume", "fold", "order_key"]

# Same-instant ties: failures before successes (a success at the very instant of the failure
# recovers it), successes before the member's cancellation.
TYPE_RANK: Final[dict[EventType, int]] = {
    EventType.PAYMENT_FAILED: 0,
    EventType.PAYMENT_REQUIRES_ACTION: 1,
    EventType.PAYMENT_SUCCEEDED: 2,
    EventType.MEMBERSHIP_ACTIVATED: 3,
    EventType.MEMBERSHIP_CANCEL_AT_PERIOD_END_CHANGED: 4,
    EventType.MEMBERSHIP_DEACTIVATED: 5,
    EventType.SETUP_INTENT_SUCCEEDED: 6,  # a member's saved card: never part of a membership's fold
}


def order_key(event: WhopEvent) -> tuple[datetime, int, str]:
    """The total order events are applied in."""
    return event.occurred_at, TYPE_RANK[event.type], event.webhook_id


def fold(company_id: str, membership_id: str, events: Iterable[WhopEvent],
         now: datetime | None = None, *, resume: Resume | None = None) -> list[Case]:
    """All cases of one membership, in ``seq`` order. Events of another company or membership
    are ignored. ``now`` (aware) only expires a still-open case whose window has passed.

    ``resume`` folds only the events after a point where no case was open (a closed episode's
    end): it returns the cases that follow it, numbered after ``resume.seq_before``. With the
    events up to that point unchanged, that is exactly the tail of the whole fold."""
    state = _State(company_id, membership_id)
    if resume is not None:
        state.seq_before, state.manage_url = resume.seq_before, resume.manage_url
    for event in sorted(_dedupe(events, company_id, membership_id), key=order_key):
        if resume is not None and event.occurred_at <= resume.after:
            continue  # already folded into the closed episodes before the point
        state.expire_if_passed(event.occurred_at)
        state.note_manage_url(event)
        _RULES[event.type](state, event)
    if now is not None:
        state.expire_if_passed(now)
    return [c.model_copy(update={"decline_class": case_decline_class(c)}) for c in state.cases]


def _dedupe(events: Iterable[WhopEvent], company_id: str, membership_id: str) -> list[WhopEvent]:
    """One event per webhook_id. Redeliveries are identical; should two ever differ, the same one
    is kept whatever the arrival order. An event dated outside the sane range (stored before that
    rule existed) counts for nothing: it is a poison record, not a fact."""
    kept: dict[str, WhopEvent] = {}
    for event in events:
        if event.company_id != company_id or event.membership_id != membership_id:
            continue
        if event_time_problem(event.occurred_at, event.received_at) is not None:
            continue
        other = kept.get(event.webhook_id)
        if other is None or (other != event and event.model_dump_json() < other.model_dump_json()):
            kept[event.webhook_id] = event
    return list(kept.values())


@dataclass(frozen=True)
class Resume:
    """A point to resume a fold from: the end ``after`` of a closed episode (no case open there),
    the number of cases up to it, and the membership's manage_url as of it."""

    after: datetime
    seq_before: int
    manage_url: str | None = None


@dataclass
class _State:
    company_id: str
    membership_id: str
    cases: list[Case] = field(default_factory=list)
    manage_url: str | None = None
    seq_before: int = 0  # cases before the point a resumed fold starts from

    @property
    def open_case(self) -> Case | None:
        if self.cases and self.cases[-1].status is CaseStatus.OPEN:
            return self.cases[-1]
        return None

    def update_open(self, **changes: object) -> None:
        self.cases[-1] = self.cases[-1].model_copy(update=changes)

    def expire_if_passed(self, at: datetime) -> None:
        case = self.open_case
        if case is not None and attribution.window_passed(case.first_failure_at, at):
            self.update_open(status=CaseStatus.EXPIRED, closed_at=window_end(case.first_failure_at),
                             close_reason="window_passed")

    def note_manage_url(self, event: WhopEvent) -> None:
        if event.manage_url is None:
            return
        self.manage_url = event.manage_url
        if self.open_case is not None:
            self.update_open(manage_url=event.manage_url)


# --- one function per row of the table -----------------------------------------------------------


def _on_failure(state: _State, event: WhopEvent) -> None:
    case = state.open_case
    if case is None:
        state.cases.append(_open(state, event, seq=state.seq_before + len(state.cases) + 1))
        return
    state.update_open(
        failure_count=case.failure_count + 1,
        last_failure_at=max(case.last_failure_at, event.occurred_at),
        user_id=event.user_id or case.user_id,
        payment_id=event.payment_id or case.payment_id,
        amount_minor=event.amount_minor if event.amount_minor is not None else case.amount_minor,
        currency=event.currency or case.currency,
        decline_code=event.decline_code or case.decline_code,
        failure_reason=event.failure_message or case.failure_reason,
        recovery_url=event.recovery_url or case.recovery_url,
        failure_ids=(*case.failure_ids, event.webhook_id),
        failure_type=event.type,
    )


def _open(state: _State, event: WhopEvent, seq: int) -> Case:
    return Case(
        seq=seq,
        company_id=state.company_id,
        membership_id=state.membership_id,
        user_id=event.user_id,
        status=CaseStatus.OPEN,
        first_failure_at=event.occurred_at,
        last_failure_at=event.occurred_at,
        failure_count=1,
        payment_id=event.payment_id,
        amount_minor=event.amount_minor,
        currency=event.currency,
        decline_code=event.decline_code,
        failure_reason=event.failure_message,
        recovery_url=event.recovery_url,
        manage_url=state.manage_url,
        failure_ids=(event.webhook_id,),
        failure_type=event.type,
    )


def _on_success(state: _State, event: WhopEvent) -> None:
    case = state.open_case
    if case is None or not attribution.recovers(case.first_failure_at, event.occurred_at):
        return
    amount: int | None = case.amount_minor
    currency: str | None = case.currency
    if event.amount_minor is not None:
        amount, currency = event.amount_minor, event.currency or case.currency
    state.update_open(status=CaseStatus.RECOVERED, recovered_at=event.occurred_at,
                      recovered_amount_minor=amount, recovered_currency=currency,
                      closed_at=event.occurred_at, close_reason="payment_succeeded")


def _on_cancel_at_period_end(state: _State, event: WhopEvent) -> None:
    if event.cancel_at_period_end is True:
        _member_cancelled(state, event)


def _on_deactivated(state: _State, event: WhopEvent) -> None:
    if event.deactivation_cause == "member_cancelled":
        _member_cancelled(state, event)


def _member_cancelled(state: _State, event: WhopEvent) -> None:
    if state.open_case is not None:
        state.update_open(status=CaseStatus.CANCELLED, closed_at=event.occurred_at,
                          close_reason="member_cancelled")


_RULES: Final[dict[EventType, Callable[[_State, WhopEvent], None]]] = {
    EventType.PAYMENT_FAILED: _on_failure,
    EventType.PAYMENT_REQUIRES_ACTION: _on_failure,
    EventType.PAYMENT_SUCCEEDED: _on_success,
    EventType.MEMBERSHIP_ACTIVATED: _on_success,
    EventType.MEMBERSHIP_CANCEL_AT_PERIOD_END_CHANGED: _on_cancel_at_period_end,
    EventType.MEMBERSHIP_DEACTIVATED: _on_deactivated,
    EventType.SETUP_INTENT_SUCCEEDED: lambda _state, _event: None,  # owes an attach, changes no case
}
