"""The saga engine: a deterministic state machine that every provider drives.

Given a definition, a flow's recorded state and an event (a step completed, failed, a rollback finished, the
flow timed out, ...), :meth:`Engine.handle` updates the state and returns the next actions (run these steps,
run this rollback, call ``on_complete``, finish). It does no I/O and keeps no clock: providers move events and
actions, persist :class:`FlowState` (plain JSON data) and run handlers through :mod:`plait.core.runner`.

Events and actions are slotted dataclasses, treated as immutable but not frozen: a frozen dataclass pays an
``object.__setattr__`` per field to build, and a flow builds a dozen of them.

Events are idempotent: an event that does not match the recorded state (a duplicate completion, a late result
after a timeout, an old attempt) changes nothing and returns no action, so at-least-once transports can deliver
them twice.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from plait.core.errors import (
    RemoteError,
    WorkflowCancelledError,
    WorkflowCompletionError,
    WorkflowError,
    WorkflowRollbackError,
    WorkflowStepError,
    WorkflowTimeoutError,
)
from plait.core.handle import FlowStatus
from plait.core.options import ConsumerOptions
from plait.core.workflow import WorkflowDefinition

__all__ = [
    "Action",
    "Cancel",
    "CancelRunning",
    "CompleteFailed",
    "CompleteSucceeded",
    "Engine",
    "ErrorHandled",
    "ErrorRecord",
    "Event",
    "Finish",
    "FlowState",
    "RollbackFailed",
    "RollbackSucceeded",
    "RunComplete",
    "RunOnError",
    "RunRollback",
    "RunStep",
    "StepFailed",
    "StepSucceeded",
    "TimedOut",
    "Unrunnable",
    "build_error",
]

JSON = Any
"""A value made of dicts, lists, strings, numbers, booleans and None."""

Phase = Literal["pending", "steps", "complete", "rollback", "on_error", "done"]


class ErrorRecord(TypedDict):
    """An exception as plain data: enough to rebuild a :class:`RemoteError` in another process."""

    type: str
    message: str
    traceback: str


# Step states recorded in FlowState.steps[name]["status"].
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
COMPENSATING = "compensating"
COMPENSATED = "compensated"
COMPENSATION_FAILED = "compensation_failed"

# The type recorded for a rollback that an abort left undone.
_ABORTED = f"{WorkflowCancelledError.__module__}.{WorkflowCancelledError.__qualname__}"

# Primary error kinds recorded in FlowState.error["kind"].
KIND_STEP = "step"
KIND_COMPLETE = "complete"
KIND_TIMEOUT = "timeout"
KIND_CANCELLED = "cancelled"
KIND_UNRUNNABLE = "unrunnable"


@dataclass(slots=True)
class FlowState:
    """Everything recorded about one flow; JSON-serialisable through :meth:`to_dict`.

    Providers persist it and hand it back to the engine with each event; they never edit it themselves,
    except ``finished_at``.
    """

    flow_id: str
    workflow: str
    data: JSON
    meta: dict[str, str] = field(default_factory=dict)
    status: FlowStatus = FlowStatus.PENDING
    phase: Phase = "pending"
    created_at: float = 0.0
    finished_at: float | None = None
    timeout: float | None = None
    deadline: float | None = None
    stage: int = 0
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: dict[str, JSON] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    rollbacks: list[str] = field(default_factory=list)
    rollback_attempt: int = 0
    rollback_errors: list[dict[str, Any]] = field(default_factory=list)
    result: JSON = None

    def to_dict(self) -> dict[str, JSON]:
        """Returns the state as JSON-ready data."""
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_dict(cls, raw: Mapping[str, JSON]) -> FlowState:
        """Rebuilds a state from :meth:`to_dict`'s output."""
        state = cls(**{name: raw[name] for name in _FIELDS if name in raw})
        state.status = FlowStatus(state.status)
        return state


_FIELDS = tuple(FlowState.__dataclass_fields__)


# --- events -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class StepSucceeded:
    """Attempt ``attempt`` of ``step`` returned a valid output (``output`` is its JSON form)."""

    step: str
    attempt: int
    output: JSON
    model: object = field(default=None, compare=False, repr=False)
    """The validated output model, for providers that keep it in memory."""


