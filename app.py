"""Rebound's Chalice app: routes and event handlers wired to chalicelib. Nothing else lives here."""

from __future__ import annotations

import os

from chalice.app import Chalice, ConvertToMiddleware, Response

from chalicelib.config import get_config
from chalicelib.db import get_database
from chalicelib.errors import BadRequest
from chalicelib.health import application_health, database_health
from chalicelib.http import handle_errors, json_response
from chalicelib.observability import logger, metrics

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
