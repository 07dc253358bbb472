"""The creator dashboard: one static page (no tenant data in it) that calls the creator API.

Inside Whop's iframe the proxy adds ``x-whop-user-token`` to the page's same-origin requests, so
the API authenticates every call; the page itself holds nothing to protect. Its inline script is
pinned by hash in the Content-Security-Policy, and only Whop may frame it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from pathlib import Path

_PAGE = Path(__file__).with_name("dashboard.html")
_COMPANY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
FRAME_ANCESTORS = "'self' https://whop.com https://*.whop.com"


def valid_company_id(company_id: str) -> bool:
    return bool(_COMPANY.match(company_id))


@lru_cache(maxsize=1)
def page() -> tuple[str, dict[str, str | list[str]]]:
    html = _PAGE.read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts)
    csp = (f"default-src 'self'; script-src {hashes}; style-src 'self' 'unsafe-inline'; "
           f"img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
           f"frame-ancestors {FRAME_ANCESTORS}")
    headers: dict[str, str | list[str]] = {
        "Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
    return html, headers


# The page's icon: a small SVG (Chromium, Firefox and Safari accept SVG icons), served at
# /favicon.ico too, because browsers ask for that path whatever the page says.
FAVICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
    '<rect width="32" height="32" rx="7" fill="#4338ca"/>'
    '<path d="M9 22 V10 h7 a4.5 4.5 0 0 1 0 9 h-7 M16 19 l6 5" fill="none" stroke="#fff"'
    ' stroke-width="3" stroke-linecap="round" stroke-linejoin="round"/></svg>')


def favicon() -> tuple[str, dict[str, str | list[str]]]:
    return FAVICON_SVG, {"Content-Type": "image/svg+xml", "Cache-Control": "public, max-age=86400",
                         "X-Content-Type-Options": "nosniff"}
