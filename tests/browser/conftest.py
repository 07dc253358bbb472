"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against the real app
served on 127.0.0.1 (chalice's local server, in this process so the suite's Postgres, fake Whop
and settings apply), one browser for the whole session.

A machine without Chromium fails these tests loudly: `make test` installs it first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, sync_playwright

from tests.helpers import serve_chalice

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / ".tmp" / "browser"


@pytest.fixture(scope="session")
def playwright_session() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="session")
def browser(playwright_session: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: the dashboard's browser tests cannot run. "
                    "`make test` installs it (as root: apt-get install -y chromium); set CHROMIUM_PATH "
                    "if it lives elsewhere.", pytrace=False)
    b = playwright_session.chromium.launch(
        executable_path=CHROMIUM,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
    yield b
    b.close()


@pytest.fixture(scope="package")
def server() -> Iterator[str]:
    """The Chalice app on 127.0.0.1 through chalice's own local server (what `make dev` runs).

    Package-scoped: the app gets its plain class back before any other test module runs."""
    from app import app

    with serve_chalice(app) as url:
        yield url


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context per test (light scheme, desktop size); uncaught page errors fail it."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light",
                                  accept_downloads=True)
    context.set_default_timeout(10_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    csp: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if "Content Security Policy" in msg.text:
            csp.append(msg.text)

    pg.on("console", on_console)
    yield pg
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"
    assert csp == [], f"the page broke its own Content-Security-Policy: {csp}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
