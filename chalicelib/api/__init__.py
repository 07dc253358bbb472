"""The creator API: ``/api/companies/{company_id}/…``, one module per resource.

``serve`` is the one door every creator route goes through, in this order:

1. ``auth.authenticate`` (401 bad token, 403 not an admin of the path's company, 429 the user's
   Whop access checks are spent, 503 Whop down); every write (PUT/POST), the start of a CSV
   export and handlers marked ``@destructive`` have admin access re-checked with Whop, never from
   the cache (reads, and an export's continuation parts, may use the 60 s cache);
2. ``ratelimit.check`` for the route class, per verified company (429 over the limit);
3. the resource function, called with a ``CreatorContext`` whose ``company_id`` is the verified
   path company: the only tenant context any of them ever opens a transaction with.

The rate-limit headers go on every response after step 2, errors included.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from chalice.app import Request, Response
from pydantic import BaseModel, ValidationError

from chalicelib import ratelimit
from chalicelib.auth import authenticate
from chalicelib.errors import AppError, BadRequest, PayloadTooLarge, TooManyRequests, bad_request_from
from chalicelib.http import json_response
from chalicelib.observability import count, logger
from chalicelib.ratelimit import RouteClass

MAX_BODY_BYTES = 16 * 1024


def utcnow() -> datetime:
    """The creator API's clock (tests freeze it here; anything guarding a deadline in the database
    uses the database's own clock instead)."""
    return datetime.now(UTC)

Q = TypeVar("Q", bound=BaseModel)


class BadGateway(AppError):
    """Whop refused an action for good. The message is ours: Whop's text goes to the logs only."""

    status = 502
    code = "whop_error"


@dataclass(frozen=True)
class CreatorContext:
    """One authenticated, rate-limited creator request."""

    user_id: str
    company_id: str
    now: datetime
    query: Mapping[str, str]
    body: bytes

    def parse_query(self, model: type[Q]) -> Q:
        """The query string as ``model`` (400 naming each bad parameter)."""
        # ``?status=&q=`` (empty values) means "no filter", as if the parameter were absent.
        present = {name: value for name, value in self.query.items() if value != ""}
        try:
            return model.model_validate(present)
        except ValidationError as exc:
            raise bad_request_from(exc, "invalid query parameters") from None

    def parse_body(self, model: type[Q]) -> Q:
        """The JSON body as ``model`` (400 for invalid JSON, a non-object, or bad fields)."""
        try:
            data = json.loads(self.body.decode("utf-8")) if self.body.strip() else None
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise BadRequest("request body is not valid JSON", fields={"body": "invalid JSON"}) from None
        if not isinstance(data, dict):
            raise BadRequest("request body must be a JSON object", fields={"body": "must be a JSON object"})
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise bad_request_from(exc, "invalid request body") from None


Handler = Callable[..., BaseModel | Response]
H = TypeVar("H", bound=Callable[..., Any])


def destructive(handler: H) -> H:
    """Mark a handler whose effect cannot be undone: ``serve`` re-checks admin access with Whop,
    uncached, so an admin revoked a moment ago cannot still end a member's access."""
    handler.__dict__["destructive"] = True
    return handler


def _raw_body(request: Request) -> bytes:
    raw = request.raw_body or b""
    body = raw.encode() if isinstance(raw, str) else bytes(raw)
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body larger than {MAX_BODY_BYTES} bytes")
    return body


def serve(request: Request | None, company_id: str, route_class: RouteClass, handler: Handler,
          *args: Any) -> Response:
    """Authenticate, rate-limit, then ``handler(ctx, *args)``; a model becomes a 200 JSON body."""
    assert request is not None
    # Every write, and an export (every case's data at once), asks Whop again, uncached: a
    # revoked admin must not act for the cache's 60 s. Reads may use the cache, and so
    # may an export's continuation parts (with a cursor): the part that began it asked Whop
    # seconds ago, and a large export must not spend the user's access-check budget part by part.
    query: dict[str, str] = dict(request.query_params or {})
    starts_export = route_class == "export" and not query.get("cursor")
    fresh = (bool(getattr(handler, "destructive", False)) or starts_export
             or request.method in ("PUT", "POST", "PATCH", "DELETE"))
    creator = authenticate(request.headers, company_id, fresh=fresh)
    logger.append_keys(company_id=creator.company_id, route_class=route_class)
    now = utcnow()
    decision = ratelimit.check(creator.company_id, route_class, now)
    limit_headers = decision.headers(now)
    if not decision.allowed:
        count("ApiRateLimited")
        raise TooManyRequests(f"rate limit of {decision.limit} {route_class} requests per window reached",
                              headers=limit_headers)
    try:
        body = _raw_body(request) if request.method in ("PUT", "POST") else b""
        ctx = CreatorContext(user_id=creator.user_id, company_id=creator.company_id, now=now,
                             query=dict(request.query_params or {}), body=body)
        result = handler(ctx, *args)
    except ValidationError as exc:
        raise _with_headers(bad_request_from(exc), limit_headers) from None
    except AppError as err:
        _with_headers(err, limit_headers)
        raise
    response = result if isinstance(result, Response) else json_response(result)
    response.headers = {**limit_headers, **response.headers}
    return response


def _with_headers(err: AppError, headers: dict[str, str]) -> AppError:
    err.headers = {**headers, **err.headers}  # the error's own (e.g. a cooldown's Retry-After) win
    return err
