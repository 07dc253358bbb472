"""Nothing Rebound sends through RDS Proxy pins a session (DB_STATEMENTS=unnamed, the template's
setting whenever the proxy is on).

How it is checked: the app's connections go through a relay on 127.0.0.1 that records every byte
the client sends, and the PostgreSQL frontend messages are decoded (startup, Parse, Bind,
Describe, Execute, Close, Query, Sync...). A real workload runs through it — webhooks into the
consumer with its T+0 sends, a tick with retention, the creator API including the CSV export
(COPY), a tracked link, the deep health check, the per-user limit, a company purge, all on a
one-connection pool as deployed — and every
message is held against RDS Proxy's documented pinning conditions for PostgreSQL
(docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-proxy-pinning.html; for all engines: a
statement text over 16 KB, prepared statements; for PostgreSQL: SET commands, setting or
resetting a parameter (set_config), PREPARE/EXECUTE/DEALLOCATE, DISCARD, temporary tables,
sequences or views, cursors, LISTEN, LOAD, nextval/setval, session advisory locks such as
pg_advisory_lock and pg_try_advisory_lock). The extended protocol itself multiplexes since RDS
Proxy's November 2023 release, as long as its statements are unnamed; transaction-level advisory
locks (pg_advisory_xact_lock) are not pinning conditions. The same checker flags the default
``prepared`` mode, so it would catch a regression."""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from chalice.test import Client

from chalicelib import config, tenancy
from scripts import localdb, purge_company
from tests.helpers import payment_event
from tests.test_pipeline import NOW, Pipeline, pipeline  # noqa: F401 - the fixture is used by name

MAX_STATEMENT_BYTES = 16 * 1024
# Statement texts RDS Proxy reads as session state (case-insensitive, at a word boundary).
PINNING_TEXT = [
    (r"^\s*(SET|RESET)\b", "a SET/RESET command"),
    (r"\bset_config\s*\(", "set_config (setting a parameter)"),
    (r"^\s*(PREPARE|EXECUTE|DEALLOCATE)\b", "a prepared statement command"),
    (r"^\s*DISCARD\b", "DISCARD"),
    (r"\bCREATE\s+(TEMP|TEMPORARY)\b", "a temporary object"),
    (r"^\s*DECLARE\b", "a cursor"),
    (r"^\s*(UN)?LISTEN\b", "LISTEN"),
    (r"^\s*LOAD\b", "LOAD"),
    (r"\b(nextval|setval|currval)\s*\(", "sequence manipulation"),
    (r"\bpg_(try_)?advisory_(un)?lock(_shared)?\s*\(", "a session advisory lock"),
]
TRANSACTION_CONTROL = re.compile(r"^\s*(START TRANSACTION|BEGIN|COMMIT|ROLLBACK)\s*;?\s*$", re.I)


@dataclass
class Capture:
    streams: list[bytearray] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def new_stream(self) -> bytearray:
        stream = bytearray()
        with self.lock:
            self.streams.append(stream)
        return stream


