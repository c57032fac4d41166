"""What a caller can learn about a flow beyond its status: each node's fate, attempts, errors, items, children.

Built from the engine's recorded state, so every provider answers ``describe(flow_id)`` the same way, whichever
process ran the steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plait.core.engine import FlowState, NodeRecord, StepStatus, build_error, error_text
from plait.core.handle import FlowStatus
from plait.core.workflow import NodeKind, WorkflowDefinition

__all__ = ["FlowInfo", "FlowPage", "FlowSummary", "ProgressInfo", "StepInfo", "StepStatus"]


@dataclass(frozen=True, slots=True)
class StepInfo:
    """One node of a flow.

    Attributes:
        name: the node's name.
        status: ``pending`` (not reached), ``running``, ``waiting`` (for a signal or a timer), ``completed``,
            ``skipped`` (its condition was false), ``failed``, ``cancelled`` (cut short by a timeout or
            cancellation), ``compensating``, ``compensated`` (rolled back) or ``compensation_failed``.
        kind: ``step``, ``wait_for``, ``sleep``, ``for_each`` or ``sub_workflow`` (``step`` when the definition is
            not at hand).
        attempts: the attempt it has reached (0 while pending).
        error: the error of its last failed attempt as ``"Type: message"``, if an attempt failed.
        rollback_error: the error of its last failed rollback attempt, if one failed.
        items_done: a for-each's completed items.
        items_total: a for-each's items in all (``None`` until they are computed).
        child_id: a sub-workflow's child flow id, once started.
        signal: a ``wait_for``'s signal payload (JSON), once received.
        wake_at: when a waiting sleep wakes or a waiting signal times out (seconds since the epoch).
        has_rollback: whether it is undone when the flow rolls back (a step or for-each whose handler has a
            rollback, a sub-workflow); ``None`` until the flow has started and recorded its consumer's handlers.
        in_doubt: whether it is rolled back even when it fails (``rollback_if_failed``).
    """

    name: str
    status: StepStatus
    kind: NodeKind = "step"
    attempts: int = 0
    error: str | None = None
    rollback_error: str | None = None
    items_done: int | None = None
    items_total: int | None = None
    child_id: str | None = None
    signal: Any = None
    wake_at: float | None = None
    has_rollback: bool | None = None
    in_doubt: bool = False


@dataclass(frozen=True, slots=True)
class ProgressInfo:
    """The latest progress a handler reported (``ctx.progress()``).

    Attributes:
        fraction: how far, from 0 to 1.
        message: what it said, if anything.
        step: the step that reported it (``None`` for a callback).
        index: the for-each item that reported it.
        at: when (seconds since the epoch).
    """

    fraction: float
    message: str | None
    step: str | None
    index: int | None
    at: float


@dataclass(frozen=True, slots=True)
class FlowInfo:
    """A flow's status, its nodes in definition order, and its error once it has one.

    Attributes:
        flow_id: the flow's id.
        workflow: the workflow's name.
        status: the flow's status.
        steps: every node; nodes not reached yet are ``pending``.
        created_at: when the flow was accepted (seconds since the epoch).
        finished_at: when it ended, if it has.
        error: the flow's error message (what ``result()`` raises), once a failure is recorded.
        meta: the metadata the flow was started with.
        parent_id: the parent flow, for a sub-workflow's child.
        retry_of: the flow this one retries (``retry()``).
        progress: the latest progress reported.
        wake_at: when the flow next needs attention from a timer (a sleep, a signal timeout, its deadline).
        signals: the signals received, by name (JSON payloads).
        compensated: the nodes that were rolled back, in the order their rollbacks completed.
    """

    flow_id: str
    workflow: str
    status: FlowStatus
    steps: tuple[StepInfo, ...]
    created_at: float
    finished_at: float | None = None
    error: str | None = None
    meta: dict[str, str] | None = None
    parent_id: str | None = None
    retry_of: str | None = None
    progress: ProgressInfo | None = None
    wake_at: float | None = None
    signals: dict[str, Any] | None = None
    compensated: tuple[str, ...] = ()

    def step(self, name: str) -> StepInfo:
        """The node called ``name``."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    @classmethod
    def from_state(cls, state: FlowState, definition: WorkflowDefinition[Any, Any] | None = None) -> FlowInfo:
        """Summarises a recorded state; with the ``definition``, nodes not reached yet are listed as pending and
        every node has its kind."""
        names = list(definition.step_names) if definition is not None else []
        names += [n for n in state.nodes if n not in names]
        kinds: dict[str, NodeKind] = {}
        if definition is not None:
            kinds = {name: definition.step(name).kind for name in definition.step_names}
        policy = state.policy
        undo = set(policy["undo"]) if policy else None
        in_doubt = set(policy["in_doubt"]) if policy else set()
        steps = tuple(
            _step(
                name,
                kinds.get(name, "step"),
                state.nodes.get(name),
                state.signals.get(name),
                None if undo is None else (name in undo or kinds.get(name) == "sub_workflow"),
                name in in_doubt,
            )
            for name in names
        )
        progress = state.progress
        return cls(
            flow_id=state.flow_id,
            workflow=state.workflow,
            status=state.status,
            steps=steps,
            created_at=state.created_at,
            finished_at=state.finished_at,
            error=str(build_error(state)) if state.error is not None else None,
            meta=dict(state.meta),
            parent_id=state.parent["flow_id"] if state.parent else None,
            retry_of=state.retry_of,
            progress=ProgressInfo(**progress) if progress else None,
            wake_at=state.wake_at,
            signals=dict(state.signals),
            compensated=tuple(state.compensated),
        )


