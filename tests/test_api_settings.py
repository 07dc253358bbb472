"""GET/PUT …/settings: defaults, upsert, merge of omitted fields, and a 400 per bad field."""

from __future__ import annotations

from datetime import time
from typing import Any

import pytest

from tests.test_api_support import ADMIN_B, BRAVO, Api, api_fixture  # noqa: F401

S = "/api/companies/{company_id}/settings"
DEFAULTS = {"enable_push": True, "enable_dm": True, "incentive_days": 0, "reminder_offsets_days": [2, 4],
            "timezone": "UTC", "quiet_hours": None, "push_experience_id": None, "holdout_percent": 0,
            "smart_retry": True, "whop_permissions_missing": [], "updated_at": None}


def test_a_company_never_seen_gets_the_defaults(api: Api) -> None:
    _, body = api.call("GET", S, status=200)
    assert body == DEFAULTS
    assert api.rows("biz_alpha", "SELECT count(*) AS n FROM creator_settings")[0]["n"] == 0


def test_put_upserts_and_returns_what_is_stored(api: Api) -> None:
    wanted = {"enable_push": False, "enable_dm": True, "incentive_days": 7,
              "reminder_offsets_days": [9, 1, 5],
              "timezone": "Europe/Berlin", "quiet_hours": {"start": "22:30", "end": "07:00"},
              "push_experience_id": "exp_custom1", "holdout_percent": 20, "smart_retry": False}
    api.whop.add_experience("biz_alpha", "app_other", "exp_custom1")  # Whop must vouch for it (issue 9)
    _, stored = api.call("PUT", S, body=wanted, status=200)
    assert stored["reminder_offsets_days"] == [1, 5, 9]  # stored sorted
    assert stored["updated_at"] is not None
    without_stamp = {k: v for k, v in stored.items() if k != "updated_at"}
    assert without_stamp == {**wanted, "reminder_offsets_days": [1, 5, 9], "whop_permissions_missing": []}
    _, again = api.call("GET", S, status=200)
    assert again == stored
    row = api.rows("biz_alpha", "SELECT * FROM creator_settings")[0]
    assert row["quiet_hours_start"] == time(22, 30) and row["quiet_hours_end"] == time(7, 0)
    assert row["reminder_offsets_days"] == [1, 5, 9] and row["smart_retry"] is False

    # A second PUT updates the same row; omitted fields keep their value; null clears quiet hours.
    _, second = api.call("PUT", S, body={"incentive_days": 0, "quiet_hours": None}, status=200)
    assert second["incentive_days"] == 0 and second["quiet_hours"] is None
    assert second["timezone"] == "Europe/Berlin" and second["enable_push"] is False
    assert second["updated_at"] >= stored["updated_at"]
    assert api.rows("biz_alpha", "SELECT count(*) AS n FROM creator_settings")[0]["n"] == 1


def test_the_get_object_can_be_put_back_unchanged(api: Api) -> None:
    _, current = api.call("GET", S, status=200)
    _, stored = api.call("PUT", S, body={**current, "updated_at": "2001-01-01T00:00:00Z"}, status=200)
    assert {k: v for k, v in stored.items() if k != "updated_at"} == {
        k: v for k, v in DEFAULTS.items() if k != "updated_at"}
    assert stored["updated_at"] != "2001-01-01T00:00:00Z"  # read-only: ignored


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("unknown field", {"enable_sms": True}, "enable_sms"),
    ("string for smart retry", {"smart_retry": "false"}, "smart_retry"),
    ("null smart retry", {"smart_retry": None}, "smart_retry"),
    ("holdout above 50", {"holdout_percent": 51}, "holdout_percent"),
    ("negative holdout", {"holdout_percent": -1}, "holdout_percent"),
    ("null holdout", {"holdout_percent": None}, "holdout_percent"),
    ("string holdout", {"holdout_percent": "10"}, "holdout_percent"),
    ("string for a boolean", {"enable_push": "true"}, "enable_push"),
    ("number for a boolean", {"enable_dm": 1}, "enable_dm"),
    ("null for a boolean", {"enable_dm": None}, "enable_dm"),
    ("incentive above 30", {"incentive_days": 31}, "incentive_days"),
    ("negative incentive", {"incentive_days": -1}, "incentive_days"),
    ("float incentive", {"incentive_days": 2.0}, "incentive_days"),
    ("string incentive", {"incentive_days": "2"}, "incentive_days"),
    ("no offsets", {"reminder_offsets_days": []}, "reminder_offsets_days"),
    ("six offsets", {"reminder_offsets_days": [1, 2, 3, 4, 5, 6]}, "reminder_offsets_days"),
    ("offset 0", {"reminder_offsets_days": [0, 2]}, "reminder_offsets_days"),
    ("offset 14", {"reminder_offsets_days": [2, 14]}, "reminder_offsets_days"),
    ("duplicate offsets", {"reminder_offsets_days": [2, 2]}, "reminder_offsets_days"),
    ("string offset", {"reminder_offsets_days": [2, "4"]}, "reminder_offsets_days.1"),
    ("unknown time zone", {"timezone": "Mars/Olympus_Mons"}, "timezone"),
    ("path as time zone", {"timezone": "../../etc/passwd"}, "timezone"),
    ("bad quiet hour", {"quiet_hours": {"start": "25:00", "end": "07:00"}}, "quiet_hours.start"),
    ("quiet hours without end", {"quiet_hours": {"start": "22:00"}}, "quiet_hours.end"),
    ("empty quiet hours", {"quiet_hours": {"start": "22:00", "end": "22:00"}}, "quiet_hours"),
    ("extra key in quiet hours", {"quiet_hours": {"start": "22:00", "end": "07:00", "tz": "UTC"}},
     "quiet_hours.tz"),
    ("bad experience id", {"push_experience_id": "not an id"}, "push_experience_id"),
]


@pytest.mark.parametrize(("body", "field"), [(b, f) for _, b, f in BAD], ids=[n for n, _, _ in BAD])
def test_an_invalid_put_is_400_naming_the_field_and_changes_nothing(api: Api, body: dict[str, Any],
                                                                    field: str) -> None:
    _, err = api.call("PUT", S, body={"incentive_days": 5, **body}, status=400)
    assert err["error"]["code"] == "bad_request"
    assert field in err["error"]["fields"], err
    assert all(isinstance(message, str) and message for message in err["error"]["fields"].values())
    _, current = api.call("GET", S, status=200)
    assert current == DEFAULTS


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_400(api: Api, raw: bytes) -> None:
    _, err = api.call("PUT", S, raw=raw, status=400)
    assert err["error"]["fields"] == {"body": err["error"]["fields"]["body"]}


def test_an_oversized_body_is_413(api: Api) -> None:
    api.call("PUT", S, raw=b'{"timezone": "' + b"x" * 20_000 + b'"}', status=413)


def test_settings_are_per_company(api: Api) -> None:
    api.call("PUT", S, body={"incentive_days": 9}, status=200)
    _, other = api.call("GET", S, user=ADMIN_B, params={"company_id": BRAVO}, status=200)
    assert other == DEFAULTS


def test_a_json_body_sent_as_text_plain_is_still_parsed_and_errors_keep_our_shape(api: Api) -> None:
    _, stored = api.call("PUT", S, body={"incentive_days": 4}, headers={"content-type": "text/plain"},
                         status=200)
    assert stored["incentive_days"] == 4
    _, err = api.call("PUT", S, raw=b"incentive_days=4", headers={"content-type": "text/plain"}, status=400)
    assert err["error"]["code"] == "bad_request"
