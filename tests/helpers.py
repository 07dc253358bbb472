"""Test helpers: the webhook builders shared with scripts/simulate.py, and a concurrency runner."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from scripts.whop_payloads import SECRET, iso, membership_event, payment_event, sign

__all__ = ["SECRET", "FakeHealth", "iso", "membership_event", "payment_event", "run_concurrently",
           "serve_chalice", "serve_health", "sign"]

T = TypeVar("T")


def run_concurrently(fn: Callable[[], T], n: int, after: Callable[[], None] | None = None) -> list[T]:
    """Run ``fn`` in ``n`` threads released together; re-raise the first error, else the results.

    ``after`` runs in each thread when it is done (e.g. closing its thread-local connection).
    """
    barrier = threading.Barrier(n)
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            results.append(fn())
        except BaseException as exc:
            errors.append(exc)
        finally:
            if after is not None:
                after()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@dataclass
class FakeHealth:
    """What a deployed stack's health endpoint answers: by path, else ``default``. As
    chalicelib/health.py, a typed check (``?type=``) without the bearer gets 401."""

    bearer: str
    url: str = ""
    answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    default: tuple[int, dict[str, Any]] = (404, {})


@contextmanager
def serve_health(bearer: str) -> Iterator[FakeHealth]:
    """A real HTTP server on 127.0.0.1 standing in for a deployed stack's /api/health."""
    state = FakeHealth(bearer)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = state.answers.get(self.path, state.default)
            if "type=" in self.path and self.headers.get("Authorization") != f"Bearer {state.bearer}":
                status, body = 401, {"error": {"code": "unauthorized"}}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/api/"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def serve_chalice(app: Any) -> Iterator[str]:
    """The Chalice app on 127.0.0.1 through chalice's own local server (what `make dev` runs);
    yields its base URL, without a trailing slash.

    What chalice.local.create_local_server does (a thread-local current_request), with a handler
    that logs nothing: the URLs carry tokens. The app gets its plain class back on the way out."""
    from chalice.config import Config
    from chalice.local import ChaliceRequestHandler, CustomLocalChalice, LocalChalice, LocalDevServer

    class QuietHandler(ChaliceRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    original = app.__class__
    CustomLocalChalice.__bases__ = (LocalChalice, original)
    app.__class__ = CustomLocalChalice
    local = LocalDevServer(app, Config.create(chalice_stage="dev", app_name="rebound"), "127.0.0.1", 0,
                           handler_cls=QuietHandler)
    thread = threading.Thread(target=local.serve_forever, name="chalice-local", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{local.server.server_address[1]}"
    finally:
        local.shutdown()
        thread.join(timeout=10)
        app.__class__ = original
