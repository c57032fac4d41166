"""The saga engine as a state machine: events in, actions out, no provider, no event loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection
from typing import Any

import pytest
from pydantic import BaseModel

from plait.core import (
    Backoff,
    ConsumerOptions,
    FlowStatus,
    IWorkflowConsumer,
    RemoteError,
    StepContext,
    StepHandler,
    Workflow,
    WorkflowCancelledError,
    WorkflowCompletionError,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowRollbackError,
    WorkflowStepError,
    WorkflowTimeoutError,
)
from plait.core.engine import (
    JSON,
    Action,
    Cancel,
    CancelRunning,
    CompleteRaised,
    CompleteReturned,
    Engine,
    ErrorHandled,
    ErrorRecord,
    Event,
    Finish,
    FlowState,
    Policy,
    RollbackRaised,
    RollbackReturned,
    RunComplete,
    RunOnError,
    RunRollback,
    RunStep,
    StepRaised,
    StepReturned,
    Tick,
    Unrunnable,
    build_error,
)
from plait.core.runner import Runner


class Data(BaseModel):
    n: int = 0


class Out(BaseModel):
    v: int = 0


class Res(BaseModel):
    ok: bool = True


LINE = Workflow.define(name="line", data=Data, result=Res).steps(
    lambda s: s.sequential(s.step("a", Out), s.step("b", Out), s.step("c", Out))
)
DIAMOND = Workflow.define(name="diamond", data=Data, result=Res).steps(
    lambda s: s.sequential(s.step("a", Out)).parallel(s.step("b", Out), s.step("c", Out)).sequential(s.step("d", Out))
)
BARE = Workflow.define(name="bare", data=Data, result=Res)

ALL = ("a", "b", "c", "d")
HALF = Backoff.fixed(0.5)


class Harness:
    """An engine with the policy a consumer would record, at a fixed time (``now``, moved by the tests)."""

    def __init__(self, definition: WorkflowDefinition[Data, Any], policy: Policy) -> None:
        self.engine = Engine(definition, rand=lambda: 0.5)
        self.policy = policy
        self.now = 100.0

    def new_state(self, flow_id: str, data: JSON, **kwargs: Any) -> FlowState:
        kwargs.setdefault("now", self.now)
        return self.engine.new_state(flow_id, data, **kwargs)

    def start(self, state: FlowState, default_timeout: float | None = None) -> list[Action]:
        return self.engine.start(state, policy=self.policy, default_timeout=default_timeout, now=self.now)

    def handle(self, state: FlowState, event: Event) -> list[Action]:
        if event is LATE:
            self.now = max(self.now, (state.deadline or 0.0) + 1.0)
            event = Tick()
        return self.engine.handle(state, event, self.now)

    def abort(self, state: FlowState, reason: str) -> list[Action]:
        return self.engine.abort(state, reason, self.now)

    def expects(self, state: FlowState, action: Action) -> bool:
        return self.engine.expects(state, action)

    def startable(self, state: FlowState) -> bool:
        return self.engine.startable(state)

    def visible(self, step: str | None) -> tuple[str, ...]:
        return self.engine.visible(step)


LATE = Tick()
"""A tick after the flow's deadline."""


def make(
    definition: WorkflowDefinition[Data, Any] = DIAMOND,
    *,
    attempts: int = 1,
    backoff: Backoff = HALF,
    rollbacks: Collection[str] = ALL,
    in_doubt: Collection[str] = (),
) -> Harness:
    steps = definition.step_names
    policy: Policy = {
        "attempts": attempts,
        "backoff": [backoff.kind, backoff.delay, backoff.max_delay, backoff.jitter],
        "undo": [n for n in steps if n in rollbacks],
        "in_doubt": [n for n in steps if n in in_doubt],
    }
    return Harness(definition, policy)


def begin(engine: Harness, timeout: float | None = None) -> tuple[FlowState, list[Action]]:
    state = engine.new_state("flow-1", {"n": 1}, meta={"correlation_id": "c-1"}, timeout=timeout)
    return state, engine.start(state)


def err(message: str = "boom", kind: str = "RuntimeError") -> ErrorRecord:
    return {"type": kind, "message": message, "traceback": f"Traceback...\n{kind}: {message}\n"}


def ok(step: str, attempt: int = 1) -> StepReturned:
    return StepReturned(step, attempt, {"v": attempt})


