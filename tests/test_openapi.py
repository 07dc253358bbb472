"""GET /api/openapi.json: a valid OpenAPI 3.1 document of every route, generated from the
handlers' models; and a schemathesis run over the creator routes, in-process through a WSGI
adapter around Chalice's local gateway, with a real admin token, the fake Whop and Postgres."""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any, get_args
from urllib.parse import quote

import boto3
import pytest
import schemathesis
from chalice.config import Config
from chalice.local import LocalGateway, LocalGatewayException
from moto import mock_aws
from openapi_spec_validator import validate as validate_spec
from schemathesis.config import SchemathesisConfig

from chalicelib.openapi import build_document
from chalicelib.ratelimit import RouteClass
from tests.test_api_support import ADMIN_A, ALPHA, DOC, Api, api_fixture  # noqa: F401

CONTRACT_ROUTES = {
    ("POST", "/webhooks/whop"), ("GET", "/api/health"), ("GET", "/api/openapi.json"),
    ("GET", "/api/companies/{company_id}/settings"), ("PUT", "/api/companies/{company_id}/settings"),
    ("GET", "/api/companies/{company_id}/kpis"), ("GET", "/api/companies/{company_id}/cases"),
    ("GET", "/api/companies/{company_id}/cases/{case_id}"),
    ("GET", "/api/companies/{company_id}/cases/export.csv"),
    ("POST", "/api/companies/{company_id}/cases/{case_id}/nudge"),
    ("POST", "/api/companies/{company_id}/cases/{case_id}/cancel"),
    ("POST", "/api/companies/{company_id}/cases/{case_id}/cancel-membership"),
    ("POST", "/api/companies/{company_id}/cases/{case_id}/terminate"),
    ("GET", "/api/companies/{company_id}/memberships/{membership_id}"),
    ("GET", "/api/companies/{company_id}/memberships/{membership_id}/manage-url"),
    ("POST", "/api/scheduler/reminders"), ("GET", "/r/{token}"), ("GET", "/dashboard/{company_id}"),
    ("GET", "/favicon.ico"),
    # measurement (issue 10)
    ("GET", "/api/companies/{company_id}/experiments"), ("POST", "/api/companies/{company_id}/experiments"),
    ("GET", "/api/companies/{company_id}/experiments/{experiment_id}"),
    ("POST", "/api/companies/{company_id}/experiments/{experiment_id}/stop"),
    ("GET", "/api/companies/{company_id}/kpis/cohorts"),
    # smart retry (issue 18)
    ("POST", "/api/companies/{company_id}/cases/{case_id}/retry"),
}


def test_the_served_document_is_valid_openapi_31_covering_every_contract_route(api: Api) -> None:
    resp = api.client.http.get("/api/openapi.json")
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
    served = json.loads(resp.body)
    validate_spec(served)
    assert served["openapi"] == "3.1.0"
    documented = {(m.upper(), p) for p, ops in served["paths"].items() for m in ops}
    assert documented == CONTRACT_ROUTES
    assert served["paths"] == DOC["paths"]  # what the tests validate against is what is served


def test_every_route_of_the_app_is_documented() -> None:
    from app import app

    routes = {(m, p) for p, by_method in app.routes.items() for m in by_method}
    assert routes <= CONTRACT_ROUTES, routes - CONTRACT_ROUTES


