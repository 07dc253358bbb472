"""The case engine and the 14-day attribution rule (pure: no database)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib import attribution
from chalicelib.cases import Resume, fold, order_key
from chalicelib.models import Case, CaseStatus, EventType, WhopEvent, window_end

T0 = datetime(2025, 1, 1, 9, 30, tzinfo=UTC)
DAY = timedelta(days=1)
COMPANY, MEMBERSHIP = "biz_1", "mem_1"
_ids = itertools.count()

F = EventType.PAYMENT_FAILED
RA = EventType.PAYMENT_REQUIRES_ACTION
S = EventType.PAYMENT_SUCCEEDED
ACT = EventType.MEMBERSHIP_ACTIVATED
DEACT = EventType.MEMBERSHIP_DEACTIVATED
CAPE = EventType.MEMBERSHIP_CANCEL_AT_PERIOD_END_CHANGED


def ev(kind: EventType, at: datetime, **fields: Any) -> WhopEvent:
    fields.setdefault("webhook_id", f"msg_{next(_ids):06d}")
    fields.setdefault("received_at", at)
    fields.setdefault("membership_id", MEMBERSHIP)
    fields.setdefault("company_id", COMPANY)
    return WhopEvent(type=kind, occurred_at=at, **fields)


def failure(at: datetime, **fields: Any) -> WhopEvent:
    defaults = {"payment_id": "pay_1", "amount_minor": 1999, "currency": "usd", "user_id": "user_1"}
    return ev(F, at, **{**defaults, **fields})


def one(cases: list[Case]) -> Case:
    assert len(cases) == 1
    return cases[0]


def run(*events: WhopEvent, now: datetime | None = None) -> list[Case]:
    return fold(COMPANY, MEMBERSHIP, events, now)


# --- attribution -------------------------------------------------------------------------------


def test_recovers_is_inclusive_at_both_ends() -> None:
    assert attribution.recovers(T0, T0)
    assert attribution.recovers(T0, T0 + 14 * DAY)
    assert not attribution.recovers(T0, T0 + 14 * DAY + timedelta(microseconds=1))
    assert not attribution.recovers(T0, T0 - timedelta(seconds=1))
    assert attribution.window_passed(T0, T0 + 14 * DAY + timedelta(seconds=1))
    assert not attribution.window_passed(T0, T0 + 14 * DAY)


@pytest.mark.parametrize(("days", "recovered"), [(0, True), (13.9, True), (14, True), (14.1, False)])
def test_success_attributed_by_event_time(days: float, recovered: bool) -> None:
    case = one(run(failure(T0), ev(S, T0 + timedelta(days=days))))
    assert (case.status is CaseStatus.RECOVERED) is recovered
    if not recovered:
        assert case.status is CaseStatus.EXPIRED  # the late success is itself after the window
        assert case.closed_at == window_end(T0) and case.close_reason == "window_passed"


def test_processing_time_never_matters() -> None:
    later = T0 + 30 * DAY
    success = ev(S, T0 + timedelta(days=13.9), received_at=later, amount_minor=1999, currency="usd")
    case = one(run(failure(T0), success, now=later))
    assert case.status is CaseStatus.RECOVERED
    assert case.recovered_at == T0 + timedelta(days=13.9)
    assert case.closed_at == case.recovered_at and case.close_reason == "payment_succeeded"

    expired = one(run(failure(T0), now=later))
    assert expired.status is CaseStatus.EXPIRED
    assert expired.closed_at == window_end(T0) and expired.close_reason == "window_passed"


def test_now_inside_the_window_keeps_the_case_open() -> None:
    assert one(run(failure(T0), now=T0 + 14 * DAY)).status is CaseStatus.OPEN
    assert one(run(failure(T0))).status is CaseStatus.OPEN


# --- opening and merging ----------------------------------------------------------------------


def test_first_failure_opens_a_case_with_its_details() -> None:
    f = failure(T0, decline_code="insufficient_funds", failure_message="Insufficient funds.",
                recovery_url="https://whop.com/recover/1")
    case = one(run(f))
    assert case.seq == 1 and case.status is CaseStatus.OPEN
    assert (case.company_id, case.membership_id, case.user_id) == (COMPANY, MEMBERSHIP, "user_1")
    assert case.first_failure_at == case.last_failure_at == T0 and case.failure_count == 1
    assert (case.payment_id, case.amount_minor, case.currency) == ("pay_1", 1999, "usd")
    assert (case.decline_code, case.failure_reason, case.recovery_url) == (
        "insufficient_funds", "Insufficient funds.", "https://whop.com/recover/1")
    assert case.closed_at is None and case.recovered_at is None


def test_requires_action_opens_a_case_too() -> None:
    case = one(run(ev(RA, T0, recovery_url="https://whop.com/3ds")))
    assert case.status is CaseStatus.OPEN and case.recovery_url == "https://whop.com/3ds"


def test_failures_merge_keeping_the_latest_non_empty_details() -> None:
    first = failure(T0, decline_code="insufficient_funds", failure_message="Insufficient funds.",
                    recovery_url="https://whop.com/recover/1")
    second = failure(T0 + 3 * DAY, decline_code="expired_card", amount_minor=2499)
    third = ev(RA, T0 + 5 * DAY)  # no details: keeps what is known
    case = one(run(third, first, second))
    assert case.failure_count == 3
    assert case.first_failure_at == T0 and case.last_failure_at == T0 + 5 * DAY
    assert case.decline_code == "expired_card" and case.failure_reason == "Insufficient funds."
    assert case.recovery_url == "https://whop.com/recover/1" and case.amount_minor == 2499


def test_duplicate_deliveries_count_once() -> None:
    f = failure(T0)
    case = one(run(f, f, f.model_copy(update={"received_at": T0 + DAY})))
    assert case.failure_count == 1


def test_events_of_other_memberships_are_ignored() -> None:
    assert run(failure(T0, membership_id="mem_other"), failure(T0, company_id="biz_other")) == []


def test_events_before_any_failure_change_nothing() -> None:
    assert run(ev(S, T0), ev(ACT, T0), ev(CAPE, T0, cancel_at_period_end=True),
               ev(DEACT, T0, deactivation_cause="member_cancelled")) == []


def test_success_dated_before_the_first_failure_does_nothing() -> None:
    case = one(run(failure(T0), ev(S, T0 - timedelta(hours=1))))  # arrives last, dated first
    assert case.status is CaseStatus.OPEN


def test_failure_and_success_at_the_same_instant_recover() -> None:
    assert one(run(ev(S, T0), failure(T0))).status is CaseStatus.RECOVERED


# --- recovery ---------------------------------------------------------------------------------


def test_recovered_amount_from_the_success_else_the_case() -> None:
    paid = one(run(failure(T0), ev(S, T0 + DAY, amount_minor=2100, currency="usd")))
    assert (paid.recovered_amount_minor, paid.recovered_currency) == (2100, "usd")
    activated = one(run(failure(T0), ev(ACT, T0 + DAY)))
    assert activated.status is CaseStatus.RECOVERED
    assert (activated.recovered_amount_minor, activated.recovered_currency) == (1999, "usd")


def test_new_failure_after_recovery_opens_seq_2() -> None:
    cases = run(failure(T0), ev(S, T0 + DAY), failure(T0 + 3 * DAY, payment_id="pay_2"))
    assert [(c.seq, c.status) for c in cases] == [(1, CaseStatus.RECOVERED), (2, CaseStatus.OPEN)]
    assert cases[1].first_failure_at == T0 + 3 * DAY and cases[1].payment_id == "pay_2"


def test_failure_after_the_window_expires_the_case_and_opens_a_new_one() -> None:
    cases = run(failure(T0), failure(T0 + 15 * DAY), ev(S, T0 + 16 * DAY))
    assert [(c.seq, c.status) for c in cases] == [(1, CaseStatus.EXPIRED), (2, CaseStatus.RECOVERED)]
    assert cases[0].closed_at == window_end(T0) and cases[0].failure_count == 1
    assert cases[1].first_failure_at == T0 + 15 * DAY


def test_failure_exactly_at_window_end_merges() -> None:
    case = one(run(failure(T0), failure(T0 + 14 * DAY)))
    assert case.failure_count == 2 and case.status is CaseStatus.OPEN


def test_a_late_success_recovers_even_after_now_passed_the_window() -> None:
    # Folded once without the success (expired), then again when it arrives late: recovered.
    f = failure(T0)
    now = T0 + 20 * DAY
    assert one(run(f, now=now)).status is CaseStatus.EXPIRED
    late = ev(S, T0 + 10 * DAY, received_at=now)
    assert one(run(f, late, now=now)).status is CaseStatus.RECOVERED


# --- cancellation -----------------------------------------------------------------------------


def test_cancel_at_period_end_true_cancels() -> None:
    case = one(run(failure(T0), ev(CAPE, T0 + DAY, cancel_at_period_end=True)))
    assert case.status is CaseStatus.CANCELLED
    assert case.closed_at == T0 + DAY and case.close_reason == "member_cancelled"


def test_cancel_at_period_end_false_does_nothing() -> None:
    assert one(run(failure(T0), ev(CAPE, T0 + DAY, cancel_at_period_end=False))).status is CaseStatus.OPEN


def test_member_cancellation_deactivation_cancels() -> None:
    case = one(run(failure(T0), ev(DEACT, T0 + DAY, deactivation_cause="member_cancelled")))
    assert case.status is CaseStatus.CANCELLED and case.close_reason == "member_cancelled"


@pytest.mark.parametrize("cause", ["payment_failed", "unknown", None])
def test_deactivation_by_payment_failure_keeps_the_case_open(cause: str | None) -> None:
    events = [failure(T0), ev(DEACT, T0 + 5 * DAY, deactivation_cause=cause)]
    assert one(run(*events)).status is CaseStatus.OPEN
    assert one(run(*events, ev(ACT, T0 + 6 * DAY))).status is CaseStatus.RECOVERED


def test_cancelled_and_recovered_are_terminal() -> None:
    cancelled = one(run(failure(T0), ev(CAPE, T0 + DAY, cancel_at_period_end=True), ev(S, T0 + 2 * DAY),
                        ev(CAPE, T0 + 3 * DAY, cancel_at_period_end=False), now=T0 + 40 * DAY))
    assert cancelled.status is CaseStatus.CANCELLED and cancelled.recovered_at is None
    recovered = one(run(failure(T0), ev(S, T0 + DAY),
                        ev(DEACT, T0 + 2 * DAY, deactivation_cause="member_cancelled"), now=T0 + 40 * DAY))
    assert recovered.status is CaseStatus.RECOVERED and recovered.closed_at == T0 + DAY


def test_new_failure_after_cancellation_opens_a_new_case() -> None:
    cases = run(failure(T0), ev(DEACT, T0 + DAY, deactivation_cause="member_cancelled"),
                failure(T0 + 2 * DAY))
    assert [(c.seq, c.status) for c in cases] == [(1, CaseStatus.CANCELLED), (2, CaseStatus.OPEN)]


def test_manage_url_is_the_latest_seen_on_membership_events() -> None:
    cases = run(ev(ACT, T0 - DAY, manage_url="https://whop.com/manage/a"), failure(T0),
                ev(DEACT, T0 + DAY, deactivation_cause="payment_failed", manage_url="https://whop.com/manage/b"))
    assert one(cases).manage_url == "https://whop.com/manage/b"
    assert one(run(ev(ACT, T0 - DAY, manage_url="https://whop.com/manage/a"), failure(T0))).manage_url == (
        "https://whop.com/manage/a")


# --- order and duplicates never matter (property) ---------------------------------------------

KINDS = [F, F, F, RA, S, S, ACT, DEACT, CAPE]
CAUSES = ["member_cancelled", "payment_failed", "unknown"]


@st.composite
def membership_events(draw: st.DrawFn) -> list[WhopEvent]:
    """Up to 25 distinct events over ~40 days: several episodes, ties in time, every type."""
    count = draw(st.integers(min_value=0, max_value=25))
    events = []
    for i in range(count):
        kind = draw(st.sampled_from(KINDS))
        # Hours, sometimes on the same hour, so ties in time are common.
        at = T0 + timedelta(hours=draw(st.integers(min_value=0, max_value=40 * 24)))
        fields: dict[str, Any] = {"webhook_id": f"msg_{i:03d}", "received_at": T0 + 50 * DAY}
        if kind in (F, RA, S):
            fields["amount_minor"] = draw(st.none() | st.sampled_from([999, 1999, 2500]))
            fields["currency"] = "usd" if fields["amount_minor"] is not None else None
            fields["payment_id"] = draw(st.sampled_from(["pay_1", "pay_2"]))
        if kind in (F, RA):
            fields["decline_code"] = draw(st.none() | st.sampled_from(["insufficient_funds", "expired_card"]))
        if kind is DEACT:
            fields["deactivation_cause"] = draw(st.sampled_from(CAUSES))
        if kind is CAPE:
            fields["cancel_at_period_end"] = draw(st.booleans())
        if kind in (ACT, DEACT, CAPE):
            fields["manage_url"] = draw(st.none() | st.sampled_from(["https://m/1", "https://m/2"]))
        events.append(ev(kind, at, **fields))
    return events


@settings(max_examples=300, deadline=None)
@given(events=membership_events(), data=st.data(),
       now=st.none() | st.integers(min_value=0, max_value=60).map(lambda d: T0 + d * DAY))
def test_any_permutation_with_duplicates_gives_the_same_cases(
        events: list[WhopEvent], data: st.DataObject, now: datetime | None) -> None:
    in_time_order = sorted(events, key=order_key)
    expected = fold(COMPANY, MEMBERSHIP, in_time_order, now)

    duplicates = data.draw(st.lists(st.sampled_from(events), max_size=10)) if events else []
    redelivered = [e.model_copy(update={"received_at": T0 + 60 * DAY}) for e in duplicates]
    shuffled = data.draw(st.permutations(events + redelivered))
    assert fold(COMPANY, MEMBERSHIP, shuffled, now) == expected
    assert_invariants(expected, now)


@settings(max_examples=300, deadline=None)
@given(events=membership_events(), data=st.data(),
       now=st.none() | st.integers(min_value=0, max_value=60).map(lambda d: T0 + d * DAY))
def test_resuming_after_any_closed_episode_gives_the_tail_of_the_whole_fold(
        events: list[WhopEvent], data: st.DataObject, now: datetime | None) -> None:
    """What the consumer relies on to read only the recent past (issue 13): from the end of a
    closed episode, the events after it, the count of cases before and the manage_url seen by
    then, the fold gives exactly the rest of the cases, in any order."""
    whole = fold(COMPANY, MEMBERSHIP, events, now)
    closed = [i for i, c in enumerate(whole) if c.status is not CaseStatus.OPEN]
    if not closed:
        return
    k = data.draw(st.sampled_from(closed))
    after = whole[k].closed_at
    assert after is not None
    setters = [e for e in sorted(events, key=order_key) if e.occurred_at <= after and e.manage_url]
    resume = Resume(after=after, seq_before=k + 1, manage_url=setters[-1].manage_url if setters else None)
    later = [e for e in events if e.occurred_at > after]
    assert fold(COMPANY, MEMBERSHIP, data.draw(st.permutations(later)), now, resume=resume) == whole[k + 1:]
    # Events up to the point are ignored when given: the caller may pass more than it must.
    assert fold(COMPANY, MEMBERSHIP, events, now, resume=resume) == whole[k + 1:]


def assert_invariants(cases: list[Case], now: datetime | None) -> None:
    assert [c.seq for c in cases] == list(range(1, len(cases) + 1))
    assert all(c.status is not CaseStatus.OPEN for c in cases[:-1])
    for case in cases:
        assert case.first_failure_at <= case.last_failure_at <= window_end(case.first_failure_at)
        if case.status is CaseStatus.RECOVERED:
            assert case.recovered_at is not None
            assert attribution.recovers(case.first_failure_at, case.recovered_at)
        if case.status is CaseStatus.EXPIRED:
            assert case.closed_at == window_end(case.first_failure_at)
        if case.status is CaseStatus.OPEN and now is not None:
            assert not attribution.window_passed(case.first_failure_at, now)
    for earlier, later in itertools.pairwise(cases):
        assert earlier.closed_at is not None and earlier.closed_at <= later.first_failure_at


def test_multiple_episodes_in_any_order() -> None:
    events = [
        failure(T0), failure(T0 + 2 * DAY), ev(S, T0 + 3 * DAY),                  # 1: recovered
        failure(T0 + 10 * DAY), ev(DEACT, T0 + 11 * DAY, deactivation_cause="payment_failed"),  # 2: expired
        failure(T0 + 26 * DAY), ev(CAPE, T0 + 27 * DAY, cancel_at_period_end=True),  # 3: cancelled
        failure(T0 + 35 * DAY),                                                  # 4: open
    ]
    expected = [(1, CaseStatus.RECOVERED, 2), (2, CaseStatus.EXPIRED, 1), (3, CaseStatus.CANCELLED, 1),
                (4, CaseStatus.OPEN, 1)]
    for permutation in itertools.islice(itertools.permutations(events), 0, None, 997):
        cases = run(*permutation, now=T0 + 40 * DAY)
        assert [(c.seq, c.status, c.failure_count) for c in cases] == expected
