"""Domain models shared by the pure modules (cases, attribution, reminders) and the adapters.

``WhopEvent`` is the one internal shape of a Whop webhook, whatever payload generation it came in
(v1 legacy, v1 dated, v5, v2). It carries ids, amounts, codes and times only: never an email,
name, username, phone or card detail, so it is also what the ``events`` table stores.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

RECOVERY_WINDOW = timedelta(days=14)

# Event times Rebound accepts: Whop did not exist before 2015, and a sender's clock a
# little ahead is tolerated, but not a day. Anything outside is a poison record, never a case: a
# year-9999 date used to overflow the window arithmetic, and year 3000 opened a case for ever.
EARLIEST_EVENT_TIME = datetime(2015, 1, 1, tzinfo=UTC)
MAX_EVENT_LEAD = timedelta(days=1)
LATEST_TIME = datetime.max.replace(tzinfo=UTC)


def event_time_problem(occurred_at: datetime, received_at: datetime) -> str | None:
    """Why an event time is unusable ("past", "future"), or None when it is sane."""
    if occurred_at < EARLIEST_EVENT_TIME:
        return "past"
    if occurred_at - received_at > MAX_EVENT_LEAD:  # a difference, so no sum can overflow
        return "future"
    return None


def later(at: datetime, delta: timedelta) -> datetime:
    """``at + delta``, saturating at the last representable instant instead of raising."""
    try:
        return at + delta
    except OverflowError:
        return LATEST_TIME if delta >= timedelta(0) else datetime.min.replace(tzinfo=UTC)

# ISO 4217 currencies whose minor unit is not 1/100 (Stripe's lists, which Whop charges through).
ZERO_DECIMAL_CURRENCIES = frozenset({
    "bif", "clp", "djf", "gnf", "isk", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd",
    "vuv", "xaf", "xof", "xpf",
})
THREE_DECIMAL_CURRENCIES = frozenset({"bhd", "iqd", "jod", "kwd", "lyd", "omr", "tnd"})


def currency_decimals(currency: str) -> int:
    """How many decimals a currency's minor unit has (amounts are stored in minor units)."""
    if currency in ZERO_DECIMAL_CURRENCIES:
        return 0
    return 3 if currency in THREE_DECIMAL_CURRENCIES else 2


# Characters that Postgres refuses in text/jsonb (NUL) or that SQS refuses in a message (outside
# XML 1.0's #x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF, which also takes
# lone surrogates that a JSON "\ud800" escape can produce). Stripped, never stored or queued.
_UNSTORABLE = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def clean_text(value: str) -> str:
    """``value`` without the characters Postgres or SQS would refuse."""
    return _UNSTORABLE.sub("", value)


# What no creator-typed text may hold: lone surrogates (Postgres cannot store them: a
# 500), U+FFFE/U+FFFF and the other noncharacters, and the bidi embeddings, overrides and isolates
# that make text read differently from what it is ("Trojan Source"). C0/C1 controls besides tab
# and line breaks, and DEL, too. Refused with a 400 naming the field, never stripped.
_SURROGATE = re.compile("[\ud800-\udfff]")
_NONCHARACTER = re.compile("[\ufdd0-\ufdef\ufffe\uffff]|[\U0001fffe-\U0001ffff\U0002fffe-\U0002ffff"
                           "\U0003fffe-\U0003ffff\U000efffe-\U000effff\U000ffffe-\U000fffff"
                           "\U0010fffe-\U0010ffff]")
_BIDI_CONTROL = re.compile("[\u202a-\u202e\u2066-\u2069]")
_CONTROL_CHARACTER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_LINE_BREAK = re.compile("[\t\n\r]")


def unsafe_text(value: str, *, multiline: bool = False) -> str | None:
    """Why ``value`` may not be stored as creator text (a message for a 400), or None.

    ``multiline`` allows tab and LF (message bodies); elsewhere they are control characters too."""
    if _CONTROL_CHARACTER.search(value) or (not multiline and ("\t" in value or "\n" in value)):
        return "must not contain control characters"
    if _SURROGATE.search(value):
        return "must not contain lone surrogates (invalid Unicode)"
    if _NONCHARACTER.search(value):
        return "must not contain Unicode noncharacters such as U+FFFE or U+FFFF"
    if _BIDI_CONTROL.search(value):
        return "must not contain bidirectional override, embedding or isolate characters"
    return None


class EventType(StrEnum):
    PAYMENT_FAILED = "payment.failed"
    PAYMENT_REQUIRES_ACTION = "payment.requires_action"
    PAYMENT_SUCCEEDED = "payment.succeeded"
    MEMBERSHIP_ACTIVATED = "membership.activated"
    MEMBERSHIP_DEACTIVATED = "membership.deactivated"
    MEMBERSHIP_CANCEL_AT_PERIOD_END_CHANGED = "membership.cancel_at_period_end_changed"
    # A member saved a payment method. It belongs to a member, not a membership: it
    # never folds into a case; it owes an attach to the member's open cases (chalicelib.recovery).
    SETUP_INTENT_SUCCEEDED = "setup_intent.succeeded"


