"""What every resource's models share: the error shape, and the text rule of every text field
and parameter (``PlainText``: see the package docstring)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

from chalicelib.models import unsafe_text

StatusFilter = Literal["open", "recovered", "cancelled", "expired"]


def no_control_characters(value: str) -> str:
    problem = unsafe_text(value)
    if problem is not None:
        raise ValueError(problem)
    if "\ufffd" in value:
        # What a server makes of bytes that are not UTF-8: not what the caller typed.
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
