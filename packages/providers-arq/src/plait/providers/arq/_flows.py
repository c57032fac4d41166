"""A flow as a worker holds it between Redis and the engine, and how the engine's actions become one commit.

:class:`StoredFlow` is a flow's state as last read or written, with its version (for the compare-and-set), its
exact JSON (to tell whether an event changed anything) and the for-each item records at hand. :func:`plan` turns
the engine's actions into what one commit does: jobs to create (queued, or kept by the committing task), jobs and
fan-outs to stop, the end to announce.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from plait.core.engine import (
    Action,
    CancelChild,
    CancelRunning,
    CompensateChild,
    Evaluate,
    ExceptionKey,
    Finish,
    FlowState,
    NotifyParent,
    RunComplete,
    RunOnError,
    RunRollback,
    RunStep,
    StartChild,
    matching_exceptions,
)
from plait.core.errors import CorruptFlowError
from plait.core.runner import FlowView
from plait.providers.arq._keys import Job, Keys, decode_state, dumps, loads, shorten
from plait.providers.arq._store import Enqueue

__all__ = ["Exceptions", "Plan", "StoredFlow", "UnreadableState", "plan"]


class UnreadableState(Exception):
    """A flow's stored state (or its version) cannot be read: the flow is failed once, never retried."""

    def __init__(self, flow_id: str, raw: bytes, reason: str) -> None:
        self.flow_id = flow_id
        self.raw = raw
        self.reason = reason
        super().__init__(f"Flow {shorten(flow_id)} has unreadable state: {reason}")


@dataclass(eq=False, slots=True, weakref_slot=True)
class StoredFlow:
    """A flow's state as this process last read or wrote it.

    Attributes:
        state: the engine's state (its ``items`` those at hand).
        version: the stored version, for the compare-and-set.
        raw: the stored JSON of the state.
        items: the stored records of the for-each items at hand, by ``(node, index)``.
        complete: the for-each nodes all of whose items are at hand.
        view: the view handlers of this flow read, kept on the current state whenever it is replaced.
        closing: the task of the flow's closing handler, when it started before the job that runs it was
            committed: that job's handler (see ``Worker.advance``).
    """

    state: FlowState
    version: str
    raw: bytes
    items: dict[tuple[str, int], bytes] = field(default_factory=dict)
    complete: set[str] = field(default_factory=set)
    view: FlowView[Any] | None = None
    closing: asyncio.Task[Any] | None = None

    @classmethod
    def read(
        cls, flow_id: str, raw: bytes, version: bytes | None, items: Mapping[tuple[str, int], bytes] | None = None
    ) -> StoredFlow:
        """Reads a stored state, its version and item records.

        Raises:
            UnreadableState: any of them cannot be read.
        """
        if version is None or not version.isdigit():
            raise UnreadableState(flow_id, raw, f"its version {shorten(version)} is not a number")
        flow = cls(_decode(flow_id, raw), version.decode(), raw, dict(items or {}))
        flow.attach_items()
        return flow

    def attach_items(self) -> None:
        """Gives the state its item records at hand, decoded afresh (the engine changes what it is given)."""
        state = self.state
        by_node: dict[str, dict[int, Any]] = {}
        for (node, index), record in self.items.items():
            try:
                by_node.setdefault(node, {})[index] = loads(record)
            except ValueError:
                raise UnreadableState(state.flow_id, record, f"its item {index} of '{node}' is not JSON") from None
        state.items = by_node
        state.items_loaded = set(self.complete)
        state.items_changed = set()
        if self.view is not None:
            self.view.state = state

    def reread(self) -> None:
        """Starts over from the stored JSON: the state an event half-changed is dropped."""
        self.state = _decode(self.state.flow_id, self.raw)
        self.attach_items()

    def replace(self, fresh: StoredFlow) -> None:
        """Takes on ``fresh``, a newer stored state (with only the items it was read with at hand)."""
        self.state, self.raw, self.version = fresh.state, fresh.raw, fresh.version
        self.items, self.complete = fresh.items, fresh.complete
        if self.view is not None:
            self.view.state = fresh.state

    def changed_items(self, keys: Keys) -> list[tuple[str, bytes]]:
        """The item records the last event changed, as the hash fields and values to write (and keeps them)."""
        state = self.state
        out: list[tuple[str, bytes]] = []
        for node, index in sorted(state.items_changed):
            record = dumps(state.items[node][index])
            self.items[node, index] = record
            out.append((keys.item_field(node, index), record))
        return out


def _decode(flow_id: str, raw: bytes) -> FlowState:
    try:
        return decode_state(flow_id, raw)
    except CorruptFlowError as error:
        raise UnreadableState(flow_id, raw, error.reason) from None


