"""The dashboard page: served to Whop's iframe, script pinned by CSP hash, no tenant data."""

from __future__ import annotations

import base64
import hashlib
import re

from chalice.test import Client


def test_dashboard_is_served_with_a_strict_policy() -> None:
    from app import app

    with Client(app) as client:
        resp = client.http.get("/dashboard/biz_demo")
    assert resp.status_code == 200
    html = resp.body.decode()
    assert resp.headers["Content-Type"].startswith("text/html")
    csp = resp.headers["Content-Security-Policy"]
    script = re.search(r"<script>(.*?)</script>", html, flags=re.S)
    assert script is not None
    digest = base64.b64encode(hashlib.sha256(script.group(1).encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp and "unsafe-inline'; img" in csp  # styles only
    assert "frame-ancestors 'self' https://whop.com https://*.whop.com" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "biz_demo" not in html  # the page reads the company from its URL, holds no tenant data
    for route in ("/kpis?window_days=", "/cases?", "/cases/export.csv?", "/settings"):
        assert route in html


def test_dashboard_rejects_odd_company_ids() -> None:
    from app import app

    with Client(app) as client:
        assert client.http.get("/dashboard/%3Cscript%3E").status_code == 404


def test_favicon_is_served_instead_of_403() -> None:
    from app import app

    with Client(app) as client:
        resp = client.http.get("/favicon.ico")
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "image/svg+xml"
    assert resp.body.decode().startswith("<svg")


def test_the_experiment_preview_uses_the_real_default_copy() -> None:
    """The page's live preview falls back to the neutral copy members get for a first nudge."""
    import json

    from chalicelib.dashboard import page
    from chalicelib.messages import default_copy

    html, _ = page()
    block = re.search(r"const DEFAULT_COPY = \{(.*?)\};", html, flags=re.S)
    assert block is not None
    shown = {k: json.loads(v) for k, v in re.findall(r'(\w+): ("(?:[^"\\]|\\.)*")', block.group(1))}
    t0 = default_copy("t0")
    assert shown == {"push_title": t0.title, "push_body": t0.push, "dm_body": t0.dm}


def test_the_page_calls_the_api_under_its_own_stage_prefix() -> None:
    from chalicelib.dashboard import page

    html, _ = page()
    # Deployed at /api/dashboard/{id} (API Gateway stage "api"), the API is /api/api/companies/…
    assert 'path.lastIndexOf("/dashboard/")' in html and "`${prefix}/api/companies/" in html
    assert 'href="../favicon.ico"' in html
