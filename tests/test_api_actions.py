"""POST …/cases/{id}/nudge | cancel | cancel-membership | terminate: rules, idempotency, ledger
rows naming the creator, and Whop failures."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from chalicelib import effects
from tests.test_api_support import ADMIN_A, ALPHA, DAY, NOW, Api, api_fixture  # noqa: F401

C = "/api/companies/{company_id}/cases/{case_id}"
NUDGE, CANCEL, CANCEL_M, TERMINATE = f"{C}/nudge", f"{C}/cancel", f"{C}/cancel-membership", f"{C}/terminate"
SETTINGS = "/api/companies/{company_id}/settings"


def ledger(api: Api, case_id: str, kind: str) -> list[dict[str, Any]]:
    return api.rows(ALPHA, "SELECT * FROM recovery_actions WHERE case_id = CAST(:c AS uuid) AND kind = :k"
                           " ORDER BY created_at, channel", c=case_id, k=kind)


# --- nudge --------------------------------------------------------------------------------------


def test_nudge_sends_now_on_each_channel_even_right_after_the_automatic_one(api: Api) -> None:
    case_id = api.open_case()
    effects.execute_owed(effects.default_context(), ALPHA, NOW, case_id=case_id)  # T+0 nudges sent
    assert len(api.whop.calls_to("POST", "/messages")) == 1
    _, body = api.call("POST", NUDGE, params={"case_id": case_id}, status=200)
    assert sorted((a["channel"], a["status"]) for a in body["actions"]) == [("dm", "sent"), ("push", "sent")]
    # The 20 h frequency cap did not hold it back: Whop got a second DM and push right away.
    assert len(api.whop.calls_to("POST", "/messages")) == 2
    assert len(api.whop.calls_to("POST", "/notifications")) == 2
    rows = ledger(api, case_id, "manual_nudge")
    assert [(r["channel"], r["status"], r["actor"]) for r in rows] == [("dm", "sent", ADMIN_A),
                                                                       ("push", "sent", ADMIN_A)]
    assert all(r["idempotency_key"].startswith(f"{case_id}:m") for r in rows)


def test_second_nudge_within_the_hour_is_429_with_retry_after(api: Api) -> None:
    case_id = api.open_case()
    api.call("POST", NUDGE, params={"case_id": case_id}, status=200)
    sent = len(api.whop.calls_to("POST", "/messages"))
    resp, err = api.call("POST", NUDGE, params={"case_id": case_id}, status=429)
    assert err["error"]["code"] == "nudge_cooldown"
    assert 3500 <= int(resp.headers["Retry-After"]) <= 3600
    assert len(ledger(api, case_id, "manual_nudge")) == 2
    assert len(api.whop.calls_to("POST", "/messages")) == sent
    # An hour later (moved back in the ledger, no sleeping) the next manual nudge goes.
    api.rows(ALPHA, "UPDATE recovery_actions SET created_at = created_at - interval '61 minutes'"
                    " WHERE kind = 'manual_nudge' RETURNING id")
    api.call("POST", NUDGE, params={"case_id": case_id}, status=200)
    assert len(ledger(api, case_id, "manual_nudge")) == 4


def test_a_closed_case_is_409_even_inside_the_cooldown(api: Api) -> None:
    case_id = api.open_case()
    api.call("POST", NUDGE, params={"case_id": case_id}, status=200)
    api.call("POST", CANCEL, params={"case_id": case_id}, status=200)
    _, err = api.call("POST", NUDGE, params={"case_id": case_id}, status=409)
    assert err["error"]["code"] == "conflict"


@pytest.mark.parametrize("status", ["recovered", "expired"])
def test_nudging_a_finished_case_is_409_and_sends_nothing(api: Api, status: str) -> None:
    if status == "recovered":
        case_id = api.open_case(at=NOW - 2 * DAY)
        api.recover(at=NOW - DAY)
    else:
        case_id = api.open_case(at=NOW - 20 * DAY)
    assert api.case(case_id)["status"] == status
    api.call("POST", NUDGE, params={"case_id": case_id}, status=409)
    assert api.whop.calls_to("POST", "/messages") == [] and ledger(api, case_id, "manual_nudge") == []


def test_an_open_case_past_its_window_is_409(api: Api) -> None:
    case_id = api.open_case(at=NOW - DAY)
    api.rows(ALPHA, "UPDATE recovery_cases SET first_failure_at = now() - interval '15 days' RETURNING id")
    assert api.case(case_id)["status"] == "open"  # the scheduler has not expired it yet
    api.call("POST", NUDGE, params={"case_id": case_id}, status=409)


def test_nudge_uses_only_enabled_channels_and_409_when_none(api: Api) -> None:
    case_id = api.open_case()
    api.call("PUT", SETTINGS, body={"enable_push": False}, status=200)
    _, body = api.call("POST", NUDGE, params={"case_id": case_id}, status=200)
    assert [a["channel"] for a in body["actions"]] == ["dm"]
    other = api.open_case(membership="mem_2")
    api.call("PUT", SETTINGS, body={"enable_dm": False}, status=200)
    _, err = api.call("POST", NUDGE, params={"case_id": other}, status=409)
    assert "disabled" in err["error"]["message"]


def test_nudge_reports_whop_trouble_and_leaves_the_row_for_the_scheduler(api: Api) -> None:
    case_id = api.open_case()
    api.call("PUT", SETTINGS, body={"enable_push": False}, status=200)
    api.whop.inject("POST", r"/dm_channels", "503", times=None)
    _, body = api.call("POST", NUDGE, params={"case_id": case_id}, status=200)
    assert [(a["channel"], a["status"]) for a in body["actions"]] == [("dm", "pending")]
    assert ledger(api, case_id, "manual_nudge")[0]["status"] == "pending"


def test_unknown_and_malformed_case_ids(api: Api) -> None:
    for template in (NUDGE, CANCEL, CANCEL_M):
        api.call("POST", template, params={"case_id": str(uuid.uuid4())}, status=404)
        api.call("POST", template, params={"case_id": "123"}, status=400)


# --- cancel -------------------------------------------------------------------------------------


def test_cancel_stops_the_case_skips_what_it_owed_and_is_idempotent(api: Api) -> None:
    case_id = api.open_case()
    assert {r["status"] for r in ledger(api, case_id, "nudge")} == {"pending"}
    _, body = api.call("POST", CANCEL, params={"case_id": case_id}, status=200)
    assert body["status"] == "cancelled" and body["close_reason"] == "creator_cancelled"
    assert body["cancelled_by"] == ADMIN_A and body["next_action_at"] is None and body["closed_at"]
    assert {r["status"] for r in ledger(api, case_id, "nudge")} == {"skipped"}
    (row,) = ledger(api, case_id, "creator_cancel")
    assert (row["actor"], row["status"]) == (ADMIN_A, "done")
    _, again = api.call("POST", CANCEL, params={"case_id": case_id}, status=200)
    assert again == body
    assert len(ledger(api, case_id, "creator_cancel")) == 1
    # A later failure of the same episode does not reopen what the creator stopped.
    from tests.helpers import payment_event

    msg_id, raw = payment_event("payment.failed", at=NOW - timedelta(hours=2), payment="pay_again")
    api.deliver(msg_id, raw, NOW)
    assert api.case(case_id)["status"] == "cancelled"


@pytest.mark.parametrize("status", ["recovered", "expired"])
def test_cancelling_a_finished_case_is_409(api: Api, status: str) -> None:
    case_id = api.open_case(at=NOW - (2 * DAY if status == "recovered" else 20 * DAY))
    if status == "recovered":
        api.recover(at=NOW - DAY)
    _, err = api.call("POST", CANCEL, params={"case_id": case_id}, status=409)
    assert status in err["error"]["message"]
    assert api.case(case_id)["status"] == status


# --- cancel membership / terminate --------------------------------------------------------------


def test_cancel_membership_at_period_end_then_the_case_is_cancelled(api: Api) -> None:
    case_id = api.open_case()
    api.whop.add_membership("mem_1", company_id=ALPHA, user_id="user_1")
    _, body = api.call("POST", CANCEL_M, params={"case_id": case_id}, status=200)
    assert body["status"] == "cancelled" and body["close_reason"] == "membership_cancelled"
    (call,) = api.whop.calls_to("POST", r"/memberships/mem_1/cancel")
    assert call.json["cancel_at_period_end"] is True
    assert call.idempotency_key == f"{case_id}:cancel-membership"
    assert api.whop.membership("mem_1")["cancel_at_period_end"] is True
    (row,) = ledger(api, case_id, "cancel_membership")
    assert (row["actor"], row["status"]) == (ADMIN_A, "done")
    api.call("POST", CANCEL_M, params={"case_id": case_id}, status=200)  # again: same answer
    assert len(api.whop.calls_to("POST", r"/memberships/mem_1/cancel")) == 1


def test_cancel_membership_after_a_creator_cancel_is_allowed_after_a_member_cancel_409(api: Api) -> None:
    api.whop.add_membership("mem_1", company_id=ALPHA, user_id="user_1")
    api.whop.add_membership("mem_2", company_id=ALPHA, user_id="user_2")
    stopped = api.open_case()
    api.call("POST", CANCEL, params={"case_id": stopped}, status=200)
    api.call("POST", CANCEL_M, params={"case_id": stopped}, status=200)
    member_gone = api.open_case(membership="mem_2", user="user_2", at=NOW - 2 * DAY)
    api.member_cancels(membership="mem_2", at=NOW - DAY)
    api.call("POST", CANCEL_M, params={"case_id": member_gone}, status=409)
    assert api.whop.calls_to("POST", r"/memberships/mem_2/cancel") == []


def test_whop_refusing_is_502_and_unavailable_is_503_and_the_case_stays_open(api: Api) -> None:
    case_id = api.open_case()  # no such membership at the fake: Whop answers 404
    _, err = api.call("POST", CANCEL_M, params={"case_id": case_id}, status=502)
    assert err["error"]["code"] == "whop_error"
    assert api.case(case_id)["status"] == "open"
    failed = ledger(api, case_id, "cancel_membership")
    assert [(r["status"], r["actor"]) for r in failed] == [("failed", ADMIN_A)]
    api.whop.add_membership("mem_1", company_id=ALPHA, user_id="user_1")
    api.whop.inject("POST", r"/memberships/.*/cancel", "503", times=None)
    resp, _ = api.call("POST", CANCEL_M, params={"case_id": case_id}, status=503)
    assert int(resp.headers["Retry-After"]) >= 1 and api.case(case_id)["status"] == "open"
    api.whop.clear_faults()
    api.call("POST", CANCEL_M, params={"case_id": case_id}, status=200)


@pytest.mark.parametrize("body", [None, {}, {"confirm": False}, {"confirm": "true"}, {"confirm": 1},
                                  {"confirm": True, "now": True}])
def test_terminate_requires_confirm_true_exactly(api: Api, body: Any) -> None:
    case_id = api.open_case()
    _, err = api.call("POST", TERMINATE, params={"case_id": case_id}, body=body, status=400)
    assert set(err["error"]["fields"]) & {"confirm", "body", "now"}
    assert api.whop.calls_to("POST", r"/memberships/.*/cancel") == []


def test_terminate_ends_access_now_and_cancels_the_case(api: Api) -> None:
    case_id = api.open_case()
    api.whop.add_membership("mem_1", company_id=ALPHA, user_id="user_1")
    api.call("POST", CANCEL_M, params={"case_id": case_id}, status=200)
    _, body = api.call("POST", TERMINATE, params={"case_id": case_id}, body={"confirm": True}, status=200)
    assert body["close_reason"] == "membership_terminated" and body["cancelled_by"] == ADMIN_A
    call = api.whop.calls_to("POST", r"/memberships/mem_1/cancel")[-1]
    assert call.json["cancel_at_period_end"] is False and call.idempotency_key == f"{case_id}:terminate"
    assert api.whop.membership("mem_1")["status"] == "canceled"
    assert [r["actor"] for r in ledger(api, case_id, "terminate")] == [ADMIN_A]
    api.call("POST", TERMINATE, params={"case_id": case_id}, body={"confirm": True}, status=200)
    assert len(api.whop.calls_to("POST", r"/memberships/mem_1/cancel")) == 2  # not a third time


def test_terminating_a_recovered_case_is_409(api: Api) -> None:
    case_id = api.open_case(at=NOW - 2 * DAY)
    api.recover(at=NOW - DAY)
    api.call("POST", TERMINATE, params={"case_id": case_id}, body={"confirm": True}, status=409)