def test_creator_operations_document_auth_errors_parameters_and_rate_limits() -> None:
    schemes = DOC["components"]["securitySchemes"]
    assert schemes["WhopUserToken"] == {"type": "apiKey", "in": "header", "name": "x-whop-user-token",
                                        "description": schemes["WhopUserToken"]["description"]}
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, ops in DOC["paths"].items():
        if not path.startswith("/api/companies/"):
            continue
        for method, op in ops.items():
            assert op["security"] == [{"WhopUserToken": []}], (method, path)
            assert op["x-rate-limit-class"] in get_args(RouteClass)
            for status in ("400", "401", "403", "429", "503"):
                assert op["responses"][status]["content"]["application/json"]["schema"] == error_ref
            assert op["responses"]["429"]["headers"]["Retry-After"]["required"] is True
            ok = next(r for s, r in op["responses"].items() if s.startswith("2"))
            assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(ok["headers"])
            names = {p["name"] for p in op.get("parameters", [])}
            assert set(re.findall(r"{(\w+)}", path)) <= names
    export = DOC["paths"]["/api/companies/{company_id}/cases/export.csv"]["get"]
    assert "X-Export-Next-Cursor" in export["description"]
    assert "X-Export-Next-Cursor" in export["responses"]["200"]["headers"]
    filters = {"company_id", "status", "decline_class", "window_days", "q", "cursor"}
    assert {p["name"] for p in export["parameters"]} == filters  # the list's filters (issue 11)
    listing = DOC["paths"]["/api/companies/{company_id}/cases"]["get"]
    assert {p["name"] for p in listing["parameters"]} == filters | {"limit"}
    decline = next(p for p in listing["parameters"] if p["name"] == "decline_class")
    assert decline["schema"]["enum"] == ["card_hard", "card_soft", "authentication", "unknown"]
    item = DOC["components"]["schemas"]["CaseListItem"]
    assert {"nudges_sent", "last_action_at"} <= set(item["required"])
    kpis = DOC["paths"]["/api/companies/{company_id}/kpis"]["get"]
    assert "denominator" in kpis["description"]
    window = next(p for p in kpis["parameters"] if p["name"] == "window_days")
    assert window["schema"] == {"type": "integer", "minimum": 1, "maximum": 365, "default": 30}


def test_schemas_are_the_handlers_models() -> None:
    from chalicelib.api.schemas.settings import SettingsUpdate

    generated = SettingsUpdate.model_json_schema(ref_template="#/components/schemas/{model}")
    documented = DOC["components"]["schemas"]["SettingsUpdate"]
    assert documented["properties"] == generated["properties"]
    assert documented["additionalProperties"] is False
    assert build_document() == DOC  # deterministic


# --- schemathesis over the creator routes --------------------------------------------------------


