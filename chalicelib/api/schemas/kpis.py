"""``GET …/kpis`` and ``GET …/kpis/cohorts``: their query parameters (the figures themselves are
``chalicelib.kpis``' models)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class KpiQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    window_days: int = Field(default=30, ge=1, le=365, description="Window length in days (1–365).")


class CohortQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    weeks: int = Field(default=12, ge=1, le=52, description="How many ISO weeks, up to this one (1–52).")
