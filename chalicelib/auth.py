"""Who is calling a creator route: the Whop iframe's user token, then Whop's word on admin access.

Every ``/api/companies/{company_id}/…`` request goes through ``authenticate`` before anything
else touches the database:

1. ``x-whop-user-token`` is verified with PyJWT: ES256 only (``none``, HS256 and every other
   algorithm are refused before a key is even looked up), issuer ``urn:whopcom:exp-proxy``,
   ``aud`` a string equal to ``WHOP_APP_ID`` (a list is refused, as Whop's own SDKs do),
   ``exp`` required, ``exp``/``nbf``/``iat`` checked with ``LEEWAY_S`` of clock skew, ``sub``
   a non-empty string. Any failure is 401.
2. The signing key comes from ``WHOP_JWKS_URL`` by the token's ``kid`` (P-256 keys only). The
   key set is cached for ``JWKS_TTL_S``; an unknown ``kid`` triggers a refresh, but at most one
   fetch per ``JWKS_MIN_REFRESH_S`` per process, so junk tokens cannot hammer the endpoint. A
   token without ``kid`` is tried against every cached key (what Whop's Python SDK does). The
   keys unreachable and none cached → 503.
3. The path's company id must look like a Whop company id, and Whop must say the user's
   ``access_level`` on it is ``admin`` (``GET /users/{user}/access/{company}``). Answers are
   cached per (user, company): ``ADMIN_TTL_S`` for admin, ``DENIED_TTL_S`` for anything else.
   Not admin → 403; Whop unreachable → 503 (never 403: an outage must not look like a revoked
   role). There is no bypass in any environment.
4. Before asking Whop (a cache miss), the user's budget of access checks is spent
   (``ratelimit.check_principal("whop_access", sub)``, shared by every instance): over it → 429,
   and the denial is remembered in-process until the window ends, so one token cannot make
   Rebound call Whop once per made-up company id and spend the app-wide Whop quota.
5. Every write (settings, nudges, case actions, experiments) and the CSV export ask Whop again,
   uncached (``fresh``): a revoked admin cannot act, or take every case's data, on a cached
   answer. Reads may use the cache.

Token lifetime is bounded: ``exp - iat`` (or ``exp - now`` without ``iat``) beyond
``MAX_TOKEN_LIFETIME_S`` is refused, whatever the signature says.

Only after this does a request get a company context (``Creator.company_id``) for RLS.
"""

from __future__ import annotations

import hmac
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from chalicelib.config import ConfigError, get_config
from chalicelib.errors import Forbidden, ServiceUnavailable, TooManyRequests, Unauthorized
from chalicelib.observability import count, logger
from chalicelib.whop import AccessLevel, WhopError, WhopNotFound, WhopPort, WhopRetryableError
from chalicelib.whop_client import get_whop

ISSUER = "urn:whopcom:exp-proxy"
TOKEN_HEADER = "x-whop-user-token"  # noqa: S105 - a header name, not a secret
ALGORITHM = "ES256"
LEEWAY_S = 30
MAX_TOKEN_LENGTH = 8192
JWKS_TTL_S = 3600.0
JWKS_MIN_REFRESH_S = 30.0
JWKS_TIMEOUT_S = 5.0
# Whop's iframe tokens live minutes; a day is generous. A longer one is a leaked or forged token.
MAX_TOKEN_LIFETIME_S = 24 * 3600
ADMIN_TTL_S = 60.0
DENIED_TTL_S = 15.0
ACCESS_CACHE_SIZE = 10_000
RETRY_AFTER_S = "5"

# Whop company ids are ``biz_`` + alphanumerics. Anything else cannot be a company the caller
# administers: refused (403) without asking Whop.
COMPANY_ID = re.compile(r"^biz_[A-Za-z0-9]{1,64}$")

Clock = Callable[[], float]
FetchJwks = Callable[[str], Any]
# Spends one Whop access check of a user; raises TooManyRequests when the budget is gone.
AccessBudget = Callable[[str], None]


class JwksUnavailable(Exception):
    """The key set could not be fetched and none is cached."""


