"""Flow status and the handle a caller gets back from ``execute()``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import StrEnum
from typing import Generic, TypeVar

from pydantic import BaseModel

__all__ = ["FlowHandle", "FlowStatus"]

R_co = TypeVar("R_co", bound=BaseModel, covariant=True)


class FlowStatus(StrEnum):
    """Where a flow is in its life.

    ``pending`` (accepted, not started), ``running``, ``waiting`` (blocked only on signals or timers: it holds no
    worker), ``compensating`` (rolling back), and the terminal ``completed``, ``failed``, ``cancelled`` and
    ``compensated`` (completed, then undone).
    """

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    COMPENSATED = "compensated"

    @property
    def is_terminal(self) -> bool:
        """True for ``completed``, ``failed``, ``cancelled`` and ``compensated``."""
        return self in _TERMINAL


_TERMINAL = frozenset({FlowStatus.COMPLETED, FlowStatus.FAILED, FlowStatus.CANCELLED, FlowStatus.COMPENSATED})


class FlowHandle(ABC, Generic[R_co]):
    """A started flow: its id, its status, and its result once it ends.

    Providers return subclasses of this; a handle can be re-created from any process with
    ``executor.get_handle(flow_id)``.
    """

    __slots__ = ("id",)

    def __init__(self, flow_id: str) -> None:
        self.id = flow_id

    @abstractmethod
    async def status(self) -> FlowStatus:
        """Returns the flow's current status."""

    @abstractmethod
    async def result(self, timeout: float | None = None) -> R_co:
        """Waits for the flow to end and returns its result.

        Args:
            timeout: seconds to wait at most; ``None`` waits until the flow ends.

        Raises:
            WorkflowError: the flow failed or was cancelled (a subclass says how).
            TimeoutError: ``timeout`` passed first; the flow goes on.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"
