"""Creator KPIs: pure arithmetic over per-status case counts (no database, no HTTP).

Definitions (repeated in the OpenAPI description, and recomputable from the CSV export of the
same window):

- a case belongs to a window when its ``first_failure_at`` lies in it: the current window is
  ``[now - N days, now]``, the previous one ``[now - 2N days, now - N days)``;
- ``total_cases``: every case of the window, whatever its status (open, recovered, cancelled,
  expired);
- ``active_cases``: those still ``open``; ``recoveries``: those ``recovered``;
- ``recovery_rate`` = ``recoveries / total_cases`` (0 when there are no cases): open, expired
  and cancelled cases are all in the denominator. It moves while young cases can still recover;
- ``matured_cases`` / ``matured_recoveries`` / ``matured_recovery_rate``: the same over the
  window's matured cases only (``first_failure_at + 14 days ≤ now``, whatever the status): the
  rate that compares like with like between two windows. ``maturing_cases`` /
  ``maturing_recoveries``: the younger cases, reported apart ("maturing: N cases, M recovered so
  far");
- ``recovered_revenue``: the sum of ``recovered_amount_minor`` of recovered cases, per case
  currency (the CSV's ``currency`` column), in minor units, sorted by currency;
- ``incentive_cost``: the stored cost of the free days granted to the window's cases, per case
  currency;
- ``by_decline_class``: cases, recoveries and recovery rate per decline class (same definitions);
- ``lift``: treated versus holdout over the window's matured, eligible cases (``chalicelib.lift``);
- ``by_recovery_source``: the window's recoveries and recovered revenue by who gets
  the credit (the CSV's ``recovered_by``: ``rebound_retry``, ``after_click``, ``other``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from chalicelib import lift as lift_math
from chalicelib.models import DECLINE_CLASSES, RECOVERY_WINDOW


class Money(BaseModel):
    model_config = ConfigDict(frozen=True)

    currency: str = Field(pattern=r"^[a-z]{3}$", examples=["usd"])
    amount_minor: int = Field(ge=0, description="Amount in the currency's minor unit (cents for usd).")


class SignedMoney(BaseModel):
    model_config = ConfigDict(frozen=True)

    currency: str = Field(pattern=r"^[a-z]{3}$", examples=["usd"])
    amount_minor: int = Field(description="Minor units; negative when the holdout did better.")


class MoneyInterval(BaseModel):
    model_config = ConfigDict(frozen=True)

    currency: str = Field(pattern=r"^[a-z]{3}$", examples=["usd"])
    interval: list[int] = Field(min_length=2, max_length=2, description="[low, high] in minor units.")


_ELIGIBLE = ("matured (first_failure_at + 14 days ≤ now, whatever the status), opened by Rebound "
             "before their window ended, and assigned while the holdout was above 0%")


class LiftFigures(BaseModel):
    """Treated versus holdout over the window's matured, eligible cases (matured cases only)."""

    model_config = ConfigDict(frozen=True)

    status: Literal["ok", "insufficient_data"] = Field(description=(
        "insufficient_data until each arm has 30 matured, eligible cases: then only the counts are "
        "given."))
    treated_cases: int = Field(ge=0, description=f"Cases not held out: {_ELIGIBLE}.")
    holdout_cases: int = Field(ge=0, description=(
        f"Cases in the holdout (no automatic message): {_ELIGIBLE}. Contaminated ones included."))
    treated_rate: float | None = Field(ge=0, le=1, description="Recovered / matured, treated arm.")
    holdout_rate: float | None = Field(ge=0, le=1, description="Recovered / matured, holdout arm.")
    incremental_rate: float | None = Field(ge=-1, le=1, description="treated_rate − holdout_rate.")
    interval: list[float] | None = Field(min_length=2, max_length=2, description=(
        "95% interval [low, high] of incremental_rate: Newcombe's hybrid score method (Wilson "
        "score intervals of each arm, no continuity correction)."))
    incremental_revenue: list[SignedMoney] = Field(description=(
        "Per currency: treated recovered revenue − holdout recovered revenue × treated/holdout "
        "matured cases."))
    net_incremental_revenue: list[SignedMoney] = Field(description=(
        "incremental_revenue − the incentive cost of the treated matured cases, per currency."))
    incremental_revenue_interval: list[MoneyInterval] | None = Field(description=(
        "95% interval of incremental_revenue per currency (delta method over the cases: "
        "n_t·(ȳ_t − ȳ_h) ± 1.96·n_t·sqrt(s²_t/n_t + s²_h/n_h), y = a case's recovered amount in "
        "that currency, s² the sample variances; rounded outwards); null while withheld."))
    net_incremental_revenue_interval: list[MoneyInterval] | None = Field(description=(
        "incremental_revenue_interval less the treated cases' incentive cost; null while withheld."))
    contaminated_cases: int = Field(ge=0, description=(
        "Holdout cases counted above that a creator nudged by hand (they stay in the holdout: "
        "intention to treat)."))
    maturing_cases: int = Field(ge=0, description=(
        "Eligible cases of the window whose 14 days have not elapsed: left out of every rate."))
    maturing_recoveries: int = Field(ge=0, description="Of those, recovered so far.")
    not_eligible_cases: int = Field(ge=0, description=(
        "Matured cases of the window left out: opened after their window ended (a late first "
        "webhook: never messaged), or opened while no holdout was on."))