class ChaliceWSGI:
    """A WSGI app in front of Chalice's local API Gateway emulation (what ``chalice local`` runs)."""

    def __init__(self, app: Any) -> None:
        self.gateway = LocalGateway(app, Config(chalice_stage="dev"))

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = quote(environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8", "replace"), safe="/")
        query = environ.get("QUERY_STRING", "")
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        try:
            url = path + (f"?{query}" if query else "")
            response = self.gateway.handle_request(environ["REQUEST_METHOD"], url, headers, body)
            status, out_headers = response["statusCode"], dict(response["headers"])
            raw = response["body"] or ""
            payload = raw.encode() if isinstance(raw, str) else raw
        except LocalGatewayException as exc:
            status, out_headers, payload = exc.CODE, dict(exc.headers), exc.body or b""
        start_response(f"{status} {HTTPStatus(status).phrase}", list(out_headers.items()))
        return [payload]


CASE_ID = "3f6b2c1e-8d4a-4b7e-9c2d-5a1e0f9b7c11"
EXPERIMENT_ID = "7d1e4f2a-0b3c-4d5e-8f60-718293a4b5c6"


def _fuzz_document() -> dict[str, Any]:
    """The served document, plus examples that point at data the fixture creates."""
    doc = copy.deepcopy(DOC)
    for ops in doc["paths"].values():
        for op in ops.values():
            for param in op.get("parameters", []):
                if param["name"] == "case_id":
                    param["examples"] = {"known": {"value": CASE_ID},
                                         "unknown": {"value": str(uuid.UUID(int=7))}}
                elif param["name"] == "membership_id":
                    param["examples"] = {"known": {"value": "mem_1"}}
                elif param["name"] == "experiment_id":
                    param["examples"] = {"known": {"value": EXPERIMENT_ID},
                                         "unknown": {"value": str(uuid.UUID(int=9))}}
    return doc


FUZZ_CONFIG = SchemathesisConfig.from_dict({
    "seed": 20261126,
    # The fixture (database, fake Whop, token) is set up once per operation, on purpose.
    "suppress-health-check": ["all"],
    "parameters": {"path.company_id": ALPHA},
    "generation": {"mode": "all", "max-examples": 25, "deterministic": True, "database": "none",
                   "no-shrink": True},
    "phases": {"coverage": {"enabled": True}, "stateful": {"enabled": False}},
    "checks": {"enabled": False, "not_a_server_error": {"enabled": True},
               "status_code_conformance": {"enabled": True}, "content_type_conformance": {"enabled": True},
               "response_schema_conformance": {"enabled": True},
               "response_headers_conformance": {"enabled": True}},
})
# Every route: the creator API, and health, openapi, webhook, scheduler, tracked links, dashboard.
schema = schemathesis.openapi.from_dict(_fuzz_document(), config=FUZZ_CONFIG)


@pytest.fixture
def fuzz_env(api: Api, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ChaliceWSGI, str]]:
    from chalicelib import ratelimit
    from tests.test_api_cases import insert_case

    for name in ("RATE_LIMIT_READS", "RATE_LIMIT_SETTINGS_WRITE", "RATE_LIMIT_ACTIONS", "RATE_LIMIT_EXPORT",
                 "RATE_LIMIT_ACCESS_CHECKS", "RATE_LIMIT_LINK_CLICKS", "RATE_LIMIT_SCHEDULER"):
        monkeypatch.setenv(name, "100000")
    ratelimit.get_limits.cache_clear()
    insert_case(api, membership="mem_1", id=CASE_ID)
    api.rows(ALPHA, "INSERT INTO experiments (id, company_id, name, variants, status, stopped_at)"
                    " VALUES (CAST(:id AS uuid), :c, 'fuzz', CAST(:v AS jsonb), 'stopped', now())"
                    " RETURNING id",
             id=EXPERIMENT_ID, c=ALPHA, v='[{"name": "a", "weight": 1}, {"name": "b", "weight": 1,'
                                          ' "dm_body": "Fix it: {link}"}]')
    api.whop.add_membership("mem_1", company_id=ALPHA, user_id="user_1")
    from app import app
    from chalicelib import config, queue

    # A queue (moto) so the webhook health check and route answer as in production.
    with mock_aws():
        url = boto3.client("sqs", region_name="us-east-1").create_queue(QueueName="rebound-events")[
            "QueueUrl"]
        monkeypatch.setenv("EVENTS_QUEUE_URL", url)
        config.reset_config()
        queue.reset_queue()
        yield ChaliceWSGI(app), api.token(ADMIN_A, expires_in=600)
        queue.reset_queue()


@schema.parametrize()
def test_creator_api_conforms_to_its_document(case: Any, fuzz_env: tuple[ChaliceWSGI, str]) -> None:
    wsgi, token = fuzz_env
    case.call_and_validate(app=wsgi, headers={"x-whop-user-token": token})


def test_other_routes_answer_as_documented(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_api_support import check_response

    http = api.client.http
    assert check_response(http.get("/api/health"), "GET", "/api/health")["status"] == "ok"
    # Deep checks need the bearer secret (issue 9): documented 401 without it.
    assert "error" in check_response(http.get("/api/health?type=database"), "GET", "/api/health")
    assert "error" in check_response(http.get("/api/health?type=nope"), "GET", "/api/health")
    resp = http.post("/webhooks/whop", body=b"{}", headers={"content-type": "application/json"})
    assert resp.status_code == 401  # the signature is checked before the queue is looked up
    assert "error" in check_response(resp, "POST", "/webhooks/whop")
    monkeypatch.delenv("SCHEDULER_SECRET", raising=False)
    resp = http.post("/api/scheduler/reminders")
    assert resp.status_code == 404
    check_response(resp, "POST", "/api/scheduler/reminders")
    resp = http.get("/r/" + "x" * 43)
    assert resp.status_code == 404
    check_response(resp, "GET", "/r/{token}")
