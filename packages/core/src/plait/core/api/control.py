"""The API's mutations: start a flow, signal it, cancel it, undo it, retry it, finish its rollbacks.

Each one is refused with a 403 when the API is read-only, before anything is looked up; otherwise the flow (or
workflow) is found (404), ``authorize`` is asked (403), and only then is the body read: it must be declared JSON
(415), fit the size limit (413) and validate (422).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from plait.core.api.flows import json_response
from plait.core.api.problems import ApiError
from plait.core.api.schemas import Reason
from plait.core.api.security import Action
from plait.core.api.services import Services
from plait.core.executor import CorrelatedExecutor

__all__ = ["Control"]


class _Anything(BaseModel):
    """A body whose content is ignored (``retry`` takes none), though it must still be JSON."""


class Control:
    """The endpoints that change flows."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def start(self, request: Request) -> Response:
        """``POST /{workflow}``: the body is the workflow's data; an ``Idempotency-Key`` header is the flow id."""
        name: str = request.path_params["workflow"]
        self.services.guard.check_writable()
        entry = self.services.workflow(name)
        await self.services.guard.require(request, "start", name)
        data = await self.services.body(request, entry.definition.data)
        key = request.headers.get("idempotency-key")
        handle = await self.services.workflows(request).execute(entry.definition, data, id=key)
        location = f"{request.scope.get('root_path', '')}/flows/{handle.id}"
        return json_response({"flow_id": handle.id}, 202, headers={"location": location})

    async def signal(self, request: Request) -> Response:
        """``POST /flows/{id}/signals/{name}``: the body is the signal's payload model."""
        name: str = request.path_params["name"]
        flow_id, workflows, workflow = await self._flow(request, "signal")
        definition = self.services.catalog.definition(workflow)
        payload: BaseModel | dict[str, Any]
        if definition is None:  # a workflow known only to other processes: the provider validates the payload
            payload = await self.services.json_object(request)
        else:
            model = definition.signals.get(name)
            if model is None:
                raise ApiError(
                    404,
                    "unknown_signal",
                    f"Workflow '{workflow}' waits for no signal '{name}'",
                    workflow=workflow,
                    signals=sorted(definition.signals),
                )
            payload = await self.services.body(request, model)
        await workflows.signal(flow_id, name, payload)
        return await self._status(workflows, flow_id)

    async def cancel(self, request: Request) -> Response:
        """``POST /flows/{id}/cancel`` with an optional ``{"reason": ...}``; an ended flow is left as it is."""
        flow_id, workflows, _ = await self._flow(request, "cancel")
        reason: Reason = await self.services.body(request, Reason, optional=True)
        status = await workflows.cancel(flow_id, reason.reason)
        return json_response({"flow_id": flow_id, "status": status}, 202)

    async def compensate(self, request: Request) -> Response:
        """``POST /flows/{id}/compensate`` with an optional ``{"reason": ...}``: undoes a completed flow."""
        flow_id, workflows, _ = await self._flow(request, "compensate")
        reason: Reason = await self.services.body(request, Reason, optional=True)
        status = await workflows.compensate(flow_id, reason.reason)
        return json_response({"flow_id": flow_id, "status": status}, 202)

    async def retry(self, request: Request) -> Response:
        """``POST /flows/{id}/retry``: a new flow with the data of a failed, cancelled or compensated one."""
        flow_id, workflows, _ = await self._flow(request, "retry")
        await self.services.body(request, _Anything, optional=True)
        handle = await workflows.retry(flow_id)
        location = f"{request.scope.get('root_path', '')}/flows/{handle.id}"
        return json_response({"flow_id": handle.id, "retry_of": flow_id}, 202, headers={"location": location})

    async def retry_compensation(self, request: Request) -> Response:
        """``POST /flows/{id}/retry-compensation``: runs the rollbacks that failed for good again."""
        flow_id, workflows, _ = await self._flow(request, "retry_compensation")
        await self.services.body(request, _Anything, optional=True)
        status = await workflows.retry_compensation(flow_id)
        return json_response({"flow_id": flow_id, "status": status}, 202)

    async def _flow(self, request: Request, action: Action) -> tuple[str, CorrelatedExecutor, str]:
        self.services.guard.check_writable()
        flow_id: str = request.path_params["flow_id"]
        workflows = self.services.workflows(request)
        workflow = (await workflows.describe(flow_id)).workflow
        await self.services.guard.require(request, action, workflow)
        return flow_id, workflows, workflow

    async def _status(self, workflows: CorrelatedExecutor, flow_id: str) -> Response:
        return json_response({"flow_id": flow_id, "status": await workflows.get_status(flow_id)}, 202)
