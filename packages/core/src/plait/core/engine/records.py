"""What the engine records about a flow: plain JSON data, typed with ``TypedDict``s.

Providers persist :class:`FlowState` (``to_dict``/``from_dict``) and hand it back with every event; they never edit
it themselves, except ``finished_at``. For-each items are kept apart from the rest (:attr:`FlowState.items`), one
record per item, so that a durable provider can store and load them one at a time: an item's completion must not
re-write every other item's record.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from plait.core.handle import FlowStatus

__all__ = [
    "EVENT_FIELDS",
    "JSON",
    "ErrorRecord",
    "EventRecord",
    "FlowError",
    "FlowState",
    "ItemRecord",
    "NodeRecord",
    "ParentRef",
    "Phase",
    "Policy",
    "Progress",
    "StepStatus",
    "event_fields",
]

JSON = Any
"""A value made of dicts, lists, strings, numbers, booleans and None."""

Phase = Literal["pending", "steps", "complete", "rollback", "on_error", "done"]
"""Where the engine is: not started, running groups, calling ``on_complete``, rolling back, calling
``on_error``, ended."""

StepStatus = Literal[
    "pending",
    "running",
    "waiting",
    "completed",
    "skipped",
    "failed",
    "cancelled",
    "compensating",
    "compensated",
    "compensation_failed",
]
"""A node's (or item's) status: ``pending`` (not started), ``running``, ``waiting`` (for a signal or a timer),
``completed``, ``skipped`` (its condition was false), ``failed``, ``cancelled`` (cut short by a timeout or a
cancellation), ``compensating`` (being rolled back), ``compensated`` (rolled back) or ``compensation_failed``."""


class ErrorRecord(TypedDict):
    """An exception as plain data: enough to rebuild a ``RemoteError`` in another process."""

    type: str
    message: str
    traceback: str


class FlowError(TypedDict, total=False):
    """The error a flow failed (or was cancelled or compensated) with.

    ``kind`` says what happened: ``step`` (a node failed for good; ``step`` names it, ``index`` the for-each item),
    ``complete`` (``on_complete`` failed), ``timeout`` (``timeout`` seconds passed), ``cancelled`` and
    ``compensated`` (``reason`` says why) or ``unrunnable`` (the recorded data no longer validates). ``retry`` is
    set while failed rollbacks run again.
    """

    kind: Literal["step", "complete", "timeout", "cancelled", "compensated", "unrunnable"]
    step: str | None
    index: int | None
    type: str
    message: str
    traceback: str
    timeout: float | None
    reason: str
    retry: bool


class NodeRecord(TypedDict, total=False):
    """One node of a flow, once it has been reached.

    Attributes:
        status: the node's status.
        attempt: a step's attempt (1-based), or a rollback's while it is rolled back.
        due: when a step's scheduled retry may start (seconds since the epoch).
        error: its last failed attempt's error.
        no_effect: its failure said it changed nothing (``NoEffectError``): no rollback even if in doubt.
        rollback_error: its last failed rollback attempt's error.
        wake: when a waiting ``wait_for`` times out, or a ``sleep`` wakes.
        child: a ``sub_workflow``'s child flow id.
        eval: the evaluation (of ``when``, ``items``, ``data`` or ``until``) the node waits for.
        total, next, running, done, failed: a ``for_each``'s item counts: items in all, the next index to start,
            items running (or waiting out a backoff), completed, failed for good.
        retrying: a ``for_each``'s items waiting out a backoff, as ``[index, attempt, due]``.
        dropped: a ``for_each``'s items whose pending retry was dropped because the flow is failing.
        failing: a ``for_each`` starts no new item (an item failed for good, or the flow is failing).
        undo: a ``for_each``'s items still to roll back, as descending ``[high, low]`` index ranges.
        item: the item being rolled back.
        rollback_failed: a ``for_each``'s items whose rollback failed for good.
    """

    status: StepStatus
    attempt: int
    due: float
    error: ErrorRecord
    no_effect: bool
    rollback_error: ErrorRecord
    wake: float
    child: str
    eval: int
    total: int
    next: int
    running: int
    done: int
    failed: int
    retrying: list[list[float]]
    dropped: list[int]
    failing: bool
    undo: list[list[int]]
    item: int
    rollback_failed: list[int]


class ItemRecord(TypedDict, total=False):
    """One item of a for-each: its value, and once it has settled, its fate.

    Attributes:
        value: the item, as computed by ``items(ctx)`` (JSON).
        status: ``pending`` until it settles (running items stay ``pending`` here; the node counts them).
        attempt: the attempt it reached.
        output: its output, once completed (JSON).
        error: its last failed attempt's error.
        no_effect: its failure said it changed nothing.
        rollback_error: its rollback's last error.
    """

    value: JSON
    status: StepStatus
    attempt: int
    output: JSON
    error: ErrorRecord
    no_effect: bool
    rollback_error: ErrorRecord


class ParentRef(TypedDict):
    """Where a child flow came from: its parent flow, the parent's workflow, and the sub-workflow node."""

    flow_id: str
    workflow: str
    node: str


