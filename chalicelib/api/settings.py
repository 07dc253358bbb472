"""``GET``/``PUT …/settings``: a company's recovery settings."""

from __future__ import annotations

from typing import Any

from chalicelib import replan
from chalicelib.api import CreatorContext
from chalicelib.api.schemas.settings import PermissionGap, QuietHoursBody, Settings, SettingsUpdate
from chalicelib.errors import BadRequest, ServiceUnavailable
from chalicelib.models import CreatorSettings, QuietHours
from chalicelib.observability import logger
from chalicelib.store import recovery as recovery_store
from chalicelib.store import settings as settings_store
from chalicelib.tenancy import tenant_transaction
from chalicelib.whop import WhopError, WhopNotFound, WhopRetryableError
from chalicelib.whop_client import get_whop

_NOT_YOURS = "must be an experience of this company"

# Fields a PUT may change; ``updated_at`` (read-only) is accepted and ignored.
_WRITABLE = ("enable_push", "enable_dm", "incentive_days", "reminder_offsets_days", "timezone",
             "quiet_hours", "push_experience_id", "holdout_percent", "smart_retry")


def to_view(settings: CreatorSettings, gaps: list[dict[str, Any]] | None = None) -> Settings:
    quiet = settings.quiet_hours
    return Settings(
        enable_push=settings.enable_push, enable_dm=settings.enable_dm,
        incentive_days=settings.incentive_days,
        reminder_offsets_days=list(settings.reminder_offsets_days), timezone=settings.timezone,
        quiet_hours=QuietHoursBody(start=quiet.start, end=quiet.end) if quiet else None,
        push_experience_id=settings.push_experience_id, holdout_percent=settings.holdout_percent,
        smart_retry=settings.smart_retry, whop_permissions_missing=permission_gaps(gaps or []),
        updated_at=settings.updated_at)


def permission_gaps(rows: list[dict[str, Any]]) -> list[PermissionGap]:
    """What Whop refused smart retry for, and what the creator should do."""
    return [PermissionGap(permission=r["permission"], since=r["completed_at"],
                          message=f"grant {r['permission']} to this app in your Whop dashboard")
            for r in rows]


def get_settings(ctx: CreatorContext) -> Settings:
    """The stored settings, or the defaults for a company that never saved any."""
    with tenant_transaction(ctx.company_id) as tx:
        return to_view(settings_store.get_settings(tx), recovery_store.permission_gaps(tx))


def apply_update(current: CreatorSettings, update: SettingsUpdate) -> CreatorSettings:
    """``current`` with the fields the client sent replaced (omitted ones are kept)."""
    changes: dict[str, object] = {}
    for name in _WRITABLE:
        if name not in update.model_fields_set:
            continue
        value = getattr(update, name)
        if name == "quiet_hours":
            value = QuietHours(start=value.start, end=value.end) if value is not None else None
        elif name == "reminder_offsets_days":
            value = tuple(value)
        changes[name] = value
    return current.model_copy(update=changes)


def put_settings(ctx: CreatorContext) -> Settings:
    """Validate the body, merge it into the stored settings and upsert them.

    Raises
    ------
    BadRequest
        Invalid JSON, unknown fields, wrong types or out-of-range values (one message per field);
        a ``push_experience_id`` that Whop does not say belongs to this company.
    ServiceUnavailable
        Whop could not be asked about the experience (503).
    """
    update = ctx.parse_body(SettingsUpdate)
    if update.push_experience_id is not None:
        # Before any transaction: Whop may take seconds. Checked on every save that names one,
        # so an experience moved to another company is caught the next time settings are saved.
        verify_experience(ctx.company_id, update.push_experience_id)
    with tenant_transaction(ctx.company_id) as tx:
        settings_store.lock_settings(tx, ctx.company_id)  # two concurrent PUTs must not lose a field
        current = settings_store.get_settings(tx)
        saved = settings_store.upsert_settings(tx, ctx.company_id, apply_update(current, update))
        if _plan_of(saved) != _plan_of(current):
            # Open cases were planned with the old channels and offsets (channels off then on
            # again left them with no reminders): re-plan them from their ledgers.
            replan.open_cases(tx, saved, ctx.now)
        return to_view(saved, recovery_store.permission_gaps(tx))


def _plan_of(settings: CreatorSettings) -> tuple[object, ...]:
    """The settings a case's reminder plan depends on."""
    return settings.enable_push, settings.enable_dm, settings.reminder_offsets_days


def verify_experience(company_id: str, experience_id: str) -> None:
    """400 unless Whop says ``experience_id`` belongs to ``company_id``.

    An unknown experience, one Whop will not show us, and another company's all get the same
    answer: the creator learns nothing about other companies' experiences.
    """
    try:
        owner = get_whop().experience_company(experience_id)
    except WhopRetryableError:
        raise ServiceUnavailable("cannot check the experience with Whop right now, retry shortly",
                                 headers={"Retry-After": "5"}) from None
    except WhopNotFound:
        owner = None
    except WhopError as exc:
        if exc.status == 401:  # our API key was refused: our problem, not the creator's
            logger.error("whop refused our api key on the experience check")
            raise ServiceUnavailable("cannot check the experience with Whop right now",
                                     headers={"Retry-After": "5"}) from None
        owner = None  # 400/403: Whop will not vouch for it
    if owner != company_id:
        raise BadRequest("push_experience_id is not an experience of this company",
                         fields={"push_experience_id": _NOT_YOURS})
