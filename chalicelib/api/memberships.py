"""``GET …/memberships/{membership_id}`` and ``…/manage-url``: read through to Whop, scoped.

A membership of another company answers 404 exactly like one that does not exist, and so does an
id that cannot be a Whop membership id (Whop is not even asked).
"""

from __future__ import annotations

import re

from chalicelib.api import BadGateway, CreatorContext
from chalicelib.api.schemas.memberships import ManageUrl, MembershipView
from chalicelib.errors import NotFound, ServiceUnavailable
from chalicelib.whop import Membership, WhopError, WhopNotFound, WhopRetryableError
from chalicelib.whop_client import get_whop

MEMBERSHIP_ID = re.compile(r"^mem_[A-Za-z0-9_-]{1,64}$")


def _membership(ctx: CreatorContext, membership_id: str) -> Membership:
    if not MEMBERSHIP_ID.fullmatch(membership_id):
        raise NotFound("membership not found")
    try:
        membership = get_whop().retrieve_membership(membership_id)
    except WhopNotFound:
        raise NotFound("membership not found") from None
    except WhopRetryableError:
        raise ServiceUnavailable("Whop is unavailable, retry shortly", headers={"Retry-After": "5"}) from None
    except WhopError as exc:
        raise BadGateway(f"Whop refused the membership look-up: {exc.error_code}") from None
    if membership.company_id != ctx.company_id:
        raise NotFound("membership not found")
    return membership


def get_membership(ctx: CreatorContext, membership_id: str) -> MembershipView:
    m = _membership(ctx, membership_id)
    return MembershipView.model_validate(m.model_dump(include=set(MembershipView.model_fields)))


def get_manage_url(ctx: CreatorContext, membership_id: str) -> ManageUrl:
    m = _membership(ctx, membership_id)
    return ManageUrl(membership_id=m.id, manage_url=m.manage_url)