class ClassFigures(BaseModel):
    model_config = ConfigDict(frozen=True)

    cases: int = Field(ge=0)
    recoveries: int = Field(ge=0)
    recovery_rate: float = Field(ge=0, le=1, description="recoveries / cases; 0 when there are none.")


class ByDeclineClass(BaseModel):
    model_config = ConfigDict(frozen=True)

    card_hard: ClassFigures
    card_soft: ClassFigures
    authentication: ClassFigures
    unknown: ClassFigures


# --- by recovery source (smart retry) --------------------------------------------------------------


class SourceFigures(BaseModel):
    model_config = ConfigDict(frozen=True)

    recoveries: int = Field(ge=0)
    recovered_revenue: list[Money] = Field(description="Per case currency, sorted by currency.")


class ByRecoverySource(BaseModel):
    """Recovered cases by ``recovered_by``: ``rebound_retry`` (the success followed Rebound's
    card attach or payment retry), ``after_click`` (the member followed a Rebound link first),
    ``other`` (Whop's own retry or the member alone)."""

    model_config = ConfigDict(frozen=True)

    rebound_retry: SourceFigures
    after_click: SourceFigures
    other: SourceFigures


def recovery_sources(rows: Iterable[StatusCount]) -> ByRecoverySource:
    """Fold aggregate rows into the recoveries per source (a recovered row without a source
    counts as ``other``: a case recovered before sources were recorded)."""
    counts: dict[str, list[tuple[str, int]]] = {name: [] for name in ByRecoverySource.model_fields}
    recoveries = dict.fromkeys(counts, 0)
    for row in rows:
        if row.status != "recovered":
            continue
        source = row.recovered_by if row.recovered_by in counts else "other"
        recoveries[source] += row.cases
        if row.currency is not None:
            counts[source].append((row.currency, row.recovered_minor))
    return ByRecoverySource.model_validate({
        name: SourceFigures(recoveries=recoveries[name],
                            recovered_revenue=_money(lift_math.sum_by_currency(pairs)))
        for name, pairs in counts.items()})


class KpiFigures(BaseModel):
    model_config = ConfigDict(frozen=True)

    total_cases: int = Field(ge=0, description="Cases whose first failure lies in the window, any status.")
    active_cases: int = Field(ge=0, description="Of those, cases still open.")
    recoveries: int = Field(ge=0, description="Of those, cases recovered.")
    recovery_rate: float = Field(ge=0, le=1, description=(
        "recoveries / total_cases; 0 when there are no cases. Open, expired and cancelled cases "
        "all count in the denominator, so it moves while young cases can still recover."))
    matured_cases: int = Field(ge=0, description=(
        "Cases of the window whose 14 days have elapsed (first_failure_at + 14 days ≤ now), any status."))
    matured_recoveries: int = Field(ge=0, description="Of those, cases recovered.")
    matured_recovery_rate: float | None = Field(ge=0, le=1, description=(
        "matured_recoveries / matured_cases (matured cases only): compare windows with this. Null "
        "when the window has no matured case yet (it is still maturing)."))
    maturing_cases: int = Field(ge=0, description="Cases of the window younger than 14 days.")
    maturing_recoveries: int = Field(ge=0, description="Of those, recovered so far.")
    recovered_revenue: list[Money] = Field(description=(
        "Sum of recovered_amount_minor of the recovered cases, per case currency, sorted by currency."))
    incentive_cost: list[Money] = Field(description=(
        "Cost of the free days granted to these cases (days × renewal price / billing period), per "
        "case currency."))
    by_decline_class: ByDeclineClass = Field(description="The same counts per decline class.")
    lift: LiftFigures
    by_recovery_source: ByRecoverySource = Field(description=(
        "Recoveries and recovered revenue by who gets the credit (the CSV's recovered_by)."))


class KpiWindow(KpiFigures):
    window_days: int = Field(ge=1, le=365)


class Kpis(KpiWindow):
    previous: KpiWindow = Field(description="The same fields for the window before this one.")


