"""What every part of the engine shares: the compiled definition, jitter, event records, and the transitions the
parts call across (declared here, written in :mod:`~plait.core.engine.machine`)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from plait.core.engine.graph import Graph
from plait.core.engine.messages import Action
from plait.core.engine.records import JSON, ErrorRecord, FlowError, FlowState, ItemRecord, Policy
from plait.core.handle import FlowStatus
from plait.core.options import Backoff
from plait.core.workflow import WorkflowDefinition

__all__ = ["NO_POLICY", "EngineBase", "copy_error", "flow_error"]

NO_POLICY: Policy = {"attempts": 1, "backoff": ["fixed", 0.0, 0.0, False], "undo": [], "in_doubt": []}
"""The policy of a flow that never started: no retries, nothing to roll back."""


class EngineBase:
    """The compiled definition and the helpers every part of the engine uses.

    Args:
        definition: the workflow definition.
        rand: source of jitter for backoff, in [0, 1).
    """

    __slots__ = ("_rand", "definition", "graph")

    def __init__(self, definition: WorkflowDefinition[Any, Any], rand: Callable[[], float] = random.random) -> None:
        self.definition = definition
        self.graph = Graph(definition)
        self._rand = rand

    def _delay(self, policy: Policy, failed_attempt: int) -> float:
        kind, delay, max_delay, jitter = policy["backoff"]
        return Backoff(kind, delay, max_delay, jitter).delay_for(failed_attempt, self._rand)

    @staticmethod
    def _emit(state: FlowState, now: float, kind: str, *values: Any) -> None:
        """Records an event of type ``kind``: ``values`` are its own fields in the order ``EVENT_FIELDS[kind]`` lists
        (see :data:`~plait.core.engine.records.EventRecord`)."""
        seq = state.seq = state.seq + 1
        state.emitted.append((kind, seq, now, *values))

    @staticmethod
    def _changed(state: FlowState) -> set[tuple[str, int]]:
        """The item records to write back, as a set of the state's own to add to (see :class:`FlowState`)."""
        changed = state.items_changed
        if not isinstance(changed, set):
            changed = state.items_changed = set(changed)
        return changed

    # The transitions the for-each and rollback parts call; the engine writes them.

    def _node_completed(self, state: FlowState, name: str, result: JSON, now: float) -> list[Action]:
        raise NotImplementedError

    def _after_settled(self, state: FlowState, name: str, now: float) -> list[Action]:
        raise NotImplementedError

    def _stop(self, state: FlowState, now: float, *, cancel_running: bool) -> list[Action]:
        raise NotImplementedError

    def _finish(self, state: FlowState, status: FlowStatus, now: float) -> list[Action]:
        raise NotImplementedError

    def _item(self, state: FlowState, name: str, index: int) -> ItemRecord:
        raise NotImplementedError

    def _child_workflow(self, node: str) -> str:
        raise NotImplementedError


def copy_error(error: ErrorRecord) -> ErrorRecord:
    """A copy of an error record (records are kept in the state, which must not share them)."""
    return {"type": error["type"], "message": error["message"], "traceback": error["traceback"]}


def flow_error(kind: Any, error: ErrorRecord, *, step: str | None = None, index: int | None = None) -> FlowError:
    """A flow's error of ``kind`` made of a handler's error record (and the node and item that failed)."""
    flow_error: FlowError = {"kind": kind, "step": step, "index": index}
    flow_error.update(copy_error(error))  # type: ignore[typeddict-item]  # an ErrorRecord's keys are a FlowError's
    return flow_error
