"""A flow's history as typed events: one per transition, numbered from 1, with the time it happened.

Every provider records the same events (the engine makes them), keeps them for the flow's retention, and hands
them to ``executor.subscribe(flow_id)`` (from the first event, then live until the last) and to the hooks given to
``on_event``. Match on the class, or on ``type``::

    async for event in executor.subscribe(handle.id):
        match event:
            case StepFailed(step=step, will_retry=False, error=error):
                print(f"{step} failed for good: {error}")
            case FlowCompleted():
                print("done")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from plait.core.engine.records import event_fields

__all__ = [
    "FlowCancelled",
    "FlowCompensated",
    "FlowCompleted",
    "FlowEvent",
    "FlowFailed",
    "FlowStarted",
    "FlowWaiting",
    "ProgressReported",
    "RollbackCompleted",
    "RollbackFailed",
    "RollbackStarted",
    "SignalReceived",
    "StepCompleted",
    "StepFailed",
    "StepSkipped",
    "StepStarted",
    "event_from_record",
]


class _Event(BaseModel):
    """What every event says: whose it is, its number in the flow's history, and when it happened."""

    model_config = ConfigDict(frozen=True)

    flow_id: str
    workflow: str
    seq: int
    """1 for a flow's first event, then 2, 3, ... with no gaps."""
    at: datetime


class FlowStarted(_Event):
    """The flow started running (a worker took it up)."""

    type: Literal["flow_started"] = "flow_started"


class FlowWaiting(_Event):
    """The flow waits only for signals or timers: it holds no worker."""

    type: Literal["flow_waiting"] = "flow_waiting"


class FlowCompleted(_Event):
    """The flow completed with its result."""

    type: Literal["flow_completed"] = "flow_completed"


class FlowFailed(_Event):
    """The flow failed (after its rollbacks and ``on_error``); ``error`` is what ``result()`` raises."""

    type: Literal["flow_failed"] = "flow_failed"
    error: str | None = None


class FlowCancelled(_Event):
    """The flow was cancelled and rolled back."""

    type: Literal["flow_cancelled"] = "flow_cancelled"
    reason: str | None = None
    error: str | None = None


class FlowCompensated(_Event):
    """The completed flow was undone: its completed steps were rolled back."""

    type: Literal["flow_compensated"] = "flow_compensated"
    reason: str | None = None
    error: str | None = None


class StepStarted(_Event):
    """Attempt ``attempt`` of node ``step`` (item ``index`` of a for-each) started, or was scheduled: a retry's
    start follows its ``StepFailed`` with ``will_retry`` and runs after that event's ``delay``."""

    type: Literal["step_started"] = "step_started"
    step: str
    index: int | None = None
    attempt: int = 1


class StepCompleted(_Event):
    """Node ``step`` (item ``index``) completed."""

    type: Literal["step_completed"] = "step_completed"
    step: str
    index: int | None = None


class StepFailed(_Event):
    """Attempt ``attempt`` of node ``step`` (item ``index``) failed; ``will_retry`` says whether another attempt
    follows after ``delay`` seconds."""

    type: Literal["step_failed"] = "step_failed"
    step: str
    index: int | None = None
    attempt: int = 1
    error: str | None = None
    will_retry: bool = False
    delay: float = 0.0


class StepSkipped(_Event):
    """Node ``step`` was skipped: its condition (or its group's) was false."""

    type: Literal["step_skipped"] = "step_skipped"
    step: str


class RollbackStarted(_Event):
    """The rollback of node ``step`` (item ``index``) started."""

    type: Literal["rollback_started"] = "rollback_started"
    step: str
    index: int | None = None
    attempt: int = 1


class RollbackCompleted(_Event):
    """The rollback of node ``step`` (item ``index``) completed."""

    type: Literal["rollback_completed"] = "rollback_completed"
    step: str
    index: int | None = None


class RollbackFailed(_Event):
    """Attempt ``attempt`` of the rollback of node ``step`` (item ``index``) failed; ``will_retry`` says whether
    another attempt follows after ``delay`` seconds."""

    type: Literal["rollback_failed"] = "rollback_failed"
    step: str
    index: int | None = None
    attempt: int = 1
    error: str | None = None
    will_retry: bool = False
    delay: float = 0.0


class SignalReceived(_Event):
    """Signal ``name`` arrived (its payload is in ``describe()``)."""

    type: Literal["signal_received"] = "signal_received"
    name: str


class ProgressReported(_Event):
    """A handler reported progress: ``fraction`` in [0, 1] and an optional message."""

    type: Literal["progress"] = "progress"
    step: str | None = None
    index: int | None = None
    fraction: float
    message: str | None = None


FlowEvent = Annotated[
    FlowStarted
    | FlowWaiting
    | FlowCompleted
    | FlowFailed
    | FlowCancelled
    | FlowCompensated
    | StepStarted
    | StepCompleted
    | StepFailed
    | StepSkipped
    | RollbackStarted
    | RollbackCompleted
    | RollbackFailed
    | SignalReceived
    | ProgressReported,
    Field(discriminator="type"),
]
"""Any event of a flow's history; its ``type`` field tells which."""

_ADAPTER: TypeAdapter[FlowEvent] = TypeAdapter(FlowEvent)

_TERMINAL = frozenset({"flow_completed", "flow_failed", "flow_cancelled", "flow_compensated"})


def event_from_record(flow_id: str, workflow: str, record: Sequence[Any] | Mapping[str, Any]) -> FlowEvent:
    """The typed event of one of the engine's event records (plain data, as providers store them: see
    ``plait.core.engine.EventRecord``)."""
    data = event_fields(record)
    data["flow_id"] = flow_id
    data["workflow"] = workflow
    data["at"] = datetime.fromtimestamp(float(data["at"]), UTC)
    return _ADAPTER.validate_python(data)


def is_last(record: Sequence[Any] | Mapping[str, Any]) -> bool:
    """Whether an event record ends its flow (nothing follows it, unless the flow is compensated later)."""
    kind = record.get("type") if isinstance(record, Mapping) else record[0] if record else None
    return kind in _TERMINAL
