"""Holdout lift, cohorts and time to recovery: pure arithmetic (no database, no HTTP).

**Lift** compares the window's matured, eligible cases (``case_flags``): treated (not held out)
against the holdout (cases that got no automatic message).
- **matured**: the case's 14-day window has elapsed, ``first_failure_at + 14 days ≤ now``,
  whatever its status. A recovery closes a case at once but a non-recovery only at day 14, so
  counting young closed cases would fill the denominators mostly with recoveries;
- **eligible**: Rebound opened the case (``opened_at``) before its window ended (a case first
  heard of later was never messaged, whatever its arm), and the holdout was on (> 0%) when it
  opened (``holdout_percent_at_open``): before that every case was treated, and mixing those in
  would compare different periods. A holdout case a creator nudged by hand stays in the holdout
  (intention to treat) and is counted in ``contaminated_cases``;
- rates: recovered / matured in each arm; ``incremental_rate`` = treated − holdout;
- ``interval``: 95% interval of that difference by **Newcombe's hybrid score method** (method 10
  of Newcombe 1998, "Interval estimation for the difference between independent proportions"),
  built from each arm's **Wilson score** interval; no continuity correction;
- ``incremental_revenue`` per currency = treated recovered revenue − holdout recovered revenue ×
  (treated matured / holdout matured): what the treated cases recovered beyond what they would
  have at the holdout's rate. It may be negative;
- ``net_incremental_revenue`` = incremental revenue − the incentive cost of the treated matured
  cases, per currency;
- ``incremental_revenue_interval``: a 95% interval per currency by the **delta method**: with
  ``y`` a case's recovered amount in that currency (0 otherwise), incremental revenue is
  ``n_t·(ȳ_t − ȳ_h)``, whose variance is ``n_t²·(s²_t/n_t + s²_h/n_h)`` (sample variances). It is
  what the treated cases would have recovered beyond the holdout's rate, give or take chance;
  the net interval is the same one less the incentive cost actually spent;
- with fewer than 30 matured cases in either arm every figure is withheld
  (``status: insufficient_data``, counts only).

**Time to recovery**: Kaplan–Meier over the cases' first 14 days. A recovery at ``t`` days after
the first failure is an event; an open case is censored at its age; expired and cancelled cases
did not recover in the window (they stay at risk through day 14 with no event).
``curve[d]`` = 1 − S(d): the share recovered within ``d`` days, d = 0…14.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

Z95: Final = 1.959963984540054  # the 97.5% quantile of the standard normal
MIN_MATURED_PER_ARM: Final = 30
WINDOW_DAYS: Final = 14


def matured(first_failure_at: datetime, now: datetime) -> bool:
    """The case's window has elapsed (whatever its status)."""
    return first_failure_at + timedelta(days=WINDOW_DAYS) <= now


def opened_in_time(first_failure_at: datetime, opened_at: datetime) -> bool:
    """Rebound opened the case while a success could still recover it (it could act)."""
    return opened_at <= first_failure_at + timedelta(days=WINDOW_DAYS)


