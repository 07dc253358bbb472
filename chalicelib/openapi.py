"""The OpenAPI 3.1 document of every route (``GET /api/openapi.json``), generated, not written.

Schemas come from the same pydantic models the handlers validate with and serialise through
(``pydantic.json_schema.models_json_schema`` with ``ref_template='#/components/schemas/{model}'``);
query parameters are the fields of the handlers' query models. Which model goes where
(``OPERATIONS``), and the prose, are ``chalicelib.openapi_routes``; this module assembles them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from chalicelib.api.cases import EXPORT_NEXT_CURSOR_HEADER
from chalicelib.api.schemas.common import ErrorResponse
from chalicelib.auth import TOKEN_HEADER
from chalicelib.health import ApplicationHealth, DatabaseHealth, WebhookHealth
from chalicelib.openapi_routes import CREATOR_DESCRIPTION, HEADERS, OPERATIONS, PATH_PARAMS, REF, Op, Resp

Refs = Mapping[tuple[Any, JsonSchemaMode], Any]  # (model, mode) → its {"$ref": …}
OPENAPI_VERSION = "3.1.0"


def _models() -> Iterator[tuple[type[BaseModel], JsonSchemaMode]]:
    yield ErrorResponse, "serialization"
    yield ApplicationHealth, "serialization"
    yield DatabaseHealth, "serialization"
    yield WebhookHealth, "serialization"
    for op in OPERATIONS:
        if op.body is not None:
            yield op.body, "validation"
        for resp in op.responses.values():
            if resp.model is not None:
                yield resp.model, "serialization"


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF, mode="validation")
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema["properties"].items():
        prop = {k: v for k, v in prop.items() if k not in ("title", "description")}
        # A query parameter is either present or absent: drop the "null" branch of optionals.
        branches = [b for b in prop.pop("anyOf", []) if b.get("type") != "null"]
        if branches:
            prop = {**(branches[0] if len(branches) == 1 else {"anyOf": branches}), **prop}
        if prop.get("default", 0) is None:
            prop.pop("default")
        params.append({"name": name, "in": "query", "required": name in required, "schema": prop,
                       "description": model.model_fields[name].description or ""})
    return params


def _content(resp: Resp, refs: Refs) -> dict[str, Any]:
    schema = refs[(resp.model, "serialization")] if resp.model is not None else resp.schema
    return {resp.media: {"schema": schema}}


def _operation(op: Op, refs: Refs) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
    if op.description:
        out["description"] = op.description
    if op.creator:
        out["x-rate-limit-class"] = op.route_class
    params = [{"name": p, "in": "path", "required": True, **PATH_PARAMS[p]} for p in op.path_params]
    params += [{"name": n, "in": "header", "required": True, "description": d, "schema": {"type": "string"}}
               for n, d in op.header_params]
    if op.query is not None:
        params += _query_params(op.query)
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": op.body_required,
                              "content": {"application/json": {"schema": refs[(op.body, "validation")]}}}
    elif op.operation_id == "whopWebhook":
        out["requestBody"] = {"required": True,
                              "content": {"application/json": {"schema": {"type": "object"}}}}
    out["security"] = [{name: []} for name in op.security] if op.security else []
    responses: dict[str, Any] = {}
    for status, resp in sorted(op.responses.items()):
        entry: dict[str, Any] = {"description": resp.description}
        if resp.model is not None or resp.schema is not None:
            entry["content"] = _content(resp, refs)
        if resp.headers:
            entry["headers"] = {h: {**HEADERS[h], "required": _header_required(h, status)}
                                for h in resp.headers}
        responses[str(status)] = entry
    out["responses"] = responses
    return out


def _header_required(name: str, status: int) -> bool:
    # The export cursor appears only on a cut export; a 503 may come before a Retry-After is known.
    return not (name == EXPORT_NEXT_CURSOR_HEADER or (name == "Retry-After" and status == 503))


def build_document(version: str = "dev") -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    refs, defs = models_json_schema(list(dict.fromkeys(_models())), ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Rebound API", "version": version,
                 "description": "Failed-payment recovery for Whop creators.\n\n" + CREATOR_DESCRIPTION},
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "tags": [{"name": t} for t in dict.fromkeys(op.tag for op in OPERATIONS)],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "WhopUserToken": {"type": "apiKey", "in": "header", "name": TOKEN_HEADER,
                                  "description": "ES256 JWT added by Whop's iframe proxy."},
                "SchedulerBearer": {"type": "http", "scheme": "bearer",
                                    "description": "SCHEDULER_SECRET."},
            },
        },
    }


@lru_cache(maxsize=4)
def openapi_document(version: str = "dev") -> dict[str, Any]:
    """The document, built once per process and version."""
    return build_document(version)