@dataclass(eq=False, slots=True)
class Plan:
    """What one commit does besides writing the state."""

    jobs: list[Enqueue] = field(default_factory=list)
    cancel_jobs: list[str] = field(default_factory=list)
    cancel_fan_outs: list[list[str]] = field(default_factory=list)
    local: Job | None = None
    done: bool = False

    @property
    def cancel_message(self) -> bytes | None:
        """What the cancel channel says (and the commit deletes), or ``None`` when nothing is cancelled."""
        if not self.cancel_jobs and not self.cancel_fan_outs:
            return None
        return dumps({"jobs": self.cancel_jobs, "fan_outs": self.cancel_fan_outs})


def plan(keys: Keys, workflow: str, state: FlowState, actions: Iterable[Action], *, allow_local: bool) -> Plan:
    """Turns the engine's actions into a commit's :class:`Plan`.

    Args:
        allow_local: the first job that can start at once is kept by the committing task (leased to it in the
            same commit) rather than queued.
    """
    result = Plan()
    flow_id = state.flow_id
    for action in actions:
        if isinstance(action, Finish):
            result.done = True
        elif isinstance(action, CancelRunning):
            cancelled = [Job("step", workflow, flow_id, step, attempt) for step, attempt in action.steps]
            cancelled += [Job("step", workflow, flow_id, node, attempt, index) for node, index, attempt in action.items]
            cancelled += [Job("eval", workflow, flow_id, "", eval_id) for eval_id in action.evals]
            if action.complete:
                cancelled.append(Job("complete", workflow, flow_id))
            result.cancel_jobs += [keys.job_id(job) for job in cancelled]
            result.cancel_fan_outs += [[flow_id, node] for node in action.fan_outs]
        elif isinstance(action, RunStep | RunRollback | RunComplete | RunOnError | Evaluate):
            job = Job.for_action(workflow, flow_id, action)
            delay = action.delay if isinstance(action, RunStep | RunRollback) else 0.0
            _add(result, job, delay, allow_local)
        elif isinstance(action, StartChild):
            extra = {"workflow": action.workflow, "child": action.child, "data": action.data}
            _add(result, Job("spawn", workflow, flow_id, action.step, extra=extra), 0.0, allow_local)
        elif isinstance(action, CancelChild):
            extra = {"op": "cancel", "reason": action.reason}
            result.jobs.append(Enqueue(Job("op", action.workflow, action.child, extra=extra)))
        elif isinstance(action, CompensateChild):
            op = "retry_compensation" if action.retry else "compensate"
            extra = {"op": op, "reason": action.reason}
            result.jobs.append(Enqueue(Job("op", action.workflow, action.child, extra=extra)))
        elif isinstance(action, NotifyParent):
            settled = action.settled
            extra = {
                "op": "child",
                "child": settled.child,
                "status": settled.status,
                "result": settled.result,
                "error": settled.error,
                "rollback_failed": settled.rollback_failed,
            }
            parent = action.parent
            result.jobs.append(Enqueue(Job("op", parent["workflow"], parent["flow_id"], parent["node"], extra=extra)))
    return result


def _add(result: Plan, job: Job, delay: float, allow_local: bool) -> None:
    if allow_local and result.local is None and delay <= 0:
        result.local = job
        result.jobs.append(Enqueue(job, local=True))
    else:
        result.jobs.append(Enqueue(job, delay))


class Exceptions:
    """The exception objects of failures that happened in this process, for the flows' errors.

    A flow's error is rebuilt from its state; where the failure happened in this process, its cause is the very
    exception object (as in-process), else a ``RemoteError``. An entry is used only if it matches what the state
    recorded (``plait.core.engine.matching_exceptions``), so a stale attempt's exception never stands in for a
    later one.
    """

    __slots__ = ("_flows", "_limit")

    def __init__(self, limit: int = 512) -> None:
        self._flows: OrderedDict[str, dict[ExceptionKey, tuple[BaseException, Mapping[str, Any]]]] = OrderedDict()
        self._limit = limit

    def record(self, flow_id: str, key: ExceptionKey, error: BaseException, record: Mapping[str, Any]) -> None:
        """Remembers ``error`` (recorded as ``record``) for flow ``flow_id``."""
        flows = self._flows
        entry = flows.get(flow_id)
        if entry is None:
            entry = flows[flow_id] = {}
            if len(flows) > self._limit:
                flows.popitem(last=False)
        else:
            flows.move_to_end(flow_id)
        entry[key] = (error, record)

    def matching(self, state: FlowState) -> dict[ExceptionKey, BaseException]:
        """The remembered exceptions that are the ones ``state`` records."""
        return matching_exceptions(state, self._flows.get(state.flow_id) or {})
