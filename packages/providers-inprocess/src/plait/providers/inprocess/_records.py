"""What the in-process provider keeps of each flow: a running flow's state, tasks and history, and a finished
flow as a compact record."""

from __future__ import annotations

import asyncio
import marshal
from typing import Any, NamedTuple

import pydantic_core
from pydantic import BaseModel

from plait.core import FlowStatus, WorkflowDefinition
from plait.core.clock import Timer
from plait.core.engine import (
    Action,
    Evaluate,
    EventRecord,
    ExceptionKey,
    FlowState,
    ItemRecord,
    RunComplete,
    RunRollback,
    RunStep,
)
from plait.core.runner import FlowView, Runner

__all__ = [
    "COMPLETE",
    "SLOT",
    "Ended",
    "Flow",
    "Kept",
    "Registration",
    "TaskKey",
    "ended",
    "kept",
    "state_of",
    "task_key",
    "view",
]

COMPLETE = "\x00on_complete"  # task keys of callbacks; step names cannot start with a NUL
ON_ERROR = "\x00on_error"
SLOT = "\x00slot"


TaskKey = str | tuple[str, int]


class Flow:
    """One flow in memory: its engine state, its cached models, the tasks running its actions, its history.

    The history is the state's own list of emitted events, which the engine appends to and nothing takes from:
    ``published`` counts those already handed to listeners and hooks.
    """

    __slots__ = (
        "__weakref__",
        "armed",
        "ended",
        "events",
        "listeners",
        "published",
        "registration",
        "runner",
        "slot",
        "state",
        "tasks",
        "timer",
        "view",
        "waiter",
    )

    def __init__(self, registration: Registration, state: FlowState, data: BaseModel | None) -> None:
        runner = registration.runner
        assert runner is not None
        self.registration = registration
        self.runner: Runner[Any, Any] = runner
        self.state = state
        self.view: FlowView[Any] = runner.view(state, data)
        self.tasks: dict[TaskKey, asyncio.Task[None]] = {}
        self.timer: Timer | None = None
        self.armed: float | None = None  # the wake-up time the timer is armed for
        self.ended = False
        self.waiter: asyncio.Future[None] | None = None  # made when somebody first waits for the end
        self.slot: asyncio.Semaphore | None = None
        self.events: list[EventRecord] = state.emitted
        self.published = 0
        self.listeners: list[asyncio.Queue[list[EventRecord]]] | None = None

    def end(self) -> asyncio.Future[None]:
        """A future that is done once the flow has ended."""
        if self.waiter is None:
            self.waiter = asyncio.get_running_loop().create_future()
            if self.ended:
                self.waiter.set_result(None)
        return self.waiter

    def set_ended(self) -> None:
        """Marks the flow ended, and wakes whoever waits on :meth:`end`."""
        self.ended = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class Ended(NamedTuple):
    """A finished flow, as kept for its retention.

    A busy application keeps many finished flows, and every object they hold is walked by each full pass of
    the garbage collector (it was most of the in-process provider's cost). So a finished flow is only strings,
    bytes and numbers, which CPython does not track: its state, items and events ``marshal``-ed (this process's own
    JSON-shaped data, read back only here), its result as JSON, and what listings filter on. A failed flow also
    keeps its exception objects, so that ``result()`` raises the very exceptions its handlers raised.

    It is kept as a plain tuple (see :func:`kept`), viewed as an ``Ended`` when read: CPython stops tracking a
    tuple of such values, but never an instance of a tuple's subclass, and every tracked object kept brings the
    next full pass of the garbage collector nearer (three times as many passes per flow).
    """

    status: str
    workflow: str
    result: bytes | None
    record: bytes
    causes: dict[ExceptionKey, BaseException] | None
    created_at: float
    parent_id: str | None

    def load(self) -> tuple[FlowState, list[EventRecord]]:
        """The flow's recorded state (items included) and its events."""
        values, items, events = marshal.loads(self.record)
        state = FlowState.from_values(values)
        state.items = items
        state.items_loaded = set(items)
        return state, events


class Registration:
    __slots__ = ("definition", "runner", "semaphore", "slots")

    def __init__(
        self, definition: WorkflowDefinition[Any, Any], runner: Runner[Any, Any] | None, slots: int | None
    ) -> None:
        self.definition = definition
        self.runner = runner
        self.slots = slots
        self.semaphore: asyncio.Semaphore | None = None


Kept = tuple[str, str, bytes | None, bytes, "dict[ExceptionKey, BaseException] | None", float, str | None]
"""How a finished flow is kept: its :class:`Ended` as a plain tuple."""


def kept(flow: Flow) -> Kept:
    """What is kept of ``flow``, which has ended: the fields of its :class:`Ended`, in order."""
    state = flow.state
    result = pydantic_core.to_json(state.result) if state.status == FlowStatus.COMPLETED else None
    causes = dict(flow.view.exceptions) if flow.view.exceptions else None
    items: dict[str, dict[int, ItemRecord]] = state.items
    record = marshal.dumps((state.to_values(), items, flow.events))  # marshal takes exact built-in types only
    parent = state.parent["flow_id"] if state.parent else None
    return (state.status.value, state.workflow, result, record, causes, state.created_at, parent)


def ended(flow: Flow) -> Ended:
    """``flow``, which has ended, as an :class:`Ended`."""
    return Ended._make(kept(flow))


def view(found: Flow | Kept) -> Flow | Ended:
    """A kept flow as a :class:`Flow` or an :class:`Ended`."""
    return Ended._make(found) if type(found) is tuple else found  # type: ignore[return-value]


def state_of(found: Flow | Ended) -> FlowState:
    return found.state if isinstance(found, Flow) else found.load()[0]


def task_key(action: Action) -> TaskKey:
    if type(action) is RunStep or type(action) is RunRollback:
        return action.step if action.index is None else (action.step, action.index)
    if isinstance(action, RunComplete):
        return COMPLETE
    if isinstance(action, Evaluate):
        return f"\x00eval{action.eval_id}"
    return ON_ERROR
