"""``GET …/cases``, ``…/cases/{case_id}`` and ``…/cases/export.csv``: filters, a case as the
API shows it, the list page and the timeline."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from chalicelib.api.schemas.common import PlainText, StatusFilter
from chalicelib.models import CaseStatus, DeclineClass
from chalicelib.recovery_policy import RecoveredBy, RetryReason


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
    # smart retry
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
