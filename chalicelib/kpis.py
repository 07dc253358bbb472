"""Creator KPIs: pure arithmetic over per-status case counts (no database, no HTTP).

Definitions (repeated in the OpenAPI description, and recomputable from the CSV export of the
same window):

- a case belongs to a window when its ``first_failure_at`` lies in it: the current window is
  ``[now - N days, now]``, the previous one ``[now - 2N days, now - N days)``;
- ``total_cases``: every case of the window, whatever its status (open, recovered, cancelled,
  expired);
- ``active_cases``: those still ``open``; ``recoveries``: those ``recovered``;
- ``recovery_rate`` = ``recoveries / total_cases`` (0 when there are no cases): open, expired
  and cancelled cases are all in the denominator;
- ``recovered_revenue``: the sum of ``recovered_amount_minor`` of recovered cases, per case
  currency (the CSV's ``currency`` column), in minor units, sorted by currency.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class Money(BaseModel):
    model_config = ConfigDict(frozen=True)

    currency: str = Field(pattern=r"^[a-z]{3}$", examples=["usd"])
    amount_minor: int = Field(ge=0, description="Amount in the currency's minor unit (cents for usd).")


class KpiFigures(BaseModel):
    model_config = ConfigDict(frozen=True)

    total_cases: int = Field(ge=0, description="Cases whose first failure lies in the window, any status.")
    active_cases: int = Field(ge=0, description="Of those, cases still open.")
    recoveries: int = Field(ge=0, description="Of those, cases recovered.")
    recovery_rate: float = Field(ge=0, le=1, description=(
        "recoveries / total_cases; 0 when there are no cases. Open, expired and cancelled cases "
        "all count in the denominator."))
    recovered_revenue: list[Money] = Field(description=(
        "Sum of recovered_amount_minor of the recovered cases, per case currency, sorted by currency."))


class Kpis(KpiFigures):
    window_days: int = Field(ge=1, le=365)
    previous: KpiFigures = Field(description="The same figures for the window before this one.")


@dataclass(frozen=True)
class StatusCount:
    """One aggregate row: the cases of one status and currency, and what was recovered of them."""

    status: str
    currency: str | None
    cases: int
    recovered_minor: int = 0


def figures(rows: Iterable[StatusCount]) -> KpiFigures:
    """Fold aggregate rows of one window into its figures."""
    total = active = recoveries = 0
    revenue: dict[str, int] = {}
    for row in rows:
        total += row.cases
        if row.status == "open":
            active += row.cases
        elif row.status == "recovered":
            recoveries += row.cases
            if row.currency is not None:
                revenue[row.currency] = revenue.get(row.currency, 0) + row.recovered_minor
    return KpiFigures(
        total_cases=total, active_cases=active, recoveries=recoveries,
        recovery_rate=recoveries / total if total else 0.0,
        recovered_revenue=[Money(currency=c, amount_minor=revenue[c]) for c in sorted(revenue)])


def report(window_days: int, current: Iterable[StatusCount], previous: Iterable[StatusCount]) -> Kpis:
    """The KPI response for a window of ``window_days`` and the window before it."""
    return Kpis(window_days=window_days, previous=figures(previous), **figures(current).model_dump())
