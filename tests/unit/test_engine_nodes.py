"""The engine's node kinds as a state machine: DAG groups, conditions, waits and signals, sleeps, for-each,
sub-workflows; and what a flow records of them (statuses, wake-up times, events)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

from plait.core import FlowStatus, SignalError, Workflow, WorkflowStepError
from plait.core.engine import (
    Action,
    CancelChild,
    CancelRunning,
    ChildSettled,
    CompensateChild,
    CompleteReturned,
    ErrorHandled,
    Evaluate,
    Evaluated,
    Finish,
    FlowState,
    ItemsNeeded,
    NotifyParent,
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
    build_error,
    child_flow_id,
    event_fields,
)
from tests.unit.test_engine import Data, Harness, Out, Res, begin, boom, err, feed, make, ok, status_of


def node_status(state: FlowState, name: str) -> str:
    return state.nodes[name]["status"]


def wake_of(state: FlowState) -> float | None:
    # A call, so that mypy does not narrow the field across the events that change it.
    return state.wake_at


class Approval(BaseModel):
    by: str


def item_ok(step: str, index: int, attempt: int = 1) -> StepReturned:
    return StepReturned(step, attempt, {"v": index}, index=index)


def item_boom(step: str, index: int, attempt: int = 1, *, retryable: bool = True) -> StepRaised:
    return StepRaised(step, attempt, err(f"boom {step}[{index}]"), retryable, index=index)


def kinds(state: FlowState) -> list[str]:
    return [e[0] for e in state.take_events()]


# --- DAG groups -----------------------------------------------------------------------------------------------

DAG = Workflow.define(name="dag", data=Data, result=Res).steps(
    lambda s: s.sequential(s.step("a", Out)).dag(
        s.step("b", Out),
        s.step("c", Out),
        s.step("d", Out, after=("b",)),
        s.step("e", Out, after=("b", "c")),
    )
)


def test_a_dag_node_starts_when_the_nodes_it_names_have_settled() -> None:
    engine = make(DAG, rollbacks="abcde")
    state, _ = begin(engine)
    assert feed(engine, state, ok("a")) == [RunStep("b", 1), RunStep("c", 1)]
    assert feed(engine, state, ok("b")) == [RunStep("d", 1)]  # e also waits for c
    assert feed(engine, state, ok("c")) == [RunStep("e", 1)]
    assert feed(engine, state, ok("e")) == []  # d still runs: the group is a barrier
    assert feed(engine, state, ok("d")) == [RunComplete()]


def test_a_dag_node_sees_its_ancestors_and_earlier_groups_only() -> None:
    engine = make(DAG)
    assert engine.visible("d") == ("a", "b")
    assert engine.visible("e") == ("a", "b", "c")
    assert engine.visible("c") == ("a",)


def test_a_failure_in_a_dag_starts_nothing_new_and_rolls_back_in_reverse_definition_order() -> None:
    engine = make(DAG, rollbacks="abcde")
    state, _ = begin(engine)
    feed(engine, state, ok("a"), ok("b"))  # d runs, c runs
    assert feed(engine, state, boom("c")) == []  # d finishes its attempt; e never starts
    assert feed(engine, state, ok("d")) == [RunRollback("d", 1)]
    assert state.rollbacks == ["d", "b", "a"]
    assert "e" not in state.nodes


# --- conditions -----------------------------------------------------------------------------------------------

BRANCH = Workflow.define(name="branch", data=Data, result=Res).steps(
    lambda s: s.sequential(
        s.step("a", Out),
        s.step("b", Out, when=lambda ctx: ctx.data.n > 1),
        s.step("c", Out),
    ).parallel(s.step("d", Out), when=lambda ctx: ctx.data.n > 5)
)


def test_a_false_condition_skips_the_step_and_the_flow_goes_on() -> None:
    engine = make(BRANCH)
    state, _ = begin(engine)
    assert feed(engine, state, ok("a")) == [Evaluate(1, (("when", "b"),))]
    assert state.nodes["b"] == {"status": "pending", "eval": 1}
    assert feed(engine, state, Evaluated(1, {"when:b": False})) == [RunStep("c", 1)]
    assert state.nodes["b"] == {"status": "skipped"}
    assert "b" not in state.results
    assert feed(engine, state, ok("c")) == [Evaluate(2, (("group", "1"),))]
    assert feed(engine, state, Evaluated(2, {"group:1": False})) == [RunComplete()]
    assert state.nodes["d"] == {"status": "skipped"}
    assert "step_skipped" in kinds(state)


def test_a_true_condition_runs_the_step() -> None:
    engine = make(BRANCH)
    state, _ = begin(engine)
    feed(engine, state, ok("a"))
    assert feed(engine, state, Evaluated(1, {"when:b": True})) == [RunStep("b", 1)]


def test_a_condition_that_raises_fails_its_step_without_retry_and_rolls_back() -> None:
    engine = make(BRANCH, attempts=5)
    state, _ = begin(engine)
    feed(engine, state, ok("a"))
    assert feed(engine, state, Evaluated(1, {}, {"when:b": err("no such plan")})) == [RunRollback("a", 1)]
    assert state.nodes["b"]["status"] == "failed"
    error = build_error(state)
    assert isinstance(error, WorkflowStepError) and error.step_name == "b"


def test_a_stale_evaluation_changes_nothing() -> None:
    engine = make(BRANCH)
    state, _ = begin(engine)
    feed(engine, state, ok("a"), Evaluated(1, {"when:b": False}))
    before = state.to_dict()
    assert feed(engine, state, Evaluated(1, {"when:b": True})) == []
    assert state.to_dict() == before


# --- signals --------------------------------------------------------------------------------------------------

APPROVE = Workflow.define(name="approve", data=Data, result=Res).steps(
    lambda s: s.sequential(s.step("a", Out), s.wait_for("approval", Approval, timeout=60), s.step("b", Out))
)


def test_a_wait_makes_the_flow_waiting_until_its_signal_arrives() -> None:
    engine = make(APPROVE, rollbacks="ab")
    state, _ = begin(engine)
    assert feed(engine, state, ok("a")) == []
    assert status_of(state) == FlowStatus.WAITING
    assert state.nodes["approval"] == {"status": "waiting", "attempt": 1, "wake": 160.0}
    assert wake_of(state) == 160.0
    assert "flow_waiting" in kinds(state)
    assert feed(engine, state, Signal("approval", {"by": "ann"})) == [RunStep("b", 1)]
    assert status_of(state) == FlowStatus.RUNNING
    assert state.results["approval"] == {"by": "ann"}
    assert wake_of(state) is None
    assert kinds(state) == ["signal_received", "step_completed", "step_started"]


def test_a_signal_that_arrives_early_is_kept_and_used_when_the_flow_gets_there() -> None:
    engine = make(APPROVE)
    state, _ = begin(engine)
    assert feed(engine, state, Signal("approval", {"by": "bob"})) == []
    assert feed(engine, state, Signal("approval", {"by": "bob"})) == []  # the same again: accepted
    assert feed(engine, state, ok("a")) == [RunStep("b", 1)]
    assert state.nodes["approval"]["status"] == "completed"


def test_a_second_signal_with_another_payload_unknown_names_and_ended_flows_are_refused() -> None:
    engine = make(APPROVE)
    state, _ = begin(engine)
    feed(engine, state, Signal("approval", {"by": "bob"}))
    with pytest.raises(SignalError, match="another payload"):
        feed(engine, state, Signal("approval", {"by": "eve"}))
    with pytest.raises(SignalError, match=r"waits for no signal 'nope'.*'approval'"):
        feed(engine, state, Signal("nope", {}))
    feed(engine, state, ok("a"), ok("b"), CompleteReturned({"ok": True}))
    with pytest.raises(SignalError, match="has ended"):
        feed(engine, state, Signal("approval", {"by": "bob"}))


def test_a_wait_times_out_into_a_step_failure_and_the_saga_rolls_back() -> None:
    engine = make(APPROVE, attempts=3, rollbacks="ab")
    state, _ = begin(engine)
    feed(engine, state, ok("a"))
    engine.now = 159.0
    assert feed(engine, state, Tick()) == []  # not yet
    engine.now = 160.0
    assert feed(engine, state, Tick()) == [RunRollback("a", 1)]
    error = build_error(state)
    assert isinstance(error, WorkflowStepError) and error.step_name == "approval"
    assert str(error) == "Step 'approval' failed: TimeoutError: no signal 'approval' arrived within 60s"
    with pytest.raises(SignalError, match="no longer waits"):
        feed(engine, state, Signal("approval", {"by": "late"}))


# --- sleeps ---------------------------------------------------------------------------------------------------

SLEEPY = Workflow.define(name="sleepy", data=Data, result=Res).steps(
    lambda s: s.sequential(
        s.sleep("nap", seconds=30),
        s.sleep("until", until=lambda ctx: datetime(2030, 1, 1, tzinfo=UTC)),
        s.sleep("zero", seconds=0),
    )
)


def test_a_sleep_waits_until_its_time_then_the_flow_goes_on() -> None:
    engine = make(SLEEPY)
    state, actions = begin(engine)
    assert actions == []
    assert (state.status, state.wake_at) == (FlowStatus.WAITING, 130.0)
    engine.now = 131.0
    assert feed(engine, state, Tick()) == [Evaluate(1, (("until", "until"),))]
    assert "nap" not in state.results  # a sleep has no result
    wake = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert feed(engine, state, Evaluated(1, {"until:until": wake})) == []
    assert state.wake_at == wake
    engine.now = wake
    assert feed(engine, state, Tick()) == [RunComplete()]  # a zero-second sleep passes at once
    assert [state.nodes[n]["status"] for n in ("nap", "until", "zero")] == ["completed"] * 3


def test_a_deadline_while_waiting_times_the_flow_out() -> None:
    engine = make(SLEEPY)
    state, _ = begin(engine, timeout=10.0)
    assert state.wake_at == 110.0  # the deadline comes before the sleep's end
    engine.now = 110.0
    assert feed(engine, state, Tick()) == [RunOnError()]
    assert state.nodes["nap"]["status"] == "cancelled"


# --- for-each -------------------------------------------------------------------------------------------------

FAN = Workflow.define(name="fan", data=Data, result=Res).steps(
    lambda s: (
        s.sequential(s.step("a", Out))
        .parallel(s.for_each("each", Out, items=lambda ctx: range(ctx.data.n), concurrency=2))
        .sequential(s.step("z", Out))
    )
)


def fan_out(engine: Harness, n: int) -> FlowState:
    state, _ = begin(engine)
    assert feed(engine, state, ok("a")) == [Evaluate(1, (("items", "each"),))]
    return state


def test_a_for_each_runs_its_items_within_its_concurrency_and_collects_their_outputs_in_order() -> None:
    engine = make(FAN)
    state = fan_out(engine, 3)
    assert feed(engine, state, Evaluated(1, {"items:each": ["x", "y", "z"]})) == [
        RunStep("each", 1, 0.0, 0),
        RunStep("each", 1, 0.0, 1),
    ]
    assert state.nodes["each"]["total"] == 3
    assert feed(engine, state, item_ok("each", 1)) == [RunStep("each", 1, 0.0, 2)]
    assert feed(engine, state, item_ok("each", 2)) == []
    assert feed(engine, state, item_ok("each", 0)) == [RunStep("z", 1)]
    assert state.results["each"] == [{"v": 0}, {"v": 1}, {"v": 2}]
    assert state.items["each"][0] == {"value": "x", "status": "completed", "attempt": 1, "output": {"v": 0}}


def test_no_items_complete_the_for_each_at_once() -> None:
    engine = make(FAN)
    state = fan_out(engine, 0)
    assert feed(engine, state, Evaluated(1, {"items:each": []})) == [RunStep("z", 1)]
    assert state.results["each"] == []


def test_an_item_is_retried_on_its_own() -> None:
    engine = make(FAN, attempts=2)
    state = fan_out(engine, 2)
    feed(engine, state, Evaluated(1, {"items:each": [1, 2]}))
    assert feed(engine, state, item_boom("each", 0)) == [RunStep("each", 2, 0.5, 0)]
    assert engine.expects(state, RunStep("each", 2, 0.5, 0))
    assert not engine.expects(state, RunStep("each", 1, 0.0, 0))
    assert feed(engine, state, item_ok("each", 1), item_ok("each", 0, 2)) == [RunStep("z", 1)]


def test_an_item_failing_for_good_fails_the_node_and_rolls_back_completed_items_in_reverse_index_order() -> None:
    engine = make(FAN, rollbacks=("a", "each"))
    state = fan_out(engine, 5)
    feed(engine, state, Evaluated(1, {"items:each": [0, 1, 2, 3, 4]}))
    feed(engine, state, item_ok("each", 0))  # starts 2
    feed(engine, state, item_ok("each", 2))  # starts 3
    assert feed(engine, state, item_boom("each", 1)) == []  # 3 still runs; nothing new starts
    assert state.nodes["each"]["failing"] is True
    assert feed(engine, state, item_ok("each", 3)) == [RunRollback("each", 1, 0.0, 3)]
    assert state.nodes["each"]["undo"] == [[3, 2], [0, 0]]
    assert feed(engine, state, RollbackReturned("each", 1, 3)) == [RunRollback("each", 1, 0.0, 2)]
    assert feed(engine, state, RollbackReturned("each", 1, 2)) == [RunRollback("each", 1, 0.0, 0)]
    assert feed(engine, state, RollbackReturned("each", 1, 0)) == [RunRollback("a", 1)]
    assert state.nodes["each"]["status"] == "compensated"
    statuses = [state.items["each"][i]["status"] for i in range(4)]
    assert statuses == ["compensated", "failed", "compensated", "compensated"]
    error = build_error(state)
    assert isinstance(error, WorkflowStepError)
    assert (error.step_name, error.index) == ("each", 1)
    assert str(error) == "Step 'each' (item 1) failed: RuntimeError: boom each[1]"


def test_item_retries_waiting_out_their_backoff_are_dropped_when_an_item_fails_for_good() -> None:
    engine = make(FAN, attempts=3)
    state = fan_out(engine, 2)
    feed(engine, state, Evaluated(1, {"items:each": [0, 1]}))
    assert feed(engine, state, item_boom("each", 0)) == [RunStep("each", 2, 0.5, 0)]
    actions = feed(engine, state, item_boom("each", 1, retryable=False))
    assert actions == [CancelRunning(items=(("each", 0, 2),)), RunRollback("a", 1)]
    assert not engine.expects(state, RunStep("each", 2, 0.5, 0))


def test_a_durable_provider_is_asked_for_the_items_it_did_not_load() -> None:
    engine = make(FAN, rollbacks=("each",))
    state = fan_out(engine, 2)
    feed(engine, state, Evaluated(1, {"items:each": [0, 1]}), item_ok("each", 0))
    saved = json.dumps(state.to_dict())
    fresh = FlowState.from_dict(json.loads(saved))  # as a worker loads it, with one item at hand
    fresh.items = {"each": {1: {"value": 1, "status": "pending"}}}
    with pytest.raises(ItemsNeeded) as needed:  # the node completes: its result needs every output
        engine.handle(fresh, item_ok("each", 1))
    assert (needed.value.node, needed.value.indices) == ("each", None)
    fresh = FlowState.from_dict(json.loads(saved))
    fresh.items = {"each": {0: state.items["each"][0], 1: {"value": 1, "status": "pending"}}}
    fresh.items_loaded = {"each"}
    assert engine.handle(fresh, item_ok("each", 1)) == [RunStep("z", 1)]
    with pytest.raises(ItemsNeeded):
        engine.expects(FlowState.from_dict(json.loads(saved)), RunStep("each", 1, 0.0, 1))


def test_an_item_completion_changes_the_flow_record_by_a_constant_amount() -> None:
    sizes = []
    for n in (10, 1000):
        engine = make(FAN)
        state = fan_out(engine, n)
        feed(engine, state, Evaluated(1, {"items:each": list(range(n))}))
        state.items_changed = frozenset()
        feed(engine, state, item_ok("each", 0))
        sizes.append(len(str(state.to_dict())))
        assert state.items_changed == {("each", 0)}  # one item record to write back
    assert sizes[1] - sizes[0] < 10  # the flow's own record does not grow with the number of items


# --- sub-workflows --------------------------------------------------------------------------------------------

CHILD = Workflow.define(name="child", data=Data, result=Out).steps(lambda s: s.sequential(s.step("c1", Out)))
PARENT = Workflow.define(name="parent", data=Data, result=Res).steps(
    lambda s: s.sequential(
        s.step("a", Out),
        s.sub_workflow("kid", CHILD, data=lambda ctx: Data(n=ctx.data.n + 1)),
        s.step("b", Out),
    )
)


def start_child(engine: Harness) -> FlowState:
    state, _ = begin(engine)
    assert feed(engine, state, ok("a")) == [Evaluate(1, (("data", "kid"),))]
    assert feed(engine, state, Evaluated(1, {"data:kid": {"n": 2}})) == [
        StartChild("kid", "child", "flow-1.kid", {"n": 2})
    ]
    assert state.status == FlowStatus.RUNNING  # a running child is work under way
    return state


def test_a_sub_workflow_starts_a_child_with_a_deterministic_id_and_completes_with_its_result() -> None:
    engine = make(PARENT, rollbacks="ab")
    state = start_child(engine)
    assert child_flow_id("flow-1", "kid") == "flow-1.kid"
    assert feed(engine, state, ChildSettled("kid", "flow-other", "completed", {"v": 9})) == []  # not our child
    assert feed(engine, state, ChildSettled("kid", "flow-1.kid", "completed", {"v": 9})) == [RunStep("b", 1)]
    assert state.results["kid"] == {"v": 9}


def test_a_failed_child_fails_the_node() -> None:
    engine = make(PARENT, rollbacks="ab")
    state = start_child(engine)
    actions = feed(engine, state, ChildSettled("kid", "flow-1.kid", "failed", None, "Step 'c1' failed: no"))
    assert actions == [RunRollback("a", 1)]
    assert "child flow 'flow-1.kid' failed: Step 'c1' failed: no" in str(build_error(state))


def test_a_completed_child_is_unwound_in_its_place_when_the_parent_rolls_back() -> None:
    engine = make(PARENT, rollbacks="ab")
    state = start_child(engine)
    feed(engine, state, ChildSettled("kid", "flow-1.kid", "completed", {"v": 9}))
    assert feed(engine, state, boom("b")) == [
        CompensateChild("kid", "child", "flow-1.kid", "its parent flow 'flow-1' is rolling back")
    ]
    assert node_status(state, "kid") == "compensating"
    assert feed(engine, state, ChildSettled("kid", "flow-1.kid", "compensated")) == [RunRollback("a", 1)]
    assert node_status(state, "kid") == "compensated"


def test_a_child_compensated_with_failures_is_a_rollback_error_of_the_parent() -> None:
    engine = make(PARENT, rollbacks="ab")
    state = start_child(engine)
    feed(engine, state, ChildSettled("kid", "flow-1.kid", "completed", {"v": 9}), boom("b"))
    feed(engine, state, ChildSettled("kid", "flow-1.kid", "compensated", None, "refund failed", True))
    assert [r["step"] for r in state.rollback_errors] == ["kid"]
    assert state.nodes["kid"]["status"] == "compensation_failed"


def test_cancelling_the_parent_cancels_its_running_child() -> None:
    engine = make(PARENT, rollbacks="ab")
    state = start_child(engine)
    from plait.core.engine import Cancel

    actions = feed(engine, state, Cancel("operator"))
    assert actions == [
        CancelChild("child", "flow-1.kid", "its parent flow 'flow-1' was cancelled: operator"),
        RunRollback("a", 1),
    ]
    # It completed before the cancellation reached it: it is undone.
    assert feed(engine, state, ChildSettled("kid", "flow-1.kid", "completed", {"v": 1})) == [
        CompensateChild("kid", "child", "flow-1.kid", "its parent flow 'flow-1' no longer wants it")
    ]


def test_a_child_tells_its_parent_when_it_ends() -> None:
    engine = make(CHILD)
    parent = {"flow_id": "flow-1", "workflow": "parent", "node": "kid"}
    state = engine.new_state("flow-1.kid", {"n": 2}, parent=parent, depth=2)
    engine.start(state)
    assert feed(engine, state, ok("c1"), CompleteReturned({"v": 3})) == [
        Finish(FlowStatus.COMPLETED),
        NotifyParent(parent, ChildSettled("kid", "flow-1.kid", "completed", {"v": 3})),  # type: ignore[arg-type]
    ]


# --- events ---------------------------------------------------------------------------------------------------


def test_every_transition_is_an_event_numbered_in_order() -> None:
    engine = make(APPROVE, attempts=2, rollbacks="ab")
    state, _ = begin(engine)
    feed(engine, state, boom("a", 1), ok("a", 2), Signal("approval", {"by": "x"}), boom("b", 1))
    feed(engine, state, boom("b", 2), RollbackRaised("a", 1, err()), RollbackReturned("a", 2), ErrorHandled())
    events = [event_fields(record) for record in state.take_events()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["type"] for e in events] == [
        "flow_started",
        "step_started",
        "step_failed",
        "step_started",
        "step_completed",
        "step_started",
        "flow_waiting",
        "signal_received",
        "step_completed",
        "step_started",
        "step_failed",
        "step_started",
        "step_failed",
        "rollback_started",
        "rollback_failed",
        "rollback_completed",
        "flow_failed",
    ]
    assert events[2] == {
        "type": "step_failed",
        "seq": 3,
        "at": 100.0,
        "step": "a",
        "index": None,
        "attempt": 1,
        "error": "RuntimeError: boom a",
        "will_retry": True,
        "delay": 0.5,
    }
    assert events[-1]["error"] == "Step 'b' failed: RuntimeError: boom b"
    assert state.take_events() == []


def test_an_action_list_is_never_shared_between_events() -> None:
    # The engine builds new lists: a provider may keep or change what it is given.
    engine = make(DAG)
    state, first = begin(engine)
    first.append(RunComplete())
    second: list[Action] = feed(engine, state, ok("a"))
    assert RunComplete() not in second


def test_a_flow_that_waited_in_an_earlier_group_is_running_again_in_the_next() -> None:
    nap_then_steps = Workflow.define(name="nap-then", data=Data, result=Res).steps(
        lambda s: s.sequential(s.sleep("nap", seconds=5)).parallel(s.step("a", Out), s.step("b", Out))
    )
    engine = make(nap_then_steps)
    state, _ = begin(engine)
    assert status_of(state) == FlowStatus.WAITING
    engine.now += 5
    assert feed(engine, state, Tick()) == [RunStep("a", 1), RunStep("b", 1)]
    assert status_of(state) == FlowStatus.RUNNING


def test_the_order_of_completed_rollbacks_is_recorded_in_doubt_steps_first() -> None:
    engine = make(in_doubt=("c",))
    state, _ = begin(engine)
    feed(engine, state, ok("a"), ok("b"), boom("c"))
    assert state.rollbacks == ["c", "b", "a"]
    feed(engine, state, RollbackReturned("c", 1), RollbackReturned("b", 1), RollbackReturned("a", 1))
    assert state.compensated == ["c", "b", "a"]


def test_an_in_doubt_step_cut_short_by_a_cancellation_is_rolled_back_first() -> None:
    from plait.core.engine import Cancel

    engine = make(in_doubt=("b",))
    state, _ = begin(engine)
    feed(engine, state, ok("a"), ok("c"))
    assert feed(engine, state, Cancel("stop")) == [CancelRunning((("b", 1),)), RunRollback("b", 1)]
    assert state.rollbacks == ["b", "c", "a"]