def _invalid(reason: str, message: str = "invalid user token") -> Unauthorized:
    logger.info("creator token rejected", extra={"reason": reason})
    count("CreatorTokenRejected")
    return Unauthorized(message)


def fetch_jwks(url: str) -> Any:
    """GET the JWKS document (no redirects, short timeout)."""
    response = httpx.get(url, timeout=JWKS_TIMEOUT_S, follow_redirects=False)
    response.raise_for_status()
    return response.json()


def parse_jwks(document: Any) -> dict[str, jwt.PyJWK]:
    """The usable signing keys of a JWKS document by kid: EC P-256 keys for ES256 only."""
    keys: dict[str, jwt.PyJWK] = {}
    entries = document.get("keys") if isinstance(document, Mapping) else None
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, Mapping) or entry.get("kty") != "EC" or entry.get("crv") != "P-256":
            continue
        if entry.get("alg") not in (None, ALGORITHM) or entry.get("use") not in (None, "sig"):
            continue
        try:
            key = jwt.PyJWK(dict(entry), algorithm=ALGORITHM)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
        kid = entry.get("kid")
        keys[kid if isinstance(kid, str) and kid else f"#{index}"] = key
    return keys


class KeySet:
    """A cached JWKS with a bounded refresh: at most one fetch per ``min_refresh_s``."""

    def __init__(self, url: str, *, fetch: FetchJwks = fetch_jwks, clock: Clock = time.monotonic,
                 ttl_s: float = JWKS_TTL_S, min_refresh_s: float = JWKS_MIN_REFRESH_S) -> None:
        self.url = url
        self._fetch = fetch
        self._clock = clock
        self.ttl_s = ttl_s
        self.min_refresh_s = min_refresh_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._loaded_at: float | None = None
        self._last_attempt: float | None = None
        self._lock = threading.Lock()

    def keys_for(self, kid: str | None) -> list[jwt.PyJWK]:
        """The keys a token with this ``kid`` may be verified with ([] if none)."""
        with self._lock:
            if self._loaded_at is None or self._clock() - self._loaded_at >= self.ttl_s:
                self._refresh()
            if self._loaded_at is None:
                raise JwksUnavailable("no signing keys available")
            if kid is None:
                return list(self._keys.values())
            if kid not in self._keys:
                self._refresh()  # a rotated key; bounded, so a junk kid costs at most one fetch
            key = self._keys.get(kid)
            return [key] if key is not None else []

    def _refresh(self) -> None:
        now = self._clock()
        if self._last_attempt is not None and now - self._last_attempt < self.min_refresh_s:
            return
        self._last_attempt = now
        try:
            document = self._fetch(self.url)
        except (httpx.HTTPError, ValueError) as exc:
            # Keep serving the keys we have; the next refresh is allowed after the cooldown.
            logger.warning("jwks fetch failed", extra={"error": type(exc).__name__})
            return
        keys = parse_jwks(document)
        if not keys and self._keys:
            # A broken or empty answer must not replace keys that work: keep them until the TTL
            # check asks again (after the cooldown).
            logger.warning("jwks refresh returned no usable keys; keeping the previous ones")
            return
        self._keys = keys
        self._loaded_at = now


