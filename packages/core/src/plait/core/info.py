"""What a caller can learn about a flow beyond its status: each step's fate, attempts and errors.

Built from the engine's recorded state, so every provider answers ``describe(flow_id)`` the same way, whichever
process ran the steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from plait.core.engine import FlowState, build_error
from plait.core.handle import FlowStatus
from plait.core.workflow import WorkflowDefinition

__all__ = ["FlowInfo", "StepInfo"]

StepStatus = Literal[
    "pending", "running", "completed", "failed", "cancelled", "compensating", "compensated", "compensation_failed"
]


@dataclass(frozen=True, slots=True)
class StepInfo:
    """One step of a flow.

    Attributes:
        name: the step's name.
        status: ``pending`` (not started), ``running``, ``completed``, ``failed``, ``cancelled`` (cut short by a
            timeout or cancellation), ``compensating``, ``compensated`` (rolled back) or ``compensation_failed``.
        attempts: the attempt it has reached (0 while pending).
        error: the error of its last failed attempt as ``"Type: message"``, if an attempt failed.
        rollback_error: the error of its last failed rollback attempt, if one failed.
    """

    name: str
    status: StepStatus
    attempts: int = 0
    error: str | None = None
    rollback_error: str | None = None


@dataclass(frozen=True, slots=True)
class FlowInfo:
    """A flow's status, its steps in definition order, and its error once it has one.

    Attributes:
        flow_id: the flow's id.
        workflow: the workflow's name.
        status: the flow's status.
        steps: every step; steps not started yet are ``pending``.
        created_at: when the flow was accepted (seconds since the epoch).
        finished_at: when it ended, if it has.
        error: the flow's error message (what ``result()`` raises), once a failure is recorded.
        meta: the metadata the flow was started with.
    """

    flow_id: str
    workflow: str
    status: FlowStatus
    steps: tuple[StepInfo, ...]
    created_at: float
    finished_at: float | None = None
    error: str | None = None
    meta: dict[str, str] | None = None

    @property
    def compensated(self) -> tuple[str, ...]:
        """The steps that were rolled back, in the order their rollbacks ran."""
        done = [s.name for s in self.steps if s.status == "compensated"]
        return tuple(reversed(done))

    def step(self, name: str) -> StepInfo:
        """The step called ``name``."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    @classmethod
    def from_state(cls, state: FlowState, definition: WorkflowDefinition[Any, Any] | None = None) -> FlowInfo:
        """Summarises a recorded state; with the ``definition``, steps not started yet are listed as pending."""
        names = list(definition.step_names) if definition is not None else []
        names += [n for n in state.steps if n not in names]
        steps = tuple(_step(name, state.steps.get(name)) for name in names)
        return cls(
            flow_id=state.flow_id,
            workflow=state.workflow,
            status=state.status,
            steps=steps,
            created_at=state.created_at,
            finished_at=state.finished_at,
            error=str(build_error(state)) if state.error is not None else None,
            meta=dict(state.meta),
        )


def _step(name: str, record: dict[str, Any] | None) -> StepInfo:
    if record is None:
        return StepInfo(name, "pending")
    return StepInfo(
        name,
        record["status"],
        int(record["attempt"]),
        _message(record.get("error")),
        _message(record.get("rollback_error")),
    )


def _message(error: dict[str, Any] | None) -> str | None:
    if not error:
        return None
    return f"{error['type']}: {error['message']}" if error.get("message") else str(error["type"])
