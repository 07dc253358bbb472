"""``GET``/``PUT …/settings``: a company's settings, the update body and its rules."""

from __future__ import annotations

import re
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

HHMM = r"^([01]\d|2[0-3]):[0-5]\d$"
_TIMEZONE = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$")


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
