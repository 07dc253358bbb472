"""A fake Whop: a real HTTP server on 127.0.0.1 that behaves like Whop for what Rebound calls.

Used by the tests (``tests/whop_fixtures.py``) and by ``make dev``. It serves, under the same
``/api/v1`` prefix as the real base URL:

    GET  /memberships/{id}               POST /memberships/{id}/extend   {"days": 1..1095}
    POST /memberships/{id}/cancel        {"cancel_at_period_end"?: bool, "reason"?, "feedback_option_id"?}
    POST /notifications                  {title, content, experience_id | account_id, user_ids?, ...}
    POST /dm_channels                    {with_user_ids: [...], account_id? | company_id?}
    POST /messages                       {channel_id, content}
    GET  /users/{user_id}/access/{resource_id}
    GET  /experiences?account_id=&app_id=  GET  /experiences/{id}
    GET  /payments/{id}                  POST /payments/{id}/retry
    PATCH /memberships/{id}              {payment_method_id?, cancel_at_period_end?, metadata?, …}

plus ``GET /.well-known/jwks.json`` (its own ES256 P-256 key, generated at start).

Smart retry: memberships and payments carry a payment method; members have saved
methods (``add_payment_method``, each with the outcome charging it gives). ``PATCH
/memberships/{id}`` with a ``payment_method_id`` makes it the membership's method and, like
Whop, retries the membership's open payment on it right away; ``POST /payments/{id}/retry``
charges the payment's own method again, once (a second retry of the same payment is a 400, as at
Whop). Either way the outcome is queued as a signed ``payment.succeeded``/``payment.failed``
webhook for ``webhook_target`` (the service's ``/webhooks/whop``): ``deliver_webhooks()`` sends
the queue now, or ``auto_deliver=True`` (the CLI, `make dev`) sends each in the background.
``deny_permission("member:payment_methods:manage")`` makes those calls answer 403 like Whop
does for an app without the permission.

Like Whop it requires ``Authorization: Bearer <api key>`` (else 401), validates bodies (400 with
``{"error": {"type", "message", "param"?}}``), answers 404 for unknown objects, and honours
``Idempotency-Key`` on writes: a repeated request with the same key gets the first 2xx response
back (header ``Idempotent-Replayed: true``) without repeating the side effect; the same key on a
different request is a 422. Every call (outside ``/_fake/``) is recorded.

Faults (``inject``) hit before authentication, like an edge proxy would:
``"429"`` (with ``Retry-After``), ``"500"``, ``"503"`` or any other status code as a string,
``"slow"`` (sleep ``delay_s`` then answer normally: the side effect still happens),
``"drop"`` (close the connection without a response, before any side effect) and
``"drop_after"`` (do the work, then close without a response: a lost response).

Admin API for another process (JSON, no auth, loopback only): ``POST /_fake/memberships``,
``/_fake/payments``, ``/_fake/access``, ``/_fake/experiences``, ``/_fake/faults``,
``/_fake/faults/clear``, ``/_fake/reset``, ``/_fake/token``, ``/_fake/sign``,
``/_fake/payment_methods``, ``/_fake/permissions`` ({permission, denied}), ``/_fake/webhooks``
({target?, deliver?});
``GET /_fake/calls``, ``/_fake/state``; ``GET /_fake/manage/{membership_id}`` is the page the
fake ``manage_url`` points at.

CLI: ``python scripts/fake_whop.py --port 8100 --api-key KEY`` serves in the foreground until
Ctrl-C and prints one JSON line with its URLs first.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import random
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jwt  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from standardwebhooks import Webhook  # noqa: E402

from chalicelib.config import DEV_DEFAULTS  # noqa: E402
from chalicelib.models import currency_decimals  # noqa: E402

API_PREFIX = "/api/v1"
JWKS_PATH = "/.well-known/jwks.json"
USER_TOKEN_ISSUER = "urn:whopcom:exp-proxy"
ACCESS_LEVELS = ("admin", "customer", "no_access")
FAULT_KINDS = ("429", "500", "503", "slow", "drop", "drop_after")
MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_SLOW_DELAY_S = 30.0
_CHARGEABLE = ("active", "trialing", "past_due")  # memberships Whop retries a payment for
_ZERO_DECIMAL_CURRENCIES = frozenset({"jpy", "krw", "vnd", "clp", "pyg", "rwf", "xof", "mga"})
# Marks "not given" where None is a meaningful value (manage_url=None means Whop hides it).
AUTO: Any = type("Auto", (), {"__repr__": lambda self: "AUTO"})()


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_dt(value: datetime | str | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _money(amount_minor: int, currency: str) -> dict[str, Any]:
    decimals = 0 if currency.lower() in _ZERO_DECIMAL_CURRENCIES else 2
    amount = Decimal(amount_minor).scaleb(-decimals).quantize(Decimal(1).scaleb(-decimals))
    return {"amount": str(amount), "currency": currency.lower(), "decimals": decimals,
            "display_decimals": decimals}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(7)}"


class FakeError(Exception):
    """An error answer: ``{"error": {"type", "message", "param"?}}`` with ``status``."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.param:
            error["param"] = self.param
        return {"error": error}


# --------------------------------------------------------------------------------------------
# Records and state


@dataclass
class RecordedCall:
    """One request the fake received. ``status`` is None while in flight or when dropped."""

    method: str
    path: str  # full path, e.g. /api/v1/memberships/mem_1/extend
    api_path: str  # the path under /api/v1 (the full path for anything else)
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    json: Any
    body: bytes
    at: float
    status: int | None = None
    fault: str | None = None
    replayed: bool = False

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["body"] = self.body.decode("utf-8", "replace")
        data["idempotency_key"] = self.idempotency_key
        return data


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    kind: str
    remaining: int | None  # None: every matching request
    retry_after: str | None
    delay_s: float
    chance: float = 1.0  # share of matching requests that fail (seeded: see FakeWhop.seed_faults)

    def matches(self, method: str, api_path: str) -> bool:
        return (self.method in ("*", method)) and self.pattern.fullmatch(api_path) is not None


