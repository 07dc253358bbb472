"""``GET …/kpis?window_days=N``: recovery figures for the last N days and the N days before."""

from __future__ import annotations

from datetime import timedelta

from chalicelib import store
from chalicelib.api import CreatorContext
from chalicelib.api.schemas import KpiQuery
from chalicelib.db import tenant_transaction
from chalicelib.kpis import Kpis, report


def get_kpis(ctx: CreatorContext) -> Kpis:
    query = ctx.parse_query(KpiQuery)
    with tenant_transaction(ctx.company_id) as tx:
        current, previous = store.kpi_counts(tx, now=ctx.now, window=timedelta(days=query.window_days))
    return report(query.window_days, current, previous)
