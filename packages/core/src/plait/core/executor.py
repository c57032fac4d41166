"""The application's executor: the provider's own ``execute`` with the caller's correlation id added to ``meta``.

Request handlers, services and ``app.context.workflows`` all get a :class:`CorrelatedExecutor`. It is a thin view
of the one provider the application runs (it never runs flows itself), so every path into Plait reaches the same
engine.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from plait.core.events import FlowEvent
from plait.core.handle import FlowHandle, FlowStatus
from plait.core.info import FlowInfo, FlowPage
from plait.core.provider import WorkflowProvider
from plait.core.workflow import WorkflowDefinition

__all__ = ["CorrelatedExecutor", "current_correlation_id"]

D = TypeVar("D", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

current_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "plait_correlation_id", default=None
)
"""The correlation id of the request being handled, or of the flow whose handler is running.

The application's middleware sets it for a request's duration, and the runner while a step, rollback or callback
runs. Executors without a bound id read it, so a service injected with ``WorkflowExecutor`` tags the flows it
starts with the id of the request, or of the flow, that it works for.
"""


class CorrelatedExecutor:
    """A ``WorkflowExecutor`` that delegates to the application's provider and tags flows with a correlation id.

    Args:
        provider: returns the running provider; raises ``ProviderNotStartedError`` when there is none.
        correlation_id: the id to put in ``meta["correlation_id"]``; ``None`` uses the current request's id
            (:data:`current_correlation_id`), if any.
    """

    __slots__ = ("_correlation_id", "_provider")

    def __init__(self, provider: Callable[[], WorkflowProvider], correlation_id: str | None = None) -> None:
        self._provider = provider
        self._correlation_id = correlation_id

    @property
    def correlation_id(self) -> str | None:
        """The id this executor adds to new flows, if any."""
        return self._correlation_id or current_correlation_id.get()

    def bind(self, correlation_id: str) -> CorrelatedExecutor:
        """Returns an executor on the same provider that tags flows with ``correlation_id``."""
        return CorrelatedExecutor(self._provider, correlation_id)

    async def execute(
        self,
        definition: WorkflowDefinition[D, R],
        data: D | Mapping[str, Any],
        *,
        id: str | None = None,
        timeout: float | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> FlowHandle[R]:
        """Starts a flow on the application's provider, with ``meta["correlation_id"]`` set.

        A ``correlation_id`` the caller puts in ``meta`` wins over the bound one. Raises what the provider's
        ``execute()`` raises (``WorkflowValidationError``, ``FlowConflictError``, ...), and
        ``ProviderNotStartedError`` before the application has started.
        """
        provider = self._provider()
        correlation_id = self.correlation_id
        if correlation_id is not None:
            meta = {"correlation_id": correlation_id, **(meta or {})}
        return await provider.execute(definition, data, id=id, timeout=timeout, meta=meta)

    async def get_status(self, flow_id: str) -> FlowStatus:
        """Returns a flow's status; raises ``FlowNotFoundError`` for an unknown id."""
        return await self._provider().get_status(flow_id)

    @overload
    async def get_handle(self, flow_id: str) -> FlowHandle[BaseModel]: ...

    @overload
    async def get_handle(self, flow_id: str, definition: WorkflowDefinition[Any, R]) -> FlowHandle[R]: ...

    async def get_handle(self, flow_id: str, definition: WorkflowDefinition[Any, Any] | None = None) -> FlowHandle[Any]:
        """Re-attaches to an existing flow; raises ``FlowNotFoundError`` for an unknown id."""
        if definition is None:
            return await self._provider().get_handle(flow_id)
        return await self._provider().get_handle(flow_id, definition)

    async def describe(self, flow_id: str) -> FlowInfo:
        """Returns a flow's status with each node's fate; raises ``FlowNotFoundError`` for an unknown id."""
        return await self._provider().describe(flow_id)

    async def signal(self, flow_id: str, name: str, payload: BaseModel | Mapping[str, Any]) -> None:
        """Delivers signal ``name`` to a flow (see :meth:`WorkflowExecutor.signal`)."""
        await self._provider().signal(flow_id, name, payload)

    async def cancel(self, flow_id: str, reason: str | None = None) -> FlowStatus:
        """Cancels a flow (see :meth:`WorkflowExecutor.cancel`)."""
        return await self._provider().cancel(flow_id, reason)

    async def compensate(self, flow_id: str, reason: str | None = None) -> FlowStatus:
        """Undoes a completed flow (see :meth:`WorkflowExecutor.compensate`)."""
        return await self._provider().compensate(flow_id, reason)

    async def retry(self, flow_id: str) -> FlowHandle[BaseModel]:
        """Starts a new flow with an ended flow's data (see :meth:`WorkflowExecutor.retry`)."""
        return await self._provider().retry(flow_id)

    async def retry_compensation(self, flow_id: str) -> FlowStatus:
        """Runs an ended flow's failed rollbacks again (see :meth:`WorkflowExecutor.retry_compensation`)."""
        return await self._provider().retry_compensation(flow_id)

    async def list_flows(
        self,
        *,
        workflow: str | None = None,
        status: FlowStatus | str | None = None,
        parent_id: str | None = None,
        created_after: float | datetime | None = None,
        created_before: float | datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> FlowPage:
        """Lists flows newest first (see :meth:`WorkflowExecutor.list_flows`)."""
        return await self._provider().list_flows(
            workflow=workflow,
            status=status,
            parent_id=parent_id,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            cursor=cursor,
        )

    async def subscribe(self, flow_id: str) -> AsyncIterator[FlowEvent]:
        """Yields a flow's events, first to last (see :meth:`WorkflowExecutor.subscribe`)."""
        events = self._provider().subscribe(flow_id)
        try:
            async for event in events:
                yield event
        finally:
            # Closing this iterator closes the provider's at once: its subscription does not wait for the garbage
            # collector.
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

    def __repr__(self) -> str:
        return f"CorrelatedExecutor(correlation_id={self.correlation_id!r})"
