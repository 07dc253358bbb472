"""Issue 9 item 10: a hung SQS makes the webhook answer 503 within seconds (Whop retries), not
hang until API Gateway's 504."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from chalicelib import config, queue
from chalicelib.queue import EventQueue, QueueUnavailable, sqs_client_config
from tests.helpers import payment_event, sign


def test_the_sqs_client_has_short_timeouts_and_bounded_retries() -> None:
    client = EventQueue("https://sqs.us-east-1.amazonaws.com/1/q").client
    cfg = client.meta.config
    assert cfg.connect_timeout <= 3 and cfg.read_timeout <= 5
    assert cfg.retries["total_max_attempts"] <= 3
    # Worst case stays far below API Gateway's 29 s.
    assert cfg.retries["total_max_attempts"] * (cfg.connect_timeout + cfg.read_timeout) < 15
    assert sqs_client_config().read_timeout == cfg.read_timeout


class HungServer:
    """Accepts TCP connections and never answers: what a hung SQS endpoint looks like."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def hung_sqs(monkeypatch: pytest.MonkeyPatch) -> Iterator[HungServer]:
    server = HungServer()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", server.url)
    monkeypatch.setattr(queue, "SQS_READ_TIMEOUT_S", 0.5)  # the same bound, scaled down for the test
    monkeypatch.setenv("EVENTS_QUEUE_URL", f"{server.url}/123456789012/rebound-events")
    config.reset_config()
    queue.reset_queue()
    yield server
    queue.reset_queue()
    config.reset_config()
    server.close()


def test_a_hung_sqs_gives_up_after_the_bounded_attempts(hung_sqs: HungServer) -> None:
    with pytest.raises(QueueUnavailable):
        queue.get_queue().depth()
    assert 1 <= len(hung_sqs.accepted) <= queue.SQS_MAX_ATTEMPTS


def test_the_webhook_answers_503_with_retry_after_when_sqs_hangs(hung_sqs: HungServer) -> None:
    from chalice.test import Client

    from app import app

    msg_id, body = payment_event("payment.failed", membership="mem_1", user="user_1", at=datetime.now(UTC))
    headers = sign(body, msg_id)
    with Client(app) as client:
        resp = client.http.post("/webhooks/whop", body=body, headers=headers)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
    assert json.loads(resp.body)["error"]["code"]
    assert len(hung_sqs.accepted) <= queue.SQS_MAX_ATTEMPTS