def boom(step: str, attempt: int = 1, *, retryable: bool = True) -> StepRaised:
    return StepRaised(step, attempt, err(f"boom {step}"), retryable)


def feed(engine: Harness, state: FlowState, *events: Event) -> list[Action]:
    """Feeds events in order; returns the actions of the last one."""
    actions: list[Action] = []
    for event in events:
        actions = engine.handle(state, event)
    return actions


def status_of(state: FlowState) -> FlowStatus:
    # A call, so that mypy does not narrow state.status across the events that change it.
    return state.status


def snapshot(state: FlowState) -> str:
    return json.dumps(state.to_dict(), sort_keys=True)


# --- starting -----------------------------------------------------------------------------------------------


def test_new_state_is_pending_with_a_deadline() -> None:
    state = make().new_state("flow-1", {"n": 1}, meta={"k": "v"}, timeout=5.0, now=100.0)
    assert (state.status, state.phase) == (FlowStatus.PENDING, "pending")
    assert (state.workflow, state.data, state.meta) == ("diamond", {"n": 1}, {"k": "v"})
    assert (state.created_at, state.timeout, state.deadline) == (100.0, 5.0, 105.0)
    assert make().new_state("flow-2", {}).deadline is None


def test_start_runs_the_first_group_once() -> None:
    engine = make()
    state, actions = begin(engine)
    assert actions == [RunStep("a", 1)]
    assert state.status == FlowStatus.RUNNING
    assert state.nodes == {"a": {"status": "running", "attempt": 1}}
    assert engine.start(state) == []


def test_a_step_less_workflow_goes_straight_to_on_complete() -> None:
    engine = make(BARE)
    state, actions = begin(engine)
    assert actions == [RunComplete()]
    assert feed(engine, state, CompleteReturned({"ok": True})) == [Finish(FlowStatus.COMPLETED)]
    assert state.result == {"ok": True}


def test_start_records_the_consumers_policy_so_any_process_can_drive_the_flow() -> None:
    engine = make(LINE, attempts=3, rollbacks=("a", "c"), in_doubt=("c",))
    state, _ = begin(engine)
    assert state.policy == {
        "attempts": 3,
        "backoff": ["fixed", 0.5, 0.5, False],
        "undo": ["a", "c"],
        "in_doubt": ["c"],
    }
    # Another engine of the same definition, with no consumer at hand, drives it the same way.
    other = Engine(LINE, rand=lambda: 0.5)
    assert other.handle(state, boom("a", 1), 100.0) == [RunStep("a", 2, 0.5)]


# --- ordering and visibility ------------------------------------------------------------------------------


def test_sequential_steps_run_one_after_another_then_on_complete() -> None:
    engine = make(LINE)
    state, actions = begin(engine)
    assert actions == [RunStep("a", 1)]
    assert feed(engine, state, ok("a")) == [RunStep("b", 1)]
    assert feed(engine, state, ok("b")) == [RunStep("c", 1)]
    assert feed(engine, state, ok("c")) == [RunComplete()]
    assert state.phase == "complete"
    assert feed(engine, state, CompleteReturned({"ok": True})) == [Finish(FlowStatus.COMPLETED)]
    assert (state.status, state.phase, state.result) == (FlowStatus.COMPLETED, "done", {"ok": True})
    assert state.results == {"a": {"v": 1}, "b": {"v": 1}, "c": {"v": 1}}
    assert state.error is None


def test_a_parallel_group_starts_together_and_the_next_waits_for_all() -> None:
    engine = make()
    state, _ = begin(engine)
    assert feed(engine, state, ok("a")) == [RunStep("b", 1), RunStep("c", 1)]
    assert feed(engine, state, ok("c")) == []
    assert feed(engine, state, ok("b")) == [RunStep("d", 1)]
    assert feed(engine, state, ok("d")) == [RunComplete()]


def test_steps_see_earlier_stages_never_siblings() -> None:
    engine = make()
    assert [engine.visible(n) for n in ALL] == [(), ("a",), ("a",), ("a", "b", "c")]
    assert engine.visible(None) == ALL
    line = make(LINE)
    assert [line.visible(n) for n in "abc"] == [(), ("a",), ("a", "b")]


# --- retries --------------------------------------------------------------------------------------------


