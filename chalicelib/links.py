"""Tracked links (``/r/{token}``): record the click, then send the member to fix their payment.

The token is 32 random bytes: unguessable, and it says nothing about the member. A link works
while its case is open; after that it has expired with the case.

- Every click counts (``link_clicks``), but the ledger gets at most one ``link_click`` row per
  case per clock hour: a member (or a bot) clicking hundreds of times cannot flood the case's
  timeline or the ledger.
- Clicks are limited per token (``ratelimit.check_principal("link", token)``) before the token is
  even looked up: no tenant is known yet, and a hammered link costs one counter bump, not a
  case update.
- The member is only ever redirected to an ``https`` URL on an allowed Whop host
  (``REDIRECT_HOSTS``), with no control characters, user info or odd port: the payment's
  ``recovery_url`` if it passes, else the membership's ``manage_url``, else a page that says
  what to do. Outside production, ``http`` on loopback is allowed too (the fake Whop).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from chalicelib.config import get_config
from chalicelib.db_pool import Database
from chalicelib.store import ledger as ledger_store
from chalicelib.tenancy import service_transaction, tenant_transaction
from chalicelib.whop import WhopError, WhopPort

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,100}$")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_URL_LENGTH = 2048


@dataclass(frozen=True)
class Click:
    status: str  # "redirect" | "expired" | "unknown" | "unavailable" | "no_target"
    location: str | None = None


def safe_redirect(url: str | None, hosts: tuple[str, ...], *,
                  allow_loopback_http: bool = False) -> str | None:
    """``url`` if a member may be sent there, else None.

    Only ``https`` to a host in ``hosts`` (exact, or ``*.suffix`` for its subdomains), on the
    default port, without user info, and with no control character or whitespace anywhere (a
    CR/LF would split the Location header).
    """
    if not url or len(url) > MAX_URL_LENGTH or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        return None
    if not url.isascii() or "\\" in url:
        return None  # browsers "fix" backslashes and non-ASCII hosts in ways a check cannot follow
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    if parts.username is not None or parts.password is not None or not host:
        return None
    if parts.scheme == "http" and allow_loopback_http and host in _LOOPBACK:
        return url
    if parts.scheme != "https" or port not in (None, 443):
        return None
    for allowed in hosts:
        if host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:])):
            return url
    return None


def _safe(url: str | None) -> str | None:
    cfg = get_config()
    return safe_redirect(url, cfg.redirect_hosts, allow_loopback_http=not cfg.is_production)


def click_ledger_key(case_id: str, now: datetime) -> str:
    """One ``link_click`` ledger row per case per clock hour (UTC): the key repeats within it."""
    return f"{case_id}:click:{now.strftime('%Y%m%dT%H')}"


def follow(token: str, now: datetime, whop: WhopPort, db: Database | None = None) -> Click:
    """Record a click on ``token`` and say where to send the member.

    Raises
    ------
    TooManyRequests
        This token was clicked more than ``RATE_LIMIT_LINK_CLICKS`` times in the window (429).
    """
    if not _TOKEN.match(token):
        return Click("unknown")
    from chalicelib.ratelimit import enforce_principal

    enforce_principal("link", token, now, "too many clicks on this link; try again in a minute")
    with service_transaction(db) as tx:
        found = tx.one("SELECT company_id, case_id::text AS case_id FROM case_for_link_token(:t)", t=token)
    if found is None:
        return Click("unknown")
    company_id, case_id = found["company_id"], found["case_id"]
    with tenant_transaction(company_id, db) as tx:
        row = tx.one("UPDATE recovery_cases SET link_clicks = link_clicks + 1, last_clicked_at = :now"
                     " WHERE id = CAST(:id AS uuid) AND status = 'open'"
                     " RETURNING membership_id, recovery_url, manage_url", id=case_id, now=now)
        if row is None:
            return Click("expired")
        ledger_store.add_action(tx, case_id=case_id, company_id=company_id, kind="link_click", step="click",
                                status="done", idempotency_key=click_ledger_key(case_id, now), actor="member")
    target = _safe(row["recovery_url"]) or _safe(row["manage_url"])
    if target is None:
        try:
            target = _safe(whop.retrieve_membership(row["membership_id"]).manage_url)
        except WhopError:
            return Click("unavailable")
        if target is None:
            return Click("no_target")
        with tenant_transaction(company_id, db) as tx:
            tx.execute("UPDATE recovery_cases SET manage_url = :u WHERE id = CAST(:id AS uuid)",
                       u=target, id=case_id)
    return Click("redirect", target)
