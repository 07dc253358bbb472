"""A circuit breaker for Whop (issue 20 item 4).

With Whop answering 429 to everything, the first tick used to make a request for every owed row
(5,000 in the report). After a run of 429/5xx answers the executor now stops calling that
endpoint until the Retry-After (or a backoff) has passed; the rows stay owed, and come out when
Whop answers again. The breaker lives in each process: concurrent executors of one process share
it (one probe at a time), and nothing about it needs to be shared between Lambdas to be safe.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from chalicelib import claims, effects
from chalicelib.tenancy import tenant_transaction
from tests.helpers import run_concurrently
from tests.test_nudges import T0, World, world  # noqa: F401

COMPANIES = [f"biz_storm{i:02d}" for i in range(20)]
SECOND = timedelta(seconds=1)


def open_cases(world: World, per_company: int = 5) -> None:  # noqa: F811
    for company in COMPANIES:
        world.fake.add_experience(company, world.fake.app_id, f"exp_{company}")
        for n in range(per_company):
            world.fail(T0 - timedelta(hours=1), company=company, membership=f"mem_{company}_{n}",
                       user=f"user_{company}_{n}", now=T0)


def whop_requests(world: World) -> int:  # noqa: F811
    return len(world.fake.calls)


def ledger(world: World) -> dict[str, int]:  # noqa: F811
    """The owed sends by status (a soft decline's payday retry, issue 18, is due days later)."""
    counts: dict[str, int] = {}
    for company in COMPANIES:
        with tenant_transaction(company, world.db) as tx:
            for row in tx.query("SELECT status, count(*) AS n FROM recovery_actions"
                                " WHERE kind <> 'payment_retry' GROUP BY status"):
                counts[row["status"]] = counts.get(row["status"], 0) + int(row["n"])
    return counts


def test_whop_429_to_everything_costs_a_handful_of_requests_not_one_per_row(world: World) -> None:  # noqa: F811
    open_cases(world)
    baseline = whop_requests(world)
    world.fake.inject("*", r"/.*", "429", times=None, retry_after=120)
    result = world.tick(T0)
    requests = whop_requests(world) - baseline
    # 200 owed sends (100 cases, push + DM): the breaker opens per endpoint after THRESHOLD
    # answers in a row, one request each (Retry-After 120 s exceeds the client's sleep budget).
    # A claimed batch's copies are rendered (one product lookup each) before its sends, so: one
    # batch of lookups (CLAIM_BATCH) and THRESHOLD sends per endpoint (5, 5), then nothing.
    assert requests <= effects.CLAIM_BATCH + 2 * 5, f"{requests} requests for 200 owed sends"
    assert ledger(world) == {"pending": 200}  # every row still owed
    assert result.effects.sent == 0 and result.effects.failed == 0 and result.effects.skipped == 0
    # Until the Retry-After has passed, no request at all.
    world.tick(T0 + 60 * SECOND)
    assert whop_requests(world) - baseline == requests
    # Then one probe per endpoint; Whop still refuses: open again, rows still owed.
    world.tick(T0 + 121 * SECOND)
    # Each probe's send, and its product lookup unless its copy was pinned on an earlier try.
    assert requests + 2 <= whop_requests(world) - baseline <= requests + 2 * 2
    assert ledger(world) == {"pending": 200}
    # Whop answers again: the next probe closes the breaker and everything owed goes out.
    world.fake.clear_faults()
    world.tick(T0 + 250 * SECOND)
    # The rows claimed alongside the probes waited for its answer; the rest went at once.
    assert ledger(world)["sent"] >= 200 - effects.CLAIM_BATCH
    world.tick(T0 + 250 * SECOND + effects_breaker().probe_lease + SECOND)
    assert ledger(world) == {"sent": 200}


def effects_breaker() -> Any:
    from chalicelib import breaker

    return breaker.get_breaker()


def test_concurrent_executors_share_one_breaker_and_one_probe(world: World) -> None:  # noqa: F811
    open_cases(world, per_company=3)
    baseline = {path: len(world.fake.calls_to("*", path)) for path in ("/dm_channels", "/experiences")}
    world.fake.inject("*", r"/.*", "500", times=None)
    companies = iter(COMPANIES[:8])

    def executor() -> claims.Stats:
        return effects.execute_owed(world.ctx, next(companies), T0, world.db)

    run_concurrently(executor, 8, after=world.db.close)
    threshold = effects_breaker().threshold
    # A 500 is retried once inside the client: 2 requests an attempt. Executors already past the
    # breaker when it opened may finish theirs (one each at most), nothing more.
    per_endpoint = {path: len(world.fake.calls_to("*", path)) - baseline[path]
                    for path in ("/dm_channels", "/experiences")}
    for path, n in per_endpoint.items():
        assert n <= 2 * (threshold + 8 - 1), (path, n)
    assert ledger(world)["pending"] == 3 * 20 * 2
    # Half-open: whatever the number of executors, one probe per endpoint goes to Whop.
    before = whop_requests(world)
    companies = iter(COMPANIES[8:16])
    later = T0 + effects_breaker().max_backoff + SECOND

    def probing() -> claims.Stats:
        return effects.execute_owed(world.ctx, next(companies), later, world.db)

    run_concurrently(probing, 8, after=world.db.close)
    # Two endpoints, one probe each (not one per executor): its calls, each retried once inside
    # the client (a 500) — the send or the lookup it needs first (the push experience), and the
    # product's name unless a failed lookup of it is still remembered (a minute).
    assert 2 * 2 <= whop_requests(world) - before <= 2 * 2 * 2


def test_member_errors_do_not_open_the_breaker(world: World) -> None:  # noqa: F811
    # A 4xx about the member or the request: Whop is answering, every other row must still go.
    open_cases(world, per_company=2)
    baseline = len(world.fake.calls_to("POST", "/dm_channels"))
    world.fake.inject("POST", "/dm_channels", "422", times=None)
    world.tick(T0)
    assert len(world.fake.calls_to("POST", "/dm_channels")) - baseline == 40  # every DM row was tried
    assert ledger(world) == {"sent": 40, "failed": 40}  # every push went; every DM refused for good
