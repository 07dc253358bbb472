"""A company's settings (table ``creator_settings``: one row per company, or none: defaults).

Invariants: a read-modify-write holds ``lock_settings`` until its transaction ends (two
concurrent PUTs must not lose a field); ``upsert_settings`` returns the settings as stored.
"""

from __future__ import annotations

from typing import Any

from chalicelib.db import Transaction
from chalicelib.models import CreatorSettings, QuietHours


def get_settings(tx: Transaction) -> CreatorSettings:
    return settings_from_row(tx.one("SELECT * FROM creator_settings"))


def _hh_mm(value: Any) -> str:
    # A time column (time) or the same column inside to_jsonb(...) ("HH:MM:SS").
    return value.strftime("%H:%M") if hasattr(value, "strftime") else str(value)[:5]


def settings_from_row(row: dict[str, Any] | None) -> CreatorSettings:
    """A company's settings from its creator_settings row (or that row as JSON); defaults if none."""
    if row is None:
        return CreatorSettings()
    quiet = None
    if row["quiet_hours_start"] is not None:
        quiet = QuietHours(start=_hh_mm(row["quiet_hours_start"]), end=_hh_mm(row["quiet_hours_end"]))
    return CreatorSettings(
        enable_push=row["enable_push"], enable_dm=row["enable_dm"],
        incentive_days=row["incentive_days"],
        reminder_offsets_days=tuple(row["reminder_offsets_days"]), timezone=row["timezone"],
        quiet_hours=quiet, push_experience_id=row["push_experience_id"],
        holdout_percent=row["holdout_percent"], smart_retry=row.get("smart_retry", True),
        updated_at=row["updated_at"])


def upsert_settings(tx: Transaction, company_id: str, settings: CreatorSettings) -> CreatorSettings:
    """Store a company's settings (insert or replace); return them as stored."""
    quiet = settings.quiet_hours
    tx.execute(
        "INSERT INTO creator_settings (company_id, enable_push, enable_dm, incentive_days,"
        " reminder_offsets_days, timezone, quiet_hours_start, quiet_hours_end, push_experience_id,"
        " holdout_percent, smart_retry)"
        " VALUES (:company_id, :enable_push, :enable_dm, :incentive_days, CAST(:offsets AS integer[]),"
        " :timezone, CAST(:quiet_start AS time), CAST(:quiet_end AS time), :push_experience_id,"
        " :holdout_percent, :smart_retry)"
        " ON CONFLICT (company_id) DO UPDATE SET enable_push = EXCLUDED.enable_push,"
        " enable_dm = EXCLUDED.enable_dm, incentive_days = EXCLUDED.incentive_days,"
        " reminder_offsets_days = EXCLUDED.reminder_offsets_days, timezone = EXCLUDED.timezone,"
        " quiet_hours_start = EXCLUDED.quiet_hours_start, quiet_hours_end = EXCLUDED.quiet_hours_end,"
        " push_experience_id = EXCLUDED.push_experience_id,"
        " holdout_percent = EXCLUDED.holdout_percent, smart_retry = EXCLUDED.smart_retry, updated_at = now()",
        company_id=company_id, enable_push=settings.enable_push, enable_dm=settings.enable_dm,
        incentive_days=settings.incentive_days, offsets=list(settings.reminder_offsets_days),
        timezone=settings.timezone, quiet_start=quiet.start if quiet else None,
        quiet_end=quiet.end if quiet else None, push_experience_id=settings.push_experience_id,
        holdout_percent=settings.holdout_percent, smart_retry=settings.smart_retry)
    return get_settings(tx)


def lock_settings(tx: Transaction, company_id: str) -> None:
    """Serialise read-modify-write of a company's settings until the transaction ends."""
    tx.query("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))", key=f"{company_id}/settings")