def test_a_failed_attempt_is_retried_with_exponential_backoff() -> None:
    engine = make(LINE, attempts=4, backoff=Backoff.exponential(1.0, max_delay=3.0))
    state, _ = begin(engine)
    # rand() = 0.5: jitter takes 75% of delay * 2**(attempt-1), capped at 3.0 first.
    assert feed(engine, state, boom("a", 1)) == [RunStep("a", 2, 0.75)]
    assert feed(engine, state, boom("a", 2)) == [RunStep("a", 3, 1.5)]
    assert feed(engine, state, boom("a", 3)) == [RunStep("a", 4, 2.25)]
    assert state.nodes["a"]["attempt"] == 4
    assert feed(engine, state, ok("a", 4)) == [RunStep("b", 1)]
    assert state.results["a"] == {"v": 4}


def test_fixed_backoff_and_no_jitter() -> None:
    assert [Backoff.fixed(0.2).delay_for(n, lambda: 0.9) for n in (1, 5)] == [0.2, 0.2]
    plain = Backoff.exponential(0.1, max_delay=1.0, jitter=False)
    assert [plain.delay_for(n) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert Backoff.exponential(1.0).delay_for(1000, lambda: 0.0) == 15.0  # capped at 30, half of it


def test_a_step_failing_its_last_attempt_fails_the_flow() -> None:
    engine = make(LINE, attempts=2)
    state, _ = begin(engine)
    feed(engine, state, ok("a"), boom("b", 1))
    assert feed(engine, state, boom("b", 2)) == [RunRollback("a", 1)]
    assert state.status == FlowStatus.COMPENSATING
    assert state.nodes["b"]["status"] == "failed"
    assert state.error is not None
    assert (state.error["kind"], state.error["step"], state.error["message"]) == ("step", "b", "boom b")


def test_an_invalid_output_is_not_retried() -> None:
    engine = make(LINE, attempts=5)
    state, _ = begin(engine)
    assert feed(engine, state, boom("a", retryable=False)) == [RunOnError()]
    assert state.nodes["a"]["status"] == "failed"


# --- failure, siblings and rollbacks ----------------------------------------------------------------------


def test_a_failure_waits_for_running_siblings_then_rolls_back_in_reverse_order() -> None:
    engine = make()
    state, _ = begin(engine)
    feed(engine, state, ok("a"))
    assert feed(engine, state, boom("b")) == []  # c still runs to the end
    assert status_of(state) == FlowStatus.RUNNING
    assert feed(engine, state, ok("c")) == [RunRollback("c", 1)]
    assert status_of(state) == FlowStatus.COMPENSATING
    assert state.rollbacks == ["c", "a"]  # b failed: it is not rolled back
    assert state.nodes["c"]["status"] == "compensating"
    assert feed(engine, state, RollbackReturned("c", 1)) == [RunRollback("a", 1)]
    assert feed(engine, state, RollbackReturned("a", 1)) == [RunOnError()]
    assert feed(engine, state, ErrorHandled()) == [Finish(FlowStatus.FAILED)]
    assert {n: r["status"] for n, r in state.nodes.items()} == {
        "a": "compensated",
        "b": "failed",
        "c": "compensated",
    }
    error = build_error(state)
    assert isinstance(error, WorkflowStepError) and error.step_name == "b"


def test_running_siblings_are_not_retried_once_the_flow_fails() -> None:
    engine = make(attempts=3)
    state, _ = begin(engine)
    feed(engine, state, ok("a"))
    assert feed(engine, state, boom("b", retryable=False)) == []
    assert feed(engine, state, boom("c", 1)) == [RunRollback("a", 1)]
    assert state.nodes["c"]["status"] == "failed"
    assert state.error is not None and state.error["step"] == "b"  # the first failure stays the primary error


def test_a_sibling_waiting_out_its_backoff_is_not_retried_once_the_flow_fails() -> None:
    engine = make(attempts=3)
    state, _ = begin(engine)
    feed(engine, state, ok("a"))
    assert feed(engine, state, boom("c", 1)) == [RunStep("c", 2, 0.5)]
    # b fails for good before c's retry is due: the retry is dropped and the rollback starts now.
    assert feed(engine, state, boom("b", retryable=False)) == [CancelRunning((("c", 2),)), RunRollback("a", 1)]
    assert state.nodes["c"]["status"] == "cancelled"
    assert feed(engine, state, ok("c", 2)) == []  # had it started anyway, its success is ignored
    assert state.rollbacks == ["a"]


def test_a_sibling_whose_retry_is_due_finishes_that_attempt() -> None:
    engine = make(attempts=3)
    state, _ = begin(engine)
    feed(engine, state, ok("a"), boom("c", 1))
    engine.now += 0.6  # the retry is due: it may be running
    assert feed(engine, state, boom("b", retryable=False)) == []
    assert feed(engine, state, ok("c", 2)) == [RunRollback("c", 1)]


def test_only_completed_steps_with_a_rollback_are_rolled_back() -> None:
    engine = make(LINE, rollbacks=("a", "c"))
    state, _ = begin(engine)
    assert feed(engine, state, ok("a"), ok("b"), boom("c")) == [RunRollback("a", 1)]
    assert state.rollbacks == ["a"]


def test_nothing_to_roll_back_goes_straight_to_on_error() -> None:
    engine = make(LINE)
    state, _ = begin(engine)
    assert feed(engine, state, boom("a")) == [RunOnError()]
    assert state.phase == "on_error"


def test_a_failing_rollback_is_retried_then_recorded_and_the_rest_still_run() -> None:
    engine = make(attempts=2)
    state, _ = begin(engine)
    assert feed(engine, state, ok("a"), ok("b"), ok("c"), boom("d", 1), boom("d", 2)) == [RunRollback("c", 1)]
    assert feed(engine, state, RollbackRaised("c", 1, err("no refund"))) == [RunRollback("c", 2, 0.5)]
    assert state.rollback_attempt == 2
    assert feed(engine, state, RollbackRaised("c", 2, err("still no refund"))) == [RunRollback("b", 1)]
    assert state.nodes["c"]["status"] == "compensation_failed"
    assert state.rollback_errors == [{"step": "c", "index": None, **err("still no refund")}]
    assert feed(engine, state, RollbackRaised("b", 1, err("flaky"))) == [RunRollback("b", 2, 0.5)]
    assert feed(engine, state, RollbackReturned("b", 2)) == [RunRollback("a", 1)]
    assert feed(engine, state, RollbackReturned("a", 1), ErrorHandled()) == [Finish(FlowStatus.FAILED)]
    error = build_error(state)
    assert isinstance(error, WorkflowRollbackError)
    assert isinstance(error.primary_error, WorkflowStepError) and error.primary_error.step_name == "d"
    assert [(e.step_name, e.rollback, str(e.cause)) for e in error.rollback_errors] == [
        ("c", True, "RuntimeError: still no refund")
    ]


def test_on_complete_failing_rolls_back_every_step() -> None:
    engine = make()
    state, _ = begin(engine)
    feed(engine, state, ok("a"), ok("b"), ok("c"), ok("d"))
    assert feed(engine, state, CompleteRaised(err("bad result", "ValidationError"))) == [RunRollback("d", 1)]
    assert state.rollbacks == ["d", "c", "b", "a"]
    assert state.error is not None and state.error["kind"] == "complete"
    feed(engine, state, *(RollbackReturned(n, 1) for n in ("d", "c", "b", "a")))
    assert state.phase == "on_error"
    assert feed(engine, state, ErrorHandled()) == [Finish(FlowStatus.FAILED)]
    assert isinstance(build_error(state), WorkflowCompletionError)


def test_on_error_runs_once() -> None:
    engine = make(LINE)
    state, _ = begin(engine)
    assert feed(engine, state, ErrorHandled()) == []  # not asked for yet
    assert feed(engine, state, boom("a")) == [RunOnError()]
    assert feed(engine, state, ErrorHandled()) == [Finish(FlowStatus.FAILED)]
    assert feed(engine, state, ErrorHandled()) == []


# --- stale, duplicate and late events ---------------------------------------------------------------------


def test_duplicate_and_stale_events_change_nothing() -> None:
    engine = make(attempts=3)
    state, _ = begin(engine)
    feed(engine, state, ok("a"), boom("b", 1))  # b retries as attempt 2
    before = snapshot(state)
    stale: list[Event] = [
        ok("a"),  # a duplicate completion
        boom("a"),  # a failure of a completed step
        ok("b", 1),  # the old attempt
        boom("b", 1),
        ok("b", 3),  # an attempt never asked for
        ok("d"),  # a step of a later group
        ok("zzz"),  # no such step
        RollbackReturned("a", 1),  # not rolling back
        RollbackRaised("a", 1, err()),
        CompleteReturned({"ok": True}),  # on_complete was not asked for
        CompleteRaised(err()),
        ErrorHandled(),
    ]
    for event in stale:
        assert engine.handle(state, event) == [], event
    assert snapshot(state) == before


def test_stale_rollback_events_change_nothing() -> None:
    engine = make(LINE, attempts=2)
    state, _ = begin(engine)
    feed(engine, state, ok("a"), ok("b"), boom("c", 1), boom("c", 2), RollbackRaised("b", 1, err()))
    before = snapshot(state)
    for event in (RollbackReturned("b", 1), RollbackReturned("a", 1), RollbackRaised("a", 2, err()), ok("c", 2)):
        assert engine.handle(state, event) == [], event
    assert snapshot(state) == before
    assert feed(engine, state, RollbackReturned("b", 2)) == [RunRollback("a", 1)]


def test_a_terminal_flow_ignores_everything() -> None:
    engine = make(LINE)
    state, _ = begin(engine)
    feed(engine, state, ok("a"), ok("b"), ok("c"), CompleteReturned({"ok": True}))
    before = snapshot(state)
    events: list[Event] = [
        ok("a"),
        boom("c"),
        RollbackReturned("a", 1),
        CompleteReturned({"ok": False}),
        CompleteRaised(err()),
        ErrorHandled(),
        LATE,
        Cancel("late"),
    ]
    for event in events:
        assert engine.handle(state, event) == [], event
    assert engine.abort(state, "late") == []
    assert engine.start(state) == []
    assert snapshot(state) == before
    assert state.status == FlowStatus.COMPLETED


# --- timeouts and cancellation ----------------------------------------------------------------------------


def test_a_timeout_cancels_running_steps_and_compensates() -> None:
    engine = make()
    state, _ = begin(engine, timeout=2.0)
    feed(engine, state, ok("a"))
    assert feed(engine, state, LATE) == [CancelRunning((("b", 1), ("c", 1))), RunRollback("a", 1)]
    assert state.nodes["b"]["status"] == state.nodes["c"]["status"] == "cancelled"
    assert feed(engine, state, ok("b")) == []  # a late success changes nothing
    assert "b" not in state.results
    assert feed(engine, state, RollbackReturned("a", 1)) == [RunOnError()]
    assert feed(engine, state, ErrorHandled()) == [Finish(FlowStatus.FAILED)]
    error = build_error(state)
    assert isinstance(error, WorkflowTimeoutError)
    assert error.timeout == 2.0 and error.flow_id == "flow-1"


def test_a_timeout_during_on_complete_cancels_it_and_compensates_everything() -> None:
    engine = make(LINE)
    state, _ = begin(engine, timeout=1.0)
    feed(engine, state, ok("a"), ok("b"), ok("c"))
    assert feed(engine, state, LATE) == [CancelRunning(complete=True), RunRollback("c", 1)]
    assert feed(engine, state, CompleteReturned({"ok": True})) == []
    assert state.result is None


def test_a_timeout_while_pending_skips_the_steps() -> None:
    engine = make()
    state = engine.new_state("flow-1", {"n": 1}, timeout=1.0)
    assert engine.handle(state, LATE) == [RunOnError()]
    assert engine.start(state) == []
    assert feed(engine, state, ErrorHandled()) == [Finish(FlowStatus.FAILED)]
    assert state.nodes == {}


def test_a_timeout_while_rolling_back_changes_nothing() -> None:
    engine = make(LINE)
    state, _ = begin(engine, timeout=1.0)
    feed(engine, state, ok("a"), boom("b"))
    before = snapshot(state)
    assert feed(engine, state, LATE) == []
    assert feed(engine, state, Cancel("stop")) == []
    assert snapshot(state) == before
    assert feed(engine, state, RollbackReturned("a", 1), ErrorHandled()) == [Finish(FlowStatus.FAILED)]
    assert isinstance(build_error(state), WorkflowStepError)


def test_a_timeout_after_a_step_failed_keeps_the_step_error() -> None:
    engine = make()
    state, _ = begin(engine, timeout=1.0)
    feed(engine, state, ok("a"), boom("b"))
    assert feed(engine, state, LATE) == [CancelRunning((("c", 1),)), RunRollback("a", 1)]
    assert state.error is not None and state.error["kind"] == "step"


def test_a_cancelled_flow_rolls_back_and_ends_cancelled() -> None:
    engine = make(LINE)
    state, _ = begin(engine)
    feed(engine, state, ok("a"))
    assert feed(engine, state, Cancel("shutting down")) == [CancelRunning((("b", 1),)), RunRollback("a", 1)]
    assert feed(engine, state, RollbackReturned("a", 1), ErrorHandled()) == [Finish(FlowStatus.CANCELLED)]
    error = build_error(state)
    assert isinstance(error, WorkflowCancelledError)
    assert error.reason == "shutting down"


def test_abort_ends_the_flow_at_once_and_records_what_was_not_rolled_back() -> None:
    engine = make()
    state, _ = begin(engine)
    feed(engine, state, ok("a"), ok("c"))
    assert engine.abort(state, "gone") == [CancelRunning((("b", 1),)), Finish(FlowStatus.CANCELLED)]
    assert (state.status, state.rollbacks) == (FlowStatus.CANCELLED, [])
    assert {n: r["status"] for n, r in state.nodes.items()} == {
        "a": "compensation_failed",
        "b": "cancelled",
        "c": "compensation_failed",
    }
    error = build_error(state)
    assert isinstance(error, WorkflowRollbackError)
    assert isinstance(error.primary_error, WorkflowCancelledError)
    assert error.primary_error.reason == "gone (aborted)"
    assert [(e.step_name, str(e.cause)) for e in error.rollback_errors] == [
        ("c", "plait.core.errors.WorkflowCancelledError: not rolled back: gone"),
        ("a", "plait.core.errors.WorkflowCancelledError: not rolled back: gone"),
    ]


def test_abort_while_rolling_back_keeps_the_primary_error_and_cancels_the_rollback() -> None:
    engine = make(LINE)
    state, _ = begin(engine)
    feed(engine, state, ok("a"), ok("b"), boom("c"), RollbackReturned("b", 1))
    assert engine.abort(state, "stop") == [CancelRunning((("a", 1),)), Finish(FlowStatus.CANCELLED)]
    error = build_error(state)
    assert isinstance(error, WorkflowRollbackError)
    assert isinstance(error.primary_error, WorkflowStepError) and error.primary_error.step_name == "c"
    assert [e.step_name for e in error.rollback_errors] == ["a"]
    assert state.nodes["b"]["status"] == "compensated"


def test_abort_during_on_error_leaves_nothing_undone() -> None:
    engine = make(LINE)
    state, _ = begin(engine)
    feed(engine, state, ok("a"), boom("b"), RollbackReturned("a", 1))
    assert engine.abort(state, "stop") == [CancelRunning(), Finish(FlowStatus.CANCELLED)]
    error = build_error(state)
    assert isinstance(error, WorkflowStepError)


def test_an_unrunnable_flow_fails_at_once_naming_the_flow_and_what_was_not_rolled_back() -> None:
    engine = make()
    state, _ = begin(engine)
    feed(engine, state, ok("a"))
    actions = engine.handle(state, Unrunnable(err("data no longer validates", "ValidationError")))
    assert actions == [CancelRunning((("b", 1), ("c", 1))), Finish(FlowStatus.FAILED)]
    error = build_error(state)
    assert isinstance(error, WorkflowRollbackError)
    assert str(error.primary_error) == "Flow 'flow-1' cannot run: data no longer validates"
    assert error.primary_error.flow_id == "flow-1"
    assert [e.step_name for e in error.rollback_errors] == ["a"]
    assert "not rolled back: the flow cannot run: data no longer validates" in str(error.rollback_errors[0])
    assert engine.handle(state, Unrunnable(err())) == []


async def test_the_runner_reports_a_flow_whose_data_no_longer_validates_as_unrunnable() -> None:
    class Consumer(IWorkflowConsumer[Data, Res]):
        def __init__(self) -> None:
            self.steps = {name: StepHandler(execute=self.run) for name in ("a", "b", "c")}

        async def run(self, ctx: StepContext[Data]) -> Out:
            raise AssertionError("never runs")

        async def on_complete(self, ctx: WorkflowContext[Data]) -> Res:
            raise AssertionError("never runs")

    runner = Runner(LINE, Consumer())
    state = runner.engine.new_state("flow-9", {"n": "not a number"})
    runner.start(state, 0.0)
    event = await runner.run_step(runner.view(state), "a", 1)
    assert isinstance(event, Unrunnable)
    assert "no longer validate" in event.error["message"]
    assert isinstance(await runner.run_complete(runner.view(state)), Unrunnable)


async def test_a_runner_timeout_names_the_handler_it_stopped() -> None:
    async def slow(ctx: WorkflowContext[Data]) -> Any:
        await asyncio.sleep(5)

    class Consumer(IWorkflowConsumer[Data, Res]):
        def __init__(self) -> None:
            self.steps = {name: StepHandler(execute=slow, rollback=slow) for name in ("a", "b", "c")}

        async def on_complete(self, ctx: WorkflowContext[Data]) -> Res:
            return await slow(ctx)  # type: ignore[no-any-return]

    runner = Runner(LINE, Consumer(), ConsumerOptions(step_timeout=0.01))
    state = runner.engine.new_state("flow-t", {"n": 1})
    runner.start(state, 0.0)
    view = runner.view(state)
    step = await runner.run_step(view, "a", 1)
    assert isinstance(step, StepRaised)
    assert step.error["message"] == "Step 'a' timed out after 0.01s"
    state.results["a"] = {"v": 1}
    rollback = await runner.run_rollback(view, "a", 1)
    assert isinstance(rollback, RollbackRaised)
    assert rollback.error["message"] == "Rollback of step 'a' timed out after 0.01s"
    complete = await runner.run_complete(view)
    assert isinstance(complete, CompleteRaised)
    assert complete.error["message"] == "on_complete timed out after 0.01s"


# --- persistence ----------------------------------------------------------------------------------------


def _round_trip(state: FlowState) -> FlowState:
    return FlowState.from_dict(json.loads(json.dumps(state.to_dict())))


def test_state_survives_a_json_round_trip_at_every_event() -> None:
    engine = make(attempts=2)
    state, _ = begin(engine, timeout=9.0)
    events: list[tuple[Event, list[Action]]] = [
        (ok("a"), [RunStep("b", 1), RunStep("c", 1)]),
        (boom("b", 1), [RunStep("b", 2, 0.5)]),
        (ok("c"), []),
        (ok("b", 2), [RunStep("d", 1)]),
        (boom("d", 1), [RunStep("d", 2, 0.5)]),
        (boom("d", 2), [RunRollback("c", 1)]),
        (RollbackRaised("c", 1, err()), [RunRollback("c", 2, 0.5)]),
        (RollbackRaised("c", 2, err()), [RunRollback("b", 1)]),
        (RollbackReturned("b", 1), [RunRollback("a", 1)]),
        (RollbackReturned("a", 1), [RunOnError()]),
        (ErrorHandled(), [Finish(FlowStatus.FAILED)]),
    ]
    for event, expected in events:
        state = _round_trip(state)
        assert engine.handle(state, event) == expected, event
        state.take_events()
        assert _round_trip(state) == state
    assert isinstance(state.status, FlowStatus)
    error = build_error(state)
    assert isinstance(error, WorkflowRollbackError)
    assert isinstance(error.primary_error, WorkflowStepError) and error.primary_error.step_name == "d"


def test_to_dict_holds_every_field() -> None:
    state, _ = begin(make())
    raw = state.to_dict()
    transient = {"emitted", "items", "items_loaded", "items_changed"}
    assert set(raw) == set(FlowState.__dataclass_fields__) - transient
    state.take_events()
    assert raw["status"] == "running" and raw["meta"] == {"correlation_id": "c-1"}
    assert FlowState.from_dict(raw) == state


def test_a_state_written_before_a_field_existed_reads_back_with_its_default() -> None:
    state, _ = begin(make())
    state.take_events()
    older = {name: value for name, value in state.to_dict().items() if name not in ("progress", "retry_of")}
    assert FlowState.from_dict(older) == state  # both were None: their defaults


# --- errors from state ----------------------------------------------------------------------------------


def test_build_error_uses_the_original_exceptions_when_given() -> None:
    engine = make(LINE, attempts=1)
    state, _ = begin(engine)
    feed(engine, state, ok("a"), boom("b"), RollbackRaised("a", 1, err("undo")), ErrorHandled())
    step_cause, rollback_cause = KeyError("b"), OSError("undo")
    error = build_error(state, {("step", "b", None): step_cause, ("rollback", "a", None): rollback_cause})
    assert isinstance(error, WorkflowRollbackError)
    assert isinstance(error.primary_error, WorkflowStepError)
    assert error.primary_error.cause is step_cause
    assert error.rollback_errors[0].cause is rollback_cause
    assert error.flow_id == error.primary_error.flow_id == error.rollback_errors[0].flow_id == "flow-1"
    assert str(error) == "Step 'b' failed: 'b'; then rollback failed for 'a'"
    assert error.__cause__ is error.primary_error


def test_build_error_rebuilds_remote_errors_from_the_record() -> None:
    engine = make(LINE)
    state, _ = begin(engine)
    feed(engine, state, StepRaised("a", 1, err("card declined", "billing.CardDeclined")))
    error = build_error(state)
    assert isinstance(error, WorkflowStepError)
    assert str(error) == "Step 'a' failed: billing.CardDeclined: card declined"
    cause = error.cause
    assert isinstance(cause, RemoteError)
    assert (cause.type_name, cause.message) == ("billing.CardDeclined", "card declined")
    assert cause.traceback.endswith("billing.CardDeclined: card declined\n")
    assert error.__cause__ is cause


def test_build_error_of_a_completion_failure() -> None:
    engine = make(BARE)
    state, _ = begin(engine)
    feed(engine, state, CompleteRaised(err("no", "ValueError")))
    cause = ValueError("no")
    error = build_error(state, {("complete", None, None): cause})
    assert isinstance(error, WorkflowCompletionError)
    assert error.cause is cause
    assert str(error) == "on_complete failed: no"
    remote = build_error(state)
    assert isinstance(remote, WorkflowCompletionError) and isinstance(remote.cause, RemoteError)


def test_build_error_needs_an_error() -> None:
    state, _ = begin(make())
    with pytest.raises(ValueError, match="has no error"):
        build_error(state)


# --- what a transport asks before running a job -----------------------------------------------------------------


def test_start_applies_a_default_timeout_only_when_execute_gave_none() -> None:
    engine = make()
    state = engine.new_state("flow-1", {"n": 1}, now=100.0)
    assert engine.startable(state)
    engine.start(state, default_timeout=7.0)
    assert (state.timeout, state.deadline) == (7.0, 107.0)
    assert not engine.startable(state)
    own = engine.new_state("flow-2", {"n": 1}, timeout=3.0, now=100.0)
    engine.start(own, default_timeout=7.0)
    assert (own.timeout, own.deadline) == (3.0, 103.0)


def test_expects_only_the_outcomes_the_flow_waits_for() -> None:
    engine = make(LINE, attempts=2)
    state, actions = begin(engine)
    assert actions == [RunStep("a", 1)]
    assert engine.expects(state, RunStep("a", 1))
    assert not engine.expects(state, RunStep("a", 2))  # not scheduled yet
    assert not engine.expects(state, RunStep("b", 1))  # a later group
    assert not engine.expects(state, RunComplete())
    feed(engine, state, ok("a"), boom("b"))  # b is retried
    assert engine.expects(state, RunStep("b", 2))
    assert not engine.expects(state, RunStep("b", 1))  # the failed attempt, delivered again
    feed(engine, state, boom("b", 2))  # b fails for good: roll back a
    assert engine.expects(state, RunRollback("a", 1))
    assert not engine.expects(state, RunRollback("a", 2))
    assert not engine.expects(state, RunOnError())
    feed(engine, state, RollbackReturned("a", 1))
    assert engine.expects(state, RunOnError())
    feed(engine, state, ErrorHandled())
    for action in (RunStep("b", 2), RunRollback("a", 1), RunComplete(), RunOnError()):
        assert not engine.expects(state, action)  # nothing after the end


def test_expects_nothing_of_a_step_cancelled_by_a_timeout() -> None:
    engine = make(LINE)
    state, _ = begin(engine, timeout=1.0)
    feed(engine, state, LATE)
    assert not engine.expects(state, RunStep("a", 1))
