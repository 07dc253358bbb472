"""Smart retry's pure policy (issue 18): payday slots (DST, odd offsets, month and year ends,
quiet hours), what a case is owed, the claim-time and Whop-time verdicts, the keys. No database,
no HTTP. The credit rule is tests/test_credit_rule.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.models import Case, CaseStatus, CreatorSettings, QuietHours
from chalicelib.recovery_policy import (
    KIND_ATTACH,
    KIND_RETRY,
    STEP_CARD,
    STEP_MANUAL,
    STEP_PAYDAY,
    PaymentFacts,
    attach_key,
    attach_verdict,
    claim_verdict,
    first_payday_retry,
    payday_slot,
    retry_deadline,
    retry_key,
    retry_verdict,
)

ODD_ZONES = ("UTC", "America/New_York", "Asia/Kathmandu", "Pacific/Chatham", "Australia/Lord_Howe",
             "America/St_Johns", "Pacific/Kiritimati", "Pacific/Pago_Pago", "Asia/Tehran",
             "America/Santiago", "Europe/Dublin", "Africa/Casablanca", "Asia/Kolkata")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def settings(tz: str = "UTC", quiet: tuple[str, str] | None = None, **kw: object) -> CreatorSettings:
    hours = QuietHours(start=quiet[0], end=quiet[1]) if quiet else None
    return CreatorSettings(timezone=tz, quiet_hours=hours, **kw)  # type: ignore[arg-type]


def case(first: datetime, *, decline_class: str = "card_soft", status: CaseStatus = CaseStatus.OPEN,
         holdout: bool = False, payment_id: str | None = "pay_1") -> Case:
    return Case(seq=1, company_id="biz_1", membership_id="mem_1", user_id="user_1", status=status,
                first_failure_at=first, last_failure_at=first, failure_count=1, payment_id=payment_id,
                decline_class=decline_class, holdout=holdout)  # type: ignore[arg-type]


# --- payday slots ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("after", "expected"), [
    (utc(2026, 1, 3, 12), utc(2026, 1, 15, 9)),
    (utc(2026, 1, 20, 0), utc(2026, 2, 1, 9)),  # the month ends: the next 1st
    (utc(2026, 1, 31, 23, 59), utc(2026, 2, 1, 9)),
    (utc(2026, 12, 15, 9), utc(2027, 1, 1, 9)),  # exactly a slot: strictly after, over the year end
    (utc(2026, 12, 15, 8, 59), utc(2026, 12, 15, 9)),
    (utc(2028, 2, 28, 10), utc(2028, 3, 1, 9)),  # a leap February
    (utc(2028, 2, 29, 23), utc(2028, 3, 1, 9)),
])
def test_the_next_payday_slot_in_utc(after: datetime, expected: datetime) -> None:
    assert payday_slot(after, settings()) == expected


def test_payday_slots_follow_the_wall_clock_across_dst() -> None:
    ny = settings("America/New_York")
    # 1 March is still EST (09:00 = 14:00 UTC); 15 March is EDT (09:00 = 13:00 UTC).
    assert payday_slot(utc(2026, 2, 20), ny) == utc(2026, 3, 1, 14)
    assert payday_slot(utc(2026, 3, 2), ny) == utc(2026, 3, 15, 13)
    # 1 November is the autumn change day in 2026 (02:00 back): 09:00 is EST already.
    assert payday_slot(utc(2026, 10, 20), ny) == utc(2026, 11, 1, 14)


@pytest.mark.parametrize(("tz", "after", "expected"), [
    ("Asia/Kathmandu", utc(2026, 5, 2), utc(2026, 5, 15, 3, 15)),  # +05:45
    ("Pacific/Chatham", utc(2026, 1, 2), utc(2026, 1, 14, 19, 15)),  # +13:45 in summer: the day before
    ("Australia/Lord_Howe", utc(2026, 7, 2), utc(2026, 7, 14, 22, 30)),  # +10:30 in its winter
    ("Australia/Lord_Howe", utc(2026, 12, 2), utc(2026, 12, 14, 22)),  # +11:00 (a 30-minute DST)
    ("America/St_Johns", utc(2026, 7, 2), utc(2026, 7, 15, 11, 30)),  # -02:30
    ("Pacific/Kiritimati", utc(2026, 6, 30, 20), utc(2026, 7, 14, 19)),  # +14: already the 1st, 10:00 there
    ("Pacific/Pago_Pago", utc(2026, 6, 30, 20), utc(2026, 7, 1, 20)),  # -11
])
def test_payday_slots_in_odd_time_zones(tz: str, after: datetime, expected: datetime) -> None:
    slot = payday_slot(after, settings(tz))
    assert slot == expected
    local = slot.astimezone(ZoneInfo(tz))
    assert (local.day, local.hour, local.minute) in ((1, 9, 0), (15, 9, 0))


def test_a_slot_in_quiet_hours_moves_to_their_end_and_an_unknown_zone_is_utc() -> None:
    assert payday_slot(utc(2026, 3, 2), settings("UTC", ("08:00", "10:30"))) == utc(2026, 3, 15, 10, 30)
    assert payday_slot(utc(2026, 3, 2), settings("UTC", ("22:00", "07:00"))) == utc(2026, 3, 15, 9)
    berlin = settings("Europe/Berlin", ("21:00", "09:30"))  # across midnight, ends after 09:00
    assert payday_slot(utc(2026, 3, 2), berlin) == utc(2026, 3, 15, 8, 30)  # 09:30 CET
    assert payday_slot(utc(2026, 3, 2), settings("Mars/Olympus_Mons")) == utc(2026, 3, 15, 9)


@given(after=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2040, 12, 31),
                          timezones=st.just(UTC)),
       tz=st.sampled_from(ODD_ZONES))
def test_the_slot_is_the_first_payday_0900_after_any_instant(after: datetime, tz: str) -> None:
    zone = ZoneInfo(tz)
    slot = payday_slot(after, settings(tz))
    local = slot.astimezone(zone)
    assert slot > after
    assert local.day in (1, 15) and (local.hour, local.minute) == (9, 0)
    # No 1st/15th 09:00 lies between ``after`` and the slot.
    day = after.astimezone(zone).date() - timedelta(days=1)
    while day < local.date():
        if day.day in (1, 15):
            candidate = datetime.combine(day, datetime.min.time().replace(hour=9), tzinfo=zone)
            assert not after < candidate < slot
        day += timedelta(days=1)


# --- what a case is owed -----------------------------------------------------------------------------


def test_a_soft_decline_is_owed_one_retry_at_the_next_slot_with_a_day_of_window_left() -> None:
    now = utc(2026, 3, 10, 12)
    assert first_payday_retry(case(now - timedelta(hours=1)), settings(), now) == utc(2026, 3, 15, 9)
    # First failure 10 days ago: the window ends on the 14th, the 15th is too late.
    assert first_payday_retry(case(now - timedelta(days=10)), settings(), now) is None
    # Exactly 24 h before the window ends is still allowed; a minute later is not.
    first = utc(2026, 3, 15, 9) - timedelta(days=13)
    assert first_payday_retry(case(first), settings(), now) == utc(2026, 3, 15, 9)
    assert first_payday_retry(case(first - timedelta(minutes=1)), settings(), now) is None


@pytest.mark.parametrize("kw", [{"decline_class": "card_hard"}, {"decline_class": "authentication"},
                                {"decline_class": "unknown"}, {"status": CaseStatus.RECOVERED},
                                {"payment_id": None}])
def test_no_payday_retry_for_anything_but_an_open_soft_decline(kw: dict[str, object]) -> None:
    now = utc(2026, 3, 10, 12)
    assert first_payday_retry(case(now, **kw), settings(), now) is None  # type: ignore[arg-type]


def test_no_payday_retry_when_smart_retry_is_off() -> None:
    now = utc(2026, 3, 10, 12)
    assert first_payday_retry(case(now), settings(smart_retry=False), now) is None


# --- verdicts ------------------------------------------------------------------------------------------

NOW = utc(2026, 3, 15, 9)
FRESH = NOW - timedelta(days=2)
GO_ = ("go", None)


@pytest.mark.parametrize(("kind", "step", "kw", "cfg", "card_saved", "expected"), [
    (KIND_RETRY, STEP_PAYDAY, {}, {}, False, GO_),
    (KIND_RETRY, STEP_PAYDAY, {"holdout": True}, {}, False, ("skip", "holdout")),
    (KIND_ATTACH, STEP_CARD, {"holdout": True}, {}, False, ("skip", "holdout")),
    (KIND_RETRY, STEP_MANUAL, {"holdout": True}, {}, False, ("go", None)),
    (KIND_RETRY, STEP_PAYDAY, {"status": CaseStatus.RECOVERED}, {}, False, ("skip", "case_closed")),
    (KIND_ATTACH, STEP_CARD, {"first": NOW - timedelta(days=15)}, {}, False, ("skip", "window_passed")),
    (KIND_ATTACH, STEP_CARD, {}, {"smart_retry": False}, False, ("skip", "smart_retry_off")),
    (KIND_RETRY, STEP_MANUAL, {}, {"smart_retry": False}, False, ("go", None)),
    (KIND_RETRY, STEP_PAYDAY, {"decline_class": "card_hard"}, {}, False, ("skip", "not_soft_decline")),
    (KIND_RETRY, STEP_PAYDAY, {"decline_class": "authentication"}, {}, False, ("skip", "not_soft_decline")),
    (KIND_RETRY, STEP_PAYDAY, {}, {}, True, ("skip", "card_updated")),
    (KIND_ATTACH, STEP_CARD, {"decline_class": "card_hard"}, {}, False, ("go", None)),  # a new card fixes it
    (KIND_RETRY, STEP_PAYDAY, {"first": NOW - timedelta(days=13, minutes=1)}, {}, False,
     ("skip", "window_closing")),
    (KIND_RETRY, STEP_PAYDAY, {}, {"quiet_hours": QuietHours(start="08:00", end="10:00")}, False,
     ("defer", utc(2026, 3, 15, 10))),
])
def test_claim_verdicts(kind: str, step: str, kw: dict[str, object], cfg: dict[str, object],
                        card_saved: bool, expected: object) -> None:
    first = kw.pop("first", FRESH)
    c = case(first, **kw)  # type: ignore[arg-type]
    assert claim_verdict(kind, step, c, CreatorSettings(**cfg), NOW, card_saved=card_saved) == expected  # type: ignore[arg-type]


def test_quiet_hours_that_end_past_the_deadline_skip_the_retry() -> None:
    c = case(NOW - timedelta(days=12, hours=12))  # deadline: NOW + 12 h
    quiet = CreatorSettings(quiet_hours=QuietHours(start="08:00", end="23:00"))
    verdict = claim_verdict(KIND_RETRY, STEP_PAYDAY, c, quiet, NOW, card_saved=False)
    assert verdict == ("skip", "window_closing")


def facts(**kw: object) -> PaymentFacts:
    base: dict[str, object] = {"status": "open", "retryable": True, "paid": False}
    return PaymentFacts(**{**base, **kw})  # type: ignore[arg-type]


def test_attach_verdicts() -> None:
    assert attach_verdict(facts(), "past_due", "payt_new") == ("go", None)
    assert attach_verdict(None, "active", "payt_new") == ("go", None)
    assert attach_verdict(facts(paid=True, status="paid"), "active", "payt_new") == ("skip", "already_paid")
    same_card = facts(payment_method_id="payt_new")
    assert attach_verdict(same_card, "past_due", "payt_new") == ("skip", "already_attached")
    assert attach_verdict(facts(), "canceled", "payt_new") == ("skip", "membership_canceled")


def test_retry_verdicts_wait_for_whops_own_attempts() -> None:
    now = utc(2026, 3, 10, 12)
    c = case(now - timedelta(hours=1))  # the window ends on the 24th; the deadline is the 23rd, 11:00
    s = settings()
    assert retry_verdict(STEP_PAYDAY, c, s, now, facts()) == GO_
    assert retry_verdict(STEP_PAYDAY, c, s, now, facts(paid=True)) == ("skip", "already_paid")
    assert retry_verdict(STEP_PAYDAY, c, s, now, facts(retryable=False)) == ("skip", "not_retryable")
    over = facts(next_payment_attempt_at=now - timedelta(hours=1))  # Whop's own attempts are over
    assert retry_verdict(STEP_PAYDAY, c, s, now, over) == GO_
    # Whop retries on its own tomorrow: the next slot after that, the 15th, is inside the window...
    tomorrow = facts(next_payment_attempt_at=now + timedelta(days=1))
    assert retry_verdict(STEP_PAYDAY, c, s, now, tomorrow) == ("defer", utc(2026, 3, 15, 9))
    # ...but Whop's attempt on the 16th leaves only the 1st, after this window.
    later = facts(next_payment_attempt_at=utc(2026, 3, 16))
    assert retry_verdict(STEP_PAYDAY, c, s, now, later) == ("skip", "whop_still_retrying")
    # A creator's retry does not wait for Whop's schedule.
    assert retry_verdict(STEP_MANUAL, c, s, now, later) == GO_


def test_retry_deadline_is_a_day_before_the_window_ends() -> None:
    assert retry_deadline(case(FRESH)) == FRESH + timedelta(days=13)


# --- keys -------------------------------------------------------------------------------------------


def test_keys_are_stable_per_membership_and_card_and_per_payment() -> None:
    assert attach_key("biz_1", "mem_1", "payt_a") == "card:biz_1:mem_1:payt_a"
    assert attach_key("biz_1", "mem_1", "payt_b") != attach_key("biz_1", "mem_1", "payt_a")
    assert attach_key("biz_2", "mem_1", "payt_a") != attach_key("biz_1", "mem_1", "payt_a")
    assert retry_key("biz_1", "pay_1") == "retry:biz_1:pay_1"
    odd = retry_key("biz_1", "pay_" + "é" * 300)  # never sent as is: a digest, printable, short
    assert odd.startswith("retry:sha256:") and len(odd) <= 255 and odd.isascii() and odd.isprintable()