FAILURE_TYPES = frozenset({EventType.PAYMENT_FAILED, EventType.PAYMENT_REQUIRES_ACTION})

# Why a membership went invalid, as far as the payload tells: only a member's own cancellation
# closes a case; a deactivation caused by the failed payment leaves it open (they can still fix it).
DeactivationCause = Literal["member_cancelled", "payment_failed", "unknown"]

# Why a payment failed, as far as Rebound acts on it (``messages.decline_class``).
DeclineClass = Literal["card_hard", "card_soft", "authentication", "unknown"]
DECLINE_CLASSES: tuple[DeclineClass, ...] = ("card_hard", "card_soft", "authentication", "unknown")


class WhopEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    webhook_id: str = Field(min_length=1, max_length=255)
    type: EventType
    company_id: str = Field(min_length=1, max_length=255)
    membership_id: str | None = None
    user_id: str | None = None
    payment_id: str | None = None
    amount_minor: int | None = Field(default=None, ge=0)
    currency: str | None = Field(default=None, pattern=r"^[a-z]{3}$")
    decline_code: str | None = None
    failure_message: str | None = Field(default=None, max_length=500)
    recovery_url: str | None = None
    manage_url: str | None = None
    cancel_at_period_end: bool | None = None
    # The saved payment method of a setup_intent.succeeded (Whop's id, never card data).
    payment_method_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,100}$")
    deactivation_cause: DeactivationCause | None = None
    occurred_at: AwareDatetime
    occurred_at_inferred: bool = False  # the payload had no usable time: receipt time stands in
    received_at: AwareDatetime
    api_version: str | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        # Every text field, before its own checks: a NUL in a signed webhook must not make an
        # acknowledged event unstorable (it would be retried into the DLQ and lost).
        return clean_text(value) if isinstance(value, str) else value

    @property
    def is_failure(self) -> bool:
        return self.type in FAILURE_TYPES


def window_end(first_failure_at: datetime) -> datetime:
    """The last instant (inclusive) at which a success still recovers a case."""
    return later(first_failure_at, RECOVERY_WINDOW)


class CaseStatus(StrEnum):
    OPEN = "open"
    RECOVERED = "recovered"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Case(BaseModel):
    """One failure episode of a membership, as folded from its events (see ``cases.fold``)."""

    model_config = ConfigDict(frozen=True)

    seq: int = Field(ge=1)  # 1 for the membership's first episode, 2 for the next, …
    company_id: str
    membership_id: str
    user_id: str | None = None
    status: CaseStatus
    first_failure_at: AwareDatetime
    last_failure_at: AwareDatetime
    failure_count: int = Field(ge=1)
    payment_id: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    decline_code: str | None = None
    failure_reason: str | None = None
    recovery_url: str | None = None
    manage_url: str | None = None
    recovered_at: AwareDatetime | None = None
    recovered_amount_minor: int | None = None
    recovered_currency: str | None = None
    closed_at: AwareDatetime | None = None  # when it stopped being open (recovered/cancelled/expired)
    close_reason: str | None = None  # e.g. "payment_succeeded", "member_cancelled", "window_passed"
    # The webhook ids of the failures in this episode, in the order the fold applied them. The
    # first opened the episode; a stored case is matched to its episode by these (identity), never
    # by ``seq`` (position), so a late event that re-numbers episodes cannot swap them.
    failure_ids: tuple[str, ...] = ()
    # Measurement (issue 10). The fold sets ``failure_type`` (the latest failure's event type, for
    # the decline class); the others are assigned once when the case row is inserted and only
    # ever read back from it (``store.cases.case_from_row``).
    failure_type: EventType | None = None
    decline_class: DeclineClass = "unknown"
    holdout: bool = False
    experiment_id: str | None = None
    variant: str | None = None

    @property
    def window_ends_at(self) -> datetime:
        return window_end(self.first_failure_at)

    @field_validator("experiment_id", mode="before")
    @classmethod
    def _uuid_text(cls, value: object) -> object:
        return str(value) if value is not None else None  # the row holds a uuid


class QuietHours(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["22:00"])
    end: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["08:00"])


class CreatorSettings(BaseModel):
    """A company's settings as the domain sees them (defaults for a company never seen)."""

    model_config = ConfigDict(frozen=True)

    enable_push: bool = True
    enable_dm: bool = True
    incentive_days: int = Field(default=0, ge=0, le=30)
    reminder_offsets_days: tuple[int, ...] = (2, 4)
    timezone: str = "UTC"
    quiet_hours: QuietHours | None = None
    push_experience_id: str | None = None
    holdout_percent: int = Field(default=0, ge=0, le=50)
    smart_retry: bool = True  # smart retry: attach saved cards, one payday retry for soft declines
    updated_at: datetime | None = None
