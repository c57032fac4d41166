"""Rollbacks in the engine: the order (in-doubt failures first, then completed nodes in reverse definition order,
a for-each's items in reverse index order in their place, children compensated in theirs), retries of a failing
rollback, undoing a completed flow, and running the rollbacks that failed for good again.
"""

from __future__ import annotations

from plait.core.engine.base import NO_POLICY, EngineBase, copy_error
from plait.core.engine.failures import error_text
from plait.core.engine.fanout import ItemsNeeded
from plait.core.engine.messages import Action, CompensateChild, RunOnError, RunRollback
from plait.core.engine.records import ErrorRecord, FlowState
from plait.core.errors import FlowStateError
from plait.core.handle import FlowStatus

__all__ = ["Rollbacks"]


class Rollbacks(EngineBase):
    """The engine's rollback transitions (a mixin of :class:`~plait.core.engine.machine.Engine`)."""

    __slots__ = ()

    def _rollback_order(self, state: FlowState) -> list[str]:
        """The nodes to roll back, in order: in-doubt nodes that failed first, then completed ones, each in reverse
        definition order."""
        policy = state.policy or NO_POLICY
        undo = set(policy["undo"])
        in_doubt = set(policy["in_doubt"])
        nodes = state.nodes
        first: list[str] = []
        then: list[str] = []
        for name in reversed(self.graph.order):
            record = nodes.get(name)
            if record is None:
                continue
            kind = self.graph.nodes[name].kind
            if kind == "sub_workflow":
                if record["status"] == "completed":
                    then.append(name)
            elif name not in undo:
                continue
            elif kind == "for_each":
                if record.get("done") or (name in in_doubt and record.get("failed")):
                    then.append(name)
            elif record["status"] == "completed":
                then.append(name)
            elif record["status"] in ("failed", "cancelled") and name in in_doubt and not record.get("no_effect"):
                # Its failure, or its attempt cut short by a timeout or a cancellation, may have had an effect.
                first.append(name)
        return first + then

    def _compensate(self, state: FlowState, now: float) -> list[Action]:
        state.status = FlowStatus.COMPENSATING
        state.phase = "rollback"
        state.rollbacks = self._rollback_order(state)
        return self._next_rollback(state, now)

    def _compensate_completed(self, state: FlowState, reason: str, now: float) -> list[Action]:
        if state.status in (FlowStatus.COMPENSATED,) or (
            state.status == FlowStatus.COMPENSATING and state.error is not None and state.error["kind"] == "compensated"
        ):
            return []
        if state.status != FlowStatus.COMPLETED:
            raise FlowStateError(
                state.flow_id,
                state.status,
                "only a completed flow can be compensated (cancel() stops one that is still running)",
            )
        state.error = {
            "kind": "compensated",
            "step": None,
            "type": "",
            "message": "",
            "traceback": "",
            "reason": reason,
        }
        state.finished_at = None
        return self._compensate(state, now)

    def _retry_compensation(self, state: FlowState, now: float) -> list[Action]:
        if not state.status.is_terminal or not state.rollback_errors:
            if state.status == FlowStatus.COMPENSATING:
                return []  # already running them
            raise FlowStateError(state.flow_id, state.status, "it has no rollbacks that failed for good to run again")
        assert state.error is not None
        failed = {r["step"] for r in state.rollback_errors}
        state.rollback_errors = []
        for name in failed:
            record = state.nodes[name]
            if self.graph.nodes[name].kind == "for_each":
                indices = sorted(set(record.get("rollback_failed", [])), reverse=True)
                record["undo"] = [[i, i] for i in indices]
                record["rollback_failed"] = []
        state.error["retry"] = True
        state.finished_at = None
        state.status = FlowStatus.COMPENSATING
        state.phase = "rollback"
        state.rollbacks = [n for n in reversed(self.graph.order) if n in failed]
        return self._next_rollback(state, now)

    def _next_rollback(self, state: FlowState, now: float) -> list[Action]:
        while state.rollbacks:
            name = state.rollbacks[0]
            record = state.nodes[name]
            kind = self.graph.nodes[name].kind
            state.rollback_attempt = 1
            retry = bool(state.error and state.error.get("retry"))
            if kind == "sub_workflow":
                record["status"] = "compensating"
                self._emit(state, now, "rollback_started", name, 1)
                reason = f"its parent flow '{state.flow_id}' is rolling back"
                return [CompensateChild(name, self._child_workflow(name), record["child"], reason, retry=retry)]
            if kind == "for_each":
                if "undo" not in record:
                    record["undo"] = self._item_undo(state, name)
                    record["rollback_failed"] = []
                if not record["undo"]:
                    failed = bool(record.get("rollback_failed"))
                    record["status"] = "compensation_failed" if failed else "compensated"
                    if not failed:
                        state.compensated = [*state.compensated, name]
                    state.rollbacks = state.rollbacks[1:]
                    continue
                index = record["undo"][0][0]
                record["status"] = "compensating"
                record["item"] = index
                self._emit(state, now, "rollback_started", name, 1, index)
                return [RunRollback(name, 1, 0.0, index)]
            record["status"] = "compensating"
            self._emit(state, now, "rollback_started", name, 1)
            return [RunRollback(name, 1)]
        assert state.error is not None
        ended = state.error["kind"]
        if ended == "compensated" or state.error.get("retry"):
            state.error.pop("retry", None)
            status = {"compensated": FlowStatus.COMPENSATED, "cancelled": FlowStatus.CANCELLED}.get(
                ended, FlowStatus.FAILED
            )
            return self._finish(state, status, now)
        state.phase = "on_error"
        return [RunOnError()]

    def _item_undo(self, state: FlowState, name: str) -> list[list[int]]:
        """A for-each's items to roll back, as descending ``[index, index]`` runs: in-doubt failures first, then the
        completed items from the last to the first."""
        if name not in state.items_loaded:
            raise ItemsNeeded(name)
        policy = state.policy or NO_POLICY
        in_doubt = name in policy["in_doubt"]
        items = state.items[name]
        first: list[int] = []
        then: list[int] = []
        for index in sorted(items, reverse=True):
            item = items[index]
            if item["status"] == "completed":
                then.append(index)
            elif in_doubt and item["status"] == "failed" and not item.get("no_effect"):
                first.append(index)
        runs: list[list[int]] = []
        for index in first + then:
            if runs and runs[-1][1] == index + 1 and index not in first:
                runs[-1][1] = index
            else:
                runs.append([index, index])
        return runs

    def _rollback_due(self, state: FlowState, step: str, attempt: int, index: int | None) -> bool:
        if state.phase != "rollback" or not state.rollbacks or state.rollbacks[0] != step:
            return False
        if state.rollback_attempt != attempt:
            return False
        return index is None or state.nodes[step].get("item") == index

    def _rollback_settled(
        self,
        state: FlowState,
        step: str,
        attempt: int,
        index: int | None,
        error: ErrorRecord | None,
        now: float,
        *,
        final: bool = False,
    ) -> list[Action]:
        if not self._rollback_due(state, step, attempt, index):
            return []
        record = state.nodes[step]
        item = self._item(state, step, index) if index is not None else None
        policy = state.policy or NO_POLICY
        if error is not None and not final and attempt < policy["attempts"]:
            delay = self._delay(policy, attempt)
            state.rollback_attempt = attempt + 1
            if item is not None:
                item["rollback_error"] = copy_error(error)
            else:
                record["rollback_error"] = copy_error(error)
            self._emit(state, now, "rollback_failed", step, index, attempt, error_text(error), True, delay)
            return [RunRollback(step, attempt + 1, delay, index)]
        if error is None:
            self._emit(state, now, "rollback_completed", step, index)
        else:
            self._emit(state, now, "rollback_failed", step, index, attempt, error_text(error), False, 0.0)
            state.rollback_errors = [*state.rollback_errors, {"step": step, "index": index, **error}]
        if item is not None:
            assert index is not None
            item["status"] = "compensated" if error is None else "compensation_failed"
            if error is not None:
                item["rollback_error"] = copy_error(error)
                record["rollback_failed"] = [*record.get("rollback_failed", []), index]
            self._changed(state).add((step, index))
            undo = record["undo"]
            high, low = undo[0]
            if high == low:
                undo.pop(0)
            else:
                undo[0] = [high - 1, low]
            return self._next_rollback(state, now)
        record["status"] = "compensated" if error is None else "compensation_failed"
        if error is not None:
            record["rollback_error"] = copy_error(error)
        else:
            state.compensated = [*state.compensated, step]
        state.rollbacks = state.rollbacks[1:]
        return self._next_rollback(state, now)
