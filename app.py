"""Rebound's Chalice app: routes and event handlers wired to chalicelib. Nothing else lives here."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from chalice.app import Chalice, CloudWatchEvent, ConvertToMiddleware, Rate, Request, Response, SQSEvent

from chalicelib.budgets import SHARED_PROFILE, worst_case_call_s
from chalicelib.clock import Clock, ClockSkew, checked_now, system_clock
from chalicelib.config import get_config
from chalicelib.errors import NotFound, ServiceUnavailable, Unauthorized
from chalicelib.health import health_check
from chalicelib.http import (
    bearer_matches,
    contract_method_not_allowed,
    handle_errors,
    json_response,
    link_page,
    without_token_query,
)
from chalicelib.ingest import accept_webhook
from chalicelib.observability import MetricUnit, count, logger, measure, metrics
from chalicelib.queue import EventQueue, get_queue
from chalicelib.tenancy import get_database

# Created by the merge template (infra/merge-template.json); the name is fixed there too.
EVENTS_QUEUE_NAME = "rebound-events"

app = Chalice(app_name="rebound", configure_logs=False)
app.register_middleware(ConvertToMiddleware(logger.inject_lambda_context(clear_state=True)))
app.register_middleware(ConvertToMiddleware(metrics.log_metrics))



@app.middleware("http")
def contract_errors(event: Request, get_response: Callable[[Request], Response]) -> Response:
    # Every route's 405 in the contract's error shape, not Chalice's own.
    return contract_method_not_allowed(get_response(event))


COMPANY = "/api/companies/{company_id}"
# Bodies are parsed as JSON whatever the Content-Type (fetch sends text/plain for a string body),
# so a wrong one gets our 400 shape instead of API Gateway's 415.
# GETs too: a stray Content-Type on a GET must not earn an undocumented 415.
ANY_BODY = ["application/json", "*/*"]

if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    # Fail the cold start, not the first request, when a required setting is missing.
    get_config()
    from chalicelib.ratelimit import get_limits

    get_limits()


def query_params() -> dict[str, str]:
    request = app.current_request
    return dict(request.query_params or {}) if request is not None else {}


@app.route("/api/health", methods=["GET"], content_types=ANY_BODY)
@handle_errors
def health() -> Response:
    # issue 9: application is free liveness; database/webhook need the bearer secret, are cached.
    request = app.current_request
    assert request is not None
    cfg = get_config()
    answer, status = health_check(
        query_params().get("type", "application"), cfg, request.headers.get("authorization"),
        database=get_database,
        queue=lambda: EventQueue(cfg.EVENTS_QUEUE_URL) if cfg.EVENTS_QUEUE_URL else None)
    return json_response(answer, status=status)


@app.route("/webhooks/whop", methods=["POST"], content_types=["application/json", "*/*"])
@handle_errors
def whop_webhook() -> Response:
    request = app.current_request
    assert request is not None
    raw = request.raw_body or b""
    body = raw.encode() if isinstance(raw, str) else raw
    result = accept_webhook(body, dict(request.headers),
                            get_config().WHOP_WEBHOOK_SECRET or "", datetime.now(UTC), get_queue)
    count(f"Webhook_{result.outcome}")
    if result.event_type is not None:
        count(f"WebhookType_{result.event_type}")
    logger.info("webhook", extra={"outcome": result.outcome, "webhook_id": result.webhook_id})
    if result.status_code == 200:
        return json_response({"status": "ignored" if result.outcome.startswith("ignored") else "queued"})
    error = {"error": {"code": result.outcome, "message": result.message}}
    return json_response(error, status=result.status_code,
                         headers={"Retry-After": "5"} if result.status_code == 503 else None)


@app.on_sqs_message(queue=EVENTS_QUEUE_NAME, batch_size=10)
def process_events(event: SQSEvent) -> dict[str, Any]:
    # Imported here: the consumer's dependencies (Whop client, batch utilities) stay off the API
    # function's cold start, which every webhook delivery pays.
    from chalicelib.processing import handle_batch

    return dict(handle_batch(event.to_dict(), event.context))


# The tick stops taking new work with this much time left: one more Whop call at its worst
# (budgets.SHARED_PROFILE: 26 s) and recording it must still fit in the function's timeout.
TICK_MARGIN_S = worst_case_call_s(SHARED_PROFILE) + 2.0
# The HTTP trigger must answer within API Gateway's 29 s (its integration timeout). It stops
# taking new work after HTTP_TICK_BUDGET_S; the call it may have started then is bounded by
# budgets.SHORT_PROFILE (one attempt, 7 s at worst); HTTP_TICK_SLACK_S covers recording outcomes,
# one retention batch and the cold start. tests/test_time_budgets.py holds the sum under
# budgets.API_GATEWAY_TIMEOUT_S.
HTTP_TICK_BUDGET_S = 15.0
HTTP_TICK_SLACK_S = 5.0


@app.schedule(Rate(5, unit=Rate.MINUTES))
def process_reminders(event: CloudWatchEvent) -> dict[str, Any]:
    context = event.context
    if context is not None and hasattr(context, "get_remaining_time_in_millis"):
        # The margin never exceeds a quarter of the time given, whatever the configured timeout.
        margin_ms = min(TICK_MARGIN_S * 1000, context.get_remaining_time_in_millis() / 4)
        return run_tick(lambda: context.get_remaining_time_in_millis() < margin_ms)
    return run_tick(_deadline(HTTP_TICK_BUDGET_S), whop_profile="short")


def _deadline(seconds: float) -> Callable[[], bool]:
    ends = time.monotonic() + seconds
    return lambda: time.monotonic() >= ends


def run_tick(out_of_time: Callable[[], bool] | None = None,
             whop_profile: Literal["shared", "short"] = "shared",
             clock: Clock = system_clock) -> dict[str, Any]:
    from chalicelib.effects import default_context
    from chalicelib.scheduler import tick
    from chalicelib.whop_client import get_whop

    try:
        now = checked_now("tick", clock)  # the database's time; refused on a skewed host clock
    except ClockSkew:
        return {"refused": "clock_skew"}
    ctx = dataclasses.replace(default_context(), whop=get_whop(whop_profile))
    result = tick(ctx, now, out_of_time=out_of_time)
    for name, value in result.as_metrics().items():
        measure(name, value, MetricUnit.Milliseconds if name.endswith("Ms") else MetricUnit.Count)
    count("TickCompleted")
    logger.info("reminder tick", extra=result.as_metrics())
    return {"companies": result.companies, **result.as_metrics()}


@app.route("/api/scheduler/reminders", methods=["POST"], content_types=["application/json", "*/*"])
@handle_errors
def scheduler_reminders() -> Response:
    secret = get_config().SCHEDULER_SECRET
    if not secret:
        raise NotFound("not found")
    request = app.current_request
    assert request is not None
    from chalicelib.ratelimit import enforce_principal

    now = datetime.now(UTC)
    # The bearer first: a wrong one counts against its source address only, so wrong
    # guesses can never spend the real caller's budget; authenticated ticks have their own limit
    # (a tick hits the database and Whop).
    if not bearer_matches(request.headers.get("authorization"), secret):
        source = (request.context.get("identity") or {}).get("sourceIp") or "unknown"
        enforce_principal("scheduler_failures", str(source), now,
                          "too many failed scheduler requests from this address")
        raise Unauthorized("missing or invalid bearer token")
    enforce_principal("scheduler", "route", now, "too many scheduler requests")
    result = run_tick(_deadline(HTTP_TICK_BUDGET_S), whop_profile="short")
    if "refused" in result:
        raise ServiceUnavailable("this host's clock disagrees with the database's; the tick did not run")
    return json_response(result)


@app.route("/r/{token}", methods=["GET"], content_types=ANY_BODY)
@handle_errors
def tracked_link(token: str) -> Response:
    from chalicelib.links import follow
    from chalicelib.whop_client import get_whop

    click = follow(token, datetime.now(UTC), get_whop())
    count(f"LinkClick_{click.status}")
    if click.status == "redirect" and click.location:
        return Response(body="", status_code=302,
                        headers={"Location": click.location, "Cache-Control": "no-store",
                                 "Referrer-Policy": "no-referrer"})
    return link_page(click.status)


# --- creator API (issue 5): every route authenticates, rate-limits, then calls one function ----
# Imported inside the views, like the consumer: the webhook route's cold start stays light.



@app.route("/api/openapi.json", methods=["GET"], content_types=ANY_BODY)
@handle_errors
def openapi() -> Response:
    from chalicelib.openapi import openapi_document

    return json_response(openapi_document(get_config().APP_VERSION))


@app.route(f"{COMPANY}/settings", methods=["GET"], content_types=ANY_BODY)
@handle_errors
def get_settings(company_id: str) -> Response:
    from chalicelib.api import serve, settings

    return serve(app.current_request, company_id, "reads", settings.get_settings)


@app.route(f"{COMPANY}/settings", methods=["PUT"], content_types=ANY_BODY)
@handle_errors
def put_settings(company_id: str) -> Response:
    from chalicelib.api import serve, settings

    return serve(app.current_request, company_id, "settings_write", settings.put_settings)


@app.route(f"{COMPANY}/kpis", methods=["GET"], content_types=ANY_BODY)
@handle_errors
def get_kpis(company_id: str) -> Response:
    from chalicelib.api import kpis, serve

    return serve(app.current_request, company_id, "reads", kpis.get_kpis)


@app.route(f"{COMPANY}/kpis/cohorts", methods=["GET"], content_types=ANY_BODY)
@handle_errors
def get_kpi_cohorts(company_id: str) -> Response:
    from chalicelib.api import kpis, serve

    return serve(app.current_request, company_id, "reads", kpis.get_cohorts)


@app.route(f"{COMPANY}/experiments", methods=["GET"], content_types=ANY_BODY)
@handle_errors
def list_experiments(company_id: str) -> Response:
    from chalicelib.api import experiments, serve

    return serve(app.current_request, company_id, "reads", experiments.list_experiments)


@app.route(f"{COMPANY}/experiments", methods=["POST"], content_types=ANY_BODY)
@handle_errors
def create_experiment(company_id: str) -> Response:
    from chalicelib.api import experiments, serve

    return serve(app.current_request, company_id, "settings_write", experiments.create_experiment)


@app.route(f"{COMPANY}/experiments/{{experiment_id}}", methods=["GET"], content_types=ANY_BODY)
@handle_errors
def get_experiment(company_id: str, experiment_id: str) -> Response:
    from chalicelib.api import experiments, serve

    return serve(app.current_request, company_id, "reads", experiments.get_experiment, experiment_id)


@app.route(f"{COMPANY}/experiments/{{experiment_id}}/stop", methods=["POST"], content_types=ANY_BODY)
@handle_errors
def stop_experiment(company_id: str, experiment_id: str) -> Response:
    from chalicelib.api import experiments, serve

    return serve(app.current_request, company_id, "settings_write", experiments.stop_experiment,
                 experiment_id)


@app.route(f"{COMPANY}/cases", methods=["GET"], content_types=ANY_BODY)
@handle_errors
def list_cases(company_id: str) -> Response:
    from chalicelib.api import cases, serve

    return serve(app.current_request, company_id, "reads", cases.list_cases)


@app.route(f"{COMPANY}/cases/export.csv", methods=["GET"], content_types=ANY_BODY)
@handle_errors
def export_cases(company_id: str) -> Response:
    from chalicelib.api import cases, serve

    return serve(app.current_request, company_id, "export", cases.export_csv)


@app.route(f"{COMPANY}/cases/{{case_id}}", methods=["GET"], content_types=ANY_BODY)
@handle_errors
def get_case(company_id: str, case_id: str) -> Response:
    from chalicelib.api import cases, serve

    return serve(app.current_request, company_id, "reads", cases.get_case, case_id)


@app.route(f"{COMPANY}/cases/{{case_id}}/nudge", methods=["POST"], content_types=ANY_BODY)
@handle_errors
def nudge_case(company_id: str, case_id: str) -> Response:
    from chalicelib.api import actions, serve

    return serve(app.current_request, company_id, "actions", actions.nudge, case_id)


@app.route(f"{COMPANY}/cases/{{case_id}}/cancel", methods=["POST"], content_types=ANY_BODY)
@handle_errors
def cancel_case(company_id: str, case_id: str) -> Response:
    from chalicelib.api import actions, serve

    return serve(app.current_request, company_id, "actions", actions.cancel, case_id)


@app.route(f"{COMPANY}/cases/{{case_id}}/cancel-membership", methods=["POST"], content_types=ANY_BODY)
@handle_errors
def cancel_membership(company_id: str, case_id: str) -> Response:
    from chalicelib.api import actions, serve

    return serve(app.current_request, company_id, "actions", actions.cancel_membership, case_id)


@app.route(f"{COMPANY}/cases/{{case_id}}/terminate", methods=["POST"], content_types=ANY_BODY)
@handle_errors
def terminate_membership(company_id: str, case_id: str) -> Response:
    from chalicelib.api import actions, serve

    return serve(app.current_request, company_id, "actions", actions.terminate, case_id)


@app.route(f"{COMPANY}/cases/{{case_id}}/retry", methods=["POST"], content_types=ANY_BODY)
@handle_errors
def retry_payment(company_id: str, case_id: str) -> Response:
    from chalicelib.api import recovery, serve

    return serve(app.current_request, company_id, "actions", recovery.retry, case_id)


@app.route(f"{COMPANY}/memberships/{{membership_id}}", methods=["GET"], content_types=ANY_BODY)
@handle_errors
def get_membership(company_id: str, membership_id: str) -> Response:
    from chalicelib.api import memberships, serve

    return serve(app.current_request, company_id, "reads", memberships.get_membership, membership_id)


@app.route(f"{COMPANY}/memberships/{{membership_id}}/manage-url", methods=["GET"], content_types=ANY_BODY)
@handle_errors
def get_manage_url(company_id: str, membership_id: str) -> Response:
    from chalicelib.api import memberships, serve

    return serve(app.current_request, company_id, "reads", memberships.get_manage_url, membership_id)


@app.route("/dashboard/{company_id}", methods=["GET"], content_types=ANY_BODY)
@handle_errors
def dashboard(company_id: str) -> Response:
    from chalicelib.dashboard import page, valid_company_id

    if not valid_company_id(company_id):
        raise NotFound("not found")
    # issue 9: ?token= (make dev's URL) is honoured only outside production.
    stripped = without_token_query(company_id, query_params(), production=get_config().is_production)
    if stripped is not None:
        return stripped
    html, headers = page()
    return Response(body=html, status_code=200, headers=dict(headers))


@app.route("/favicon.ico", methods=["GET"], content_types=ANY_BODY)
@handle_errors
def favicon() -> Response:
    from chalicelib.dashboard import favicon as icon

    body, headers = icon()
    return Response(body=body, status_code=200, headers=dict(headers))
