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
               "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
               "Cache-Control": "no-store"}
    return html, headers
