"""Retention (docs/privacy.md): what the reminder tick forgets, in small batches, every run.

- Member-specific URLs (payment-fix ``recovery_url``, billing ``manage_url``) in the payloads of
  events received more than ``RETENTION_DAYS`` ago (default 180) and on cases closed that long
  ago. The rest of an event stays: cases are re-folded from their membership's events, and ids,
  amounts, codes and times are what KPIs and the timeline need.
- Click rows (``recovery_actions`` of kind ``link_click``) older than ``RETENTION_DAYS``; the case
  keeps its aggregate ``link_clicks`` and ``last_clicked_at``.
- Rate-limit windows that ended more than a day ago (the API deletes its own company's old
  windows now and then; a company that stops calling would otherwise leave them forever).

The purges run in the database, as the role ``rebound_retention``, through one narrow function
(migration 0014, ``run_retention``): the runtime cannot call the purges themselves, the cut-offs
come from the DATABASE clock, nothing younger than 15 days is ever purged, and one call does at
most one batch of 500 of each kind (each call its own short transaction, so a purge never holds
locks for long). The tick calls it up to ``MAX_BATCHES`` times, and once even when it ran out of
time for reminders, so retention is never skipped. A failure is logged and counted, never
raised: reminders matter more than tidying.
"""

from __future__ import annotations

from dataclasses import dataclass

from chalicelib.config import get_config
from chalicelib.db_pool import Database
from chalicelib.observability import count, logger
from chalicelib.tenancy import service_transaction

BATCH = 500
MAX_BATCHES = 4


@dataclass
class Purged:
    event_urls: int = 0
    case_urls: int = 0
    click_rows: int = 0
    rate_limits: int = 0

    @property
    def total(self) -> int:
        return self.event_urls + self.case_urls + self.click_rows + self.rate_limits


def purge(db: Database | None = None, days: int | None = None, batch: int = BATCH,
          max_batches: int = MAX_BATCHES) -> Purged:
    """Purge what is older than the retention setting (by the database clock), at most
    ``max_batches`` batches of each kind; raises on database errors."""
    keep = get_config().RETENTION_DAYS if days is None else days
    total = Purged()
    for _ in range(max_batches):
        with service_transaction(db) as tx:
            row = tx.one("SELECT event_urls, case_urls, click_rows, rate_limits"
                         " FROM run_retention(:days, :batch)", days=keep, batch=batch)
        done = Purged(**{k: int(v) for k, v in (row or {}).items()})
        total = Purged(total.event_urls + done.event_urls, total.case_urls + done.case_urls,
                       total.click_rows + done.click_rows, total.rate_limits + done.rate_limits)
        if max(done.event_urls, done.case_urls, done.click_rows, done.rate_limits) < batch:
            break  # nothing of any kind filled a batch: nothing is left
    return total


def purge_expired(db: Database | None = None, max_batches: int = MAX_BATCHES) -> Purged:
    """The tick's entry point: purge, count, log; never raise."""
    try:
        purged = purge(db, max_batches=max_batches)
    except Exception:  # noqa: BLE001 - retention is retried next tick; the tick's own work stands
        count("RetentionFailed")
        logger.exception("retention purge failed; retried next tick")
        return Purged()
    count("RetentionPurged", purged.total)
    if purged.total:
        logger.info("retention purge", extra={"event_urls": purged.event_urls,
                                              "case_urls": purged.case_urls,
                                              "click_rows": purged.click_rows,
                                              "rate_limits": purged.rate_limits})
    return purged
