"""`make dev` for a newcomer: simulate.py follows what make dev wrote, a restart keeps tokens and
memberships, and `churn` without a case says so. Against the app served on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from chalicelib import config
from scripts import dev, localdb, simulate
from scripts.fake_whop import signing_key_from_file
from tests.test_api_support import ADMIN_A, ALPHA, Api, api_fixture  # noqa: F401


@pytest.fixture
def dev_file(api: Api, server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A dev.json like make dev writes, pointing at this test's app and fake Whop."""
    for name in ("REBOUND_URL", "FAKE_WHOP_URL", "SCHEDULER_SECRET", "WHOP_WEBHOOK_SECRET", "PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REBOUND_DATA_DIR", str(tmp_path))
    dev.write_dev_file(tmp_path / "dev.json", {
        "api": server, "fake_whop": api.whop.origin, "company": ALPHA, "admin_user": ADMIN_A,
        "scheduler_secret": "dev-secret-for-test", "webhook_secret": api.whop.webhook_secret})
    return tmp_path / "dev.json"


def test_churn_on_a_member_without_a_case_says_so_and_sends_nothing(
        api: Api, dev_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert oct(dev_file.stat().st_mode & 0o777) == "0o600"  # it holds dev secrets
    assert simulate.main(["churn", "--membership", "mem_9"]) == 1
    err = capsys.readouterr().err
    assert "mem_9 has no open case" in err and "simulate.py failure --membership mem_9" in err
    assert api.rows(ALPHA, "SELECT count(*) AS n FROM events")[0]["n"] == 0
    api.open_case(membership="mem_9", user="user_9")
    info = simulate.dev_info()
    assert simulate.open_case_of(info["api"], info["fake_whop"], ADMIN_A, ALPHA, "mem_9") is True
    assert simulate.open_case_of(info["api"], info["fake_whop"], ADMIN_A, ALPHA, "mem_8") is False


def test_the_tick_uses_make_devs_scheduler_secret_without_flags(
        api: Api, dev_file: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SCHEDULER_SECRET", "dev-secret-for-test")  # what make dev gave the app
    config.reset_config()
    assert config.get_config().SCHEDULER_SECRET == "dev-secret-for-test"  # read (and kept) now
    monkeypatch.delenv("SCHEDULER_SECRET")  # … but this shell does not have it
    assert simulate.main(["tick"]) == 0
    assert "reminder tick -> 200" in capsys.readouterr().out


def test_a_restart_keeps_the_signing_key_and_every_membership(
        api: Api, local_database: localdb.LocalDatabase, tmp_path: Path) -> None:
    key_file = tmp_path / "fake-whop-signing-key.pem"
    first, second = signing_key_from_file(key_file), signing_key_from_file(key_file)
    assert first.kid == second.kid and first.jwk() == second.jwk()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    api.open_case(membership="mem_sim_7", user="user_sim_7")
    assert dev.known_memberships(local_database.owner_url)["mem_sim_7"] == (ALPHA, "user_sim_7")


def test_the_banner_stands_apart() -> None:
    text = dev.banner(["Rebound is running", "", "Dashboard    http://127.0.0.1:8000/dashboard/biz_demo"])
    lines = text.splitlines()
    assert lines[0] == "" and lines[1].startswith("====") and lines[-1].startswith("====")


def test_the_token_make_dev_prints_opens_the_creator_api(api: Api) -> None:
    # make dev mints its banner token with DEV_TOKEN_LIFETIME_S: the app's verifier must take
    # it (a 7-day token was once printed and every dashboard call answered 401 "lifetime").
    token = api.token(ADMIN_A, expires_in=dev.DEV_TOKEN_LIFETIME_S)
    resp = api.request("GET", f"/api/companies/{ALPHA}/kpis", token=token)
    assert resp.status_code == 200, resp.body
    too_long = api.token(ADMIN_A, expires_in=7 * 24 * 3600)
    assert api.request("GET", f"/api/companies/{ALPHA}/kpis", token=too_long).status_code == 401