@dataclass(frozen=True)
class StatusCount:
    """One aggregate row: the cases of one status and currency, and what was recovered of them."""

    status: str
    currency: str | None
    cases: int
    recovered_minor: int = 0
    decline_class: str = "unknown"
    holdout: bool = False
    matured: bool = False
    incentive_cost_minor: int = 0
    in_lift: bool = False  # opened in time, while a holdout was on (lift.in_lift)
    contaminated: int = 0  # of these cases, holdout cases a creator nudged by hand
    recovered_squares: int = 0  # Σ recovered_amount_minor² of the recovered ones
    recovered_by: str | None = None  # rebound_retry | after_click | other (recovered only)


def _money(pairs: Iterable[tuple[str, int]]) -> list[Money]:
    return [Money(currency=c, amount_minor=a) for c, a in pairs]


def _signed(pairs: Iterable[tuple[str, int]]) -> list[SignedMoney]:
    return [SignedMoney(currency=c, amount_minor=a) for c, a in pairs]


def _arm(rows: list[StatusCount]) -> lift_math.Arm:
    recovered = [r for r in rows if r.status == "recovered"]
    return lift_math.Arm(
        matured=sum(r.cases for r in rows),
        recovered=sum(r.cases for r in recovered),
        revenue=tuple(lift_math.sum_by_currency([(r.currency, r.recovered_minor) for r in recovered])),
        incentive_cost=tuple(lift_math.sum_by_currency([(r.currency, r.incentive_cost_minor) for r in rows])),
        revenue_squares=tuple(lift_math.sum_by_currency(
            [(r.currency, r.recovered_squares) for r in recovered])))


def _intervals(pairs: list[tuple[str, tuple[int, int]]]) -> list[MoneyInterval]:
    return [MoneyInterval(currency=c, interval=[low, high]) for c, (low, high) in pairs]


def lift_figures(rows: Iterable[StatusCount]) -> LiftFigures:
    rows = list(rows)
    eligible = [r for r in rows if r.in_lift]
    matured = [r for r in eligible if r.matured]
    young = [r for r in eligible if not r.matured]
    result = lift_math.lift(_arm([r for r in matured if not r.holdout]),
                            _arm([r for r in matured if r.holdout]))
    ok = result.status == "ok"
    return LiftFigures(
        status="ok" if ok else "insufficient_data", treated_cases=result.treated_cases,
        holdout_cases=result.holdout_cases, treated_rate=result.treated_rate,
        holdout_rate=result.holdout_rate, incremental_rate=result.incremental_rate,
        interval=list(result.interval) if result.interval else None,
        incremental_revenue=_signed(result.incremental_revenue),
        net_incremental_revenue=_signed(result.net_incremental_revenue),
        incremental_revenue_interval=_intervals(result.incremental_revenue_interval) if ok else None,
        net_incremental_revenue_interval=_intervals(result.net_incremental_revenue_interval) if ok else None,
        contaminated_cases=sum(r.contaminated for r in matured if r.holdout),
        maturing_cases=sum(r.cases for r in young),
        maturing_recoveries=sum(r.cases for r in young if r.status == "recovered"),
        not_eligible_cases=sum(r.cases for r in rows if r.matured and not r.in_lift))


def figures(rows: Iterable[StatusCount]) -> KpiFigures:
    """Fold aggregate rows of one window into its figures."""
    rows = list(rows)
    total = active = recoveries = matured = matured_recoveries = 0
    revenue: dict[str, int] = {}
    classes: dict[str, list[int]] = {name: [0, 0] for name in DECLINE_CLASSES}
    for row in rows:
        total += row.cases
        if row.matured:
            matured += row.cases
            matured_recoveries += row.cases if row.status == "recovered" else 0
        counts = classes.setdefault(row.decline_class, [0, 0])
        counts[0] += row.cases
        if row.status == "open":
            active += row.cases
        elif row.status == "recovered":
            recoveries += row.cases
            counts[1] += row.cases
            if row.currency is not None:
                revenue[row.currency] = revenue.get(row.currency, 0) + row.recovered_minor
    by_class = ByDeclineClass.model_validate({
        name: ClassFigures(cases=n, recoveries=r, recovery_rate=lift_math.rate(r, n))
        for name, (n, r) in classes.items() if name in DECLINE_CLASSES})
    return KpiFigures(
        total_cases=total, active_cases=active, recoveries=recoveries,
        recovery_rate=recoveries / total if total else 0.0, matured_cases=matured,
        matured_recoveries=matured_recoveries,
        matured_recovery_rate=matured_recoveries / matured if matured else None,
        maturing_cases=total - matured, maturing_recoveries=recoveries - matured_recoveries,
        recovered_revenue=[Money(currency=c, amount_minor=revenue[c]) for c in sorted(revenue)],
        incentive_cost=_money(lift_math.sum_by_currency(
            [(r.currency, r.incentive_cost_minor) for r in rows])),
        by_decline_class=by_class, lift=lift_figures(rows), by_recovery_source=recovery_sources(rows))