class TokenVerifier:
    """Verifies ``x-whop-user-token`` and returns the user id (``sub``)."""

    def __init__(self, keys: KeySet, app_id: str, *, leeway_s: int = LEEWAY_S) -> None:
        if not app_id:
            raise ConfigError("missing required setting(s): WHOP_APP_ID")
        self.keys = keys
        self.app_id = app_id
        self.leeway_s = leeway_s

    def verify(self, token: str | None) -> str:
        if not token:
            raise _invalid("missing", f"missing {TOKEN_HEADER} header")
        if len(token) > MAX_TOKEN_LENGTH:
            raise _invalid("too_long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise _invalid("malformed") from None
        if header.get("alg") != ALGORITHM:
            raise _invalid("algorithm")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _invalid("kid")
        try:
            candidates = self.keys.keys_for(kid or None)
        except JwksUnavailable:
            logger.warning("creator token not verifiable: no signing keys")
            raise ServiceUnavailable("cannot verify user tokens right now, retry shortly",
                                     headers={"Retry-After": RETRY_AFTER_S}) from None
        if not candidates:
            raise _invalid("unknown_kid")
        claims = self._decode(token, candidates)
        self._check_lifetime(claims)
        audience = claims.get("aud")
        if not isinstance(audience, str) or not hmac.compare_digest(audience.encode(), self.app_id.encode()):
            raise _invalid("audience")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject.strip():
            raise _invalid("subject")
        return subject

    def _check_lifetime(self, claims: dict[str, Any]) -> None:
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise _invalid("exp")
        if iat is not None and (not isinstance(iat, int | float) or isinstance(iat, bool)):
            raise _invalid("iat")
        issued = iat if iat is not None else time.time()
        if exp - issued > MAX_TOKEN_LIFETIME_S or exp - time.time() > MAX_TOKEN_LIFETIME_S + self.leeway_s:
            raise _invalid("lifetime")

    def _decode(self, token: str, candidates: list[jwt.PyJWK]) -> dict[str, Any]:
        for key in candidates:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token, key.key, algorithms=[ALGORITHM], issuer=ISSUER, leeway=self.leeway_s,
                    options={"require": ["exp", "iss", "sub", "aud"], "verify_aud": False})
                return claims
            except jwt.InvalidSignatureError:
                continue  # another candidate key may have signed it
            except jwt.ExpiredSignatureError:
                raise _invalid("expired", "user token expired") from None
            except jwt.InvalidTokenError as exc:
                raise _invalid(type(exc).__name__) from None
        raise _invalid("signature")


class AccessCache:
    """Whop's access level per (user, company), remembered briefly (bounded LRU)."""

    def __init__(self, whop: WhopPort, *, clock: Clock = time.monotonic, admin_ttl_s: float = ADMIN_TTL_S,
                 denied_ttl_s: float = DENIED_TTL_S, max_entries: int = ACCESS_CACHE_SIZE,
                 budget: AccessBudget | None = None) -> None:
        self.whop = whop
        self.budget = budget or WhopAccessBudget(clock=clock)
        self._clock = clock
        self.admin_ttl_s = admin_ttl_s
        self.denied_ttl_s = denied_ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[AccessLevel, float]] = OrderedDict()
        self._lock = threading.Lock()

    def level(self, user_id: str, company_id: str, *, fresh: bool = False) -> AccessLevel:
        """Whop's word on ``user_id`` for ``company_id``; ``fresh`` skips the cache (and refreshes it)."""
        key = (user_id, company_id)
        if not fresh:
            with self._lock:
                cached = self._entries.get(key)
                if cached is not None and cached[1] > self._clock():
                    self._entries.move_to_end(key)
                    return cached[0]
        self.budget(user_id)  # before Whop is asked: 429 when this user's checks are spent
        level = self._ask_whop(user_id, company_id)
        ttl = self.admin_ttl_s if level == "admin" else self.denied_ttl_s
        with self._lock:
            self._entries[key] = (level, self._clock() + ttl)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return level

    def _ask_whop(self, user_id: str, company_id: str) -> AccessLevel:
        try:
            return self.whop.check_access(user_id, company_id)
        except WhopNotFound:
            return "no_access"
        except WhopRetryableError as exc:
            logger.warning("whop access check unavailable", extra={"error_code": exc.error_code})
            raise ServiceUnavailable("cannot verify access with Whop right now, retry shortly",
                                     headers={"Retry-After": RETRY_AFTER_S}) from None
        except WhopError as exc:
            if exc.status == 401:  # our API key was refused: our problem, not the caller's
                logger.error("whop refused our api key on the access check")
                raise ServiceUnavailable("cannot verify access with Whop right now",
                                         headers={"Retry-After": RETRY_AFTER_S}) from None
            return "no_access"  # 400/403/422: Whop will not vouch for this user on this company


