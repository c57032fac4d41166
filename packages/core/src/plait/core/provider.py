"""The provider interfaces: what services call (executor) and what the application manages (lifecycle)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Protocol, TypeVar, overload, runtime_checkable

from pydantic import BaseModel

from plait.core.consumer import IWorkflowConsumer
from plait.core.events import FlowEvent
from plait.core.handle import FlowHandle, FlowStatus
from plait.core.info import FlowInfo, FlowPage
from plait.core.options import ConsumerOptions
from plait.core.workflow import WorkflowDefinition

__all__ = ["EventHook", "WorkflowExecutor", "WorkflowLifecycle", "WorkflowProvider"]

D = TypeVar("D", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

EventHook = Callable[[FlowEvent], Awaitable[None]]
"""An async callback for the events of every flow: ``async def hook(event: FlowEvent) -> None``."""


@runtime_checkable
class WorkflowExecutor(Protocol):
    """Starts flows, steers them and looks at them; this is what request handlers and services use."""

    async def execute(
        self,
        definition: WorkflowDefinition[D, R],
        data: D | Mapping[str, Any],
        *,
        id: str | None = None,
        timeout: float | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> FlowHandle[R]:
        """Validates ``data``, durably accepts a new flow and returns its handle without waiting for it.

        With an ``id`` that already exists, returns that flow's handle and runs nothing (a different workflow
        or different data raises ``FlowConflictError``). Bad data raises ``WorkflowValidationError`` and
        nothing is stored.
        """
        ...

    async def get_status(self, flow_id: str) -> FlowStatus:
        """Returns a flow's status; raises ``FlowNotFoundError`` for an unknown id."""
        ...

    @overload
    async def get_handle(self, flow_id: str) -> FlowHandle[BaseModel]: ...

    @overload
    async def get_handle(self, flow_id: str, definition: WorkflowDefinition[Any, R]) -> FlowHandle[R]: ...

    async def get_handle(self, flow_id: str, definition: WorkflowDefinition[Any, Any] | None = None) -> FlowHandle[Any]:
        """Re-attaches to an existing flow, its result typed by ``definition`` (else by the registered one);
        raises ``FlowNotFoundError`` for an unknown id."""
        ...

    async def describe(self, flow_id: str) -> FlowInfo:
        """Returns a flow's status with each node's fate (``FlowInfo.from_state`` of its recorded state);
        raises ``FlowNotFoundError`` for an unknown id."""
        ...

    async def signal(self, flow_id: str, name: str, payload: BaseModel | Mapping[str, Any]) -> None:
        """Delivers signal ``name`` to a flow's ``wait_for``; a signal sent early is kept for when it gets there.

        Raises ``WorkflowValidationError`` for a bad payload (nothing stored), ``FlowNotFoundError`` for an
        unknown flow, and ``SignalError`` for a name the workflow does not wait for, an ended flow, or a second
        signal of the name with another payload (the same payload again is accepted).
        """
        ...

    async def cancel(self, flow_id: str, reason: str | None = None) -> FlowStatus:
        """Cancels a pending, running or waiting flow: running handlers are cancelled wherever they run,
        completed steps roll back, ``on_error`` runs, and the flow ends ``cancelled`` (children too). Returns the
        flow's status after the request; an ended flow is left as it is."""
        ...

    async def compensate(self, flow_id: str, reason: str | None = None) -> FlowStatus:
        """Undoes a completed flow: its completed steps are rolled back in reverse order and it ends
        ``compensated``; raises ``FlowStateError`` for a flow that has not completed."""
        ...

    async def retry(self, flow_id: str) -> FlowHandle[BaseModel]:
        """Starts a new flow with the data and metadata of a failed, cancelled or compensated one (its
        ``retry_of`` names the old one); raises ``FlowStateError`` for any other."""
        ...

    async def retry_compensation(self, flow_id: str) -> FlowStatus:
        """Runs again, in reverse order, the rollbacks of an ended flow that failed for good; those that succeed
        leave the flow's error. Raises ``FlowStateError`` when none failed."""
        ...

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
        """Lists flows newest first, filtered; pass a page's ``next_cursor`` back to get the next page."""
        ...

    def subscribe(self, flow_id: str) -> AsyncIterator[FlowEvent]:
        """Yields a flow's events from its first (replayed) to its last (live), from any process; raises
        ``FlowNotFoundError`` for an unknown id."""
        ...


@runtime_checkable
class WorkflowLifecycle(Protocol):
    """Registration, hooks and start/stop; managed by the application, not by request handlers."""

    def register(
        self,
        definition: WorkflowDefinition[D, R],
        consumer: IWorkflowConsumer[D, R] | None = None,
        options: ConsumerOptions | None = None,
    ) -> None:
        """Registers a definition, with the consumer that runs its flows here (``None``: this process only
        starts them). Raises ``DefinitionError`` for a consumer that does not match or a name registered twice.
        """
        ...

    def on_event(self, hook: EventHook) -> None:
        """Calls ``hook`` with every event this process records, in order; a hook that raises is logged and never
        fails a flow."""
        ...

    async def start(self) -> None:
        """Starts taking work; idempotent."""
        ...

    async def stop(self) -> None:
        """Stops taking work and lets running steps finish within a grace period; idempotent, safe before
        ``start()``, and leaves no caller's ``result()`` waiting forever."""
        ...


@runtime_checkable
class WorkflowProvider(WorkflowExecutor, WorkflowLifecycle, Protocol):
    """A complete provider: executor and lifecycle."""
