"""Privacy: webhooks full of member PII (email, name, username, phone) go through the whole
pipeline (webhook route -> moto SQS -> process_events -> Postgres -> tick -> fake Whop) and none
of it shows up in a log line, a queue message, a stored column or a call to Whop. And every
column of every table is in the privacy inventory (docs/privacy.md), so a new column holding
member data cannot appear without being documented with its reason and retention."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import timedelta

import pytest
from chalice.test import Client

from chalicelib.observability import logger
from tests.conftest import ROOT, Owner
from tests.helpers import membership_event, payment_event, sign
from tests.test_pipeline import NOW, Pipeline, pipeline  # noqa: F401 - the fixture is used by name

EMAIL, NAME = "zelda.pii.marker@example.com", "Zelda Quintessa"
USERNAME, PHONE = "zq_marker_user", "+1 415 555 0199"
# Any piece of the PII, in the spellings a leak might take (escaped, lower-cased, digits only).
NEEDLES = ("zelda.pii.marker", "Quintessa", "quintessa", "zq_marker_user", "555 0199", "5550199",
           "555-0199")
PII_USER = {"email": EMAIL, "name": NAME, "username": USERNAME, "phone": PHONE, "phone_number": PHONE}


def with_pii(pair: tuple[str, bytes], path: tuple[str, ...]) -> tuple[str, bytes]:
    """The same webhook with PII everywhere Whop could put it (user, billing, metadata, custom fields)."""
    msg_id, body = pair
    envelope = json.loads(body)
    data = envelope
    for key in path:
        data = data[key]
    data.setdefault("user", {}).update(PII_USER)
    data["billing_address"] = {"name": NAME, "phone": PHONE, "line1": "1 Marker Way"}
    data["metadata"] = {"customer_email": EMAIL, "note": f"call {PHONE}"}
    data["custom_field_responses"] = [{"question": "Discord?", "answer": USERNAME}]
    data["customer_name"] = NAME
    return msg_id, json.dumps(envelope).encode()


def leaks(text: str) -> list[str]:
    return [n for n in NEEDLES if n in text]


def run_pipeline(p: Pipeline) -> list[str]:
    """Deliver PII-laden webhooks of every kind we handle, process them, run a tick; return the
    queue message bodies as they sat in SQS."""
    p.whop.add_membership("mem_pii", company_id="biz_alpha", user_id="user_pii")
    webhooks = [
        with_pii(payment_event("payment.failed", membership="mem_pii", user="user_pii",
                               at=NOW - timedelta(days=3), recovery_url="https://whop.com/pay/x"), ("data",)),
        with_pii(membership_event("membership.cancel_at_period_end_changed", membership="mem_pii",
                                  at=NOW - timedelta(days=1), cancel_at_period_end=False), ("data",)),
    ]
    for msg_id, body in webhooks:
        assert p.deliver(msg_id, body).status_code == 200
    # A signed body that is not JSON (acknowledged, kept as a poison record), and one with a bad
    # signature: error paths log and queue too.
    assert p.deliver("msg_badjson", f"not json {EMAIL}".encode()).status_code == 200
    bad = p.client.http.post("/webhooks/whop", body=webhooks[0][1],
                             headers={**sign(webhooks[0][1], webhooks[0][0]), "webhook-signature": "v1,AAAA"})
    assert bad.status_code == 401
    messages = p.sqs.receive_message(QueueUrl=p.queues.queue_url, MaxNumberOfMessages=10,
                                     MessageAttributeNames=["All"], VisibilityTimeout=0).get("Messages", [])
    assert len(messages) == 3
    queued = [m["Body"] + json.dumps(m.get("MessageAttributes", {})) for m in messages]
    assert p.drain() == (3, 0)
    from app import app

    with Client(app) as c:
        event = c.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event",
                                           detail={}, resources=[])
        c.lambda_.invoke("process_reminders", event)
    return queued


def test_no_pii_in_logs_stored_columns_or_calls_to_whop(
        pipeline: Pipeline, owner: Owner, capsys: pytest.CaptureFixture[str],  # noqa: F811
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # The exact lines CloudWatch would get: Powertools' JSON handler, pointed at a buffer.
    lines = io.StringIO()
    monkeypatch.setattr(logger.registered_handler, "stream", lines)
    # Everything at INFO and up, ours and libraries' (Lambda runs at INFO; botocore's DEBUG
    # request dumps are never enabled in production).
    caplog.set_level(logging.INFO)
    run_pipeline(pipeline)
    out, err = capsys.readouterr()
    assert "webhook processed" in lines.getvalue() and '"outcome":"queued"' in lines.getvalue()
    assert "rejected_bad_signature" in lines.getvalue(), "error paths were logged too"
    assert '"_aws"' in out, "EMF metrics were printed"
    assert not leaks(lines.getvalue()) and not leaks(out) and not leaks(err)
    records = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert "webhook processed" in records and not leaks(records)

    tables = [r[0] for r in owner.run("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    stored = {t: owner.run(f"SELECT coalesce(json_agg(t)::text, '') FROM {t} t")[0][0] for t in tables}
    assert "mem_pii" in stored["events"] and "mem_pii" in stored["recovery_cases"]
    assert {t: leaks(text) for t, text in stored.items() if leaks(text)} == {}

    calls = pipeline.whop.calls
    assert any(c.method == "POST" for c in calls), "the member was nudged"
    assert not leaks(json.dumps([c.json for c in calls], default=str))


def test_queue_messages_carry_no_pii(pipeline: Pipeline) -> None:  # noqa: F811
    # The route queues the minimised event (and, for an unusable body, only its id and reason).
    queued = run_pipeline(pipeline)
    assert [leaks(body) for body in queued] == [[], [], []]


def inventory() -> dict[str, set[str]]:
    """table -> columns, from the inventory table in docs/privacy.md (rows of `table.column`)."""
    text = (ROOT / "docs" / "privacy.md").read_text()
    found: dict[str, set[str]] = {}
    for table, column in re.findall(r"^\|\s*`(\w+)\.(\w+)`", text, flags=re.MULTILINE):
        found.setdefault(table, set()).add(column)
    return found


def test_every_column_of_every_table_is_in_the_privacy_inventory(owner: Owner) -> None:
    rows = owner.run("SELECT table_name, column_name FROM information_schema.columns"
                     " WHERE table_schema = 'public'")
    actual: dict[str, set[str]] = {}
    for table, column in rows:
        actual.setdefault(str(table), set()).add(str(column))
    documented = inventory()
    missing = {t: sorted(cols - documented.get(t, set())) for t, cols in actual.items()
               if cols - documented.get(t, set())}
    assert not missing, f"document these in docs/privacy.md: {missing}"
    stale = {t: sorted(cols - actual.get(t, set())) for t, cols in documented.items()
             if cols - actual.get(t, set())}
    assert not stale, f"docs/privacy.md lists columns that do not exist: {stale}"
