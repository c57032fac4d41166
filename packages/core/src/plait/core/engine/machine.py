"""The saga engine: a deterministic state machine that every provider drives.

Given a definition, a flow's recorded state, an event and the current time, :meth:`Engine.handle` updates the state
and returns the next actions (run these steps, evaluate these conditions, start this child flow, run this rollback,
call ``on_complete``, finish). It does no I/O: providers move events and actions, persist the state, run handlers
and the definition's callables through :mod:`plait.core.runner`, and fire a :class:`Tick` once ``state.wake_at``
has passed.

Events are idempotent: an event that does not match the recorded state (a duplicate completion, a late result after
a timeout, an old attempt) changes nothing and returns no action, so at-least-once transports can deliver them
twice. Operations that cannot apply (a signal nobody waits for, compensating a running flow) raise, so that the
caller learns why.

Each transition also records what happened as plain event records (``state.emitted``), which providers store and
publish as the flow's history.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from plait.core.engine.base import NO_POLICY, copy_error, flow_error
from plait.core.engine.failures import build_error, error_text
from plait.core.engine.fanout import FanOut, ItemsNeeded
from plait.core.engine.graph import Node
from plait.core.engine.messages import (
    Action,
    Cancel,
    CancelChild,
    CancelRunning,
    ChildSettled,
    Compensate,
    CompensateChild,
    CompleteRaised,
    CompleteReturned,
    ErrorHandled,
    Evaluate,
    Evaluated,
    Event,
    Finish,
    NotifyParent,
    Progress,
    RetryCompensation,
    RollbackRaised,
    RollbackReturned,
    RunComplete,
    RunOnError,
    RunRollback,
    RunStep,
    Signal,
    StartChild,
    StepRaised,
    StepReturned,
    Tick,
    Unrunnable,
)
from plait.core.engine.records import (
    JSON,
    ErrorRecord,
    FlowError,
    FlowState,
    NodeRecord,
    ParentRef,
    Policy,
)
from plait.core.engine.rollbacks import Rollbacks
from plait.core.errors import FlowStateError, SignalError
from plait.core.handle import FlowStatus

__all__ = ["Engine", "ItemsNeeded", "child_flow_id"]

# The type recorded for a rollback that an abort left undone.
_ABORTED = "plait.core.errors.WorkflowCancelledError"
_SETTLED: frozenset[str] = frozenset({"completed", "skipped", "failed", "cancelled"})
_ACTIVE: frozenset[str] = frozenset({"running", "waiting", "pending"})
_WAIT_TIMEOUT_TYPE = "TimeoutError"
_CHILD_ERROR_TYPE = "plait.core.errors.WorkflowError"


def child_flow_id(parent_id: str, node: str) -> str:
    """The id of the child flow of sub-workflow ``node`` of flow ``parent_id``: the same every time it is asked, so
    that a crash never starts two children. Node names hold no ``.``, so the id names its parent and node."""
    return f"{parent_id}.{node}"


class Engine(FanOut, Rollbacks):
    """The saga rules of one workflow definition.

    What the consumer registered (attempts, backoff, which steps have rollbacks) is recorded in each flow's state
    when it starts (``state.policy``), so any process holding the definition can drive any flow of it.

    Args:
        definition: the workflow definition.
        rand: source of jitter for backoff, in [0, 1).
    """

    __slots__ = ()

    # -- queries --

    def visible(self, step: str | None) -> tuple[str, ...]:
        """The nodes whose results ``step`` sees (``None``: a callback or rollback, which see every result)."""
        if step is None:
            return self.graph.order
        return self.graph.nodes[step].visible

    def node(self, name: str) -> Node:
        """The compiled node called ``name``."""
        return self.graph.nodes[name]

    # -- creating and starting --

    def new_state(
        self,
        flow_id: str,
        data: JSON,
        *,
        meta: Mapping[str, str] | None = None,
        timeout: float | None = None,
        now: float = 0.0,
        parent: ParentRef | None = None,
        depth: int = 1,
        retry_of: str | None = None,
    ) -> FlowState:
        """Creates the state of an accepted, not yet started flow."""
        deadline = None if timeout is None else now + timeout
        return FlowState(
            flow_id=flow_id,
            workflow=self.definition.name,
            data=data,
            meta=dict(meta or {}),
            created_at=now,
            timeout=timeout,
            deadline=deadline,
            wake_at=deadline,
            parent=parent,
            depth=depth,
            retry_of=retry_of,
        )

    def start(
        self, state: FlowState, *, policy: Policy, default_timeout: float | None = None, now: float = 0.0
    ) -> list[Action]:
        """Starts a pending flow with the consumer's ``policy``; does nothing for a flow already started.

        Args:
            policy: what the consumer registered (see :meth:`plait.core.runner.Runner.policy`).
            default_timeout: the flow's timeout when ``execute()`` gave it none (the registration's, else the
                provider's), counted from the flow's creation.
        """
        if state.phase != "pending":
            return []
        state.policy = policy
        if state.timeout is None and default_timeout is not None:
            state.timeout = default_timeout
            state.deadline = state.created_at + default_timeout
        state.status = FlowStatus.RUNNING
        self._emit(state, now, "flow_started")
        if state.deadline is not None and state.deadline <= now:
            actions = self._interrupt(state, {"kind": "timeout", "timeout": state.timeout}, now)
        else:
            actions = self._enter_group(state, 0, now)
        self._refresh(state, now)
        return actions

    def check_retry(self, state: FlowState) -> None:
        """Raises ``FlowStateError`` unless ``state``'s flow may be retried (it failed, was cancelled, or was
        compensated): ``retry()`` then starts a new flow with its data and metadata."""
        if state.status not in (FlowStatus.FAILED, FlowStatus.CANCELLED, FlowStatus.COMPENSATED):
            raise FlowStateError(
                state.flow_id, state.status, "only a failed, cancelled or compensated flow can be retried"
            )

    def startable(self, state: FlowState) -> bool:
        """Whether :meth:`start` would start this flow (it is accepted and not started yet)."""
        return state.phase == "pending"

    def expects(self, state: FlowState, action: Action) -> bool:
        """Whether the flow still waits for the outcome of ``action``.

        A job can outlive its need (its step was cancelled by a timeout, it was handed back after a stall and also
        finished, the flow ended); a transport asks this before running one, so stale work is dropped rather than
        run. The answers are the same guards :meth:`handle` applies to the events.

        Raises:
            ItemsNeeded: the action is a for-each item's, and its record is not loaded.
        """
        if state.phase == "done":
            return False
        if isinstance(action, RunStep):
            if action.index is None:
                return self._running(state, action.step, action.attempt) is not None
            return self._item_running(state, action.step, action.index, action.attempt) is not None
        if isinstance(action, RunRollback):
            return self._rollback_due(state, action.step, action.attempt, action.index)
        if isinstance(action, RunComplete):
            return state.phase == "complete"
        if isinstance(action, RunOnError):
            return state.phase == "on_error"
        if isinstance(action, Evaluate):
            return str(action.eval_id) in state.evals
        return True

    # -- transitions --

    def handle(self, state: FlowState, event: Event, now: float) -> list[Action]:
        """Applies ``event`` at time ``now`` (seconds since the epoch) to ``state`` (in place); returns what to do.

        Raises:
            SignalError: a :class:`Signal` the flow does not accept.
            FlowStateError: a :class:`Compensate` or :class:`RetryCompensation` the flow's status does not allow.
            ItemsNeeded: for-each item records the provider must load first.
        """
        match event:
            case StepReturned():
                actions = self._step_returned(state, event, now)
            case StepRaised():
                actions = self._step_raised(state, event, now)
            case RollbackReturned():
                actions = self._rollback_settled(state, event.step, event.attempt, event.index, None, now)
            case RollbackRaised():
                actions = self._rollback_settled(state, event.step, event.attempt, event.index, event.error, now)
            case CompleteReturned():
                if state.phase != "complete":
                    return []
                state.result = event.result
                actions = self._finish(state, FlowStatus.COMPLETED, now)
            case CompleteRaised():
                if state.phase != "complete":
                    return []
                state.error = flow_error("complete", event.error)
                actions = self._compensate(state, now)
            case ErrorHandled():
                if state.phase != "on_error":
                    return []
                assert state.error is not None
                cancelled = state.error["kind"] == "cancelled"
                actions = self._finish(state, FlowStatus.CANCELLED if cancelled else FlowStatus.FAILED, now)
            case Evaluated():
                actions = self._evaluated(state, event, now)
            case ChildSettled():
                actions = self._child_settled(state, event, now)
            case Tick():
                actions = self._tick(state, now)
            case Signal():
                actions = self._signal(state, event, now)
            case Cancel():
                if state.phase in ("done", "rollback", "on_error"):
                    return []  # ended, or already rolling back: the rollbacks and on_error still run
                actions = self._interrupt(state, {"kind": "cancelled", "reason": event.reason}, now)
            case Compensate():
                actions = self._compensate_completed(state, event.reason, now)
            case RetryCompensation():
                actions = self._retry_compensation(state, now)
            case Progress():
                if state.phase == "done":
                    return []
                state.progress = {
                    "fraction": event.fraction,
                    "message": event.message,
                    "step": event.step,
                    "index": event.index,
                    "at": now,
                }
                self._emit(state, now, "progress", event.step, event.index, event.fraction, event.message)
                return []
            case Unrunnable():
                # Its handlers cannot be given valid contexts, rollbacks included: end it now, saying what was
                # left undone, rather than retry it forever.
                error = flow_error("unrunnable", event.error)
                actions = self._end_now(
                    state, error, FlowStatus.FAILED, f"the flow cannot run: {event.error['message']}", now
                )
            case _:  # pragma: no cover - guarded by the type checker
                raise TypeError(f"Not an engine event: {event!r}")
        self._refresh(state, now)
        return actions

    def abort(self, state: FlowState, reason: str, now: float = 0.0) -> list[Action]:
        """Ends a flow as ``cancelled`` at once, without running its remaining rollbacks.

        The last resort of a provider that can no longer run anything (a process shutting down after its grace
        periods). Each completed step whose rollback did not run is recorded as a rollback error ("not rolled
        back"), so the flow's error says what was left undone; providers also log it loudly. An earlier error
        stays the primary one.
        """
        error: FlowError = {"kind": "cancelled", "step": None, "type": "", "message": "", "traceback": ""}
        error["reason"] = f"{reason} (aborted)"
        actions = self._end_now(state, error, FlowStatus.CANCELLED, reason, now)
        self._refresh(state, now)
        return actions

    # -- groups and nodes --

    def _enter_group(self, state: FlowState, index: int, now: float) -> list[Action]:
        graph = self.graph
        if index >= len(graph.groups):
            state.phase = "complete"
            return [RunComplete()]
        state.phase = "steps"
        state.group = index
        if graph.conditional[index]:
            return self._evaluate(state, [("group", str(index))])
        return self._start_ready(state, graph.roots[index], now)

    def _start_ready(self, state: FlowState, names: Iterable[str], now: float) -> list[Action]:
        """Starts the nodes ``names`` that became ready; those with a condition are evaluated first."""
        actions: list[Action] | None = None  # the first node's own list, extended (one list per step, not three)
        targets: list[tuple[str, str]] = []
        for name in names:
            node = self.graph.nodes[name]
            if node.step.when is not None:
                state.nodes[name] = {"status": "pending"}
                targets.append(("when", name))
            elif actions is None:
                actions = self._start_node(state, node, targets, now)
            else:
                actions += self._start_node(state, node, targets, now)
        if actions is None:
            actions = []
        if targets:
            actions += self._evaluate(state, targets)
        return actions

    def _start_node(self, state: FlowState, node: Node, targets: list[tuple[str, str]], now: float) -> list[Action]:
        """Starts ``node``; appends to ``targets`` what must be evaluated before it can go on."""
        name = node.name
        kind = node.kind
        if kind == "step":
            state.nodes[name] = {"status": "running", "attempt": 1}
            self._emit(state, now, "step_started", name, 1)
            return [RunStep(name, 1)]
        if kind == "wait_for":
            if name in state.signals:
                state.nodes[name] = {"status": "running", "attempt": 1}
                self._emit(state, now, "step_started", name, 1)
                return self._node_completed(state, name, state.signals[name], now)
            record: NodeRecord = {"status": "waiting", "attempt": 1}
            if node.step.timeout is not None:
                record["wake"] = now + node.step.timeout
            state.nodes[name] = record
            self._emit(state, now, "step_started", name, 1)
            return []
        if kind == "sleep" and node.step.seconds is not None:
            state.nodes[name] = {"status": "running", "attempt": 1}
            self._emit(state, now, "step_started", name, 1)
            return self._sleep_until(state, name, now + node.step.seconds, now)
        # A sleep until a computed time, a for-each's items and a sub-workflow's data come from the definition's
        # callables first.
        state.nodes[name] = {"status": "running", "attempt": 1}
        self._emit(state, now, "step_started", name, 1)
        targets.append(({"sleep": "until", "for_each": "items"}.get(kind, "data"), name))
        return []

    def _sleep_until(self, state: FlowState, name: str, wake: float, now: float) -> list[Action]:
        if wake <= now:
            return self._node_completed(state, name, None, now)
        record = state.nodes[name]
        record["status"] = "waiting"
        record["wake"] = wake
        return []

    def _evaluate(self, state: FlowState, targets: list[tuple[str, str]]) -> list[Action]:
        state.eval_seq += 1
        eval_id = state.eval_seq
        state.evals[str(eval_id)] = [list(t) for t in targets]
        for what, name in targets:
            if what != "group":
                state.nodes[name]["eval"] = eval_id
        return [Evaluate(eval_id, tuple(targets))]

    def _evaluated(self, state: FlowState, event: Evaluated, now: float) -> list[Action]:
        targets = state.evals.pop(str(event.eval_id), None)
        if targets is None:
            return []  # dropped: the flow moved on (it is failing, or the evaluation ran twice)
        actions: list[Action] = []
        more: list[tuple[str, str]] = []
        for what, name in targets:
            key = f"{what}:{name}"
            error = event.errors.get(key)
            value = event.values.get(key)
            if what == "group":
                actions += self._group_evaluated(state, int(name), value, error, now)
                continue
            state.nodes[name].pop("eval", None)
            if error is not None:
                actions += self._node_failed(state, name, error, now, no_effect=True)
            elif what == "when":
                if value:
                    actions += self._start_node(state, self.graph.nodes[name], more, now)
                else:
                    state.nodes[name] = {"status": "skipped"}
                    self._emit(state, now, "step_skipped", name)
                    actions += self._after_settled(state, name, now)
            elif what == "until":
                actions += self._sleep_until(state, name, float(value or 0.0), now)
            elif what == "items":
                actions += self._items_computed(state, name, list(value or ()), now)
            else:
                node = self.graph.nodes[name]
                assert node.step.workflow is not None
                child = child_flow_id(state.flow_id, name)
                state.nodes[name]["child"] = child
                actions.append(StartChild(name, node.step.workflow.name, child, value))
        if more:
            actions += self._evaluate(state, more)
        return actions

    def _group_evaluated(
        self, state: FlowState, index: int, value: JSON, error: ErrorRecord | None, now: float
    ) -> list[Action]:
        names = self.graph.groups[index]
        if error is not None:
            # A group's condition that raises fails the group's first node: no node of it runs.
            state.nodes[names[0]] = {"status": "running", "attempt": 1}
            return self._node_failed(state, names[0], error, now, no_effect=True)
        if value:
            return self._start_ready(state, self.graph.roots[index], now)
        for name in names:
            state.nodes[name] = {"status": "skipped"}
            self._emit(state, now, "step_skipped", name)
        return self._after_settled(state, names[-1], now)

    def _node_completed(self, state: FlowState, name: str, result: JSON, now: float) -> list[Action]:
        record = state.nodes[name]
        record["status"] = "completed"
        record.pop("wake", None)
        kind = self.graph.nodes[name].kind
        if kind == "for_each":
            # The node's result is its items' outputs in item order: every item must be at hand once.
            if name not in state.items_loaded:
                raise ItemsNeeded(name)
            items = state.items[name]
            state.results[name] = [items[i]["output"] for i in range(record["total"])]
        elif kind != "sleep":
            state.results[name] = result
        self._emit(state, now, "step_completed", name)
        return self._after_settled(state, name, now)

    def _node_failed(
        self, state: FlowState, name: str, error: ErrorRecord, now: float, *, no_effect: bool, index: int | None = None
    ) -> list[Action]:
        """A node failed for good: the flow starts failing, and nothing new starts."""
        record = state.nodes[name]
        record["status"] = "failed"
        record["error"] = copy_error(error)
        record.pop("wake", None)
        if no_effect:
            record["no_effect"] = True
        self._emit(state, now, "step_failed", name, index, record.get("attempt", 1), error_text(error), False, 0.0)
        actions: list[Action] = []
        if state.error is None:
            state.error = flow_error("step", error, step=name, index=index)
            actions = self._stop(state, now, cancel_running=False)
        return actions + self._after_settled(state, name, now)

    def _after_settled(self, state: FlowState, name: str, now: float) -> list[Action]:
        """Starts what ``name`` settling made ready; moves on once its group has settled."""
        graph = self.graph
        nodes = state.nodes
        actions: list[Action] | None = None  # made only when something starts
        succs = graph.nodes[name].succs
        if succs and state.error is None:  # (a node in a stage of its own has none: no comprehension to build)
            ready = [
                succ
                for succ in succs
                if succ not in nodes and all(nodes.get(p, _UNSEEN)["status"] in ("completed", "skipped")
                                             for p in graph.nodes[succ].preds)
            ]  # fmt: skip
            if ready:
                actions = self._start_ready(state, ready, now)
        group = state.group
        for member in graph.groups[group]:
            record = nodes.get(member)
            if record is not None and record["status"] in _ACTIVE:
                return [] if actions is None else actions
        if state.phase != "steps":
            return [] if actions is None else actions
        if state.error is not None:
            following = self._compensate(state, now)
        else:
            following = self._enter_group(state, group + 1, now)
        if actions is None:
            return following
        actions += following
        return actions

    def _stop(self, state: FlowState, now: float, *, cancel_running: bool) -> list[Action]:
        """The flow is failing (or interrupted): nothing new starts in the current group.

        Waits, sleeps, children and pending evaluations are cancelled, and so are retries still waiting out their
        backoff. With ``cancel_running`` (a timeout or a cancellation) running handlers are cancelled too; else
        they finish their current attempt.
        """
        steps: list[tuple[str, int]] = []
        items: list[tuple[str, int, int]] = []
        fan_outs: list[str] = []
        actions: list[Action] = []
        for name in self.graph.groups[state.group]:
            record = state.nodes.get(name)
            if record is None:
                continue
            status = record["status"]
            if status == "pending":
                del state.nodes[name]  # its condition was being evaluated: it never started
                continue
            if status not in ("running", "waiting"):
                continue
            kind = self.graph.nodes[name].kind
            if kind == "step":
                due = record.get("due")
                if cancel_running or (due is not None and due > now):
                    record["status"] = "cancelled"
                    steps.append((name, record["attempt"]))
            elif kind == "for_each" and "total" in record:
                if cancel_running:
                    record["status"] = "cancelled"
                    fan_outs.append(name)
                else:
                    items += self._drop_retries(record, name, now)
                    record["failing"] = True
                    if record["running"] == 0:
                        record["status"] = self._fan_out_status(record)
            elif kind == "sub_workflow" and "child" in record:
                record["status"] = "cancelled"
                actions.append(CancelChild(self._child_workflow(name), record["child"], self._child_reason(state)))
            else:  # waits, sleeps, and nodes whose callables are being evaluated
                record["status"] = "cancelled"
                record.pop("wake", None)
        evals = tuple(int(e) for e in state.evals)
        state.evals.clear()
        if steps or items or fan_outs or evals:
            actions.insert(0, CancelRunning(tuple(steps), tuple(items), tuple(fan_outs), evals=evals))
        return actions

    def _child_workflow(self, node: str) -> str:
        child = self.graph.nodes[node].step.workflow
        assert child is not None
        return child.name

    @staticmethod
    def _child_reason(state: FlowState) -> str:
        error = state.error or {}
        kind = error.get("kind")
        if kind == "cancelled":
            return f"its parent flow '{state.flow_id}' was cancelled: {error.get('reason')}"
        if kind == "timeout":
            return f"its parent flow '{state.flow_id}' timed out"
        return f"its parent flow '{state.flow_id}' is failing"

    # -- steps --

    def _running(self, state: FlowState, step: str, attempt: int) -> NodeRecord | None:
        record = state.nodes.get(step)
        if record is None or record["status"] != "running" or record.get("attempt") != attempt:
            return None
        return record

    def _step_returned(self, state: FlowState, event: StepReturned, now: float) -> list[Action]:
        if event.index is not None:
            return self._item_returned(state, event, now)
        record = self._running(state, event.step, event.attempt)
        if record is None or state.phase != "steps":
            return []
        record.pop("due", None)
        return self._node_completed(state, event.step, event.output, now)

    def _step_raised(self, state: FlowState, event: StepRaised, now: float) -> list[Action]:
        if event.index is not None:
            return self._item_raised(state, event, now)
        record = self._running(state, event.step, event.attempt)
        if record is None or state.phase != "steps":
            return []
        record.pop("due", None)
        policy = state.policy or NO_POLICY
        # Once the flow is failing, running siblings finish their current attempt but are not retried.
        if event.retryable and state.error is None and event.attempt < policy["attempts"]:
            delay = self._delay(policy, event.attempt)
            record["error"] = copy_error(event.error)
            record["attempt"] = event.attempt + 1
            record["due"] = now + delay
            self._emit(state, now, "step_failed", event.step, None, event.attempt, error_text(event.error), True, delay)
            self._emit(state, now, "step_started", event.step, event.attempt + 1)
            return [RunStep(event.step, event.attempt + 1, delay)]
        return self._node_failed(state, event.step, event.error, now, no_effect=event.no_effect)

    # -- waits, sleeps and signals --

    def _tick(self, state: FlowState, now: float) -> list[Action]:
        if state.phase in ("pending", "steps", "complete") and state.deadline is not None and state.deadline <= now:
            return self._interrupt(state, {"kind": "timeout", "timeout": state.timeout}, now)
        if state.phase != "steps":
            return []
        actions: list[Action] = []
        for name in self.graph.groups[state.group]:
            record = state.nodes.get(name)
            if record is None or record["status"] != "waiting" or record.get("wake", now + 1) > now:
                continue
            if self.graph.nodes[name].kind == "sleep":
                actions += self._node_completed(state, name, None, now)
            else:
                timeout = self.graph.nodes[name].step.timeout
                error: ErrorRecord = {
                    "type": _WAIT_TIMEOUT_TYPE,
                    "message": f"no signal '{name}' arrived within {timeout:g}s",
                    "traceback": "",
                }
                actions += self._node_failed(state, name, error, now, no_effect=True)
        return actions

    def _signal(self, state: FlowState, event: Signal, now: float) -> list[Action]:
        name = event.name
        if name not in self.definition.signals:
            declared = ", ".join(f"'{n}'" for n in self.definition.signals) or "none"
            raise SignalError(f"Workflow '{state.workflow}' waits for no signal '{name}' (it waits for: {declared})")
        if state.status.is_terminal:
            raise SignalError(f"Flow '{state.flow_id}' has ended ({state.status}); signal '{name}' was not delivered")
        if name in state.signals:
            if state.signals[name] == event.payload:
                return []  # the same signal again: already received
            raise SignalError(
                f"Flow '{state.flow_id}' already received signal '{name}' with another payload; a signal is "
                f"delivered once"
            )
        record = state.nodes.get(name)
        if record is not None and record["status"] in ("skipped", "failed", "cancelled"):
            raise SignalError(
                f"Flow '{state.flow_id}' no longer waits for signal '{name}': that step is {record['status']}"
            )
        if state.error is not None or state.phase not in ("pending", "steps"):
            raise SignalError(f"Flow '{state.flow_id}' is {state.status}; it no longer waits for signal '{name}'")
        state.signals[name] = event.payload
        self._emit(state, now, "signal_received", name)
        if record is not None and record["status"] == "waiting":
            return self._node_completed(state, name, event.payload, now)
        return []

    # -- sub-workflows --

    def _child_settled(self, state: FlowState, event: ChildSettled, now: float) -> list[Action]:
        record = state.nodes.get(event.step)
        if record is None or record.get("child") != event.child:
            return []
        if record["status"] == "running" and state.phase == "steps":
            if event.status == FlowStatus.COMPLETED:
                return self._node_completed(state, event.step, event.result, now)
            if event.status in (FlowStatus.FAILED, FlowStatus.CANCELLED):
                error: ErrorRecord = {
                    "type": _CHILD_ERROR_TYPE,
                    "message": f"child flow '{event.child}' {event.status}: {event.error}",
                    "traceback": "",
                }
                return self._node_failed(state, event.step, error, now, no_effect=False)
            return []
        if record["status"] == "cancelled" and event.status == FlowStatus.COMPLETED:
            # It completed before the cancellation reached it: undo it, as this flow no longer wants it.
            reason = f"its parent flow '{state.flow_id}' no longer wants it"
            return [CompensateChild(event.step, self._child_workflow(event.step), event.child, reason)]
        if record["status"] == "compensating" and event.status == FlowStatus.COMPENSATED:
            failure: ErrorRecord | None = None
            if event.rollback_failed:
                failure = {
                    "type": _CHILD_ERROR_TYPE,
                    "message": f"child flow '{event.child}' was compensated with failures: {event.error}",
                    "traceback": "",
                }
            return self._rollback_settled(state, event.step, state.rollback_attempt, None, failure, now, final=True)
        return []

    # -- failing, cancelling, timing out --

    def _interrupt(self, state: FlowState, error: FlowError, now: float) -> list[Action]:
        if state.phase == "pending":
            state.error = {"step": None, "type": "", "message": "", "traceback": "", **error}
            return self._compensate(state, now)
        if state.phase not in ("steps", "complete"):
            return []  # already rolling back: the rollbacks and on_error still run
        in_complete = state.phase == "complete"
        # A step that already failed for good stays the primary error; its siblings are simply cut short.
        if state.error is None:
            state.error = {"step": None, "type": "", "message": "", "traceback": "", **error}
        actions = self._stop(state, now, cancel_running=True) if state.phase == "steps" else []
        if in_complete:
            actions.insert(0, CancelRunning(complete=True))
        return actions + self._compensate(state, now)

    def _end_now(self, state: FlowState, error: FlowError, status: FlowStatus, reason: str, now: float) -> list[Action]:
        if state.status.is_terminal:
            return []
        running = tuple(
            (name, r.get("attempt", 1))
            for name, r in state.nodes.items()
            if r["status"] in ("running", "compensating") and self.graph.nodes[name].kind == "step"
        )
        fan_outs = tuple(
            name
            for name, r in state.nodes.items()
            if r["status"] in ("running", "compensating") and self.graph.nodes[name].kind == "for_each"
        )
        children = [
            CancelChild(self._child_workflow(name), r["child"], reason)
            for name, r in state.nodes.items()
            if r["status"] == "running" and "child" in r
        ]
        for record in state.nodes.values():
            if record["status"] in ("running", "waiting", "pending"):
                record["status"] = "cancelled"
        if state.phase == "rollback":
            undone = list(state.rollbacks)
        elif state.phase == "on_error":
            undone = []  # every rollback has run; only on_error is cut short
        else:
            undone = self._rollback_order(state)
        if state.error is None:
            state.error = error
        for name in undone:
            record_: ErrorRecord = {"type": _ABORTED, "message": f"not rolled back: {reason}", "traceback": ""}
            state.nodes[name]["status"] = "compensation_failed"
            state.nodes[name]["rollback_error"] = copy_error(record_)
            state.rollback_errors = [*state.rollback_errors, {"step": name, **record_}]
        state.rollbacks = []
        evals = tuple(int(e) for e in state.evals)
        state.evals.clear()
        cancel = CancelRunning(running, fan_outs=fan_outs, complete=state.phase == "complete", evals=evals)
        return [cancel, *children, *self._finish(state, status, now)]

    # -- the end --

    def _finish(self, state: FlowState, status: FlowStatus, now: float) -> list[Action]:
        state.status = status
        state.phase = "done"
        state.wake_at = None
        state.finished_at = now
        message = None if state.error is None or status == FlowStatus.COMPLETED else str(build_error(state))
        reason = None if state.error is None else state.error.get("reason")
        self._emit(state, now, f"flow_{status.value}", message, reason)
        actions: list[Action] = [Finish(status)]
        if state.parent is not None:
            settled = ChildSettled(
                state.parent["node"],
                state.flow_id,
                status.value,
                state.result if status == FlowStatus.COMPLETED else None,
                message,
                bool(state.rollback_errors),
            )
            actions.append(NotifyParent(state.parent, settled))
        return actions

    def _refresh(self, state: FlowState, now: float) -> None:
        """Brings the flow's status (running or waiting) and its next wake-up time up to date."""
        phase = state.phase
        if phase == "steps":
            group = state.group
            if not self.graph.may_wait[group]:
                state.wake_at = state.deadline
                if state.status == FlowStatus.WAITING:  # it waited in an earlier group
                    state.status = FlowStatus.RUNNING
                return
            waiting = False
            busy = bool(state.evals)
            wake = state.deadline
            for name in self.graph.groups[group]:
                record = state.nodes.get(name)
                if record is None:
                    continue
                status = record["status"]
                if status == "waiting":
                    waiting = True
                    at = record.get("wake")
                    if at is not None and (wake is None or at < wake):
                        wake = at
                elif status in ("running", "pending"):
                    busy = True
            state.wake_at = wake
            flow_status = FlowStatus.WAITING if waiting and not busy else FlowStatus.RUNNING
            if flow_status != state.status and state.status in (FlowStatus.RUNNING, FlowStatus.WAITING):
                state.status = flow_status
                if flow_status == FlowStatus.WAITING:
                    self._emit(state, now, "flow_waiting")
        elif phase in ("pending", "complete"):
            state.wake_at = state.deadline
        else:
            state.wake_at = None


_UNSEEN: NodeRecord = {"status": "pending"}
