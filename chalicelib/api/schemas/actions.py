"""A creator's actions on a case (nudge, cancel, cancel or terminate the membership, retry the
payment): the terminate body and what each action answers."""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from chalicelib.recovery_policy import RetryReason


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