@dataclass(slots=True)
class StepFailed:
    """Attempt ``attempt`` of ``step`` raised, timed out, or returned an invalid output (``retryable=False``)."""

    step: str
    attempt: int
    error: ErrorRecord
    retryable: bool = True
    exception: BaseException | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class RollbackSucceeded:
    """Attempt ``attempt`` of ``step``'s rollback returned."""

    step: str
    attempt: int


@dataclass(slots=True)
class RollbackFailed:
    """Attempt ``attempt`` of ``step``'s rollback raised or timed out."""

    step: str
    attempt: int
    error: ErrorRecord
    exception: BaseException | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class CompleteSucceeded:
    """``on_complete`` returned a valid result (``result`` is its JSON form)."""

    result: JSON
    model: object = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class CompleteFailed:
    """``on_complete`` raised or returned an invalid result."""

    error: ErrorRecord
    exception: BaseException | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class ErrorHandled:
    """``on_error`` has run (whether it returned or raised: that is only logged)."""


@dataclass(slots=True)
class TimedOut:
    """The flow's deadline passed."""


@dataclass(slots=True)
class Cancel:
    """Somebody cancelled the flow (``reason`` says who or why)."""

    reason: str


@dataclass(slots=True)
class Unrunnable:
    """The flow's recorded data or results no longer validate against its models: no handler can run."""

    error: ErrorRecord


Event = (
    StepSucceeded
    | StepFailed
    | RollbackSucceeded
    | RollbackFailed
    | CompleteSucceeded
    | CompleteFailed
    | ErrorHandled
    | TimedOut
    | Cancel
    | Unrunnable
)

# --- actions ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RunStep:
    """Run attempt ``attempt`` of ``step`` after ``delay`` seconds."""

    step: str
    attempt: int
    delay: float = 0.0


@dataclass(slots=True)
class RunRollback:
    """Run attempt ``attempt`` of ``step``'s rollback after ``delay`` seconds."""

    step: str
    attempt: int
    delay: float = 0.0


@dataclass(slots=True)
class RunComplete:
    """Call the consumer's ``on_complete``."""


@dataclass(slots=True)
class RunOnError:
    """Call the consumer's ``on_error`` with :func:`build_error` of the state."""


@dataclass(slots=True)
class CancelRunning:
    """Stop these running steps (and ``on_complete`` if ``complete``); their late events will be ignored."""

    steps: tuple[str, ...]
    complete: bool = False


@dataclass(slots=True)
class Finish:
    """The flow has reached its terminal ``status``: wake whoever waits for it."""

    status: FlowStatus


Action = RunStep | RunRollback | RunComplete | RunOnError | CancelRunning | Finish


# --- the engine ---------------------------------------------------------------------------------------------


