"""Copy experiments (``…/experiments``): the create body, its variants' copy rules, and the
read-out of each variant."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from chalicelib.messages import MAX_DM_BODY, MAX_PUSH_BODY, MAX_PUSH_TITLE, check_copy
from chalicelib.models import unsafe_text

_VARIANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,39}$"


# field → (max characters, must contain {link}, one line only)
_COPY_RULES = {"push_title": (MAX_PUSH_TITLE, False, True), "push_body": (MAX_PUSH_BODY, True, False),
               "dm_body": (MAX_DM_BODY, True, False)}


class VariantBody(BaseModel):
    """One variant. Copy it leaves out is the default copy (so a variant without copy is control)."""

    model_config = ConfigDict(strict=True, extra="forbid", title="Variant")

    name: str = Field(pattern=_VARIANT_NAME, examples=["control"],
                      description="1–40 letters, digits, space, _ . -; unique in the experiment.")
    weight: int = Field(ge=0, le=1000, description="Relative share of new cases (integers; sum > 0).")
    push_title: str | None = Field(default=None, description=(
        f"Push title, one line, at most {MAX_PUSH_TITLE} characters; placeholders allowed."))
    push_body: str | None = Field(default=None, description=(
        f"Push text, at most {MAX_PUSH_BODY} characters; must contain {{link}}."))
    dm_body: str | None = Field(default=None, description=(
        f"DM text (plain text: markdown characters are shown as typed), at most {MAX_DM_BODY} "
        "characters; must contain {link}."))

    @field_validator("push_title", "push_body", "dm_body")
    @classmethod
    def _copy(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        limit, needs_link, one_line = _COPY_RULES[str(info.field_name)]
        problem = check_copy(value, field=str(info.field_name), max_chars=limit, requires_link=needs_link,
                             single_line=one_line)
        if problem:
            raise ValueError(problem)
        return value


class ExperimentCreate(BaseModel):
    """``POST …/experiments`` body. Placeholders: {amount}, {days_left}, {link}, {product}."""

    model_config = ConfigDict(strict=True, extra="forbid", title="ExperimentCreate")

    name: str = Field(min_length=1, max_length=100, description="What the creator calls it.")
    variants: list[VariantBody] = Field(min_length=2, max_length=4)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be visible text without control characters")
        problem = unsafe_text(value)
        if problem is not None:
            raise ValueError(problem)
        return value.strip()

    @field_validator("variants")
    @classmethod
    def _variants(cls, variants: list[VariantBody]) -> list[VariantBody]:
        names = [v.name.lower() for v in variants]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique")
        if sum(v.weight for v in variants) <= 0:
            raise ValueError("variant weights must sum to more than 0")
        return variants


class VariantResult(BaseModel):
    name: str
    cases: int = Field(ge=0, description="Cases assigned to the variant.")
    sends: int = Field(ge=0, description="Messages sent to them (nudges, reminders, manual nudges).")
    clicks: int = Field(ge=0, description="Cases whose tracked link was clicked at least once.")
    ctr: float | None = Field(ge=0, le=1, description="clicks / cases sent at least one message.")
    matured_cases: int = Field(ge=0, description=(
        "Matured cases only: first_failure_at + 14 days ≤ now (whatever the status), opened by "
        "Rebound before their window ended."))
    recoveries: int = Field(ge=0, description="Of the matured cases, those recovered (within 14 days).")
    recovery_rate: float | None = Field(ge=0, le=1, description=(
        "recoveries / matured_cases (matured cases only); null without matured cases."))
    prob_best: float | None = Field(ge=0, le=1, description=(
        "Descriptive only (decides nothing): posterior probability that this variant has the best "
        "recovery rate (Beta-binomial, uniform priors; Monte Carlo with a fixed seed). Null until "
        "every variant has a matured case."))
    expected_loss: float | None = Field(ge=0, le=1, description=(
        "Descriptive only: expected recovery-rate shortfall from the best variant if this one is "
        "chosen. Null until every variant has a matured case."))
    maturing_cases: int = Field(ge=0, description=(
        "Cases opened in time whose 14 days have not elapsed: left out of every rate."))
    maturing_recoveries: int = Field(ge=0, description="Of those, recovered so far.")


class Experiment(BaseModel):
    model_config = ConfigDict(title="Experiment")

    id: str
    name: str
    status: Literal["running", "stopped"]
    variants: list[VariantBody]
    created_at: AwareDatetime
    stopped_at: AwareDatetime | None
    results: list[VariantResult] = Field(description="Per variant, in the order of `variants`.")
    winner: str | None = Field(description=(
        "Named only by the sequential rule: with ≥ 30 matured cases per variant, the variant whose "
        "always-valid 95% confidence sequence against every other variant lies above 0 "
        "(Bonferroni over the pairs). Its false-winner rate stays ≤ 5% however often it is read."))
    winner_reason: str = Field(description="Why there is (or is not yet) a winner, in plain words.")
    decision: Literal["collecting", "winner", "no_winner", "sample_ratio_mismatch"] = Field(description=(
        "collecting: running, no decision yet; winner: see winner; no_winner: every pair differs by "
        "less than 10 pts, or stopped without a winner; sample_ratio_mismatch: the cases are not "
        "split as the weights say (chi-square p < 0.001), so no result can be trusted."))
    decision_reason: str = Field(description=(
        "The decision in plain words, with what the method still needs (matured cases per variant "
        "to detect +10 pts)."))
    cases_needed_per_variant: int | None = Field(ge=0, description=(
        "Matured cases per variant at which a true +10 pts gap would be named about 80% of the "
        "time, at the current pooled recovery rate."))
    srm_p_value: float | None = Field(ge=0, le=1, description=(
        "Sample-ratio check: chi-square p-value of the cases per variant against the weights; null "
        "while some variant expects fewer than 5 cases."))


class ExperimentList(BaseModel):
    items: list[Experiment] = Field(description="Newest first (at most 50).")
