"""``GET …/memberships/{membership_id}`` and its ``manage-url``."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


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
