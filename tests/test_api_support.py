"""Shared fixtures and helpers for the creator API tests (imported by tests/test_api_*.py,
test_auth.py, test_openapi.py and test_ratelimit.py). Real Postgres as the runtime role, the fake
Whop over HTTP, and every response checked against the OpenAPI document the app serves."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest
from chalice.test import Client, HTTPResponse

from chalicelib import auth, effects, measurement, processing, ratelimit
from chalicelib.db_pool import Database
from chalicelib.openapi import build_document
from chalicelib.queue import QueuedWebhook
from chalicelib.tenancy import tenant_transaction
from scripts.fake_whop import FakeWhop
from tests.helpers import membership_event, payment_event

ALPHA, BRAVO = "biz_alpha", "biz_bravo"
ADMIN_A, ADMIN_B, CUSTOMER = "user_admin_alpha", "user_admin_bravo", "user_customer"
NOW = datetime.now(UTC)
DAY = timedelta(days=1)
DOC = build_document()
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


def check_response(resp: HTTPResponse, method: str, template: str) -> Any:
    """Assert ``resp`` is documented for (method, template) and matches its schema; return the body."""
    op = DOC["paths"][template][method.lower()]
    spec = op["responses"].get(str(resp.status_code))
    assert spec is not None, f"{method} {template}: undocumented status {resp.status_code}: {resp.body!r}"
    headers = {k.lower(): v for k, v in resp.headers.items()}
    for name, header in spec.get("headers", {}).items():
        if header.get("required"):
            assert name.lower() in headers, f"{method} {template} {resp.status_code}: no {name} header"
        if name.lower() in headers and header["schema"].get("type") == "integer":
            assert headers[name.lower()].isdigit(), (name, headers[name.lower()])
    content = spec.get("content")
    if not content:
        return None
    media = headers.get("content-type", "").split(";")[0].strip()
    assert media in content, f"{method} {template}: content type {media!r} not documented"
    if media != "application/json":
        return resp.body.decode() if isinstance(resp.body, bytes) else resp.body
    body = json.loads(resp.body)
    schema = {**content[media]["schema"], "components": DOC["components"]}
    jsonschema.validate(body, schema, cls=jsonschema.Draft202012Validator, format_checker=FORMATS)
    return body


@dataclass
class Api:
    client: Client
    whop: FakeWhop
    db: Database

    # ---- requests --------------------------------------------------------------------------

    def token(self, user: str = ADMIN_A, **kw: Any) -> str:
        return self.whop.mint_user_token(user, **kw)

    def request(self, method: str, path: str, *, user: str | None = ADMIN_A, token: str | None = None,
                body: Any = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None) -> HTTPResponse:
        sent = {"content-type": "application/json", **(headers or {})}
        if token is not None:
            sent["x-whop-user-token"] = token
        elif user is not None:
            sent["x-whop-user-token"] = self.token(user)
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        return self.client.http.request(method, path, headers=sent, body=payload)

    def call(self, method: str, template: str, *, status: int | None = None, query: str = "",
             **kw: Any) -> tuple[HTTPResponse, Any]:
        """Request a route by its OpenAPI template (path values in ``kw['params']``), check the
        response against the document, and optionally its status."""
        params: dict[str, str] = {"company_id": ALPHA, **kw.pop("params", {})}
        path = template.format(**params) + (f"?{query}" if query else "")
        resp = self.request(method, path, **kw)
        body = check_response(resp, method, template)
        if status is not None:
            assert resp.status_code == status, (resp.status_code, resp.body)
        return resp, body

    # ---- data --------------------------------------------------------------------------------

    def deliver(self, msg_id: str, body: bytes, at: datetime) -> processing.Outcome:
        return processing.process_webhook(QueuedWebhook(msg_id, at, body), NOW, self.db)

    def open_case(self, *, company: str = ALPHA, membership: str = "mem_1", user: str = "user_1",
                  at: datetime | None = None, amount: float = 19.99, currency: str = "usd") -> str:
        at = at or NOW - DAY
        msg_id, body = payment_event("payment.failed", company=company, membership=membership, user=user,
                                     at=at, amount=amount, currency=currency,
                                     payment=f"pay_{uuid.uuid4().hex[:10]}")
        out = self.deliver(msg_id, body, at)
        assert out.status == "applied" and len(out.opened_case_ids) == 1, out
        return out.opened_case_ids[0]

    def recover(self, *, company: str = ALPHA, membership: str = "mem_1", at: datetime,
                amount: float = 19.99, currency: str = "usd") -> None:
        msg_id, body = payment_event("payment.succeeded", company=company, membership=membership, at=at,
                                     amount=amount, currency=currency)
        assert self.deliver(msg_id, body, at).status == "applied"

    def member_cancels(self, *, company: str = ALPHA, membership: str = "mem_1", at: datetime) -> None:
        msg_id, body = membership_event("membership.cancel_at_period_end_changed", company=company,
                                        membership=membership, at=at, cancel_at_period_end=True)
        assert self.deliver(msg_id, body, at).status == "applied"

    def add_experiment(self, *, company: str = ALPHA, status: str = "running", name: str = "copy test",
                       variants: list[dict[str, Any]] | None = None) -> str:
        """An experiment row written directly (as the tenant, RLS on)."""
        variants = variants or [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]
        rows = self.rows(company, "INSERT INTO experiments (company_id, name, variants, status, stopped_at)"
                                  " VALUES (:c, :n, CAST(:v AS jsonb), :s,"
                                  " CASE WHEN :s = 'stopped' THEN now() END) RETURNING id::text AS id",
                         c=company, n=name, v=json.dumps(variants), s=status)
        return str(rows[0]["id"])

    def rows(self, company: str, sql: str, **params: Any) -> list[dict[str, Any]]:
        with tenant_transaction(company, self.db) as tx:
            return tx.query(sql, **params)

    def case(self, case_id: str, company: str = ALPHA) -> dict[str, Any]:
        found = self.rows(company, "SELECT * FROM recovery_cases WHERE id = CAST(:id AS uuid)", id=case_id)
        assert len(found) == 1
        return found[0]


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(name="api")
def api_fixture(database: Database, whop_env: FakeWhop, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """The app behind chalice's test client, with two companies, their admins and a customer."""
    for name in ("RATE_LIMIT_READS", "RATE_LIMIT_SETTINGS_WRITE", "RATE_LIMIT_ACTIONS", "RATE_LIMIT_EXPORT",
                 "RATE_LIMIT_WINDOW_S"):
        monkeypatch.delenv(name, raising=False)
    ratelimit.get_limits.cache_clear()
    auth.set_authenticator(None)
    effects.clear_experience_cache()
    measurement.clear_product_cache()
    whop_env.set_access(ADMIN_A, ALPHA, "admin")
    whop_env.set_access(ADMIN_B, BRAVO, "admin")
    whop_env.set_access(CUSTOMER, ALPHA, "customer")
    for company in (ALPHA, BRAVO):
        whop_env.add_experience(company, whop_env.app_id, f"exp_{company}")
    from app import app

    with Client(app) as client:
        yield Api(client, whop_env, database)
    auth.set_authenticator(None)
    ratelimit.get_limits.cache_clear()
