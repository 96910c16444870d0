"""The route table of the management API, and the OpenAPI 3 document built from it.

Each route declares its request body, query parameters and response as pydantic types. The same
declarations validate every request, check every response before it leaves (a handler that
returns something the document does not promise is a server error, not a silent drift), and
produce ``/openapi.json`` — so the document matches the implementation by construction, and the
tests check it independently with schemathesis.

:data:`ROUTES` joins the routers of the handler modules listed in :data:`HANDLER_MODULES`, in
that order (the order of the document); a handler module missing from the list fails
``tests/admin/test_routes.py``.
"""

from __future__ import annotations

from typing import Any

from .handlers import (
    addins,
    audit,
    categories,
    config,
    directory,
    groups,
    lifecycle,
    messages,
    pool,
    retention,
    rooms,
    tokens,
    transfer,
    users,
)
from .routing import Binary, Route, path_param_schema, type_adapter
from .types import ErrorBody

HANDLER_MODULES = (
    users,
    groups,
    categories,
    rooms,
    messages,
    lifecycle,
    retention,
    addins,
    config,
    pool,
    directory,
    audit,
    tokens,
    transfer,
)

ROUTES: list[Route] = [route for module in HANDLER_MODULES for route in module.router.routes]

# -- OpenAPI --------------------------------------------------------------------------------

REF = "#/components/schemas/{model}"

ERROR_STATUSES = {
    "400": "The request is malformed or a value is out of range",
    "401": "No valid credentials",
    "403": "The caller is not an administrator",
    "404": "No such resource",
    "409": "The change conflicts with the current state",
    "429": "Too many failed sign-ins for this name or from this address: retry after the"
    " Retry-After header's seconds",
    "503": "A service the request needs (the store, the LDAP directory) did not answer",
}


def _schema(tp: Any, components: dict[str, Any], mode: str = "serialization") -> dict[str, Any]:
    schema = type_adapter(tp).json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
    components.update(schema.pop("$defs", {}))
    return schema


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is given or left out, never null: ``anyOf: [X, null]`` becomes X."""
    options = schema.get("anyOf")
    if not options:
        return schema
    kept = [option for option in options if option.get("type") != "null"]
    rest = {key: value for key, value in schema.items() if key not in ("anyOf", "default")}
    if len(kept) == 1:
        return {**kept[0], **rest}
    return {**rest, "anyOf": kept}


def openapi_document(version: str) -> dict[str, Any]:
    components: dict[str, Any] = {}
    error_schema = _schema(ErrorBody, components)
    paths: dict[str, Any] = {}
    for r in ROUTES:
        op: dict[str, Any] = {
            "operationId": r.handler.__name__,
            "summary": r.summary,
            "tags": [r.tag],
            "security": [{"bearer": []}, {"basic": []}],
        }
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": path_param_schema(name)}
            for name in r.path_params
        ]
        if r.query is not None:
            query_schema = _schema(r.query, components, "validation")
            required = set(query_schema.get("required", ()))
            for name, prop in query_schema["properties"].items():
                params.append(
                    {
                        "name": name,
                        "in": "query",
                        "required": name in required,
                        "schema": _not_null(prop),
                    }
                )
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": _schema(r.body, components, "validation")}
                },
            }
        responses: dict[str, Any] = {}
        if r.response is None:
            responses[str(r.status)] = {"description": "Done"}
        elif r.response is Binary:
            responses[str(r.status)] = {
                "description": "The bytes",
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        else:
            responses[str(r.status)] = {
                "description": "OK",
                "content": {"application/json": {"schema": _schema(r.response, components)}},
            }
        errors = dict(ERROR_STATUSES)
        if r.body is not None:
            errors["408"] = "The body did not arrive within [management] body_timeout_s"
            errors["413"] = "The body is larger than 1 MiB"
            errors["415"] = "The body is not sent as application/json (UTF-8)"
        for status, text in errors.items():
            responses[status] = {
                "description": text,
                "content": {"application/json": {"schema": error_schema}},
            }
        op["responses"] = responses
        paths.setdefault(r.path, {})[r.method.lower()] = op
    for path, summary, content in (
        ("/healthz", "The process is alive and its event loop responsive", "application/json"),
        (
            "/readyz",
            "The store is reachable and migrated, and the node accepts clients",
            "application/json",
        ),
    ):
        paths[path] = {
            "get": {
                "operationId": path.strip("/"),
                "summary": summary,
                "tags": ["health"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "Yes",
                        "content": {content: {"schema": {"type": "object"}}},
                    },
                    "503": {
                        "description": "No",
                        "content": {content: {"schema": {"type": "object"}}},
                    },
                },
            }
        }
    paths["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (text exposition format)",
            "tags": ["health"],
            "security": [{"bearer": []}, {"basic": []}],
            "responses": {
                "200": {
                    "description": "Metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "401": {
                    "description": ERROR_STATUSES["401"],
                    "content": {"application/json": {"schema": error_schema}},
                },
                "403": {
                    "description": ERROR_STATUSES["403"],
                    "content": {"application/json": {"schema": error_schema}},
                },
                "429": {
                    "description": ERROR_STATUSES["429"],
                    "content": {"application/json": {"schema": error_schema}},
                },
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chatserver management API",
            "version": version,
            "description": "Administer a chatserver deployment; see docs/administration.md.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
    }
