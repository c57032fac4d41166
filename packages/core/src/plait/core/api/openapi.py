"""The API's OpenAPI 3.1 document, with a JSON Schema (from pydantic) for every workflow's data, result and
signal models, and the routes that take or return them."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from plait.core.api.catalog import CatalogEntry
from plait.core.api.schemas import (
    FlowAccepted,
    FlowResult,
    FlowState,
    Permissions,
    Problem,
    Reason,
    RetryAccepted,
    WorkflowGraphs,
)
from plait.core.events import FlowEvent
from plait.core.handle import FlowStatus
from plait.core.info import FlowInfo, FlowPage

__all__ = ["openapi_document"]

_JSON = "application/json"
_FLOW_ID = {"name": "flow_id", "in": "path", "required": True, "schema": {"type": "string"}}
_API_MODELS = (Problem, FlowAccepted, RetryAccepted, FlowState, FlowResult, Permissions, WorkflowGraphs)


def openapi_document(entries: dict[str, CatalogEntry], base: str, title: str = "Plait workflows") -> dict[str, Any]:
    """The OpenAPI document of an API mounted at ``base`` (``/workflows``) serving the workflows ``entries``."""
    return _Document(entries, base).build(title)


class _Document:
    def __init__(self, entries: dict[str, CatalogEntry], base: str) -> None:
        self.entries = entries
        self.base = base.rstrip("/")
        self.paths: dict[str, dict[str, Any]] = {}
        wanted: list[tuple[str, JsonSchemaMode, TypeAdapter[Any]]] = [
            (model.__name__, "serialization", TypeAdapter(model)) for model in _API_MODELS
        ]
        wanted += [
            ("Reason", "validation", TypeAdapter(Reason)),
            ("FlowInfo", "serialization", TypeAdapter(FlowInfo)),
            ("FlowPage", "serialization", TypeAdapter(FlowPage)),
            ("FlowEvent", "serialization", TypeAdapter(FlowEvent)),
        ]
        for name, entry in entries.items():
            wanted.append((f"data:{name}", "validation", TypeAdapter(entry.definition.data)))
            wanted.append((f"result:{name}", "serialization", TypeAdapter(entry.definition.result)))
            for signal, model in entry.definition.signals.items():
                wanted.append((f"signal:{name}:{signal}", "validation", TypeAdapter(model)))
        # One call for every schema: pydantic names each model once, renaming those whose names collide.
        mapping, defs = TypeAdapter.json_schemas(wanted, ref_template="#/components/schemas/{model}")
        self.schema = {key: mapping[(key, mode)] for key, mode, _ in wanted}
        self.components = defs.get("$defs", {})

    def build(self, title: str) -> dict[str, Any]:
        self._reads()
        self._control()
        self._starts()
        self._signals()
        return {
            "openapi": "3.1.0",
            "info": {"title": title, "version": "1", "description": "Start, watch and steer Plait workflows."},
            "paths": self.paths,
            "components": {"schemas": self.components},
        }

    def path(self, route: str) -> dict[str, Any]:
        return self.paths.setdefault(self.base + route, {})

    def ok(self, key: str | dict[str, Any], description: str = "OK") -> dict[str, Any]:
        schema = self.schema[key] if isinstance(key, str) else key
        return {"description": description, "content": {_JSON: {"schema": schema}}}

    def problem(self, description: str = "refused") -> dict[str, Any]:
        return self.ok("Problem", description)

    def flow_op(
        self, summary: str, operation_id: str, responses: dict[str, Any], body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        op = _op(summary, operation_id, {"404": self.problem("no such flow"), **responses})
        op["parameters"] = [_FLOW_ID]
        if body is not None:
            op["requestBody"] = body
        return op

    def _reads(self) -> None:
        self.path("/workflows")["get"] = _op(
            "Workflows and their graphs", "listWorkflows", {"200": self.ok("WorkflowGraphs")}
        )
        self.path("/permissions")["get"] = _op(
            "What the caller may do, by workflow", "getPermissions", {"200": self.ok("Permissions")}
        )
        self.path("/openapi.json")["get"] = _op("This document", "getOpenApi", {"200": self.ok({"type": "object"})})
        self.path("/ui")["get"] = _op(
            "The run inspector page", "getInspector", {"200": {"description": "HTML", "content": {"text/html": {}}}}
        )
        self.path("/flows")["get"] = {
            **_op("Flows, newest first", "listFlows", {"200": self.ok("FlowPage"), "400": self.problem()}),
            "parameters": [
                _query("workflow", {"type": "string"}),
                _query("status", {"type": "string", "enum": [s.value for s in FlowStatus]}),
                _query("parent_id", {"type": "string"}),
                _query("created_after", {"type": "number"}, "seconds since the epoch"),
                _query("created_before", {"type": "number"}, "seconds since the epoch"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}),
                _query("cursor", {"type": "string"}, "the next_cursor of the previous page"),
            ],
        }
        compensated = {
            "type": "object",
            "properties": {
                "compensated": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "the nodes rolled back, in the order their rollbacks ran",
                }
            },
        }
        described = {"allOf": [self.schema["FlowInfo"], compensated]}
        self.path("/flows/{flow_id}")["get"] = self.flow_op(
            "A flow and each node's fate", "describeFlow", {"200": self.ok(described)}
        )
        result = self.flow_op(
            "A flow's result",
            "getFlowResult",
            {
                "200": self.ok("FlowResult", "completed: the result"),
                "202": self.ok("FlowState", "not finished (yet, after waiting)"),
                "409": self.problem("failed, cancelled or compensated: the error"),
            },
        )
        result["parameters"].append(_query("wait", {"type": "number", "minimum": 0, "maximum": 60}, "seconds to wait"))
        self.path("/flows/{flow_id}/result")["get"] = result
        stream = {"text/event-stream": {"schema": self.schema["FlowEvent"]}}
        events = self.flow_op(
            "A flow's events as Server-Sent Events: replayed, then live, until its last; then an 'end' message",
            "streamFlowEvents",
            {"200": {"description": "one message per event", "content": stream}},
        )
        events["parameters"] += [
            _query("after", {"type": "integer", "minimum": 0}, "skip the events up to this sequence number"),
            {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
        ]
        self.path("/flows/{flow_id}/events")["get"] = events

    def _refusals(self) -> dict[str, Any]:
        return {
            "403": self.problem("read-only, or not authorized"),
            "409": self.problem("the flow's status does not allow it"),
            "413": self.problem("body too large"),
            "415": self.problem("not JSON"),
            "503": self.problem("the provider is not running or unreachable"),
        }

    def _control(self) -> None:
        reason = {"required": False, "content": {_JSON: {"schema": self.schema["Reason"]}}}
        empty = {"required": False, "content": {_JSON: {"schema": {"type": "object"}}}}
        control = {"202": self.ok("FlowState"), **self._refusals()}
        self.path("/flows/{flow_id}/cancel")["post"] = self.flow_op("Cancel a flow", "cancelFlow", control, reason)
        self.path("/flows/{flow_id}/compensate")["post"] = self.flow_op(
            "Undo a completed flow", "compensateFlow", control, reason
        )
        self.path("/flows/{flow_id}/retry-compensation")["post"] = self.flow_op(
            "Run a flow's failed rollbacks again", "retryCompensation", control, empty
        )
        self.path("/flows/{flow_id}/retry")["post"] = self.flow_op(
            "Start a new flow with an ended flow's data",
            "retryFlow",
            {**control, "202": self.ok("RetryAccepted")},
            empty,
        )

    def _starts(self) -> None:
        for name, entry in self.entries.items():
            if not entry.registered:
                continue
            op = _op(
                f"Start a flow of {name} (its result, once completed: {entry.definition.result.__name__})",
                f"start_{name}",
                {
                    "202": self.ok("FlowAccepted"),
                    **self._refusals(),
                    "409": self.problem("the Idempotency-Key names a flow with other data"),
                    "422": self.problem("invalid data"),
                },
            )
            op["parameters"] = [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "the new flow's id: the same key again returns the same flow",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                }
            ]
            op["requestBody"] = {"required": True, "content": {_JSON: {"schema": self.schema[f"data:{name}"]}}}
            op["tags"] = [name]
            op["x-plait-result"] = self.schema[f"result:{name}"]
            self.path(f"/{name}")["post"] = op

    def _signals(self) -> None:
        bodies: dict[str, list[dict[str, Any]]] = {}
        for name, entry in self.entries.items():
            for signal in entry.definition.signals:
                bodies.setdefault(signal, []).append(self.schema[f"signal:{name}:{signal}"])
        for signal, schemas in bodies.items():
            body = schemas[0] if len(schemas) == 1 else {"oneOf": schemas}
            responses = {
                "202": self.ok("FlowState"),
                **self._refusals(),
                "404": self.problem("no such flow, or its workflow waits for no such signal"),
                "409": self.problem("the flow has ended, or the signal came with another payload"),
                "422": self.problem("invalid payload"),
            }
            self.path(f"/flows/{{flow_id}}/signals/{signal}")["post"] = self.flow_op(
                f"Send signal '{signal}' to a flow",
                f"signal_{signal}",
                responses,
                {"required": True, "content": {_JSON: {"schema": body}}},
            )


def _op(summary: str, operation_id: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {"summary": summary, "operationId": operation_id, "responses": responses}


def _query(name: str, schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        param["description"] = description
    return param