class Policy(TypedDict):
    """What the consumer registered for a flow, recorded when it starts, so that any process can drive it.

    Attributes:
        attempts: tries per step, item and rollback.
        backoff: ``[kind, delay, max_delay, jitter]`` of the retry backoff.
        undo: the nodes whose handler has a rollback, in definition order.
        in_doubt: the nodes rolled back even when they fail (``rollback_if_failed``).
    """

    attempts: int
    backoff: list[Any]
    undo: list[str]
    in_doubt: list[str]


class Progress(TypedDict):
    """The latest progress a handler reported: a fraction in [0, 1], an optional message, who reported it."""

    fraction: float
    message: str | None
    step: str | None
    index: int | None
    at: float


EventRecord = tuple[Any, ...]
"""One event of a flow's history as the engine records it: ``(type, seq, at, *values)``.

``seq`` numbers a flow's events 1, 2, 3, ...; ``at`` is in seconds since the epoch; ``values`` are the event's own
fields in the order :data:`EVENT_FIELDS` lists for its type, any at the end that do not apply left out (the item
``index`` of a step that is not a for-each, say). A tuple of plain values, not a dict: it is cheaper to make and to
``marshal``, the garbage collector stops tracking it at its first pass, and a provider stores it as a short JSON
array. :func:`event_fields` names its fields; ``plait.core.events.event_from_record`` makes it a typed event.
"""

_FLOW_END_FIELDS = ("error", "reason")
_STEP_FAILED_FIELDS = ("step", "index", "attempt", "error", "will_retry", "delay")

EVENT_FIELDS: Mapping[str, tuple[str, ...]] = {
    "flow_started": (),
    "flow_waiting": (),
    "flow_completed": _FLOW_END_FIELDS,
    "flow_failed": _FLOW_END_FIELDS,
    "flow_cancelled": _FLOW_END_FIELDS,
    "flow_compensated": _FLOW_END_FIELDS,
    "step_started": ("step", "attempt", "index"),
    "step_completed": ("step", "index"),
    "step_failed": _STEP_FAILED_FIELDS,
    "step_skipped": ("step",),
    "rollback_started": ("step", "attempt", "index"),
    "rollback_completed": ("step", "index"),
    "rollback_failed": _STEP_FAILED_FIELDS,
    "signal_received": ("name",),
    "progress": ("step", "index", "fraction", "message"),
}
"""The names of each event type's own fields, in the order an :data:`EventRecord` holds their values."""