@dataclass
class FakeMembership:
    id: str
    company_id: str
    user_id: str | None
    status: str
    manage_url: Any  # str | None | AUTO
    cancel_at_period_end: bool
    current_period_start: datetime | None
    current_period_end: datetime | None
    renewal_amount_minor: int | None
    currency: str
    billing_period_days: int | None
    plan_id: str
    product_id: str
    product_title: str
    company_title: str
    created_at: datetime
    updated_at: datetime
    canceled_at: datetime | None = None
    cancellation_reason: str | None = None
    extended_days: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    payment_method_id: str | None = None  # what renewals charge


@dataclass
class FakePayment:
    id: str
    membership_id: str | None
    company_id: str
    user_id: str | None
    amount_minor: int
    currency: str
    status: str
    substatus: str
    retryable: bool
    retry_outcome: str  # "paid" or "failed"
    payments_failed: int
    created_at: datetime
    updated_at: datetime
    paid_at: datetime | None = None
    failure_message: str | None = None
    decline_code: str | None = None
    retries: int = 0  # POST /payments/{id}/retry that charged it (a payment is retried once)
    payment_method_id: str | None = None  # the method last charged
    next_payment_attempt_at: datetime | None = None  # Whop's own next automatic attempt
    charges: list[str] = field(default_factory=list)  # every charge attempt: "retry:<pm>" / "attach:<pm>"


@dataclass
class FakePaymentMethod:
    """A payment method a member saved with a company (``payt_…``) and what charging it gives."""

    id: str
    user_id: str
    company_id: str
    outcome: str = "paid"  # "paid" or "failed"


@dataclass
class Delivery:
    """A webhook the fake sent (or will send) to ``webhook_target``."""

    msg_id: str
    type: str
    body: bytes
    status: int | None = None  # the service's answer; None while queued or when it failed
    error: str | None = None


@dataclass(frozen=True)
class _SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey

    def jwk(self) -> dict[str, str]:
        numbers = self.private_key.public_key().public_numbers()
        return {"kty": "EC", "crv": "P-256", "kid": self.kid, "alg": "ES256", "use": "sig",
                "x": _b64url(numbers.x.to_bytes(32, "big")), "y": _b64url(numbers.y.to_bytes(32, "big"))}

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _new_signing_key() -> _SigningKey:
    return _SigningKey(kid=f"fake-{secrets.token_hex(6)}",
                       private_key=ec.generate_private_key(ec.SECP256R1()))


def signing_key_from_file(path: Path) -> _SigningKey:
    """The key kept in ``path`` (PEM), created there on first use: tokens minted before a restart
    of `make dev` stay valid after it."""
    if not path.exists():
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_bytes(pem)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SystemExit(f"{path} does not hold an EC private key")
    kid = "fake-" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return _SigningKey(kid=kid, private_key=key)


@dataclass
class _Request:
    method: str
    path: str
    api_path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    json: Any
    json_error: bool


@dataclass
class _Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    drop: bool = False

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()


def _error(exc: FakeError) -> _Response:
    return _Response(exc.status, exc.body(), dict(exc.headers))


# --------------------------------------------------------------------------------------------
# Body validation like Whop's (400 with the offending param)


def _require_object(req: _Request) -> dict[str, Any]:
    if req.json_error:
        raise FakeError(400, "The request body is not valid JSON")
    if req.json is None:
        return {}
    if not isinstance(req.json, dict):
        raise FakeError(400, "The request body must be a JSON object")
    return req.json