def in_lift(first_failure_at: datetime, opened_at: datetime, holdout_percent_at_open: int | None) -> bool:
    """Eligible for the lift: opened in time, while a holdout was on."""
    return opened_in_time(first_failure_at, opened_at) and (holdout_percent_at_open or 0) > 0


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (0, 1 for n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(s1: int, n1: int, s2: int, n2: int, z: float = Z95) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 − p2 (method 10, no continuity correction)."""
    p1, p2 = s1 / n1, s2 / n2
    l1, u1 = wilson(s1, n1, z)
    l2, u2 = wilson(s2, n2, z)
    diff = p1 - p2
    low = diff - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = diff + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return max(-1.0, low), min(1.0, high)


@dataclass(frozen=True)
class Arm:
    """The matured cases of one arm: how many, how many recovered, and money per currency."""

    matured: int = 0
    recovered: int = 0
    revenue: tuple[tuple[str, int], ...] = ()  # (currency, recovered minor units)
    incentive_cost: tuple[tuple[str, int], ...] = ()
    revenue_squares: tuple[tuple[str, int], ...] = ()  # (currency, Σ recovered amount²)


@dataclass(frozen=True)
class Lift:
    status: str  # "ok" | "insufficient_data"
    treated_cases: int
    holdout_cases: int
    treated_rate: float | None
    holdout_rate: float | None
    incremental_rate: float | None
    interval: tuple[float, float] | None
    incremental_revenue: list[tuple[str, int]]
    net_incremental_revenue: list[tuple[str, int]]
    incremental_revenue_interval: list[tuple[str, tuple[int, int]]]
    net_incremental_revenue_interval: list[tuple[str, tuple[int, int]]]


def _sample_variance(total: float, squares: float, n: int) -> float:
    """Σy and Σy² over n cases → the sample variance (n − 1 in the denominator)."""
    if n < 2:
        return 0.0
    return max(0.0, (squares - total * total / n) / (n - 1))


def revenue_interval(treated: Arm, holdout: Arm, currency: str, z: float = Z95) -> tuple[float, float]:
    """The delta-method interval of ``n_t·(ȳ_t − ȳ_h)`` in one currency (module doc)."""
    nt, nh = treated.matured, holdout.matured
    t_sum, h_sum = dict(treated.revenue).get(currency, 0), dict(holdout.revenue).get(currency, 0)
    t_sq = dict(treated.revenue_squares).get(currency, 0)
    h_sq = dict(holdout.revenue_squares).get(currency, 0)
    estimate = nt * (t_sum / nt - h_sum / nh)
    se = nt * math.sqrt(_sample_variance(t_sum, t_sq, nt) / nt + _sample_variance(h_sum, h_sq, nh) / nh)
    return estimate - z * se, estimate + z * se


def lift(treated: Arm, holdout: Arm) -> Lift:
    if treated.matured < MIN_MATURED_PER_ARM or holdout.matured < MIN_MATURED_PER_ARM:
        return Lift("insufficient_data", treated.matured, holdout.matured, None, None, None, None, [], [],
                    [], [])
    t_rate = treated.recovered / treated.matured
    h_rate = holdout.recovered / holdout.matured
    scale = treated.matured / holdout.matured
    t_rev, h_rev, cost = dict(treated.revenue), dict(holdout.revenue), dict(treated.incentive_cost)
    incremental = {c: round(t_rev.get(c, 0) - h_rev.get(c, 0) * scale) for c in set(t_rev) | set(h_rev)}
    net = {c: incremental.get(c, 0) - cost.get(c, 0) for c in set(incremental) | set(cost)}
    bounds = {c: revenue_interval(treated, holdout, c) for c in set(t_rev) | set(h_rev)}
    interval = {c: (math.floor(lo), math.ceil(hi)) for c, (lo, hi) in bounds.items()}
    net_interval = {c: (low - cost.get(c, 0), high - cost.get(c, 0))
                    for c, (low, high) in ((c, interval.get(c, (0, 0))) for c in set(interval) | set(cost))}
    return Lift("ok", treated.matured, holdout.matured, t_rate, h_rate, t_rate - h_rate,
                newcombe(treated.recovered, treated.matured, holdout.recovered, holdout.matured),
                sorted(incremental.items()), sorted(net.items()), sorted(interval.items()),
                sorted(net_interval.items()))


# --- time to recovery ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """One case: days from its first failure to recovery (event) or to censoring."""

    days: float
    recovered: bool


def kaplan_meier(observations: Iterable[Observation], horizon: int = WINDOW_DAYS) -> list[float]:
    """1 − S(d) for d = 0…horizon: the share recovered within d days (events before censoring
    at tied times)."""
    obs = sorted(observations, key=lambda o: (o.days, not o.recovered))
    at_risk = len(obs)
    survival = 1.0
    steps: list[tuple[float, float]] = []  # (time, survival just after it)
    i = 0
    while i < len(obs):
        t = obs[i].days
        events = removed = 0
        while i < len(obs) and obs[i].days == t:
            events += obs[i].recovered
            removed += 1
            i += 1
        if events and at_risk:
            survival *= 1 - events / at_risk
            steps.append((t, survival))
        at_risk -= removed
    curve: list[float] = []
    for day in range(horizon + 1):
        s = 1.0
        for t, value in steps:
            if t <= day:
                s = value
        curve.append(round(1 - s, 6))
    return curve


def observation(first_failure_days_ago: float, status: str,
                recovered_after_days: float | None) -> Observation:
    """A case as a KM observation (see the module doc for the censoring rules)."""
    if status == "recovered" and recovered_after_days is not None:
        return Observation(max(0.0, recovered_after_days), True)
    if status == "open":
        return Observation(max(0.0, min(first_failure_days_ago, WINDOW_DAYS)), False)
    return Observation(float(WINDOW_DAYS), False)  # expired or cancelled: no recovery in the window


def rate(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def sum_by_currency(pairs: Sequence[tuple[str | None, int]]) -> list[tuple[str, int]]:
    out: dict[str, int] = {}
    for currency, amount in pairs:
        if currency is not None and amount:
            out[currency] = out.get(currency, 0) + amount
    return sorted(out.items())