def event_fields(record: Sequence[Any] | Mapping[str, Any]) -> dict[str, Any]:
    """An event record's fields by name: ``type``, ``seq``, ``at`` and the event's own.

    Raises:
        KeyError: its type is not one of the engine's events.
        ValueError: it is too short to be an event, or holds more values than its type has fields.
    """
    if isinstance(record, Mapping):  # the form records were stored in before they became tuples
        return dict(record)
    if len(record) < 3:
        raise ValueError(f"An event record holds at least its type, seq and at, got {record!r}")
    kind = record[0]
    names = EVENT_FIELDS[kind]
    if len(record) - 3 > len(names):
        raise ValueError(f"A '{kind}' event record holds at most {len(names) + 3} values, got {record!r}")
    fields = dict(zip(names, record[3:], strict=False))  # the fields left out at the end take their defaults
    fields["type"], fields["seq"], fields["at"] = kind, record[1], record[2]
    return fields


@dataclass(slots=True)
class FlowState:
    """Everything recorded about one flow; JSON-serialisable through :meth:`to_dict`.

    The fields after ``progress`` are not part of :meth:`to_dict`: ``emitted`` holds the events of the last
    transitions until the provider takes them, and ``items`` the for-each item records at hand (all of them
    in memory; for a durable provider, those it loaded), ``items_loaded`` the nodes whose items are all at hand,
    and ``items_changed`` which records to write back.

    The sequences and sets start as empty tuples and frozensets, and the engine replaces them rather than changing
    them in place: a flow that never rolls back nor fans out then holds no list or set of its own, which would be
    tracked, and walked, by the garbage collector for as long as the flow runs.
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
    wake_at: float | None = None
    group: int = 0
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    results: dict[str, JSON] = field(default_factory=dict)
    signals: dict[str, JSON] = field(default_factory=dict)
    error: FlowError | None = None
    rollbacks: Sequence[str] = ()
    compensated: Sequence[str] = ()
    rollback_attempt: int = 0
    rollback_errors: Sequence[dict[str, Any]] = ()
    result: JSON = None
    parent: ParentRef | None = None
    depth: int = 1
    retry_of: str | None = None
    policy: Policy | None = None
    evals: dict[str, list[list[str]]] = field(default_factory=dict)
    eval_seq: int = 0
    seq: int = 0
    progress: Progress | None = None
    emitted: list[EventRecord] = field(default_factory=list)
    items: dict[str, dict[int, ItemRecord]] = field(default_factory=dict)
    items_loaded: AbstractSet[str] = frozenset()
    items_changed: AbstractSet[tuple[str, int]] = frozenset()

    def to_dict(self) -> dict[str, JSON]:
        """Returns the state as JSON-ready data (for-each items and unsent events excluded)."""
        return dict(zip(_FIELDS, _values(self), strict=True))

    def to_values(self) -> list[JSON]:
        """:meth:`to_dict`'s values alone, in the order of the fields, the status as its string: a compact form for
        a process's own use."""
        values: list[JSON] = list(_values(self))
        values[_STATUS] = self.status.value
        return values

    @classmethod
    def from_values(cls, values: Iterable[JSON]) -> FlowState:
        """Rebuilds a state from :meth:`to_values`'s output."""
        state = cls(*values)
        state.status = FlowStatus(state.status)
        return state

    @classmethod
    def from_dict(cls, raw: Mapping[str, JSON]) -> FlowState:
        """Rebuilds a state from :meth:`to_dict`'s output (one written before a field was added gets its default)."""
        try:
            state = cls(*_pick(raw))  # every field there: by position, a third of the cost of keywords
        except KeyError:
            state = cls(**{name: raw[name] for name in _FIELDS if name in raw})
        state.status = FlowStatus(state.status)
        return state

    def take_events(self) -> list[EventRecord]:
        """Returns the events recorded since the last call, and forgets them."""
        events = self.emitted
        if events:
            self.emitted = []
        return events


_TRANSIENT = ("emitted", "items", "items_loaded", "items_changed")
_FIELDS = tuple(name for name in FlowState.__dataclass_fields__ if name not in _TRANSIENT)
assert tuple(FlowState.__dataclass_fields__)[: len(_FIELDS)] == _FIELDS, "from_values() passes them by position"
_values = operator.attrgetter(*_FIELDS)  # one call for all of them
_pick = operator.itemgetter(*_FIELDS)
_STATUS = _FIELDS.index("status")
