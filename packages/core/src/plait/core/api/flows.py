"""The API's reads: workflows and their graphs, permissions, the OpenAPI document, flows listed and described,
a flow's result, and its events as a stream."""

from __future__ import annotations

import math
from typing import Any

import pydantic_core
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from plait.core.api.catalog import describe_workflow
from plait.core.api.openapi import openapi_document
from plait.core.api.problems import ApiError, to_response
from plait.core.api.security import ACTIONS
from plait.core.api.services import Services
from plait.core.api.stream import EventStream, parse_after
from plait.core.errors import WorkflowError, WorkflowRollbackError, WorkflowStepError
from plait.core.handle import FlowStatus

__all__ = ["EventsEndpoint", "Reads", "failure_of", "json_response"]

MAX_WAIT = 60.0
"""The longest ``?wait=`` of a result request, in seconds."""


def json_response(data: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response; models, dataclasses, enums and dates anywhere in ``data`` are serialized."""
    return Response(pydantic_core.to_json(data), status_code=status, headers=headers, media_type="application/json")


class Reads:
    """The endpoints that change nothing."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def workflows(self, request: Request) -> Response:
        """``GET /workflows``: every workflow the API knows, with its groups, nodes, signals and Mermaid chart."""
        entries = self.services.catalog.entries()
        return json_response({"workflows": [describe_workflow(entry) for entry in entries.values()]})

    async def permissions(self, request: Request) -> Response:
        """``GET /permissions``: the actions ``authorize`` allows this request, by registered workflow."""
        guard = self.services.guard
        allowed: dict[str, list[str]] = {}
        for name, entry in self.services.catalog.entries().items():
            if entry.registered:
                allowed[name] = [a for a in ACTIONS if await guard.allows(request, a, name)]
        return json_response({"read_only": guard.read_only, "workflows": allowed})

    async def openapi(self, request: Request) -> Response:
        """``GET /openapi.json``: the OpenAPI 3.1 document of this API, as mounted."""
        return json_response(openapi_document(self.services.catalog.entries(), request.scope.get("root_path", "")))

    async def list_flows(self, request: Request) -> Response:
        """``GET /flows?workflow=&status=&parent_id=&created_after=&created_before=&limit=&cursor=``."""
        query = request.query_params
        page = await self.services.workflows(request).list_flows(
            workflow=query.get("workflow") or None,
            status=query.get("status") or None,
            parent_id=query.get("parent_id") or None,
            created_after=_number(query.get("created_after"), "created_after"),
            created_before=_number(query.get("created_before"), "created_before"),
            limit=_limit(query.get("limit")),
            cursor=query.get("cursor") or None,
        )
        return json_response(page)

    async def describe(self, request: Request) -> Response:
        """``GET /flows/{id}``: the flow and each node's fate, plus ``compensated`` (the rollbacks, in order)."""
        info = await self.services.workflows(request).describe(request.path_params["flow_id"])
        body = pydantic_core.to_jsonable_python(info)
        body["compensated"] = list(info.compensated)
        return json_response(body)

    async def result(self, request: Request) -> Response:
        """``GET /flows/{id}/result?wait=<s>``: 200 and the result, 409 and the error, 202 while not finished."""
        flow_id: str = request.path_params["flow_id"]
        wait = _wait(request.query_params.get("wait"))
        workflows = self.services.workflows(request)
        info = await workflows.describe(flow_id)
        if not info.status.is_terminal and wait == 0:
            return json_response({"flow_id": flow_id, "status": info.status}, 202)
        definition = self.services.catalog.definition(info.workflow)
        handle = await (
            workflows.get_handle(flow_id) if definition is None else workflows.get_handle(flow_id, definition)
        )
        try:
            result = await handle.result(timeout=None if info.status.is_terminal else wait)
        except TimeoutError:
            return json_response({"flow_id": flow_id, "status": await workflows.get_status(flow_id)}, 202)
        except WorkflowError as error:
            status = await workflows.get_status(flow_id)
            raise ApiError(
                409,
                _FAILED.get(status, "flow_failed"),
                str(error),
                flow_id=flow_id,
                status=status,
                failure=failure_of(error),
            ) from None
        return json_response(
            {"flow_id": flow_id, "status": FlowStatus.COMPLETED, "result": result.model_dump(mode="json")}
        )


_FAILED = {FlowStatus.CANCELLED: "flow_cancelled", FlowStatus.COMPENSATED: "flow_compensated"}


class EventsEndpoint:
    """``GET /flows/{id}/events``: the flow's events as Server-Sent Events (an ASGI app, to watch the connection)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        flow_id: str = request.path_params["flow_id"]
        try:
            after = parse_after(request.query_params.get("after"), request.headers.get("last-event-id"))
            workflows = self.services.workflows(request)
            await workflows.describe(flow_id)  # a 404 now, rather than an empty stream
        except Exception as error:
            response: JSONResponse | EventStream = to_response(error)
        else:
            response = EventStream(flow_id, workflows.subscribe(flow_id), after=after)
        await response(scope, receive, send)


def failure_of(error: WorkflowError) -> dict[str, Any]:
    """A flow's error as JSON: its type and message, the step that failed first, and the rollbacks that failed."""
    primary = error.primary_error if isinstance(error, WorkflowRollbackError) else error
    failure: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
    if isinstance(primary, WorkflowStepError):
        failure["step"] = primary.step_name
        if primary.index is not None:
            failure["index"] = primary.index
    if isinstance(error, WorkflowRollbackError):
        failure["rollback_failures"] = [{"step": e.step_name, "message": str(e)} for e in error.rollback_errors]
    return failure


def _number(raw: str | None, name: str) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be seconds since the epoch, got {raw[:60]!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {raw[:60]!r}")
    return value


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return 50
    if not raw.isdigit():
        raise ValueError(f"limit must be an integer from 1 to 1000, got {raw[:60]!r}")
    return int(raw)  # list_flows checks the range


def _wait(raw: str | None) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        wait = math.nan
    if not 0 <= wait <= MAX_WAIT:  # NaN fails both comparisons
        raise ApiError(400, "bad_request", f"wait must be seconds from 0 to {MAX_WAIT:g}, got {raw[:60]!r}")
    return wait
