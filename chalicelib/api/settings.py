"""``GET``/``PUT …/settings``: a company's recovery settings."""

from __future__ import annotations

from chalicelib import store
from chalicelib.api import CreatorContext
from chalicelib.api.schemas import QuietHoursBody, Settings, SettingsUpdate
from chalicelib.db import tenant_transaction
from chalicelib.models import CreatorSettings, QuietHours

# Fields a PUT may change; ``updated_at`` (read-only) is accepted and ignored.
_WRITABLE = ("enable_push", "enable_dm", "incentive_days", "reminder_offsets_days", "timezone",
             "quiet_hours", "push_experience_id", "holdout_percent")


def to_view(settings: CreatorSettings) -> Settings:
    quiet = settings.quiet_hours
    return Settings(
        enable_push=settings.enable_push, enable_dm=settings.enable_dm,
        incentive_days=settings.incentive_days,
        reminder_offsets_days=list(settings.reminder_offsets_days), timezone=settings.timezone,
        quiet_hours=QuietHoursBody(start=quiet.start, end=quiet.end) if quiet else None,
        push_experience_id=settings.push_experience_id, holdout_percent=settings.holdout_percent,
        updated_at=settings.updated_at)


def get_settings(ctx: CreatorContext) -> Settings:
    """The stored settings, or the defaults for a company that never saved any."""
    with tenant_transaction(ctx.company_id) as tx:
        return to_view(store.get_settings(tx))


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
        Invalid JSON, unknown fields, wrong types or out-of-range values (one message per field).
    """
    update = ctx.parse_body(SettingsUpdate)
    with tenant_transaction(ctx.company_id) as tx:
        store.lock_settings(tx, ctx.company_id)  # two concurrent PUTs must not lose a field
        current = store.get_settings(tx)
        return to_view(store.upsert_settings(tx, ctx.company_id, apply_update(current, update)))
