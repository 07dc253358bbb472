"""Request and response models of the creator API.

The handlers validate with these models and serialise through them, and ``chalicelib.openapi``
generates the OpenAPI document from the very same classes, so the document cannot drift from
what the code accepts and returns.

Request bodies are strict (``"true"`` is not a boolean, ``5.0`` not an integer) and refuse
unknown fields. Query strings arrive as text, so query models convert ``"30"`` to 30 but refuse
anything that is not a whole number in range; unknown query parameters are ignored.

Text parameters and every text field of a body refuse control characters (NUL, C0, DEL, C1), lone
surrogates, Unicode noncharacters (U+FFFE, U+FFFF, …) and bidi overrides, embeddings and isolates
(``models.unsafe_text``) with a 400 naming the field: a NUL or a lone surrogate would reach Postgres,
which cannot store it, and none has a meaning in an id, a search, a cursor, a name or a message.
Rejecting (rather than stripping) keeps "what was searched" equal to "what was typed". Query text
also refuses U+FFFD, which is what undecodable bytes become before the handler sees them.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from chalicelib.kpis import KpiFigures, Kpis, Money
from chalicelib.messages import MAX_DM_BODY, MAX_PUSH_BODY, MAX_PUSH_TITLE, check_copy
from chalicelib.models import CaseStatus, DeclineClass, unsafe_text
from chalicelib.recovery_policy import RecoveredBy, RetryReason

__all__ = ["KpiFigures", "Kpis", "Money"]

HHMM = r"^([01]\d|2[0-3]):[0-5]\d$"
_TIMEZONE = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$")
StatusFilter = Literal["open", "recovered", "cancelled", "expired"]


def no_control_characters(value: str) -> str:
    problem = unsafe_text(value)
    if problem is not None:
        raise ValueError(problem)
    if "\ufffd" in value:
        # What a server makes of bytes that are not UTF-8: not what the caller typed (issue 20).
        raise ValueError("must be valid UTF-8 text")
    return value


PlainText = Annotated[str, AfterValidator(no_control_characters)]


# --- errors -------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. bad_request, not_found.")
    message: str = Field(description="Human-readable explanation.")
    fields: dict[str, str] | None = Field(
        default=None, description="Per-field messages for a 400 (path of the field → what is wrong).")


class ErrorResponse(BaseModel):
    """Every error of every route has this shape."""

    error: ErrorBody


# --- settings -----------------------------------------------------------------------------------


class PermissionGap(BaseModel):
    """A Whop permission the app lacks for this company (issue 18: smart retry)."""

    permission: str = Field(examples=["member:payment_methods:manage"])
    since: AwareDatetime = Field(description="When Whop refused for it (the latest refusal).")
    message: str = Field(description="What the creator should do.")


class QuietHoursBody(BaseModel):
    """No automatic message goes out between ``start`` and ``end`` (company time zone)."""

    model_config = ConfigDict(strict=True, extra="forbid", title="QuietHours")

    start: str = Field(pattern=HHMM, examples=["22:00"], description="HH:MM, 24-hour clock.")
    end: str = Field(pattern=HHMM, examples=["08:00"],
                     description="HH:MM, 24-hour clock; may be earlier than start (spans midnight).")

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHoursBody:
        if self.start == self.end:
            raise ValueError("start and end must differ")
        return self


def _drop_null_defaults(schema: dict[str, Any]) -> None:
    # Omitting a field keeps its stored value; the schema should not claim the default is null.
    for prop in schema.get("properties", {}).values():
        if prop.get("default", 0) is None and "anyOf" not in prop:
            prop.pop("default")


def _not_nullable(json_schema: dict[str, Any]) -> WithJsonSchema:
    return WithJsonSchema(json_schema)


class SettingsUpdate(BaseModel):
    """``PUT …/settings`` body. Omitted fields keep their current value; read-only ones are ignored."""

    model_config = ConfigDict(strict=True, extra="forbid", title="SettingsUpdate",
                              json_schema_extra=_drop_null_defaults)

    enable_push: Annotated[bool | None, _not_nullable({"type": "boolean"})] = Field(
        default=None, description="Send Whop push notifications.")
    enable_dm: Annotated[bool | None, _not_nullable({"type": "boolean"})] = Field(
        default=None, description="Send Whop direct messages.")
    incentive_days: Annotated[int | None, _not_nullable({"type": "integer", "minimum": 0, "maximum": 30})] = (
        Field(default=None, ge=0, le=30, description="Free days granted when a case opens (0 = none)."))
    reminder_offsets_days: Annotated[list[int] | None, _not_nullable(
        {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 13},
         "minItems": 1, "maxItems": 5, "uniqueItems": True})] = Field(
        default=None, min_length=1, max_length=5,
        description="Days after the first failure on which reminders go out: 1–5 distinct values in "
                    "1–13, stored sorted.")
    timezone: Annotated[str | None, _not_nullable({"type": "string", "minLength": 1, "maxLength": 64})] = (
        Field(default=None, min_length=1, max_length=64, examples=["Europe/Berlin"],
              description="IANA time zone name used for quiet hours."))
    quiet_hours: QuietHoursBody | None = Field(default=None, description="null turns quiet hours off.")
    push_experience_id: str | None = Field(
        default=None, pattern=r"^exp_[A-Za-z0-9_-]{1,64}$",
        description="Experience pushes go through; null = the company's experience of this app.")
    holdout_percent: Annotated[int | None,
                               _not_nullable({"type": "integer", "minimum": 0, "maximum": 50})] = (
        Field(default=None, ge=0, le=50, description=(
            "Share of new cases (0–50 %) held out of every automatic message, reminder and "
            "incentive, to measure lift. 0 = no holdout.")))
    smart_retry: Annotated[bool | None, _not_nullable({"type": "boolean"})] = Field(
        default=None, description=(
            "Act on the charge: attach a card the member saves (Whop retries the open payment on "
            "it) and retry a soft decline once at the next payday."))
    whop_permissions_missing: Any = Field(default=None, json_schema_extra={"readOnly": True},
                                          description="Read-only: accepted and ignored.")
    updated_at: Any = Field(default=None, json_schema_extra={"readOnly": True},
                            description="Read-only: accepted and ignored.")

    @field_validator("enable_push", "enable_dm", "incentive_days", "reminder_offsets_days", "timezone",
                     "holdout_percent", "smart_retry")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null")
        return value

    @field_validator("reminder_offsets_days")
    @classmethod
    def _offsets(cls, value: list[int]) -> list[int]:
        if any(day < 1 or day > 13 for day in value):
            raise ValueError("each offset must be between 1 and 13")
        if len(set(value)) != len(value):
            raise ValueError("offsets must be distinct")
        return sorted(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        if not _TIMEZONE.fullmatch(value):
            raise ValueError("must be an IANA time zone name, e.g. Europe/Berlin")
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone") from None
        return value


class Settings(BaseModel):
    """A company's settings (defaults for a company that never saved any)."""

    model_config = ConfigDict(title="Settings")

    enable_push: bool = True
    enable_dm: bool = True
    incentive_days: int = Field(ge=0, le=30)
    reminder_offsets_days: list[int] = Field(min_length=1, max_length=5)
    timezone: str
    quiet_hours: QuietHoursBody | None
    push_experience_id: str | None
    holdout_percent: int = Field(ge=0, le=50, description="Share of new cases held out (0 = none).")
    smart_retry: bool = Field(default=True, description=(
        "Attach a card the member saves and retry soft declines once at payday (issue 18)."))
    whop_permissions_missing: list[PermissionGap] = Field(default_factory=list, json_schema_extra={
        "readOnly": True}, description=(
        "Read-only: Whop permissions this company's latest card attach or payment retry was refused "
        "for (403), e.g. member:payment_methods:manage. Grant them to the app in Whop; empty when "
        "nothing was refused."))
    updated_at: AwareDatetime | None = Field(
        json_schema_extra={"readOnly": True}, description="Last save; null until the first PUT.")


