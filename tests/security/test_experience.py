"""Issue 9 item 5: a creator can only save an experience Whop says belongs to their company as
``push_experience_id``; pushes never go out through another company's experience."""

from __future__ import annotations

import pytest

from tests.test_api_support import ALPHA, BRAVO, Api, api_fixture  # noqa: F401

S = "/api/companies/{company_id}/settings"
NOT_YOURS = {"push_experience_id": "must be an experience of this company"}


def test_another_companys_experience_is_refused_and_nothing_is_stored(api: Api) -> None:
    api.whop.add_experience(BRAVO, api.whop.app_id, "exp_bravo_private")
    _, err = api.call("PUT", S, body={"push_experience_id": "exp_bravo_private"}, status=400)
    assert err["error"]["fields"] == NOT_YOURS
    _, stored = api.call("GET", S, status=200)
    assert stored["push_experience_id"] is None
    assert api.whop.calls_to("GET", r"/experiences/exp_bravo_private")


@pytest.mark.parametrize("experience_id", ["exp_nobody_has_this", "exp_x"])
def test_an_unknown_experience_gets_the_same_answer(api: Api, experience_id: str) -> None:
    _, err = api.call("PUT", S, body={"push_experience_id": experience_id}, status=400)
    assert err["error"]["fields"] == NOT_YOURS  # indistinguishable from another company's


def test_the_companys_own_experience_is_saved_and_used(api: Api) -> None:
    api.whop.add_experience(ALPHA, "app_other", "exp_alpha_custom")
    _, stored = api.call("PUT", S, body={"push_experience_id": "exp_alpha_custom"}, status=200)
    assert stored["push_experience_id"] == "exp_alpha_custom"
    # null (back to the app's own experience) needs no check
    calls = len(api.whop.calls_to("GET", r"/experiences/.*"))
    _, stored = api.call("PUT", S, body={"push_experience_id": None}, status=200)
    assert stored["push_experience_id"] is None
    assert len(api.whop.calls_to("GET", r"/experiences/.*")) == calls


def test_saving_other_settings_does_not_ask_whop(api: Api) -> None:
    api.call("PUT", S, body={"incentive_days": 2}, status=200)
    assert api.whop.calls_to("GET", r"/experiences/.*") == []


def test_whop_unavailable_is_503_and_nothing_is_stored(api: Api) -> None:
    api.whop.add_experience(ALPHA, api.whop.app_id, "exp_alpha_custom")
    api.whop.inject("GET", r"/experiences/.*", "503", times=None)
    resp, _ = api.call("PUT", S, body={"push_experience_id": "exp_alpha_custom", "incentive_days": 4},
                       status=503)
    assert resp.headers["Retry-After"] == "5"
    api.whop.clear_faults()
    _, stored = api.call("GET", S, status=200)
    assert stored["push_experience_id"] is None and stored["incentive_days"] != 4


def test_the_fake_validates_the_id_like_whop(api: Api) -> None:
    from chalicelib.whop import WhopPermanentError
    from chalicelib.whop_client import get_whop

    with pytest.raises(WhopPermanentError) as raised:
        get_whop().experience_company("not_an_experience")
    assert raised.value.status == 400
