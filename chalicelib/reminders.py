"""What a case is owed, and when: pure functions of the case, the company's settings and ``now``.

| moment                         | owed                                                         |
|--------------------------------|--------------------------------------------------------------|
| the case opens                 | T+0 nudge on each enabled channel (push, DM); incentive if   |
|                                | the company grants free days                                 |
| first failure + each offset    | one reminder on each enabled channel (missed offsets collapse)|
| first failure + 14 days        | nothing more: the case expires                               |
Nothing is owed to a case that is not open, or whose 14-day window has passed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from chalicelib.attribution import window_passed
from chalicelib.messages import SOFT_FIRST_REMINDER_DELAY_DAYS
from chalicelib.models import Case, CaseStatus, CreatorSettings, later

DEFAULT_OFFSETS = CreatorSettings().reminder_offsets_days


@dataclass(frozen=True)
class PlannedEffect:
    kind: str  # "nudge" | "reminder" | "incentive"
    step: str  # "t0", "r2" (reminder at offset 2 days), "incentive"
    channel: str | None  # "push" | "dm" | None (incentive)
    due_at: datetime

    def idempotency_key(self, case_id: str) -> str:
        return f"{case_id}:{self.step}:{self.channel or self.kind}"


def channels(settings: CreatorSettings) -> list[str]:
    return [name for name, on in (("push", settings.enable_push), ("dm", settings.enable_dm)) if on]


def initial_effects(case: Case, settings: CreatorSettings, now: datetime) -> list[PlannedEffect]:
    """The effects a newly opened case owes right away."""
    if case.status is not CaseStatus.OPEN or window_passed(case.first_failure_at, now):
        return []
    owed = [PlannedEffect("nudge", "t0", ch, now) for ch in channels(settings)]
    if settings.incentive_days > 0:
        owed.append(PlannedEffect("incentive", "incentive", None, now))
    return owed


def _offset_at(case: Case, days: int) -> datetime:
    return later(case.first_failure_at, timedelta(days=days))  # saturates: never an OverflowError


def reminder_offsets(case: Case, settings: CreatorSettings) -> tuple[int, ...]:
    """The case's reminder days. Soft declines often clear on their own, so with the default
    offsets their first reminder comes a day later; offsets a creator chose are kept as they are."""
    offsets = settings.reminder_offsets_days
    if case.decline_class == "card_soft" and offsets == DEFAULT_OFFSETS:
        first = offsets[0] + SOFT_FIRST_REMINDER_DELAY_DAYS
        return (first, *(d for d in offsets[1:] if d > first))
    return offsets


def due_reminder(case: Case, settings: CreatorSettings, last_offset: int | None,
                 now: datetime) -> int | None:
    """The reminder offset owed now, if any. Missed offsets collapse into the latest due one,
    so a case is never sent two reminders in one tick."""
    if case.status is not CaseStatus.OPEN or window_passed(case.first_failure_at, now):
        return None
    due = [d for d in reminder_offsets(case, settings)
           if _offset_at(case, d) <= now and (last_offset is None or d > last_offset)]
    return max(due) if due else None


def reminder_effects(case: Case, settings: CreatorSettings, offset: int,
                     now: datetime) -> list[PlannedEffect]:
    return [PlannedEffect("reminder", f"r{offset}", ch, now) for ch in channels(settings)]


def covered_offset(case: Case, settings: CreatorSettings, now: datetime) -> int | None:
    """The reminder offsets a case had already passed when it opened (a late or backdated
    failure): its T+0 nudge covers them, so no reminder goes out with (or before) the T+0."""
    passed = [d for d in reminder_offsets(case, settings) if _offset_at(case, d) <= now]
    return max(passed) if passed else None


def planned_offset(case: Case, settings: CreatorSettings, reminded: Iterable[int],
                   t0_at: datetime | None) -> int | None:
    """A case's reminder progress as its ledger shows it: the latest offset a reminder
    was sent or is owed for (``reminded``), or that its T+0 covered, i.e. had already passed when
    the T+0 went out (``t0_at``: when it did, or now when it is owed now; None: no T+0)."""
    done = set(reminded)
    if t0_at is not None:
        done |= {d for d in reminder_offsets(case, settings) if _offset_at(case, d) <= t0_at}
    return max(done) if done else None


def next_action_at(case: Case, settings: CreatorSettings, last_offset: int | None) -> datetime | None:
    """When the scheduler next owes this case something: its next reminder, else its expiry."""
    if case.status is not CaseStatus.OPEN:
        return None
    pending = [_offset_at(case, d) for d in reminder_offsets(case, settings)
               if last_offset is None or d > last_offset]
    return min([*pending, case.window_ends_at])


# --- sending rules --------------------------------------------------------------------------------

FREQUENCY_CAP = timedelta(hours=20)  # automatic messages per member per channel
_UTC = ZoneInfo("UTC")


def company_zone(name: str) -> ZoneInfo:
    """The company's timezone, or UTC when the stored name no longer loads (tzdata dropped or
    renamed it): quiet hours an hour off beat one company's nudges never going out at all."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return _UTC


def quiet_until(now: datetime, settings: CreatorSettings) -> datetime | None:
    """If ``now`` falls in the company's quiet hours (its timezone), when they end; else None."""
    if settings.quiet_hours is None:
        return None
    tz = company_zone(settings.timezone)
    local = now.astimezone(tz)
    start = time.fromisoformat(settings.quiet_hours.start)
    end = time.fromisoformat(settings.quiet_hours.end)
    t = local.time().replace(tzinfo=None)
    if start == end:
        return None
    inside = start <= t < end if start < end else (t >= start or t < end)
    if not inside:
        return None
    end_day = local.date() if t < end else local.date() + timedelta(days=1)
    return datetime.combine(end_day, end, tzinfo=tz).astimezone(now.tzinfo)

