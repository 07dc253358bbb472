"""Errors the application raises, and their one JSON shape on the wire.

``{"error": {"code": "...", "message": "...", "fields": {...}?}}`` (contract, "HTTP routes").
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class AppError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, fields: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            err["fields"] = self.fields
        return {"error": err}


class BadRequest(AppError):
    status = 400
    code = "bad_request"


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"


class Forbidden(AppError):
    status = 403
    code = "forbidden"


class NotFound(AppError):
    status = 404
    code = "not_found"


class Conflict(AppError):
    status = 409
    code = "conflict"


class MethodNotAllowed(AppError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(AppError):
    status = 413
    code = "payload_too_large"


class TooManyRequests(AppError):
    status = 429
    code = "rate_limited"


class ServiceUnavailable(AppError):
    status = 503
    code = "unavailable"


def validation_fields(exc: ValidationError) -> dict[str, str]:
    """pydantic errors as ``{"field.path": "message"}``; input values are never echoed."""
    fields: dict[str, str] = {}
    for err in exc.errors(include_input=False, include_url=False):
        path = ".".join(str(p) for p in err["loc"]) or "body"
        fields.setdefault(path, err["msg"])
    return fields


def bad_request_from(exc: ValidationError, message: str = "invalid request") -> BadRequest:
    return BadRequest(message, fields=validation_fields(exc))
