"""Outcomes of a claim batch are recorded together; a write that fails falls back to one by one."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from chalicelib import claim_gate, claims, effects
from chalicelib.db import QueryError, Transaction
from chalicelib.whop import WhopResult
from tests import test_nudges
from tests.test_nudges import T0, World

world = test_nudges.world


def test_a_batch_of_outcomes_is_one_transaction(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.fail(T0)
    world.fail(T0, membership="mem_2", user="user_2")
    opened: list[int] = []
    real = effects.tenant_transaction

    def counting(*args: Any, **kwargs: Any) -> Any:
        opened.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(effects, "tenant_transaction", counting)
    monkeypatch.setattr(claim_gate, "tenant_transaction", counting)  # the claims' transactions
    stats = world.run_effects(T0)
    assert stats.sent == 4
    # Claim, pin the copies, record, and the empty claim that ends the loop: not one per row.
    assert len(opened) == 4
    assert {a["status"] for a in world.actions()} == {"sent"}


def test_a_failing_outcome_write_is_retried_alone_and_the_others_are_kept(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.fail(T0)
    real = effects._outcome

    def flaky(tx: Transaction, c: claims.Claim, result: WhopResult, now: datetime) -> tuple[str, int]:
        if c.channel == "push":
            raise QueryError("the write failed", "XX000")
        return real(tx, c, result, now)

    monkeypatch.setattr(effects, "_outcome", flaky)
    stats = world.run_effects(T0)
    assert stats.sent == 1 and stats.errors == 1
    rows = {a["channel"]: a for a in world.actions()}
    assert rows["dm"]["status"] == "sent"
    assert rows["push"]["status"] == "pending" and rows["push"]["error_detail"] == "QueryError"


def test_a_copy_that_cannot_be_pinned_fails_its_row_alone(world: World,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    world.fail(T0)
    real = effects.message_copy

    def broken(ctx: claims.Context, c: claims.Claim, now: datetime) -> dict[str, str]:
        if c.channel == "push":
            raise KeyError("template")
        return real(ctx, c, now)

    monkeypatch.setattr(effects, "message_copy", broken)
    stats = world.run_effects(T0)
    assert stats.sent == 1 and stats.errors == 1
    rows = {a["channel"]: a for a in world.actions()}
    assert rows["dm"]["status"] == "sent" and "copy" in rows["dm"]["result"]
    assert rows["push"]["status"] == "pending" and rows["push"]["error_detail"] == "KeyError"


def test_the_budget_is_asked_before_every_whop_call_of_a_row(world: World) -> None:
    # A push makes two calls (the company's push experience, then the send). The budget runs out
    # between them: the send must not start, and the row goes back owed with its attempt unspent.
    world.fail(T0)
    effects.clear_experience_cache()
    calls: list[str] = []

    def out_of_time() -> bool:
        return "find_app_experience" in calls

    real = world.ctx.whop

    class Watching:
        def __getattr__(self, name: str) -> Any:
            target = getattr(real, name)

            def call(*args: Any, **kwargs: Any) -> Any:
                calls.append(name)
                return target(*args, **kwargs)

            return call

    ctx = claims.Context(whop=Watching(), app_id=world.ctx.app_id,  # type: ignore[arg-type]
                         public_base_url=world.ctx.public_base_url)
    stats = effects.execute_owed(ctx, test_nudges.A, T0, world.db, out_of_time=out_of_time)
    assert "send_push" not in calls and world.pushes() == []
    # (The DM may have gone first, before the push asked for its experience.)
    assert stats.sent == len(world.dms()) and stats.errors == 0
    rows = {a["channel"]: a for a in world.actions()}
    assert rows["push"]["status"] == "pending" and rows["push"]["attempts"] == 0
    # With time again, the same row goes, once.
    assert effects.execute_owed(world.ctx, test_nudges.A, T0, world.db).sent >= 1
    assert len(world.pushes()) == 1
