"""Shaping HTTP responses for the Chalice views: JSON bodies and the one error shape.

Views raise ``AppError`` subclasses (or let pydantic raise); ``handle_errors`` turns them into
``{"error": {...}}`` responses. Unexpected exceptions become a logged 500 without the payload.

Because of that, Lambda's own ``Errors`` metric never sees a route's bug: ``handle_errors`` also
records, per route (the view's name in the metric name, like ``Webhook_<outcome>``), how long
the view took (``RouteLatency_<view>``, milliseconds: its sample count is the request count) and
each 5xx it answered (``Route5xx_<view>``). The per-route alarms read exactly these.
"""

from __future__ import annotations

import functools
import hmac
import time
from collections.abc import Callable
from typing import Any, TypeVar

from chalice.app import Response
from pydantic import BaseModel, ValidationError

from chalicelib.config import ConfigError
from chalicelib.db import DatabaseUnavailable, TransientDatabaseError
from chalicelib.errors import AppError, MethodNotAllowed, ServiceUnavailable, bad_request_from
from chalicelib.observability import MetricUnit, count, logger, measure

F = TypeVar("F", bound=Callable[..., Any])


def json_response(body: BaseModel | dict[str, Any] | list[Any], status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    payload = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
    return Response(body=payload, status_code=status,
                    headers={"Content-Type": "application/json", **(headers or {})})


def error_response(err: AppError) -> Response:
    return json_response(err.body(), status=err.status, headers=err.headers)


def route_metric_names(view_name: str) -> tuple[str, str]:
    """(latency, 5xx) metric names of a route, from its view function's name."""
    return f"RouteLatency_{view_name}", f"Route5xx_{view_name}"


def handle_errors(view: F) -> F:
    latency_name, errors_name = route_metric_names(view.__name__)

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        response = _answer(view, args, kwargs)
        measure(latency_name, round((time.perf_counter() - started) * 1000, 3), MetricUnit.Milliseconds)
        if getattr(response, "status_code", 200) >= 500:
            count(errors_name)
        return response

    wrapped.route_metrics = (latency_name, errors_name)  # type: ignore[attr-defined]
    return wrapped  # type: ignore[return-value]


def _answer(view: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return view(*args, **kwargs)
    except AppError as err:
        return error_response(err)
    except ValidationError as exc:
        return error_response(bad_request_from(exc))
    except (DatabaseUnavailable, TransientDatabaseError) as exc:
        logger.warning("database unavailable", extra={"error": type(exc).__name__})
        return error_response(ServiceUnavailable("database unavailable, retry shortly",
                                                 headers={"Retry-After": "5"}))
    except ConfigError:
        logger.exception("configuration error")
        return error_response(ServiceUnavailable("service misconfigured"))
    except Exception:  # noqa: BLE001 - the last line of defence: a JSON 500, logged
        logger.exception("unhandled error")
        return error_response(AppError("internal error"))


def contract_method_not_allowed(response: Response) -> Response:
    """Chalice answers a method a route lacks (PUT on an experiment, …) itself, before any view,
    as ``{"Code", "Message"}``: give that 405 the contract's error shape, keeping its Allow."""
    body = response.body
    chalice_405 = isinstance(body, dict) and body.get("Code") == "MethodNotAllowedError"
    if response.status_code != 405 or not chalice_405:
        return response
    allowed = str(response.headers.get("Allow", ""))
    err = MethodNotAllowed(f"{body['Message']}; allowed: {allowed}",
                           headers={"Allow": allowed})
    return error_response(err)


def bearer_matches(header: str | None, secret: str) -> bool:
    """Constant-time check of ``Authorization: Bearer <secret>``."""
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].encode(), secret.encode())


_LINK_PAGES = {
    "expired": (410, "This link has expired",
                "This payment link is no longer active. If you still need to update your payment, "
                "open Whop and go to your memberships."),
    "unknown": (404, "Link not found", "This link is not valid."),
    "unavailable": (503, "Please try again",
                    "We could not open your payment page just now. Please try again in a minute."),
    "no_target": (200, "Update your payment in Whop",
                  "Open Whop, go to your memberships, choose this membership and update your payment "
                  "method there. Your access continues once the payment goes through."),
}


def link_page(status: str) -> Response:
    code, title, text = _LINK_PAGES.get(status, _LINK_PAGES["unknown"])
    body = (f"<!doctype html><html lang=en><meta charset=utf-8><title>{title}</title>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<body style='font-family:system-ui;max-width:32rem;margin:4rem auto;padding:0 1rem'>"
            f"<h1>{title}</h1><p>{text}</p></body></html>")
    return Response(body=body, status_code=code,
                    headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"})


def without_token_query(last_segment: str, query: dict[str, str], *, production: bool) -> Response | None:
    """In production, a page URL carrying ``?token=`` is redirected to itself without the query.

    A user token in a URL ends up in history, logs and Referer headers; only ``make dev`` hands
    one out that way. Inside Whop's iframe the proxy sends the token as a header instead.
    ``last_segment`` (already validated) makes a relative Location, right behind any stage prefix.
    """
    if not production or "token" not in query:
        return None
    return Response(body="", status_code=302,
                    headers={"Location": f"./{last_segment}", "Cache-Control": "no-store",
                             "Referrer-Policy": "no-referrer"})