def _string(body: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise FakeError(400, f"{name} is required", param=name)
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise FakeError(400, f"{name} must be a non-empty string", param=name)
    return value


def _string_list(body: dict[str, Any], name: str, *, required: bool) -> list[str] | None:
    value = body.get(name)
    if value is None:
        if required:
            raise FakeError(400, f"{name} is required", param=name)
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise FakeError(400, f"{name} must be a list of strings", param=name)
    if required and not value:
        raise FakeError(400, f"{name} must not be empty", param=name)
    return list(value)


# --------------------------------------------------------------------------------------------
# The fake


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeWhop


class FakeWhop:
    """In-memory Whop behind a real HTTP server. Thread-safe; start()/stop() or ``with``."""

    def __init__(self, *, port: int = 0, api_key: str = DEV_DEFAULTS["WHOP_API_KEY"],
                 app_id: str = DEV_DEFAULTS["WHOP_APP_ID"],
                 webhook_secret: str = DEV_DEFAULTS["WHOP_WEBHOOK_SECRET"],
                 webhook_target: str | None = None, auto_deliver: bool = False) -> None:
        self.webhook_target = webhook_target
        self.auto_deliver = auto_deliver
        # When charges happen (paid_at and the webhooks' event times): tests on a simulated clock
        # set it; None is the real clock.
        self.clock: Callable[[], datetime] | None = None
        self.api_key = api_key
        self.app_id = app_id
        self.webhook_secret = webhook_secret
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._keys: list[_SigningKey] = [_new_signing_key()]
        self.server_errors: list[str] = []  # unexpected exceptions inside the fake (should stay empty)
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., _Response]]] = [
            ("GET", re.compile(r"/memberships/(?P<membership_id>[^/]+)"), self._get_membership),
            ("PATCH", re.compile(r"/memberships/(?P<membership_id>[^/]+)"), self._update_membership),
            ("POST", re.compile(r"/memberships/(?P<membership_id>[^/]+)/extend"), self._extend),
            ("POST", re.compile(r"/memberships/(?P<membership_id>[^/]+)/cancel"), self._cancel),
            ("POST", re.compile(r"/notifications"), self._notify),
            ("POST", re.compile(r"/dm_channels"), self._dm_channel),
            ("POST", re.compile(r"/messages"), self._message),
            ("GET", re.compile(r"/users/(?P<user_id>[^/]+)/access/(?P<resource_id>[^/]+)"), self._access),
            ("GET", re.compile(r"/experiences"), self._experiences),
            ("GET", re.compile(r"/experiences/(?P<experience_id>[^/]+)"), self._get_experience),
            ("GET", re.compile(r"/payments/(?P<payment_id>[^/]+)"), self._get_payment),
            ("POST", re.compile(r"/payments/(?P<payment_id>[^/]+)/retry"), self._retry_payment),
        ]
        self._clear_state()

    def _clear_state(self) -> None:
        with self._lock:
            self.memberships: dict[str, FakeMembership] = {}
            self.payments: dict[str, FakePayment] = {}
            self.access: dict[tuple[str, str], str] = {}
            self.experiences: list[dict[str, Any]] = []
            self.dm_channels: dict[str, dict[str, Any]] = {}
            self.notifications: list[dict[str, Any]] = []
            self.messages: list[dict[str, Any]] = []
            self._calls: list[RecordedCall] = []
            self._faults: list[Fault] = []
            self._fault_rng = random.Random(0)
            self._idempotency: dict[str, tuple[str, _Response]] = {}
            self.payment_methods: dict[str, FakePaymentMethod] = {}
            self.denied_permissions: set[str] = set()
            self.deliveries: list[Delivery] = []

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeWhop:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", self._requested_port), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-whop", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeWhop:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FakeWhop(origin={self.origin if self._server else None!r})"

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeWhop is not started")
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + API_PREFIX

    @property
    def jwks_url(self) -> str:
        return self.origin + JWKS_PATH

    # ---- seeding and inspection ------------------------------------------------------------

    def add_membership(self, membership_id: str, *, company_id: str, user_id: str | None,
                       status: str = "past_due", manage_url: Any = AUTO,
                       cancel_at_period_end: bool = False,
                       current_period_end: datetime | str | None = AUTO,
                       renewal_amount_minor: int | None = 1999, currency: str = "usd",
                       billing_period_days: int | None = 30, plan_id: str | None = None,
                       product_id: str | None = None, product_title: str = "Pro",
                       company_title: str | None = None) -> dict[str, Any]:
        """Add (or replace) a membership; returns it as Whop would serialize it."""
        now = _now()
        period_end = now + timedelta(days=1) if current_period_end is AUTO else _parse_dt(current_period_end)
        period_start = (period_end - timedelta(days=billing_period_days)
                        if period_end is not None and billing_period_days else None)
        membership = FakeMembership(
            id=membership_id, company_id=company_id, user_id=user_id, status=status,
            manage_url=manage_url, cancel_at_period_end=cancel_at_period_end,
            current_period_start=period_start, current_period_end=period_end,
            renewal_amount_minor=renewal_amount_minor, currency=currency.lower(),
            billing_period_days=billing_period_days,
            plan_id=plan_id or f"plan_{company_id[-6:]}", product_id=product_id or f"prod_{company_id[-6:]}",
            product_title=product_title, company_title=company_title or f"Company {company_id}",
            created_at=now - timedelta(days=90), updated_at=now)
        with self._lock:
            self.memberships[membership_id] = membership
            return self._membership_json(membership)

    def membership(self, membership_id: str) -> dict[str, Any]:
        """A membership as the API would return it (KeyError if unknown)."""
        with self._lock:
            return self._membership_json(self.memberships[membership_id])

    def add_payment(self, payment_id: str, *, company_id: str, membership_id: str | None = None,
                    user_id: str | None = None, amount_minor: int = 1999, currency: str = "usd",
                    status: str = "open", retry_outcome: str = "paid", payments_failed: int = 1,
                    failure_message: str | None = "Your card has insufficient funds.",
                    decline_code: str | None = "insufficient_funds", payment_method_id: str | None = None,
                    next_payment_attempt_at: datetime | str | None = None,
                    retryable: bool | None = None) -> dict[str, Any]:
        """Add (or replace) a payment. ``retry_outcome`` is what ``POST …/retry`` gives (its own
        method charged again); ``next_payment_attempt_at`` is Whop's own next attempt, if any."""
        if retry_outcome not in ("paid", "failed"):
            raise ValueError("retry_outcome must be 'paid' or 'failed'")
        now = _now()
        payment = FakePayment(
            id=payment_id, membership_id=membership_id, company_id=company_id, user_id=user_id,
            amount_minor=amount_minor, currency=currency.lower(), status=status,
            substatus="past_due" if status == "open" else status,
            retryable=status == "open" if retryable is None else retryable,
            retry_outcome=retry_outcome, payments_failed=payments_failed, created_at=now,
            updated_at=now, failure_message=failure_message, decline_code=decline_code,
            payment_method_id=payment_method_id or f"payt_orig_{payment_id}"[:60],
            next_payment_attempt_at=_parse_dt(next_payment_attempt_at),
            paid_at=now if status == "paid" else None)
        with self._lock:
            self.payments[payment_id] = payment
            return self._payment_json(payment)

    def add_payment_method(self, payment_method_id: str, *, user_id: str, company_id: str,
                           outcome: str = "paid") -> None:
        """A method the member saved with the company; ``outcome`` is what charging it gives."""
        if outcome not in ("paid", "failed"):
            raise ValueError("outcome must be 'paid' or 'failed'")
        with self._lock:
            self.payment_methods[payment_method_id] = FakePaymentMethod(
                payment_method_id, user_id, company_id, outcome)

    def deny_permission(self, permission: str, denied: bool = True) -> None:
        """Answer 403 to the calls that need ``permission`` (as for an app not granted it)."""
        with self._lock:
            (self.denied_permissions.add if denied else self.denied_permissions.discard)(permission)

    def payment(self, payment_id: str) -> dict[str, Any]:
        with self._lock:
            return self._payment_json(self.payments[payment_id])

    def set_access(self, user_id: str, resource_id: str, level: str) -> None:
        if level not in ACCESS_LEVELS:
            raise ValueError(f"level must be one of {ACCESS_LEVELS}")
        with self._lock:
            self.access[(user_id, resource_id)] = level

    def add_experience(self, company_id: str, app_id: str, experience_id: str,
                       name: str = "Rebound") -> None:
        with self._lock:
            self.experiences = [e for e in self.experiences if e["id"] != experience_id]
            self.experiences.append({"id": experience_id, "company_id": company_id, "app_id": app_id,
                                     "name": name, "created_at": _now()})

    def seed_faults(self, seed: int) -> None:
        """Make ``chance`` faults reproducible (chaos runs)."""
        with self._lock:
            self._fault_rng = random.Random(seed)

    def inject(self, method: str, path_regex: str, kind: str, *, times: int | None = 1,
               retry_after: int | float | str | None = None, delay_s: float = 2.0,
               chance: float = 1.0) -> None:
        """Make the next ``times`` matching requests fail (None: all of them); with ``chance``
        below 1, each matching request fails with that probability.

        ``path_regex`` must match the whole path under ``/api/v1`` (e.g. ``/memberships/[^/]+/extend``;
        ``/.well-known/jwks.json`` for the keys); ``method`` may be ``"*"``.
        """
        if kind not in FAULT_KINDS and not re.fullmatch(r"[1-5]\d\d", kind):
            raise ValueError(f"unknown fault kind {kind!r}")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        if not 0 <= delay_s <= MAX_SLOW_DELAY_S:
            raise ValueError(f"delay_s must be within 0..{MAX_SLOW_DELAY_S}")
        if kind == "429" and retry_after is None:
            retry_after = 1
        with self._lock:
            self._faults.append(Fault(method.upper(), re.compile(path_regex), kind, times,
                                      None if retry_after is None else str(retry_after), delay_s,
                                      chance))

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Wait until no API request is being served (a slow fault still sleeping, say)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout_s)

    def _serving(self, delta: int) -> None:
        with self._idle:
            self._in_flight += delta
            self._idle.notify_all()

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def calls(self) -> list[RecordedCall]:
        with self._lock:
            return list(self._calls)

    def calls_to(self, method: str, path_regex: str) -> list[RecordedCall]:
        """Recorded calls whose method matches (``"*"``: any) and whose API path fully matches."""
        pattern = re.compile(path_regex)
        wanted = method.upper()
        return [c for c in self.calls
                if wanted in ("*", c.method) and pattern.fullmatch(c.api_path) is not None]

    def reset(self) -> None:
        """Forget all data, calls, faults and idempotency keys (the signing keys stay)."""
        self._clear_state()

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "memberships": [self._membership_json(m) for m in self.memberships.values()],
                "payments": [self._payment_json(p) for p in self.payments.values()],
                "access": [{"user_id": u, "resource_id": r, "level": lvl}
                           for (u, r), lvl in self.access.items()],
                "experiences": [self._experience_json(e) for e in self.experiences],
                "dm_channels": list(self.dm_channels.values()),
                "notifications": list(self.notifications),
                "messages": list(self.messages),
                "payment_methods": [asdict(m) for m in self.payment_methods.values()],
                "membership_payment_methods": {m.id: m.payment_method_id for m in self.memberships.values()},
                "webhooks": [{"msg_id": d.msg_id, "type": d.type, "status": d.status, "error": d.error}
                             for d in self.deliveries],
            }

    # ---- tokens and webhooks -----------------------------------------------------------------

    @property
    def signing_key_id(self) -> str:
        return self._keys[-1].kid

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [k.jwk() for k in self._keys]}

    def rotate_key(self, *, keep_old: bool = True) -> str:
        """Start signing with a new key; the JWKS keeps the old one unless ``keep_old=False``."""
        key = _new_signing_key()
        with self._lock:
            self._keys = [*self._keys, key] if keep_old else [key]
        return key.kid

    def mint_user_token(self, user_id: str, app_id: str | None = None, *, expires_in: int = 300,
                        issuer: str = USER_TOKEN_ISSUER, audience: str | None = None,
                        kid: str | None = None, alg: str = "ES256",
                        extra_claims: dict[str, Any] | None = None,
                        headers: dict[str, Any] | None = None, foreign_key: bool = False) -> str:
        """An ``x-whop-user-token`` like Whop's iframe proxy sends (ES256, signed by this fake).

        ``kid=None`` uses the current key's id, ``kid=""`` leaves it out. ``extra_claims`` are
        merged last; a claim set to None is removed. ``alg="none"`` gives an unsigned token and
        ``alg="HS256"`` an HMAC over the public key PEM (the classic algorithm-confusion attack).
        ``foreign_key=True`` signs with a key that is not in the JWKS.
        """
        now = int(time.time())
        claims: dict[str, Any] = {"iss": issuer, "sub": user_id, "aud": audience or app_id or self.app_id,
                                  "iat": now, "exp": now + expires_in}
        claims.update(extra_claims or {})
        claims = {k: v for k, v in claims.items() if v is not None}
        key = self._keys[-1]
        header: dict[str, Any] = {"kid": key.kid if kid is None else kid}
        if header["kid"] == "":
            del header["kid"]
        header.update(headers or {})
        if alg == "ES256":
            signer = _new_signing_key().private_key if foreign_key else key.private_key
            return jwt.encode(claims, signer, algorithm="ES256", headers=header)
        if alg not in ("none", "HS256"):
            raise ValueError("alg must be ES256, HS256 or none")
        full_header = {"alg": alg, "typ": "JWT", **header}
        signing_input = (_b64url(json.dumps(full_header, separators=(",", ":")).encode()) + "."
                         + _b64url(json.dumps(claims, separators=(",", ":")).encode()))
        if alg == "none":
            return signing_input + "."
        mac = hmac.new(key.public_pem(), signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + _b64url(mac)

    def sign_webhook(self, body: bytes | str, secret: str | None = None, msg_id: str | None = None,
                     timestamp: int | None = None) -> dict[str, str]:
        """Standard Webhooks headers the way Whop signs: HMAC-SHA256 keyed with the literal
        UTF-8 bytes of the ``ws_`` secret (so ``Webhook`` gets it base64-encoded)."""
        payload = body.decode("utf-8") if isinstance(body, bytes) else body
        msg_id = msg_id or f"msg_{secrets.token_hex(12)}"
        ts = int(time.time()) if timestamp is None else int(timestamp)
        key = base64.b64encode((secret if secret is not None else self.webhook_secret).encode("utf-8"))
        signature = Webhook(key.decode("ascii")).sign(msg_id, datetime.fromtimestamp(ts, UTC), payload)
        return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature,
                "content-type": "application/json"}

    # ---- request handling ----------------------------------------------------------------------

    def handle(self, req: _Request, record: RecordedCall | None) -> _Response:
        fault = self._take_fault(req.method, req.api_path)
        if record is not None and fault is not None:
            record.fault = fault.kind
        if fault is not None:
            if fault.kind == "drop":
                return _Response(0, drop=True)
            if fault.kind == "slow":
                time.sleep(fault.delay_s)
            elif fault.kind != "drop_after":
                return self._fault_response(fault)
        response = self._serve_api(req, record)
        if fault is not None and fault.kind == "drop_after":
            return _Response(0, drop=True)
        return response

    def _take_fault(self, method: str, api_path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, api_path):
                    if fault.chance < 1.0 and self._fault_rng.random() >= fault.chance:
                        continue
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    @staticmethod
    def _fault_response(fault: Fault) -> _Response:
        status = int(fault.kind)
        if status == 429:
            exc = FakeError(429, "You are being rate limited", type_="rate_limit_error",
                            headers={"Retry-After": fault.retry_after or "1"})
        else:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            exc = FakeError(status, f"Injected fault {status}", type_="api_error", headers=headers)
        return _error(exc)

    def _serve_api(self, req: _Request, record: RecordedCall | None) -> _Response:
        if req.method == "GET" and req.path == JWKS_PATH:
            return _Response(200, self.jwks(), {"Cache-Control": "public, max-age=300"})
        if not req.path.startswith(API_PREFIX + "/"):
            return _error(FakeError(404, "Not found", type_="not_found"))
        if req.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(FakeError(401, "Invalid or missing API key", type_="unauthorized"))
        route = self._route(req)
        if route is None:
            return _error(FakeError(404, f"No route for {req.method} {req.api_path}", type_="not_found"))
        handler, params = route
        key = req.headers.get("idempotency-key")
        if req.method == "GET" or key is None:
            return self._run(handler, req, params)
        if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            return _error(FakeError(400, "Idempotency-Key must be 1-255 characters", param="Idempotency-Key"))
        fingerprint = hashlib.sha256(req.method.encode() + b" " + req.api_path.encode() + b"\n"
                                     + json.dumps(req.json, sort_keys=True).encode()).hexdigest()
        with self._lock:
            stored = self._idempotency.get(key)
            if stored is not None:
                if stored[0] != fingerprint:
                    return _error(FakeError(422, "Idempotency-Key was already used for a different request",
                                            type_="idempotency_error"))
                if record is not None:
                    record.replayed = True
                first = stored[1]
                return _Response(first.status, first.body, {**first.headers, "Idempotent-Replayed": "true"})
            response = self._run(handler, req, params)
            if 200 <= response.status < 300:
                self._idempotency[key] = (fingerprint, response)
            return response

    def _route(self, req: _Request) -> tuple[Callable[..., _Response], dict[str, str]] | None:
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(req.api_path)
            if match and method == req.method:
                return handler, match.groupdict()
        return None

    def _run(self, handler: Callable[..., _Response], req: _Request, params: dict[str, str]) -> _Response:
        try:
            with self._lock:
                return handler(req, **params)
        except FakeError as exc:
            return _error(exc)

    # ---- API endpoints -----------------------------------------------------------------------

    def _membership_or_404(self, membership_id: str) -> FakeMembership:
        membership = self.memberships.get(membership_id)
        if membership is None:
            raise FakeError(404, f"Membership {membership_id} not found", type_="not_found")
        return membership

    def _get_membership(self, req: _Request, membership_id: str) -> _Response:
        return _Response(200, self._membership_json(self._membership_or_404(membership_id)))

    def _extend(self, req: _Request, membership_id: str) -> _Response:
        body = _require_object(req)
        days = body.get("days")
        if days is None:
            raise FakeError(400, "days is required", param="days")
        if not isinstance(days, int) or isinstance(days, bool):
            raise FakeError(400, "days must be an integer", param="days")
        if not 1 <= days <= 1095:
            raise FakeError(400, "days must be between 1 and 1095", param="days")
        membership = self._membership_or_404(membership_id)
        membership.current_period_end = (membership.current_period_end or _now()) + timedelta(days=days)
        membership.extended_days += days
        membership.updated_at = _now()
        return _Response(200, self._membership_json(membership))

    def _cancel(self, req: _Request, membership_id: str) -> _Response:
        body = _require_object(req)
        at_period_end = body.get("cancel_at_period_end")
        if at_period_end is not None and not isinstance(at_period_end, bool):
            raise FakeError(400, "cancel_at_period_end must be a boolean", param="cancel_at_period_end")
        reason = _string(body, "reason", required=False)
        _string(body, "feedback_option_id", required=False)
        membership = self._membership_or_404(membership_id)
        if membership.status in ("canceled", "expired"):
            raise FakeError(409, "Membership is already canceled", type_="conflict")
        now = _now()
        if at_period_end:
            membership.cancel_at_period_end = True
        else:  # omitted or false: access ends now
            membership.status = "canceled"
            membership.cancel_at_period_end = False
        membership.canceled_at = now
        membership.cancellation_reason = reason
        membership.updated_at = now
        return _Response(200, self._membership_json(membership))

    def _notify(self, req: _Request) -> _Response:
        body = _require_object(req)
        title = _string(body, "title", required=True)
        content = _string(body, "content", required=True)
        experience_id = _string(body, "experience_id", required=False)
        account_id = _string(body, "account_id", required=False)
        if (experience_id is None) == (account_id is None):
            raise FakeError(400, "Exactly one of experience_id or account_id is required",
                            param="experience_id")
        user_ids = _string_list(body, "user_ids", required=False)
        for name in ("rest_path", "subtitle", "icon_user_id"):
            _string(body, name, required=False)
        if experience_id is not None and not any(e["id"] == experience_id for e in self.experiences):
            raise FakeError(404, f"Experience {experience_id} not found", type_="not_found")
        self.notifications.append({
            "id": _new_id("ntf"), "title": title, "content": content, "experience_id": experience_id,
            "account_id": account_id, "user_ids": user_ids, "rest_path": body.get("rest_path"),
            "subtitle": body.get("subtitle"), "created_at": _iso(_now())})
        return _Response(200, {"success": True})

    def _dm_channel(self, req: _Request) -> _Response:
        body = _require_object(req)
        users = _string_list(body, "with_user_ids", required=True) or []
        account_id = _string(body, "account_id", required=False)
        company_id = _string(body, "company_id", required=False)
        if account_id is not None and company_id is not None:
            raise FakeError(400, "Pass account_id or company_id, not both", param="account_id")
        scope = account_id or company_id
        members = sorted(set(users))
        for channel in self.dm_channels.values():
            if channel["with_user_ids"] == members and channel["account_id"] == scope:
                return _Response(200, channel)
        channel = {"id": _new_id("feed"), "created_at": _iso(_now()), "with_user_ids": members,
                   "account_id": scope, "name": body.get("custom_name")}
        self.dm_channels[channel["id"]] = channel
        return _Response(200, channel)

    def _message(self, req: _Request) -> _Response:
        body = _require_object(req)
        channel_id = _string(body, "channel_id", required=True)
        content = _string(body, "content", required=True)
        if channel_id not in self.dm_channels and not any(e["id"] == channel_id for e in self.experiences):
            raise FakeError(404, f"Channel {channel_id} not found", type_="not_found")
        now = _iso(_now())
        message: dict[str, Any] = {"id": _new_id("post"), "channel_id": channel_id, "content": content,
                   "created_at": now, "updated_at": now, "is_edited": False, "is_pinned": False,
                   "mentions": [], "mentions_everyone": False, "message_type": "regular",
                   "poll_votes": [], "reaction_counts": [],
                   "user": {"id": "user_rebound_agent", "username": "rebound", "name": "Rebound"}}
        self.messages.append(message)
        return _Response(200, message)

    def _access(self, req: _Request, user_id: str, resource_id: str) -> _Response:
        level = self.access.get((user_id, resource_id), "no_access")
        return _Response(200, {"has_access": level != "no_access", "access_level": level})

    def _experiences(self, req: _Request) -> _Response:
        account_id = next(iter(req.query.get("account_id", [])), None)
        if not account_id:
            raise FakeError(400, "account_id is required", param="account_id")
        app_id = next(iter(req.query.get("app_id", [])), None)
        found = [self._experience_json(e) for e in self.experiences
                 if e["company_id"] == account_id and (app_id is None or e["app_id"] == app_id)]
        return _Response(200, {"data": found, "page_info": {
            "has_next_page": False, "has_previous_page": False, "start_cursor": None, "end_cursor": None}})

    def _get_experience(self, req: _Request, experience_id: str) -> _Response:
        # Like Whop: an id that is not an experience id is a 400, an unknown one a 404.
        if not re.fullmatch(r"exp_[A-Za-z0-9_-]+", experience_id):
            raise FakeError(400, "id must be an experience id (exp_...)", param="id")
        found = next((e for e in self.experiences if e["id"] == experience_id), None)
        if found is None:
            raise FakeError(404, f"Experience {experience_id} not found", type_="not_found")
        return _Response(200, {**self._experience_json(found), "products": [], "order": None, "image": None})

    def _payment_or_404(self, payment_id: str) -> FakePayment:
        payment = self.payments.get(payment_id)
        if payment is None:
            raise FakeError(404, f"Payment {payment_id} not found", type_="not_found")
        return payment

    def _get_payment(self, req: _Request, payment_id: str) -> _Response:
        return _Response(200, self._payment_json(self._payment_or_404(payment_id)))

    def _retry_payment(self, req: _Request, payment_id: str) -> _Response:
        _require_object(req)
        self._require_permission("payment:manage")
        payment = self._payment_or_404(payment_id)
        if payment.retries:
            raise FakeError(400, "This payment has already been retried", param="id")
        if not payment.retryable or payment.status != "open":
            raise FakeError(400, "This payment cannot be retried", param="id")
        membership = self.memberships.get(payment.membership_id or "")
        if membership is not None and membership.status not in _CHARGEABLE:
            raise FakeError(400, "This payment cannot be retried", param="id")
        payment.retries += 1
        self._charge(payment, payment.payment_method_id, payment.retry_outcome, via="retry")
        return _Response(200, self._payment_json(payment))

    def _charge(self, payment: FakePayment, method: str | None, outcome: str, *, via: str) -> None:
        """Charge ``payment`` on ``method`` with the given outcome, and queue Whop's webhook."""
        now = self.clock() if self.clock is not None else _now()
        payment.charges.append(f"{via}:{method}")
        payment.payment_method_id = method
        payment.updated_at = now
        payment.next_payment_attempt_at = None
        if outcome == "paid":
            payment.status, payment.substatus, payment.paid_at = "paid", "succeeded", now
            payment.retryable = False
            payment.failure_message = payment.decline_code = None
            membership = self.memberships.get(payment.membership_id or "")
            if membership is not None and membership.status == "past_due":
                membership.status, membership.updated_at = "active", now
        else:
            payment.payments_failed += 1
            payment.substatus = "failed"
            payment.retryable = via != "retry"  # Whop retries a payment once
            payment.failure_message, payment.decline_code = "Your card was declined.", "generic_decline"
        self._queue_webhook(payment, "payment.succeeded" if outcome == "paid" else "payment.failed", now)

    def _require_permission(self, permission: str) -> None:
        if permission in self.denied_permissions:
            raise FakeError(403, f"This action requires the {permission} permission", type_="forbidden")

    def _update_membership(self, req: _Request, membership_id: str) -> _Response:
        """``PATCH /memberships/{id}``: like Whop, an attached ``payment_method_id`` is charged
        for the membership's open payment right away."""
        body = _require_object(req)
        unknown = set(body) - {"billing_period_days", "cancel_at_period_end", "metadata", "payment_method_id"}
        if unknown:
            raise FakeError(400, f"Unknown parameter {sorted(unknown)[0]}", param=sorted(unknown)[0])
        membership = self._membership_or_404(membership_id)
        method_id = _string(body, "payment_method_id", required=False)
        if "cancel_at_period_end" in body and not isinstance(body["cancel_at_period_end"], bool):
            raise FakeError(400, "cancel_at_period_end must be a boolean", param="cancel_at_period_end")
        if "metadata" in body and not isinstance(body["metadata"], dict):
            raise FakeError(400, "metadata must be an object", param="metadata")
        now = _now()
        if method_id is not None:
            self._require_permission("member:payment_methods:manage")
            method = self.payment_methods.get(method_id)
            if method is None or (method.user_id, method.company_id) != (membership.user_id,
                                                                           membership.company_id):
                raise FakeError(404, f"Payment method {method_id} not found", type_="not_found",
                                param="payment_method_id")
            if membership.status not in _CHARGEABLE:
                raise FakeError(400, "The membership is not active, trialing or past due",
                                param="payment_method_id")
            membership.payment_method_id = method_id
            for payment in self.payments.values():
                if payment.membership_id == membership_id and payment.status == "open":
                    self._charge(payment, method_id, method.outcome, via="attach")
        if isinstance(body.get("cancel_at_period_end"), bool):
            membership.cancel_at_period_end = body["cancel_at_period_end"]
        if isinstance(body.get("metadata"), dict):
            membership.metadata.update(body["metadata"])
        membership.updated_at = now
        return _Response(200, self._membership_json(membership))

    # ---- webhooks back to the service ---------------------------------------------------------

    def _queue_webhook(self, payment: FakePayment, kind: str, at: datetime) -> None:
        from scripts.whop_payloads import payment_event

        msg_id, body = payment_event(
            kind, company=payment.company_id, membership=payment.membership_id or "",
            user=payment.user_id or "",
            at=at, payment=payment.id,
            amount=float(Decimal(payment.amount_minor).scaleb(-currency_decimals(payment.currency))),
            currency=payment.currency, decline_code=payment.decline_code,
            failure_message=payment.failure_message)
        delivery = Delivery(msg_id=msg_id, type=kind, body=body)
        self.deliveries.append(delivery)
        if self.auto_deliver and self.webhook_target:
            threading.Thread(target=self._send, args=(delivery,), name="fake-whop-webhook",
                             daemon=True).start()

    def deliver_webhooks(self) -> list[Delivery]:
        """Send every queued webhook to ``webhook_target`` now, in order; return them."""
        with self._lock:
            pending = [d for d in self.deliveries if d.status is None and d.error is None]
        for delivery in pending:
            self._send(delivery)
        return pending

    def _send(self, delivery: Delivery) -> None:
        import urllib.error
        import urllib.request

        if not self.webhook_target:
            delivery.error = "no webhook_target"
            return
        headers = self.sign_webhook(delivery.body, msg_id=delivery.msg_id)
        req = urllib.request.Request(self.webhook_target, data=delivery.body, headers=headers,  # noqa: S310
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - a local target
                delivery.status = resp.status
        except urllib.error.HTTPError as err:
            delivery.status = err.code
        except OSError as exc:
            delivery.error = type(exc).__name__

    # ---- serialization (dated v1 shape) ------------------------------------------------------

    def _manage_url(self, membership: FakeMembership) -> str | None:
        if membership.manage_url is AUTO:
            return f"{self.origin}/_fake/manage/{membership.id}" if self._server else None
        return membership.manage_url  # type: ignore[no-any-return]

    def _membership_json(self, m: FakeMembership) -> dict[str, Any]:
        renewal = _money(m.renewal_amount_minor, m.currency) if m.renewal_amount_minor is not None else None
        return {
            "id": m.id, "status": m.status, "user_id": m.user_id, "member_id": f"mber_{m.id[-8:]}",
            "account": {"id": m.company_id, "route": m.company_id.replace("_", "-"),
                        "title": m.company_title, "logo_url": None},
            "product": {"id": m.product_id, "title": m.product_title, "logo_url": None},
            "product_id": m.product_id, "plan_id": m.plan_id,
            "cancel_at_period_end": m.cancel_at_period_end, "canceled_at": _iso(m.canceled_at),
            "cancellation_reason": m.cancellation_reason,
            "current_period_start": _iso(m.current_period_start),
            "current_period_end": _iso(m.current_period_end), "expires_at": None,
            "billing_period_days": m.billing_period_days, "collection_method": "charge_automatically",
            "renewal_price": renewal,
            "initial_price": _money(m.renewal_amount_minor or 0, m.currency),
            "manage_url": self._manage_url(m), "metadata": dict(m.metadata),
            "license_key": None, "phone_number": None, "promo_code_id": None,
            "created_at": _iso(m.created_at), "updated_at": _iso(m.updated_at),
        }

    @staticmethod
    def _payment_json(p: FakePayment) -> dict[str, Any]:
        total = _money(p.amount_minor, p.currency)
        return {
            "id": p.id, "status": p.status, "substatus": p.substatus, "membership_id": p.membership_id,
            "account_id": p.company_id, "user_id": p.user_id, "currency": p.currency,
            "total": total, "subtotal": total, "amount_after_fees": total,
            "tax_refunded_amount": _money(0, p.currency), "auto_refunded": False, "holds": [],
            "line_items": [], "payment_rule_matches": [], "payments_failed": p.payments_failed,
            "refundable": p.status == "paid", "retryable": p.retryable, "voidable": p.status == "open",
            "three_ds_verified": False, "failure_message": p.failure_message,
            "decline_code": p.decline_code, "billing_reason": "subscription_cycle",
            "created_at": _iso(p.created_at), "updated_at": _iso(p.updated_at), "paid_at": _iso(p.paid_at),
            "last_payment_attempt_at": _iso(p.updated_at),
            "next_payment_attempt_at": _iso(p.next_payment_attempt_at),
            "payment_method_id": p.payment_method_id,
        }

    @staticmethod
    def _experience_json(e: dict[str, Any]) -> dict[str, Any]:
        return {"id": e["id"], "name": e["name"], "is_public": False, "created_at": _iso(e["created_at"]),
                "app": {"id": e["app_id"], "name": e["name"]},
                "company": {"id": e["company_id"], "route": e["company_id"].replace("_", "-"),
                            "title": f"Company {e['company_id']}"}}

    # ---- admin API (/_fake/...) --------------------------------------------------------------

    def handle_admin(self, req: _Request) -> _Response:
        try:
            return self._admin(req)
        except FakeError as exc:
            return _error(exc)
        except (TypeError, ValueError, KeyError, re.error) as exc:
            return _error(FakeError(400, f"{type(exc).__name__}: {exc}"))

    def _admin(self, req: _Request) -> _Response:
        route = req.path[len("/_fake"):]
        if req.method == "GET":
            return self._admin_get(route)
        if req.method != "POST":
            raise FakeError(405, "Method not allowed")
        body = _require_object(req)
        actions: dict[str, Callable[[dict[str, Any]], Any]] = {
            "/memberships": lambda b: self.add_membership(b.pop("membership_id", None) or b.pop("id"), **b),
            "/payments": lambda b: self.add_payment(b.pop("payment_id", None) or b.pop("id"), **b),
            "/access": lambda b: self.set_access(b["user_id"], b["resource_id"], b["level"]),
            "/experiences": lambda b: self.add_experience(
                b["company_id"], b.get("app_id") or self.app_id, b["experience_id"],
                b.get("name", "Rebound")),
            "/faults": lambda b: self.inject(
                b.get("method", "*"), b["path_regex"], str(b["kind"]), times=b.get("times", 1),
                retry_after=b.get("retry_after"), delay_s=float(b.get("delay_s", 2.0))),
            "/faults/clear": lambda b: self.clear_faults(),
            "/reset": lambda b: self.reset(),
            "/token": lambda b: {"token": self.mint_user_token(b.pop("user_id"), **b)},
            "/payment_methods": lambda b: self.add_payment_method(
                b["payment_method_id"], user_id=b["user_id"], company_id=b["company_id"],
                outcome=b.get("outcome", "paid")),
            "/permissions": lambda b: self.deny_permission(b["permission"], bool(b.get("denied", True))),
            "/webhooks": self._admin_webhooks,
            "/sign": self._admin_sign,
        }
        action = actions.get(route)
        if action is None:
            raise FakeError(404, "Not found", type_="not_found")
        result = action(body)
        return _Response(200, result if isinstance(result, dict) else {"ok": True})

    def _admin_get(self, route: str) -> _Response:
        if route == "/calls":
            return _Response(200, {"calls": [c.to_dict() for c in self.calls]})
        if route == "/state":
            return _Response(200, self.state())
        manage = re.fullmatch(r"/manage/([^/]+)", route)
        if manage:
            html = ("<!doctype html><title>Fake Whop billing</title><h1>Update your payment method</h1>"
                    f"<p>Fake Whop billing page for membership {manage.group(1)}.</p>")
            return _Response(200, html.encode(), content_type="text/html; charset=utf-8")
        raise FakeError(404, "Not found", type_="not_found")

    def _admin_webhooks(self, body: dict[str, Any]) -> dict[str, Any]:
        if "target" in body:
            self.webhook_target = body["target"]
        sent = self.deliver_webhooks() if body.get("deliver") else []
        return {"target": self.webhook_target,
                "sent": [{"msg_id": d.msg_id, "status": d.status} for d in sent]}

    def _admin_sign(self, body: dict[str, Any]) -> dict[str, Any]:
        raw = body["body"]
        payload = raw if isinstance(raw, str) else json.dumps(raw)
        headers = self.sign_webhook(payload, body.get("secret"), body.get("msg_id"), body.get("timestamp"))
        return {"headers": headers, "body": payload}

    def _record(self, req: _Request) -> RecordedCall:
        call = RecordedCall(method=req.method, path=req.path, api_path=req.api_path, query=req.query,
                            headers=dict(req.headers), json=req.json, body=req.body, at=time.time())
        with self._lock:
            self._calls.append(call)
        return call


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms stalls
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _read_request(self) -> _Request:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        parsed: Any = None
        json_error = False
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                json_error = True
        path = split.path
        api_path = path[len(API_PREFIX):] if path.startswith(API_PREFIX + "/") else path
        return _Request(method=self.command, path=path, api_path=api_path,
                        query=parse_qs(split.query), headers={k.lower(): v for k, v in self.headers.items()},
                        body=raw, json=parsed, json_error=json_error)

    def _serve(self) -> None:
        fake = self.server.fake
        try:
            req = self._read_request()
            if req.path.startswith("/_fake/"):
                self._write(fake.handle_admin(req))
                return
            record = fake._record(req)
            fake._serving(+1)
            try:
                response = fake.handle(req, record)
            finally:
                fake._serving(-1)
            record.status = None if response.drop else response.status
            if response.drop:
                self.close_connection = True  # no response at all: the client sees a disconnect
                return
            self._write(response)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client gave up (e.g. its read timeout)
        except Exception as exc:  # noqa: BLE001 - a bug in the fake: answer 500, keep it for the test
            fake.server_errors.append(f"{type(exc).__name__}: {exc}")
            try:
                self._write(_error(FakeError(500, "Fake Whop internal error", type_="api_error")))
            except OSError:
                self.close_connection = True

    def _write(self, response: _Response) -> None:
        payload = response.encoded()
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the fake Whop API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8100, help="port (0 = any free port)")
    parser.add_argument("--api-key", default=DEV_DEFAULTS["WHOP_API_KEY"])
    parser.add_argument("--app-id", default=DEV_DEFAULTS["WHOP_APP_ID"])
    parser.add_argument("--webhook-secret", default=DEV_DEFAULTS["WHOP_WEBHOOK_SECRET"])
    parser.add_argument("--signing-key-file", type=Path, default=None,
                        help="PEM file holding the user-token signing key (created if missing)")
    parser.add_argument("--webhook-target", default=None,
                        help="the service's webhook URL: payment outcomes are sent there as Whop would")
    args = parser.parse_args(argv)
    fake = FakeWhop(port=args.port, api_key=args.api_key, app_id=args.app_id,
                    webhook_secret=args.webhook_secret, webhook_target=args.webhook_target,
                    auto_deliver=True)
    if args.signing_key_file is not None:
        fake._keys = [signing_key_from_file(args.signing_key_file)]
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    fake.start()
    try:
        print(json.dumps({"fake_whop": fake.origin, "base_url": fake.base_url, "jwks_url": fake.jwks_url,
                          "app_id": fake.app_id}), flush=True)
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
