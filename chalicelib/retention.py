"""Retention (docs/privacy.md): what the reminder tick forgets, in small batches, every run.

- Member-specific URLs (payment-fix ``recovery_url``, billing ``manage_url``) in the payloads of
  events received more than ``RETENTION_DAYS`` ago (default 180) and on cases closed that long
  ago. The rest of an event stays: cases are re-folded from their membership's events, and ids,
  amounts, codes and times are what KPIs and the timeline need.
- Click rows (``recovery_actions`` of kind ``link_click``) older than ``RETENTION_DAYS``; the case
  keeps its aggregate ``link_clicks`` and ``last_clicked_at``.
- Rate-limit windows that ended more than a day ago (the API deletes its own company's old
  windows now and then; a company that stops calling would otherwise leave them forever).

Each purge is a SECURITY DEFINER function (migration 0008) that works across tenants and returns
a count; each batch is its own short transaction, so a purge never holds locks for long, and a
tick does at most ``max_batches`` of each so retention never crowds out reminders. A failure here
is logged and counted, never raised: reminders matter more than tidying.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from chalicelib.config import get_config
from chalicelib.db import Database, service_transaction
from chalicelib.observability import count, logger

RATE_LIMIT_RETENTION = timedelta(days=1)
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


def _drain(function: str, before: datetime, db: Database | None, batch: int, max_batches: int) -> int:
    total = 0
    for _ in range(max_batches):
        with service_transaction(db) as tx:
            # The function name comes from the fixed list in purge(), never from input.
            done = int(tx.scalar(f"SELECT {function}(:before, :limit)", before=before, limit=batch))
        total += done
        if done < batch:
            break
    return total


def purge(now: datetime, db: Database | None = None, days: int | None = None,
          batch: int = BATCH, max_batches: int = MAX_BATCHES) -> Purged:
    """Purge what is older than the retention setting; raises on database errors."""
    cutoff = now - timedelta(days=get_config().RETENTION_DAYS if days is None else days)
    return Purged(
        event_urls=_drain("purge_event_urls", cutoff, db, batch, max_batches),
        case_urls=_drain("purge_case_urls", cutoff, db, batch, max_batches),
        click_rows=_drain("purge_click_rows", cutoff, db, batch, max_batches),
        rate_limits=_drain("purge_rate_limits", now - RATE_LIMIT_RETENTION, db, batch, max_batches),
    )


def purge_expired(now: datetime, db: Database | None = None) -> Purged:
    """The tick's entry point: purge, count, log; never raise."""
    try:
        purged = purge(now, db)
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
