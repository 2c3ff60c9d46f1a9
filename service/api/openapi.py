"""The OpenAPI document of a running app: FastAPI's, plus what only the running server knows.

- the administrator's caps (``service.settings.Limits``) on a job spec's fields, from ``limits.SCHEMA_LIMITS``
  (the same numbers ``limits.spec_problems`` enforces);
- the benchmark suites this deployment registers (``service.catalog.registered_suites``) as the enum of
  ``suite`` in ``POST /api/benchmarks``;
- what the API refuses that the engine's spec allows: server paths (``task.emnist_dir`` must be null) and the
  EMNIST data set when ``PLASTICITY_EMNIST_DIR`` is unset;
- ``rule`` of a spec as ``anyOf``: its ``family`` may be left out (it then comes from ``task.kind``), so more
  than one family's schema may fit one rule object.

Built once per app, on the first request for ``/openapi.json``.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.api.limits import SCHEMA_LIMITS
from service.catalog import registered_suites
from service.settings import Limits


def _component(doc: dict[str, Any], name: str) -> dict[str, Any] | None:
    schemas = doc.get("components", {}).get("schemas", {})
    for key in (name, f"{name}-Input"):
        if key in schemas:
            return schemas[key]
    return None


def _targets(prop: dict[str, Any], keyword: str) -> list[dict[str, Any]]:
    """The schemas a keyword applies to: the property itself, or its non-null ``anyOf`` members; ``items.``
    descends into the array's items."""
    members = [m for m in prop.get("anyOf", [prop]) if m.get("type") != "null"]
    if keyword.startswith("items."):
        return [m["items"] for m in members if "items" in m]
    return members


def apply_limits(doc: dict[str, Any], limits: Limits) -> None:
    """Write each cap of ``limits`` where ``SCHEMA_LIMITS`` puts it (the smaller of the cap and the model's own
    bound)."""
    for component, prop_name, keyword, cap in SCHEMA_LIMITS:
        schema = _component(doc, component)
        if schema is None or prop_name not in schema.get("properties", {}):
            raise KeyError(f"SCHEMA_LIMITS names {component}.{prop_name}, which the document lacks")
        key = keyword.rsplit(".", 1)[-1]
        for target in _targets(schema["properties"][prop_name], keyword):
            value = cap(limits)
            target[key] = min(target.get(key, value), value)
        prop = schema["properties"][prop_name]
        if key == "maximum" and isinstance(prop.get("default"), int) and prop["default"] > cap(limits):
            prop["default"] = cap(limits)   # an unset field is lowered to the cap (limits.fit_defaults)


def _api_only(doc: dict[str, Any]) -> None:
    task = _component(doc, "TaskSpec")
    if task is not None:
        task["properties"]["emnist_dir"] = {
            "type": "null", "title": "Emnist Dir",
            "description": "server paths are not accepted over the API (the server reads PLASTICITY_EMNIST_DIR)"}
        if not os.environ.get("PLASTICITY_EMNIST_DIR"):
            dataset = task["properties"]["dataset"]
            target = dataset if "enum" in dataset else doc["components"]["schemas"].get(
                dataset.get("$ref", "").rsplit("/", 1)[-1], {})
            if "enum" in target:
                target["enum"] = [d for d in target["enum"] if d != "emnist-balanced"]
    spec = _component(doc, "DiscoverySpec")
    if spec is not None and "oneOf" in spec["properties"].get("rule", {}):
        rule = spec["properties"]["rule"]
        rule["anyOf"] = rule.pop("oneOf")
        rule["description"] = ("the rule family's terms and settings; without 'family' it is the family of "
                               "task.kind (fewshot: feedforward, fixedpoint-mnist: recurrent, pca: unsupervised)")


def _suites(doc: dict[str, Any]) -> None:
    names = sorted(registered_suites())
    if not names:
        return
    for name in ("BenchmarkOfRule", "BenchmarkOfExpression", "BenchmarkOfBaselines"):
        schema = _component(doc, name)
        if schema is not None:
            schema["properties"]["suite"] = {"type": "string", "enum": names, "title": "Suite",
                                             "description": "a suite of GET /api/suites"}


def _errors_as_json(doc: dict[str, Any]) -> None:
    """Error answers are JSON even where the operation's success is not (the export's source files)."""
    for operation in (op for path in doc.get("paths", {}).values() for op in path.values()):
        for code, response in operation.get("responses", {}).items():
            content = response.get("content", {})
            if code.isdigit() and int(code) >= 400 and content and "application/json" not in content:
                response["content"] = {"application/json": next(iter(content.values()))}


def build_openapi(app: FastAPI, limits: Limits) -> dict[str, Any]:
    """The document ``/openapi.json`` serves (cached on the app)."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                          tags=app.openapi_tags)
        apply_limits(doc, limits)
        _api_only(doc)
        _suites(doc)
        _errors_as_json(doc)
        doc.get("components", {}).get("schemas", {}).pop("HTTPValidationError", None)
        doc.get("components", {}).get("schemas", {}).pop("ValidationError", None)
        app.openapi_schema = doc
    return app.openapi_schema