def _pump(src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
    try:
        while chunk := src.recv(65536):
            if record is not None:
                record.extend(chunk)
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def relay(local_database: localdb.LocalDatabase) -> Iterator[tuple[str, Capture]]:
    """A TCP port that forwards to the test server's Unix socket and records what clients send."""
    runtime = urlsplit(local_database.runtime_url)
    socket_dir = parse_qs(runtime.query)["host"][0]
    capture = Capture()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX)
            server.connect(f"{socket_dir}/.s.PGSQL.5432")
            threading.Thread(target=_pump, args=(client, server, capture.new_stream()), daemon=True).start()
            threading.Thread(target=_pump, args=(server, client, None), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    url = (f"postgresql://{runtime.username}:{runtime.password}@127.0.0.1:{listener.getsockname()[1]}"
           f"/{runtime.path.lstrip('/')}?sslmode=disable")
    yield url, capture
    stop.set()
    listener.close()


@dataclass(frozen=True)
class Message:
    kind: str  # "startup" or the message type byte
    body: bytes


SSL_OR_GSS_REQUEST = {80877103, 80877104}  # answered 'N' here; the startup packet follows


def messages(stream: bytes) -> list[Message]:
    """The frontend messages of one connection: the startup packet, then typed messages."""
    at = 0
    while True:
        length, code = struct.unpack("!ii", stream[at:at + 8])
        if not (length == 8 and code in SSL_OR_GSS_REQUEST):
            break
        at += 8
    out = [Message("startup", bytes(stream[at + 8:at + length]))]
    at += length
    while at + 5 <= len(stream):
        kind = chr(stream[at])
        (size,) = struct.unpack("!i", stream[at + 1:at + 5])
        out.append(Message(kind, bytes(stream[at + 5:at + 1 + size])))
        at += 1 + size
    return out


def cstrings(body: bytes, count: int) -> list[str]:
    parts = body.split(b"\0", count)
    return [p.decode("utf-8", "replace") for p in parts[:count]]


def statement_texts(captured: list[list[Message]]) -> list[str]:
    texts = []
    for conn in captured:
        for m in conn:
            if m.kind == "P":
                texts.append(cstrings(m.body, 2)[1])
            elif m.kind == "Q":
                texts.append(cstrings(m.body, 1)[0])
    return texts


def message_reasons(m: Message) -> list[str]:
    if m.kind == "P" and cstrings(m.body, 1)[0]:
        return [f"named prepared statement {cstrings(m.body, 1)[0]!r}"]
    if m.kind == "B" and any(cstrings(m.body, 2)):
        return [f"bind to a named statement or portal {cstrings(m.body, 2)!r}"]
    if m.kind == "C":
        return ["Close of a named statement or portal"]
    if m.kind == "Q" and not TRANSACTION_CONTROL.match(cstrings(m.body, 1)[0]):
        return [f"simple query beyond transaction control: {cstrings(m.body, 1)[0][:60]!r}"]
    return []


def pinning_reasons(captured: list[list[Message]]) -> list[str]:
    reasons: list[str] = []
    for conn in captured:
        startup = dict(zip(*[iter(cstrings(conn[0].body, 40))] * 2, strict=False))
        if {k for k in startup if k} - {"user", "database", "application_name"}:
            reasons.append(f"startup parameters {sorted(startup)} (RDS Proxy refuses 'options')")
        for m in conn[1:]:
            reasons += message_reasons(m)
    for text in statement_texts(captured):
        if len(text.encode()) > MAX_STATEMENT_BYTES:
            reasons.append(f"statement of {len(text.encode())} bytes (over 16 KB)")
        for pattern, why in PINNING_TEXT:
            if re.search(pattern, text, flags=re.IGNORECASE | re.MULTILINE):
                reasons.append(f"{why}: {text[:80]!r}")
    return reasons


def use_relay(monkeypatch: pytest.MonkeyPatch, url: str, statements: str) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DB_STATEMENTS", statements)
    # As deployed (DB_POOL_SIZE=1): a transaction opened inside another would wait for a second
    # connection that never comes, and the workload would fail; it needs none.
    monkeypatch.setenv("DB_POOL_SIZE", "1")
    config.reset_config()
    tenancy.reset_database()


def captured(capture: Capture) -> list[list[Message]]:
    tenancy.reset_database()  # close the connections: every byte is in
    with capture.lock:
        return [messages(bytes(s)) for s in capture.streams if s]


def _tick() -> None:
    from app import app

    with Client(app) as c:
        event = c.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event",
                                           detail={}, resources=[])
        c.lambda_.invoke("process_reminders", event)


