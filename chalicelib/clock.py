"""The clock the edges act on: the database's, once the process clock agrees with it.

Leases and due times decide who may act and when, across every Lambda instance: they must all
read one clock, and the database is the one they share. The consumer and the reminder tick (the
edges that read a clock; everything below them takes ``now`` as an argument) ask the database
for its time before they act. When the process clock differs from it by more than ``MAX_SKEW``
the host is broken (NTP gone, a VM resumed): they refuse to act, log an error with the skew and
count ``ClockSkewRefused`` — the consumer hands its batch back to SQS, the tick skips its run
(``TickMissingAlarm`` then fires). Otherwise they act on the database's time.

Leases themselves are written and compared in SQL (``clock_timestamp()``/``now()``), so even an
executor handed a wrong ``now`` by its caller cannot hold a row longer than ``claims.LEASE``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from chalicelib.db_pool import Database
from chalicelib.observability import count, logger
from chalicelib.tenancy import service_transaction

# NTP keeps hosts within milliseconds; two minutes of disagreement is a broken clock, and is
# still well inside every lease (5 min) and the webhook signature's tolerance (5 min).
MAX_SKEW = timedelta(minutes=2)

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


class ClockSkew(Exception):
    """The process clock disagrees with the database's by more than MAX_SKEW."""

    def __init__(self, skew: timedelta) -> None:
        super().__init__(f"process clock differs from the database's by {skew.total_seconds():.0f} s")
        self.skew = skew


def database_now(db: Database | None = None) -> datetime:
    with service_transaction(db) as tx:
        value: datetime = tx.scalar("SELECT clock_timestamp()")
    return value


def checked_now(role: str, clock: Clock = system_clock, db: Database | None = None) -> datetime:
    """The database's time, after checking ``clock`` against it (``role`` names the edge in the
    log: ``consumer`` or ``tick``). Raises ClockSkew beyond MAX_SKEW, logged and counted."""
    local = clock()
    database = database_now(db)
    skew = local - database
    if abs(skew) > MAX_SKEW:
        count("ClockSkewRefused")
        logger.error("clock differs from the database's by more than the bound; refusing to act",
                     extra={"role": role, "skew_s": round(skew.total_seconds(), 1),
                            "bound_s": MAX_SKEW.total_seconds()})
        raise ClockSkew(skew)
    return database
