"""The cross-tenant matrix over every creator route (read from the served OpenAPI document, so a
route added later, e.g. the measurement routes, is covered the day it appears), webhook signature
attacks at the route, CSV injection in the export, and the scheduler route's limit."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws

from chalicelib import config, queue
from tests.helpers import payment_event, sign
from tests.test_api_support import ADMIN_B, ALPHA, BRAVO, DOC, Api, api_fixture, parse_csv  # noqa: F401

CREATOR_OPS = sorted((m.upper(), p) for p, ops in DOC["paths"].items() if p.startswith("/api/companies/")
                     for m in ops)
BODIES: dict[str, Any] = {"terminate": {"confirm": True}, "settings": {"incentive_days": 9},
                          "experiments": {"name": "b's copy", "variants": [{"name": "a", "weight": 1},
                                                                           {"name": "b", "weight": 1}]}}


def _body(template: str) -> Any:
    return next((b for key, b in BODIES.items() if template.endswith(key)), None)


@pytest.mark.parametrize(("method", "template"), CREATOR_OPS, ids=[f"{m} {p}" for m, p in CREATOR_OPS])
def test_cross_tenant_matrix(api: Api, method: str, template: str) -> None:
    case_id = api.open_case(company=ALPHA, membership="mem_alpha1", user="user_alpha1")
    api.whop.add_membership("mem_alpha1", company_id=ALPHA, user_id="user_alpha1", status="active")
    before = api.case(case_id)
    experiment_id = api.add_experiment(company=ALPHA, name="alpha secret copy")
    alpha_ids = {case_id, "mem_alpha1", "user_alpha1", experiment_id, "alpha secret copy"}
    params = {"case_id": case_id, "membership_id": "mem_alpha1", "experiment_id": experiment_id}
    placeholders = set(re.findall(r"{(\w+)}", template)) - {"company_id"}
    assert placeholders <= set(params), f"new path parameter in {template}: give it an ALPHA object"

    # B's admin on A's company: 403 before anything is read.
    body = _body(template)
    resp = api.request(method, template.format(company_id=ALPHA, **params), user=ADMIN_B, body=body)
    assert resp.status_code == 403, (resp.status_code, resp.body)
    # B's admin on B's company with A's ids: nothing of A is seen or changed.
    resp = api.request(method, template.format(company_id=BRAVO, **params), user=ADMIN_B, body=body)
    assert resp.status_code in (200, 201, 404), (resp.status_code, resp.body)
    text = resp.body.decode() if isinstance(resp.body, bytes) else str(resp.body)
    assert not any(i in text for i in alpha_ids), text[:300]
    if placeholders:
        assert resp.status_code == 404
    assert api.case(case_id) == before
    assert api.rows(ALPHA, "SELECT status FROM experiments") == [{"status": "running"}]  # not stopped
    assert api.whop.calls_to("POST", r"/memberships/.*/cancel") == []
    assert api.rows(ALPHA, "SELECT count(*) AS n FROM creator_settings")[0]["n"] == 0


# --- webhook signature attacks --------------------------------------------------------------------


@pytest.fixture
def sqs(api: Api, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("sqs", region_name="us-east-1")
        url = client.create_queue(QueueName="rebound-events")["QueueUrl"]
        monkeypatch.setenv("EVENTS_QUEUE_URL", url)
        config.reset_config()
        queue.reset_queue()
        def depth() -> int:
            attrs = client.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
            return int(attrs["Attributes"]["ApproximateNumberOfMessages"])

        yield depth
        queue.reset_queue()
        config.reset_config()


def _attacks() -> dict[str, tuple[bytes, dict[str, str]]]:
    now = datetime.now(UTC)
    msg_id, body = payment_event("payment.failed", at=now)
    good = sign(body, msg_id)
    other_id, other_body = payment_event("payment.failed", at=now, membership="mem_other")
    return {
        "no headers": (body, {"content-type": "application/json"}),
        "tampered body": (body.replace(b"mem_1", b"mem_2"), good),
        "wrong secret": (body, sign(body, msg_id, secret="ws_guessed")),
        "base64-decoded secret": (body, sign(body, msg_id, secret="d3NfZGV2X3dlYmhvb2tfc2VjcmV0")),
        "stale timestamp": (body, sign(body, msg_id, at=now - timedelta(minutes=6))),
        "future timestamp": (body, sign(body, msg_id, at=now + timedelta(minutes=6))),
        "another message's signature": (other_body, {**sign(body, msg_id), "webhook-id": other_id}),
        "signature for another id": (body, {**good, "webhook-id": "msg_forged"}),
        "v0 scheme": (body, {**good, "webhook-signature": good["webhook-signature"].replace("v1,", "v0,")}),
        "empty signature": (body, {**good, "webhook-signature": ""}),
        "nul in header": (body, {**good, "webhook-id": msg_id + "\x00"}),
        "huge timestamp": (body, {**good, "webhook-timestamp": "9" * 40}),
    }


@pytest.mark.parametrize("attack", list(_attacks()))
def test_webhook_signature_attacks_queue_nothing(api: Api, sqs: Any, attack: str) -> None:
    body, headers = _attacks()[attack]
    resp = api.client.http.post("/webhooks/whop", body=body, headers=headers)
    assert resp.status_code in (400, 401), (attack, resp.status_code, resp.body)
    assert sqs() == 0


def test_an_oversized_webhook_is_refused_before_anything(api: Api, sqs: Any) -> None:
    at = datetime.now(UTC)
    msg_id, body = payment_event("payment.failed", at=at)
    big = body[:-1] + b', "pad": "' + b"x" * (300 * 1024) + b'"}'
    resp = api.client.http.post("/webhooks/whop", body=big, headers=sign(big, msg_id))
    assert resp.status_code == 413 and sqs() == 0


def test_a_correctly_signed_webhook_is_queued(api: Api, sqs: Any) -> None:
    msg_id, body = payment_event("payment.failed", at=datetime.now(UTC))
    assert api.client.http.post("/webhooks/whop", body=body, headers=sign(body, msg_id)).status_code == 200
    assert sqs() == 1


# --- CSV injection ----------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", ["=cmd|' /C calc'!A0", "+SUM(1,1)", "-2+3", "@SUM(A1)", "\t=1+1",
                                     "\r=1+1", '=HYPERLINK("http://evil","x")'])
def test_csv_cells_cannot_run_as_formulas(api: Api, payload: str) -> None:
    from tests.test_api_cases import insert_case

    insert_case(api, membership="mem_csv", failure_reason=payload, decline_code=payload)
    resp = api.request("GET", f"/api/companies/{ALPHA}/cases/export.csv")
    assert resp.status_code == 200
    row = parse_csv(resp.body.decode())[0]
    # A tab is a separator too: the quote also goes between it and the "=" (see below).
    shown = "'" + payload.replace("\t=", "\t'=")
    for column in ("failure_reason", "decline_code"):
        assert row[column] == shown, (column, row[column])


# A cell that starts with a separator and then a formula character (issue 20 item 8): in a
# spreadsheet whose separator is ";" (or "|", or tab), "…,;=cmd" splits into a cell starting with
# "=". A leading quote on the whole cell cannot help (it stays in the cell before the split), so a
# quote goes between any separator and a formula character that follows it.
SEPARATED = [
    (";=1+1", ";'=1+1"), (",=1+1", ",'=1+1"), ("|=1+1", "|'=1+1"), (";;=cmd", ";;'=cmd"),
    (";-2+3", ";'-2+3"), (";+SUM(1)", ";'+SUM(1)"), (";@SUM(A1)", ";'@SUM(A1)"), (",\t=1", ",'\t'=1"),
    (';"=1+1', ";'\"=1+1"), ("declined;=HYPERLINK(1)", "declined;'=HYPERLINK(1)"),
    ("\t;=1", "'\t;'=1"), ("=1;=2", "'=1;'=2"), ("; =x", "; =x"), ("a;b", "a;b"),
    ("3-D Secure", "3-D Secure"),
]


@pytest.mark.parametrize(("payload", "shown"), SEPARATED, ids=[p for p, _ in SEPARATED])
def test_csv_cells_starting_with_a_separator_cannot_run_as_formulas(api: Api, payload: str,
                                                                    shown: str) -> None:
    import csv
    import io

    from tests.test_api_cases import insert_case

    insert_case(api, membership="mem_csv", failure_reason=payload, decline_code=payload)
    resp = api.request("GET", f"/api/companies/{ALPHA}/cases/export.csv")
    assert resp.status_code == 200
    text = resp.body.decode()
    row = parse_csv(text)[0]
    for column in ("failure_reason", "decline_code"):
        assert row[column] == shown, (column, row[column])
    # Whatever separator the spreadsheet splits the lines on, no cell starts a formula.
    for delimiter in (",", ";", "|", "\t"):
        for line in list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))[1:]:
            for cell in line:
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (delimiter, cell)


# --- the scheduler route ---------------------------------------------------------------------------


ROUTE = "/api/scheduler/reminders"


def _from(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    """Requests now come from ``address`` (API Gateway's requestContext.identity.sourceIp)."""
    from chalice.local import LambdaEventConverter

    monkeypatch.setattr(LambdaEventConverter, "LOCAL_SOURCE_IP", address)


@pytest.mark.usefixtures("frozen_windows")
def test_wrong_bearers_cannot_lock_out_the_scheduler(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    # issue 20 item 7: the limit used to be one global count taken before the bearer was checked,
    # so 12 wrong guesses a minute kept the real caller at 429.
    monkeypatch.setenv("SCHEDULER_SECRET", "sched-secret")
    config.reset_config()
    guess, real = {"authorization": "Bearer guess"}, {"authorization": "Bearer sched-secret"}
    _from(monkeypatch, "203.0.113.7")
    statuses = [api.client.http.post(ROUTE, headers=guess).status_code for _ in range(15)]
    assert statuses == [401] * 12 + [429] * 3  # failures are limited per source
    refused = api.client.http.post(ROUTE, headers=guess)
    assert int(refused.headers["Retry-After"]) >= 1
    assert json.loads(refused.body)["error"]["code"] == "rate_limited"
    assert api.client.http.post(ROUTE, headers=real).status_code == 200  # the bearer is checked first
    _from(monkeypatch, "198.51.100.2")
    assert api.client.http.post(ROUTE, headers=real).status_code == 200
    assert api.client.http.post(ROUTE, headers=guess).status_code == 401  # its own count of failures


@pytest.mark.usefixtures("frozen_windows")
def test_successful_ticks_have_their_own_limit(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib import ratelimit

    monkeypatch.setenv("SCHEDULER_SECRET", "sched-secret")
    monkeypatch.setenv("RATE_LIMIT_SCHEDULER", "3")
    config.reset_config()
    ratelimit.get_limits.cache_clear()
    real = {"authorization": "Bearer sched-secret"}
    statuses = [api.client.http.post(ROUTE, headers=real).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]  # a tick hits the database and Whop: bounded
    # Failures never spent the successes' budget, and successes never spend a source's failures.
    assert api.client.http.post(ROUTE, headers={"authorization": "Bearer nope"}).status_code == 401
