"""The provider interfaces: what services call (executor) and what the application manages (lifecycle)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel

from plait.core.consumer import IWorkflowConsumer
from plait.core.handle import FlowHandle, FlowStatus
from plait.core.info import FlowInfo
from plait.core.options import ConsumerOptions
from plait.core.workflow import WorkflowDefinition

__all__ = ["WorkflowExecutor", "WorkflowLifecycle", "WorkflowProvider"]

D = TypeVar("D", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


@runtime_checkable
class WorkflowExecutor(Protocol):
    """Starts flows and looks them up; this is what request handlers and services use."""

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

    async def get_handle(self, flow_id: str) -> FlowHandle[BaseModel]:
        """Re-attaches to an existing flow; raises ``FlowNotFoundError`` for an unknown id."""
        ...

    async def describe(self, flow_id: str) -> FlowInfo:
        """Returns a flow's status with each step's fate (``FlowInfo.from_state`` of its recorded state);
        raises ``FlowNotFoundError`` for an unknown id."""
        ...


@runtime_checkable
class WorkflowLifecycle(Protocol):
    """Registration and start/stop; managed by the application, not by request handlers."""

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