def workload(pipeline: Pipeline, owner: Any) -> None:  # noqa: F811
    company = "biz_alpha"
    whop = pipeline.whop
    owner.run("INSERT INTO creator_settings (company_id, incentive_days) VALUES (:c, 2)"
              " ON CONFLICT (company_id) DO UPDATE SET incentive_days = 2", c=company)
    for member in ("a", "b"):
        whop.add_membership(f"mem_pin_{member}", company_id=company, user_id=f"user_pin_{member}")
    # Webhooks into the consumer, with the T+0 sends (claims, the frequency cap, the incentive lock).
    for member in ("a", "b"):
        msg_id, body = payment_event("payment.failed", at=NOW - timedelta(hours=2), company=company,
                                     membership=f"mem_pin_{member}", user=f"user_pin_{member}",
                                     payment=f"pay_pin_{member}")
        assert pipeline.deliver(msg_id, body).status_code == 200
    msg_id, body = payment_event("payment.succeeded", at=NOW, company=company, membership="mem_pin_b",
                                 user="user_pin_b", payment="pay_pin_b")
    assert pipeline.deliver(msg_id, body).status_code == 200
    assert pipeline.drain() == (3, 0)
    _tick()  # due companies, expiry, reminders, the executor, retention (run_retention)
    # The creator API: access checks (per-user limit: count_request), the company limit, reads,
    # a write, an action, the CSV export (COPY with its transaction-local filters).
    whop.set_access("user_admin", company, "admin")
    headers = {"x-whop-user-token": whop.mint_user_token("user_admin"), "content-type": "application/json"}
    base = f"/api/companies/{company}"
    for path in ("/settings", "/kpis", "/kpis/cohorts", "/cases", "/experiments",
                 "/cases/export.csv?window_days=30&status=open&q=mem_pin"):
        assert pipeline.client.http.get(base + path, headers=headers).status_code == 200, path
    put = pipeline.client.http.put(base + "/settings", body=b'{"incentive_days": 1}', headers=headers)
    assert put.status_code == 200
    case = pipeline.client.http.get(base + "/cases?status=open", headers=headers).json_body["items"][0]
    assert pipeline.client.http.get(f"{base}/cases/{case['id']}", headers=headers).status_code == 200
    nudge = pipeline.client.http.post(f"{base}/cases/{case['id']}/nudge", body=b"", headers=headers)
    assert nudge.status_code == 200, nudge.body
    token = pipeline.rows(company, "SELECT link_token FROM recovery_cases WHERE id = CAST(:i AS uuid)",
                          i=case["id"])[0]["link_token"]
    assert pipeline.client.http.get(f"/r/{token}").status_code == 302
    from chalicelib.tenancy import ping

    ping()  # the deep health check's query
    purge_company.purge_company("biz_bravo", dry_run=False)  # the erasure lock and record


def test_nothing_the_app_sends_through_the_proxy_pins_a_session(
        pipeline: Pipeline, owner: Any, relay: tuple[str, Capture],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, capture = relay
    use_relay(monkeypatch, url, "unnamed")
    workload(pipeline, owner)
    assert tenancy.get_database().pool_size == 1
    conns = captured(capture)
    texts = statement_texts(conns)
    assert len(conns) >= 1 and len(texts) > 100, "the workload went through the relay"
    assert any("rebound_begin" in t for t in texts) and any("COPY" in t for t in texts)
    assert any("rebound_set_local" in t for t in texts) and any("run_retention" in t for t in texts)
    assert pinning_reasons(conns) == []
    assert max(len(t.encode()) for t in texts) < MAX_STATEMENT_BYTES


def test_the_checker_flags_what_would_pin_prepared_statements_and_session_settings(
        pipeline: Pipeline, relay: tuple[str, Capture],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, capture = relay
    use_relay(monkeypatch, url, "prepared")
    msg_id, body = payment_event("payment.failed", at=NOW - timedelta(hours=1), membership="mem_pin_p")
    assert pipeline.deliver(msg_id, body).status_code == 200
    assert pipeline.drain() == (1, 0)
    reasons = " | ".join(pinning_reasons(captured(capture)))
    assert "named prepared statement 'pg8000_statement_" in reasons
    assert "set_config (setting a parameter)" in reasons  # the session statement_timeout