class Engine:
    """The saga rules of one workflow as registered with one consumer.

    Args:
        definition: the workflow definition.
        options: the consumer's options (attempts and backoff are used here).
        rollback_steps: names of the steps whose handler has a rollback.
        rand: source of jitter for backoff, in [0, 1).
    """

    __slots__ = ("_rand", "_rollback_order", "_stage_of", "_stages", "_visible", "definition", "options")

    def __init__(
        self,
        definition: WorkflowDefinition[Any, Any],
        options: ConsumerOptions | None = None,
        rollback_steps: Collection[str] = (),
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.definition = definition
        self.options = options or ConsumerOptions()
        self._rand = rand
        stages: list[tuple[str, ...]] = []
        for group in definition.step_groups:
            if group.kind == "parallel":
                stages.append(tuple(s.name for s in group.steps))
            else:
                stages.extend((s.name,) for s in group.steps)
        self._stages = tuple(stages)
        self._stage_of = {name: i for i, stage in enumerate(stages) for name in stage}
        # A step sees the results of every step in an earlier stage, never a parallel sibling's.
        self._visible = {
            name: tuple(n for earlier in stages[:i] for n in earlier)
            for i, stage in enumerate(stages)
            for name in stage
        }
        order = definition.step_names
        self._rollback_order = tuple(n for n in reversed(order) if n in set(rollback_steps))

    # -- queries --

    def visible_results(self, state: FlowState, step: str | None) -> dict[str, JSON]:
        """The results a step (or, with ``None``, a callback or rollback) may see, in definition order."""
        if step is None:
            return {n: state.results[n] for n in self.definition.step_names if n in state.results}
        return {n: state.results[n] for n in self._visible[step] if n in state.results}

    def visible_steps(self, step: str) -> tuple[str, ...]:
        """The names of the steps whose results ``step`` sees."""
        return self._visible[step]

    # -- transitions --

    def new_state(
        self,
        flow_id: str,
        data: JSON,
        *,
        meta: Mapping[str, str] | None = None,
        timeout: float | None = None,
        now: float = 0.0,
    ) -> FlowState:
        """Creates the state of an accepted, not yet started flow."""
        return FlowState(
            flow_id=flow_id,
            workflow=self.definition.name,
            data=data,
            meta=dict(meta or {}),
            created_at=now,
            timeout=timeout,
            deadline=None if timeout is None else now + timeout,
        )

    def start(self, state: FlowState, *, default_timeout: float | None = None) -> list[Action]:
        """Starts a pending flow; does nothing for a flow already started.

        Args:
            default_timeout: the flow's timeout when ``execute()`` gave it none (the registration's, else the
                provider's), counted from the flow's creation. A process that starts flows without the consumer
                cannot know it; the process that runs the first step applies it here.
        """
        if state.phase != "pending":
            return []
        if state.timeout is None and default_timeout is not None:
            state.timeout = default_timeout
            state.deadline = state.created_at + default_timeout
        state.status = FlowStatus.RUNNING
        return self._enter_stage(state, 0)

    def startable(self, state: FlowState) -> bool:
        """Whether :meth:`start` would start this flow (it is accepted and not started yet)."""
        return state.phase == "pending"

    def expects(self, state: FlowState, action: Action) -> bool:
        """Whether the flow still waits for the outcome of ``action``.

        A job can outlive its need (its step was cancelled by a timeout, it was handed back after a stall and also
        finished, the flow ended); a transport asks this before running one, so stale work is dropped rather than
        run. The answers are the same guards :meth:`handle` applies to the events.
        """
        if state.phase == "done":
            return False
        if isinstance(action, RunStep):
            return self._running(state, action.step, action.attempt) is not None
        if isinstance(action, RunRollback):
            return self._rollback_due(state, action.step, action.attempt)
        if isinstance(action, RunComplete):
            return state.phase == "complete"
        if isinstance(action, RunOnError):
            return state.phase == "on_error"
        return False

    def handle(self, state: FlowState, event: Event) -> list[Action]:
        """Applies ``event`` to ``state`` (in place) and returns what to do next."""
        if state.phase == "done":  # terminal; cheaper than hashing the status enum on every event
            return []
        match event:
            case StepSucceeded():
                return self._step_succeeded(state, event)
            case StepFailed():
                return self._step_failed(state, event)
            case RollbackSucceeded():
                return self._rollback_settled(state, event.step, event.attempt, None)
            case RollbackFailed():
                return self._rollback_settled(state, event.step, event.attempt, event.error)
            case CompleteSucceeded():
                if state.phase != "complete":
                    return []
                state.result = event.result
                return self._finish(state, FlowStatus.COMPLETED)
            case CompleteFailed():
                if state.phase != "complete":
                    return []
                state.error = {"kind": KIND_COMPLETE, "step": None, **event.error}
                return self._compensate(state)
            case ErrorHandled():
                if state.phase != "on_error":
                    return []
                cancelled = state.error is not None and state.error["kind"] == KIND_CANCELLED
                return self._finish(state, FlowStatus.CANCELLED if cancelled else FlowStatus.FAILED)
            case TimedOut():
                return self._interrupt(state, {"kind": KIND_TIMEOUT, "timeout": state.timeout})
            case Cancel():
                return self._interrupt(state, {"kind": KIND_CANCELLED, "reason": event.reason})
            case Unrunnable():
                # Its handlers cannot be given valid contexts, rollbacks included: end it now, saying what was
                # left undone, rather than retry it forever.
                error = {"kind": KIND_UNRUNNABLE, "step": None, **event.error}
                return self._end_now(state, error, FlowStatus.FAILED, f"the flow cannot run: {event.error['message']}")
        raise TypeError(f"Not an engine event: {event!r}")  # pragma: no cover - guarded by the type checker

    def abort(self, state: FlowState, reason: str) -> list[Action]:
        """Ends a flow as ``cancelled`` at once, without running its remaining rollbacks.

        The last resort of a provider that can no longer run anything (a process shutting down after its grace
        periods). Each completed step whose rollback did not run is recorded as a rollback error ("not rolled
        back"), so the flow's error says what was left undone; providers also log it loudly. An earlier error
        stays the primary one.
        """
        error = {"kind": KIND_CANCELLED, "step": None, "type": "", "message": "", "traceback": ""}
        error["reason"] = f"{reason} (aborted)"
        return self._end_now(state, error, FlowStatus.CANCELLED, reason)

    def _end_now(self, state: FlowState, error: dict[str, Any], status: FlowStatus, reason: str) -> list[Action]:
        if state.status.is_terminal:
            return []
        running = tuple(n for n, r in state.steps.items() if r["status"] in (RUNNING, COMPENSATING))
        for name in running:
            if state.steps[name]["status"] == RUNNING:
                state.steps[name]["status"] = CANCELLED
        if state.phase == "rollback":
            undone = list(state.rollbacks)
        elif state.phase == "on_error":
            undone = []  # every rollback has run; only on_error is cut short
        else:
            undone = [n for n in self._rollback_order if n in state.results]
        if state.error is None:
            state.error = error
        for name in undone:
            record: ErrorRecord = {"type": _ABORTED, "message": f"not rolled back: {reason}", "traceback": ""}
            state.steps[name]["status"] = COMPENSATION_FAILED
            state.steps[name]["rollback_error"] = dict(record)
            state.rollback_errors.append({"step": name, **record})
        state.rollbacks = []
        return [CancelRunning(running, complete=state.phase == "complete"), *self._finish(state, status)]

    # -- internals --

    def _enter_stage(self, state: FlowState, stage: int) -> list[Action]:
        if stage >= len(self._stages):
            state.phase = "complete"
            return [RunComplete()]
        state.phase = "steps"
        state.stage = stage
        actions: list[Action] = []
        for name in self._stages[stage]:
            state.steps[name] = {"status": RUNNING, "attempt": 1}
            actions.append(RunStep(name, 1))
        return actions

    def _running(self, state: FlowState, step: str, attempt: int) -> dict[str, Any] | None:
        record = state.steps.get(step)
        if record is None or record["status"] != RUNNING or record["attempt"] != attempt:
            return None
        return record

    def _step_succeeded(self, state: FlowState, event: StepSucceeded) -> list[Action]:
        record = self._running(state, event.step, event.attempt)
        if record is None:
            return []
        record["status"] = COMPLETED
        state.results[event.step] = event.output
        return self._stage_settled(state)

    def _step_failed(self, state: FlowState, event: StepFailed) -> list[Action]:
        record = self._running(state, event.step, event.attempt)
        if record is None:
            return []
        record["error"] = dict(event.error)
        # Once the flow is failing, running siblings finish their current attempt but are not retried.
        if event.retryable and state.error is None and event.attempt < self.options.attempts:
            record["attempt"] = event.attempt + 1
            delay = self.options.backoff.delay_for(event.attempt, self._rand)
            return [RunStep(event.step, event.attempt + 1, delay)]
        record["status"] = FAILED
        if state.error is None:
            state.error = {"kind": KIND_STEP, "step": event.step, **event.error}
        return self._stage_settled(state)

    def _stage_settled(self, state: FlowState) -> list[Action]:
        stage = self._stages[state.stage]
        if len(stage) > 1 and any(state.steps[name]["status"] == RUNNING for name in stage):
            return []
        if state.error is not None:
            return self._compensate(state)
        return self._enter_stage(state, state.stage + 1)

    def _interrupt(self, state: FlowState, error: dict[str, Any]) -> list[Action]:
        if state.phase == "pending":
            state.error = {"step": None, "type": "", "message": "", "traceback": "", **error}
            return self._compensate(state)
        if state.phase not in ("steps", "complete"):
            return []  # already rolling back: the rollbacks and on_error still run
        running = tuple(n for n, r in state.steps.items() if r["status"] == RUNNING)
        for name in running:
            state.steps[name]["status"] = CANCELLED
        in_complete = state.phase == "complete"
        # A step that already failed for good stays the primary error; its siblings are simply cut short.
        if state.error is None:
            state.error = {"step": None, "type": "", "message": "", "traceback": "", **error}
        actions: list[Action] = []
        if running or in_complete:
            actions.append(CancelRunning(running, complete=in_complete))
        return actions + self._compensate(state)

    def _compensate(self, state: FlowState) -> list[Action]:
        state.status = FlowStatus.COMPENSATING
        state.phase = "rollback"
        state.rollbacks = [n for n in self._rollback_order if n in state.results]
        return self._next_rollback(state)

    def _next_rollback(self, state: FlowState) -> list[Action]:
        if not state.rollbacks:
            state.phase = "on_error"
            return [RunOnError()]
        step = state.rollbacks[0]
        state.rollback_attempt = 1
        state.steps[step]["status"] = COMPENSATING
        return [RunRollback(step, 1)]

    def _rollback_due(self, state: FlowState, step: str, attempt: int) -> bool:
        return state.phase == "rollback" and state.rollbacks[:1] == [step] and state.rollback_attempt == attempt

    def _rollback_settled(self, state: FlowState, step: str, attempt: int, error: ErrorRecord | None) -> list[Action]:
        if not self._rollback_due(state, step, attempt):
            return []
        record = state.steps[step]
        if error is None:
            record["status"] = COMPENSATED
        elif attempt < self.options.attempts:
            state.rollback_attempt = attempt + 1
            record["rollback_error"] = dict(error)
            return [RunRollback(step, attempt + 1, self.options.backoff.delay_for(attempt, self._rand))]
        else:
            record["status"] = COMPENSATION_FAILED
            record["rollback_error"] = dict(error)
            state.rollback_errors.append({"step": step, **error})
        state.rollbacks.pop(0)
        return self._next_rollback(state)

    def _finish(self, state: FlowState, status: FlowStatus) -> list[Action]:
        state.status = status
        state.phase = "done"
        return [Finish(status)]


# --- errors from state --------------------------------------------------------------------------------------


def build_error(
    state: FlowState,
    exceptions: Mapping[tuple[str, str | None], BaseException] | None = None,
) -> WorkflowError:
    """Rebuilds the error of a failing or failed flow from its state.

    Args:
        state: a flow whose ``error`` is set.
        exceptions: the original exception objects where they are at hand (in-process), keyed by
            ``("step", name)``, ``("rollback", name)`` or ``("complete", None)``; the others become
            :class:`RemoteError` from the recorded type name, message and traceback.
    """
    found = exceptions or {}
    primary = state.error
    if primary is None:
        raise ValueError(f"Flow '{state.flow_id}' has no error")
    flow_id = state.flow_id
    error: WorkflowError
    kind = primary["kind"]
    if kind == KIND_STEP:
        cause = found.get(("step", primary["step"])) or _remote(primary)
        error = WorkflowStepError(primary["step"], cause, flow_id=flow_id)
    elif kind == KIND_COMPLETE:
        error = WorkflowCompletionError(found.get(("complete", None)) or _remote(primary), flow_id=flow_id)
    elif kind == KIND_TIMEOUT:
        error = WorkflowTimeoutError(primary.get("timeout") or 0.0, flow_id=flow_id)
    elif kind == KIND_UNRUNNABLE:
        error = WorkflowError(f"Flow '{flow_id}' cannot run: {primary['message']}", flow_id=flow_id)
    else:
        error = WorkflowCancelledError(primary.get("reason") or "cancelled", flow_id=flow_id)
    if not state.rollback_errors:
        return error
    rollback_errors = [
        WorkflowStepError(r["step"], found.get(("rollback", r["step"])) or _remote(r), flow_id=flow_id, rollback=True)
        for r in state.rollback_errors
    ]
    return WorkflowRollbackError(error, rollback_errors, flow_id=flow_id)


def _remote(record: Mapping[str, Any]) -> RemoteError:
    return RemoteError(record["type"], record["message"], record["traceback"])