class WhopAccessBudget:
    """The per-user budget of Whop access checks: a shared Postgres counter (all instances), and
    an in-process memory of users over it so a blocked token costs no database round trip."""

    def __init__(self, *, clock: Clock = time.monotonic,
                 check: Callable[[str], tuple[bool, float, dict[str, str]]] | None = None) -> None:
        self._clock = clock
        self._check = check or _shared_access_budget
        self._blocked: dict[str, tuple[float, dict[str, str]]] = {}
        self._lock = threading.Lock()

    def __call__(self, user_id: str) -> None:
        now = self._clock()
        with self._lock:
            blocked = self._blocked.get(user_id)
            if blocked is not None and blocked[0] > now:
                # The stored headers are from the first refusal: Retry-After counts down from there.
                raise self._refusal({**blocked[1], "Retry-After": str(max(1, math.ceil(blocked[0] - now)))})
            self._blocked.pop(user_id, None)
            if len(self._blocked) > ACCESS_CACHE_SIZE:
                self._blocked.clear()
        allowed, retry_after_s, headers = self._check(user_id)
        if not allowed:
            with self._lock:
                self._blocked[user_id] = (now + retry_after_s, headers)
            raise self._refusal(headers)

    @staticmethod
    def _refusal(headers: dict[str, str]) -> TooManyRequests:
        count("CreatorAccessChecksLimited")
        return TooManyRequests("too many access checks for this user; retry after Retry-After",
                               headers=dict(headers))


def _shared_access_budget(user_id: str) -> tuple[bool, float, dict[str, str]]:
    from datetime import UTC, datetime

    from chalicelib.ratelimit import check_principal

    now = datetime.now(UTC)
    decision = check_principal("whop_access", user_id, now)
    # The X-RateLimit-* headers describe this budget (a 429 always carries them, and Retry-After).
    return decision.allowed, float(decision.retry_after_s(now)), decision.headers(now)


@dataclass(frozen=True)
class Creator:
    """A verified admin of ``company_id``: the only source of a request's tenant context."""

    user_id: str
    company_id: str


class Authenticator:
    def __init__(self, verifier: TokenVerifier, access: AccessCache) -> None:
        self.verifier = verifier
        self.access = access

    def authenticate(self, token: str | None, company_id: str, *, fresh: bool = False) -> Creator:
        user_id = self.verifier.verify(token)
        if (not COMPANY_ID.fullmatch(company_id)
                or self.access.level(user_id, company_id, fresh=fresh) != "admin"):
            count("CreatorAccessDenied")
            raise Forbidden("you are not an admin of this company")
        return Creator(user_id=user_id, company_id=company_id)


_lock = threading.Lock()
_current: tuple[str, str, WhopPort, Authenticator] | None = None


def get_authenticator() -> Authenticator:
    """The process-wide authenticator (its caches survive warm invocations).

    Rebuilt when the JWKS URL, app id or Whop adapter changes (tests point each at a new fake).
    """
    global _current
    cfg = get_config()
    whop = get_whop()
    app_id = cfg.WHOP_APP_ID or ""
    with _lock:
        if _current is not None and _current[:2] == (cfg.WHOP_JWKS_URL, app_id) and _current[2] is whop:
            return _current[3]
        authenticator = Authenticator(TokenVerifier(KeySet(cfg.WHOP_JWKS_URL), app_id), AccessCache(whop))
        _current = (cfg.WHOP_JWKS_URL, app_id, whop, authenticator)
        return authenticator


def set_authenticator(authenticator: Authenticator | None) -> None:
    """Install an authenticator (tests with a fake clock); None forgets it."""
    global _current
    with _lock:
        if authenticator is None:
            _current = None
            return
        cfg = get_config()
        _current = (cfg.WHOP_JWKS_URL, cfg.WHOP_APP_ID or "", authenticator.access.whop, authenticator)


def authenticate(headers: Mapping[str, str], company_id: str, *, fresh: bool = False) -> Creator:
    """The verified admin behind a request to ``/api/companies/{company_id}/…``.

    ``fresh`` asks Whop again whatever the cache holds (destructive actions).

    Raises
    ------
    Unauthorized
        No token, or a token that fails verification (401).
    Forbidden
        A valid token of a user who is not an admin of ``company_id`` (403).
    ServiceUnavailable
        Whop (keys or access check) unreachable (503).
    TooManyRequests
        The user's budget of Whop access checks is spent (429).
    """
    return get_authenticator().authenticate(headers.get(TOKEN_HEADER), company_id, fresh=fresh)
