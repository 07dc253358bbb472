"""Rebound's Chalice app: routes and event handlers wired to chalicelib. Nothing else lives here."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from chalice.app import Chalice, ConvertToMiddleware, Response, SQSEvent

from chalicelib.config import get_config
from chalicelib.db import get_database
from chalicelib.errors import BadRequest
from chalicelib.health import application_health, database_health
from chalicelib.http import handle_errors, json_response
from chalicelib.ingest import accept_webhook
from chalicelib.observability import count, logger, metrics
from chalicelib.processing import handle_batch
from chalicelib.queue import get_queue

# Created by the merge template (infra/merge-template.json); the name is fixed there too.
EVENTS_QUEUE_NAME = "rebound-events"

app = Chalice(app_name="rebound", configure_logs=False)
app.register_middleware(ConvertToMiddleware(logger.inject_lambda_context(clear_state=True)))
app.register_middleware(ConvertToMiddleware(metrics.log_metrics))

if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    # Fail the cold start, not the first request, when a required setting is missing.
    get_config()


def query_params() -> dict[str, str]:
    request = app.current_request
    return dict(request.query_params or {}) if request is not None else {}


@app.route("/api/health", methods=["GET"])
@handle_errors
def health() -> Response:
    check = query_params().get("type", "application")
    if check == "application":
        return json_response(application_health(get_config()))
    if check == "database":
        result = database_health(get_database())
        return json_response(result, status=200 if result.status == "ok" else 503)
    raise BadRequest("unknown health check", fields={"type": "must be application or database"})


@app.route("/webhooks/whop", methods=["POST"], content_types=["application/json", "*/*"])
@handle_errors
def whop_webhook() -> Response:
    request = app.current_request
    assert request is not None
    raw = request.raw_body or b""
    body = raw.encode() if isinstance(raw, str) else raw
    result = accept_webhook(body, dict(request.headers),
                            get_config().WHOP_WEBHOOK_SECRET or "", datetime.now(UTC), get_queue())
    count(f"Webhook_{result.outcome}")
    logger.info("webhook", extra={"outcome": result.outcome, "webhook_id": result.webhook_id})
    if result.status_code == 200:
        return json_response({"status": result.outcome})
    error = {"error": {"code": result.outcome, "message": result.message}}
    return json_response(error, status=result.status_code,
                         headers={"Retry-After": "5"} if result.status_code == 503 else None)


@app.on_sqs_message(queue=EVENTS_QUEUE_NAME, batch_size=10)
def process_events(event: SQSEvent) -> dict[str, Any]:
    return dict(handle_batch(event.to_dict(), event.context))
