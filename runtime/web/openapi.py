"""The OpenAPI 3.1 document, generated from the route table and its pydantic models."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from runtime.web import models as m
from runtime.web.api import Route

REF = "#/components/schemas/{model}"
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")


def answers(route: Route, secured: bool = True) -> dict[int, type[BaseModel] | None]:
    """The route's own responses and those the app gives any request before or around its handler:
    401 (token), 403 (Host/Origin), 415 (not JSON), 400/408/413 (the body), 404 (a path parameter
    naming nothing), 503 (the store unreachable)."""
    common: dict[int, type[BaseModel] | None] = {403: m.Error, 404: m.Error, 503: m.Error}
    if route.auth and secured:
        common[401] = m.Error
    if route.method in STATE_CHANGING:
        common.update({400: m.Error, 408: m.Error, 413: m.Error, 415: m.Error})
    if route.body is not None or route.query is not None or re.search(r"{\w+}", route.path):
        common[422] = m.Error
    return {**common, **route.responses}


def _models(routes: list[Route]) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []
    for route in routes:
        for model in [route.body, *answers(route).values()]:
            if model is not None and model not in seen:
                seen.append(model)
    return seen


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _operation(route: Route, secured: bool) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": route.summary, "operationId": route.handler.__name__, "responses": {}}
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in re.findall(r"{(\w+)}", route.path)
    ]
    if route.query is not None:
        schema = route.query.model_json_schema(ref_template=REF)
        for name, prop in schema.get("properties", {}).items():
            params.append({"name": name, "in": "query", "required": name in schema.get("required", []), "schema": prop})
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": _ref(route.body)}}}
    for status, model in sorted(answers(route, secured).items()):
        response: dict[str, Any] = {
            "description": model.__doc__.strip().splitlines()[0] if model and model.__doc__ else str(status)
        }
        if model is not None:
            response["content"] = {"application/json": {"schema": _ref(model)}}
        op["responses"][str(status)] = response
    if route.auth and secured:
        op["security"] = [{"bearer": []}]
    return op


def document(
    routes: list[Route], title: str = "b3-jobs", version: str = "1", *, secured: bool = True
) -> dict[str, Any]:
    """The document of `routes`; `secured`: the server has a token (bearer security and 401s are declared)."""
    _, schemas = models_json_schema(
        [(model, "serialization") for model in _models(routes)], ref_template=REF, by_alias=True
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, secured)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": "Jobs, queues and events of the B3 platform"},
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
        },
    }
    if secured:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc
