"""For-each nodes in the engine: items started within a concurrency bound, each with its own attempts, and kept
apart from the flow's record (``state.items``) so that one item's completion costs the same whatever the number of
items. A durable provider that loads items one at a time is told by :class:`ItemsNeeded` when it must load more.
"""

from __future__ import annotations

from plait.core.engine.base import NO_POLICY, EngineBase, copy_error, flow_error
from plait.core.engine.failures import error_text
from plait.core.engine.messages import Action, CancelRunning, RunStep, StepRaised, StepReturned
from plait.core.engine.records import JSON, FlowState, ItemRecord, NodeRecord, StepStatus

__all__ = ["FanOut", "ItemsNeeded"]


class ItemsNeeded(Exception):
    """The engine needs for-each item records that the provider has not loaded into ``state.items``.

    A provider that keeps items apart (in Redis, one key field per item) loads them and hands the same event to a
    fresh copy of the state again; the state the engine was given is left half-changed and must be dropped. The
    in-process provider holds every item and never sees this.

    Attributes:
        node: the for-each node.
        indices: the items needed, or ``None`` for all of them.
    """

    def __init__(self, node: str, indices: tuple[int, ...] | None = None) -> None:
        self.node = node
        self.indices = indices
        super().__init__(f"items of '{node}' are needed: {'all' if indices is None else list(indices)}")


class FanOut(EngineBase):
    """The engine's for-each transitions (a mixin of :class:`~plait.core.engine.machine.Engine`)."""

    __slots__ = ()

    def _items_computed(self, state: FlowState, name: str, values: list[JSON], now: float) -> list[Action]:
        record = state.nodes[name]
        record.update({"total": len(values), "next": 0, "running": 0, "done": 0, "failed": 0, "retrying": []})
        record["dropped"] = []
        state.items[name] = {i: {"value": v, "status": "pending"} for i, v in enumerate(values)}
        state.items_loaded = {*state.items_loaded, name}
        self._changed(state).update((name, i) for i in range(len(values)))
        return self._fan_out(state, name, now)

    def _fan_out(self, state: FlowState, name: str, now: float) -> list[Action]:
        """Starts items while there are slots; settles the node once nothing runs and nothing is left to start."""
        record = state.nodes[name]
        actions: list[Action] = []
        if not record.get("failing") and state.error is None:
            limit = self.graph.nodes[name].concurrency
            total = record["total"]
            while record["running"] < limit and record["next"] < total:
                index = record["next"]
                record["next"] = index + 1
                record["running"] += 1
                self._emit(state, now, "step_started", name, 1, index)
                actions.append(RunStep(name, 1, 0.0, index))
        if record["running"] == 0 and (record["next"] >= record["total"] or record.get("failing") or state.error):
            status = self._fan_out_status(record)
            if status == "completed":
                return actions + self._node_completed(state, name, None, now)
            record["status"] = status
            if status == "failed":
                error = state.error if state.error is not None and state.error.get("step") == name else None
                self._emit(state, now, "step_failed", name, None, 1, error_text(error), False, 0.0)
            return actions + self._after_settled(state, name, now)
        return actions

    @staticmethod
    def _fan_out_status(record: NodeRecord) -> StepStatus:
        if record["failed"]:
            return "failed"
        if record["done"] == record["total"]:
            return "completed"
        return "cancelled"

    def _item(self, state: FlowState, name: str, index: int) -> ItemRecord:
        loaded = state.items.get(name)
        item = None if loaded is None else loaded.get(index)
        if item is None:
            raise ItemsNeeded(name, (index,))
        return item

    def _item_running(self, state: FlowState, name: str, index: int, attempt: int) -> ItemRecord | None:
        record = state.nodes.get(name)
        if record is None or record["status"] != "running" or "total" not in record or index >= record["next"]:
            return None
        if index in record["dropped"]:
            return None
        item = self._item(state, name, index)
        if item["status"] != "pending" or item.get("attempt", 1) != attempt:
            return None
        return item

    def _item_returned(self, state: FlowState, event: StepReturned, now: float) -> list[Action]:
        assert event.index is not None
        item = self._item_running(state, event.step, event.index, event.attempt)
        if item is None:
            return []
        record = state.nodes[event.step]
        item.update({"status": "completed", "attempt": event.attempt, "output": event.output})
        item.pop("error", None)
        self._changed(state).add((event.step, event.index))
        record["running"] -= 1
        record["done"] += 1
        self._forget_retry(record, event.index)
        self._emit(state, now, "step_completed", event.step, event.index)
        return self._fan_out(state, event.step, now)

    def _item_raised(self, state: FlowState, event: StepRaised, now: float) -> list[Action]:
        index = event.index
        assert index is not None
        name = event.step
        item = self._item_running(state, name, index, event.attempt)
        if item is None:
            return []
        record = state.nodes[name]
        policy = state.policy or NO_POLICY
        item["error"] = copy_error(event.error)
        self._changed(state).add((name, index))
        self._forget_retry(record, index)
        if event.retryable and not record.get("failing") and state.error is None and event.attempt < policy["attempts"]:
            delay = self._delay(policy, event.attempt)
            item["attempt"] = event.attempt + 1
            record["retrying"].append([index, event.attempt + 1, now + delay])
            self._emit(state, now, "step_failed", name, index, event.attempt, error_text(event.error), True, delay)
            self._emit(state, now, "step_started", name, event.attempt + 1, index)
            return [RunStep(name, event.attempt + 1, delay, index)]
        item.update({"status": "failed", "attempt": event.attempt})
        if event.no_effect:
            item["no_effect"] = True
        record["running"] -= 1
        record["failed"] += 1
        record["failing"] = True
        self._emit(state, now, "step_failed", name, index, event.attempt, error_text(event.error), False, 0.0)
        actions: list[Action] = []
        cancelled = self._drop_retries(record, name, now)
        if cancelled:
            actions.append(CancelRunning(items=tuple(cancelled)))
        if state.error is None:
            state.error = flow_error("step", event.error, step=name, index=index)
            actions += self._stop(state, now, cancel_running=False)
        return actions + self._fan_out(state, name, now)

    @staticmethod
    def _forget_retry(record: NodeRecord, index: int) -> None:
        retrying = record["retrying"]
        if retrying:
            record["retrying"] = [r for r in retrying if r[0] != index]

    @staticmethod
    def _drop_retries(record: NodeRecord, name: str, now: float) -> list[tuple[str, int, int]]:
        """Drops the item retries still waiting out their backoff; returns them as ``(node, index, attempt)``."""
        dropped = [r for r in record["retrying"] if r[2] > now]
        if not dropped:
            return []
        record["retrying"] = [r for r in record["retrying"] if r[2] <= now]
        record["dropped"] = [*record["dropped"], *(int(r[0]) for r in dropped)]
        record["running"] -= len(dropped)
        return [(name, int(r[0]), int(r[1])) for r in dropped]
