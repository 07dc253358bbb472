"""Postgres-backed fixed-window rate limits: exactness under concurrency, windows, headers,
configuration, the opportunistic purge, and the 429 through the HTTP routes."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib import ratelimit
from chalicelib.config import ConfigError
from chalicelib.db_pool import Database
from chalicelib.ratelimit import Decision, RateLimits, check, load_limits, window_start
from chalicelib.tenancy import get_database, tenant_transaction
from tests.test_api_support import ADMIN_B, ALPHA, BRAVO, Api, api_fixture  # noqa: F401

T0 = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)  # 5 s into a 60 s window
SETTINGS = "/api/companies/{company_id}/settings"


def counts(db: Database, company: str) -> list[tuple[str, datetime, int]]:
    with tenant_transaction(company, db) as tx:
        rows = tx.query("SELECT bucket, window_start, count FROM rate_limits ORDER BY window_start, bucket")
    return [(r["bucket"], r["window_start"], r["count"]) for r in rows]


def test_exactly_the_limit_passes_in_a_window_and_the_next_window_starts_fresh(database: Database) -> None:
    limits = RateLimits(actions=3)
    outcomes = [check(ALPHA, "actions", T0 + timedelta(seconds=i), limits=limits, purge_chance=0).allowed
                for i in range(5)]
    assert outcomes == [True, True, True, False, False]
    later = check(ALPHA, "actions", T0 + timedelta(seconds=60), limits=limits, purge_chance=0)
    assert later.allowed and later.count == 1
    other_class = check(ALPHA, "reads", T0, limits=limits, purge_chance=0)
    other_company = check(BRAVO, "actions", T0, limits=limits, purge_chance=0)
    assert other_class.count == 1 and other_company.count == 1
    start = window_start(T0, 60)
    assert counts(database, ALPHA) == [("actions", start, 5), ("reads", start, 1),
                                       ("actions", start + timedelta(seconds=60), 1)]
    assert counts(database, BRAVO) == [("actions", window_start(T0, 60), 1)]  # RLS: each sees its own


def test_n_parallel_requests_at_a_limit_of_k_let_exactly_k_through(database: Database) -> None:
    n, k = 16, 5
    limits = RateLimits(actions=k)
    barrier = threading.Barrier(n)
    results: list[bool] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def request() -> None:
        try:
            db = get_database()  # one connection per thread (the db layer keeps them thread-local)
            with tenant_transaction(ALPHA, db) as tx:
                tx.scalar("SELECT 1")  # connect before the race starts
            barrier.wait()
            decision = check(ALPHA, "actions", T0, limits=limits, db=db, purge_chance=0)
            with lock:
                results.append(decision.allowed)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            get_database().close()

    threads = [threading.Thread(target=request) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert len(results) == n and results.count(True) == k
    assert counts(database, ALPHA) == [("actions", window_start(T0, 60), n)]


def test_headers_tell_the_limit_what_is_left_and_when_the_window_resets() -> None:
    reset = datetime(2026, 3, 1, 12, 1, tzinfo=UTC)
    ok = Decision(allowed=True, limit=10, count=3, reset_at=reset)
    assert ok.headers(T0) == {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "7",
                              "X-RateLimit-Reset": str(int(reset.timestamp()))}
    over = Decision(allowed=False, limit=10, count=14, reset_at=reset)
    assert over.headers(T0)["X-RateLimit-Remaining"] == "0" and over.headers(T0)["Retry-After"] == "55"
    assert window_start(T0, 60) == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert window_start(T0, 3600) == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_limits_come_from_the_environment_and_bad_values_are_named() -> None:
    assert load_limits({}) == RateLimits(reads=300, settings_write=30, actions=60, export=10, window_s=60)
    custom = load_limits({"RATE_LIMIT_READS": "1000", "RATE_LIMIT_EXPORT": "2", "RATE_LIMIT_WINDOW_S": "120",
                          "RATE_LIMIT_ACTIONS": ""})
    assert (custom.reads, custom.export, custom.window_s, custom.actions) == (1000, 2, 120, 60)
    for name, value in (("RATE_LIMIT_ACTIONS", "0"), ("RATE_LIMIT_READS", "lots"),
                        ("RATE_LIMIT_WINDOW_S", "86400")):
        with pytest.raises(ConfigError, match=name):
            load_limits({name: value})


def test_old_windows_are_purged_per_company(database: Database) -> None:
    old = T0 - timedelta(days=2)
    for company in (ALPHA, BRAVO):
        check(company, "reads", old, purge_chance=0)
    check(ALPHA, "reads", T0, purge_chance=1.0)  # this check also purges (ALPHA's rows only: RLS)
    assert [w for _, w, _ in counts(database, ALPHA)] == [window_start(T0, 60)]
    assert [w for _, w, _ in counts(database, BRAVO)] == [window_start(old, 60)]
    check(BRAVO, "reads", T0, purge_chance=1.0)  # BRAVO's own check purges its old window
    assert [w for _, w, _ in counts(database, BRAVO)] == [window_start(T0, 60)]


def test_http_over_the_limit_is_429_with_headers_and_only_after_auth(api: Api,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATE_LIMIT_READS", "3")
    ratelimit.get_limits.cache_clear()
    for _ in range(4):  # refused tokens do not use up the company's allowance
        api.call("GET", SETTINGS, user=None, token="junk", status=401)
    remaining = []
    for _ in range(3):
        resp, _ = api.call("GET", SETTINGS, status=200)
        assert resp.headers["X-RateLimit-Limit"] == "3"
        remaining.append(resp.headers["X-RateLimit-Remaining"])
    assert remaining == ["2", "1", "0"]
    resp, err = api.call("GET", SETTINGS, status=429)
    assert err["error"]["code"] == "rate_limited"
    assert resp.headers["X-RateLimit-Remaining"] == "0" and 1 <= int(resp.headers["Retry-After"]) <= 60
    assert int(resp.headers["X-RateLimit-Reset"]) > datetime.now(UTC).timestamp() - 1
    # Another route class and another company are not affected.
    api.call("PUT", SETTINGS, body={"incentive_days": 1}, status=200)
    api.call("GET", SETTINGS, user=ADMIN_B, params={"company_id": BRAVO}, status=200)


def test_errors_after_the_limit_check_carry_the_headers_too(api: Api) -> None:
    resp, _ = api.call("GET", "/api/companies/{company_id}/cases/{case_id}", params={"case_id": "bad"},
                       status=400)
    assert resp.headers["X-RateLimit-Limit"] == "300" and resp.headers["X-RateLimit-Remaining"] == "299"