def _step(
    name: str, kind: NodeKind, record: NodeRecord | None, signal: Any, has_rollback: bool | None, in_doubt: bool
) -> StepInfo:
    if record is None:
        return StepInfo(name, "pending", kind, has_rollback=has_rollback, in_doubt=in_doubt)
    total = record.get("total")
    return StepInfo(
        name,
        record["status"],
        kind,
        int(record.get("attempt", 0)) if record["status"] != "skipped" else 0,
        error_text(record.get("error")),
        error_text(record.get("rollback_error")),
        record.get("done") if total is not None else None,
        total,
        record.get("child"),
        signal if kind == "wait_for" else None,
        record.get("wake"),
        has_rollback,
        in_doubt,
    )


@dataclass(frozen=True, slots=True)
class FlowSummary:
    """One flow in a listing (``list_flows``).

    Attributes:
        flow_id: the flow's id.
        workflow: the workflow's name.
        status: its status.
        created_at: when it was accepted (seconds since the epoch).
        finished_at: when it ended, if it has.
        parent_id: its parent flow, for a sub-workflow's child.
        error: its error message, once it has one.
        retry_of: the flow it retries, if it is a retry.
    """

    flow_id: str
    workflow: str
    status: FlowStatus
    created_at: float
    finished_at: float | None = None
    parent_id: str | None = None
    error: str | None = None
    retry_of: str | None = None

    @classmethod
    def from_state(cls, state: FlowState) -> FlowSummary:
        """Summarises a recorded state."""
        return cls(
            flow_id=state.flow_id,
            workflow=state.workflow,
            status=state.status,
            created_at=state.created_at,
            finished_at=state.finished_at,
            parent_id=state.parent["flow_id"] if state.parent else None,
            error=str(build_error(state)) if state.error is not None else None,
            retry_of=state.retry_of,
        )


@dataclass(frozen=True, slots=True)
class FlowPage:
    """A page of ``list_flows``: flows newest first, and the cursor of the next page (``None`` on the last).

    Attributes:
        items: the flows of this page.
        next_cursor: pass it as ``list_flows(cursor=...)`` to get the next page.
    """

    items: tuple[FlowSummary, ...]
    next_cursor: str | None = None
