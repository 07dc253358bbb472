"""The 14-day attribution rule, by event time only (never by when Rebound processed anything).

A success recovers a case iff it happened no earlier than the first failure and no later than
14 days after it, both ends inclusive.
"""

from __future__ import annotations

from datetime import datetime

from chalicelib.models import window_end


def recovers(first_failure_at: datetime, success_at: datetime) -> bool:
    """True iff ``first_failure_at <= success_at <= first_failure_at + 14 days``."""
    return first_failure_at <= success_at <= window_end(first_failure_at)


def window_passed(first_failure_at: datetime, at: datetime) -> bool:
    """True iff ``at`` is after the last instant at which a success could still recover."""
    return at > window_end(first_failure_at)