# --- KPIs ---------------------------------------------------------------------------------------


class KpiQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    window_days: int = Field(default=30, ge=1, le=365, description="Window length in days (1–365).")


# --- cases --------------------------------------------------------------------------------------


class CaseFilters(BaseModel):
    """The filters the list and the export share, so "Export CSV" exports what the list shows."""

    model_config = ConfigDict(extra="ignore")

    status: StatusFilter | None = Field(default=None, description="Only cases in this status.")
    decline_class: DeclineClass | None = Field(default=None, description=(
        "Only cases of this decline class: card_hard, card_soft, authentication or unknown."))
    window_days: int | None = Field(default=None, ge=1, le=365,
                                    description="Only cases whose first failure lies in the last N days.")
    q: PlainText | None = Field(default=None, min_length=1, max_length=255,
                                description="A membership id or user id, exact or a prefix of it.")


class CaseListQuery(CaseFilters):
    limit: int = Field(default=25, ge=1, le=100, description="Page size (1–100).")
    cursor: PlainText | None = Field(default=None, max_length=200,
                                     description="next_cursor of the previous page (opaque).")


class ExportQuery(CaseFilters):
    cursor: PlainText | None = Field(default=None, max_length=200,
                                     description="The X-Export-Next-Cursor of the previous part (opaque).")