def report(window_days: int, current: Iterable[StatusCount], previous: Iterable[StatusCount]) -> Kpis:
    """The KPI response for a window of ``window_days`` and the window before it."""
    before = KpiWindow(window_days=window_days, **dict(figures(previous)))
    return Kpis(window_days=window_days, previous=before, **dict(figures(current)))


# --- cohorts and time to recovery ------------------------------------------------------------------


class CurvePoint(BaseModel):
    model_config = ConfigDict(frozen=True)

    day: int = Field(ge=0, le=14)
    recovered_share: float = Field(ge=0, le=1, description="Kaplan–Meier share recovered within `day` days.")


class Cohort(BaseModel):
    model_config = ConfigDict(frozen=True)

    week: str = Field(pattern=r"^\d{4}-W\d{2}$", examples=["2026-W48"],
                      description="ISO week of the first failure, in the company's time zone.")
    week_start: date = Field(description="The Monday that starts the week.")
    cases: int = Field(ge=0)
    recovered: int = Field(ge=0)
    expired: int = Field(ge=0)
    cancelled: int = Field(ge=0)
    open: int = Field(ge=0)
    recovery_rate: float = Field(ge=0, le=1, description="recovered / cases (0 when there are none).")
    recovered_revenue: list[Money]
    by_decline_class: ByDeclineClass
    maturing: bool = Field(description="Its newest case is younger than 14 days: figures still move.")


class Cohorts(BaseModel):
    model_config = ConfigDict(frozen=True)

    weeks: int = Field(ge=1, le=52)
    timezone: str
    cohorts: list[Cohort] = Field(description="One per ISO week, oldest first, empty weeks included.")
    time_to_recovery: list[CurvePoint] = Field(description=(
        "Days 0…14 after the first failure: Kaplan–Meier share recovered, over the cases of these "
        "cohorts; open cases are censored at their age, expired and cancelled ones count as not "
        "recovered within the window."))
    curve_cases: int = Field(ge=0, description="Cases the curve is computed from.")


@dataclass(frozen=True)
class CaseTimes:
    """One case, as much as cohorts and the curve need."""

    first_failure_at: datetime
    status: str
    recovered_at: datetime | None = None
    currency: str | None = None
    recovered_minor: int = 0
    decline_class: str = "unknown"


def cohort_start(now: datetime, tz: ZoneInfo, weeks: int) -> datetime:
    """The first instant of the oldest week shown (its Monday, 00:00 company time)."""
    local = now.astimezone(tz).date()
    monday = local - timedelta(days=local.weekday()) - timedelta(weeks=weeks - 1)
    return datetime.combine(monday, time(0), tzinfo=tz)


def cohorts(rows: Iterable[CaseTimes], now: datetime, tz: ZoneInfo, weeks: int) -> Cohorts:
    start = cohort_start(now, tz, weeks)
    buckets: dict[date, list[CaseTimes]] = {
        (start + timedelta(weeks=i)).date(): [] for i in range(weeks)}
    observations: list[lift_math.Observation] = []
    for row in rows:
        local = row.first_failure_at.astimezone(tz).date()
        monday = local - timedelta(days=local.weekday())
        if monday not in buckets:
            continue
        buckets[monday].append(row)
        recovered_after = ((row.recovered_at - row.first_failure_at).total_seconds() / 86400
                           if row.recovered_at is not None else None)
        age = (now - row.first_failure_at).total_seconds() / 86400
        observations.append(lift_math.observation(age, row.status, recovered_after))
    out = []
    for monday, members in buckets.items():
        window = figures(StatusCount(status=m.status, currency=m.currency, cases=1,
                                     recovered_minor=m.recovered_minor, decline_class=m.decline_class)
                         for m in members)
        newest = max((m.first_failure_at for m in members), default=None)
        iso = monday.isocalendar()
        out.append(Cohort(
            week=f"{iso.year}-W{iso.week:02d}", week_start=monday, cases=len(members),
            recovered=sum(m.status == "recovered" for m in members),
            expired=sum(m.status == "expired" for m in members),
            cancelled=sum(m.status == "cancelled" for m in members),
            open=sum(m.status == "open" for m in members), recovery_rate=window.recovery_rate,
            recovered_revenue=window.recovered_revenue, by_decline_class=window.by_decline_class,
            maturing=newest is not None and now - newest < RECOVERY_WINDOW))
    curve = lift_math.kaplan_meier(observations)
    return Cohorts(weeks=weeks, timezone=str(tz), cohorts=out, curve_cases=len(observations),
                   time_to_recovery=[CurvePoint(day=d, recovered_share=v) for d, v in enumerate(curve)])
