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

from dataclasses import dataclass
from datetime import datetime, timedelta

from chalicelib.attribution import window_passed
from chalicelib.models import Case, CaseStatus, CreatorSettings


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


def next_action_at(case: Case, settings: CreatorSettings, done_steps: set[str]) -> datetime | None:
    """When the scheduler next owes this case something: its next reminder, else its expiry."""
    if case.status is not CaseStatus.OPEN:
        return None
    pending = [case.first_failure_at + timedelta(days=d) for d in sorted(settings.reminder_offsets_days)
               if f"r{d}" not in done_steps]
    expiry = case.window_ends_at
    return min([*pending, expiry])
