"""``GET …/kpis?window_days=N``: recovery figures for the last N days and the N days before;
``GET …/kpis/cohorts?weeks=N``: weekly cohorts and the time-to-recovery curve."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

from chalicelib import measurement
from chalicelib.api import CreatorContext
from chalicelib.api.schemas.kpis import CohortQuery, KpiQuery
from chalicelib.kpis import Cohorts, Kpis, cohort_start, cohorts, report
from chalicelib.store import settings as settings_store
from chalicelib.tenancy import tenant_transaction


def get_kpis(ctx: CreatorContext) -> Kpis:
    query = ctx.parse_query(KpiQuery)
    with tenant_transaction(ctx.company_id) as tx:
        current, previous = measurement.kpi_groups(tx, now=ctx.now, window=timedelta(days=query.window_days))
    return report(query.window_days, current, previous)


def get_cohorts(ctx: CreatorContext) -> Cohorts:
    query = ctx.parse_query(CohortQuery)
    with tenant_transaction(ctx.company_id) as tx:
        tz = ZoneInfo(settings_store.get_settings(tx).timezone)
        rows = measurement.cohort_cases(tx, since=cohort_start(ctx.now, tz, query.weeks), now=ctx.now)
    return cohorts(rows, ctx.now, tz, query.weeks)