class CaseSummary(BaseModel):
    """A recovery case (one failure episode of a membership). No member e-mail, name or link token."""

    id: str = Field(description="Case id (UUID).")
    membership_id: str
    user_id: str | None
    status: CaseStatus
    first_failure_at: AwareDatetime
    last_failure_at: AwareDatetime
    failure_count: int = Field(ge=1)
    amount_minor: int | None = Field(description="Failed renewal amount, minor units.")
    currency: str | None
    decline_code: str | None
    failure_reason: str | None
    recovered_at: AwareDatetime | None
    recovered_amount_minor: int | None
    recovered_currency: str | None
    closed_at: AwareDatetime | None
    close_reason: str | None = Field(description=(
        "Why the case closed: payment_succeeded, member_cancelled, window_passed, creator_cancelled, "
        "membership_cancelled, membership_terminated, …"))
    cancelled_by: str | None = Field(description="User id of the creator who cancelled it, if one did.")
    incentive_days: int
    link_clicks: int
    last_clicked_at: AwareDatetime | None
    next_action_at: AwareDatetime | None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    holdout: bool = Field(description="In the holdout: no automatic message, reminder or incentive.")
    contaminated: bool = Field(description=(
        "A holdout case a creator nudged by hand: it stays in the holdout (intention to treat)."))
    opened_at: AwareDatetime = Field(description=(
        "When Rebound opened the case (its clock). A case opened after its 14-day window ended is "
        "in no arm."))
    holdout_percent_at_open: int | None = Field(description=(
        "The holdout percent in force when the case was assigned; null when not known (cases from "
        "before it was recorded). Lift counts only cases assigned while it was above 0."))
    experiment_id: str | None = Field(description="The copy experiment running when the case opened.")
    variant: str | None = Field(description="Its variant for this case (null without an experiment).")
    decline_class: DeclineClass = Field(description=(
        "card_hard (the card cannot work again), card_soft (may work on retry), authentication "
        "(the bank asks the member to confirm) or unknown."))
    # issue 18 (smart retry)
    retried_at: AwareDatetime | None = Field(default=None, description=(
        "When Rebound first asked Whop to charge the payment again (a saved card attached, the "
        "payday retry or a manual retry); null if it never did."))
    retry_reason: RetryReason | None = Field(default=None, description=(
        "Why: card_updated (the member saved a card), payday (a soft decline retried at the "
        "next 1st/15th) or manual (a creator's retry); null if never retried."))
    recovered_by: RecoveredBy | None = Field(default=None, description=(
        "Once recovered: rebound_retry (the success followed Rebound's attach or retry), "
        "after_click (the member followed a Rebound link first) or other (Whop's own retry or "
        "the member alone); null while not recovered."))


class CaseListItem(CaseSummary):
    """A case as the list shows it: the summary and what has been done on it so far."""

    nudges_sent: int = Field(ge=0, description=(
        "Messages that reached Whop for this case: automatic nudges, reminders and manual nudges, "
        "push and DM each counted (a nudge sent as a push and a DM is 2). The export's column of "
        "the same name."))
    last_action_at: AwareDatetime | None = Field(description=(
        "When the newest message was sent or a creator last acted on the case (nudge, cancel, "
        "membership cancel or terminate, whatever its outcome); null if neither has happened."))


class CaseList(BaseModel):
    items: list[CaseListItem]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class TimelineItem(BaseModel):
    at: AwareDatetime
    source: Literal["event", "action"]
    type: str = Field(description="The event type (payment.failed, …) or the ledger kind (nudge, …).")
    status: str | None = Field(description="Ledger status (pending, sent, failed, skipped, done); null "
                                           "for events.")
    channel: str | None = Field(description="push or dm for messages; null otherwise.")
    actor: str | None = Field(description="whop for events; system, member or a creator's user id.")
    detail: dict[str, str | int | bool | None] = Field(description="Ids, amounts and codes only.")


class CaseDetail(CaseSummary):
    timeline: list[TimelineItem] = Field(description=(
        "The membership's events dated from the first failure to the case's close (or now), and the "
        "case's ledger rows, merged in time order: at most 500 events; of the ledger, the 500 newest "
        "rows and always every action a creator took (nudges, cancels), however old."))


# --- actions ------------------------------------------------------------------------------------


class TerminateRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    confirm: bool = Field(description="Must be exactly true: access ends immediately.",
                          json_schema_extra={"const": True})

    @field_validator("confirm")
    @classmethod
    def _true(cls, value: bool) -> bool:
        if value is not True:
            raise ValueError("must be true")
        return value


class ActionOutcome(BaseModel):
    id: str
    kind: str
    channel: str | None
    status: str = Field(description="sent, failed, skipped, or pending (Whop busy: retried by the "
                                    "scheduler).")
    error: str | None = Field(description="Error or skip code when not sent.")


class NudgeResult(BaseModel):
    case_id: str
    actions: list[ActionOutcome]


class RetryResult(BaseModel):
    """What a manual retry did (issue 18)."""

    case_id: str
    action: ActionOutcome
    payment_status: str | None = Field(description=(
        "Whop's status of the payment after the retry (paid, open, …); null while pending."))
    retried_at: AwareDatetime | None
    retry_reason: RetryReason | None




# --- memberships --------------------------------------------------------------------------------


class MembershipView(BaseModel):
    """A Whop membership, read through to Whop. No member e-mail, name or phone."""

    id: str
    status: str
    company_id: str | None
    user_id: str | None
    cancel_at_period_end: bool
    current_period_end: datetime | None
    renewal_amount_minor: int | None
    renewal_currency: str | None
    billing_period_days: int | None


class ManageUrl(BaseModel):
    membership_id: str
    manage_url: str | None = Field(description="Whop's page where the member manages the membership; "
                                               "null when Whop gives none.")


# --- measurement: copy experiments and cohorts (issue 10) -----------------------------------------

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


class CohortQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    weeks: int = Field(default=12, ge=1, le=52, description="How many ISO weeks, up to this one (1–52).")
