"""Pytest fixtures around the fake Whop server (a real HTTP server on 127.0.0.1).

- ``fake_whop``: a fresh ``FakeWhop`` per test (own port, own signing key, empty state).
- ``whop_sleeps``: a no-op sleeper that records every wait the client asked for.
- ``whop_client``: a ``WhopClient`` pointed at the fake, using ``whop_sleeps`` (no real waiting).
- ``whop_env``: the app's settings (``WHOP_API_BASE``, ``WHOP_API_KEY``, ``WHOP_JWKS_URL``,
  ``WHOP_APP_ID``, ``WHOP_WEBHOOK_SECRET``) and the process-wide ``get_whop()`` pointed at the
  fake, for tests that drive the app end to end. Everything is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chalicelib import config
from chalicelib.whop_client import WhopClient, reset_whop, set_whop
from scripts.fake_whop import FakeWhop


class RecordingSleeper:
    """Stands in for ``time.sleep``: returns at once and remembers the requested delays."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)

    @property
    def total(self) -> float:
        return sum(self.calls)


@pytest.fixture
def fake_whop() -> Iterator[FakeWhop]:
    with FakeWhop() as fake:
        yield fake
    assert fake.server_errors == [], "the fake Whop itself failed"


@pytest.fixture
def whop_sleeps() -> RecordingSleeper:
    return RecordingSleeper()


@pytest.fixture
def whop_client(fake_whop: FakeWhop, whop_sleeps: RecordingSleeper) -> Iterator[WhopClient]:
    client = WhopClient(api_key=fake_whop.api_key, base_url=fake_whop.base_url, sleep=whop_sleeps,
                        connect_timeout_s=2.0, read_timeout_s=5.0)
    yield client
    client.close()


@pytest.fixture
def whop_env(fake_whop: FakeWhop, whop_sleeps: RecordingSleeper,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeWhop]:
    for name, value in {"WHOP_API_BASE": fake_whop.base_url, "WHOP_API_KEY": fake_whop.api_key,
                        "WHOP_JWKS_URL": fake_whop.jwks_url, "WHOP_APP_ID": fake_whop.app_id,
                        "WHOP_WEBHOOK_SECRET": fake_whop.webhook_secret}.items():
        monkeypatch.setenv(name, value)
    config.reset_config()
    set_whop(WhopClient.from_config(config.get_config(), sleep=whop_sleeps,
                                         connect_timeout_s=2.0, read_timeout_s=5.0))
    yield fake_whop
    reset_whop()
    config.reset_config()
