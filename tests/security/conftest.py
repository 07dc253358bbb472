"""Fixtures of the security suite."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chalicelib import ratelimit


@pytest.fixture
def frozen_windows(monkeypatch: pytest.MonkeyPatch) -> datetime:
    """Every rate-limit check falls in one window, whatever the clock does during the test: a
    limit test must not depend on not crossing a minute boundary."""
    fixed = ratelimit.window_start(datetime.now(UTC), 60)
    monkeypatch.setattr(ratelimit, "window_start", lambda _now, _window_s: fixed)
    return fixed
