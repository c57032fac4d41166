"""Control flow: DAG groups, conditions, signals, durable sleeps, for-each, sub-workflows, undo, waiting flows."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from plait.core import (
    FlowNotFoundError,
    FlowStateError,
    FlowStatus,
    SignalError,
    WorkflowCancelledError,
    WorkflowCompensatedError,
    WorkflowProvider,
    WorkflowRollbackError,
    WorkflowStepError,
    WorkflowTimeoutError,
    WorkflowValidationError,
)
from plait.testing._contract_base import ContractBase, cause_message, cause_name
from plait.testing._flows import (
    BRANCH,
    DAG,
    EACH,
    KID,
    NAP,
    NAP_SECONDS,
    PARENT,
    SWITCH,
    UNTIL,
    WAIT,
    WAIT_BRIEFLY,
    WAIT_TIMEOUT,
)
from plait.testing._scripted import (
    DIAMOND,
    FOREVER,
    Declined,
    Do,
    EachOut,
    FlowOut,
    Note,
    Order,
    Scripted,
    StepOut,
)

__all__ = ["ControlFlowRules"]


class ControlFlowRules(ContractBase):
    """DAG groups, conditions, signals, sleeps, for-each, sub-workflows, undo, and the ``waiting`` status."""

    # -- DAG groups --

    async def test_a_dag_node_starts_once_the_nodes_it_names_have_settled(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(DAG, {"c": Do(sleep=0.2)})
        async with self.running(provider, (DAG, consumer, None)):
            await self.result(await provider.execute(DAG, Order(key="k")))
        b, c, d, e = (consumer.of("step", n)[0] for n in "bcde")
        assert b.end is not None and c.end is not None
        assert d.start >= b.end and d.start < c.end  # d waited for b only
        assert e.start >= c.end  # e waited for b and c
        assert consumer.of("step", "f")[0].start >= max(x.end or 0 for x in (d, e))  # the group is a barrier

    async def test_a_dag_node_sees_its_ancestors_and_earlier_groups_only(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(DAG)
        async with self.running(provider, (DAG, consumer, None)):
            await self.result(await provider.execute(DAG, Order(key="k")))
        seen = {c.step: sorted((c.ctx.results if c.ctx else {}).keys()) for c in consumer.of("step")}
        assert seen == {
            "a": [],
            "b": ["a"],
            "c": ["a"],
            "d": ["a", "b"],
            "e": ["a", "b", "c"],
            "f": ["a", "b", "c", "d", "e"],
        }

    async def test_a_failure_in_a_dag_starts_nothing_new_and_rolls_back_in_reverse_definition_order(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(DAG, {"c": Do(sleep=0.2, fail=FOREVER), "d": Do(sleep=0.3)})
        async with self.running(provider, (DAG, consumer, None)):
            error = await self.failure(await provider.execute(DAG, Order(key="k")))
        assert isinstance(error, WorkflowStepError) and error.step_name == "c"
        assert consumer.of("step", "e") == [] and consumer.of("step", "f") == []
        assert [x.outcome for x in consumer.of("step", "d")] == ["ok"]  # d finished its attempt
        assert consumer.names("rollback") == ["d", "b", "a"]

    # -- conditions --

    async def test_a_false_condition_skips_the_step_without_handler_rollback_or_result(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(BRANCH, {"c": Do(fail=FOREVER)})
        async with self.running(provider, (BRANCH, consumer, None)):
            handle = await provider.execute(BRANCH, Order(key="k", amount=1))
            await self.failure(handle)
            info = await provider.describe(handle.id)
        assert consumer.of("step", "b") == []
        assert info.step("b").status == "skipped"
        assert consumer.names("rollback") == ["a"]  # no rollback for the skipped b
        c = consumer.of("step", "c")[0]
        assert c.ctx is not None and "b" not in c.ctx.results

    async def test_a_true_condition_runs_the_step(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(BRANCH)
        async with self.running(provider, (BRANCH, consumer, None)):
            result = await self.result(await provider.execute(BRANCH, Order(key="k", amount=9)))
        assert [c.attempt for c in consumer.of("step", "b")] == [1]
        assert sorted(r.split(":")[0] for r in result.results) == ["a", "b", "c", "d", "e", "f", "g"]

    async def test_a_false_group_condition_skips_every_node_of_the_group(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(BRANCH)
        async with self.running(provider, (BRANCH, consumer, None)):
            handle = await provider.execute(BRANCH, Order(key="k", amount=3))
            result = await self.result(handle)
            info = await provider.describe(handle.id)
        assert (info.step("d").status, info.step("e").status) == ("skipped", "skipped")
        assert [r.split(":")[0] for r in result.results] == ["a", "b", "c", "f", "g"]

    async def test_a_dag_node_after_a_skipped_one_still_runs(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(BRANCH)
        async with self.running(provider, (BRANCH, consumer, None)):
            handle = await provider.execute(BRANCH, Order(key="skip-f", amount=1))
            await self.result(handle)
            info = await provider.describe(handle.id)
        assert info.step("f").status == "skipped"
        assert info.step("g").status == "completed"
        g = consumer.of("step", "g")[0]
        assert g.ctx is not None and "f" not in g.ctx.results

    async def test_groups_with_exclusive_conditions_are_a_branch(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SWITCH)
        async with self.running(provider, (SWITCH, consumer, None)):
            first = await self.result(await provider.execute(SWITCH, Order(key="apple")))
            second = await self.result(await provider.execute(SWITCH, Order(key="banana")))
        assert [r.split(":")[0] for r in first.results] == ["a"]
        assert [r.split(":")[0] for r in second.results] == ["b"]

    async def test_a_condition_that_raises_fails_its_step_without_retry(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SWITCH)
        async with self.running(provider, (SWITCH, consumer, self.options(attempts=3))):
            handle = await provider.execute(SWITCH, Order(key="raise"))
            error = await self.failure(handle)
            info = await provider.describe(handle.id)
        assert isinstance(error, WorkflowStepError) and error.step_name == "c"
        assert cause_name(error) == "ZeroDivisionError"
        assert info.step("c").status == "failed" and info.step("c").attempts == 0  # its handler never ran
        assert consumer.names("rollback") == ["b"]
        assert len(consumer.of("on_error")) == 1

    # -- signals --

    async def test_a_flow_waits_for_its_signal_holding_nothing_and_goes_on_when_it_arrives(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(WAIT)
        async with self.running(provider, (WAIT, consumer, None)):
            handle = await provider.execute(WAIT, Order(key="k"))
            await self.status_becomes(provider, handle.id, FlowStatus.WAITING)
            info = await provider.describe(handle.id)
            assert (info.step("approval").status, info.step("approval").kind) == ("waiting", "wait_for")
            await provider.signal(handle.id, "approval", Note(by="ann"))
            result = await self.result(handle)
            info = await provider.describe(handle.id)
        assert result.results == ["a:AOut", "approval:Note", "b:BOut"]
        b = consumer.of("step", "b")[0]
        assert b.ctx is not None and b.ctx.results["approval"] == Note(by="ann")
        assert info.step("approval").signal == {"by": "ann"}

    async def test_a_signal_sent_before_the_flow_gets_there_is_kept(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(WAIT, {"a": Do(sleep=0.2)})
        async with self.running(provider, (WAIT, consumer, None)):
            handle = await provider.execute(WAIT, Order(key="k"))
            await provider.signal(handle.id, "approval", {"by": "early"})
            result = await self.result(handle)
        assert result.results == ["a:AOut", "approval:Note", "b:BOut"]

    async def test_the_same_signal_again_is_accepted_and_another_payload_is_refused(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(WAIT, {"a": Do(sleep=0.3)})
        async with self.running(provider, (WAIT, consumer, None)):
            handle = await provider.execute(WAIT, Order(key="k"))
            await provider.signal(handle.id, "approval", Note(by="ann"))
            await provider.signal(handle.id, "approval", Note(by="ann"))
            with pytest.raises(SignalError, match="another payload"):
                await provider.signal(handle.id, "approval", Note(by="eve"))
            await self.result(handle)
        b = consumer.of("step", "b")[0]
        assert b.ctx is not None and b.ctx.results["approval"] == Note(by="ann")

    async def test_signals_nobody_waits_for_are_refused(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(WAIT)
        async with self.running(provider, (WAIT, consumer, None)):
            handle = await provider.execute(WAIT, Order(key="k"))
            with pytest.raises(SignalError, match="waits for no signal 'shipping'"):
                await provider.signal(handle.id, "shipping", Note(by="x"))
            with pytest.raises(FlowNotFoundError):
                await provider.signal(f"flow-contract-{uuid.uuid4().hex}", "approval", Note(by="x"))
            await provider.signal(handle.id, "approval", Note(by="x"))
            await self.result(handle)
            with pytest.raises(SignalError, match="has ended"):
                await provider.signal(handle.id, "approval", Note(by="x"))

    async def test_a_bad_signal_payload_is_a_validation_error_and_nothing_is_stored(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(WAIT)
        async with self.running(provider, (WAIT, consumer, None)):
            handle = await provider.execute(WAIT, Order(key="k"))
            await self.status_becomes(provider, handle.id, FlowStatus.WAITING)
            with pytest.raises(WorkflowValidationError, match="payload of signal 'approval'"):
                await provider.signal(handle.id, "approval", {"who": "nobody"})
            assert (await provider.describe(handle.id)).signals == {}
            await provider.signal(handle.id, "approval", {"by": "fine"})
            await self.result(handle)

    async def test_a_signal_timeout_fails_the_wait_with_a_timeout_and_rolls_back(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(WAIT_BRIEFLY)
        async with self.running(provider, (WAIT_BRIEFLY, consumer, self.options(attempts=3))):
            started = time.monotonic()
            handle = await provider.execute(WAIT_BRIEFLY, Order(key="k"))
            error = await self.failure(handle)
            took = time.monotonic() - started
            with pytest.raises(SignalError):
                await provider.signal(handle.id, "approval", Note(by="late"))
        assert WAIT_TIMEOUT <= took <= WAIT_TIMEOUT + self.timer_latency + self.latency * 3
        assert isinstance(error, WorkflowStepError) and error.step_name == "approval"
        assert cause_name(error) == "TimeoutError"
        assert consumer.names("rollback") == ["a"]
        assert consumer.of("step", "b") == []

    # -- sleeps --

    async def test_a_sleep_makes_the_flow_waiting_then_it_goes_on(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(NAP)
        async with self.running(provider, (NAP, consumer, None)):
            handle = await provider.execute(NAP, Order(key="k"))
            await self.status_becomes(provider, handle.id, FlowStatus.WAITING)
            info = await provider.describe(handle.id)
            assert info.step("nap").kind == "sleep" and info.step("nap").wake_at is not None
            await self.result(handle)
        a, b = consumer.of("step", "a")[0], consumer.of("step", "b")[0]
        assert a.end is not None
        slept = b.start - a.end
        assert NAP_SECONDS - 0.05 <= slept <= NAP_SECONDS + self.timer_latency + self.latency * 3

    async def test_a_sleep_until_a_time_computed_from_the_flow(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(UNTIL)
        async with self.running(provider, (UNTIL, consumer, None)):
            await self.result(await provider.execute(UNTIL, Order(key="k", amount=3)))
        a, b = consumer.of("step", "a")[0], consumer.of("step", "b")[0]
        assert a.end is not None and 0.25 <= b.start - a.end <= 0.3 + self.timer_latency + self.latency * 3

    async def test_sleeping_does_not_count_against_the_step_timeout(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(NAP)
        options = self.options(step_timeout=NAP_SECONDS / 2 + self.latency)
        async with self.running(provider, (NAP, consumer, options)):
            assert (await self.result(await provider.execute(NAP, Order(key="k")))).key == "k"

    async def test_the_workflow_timeout_applies_while_sleeping(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(NAP)
        async with self.running(provider, (NAP, consumer, None)):
            handle = await provider.execute(NAP, Order(key="k"), timeout=NAP_SECONDS / 3)
            error = await self.failure(handle)
            info = await provider.describe(handle.id)
        assert isinstance(error, WorkflowTimeoutError)
        assert info.step("nap").status == "cancelled"
        assert consumer.names("rollback") == ["a"]

    # -- for-each --

    async def test_a_for_each_runs_every_item_and_collects_their_outputs_in_item_order(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(EACH, {"each": Do(sleep=0.05)})
        async with self.running(provider, (EACH, consumer, None)):
            handle = await provider.execute(EACH, Order(key="k", amount=5))
            result = await self.result(handle)
            info = await provider.describe(handle.id)
        items = consumer.of("step", "each")
        assert sorted((c.index or 0, c.step_ctx.item) for c in items) == [(i, f"k-{i}") for i in range(5)]
        z = consumer.of("step", "z")[0]
        assert z.ctx is not None
        outputs = z.ctx.results["each"]
        assert [o.index for o in outputs] == [0, 1, 2, 3, 4] and all(isinstance(o, EachOut) for o in outputs)
        assert "each:list" in result.results
        assert (info.step("each").items_done, info.step("each").items_total) == (5, 5)

    async def test_for_each_concurrency_bounds_the_items_running_at_once(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(EACH, {"each": Do(sleep=0.1)})
        async with self.running(provider, (EACH, consumer, None)):
            await self.result(await provider.execute(EACH, Order(key="k", amount=7)))
        items = consumer.of("step", "each")
        peak = max(sum(1 for o in items if o.start <= c.start < (o.end or 0)) for c in items)
        assert peak <= 3

    async def test_an_item_is_retried_on_its_own(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(EACH, {"each": Do(fail=1, items=frozenset({2}))})
        async with self.running(provider, (EACH, consumer, self.options(attempts=2))):
            await self.result(await provider.execute(EACH, Order(key="k", amount=4)))
        attempts = sorted((c.index or 0, c.attempt) for c in consumer.of("step", "each"))
        assert attempts == [(0, 1), (1, 1), (2, 1), (2, 2), (3, 1)]
        retried = [c for c in consumer.of("step", "each") if c.index == 2]
        assert all(c.step_ctx.item == "k-2" for c in retried)

    async def test_an_item_failing_for_good_fails_the_node_and_completed_items_roll_back_in_reverse_index_order(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(EACH, {"each": Do(fail=FOREVER, items=frozenset({4}))})
        async with self.running(provider, (EACH, consumer, None)):
            handle = await provider.execute(EACH, Order(key="k", amount=8))
            error = await self.failure(handle)
            info = await provider.describe(handle.id)
        assert isinstance(error, WorkflowStepError)
        assert (error.step_name, error.index) == ("each", 4)
        started = sorted(c.index or 0 for c in consumer.of("step", "each"))
        assert 4 in started and max(started) <= 6  # nothing new started after the failure (3 at a time)
        completed = sorted(c.index or 0 for c in consumer.of("step", "each") if c.outcome == "ok")
        rollbacks = [(c.step, c.index) for c in consumer.of("rollback")]
        assert rollbacks == [("each", i) for i in reversed(completed)] + [("a", None)]
        for call in consumer.of("rollback", "each"):
            assert call.step_ctx.item == f"k-{call.index}"
            output = call.step_ctx.output
            assert isinstance(output, EachOut) and output.index == call.index
        assert info.step("each").status == "compensated"

    async def test_no_items_complete_the_for_each_with_an_empty_list(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(EACH)
        async with self.running(provider, (EACH, consumer, None)):
            await self.result(await provider.execute(EACH, Order(key="k", amount=0)))
        z = consumer.of("step", "z")[0]
        assert z.ctx is not None and z.ctx.results["each"] == []

    # -- sub-workflows --

    async def test_a_sub_workflow_runs_a_child_flow_and_completes_with_its_result(
        self, provider: WorkflowProvider
    ) -> None:
        parent, kid = Scripted(PARENT), Scripted(KID)
        async with self.running(provider, (PARENT, parent, None), (KID, kid, None)):
            handle = await provider.execute(PARENT, Order(key="p"))
            result = await self.result(handle)
            info = await provider.describe(handle.id)
            child_id = info.step("kid").child_id
            assert child_id is not None
            child = await provider.describe(child_id)
        assert result.results == ["a:AOut", "kid:FlowOut", "b:BOut"]
        assert kid.names("step") == ["k1", "k2"]
        k1 = kid.of("step", "k1")[0]
        assert k1.ctx is not None and k1.ctx.data.key == "p-kid"
        assert (child.workflow, child.status, child.parent_id) == ("contract-kid", FlowStatus.COMPLETED, handle.id)
        b = parent.of("step", "b")[0]
        assert b.ctx is not None and b.ctx.results["kid"] == FlowOut(key="p-kid", results=["k1:AOut", "k2:BOut"])

    async def test_the_child_id_is_derived_from_the_parent_and_the_node(self, provider: WorkflowProvider) -> None:
        parent, kid = Scripted(PARENT), Scripted(KID)
        async with self.running(provider, (PARENT, parent, None), (KID, kid, None)):
            first = await provider.execute(PARENT, Order(key="p"), id=f"flow-contract-{uuid.uuid4().hex}")
            await self.result(first)
            child_id = (await provider.describe(first.id)).step("kid").child_id
        assert child_id == f"{first.id}.kid"

    async def test_a_failed_child_fails_the_node_and_the_parent_rolls_back(self, provider: WorkflowProvider) -> None:
        parent, kid = Scripted(PARENT), Scripted(KID, {"k2": Do(fail=FOREVER)})
        async with self.running(provider, (PARENT, parent, None), (KID, kid, None)):
            handle = await provider.execute(PARENT, Order(key="p"))
            error = await self.failure(handle)
        assert isinstance(error, WorkflowStepError) and error.step_name == "kid"
        assert "Step 'k2' failed" in cause_message(error)
        assert kid.names("rollback") == ["k1"]  # the child rolled itself back
        assert parent.names("rollback") == ["a"]
        assert parent.of("step", "b") == []

    async def test_a_completed_child_is_unwound_when_its_parent_rolls_back(self, provider: WorkflowProvider) -> None:
        parent, kid = Scripted(PARENT, {"b": Do(fail=FOREVER)}), Scripted(KID)
        async with self.running(provider, (PARENT, parent, None), (KID, kid, None)):
            handle = await provider.execute(PARENT, Order(key="p"))
            await self.failure(handle)
            info = await provider.describe(handle.id)
            child_id = info.step("kid").child_id
            assert child_id is not None
            child = await provider.describe(child_id)
        assert kid.names("rollback") == ["k2", "k1"]  # its own saga, in reverse order
        assert parent.names("rollback") == ["a"]
        assert kid.of("rollback")[0].start >= max(c.end or 0 for c in kid.of("step"))
        assert parent.of("rollback")[0].start >= max(c.end or 0 for c in kid.of("rollback"))  # in its place
        assert child.status == FlowStatus.COMPENSATED
        assert info.step("kid").status == "compensated"

    async def test_cancelling_the_parent_cancels_its_running_child(self, provider: WorkflowProvider) -> None:
        parent, kid = Scripted(PARENT), Scripted(KID, {"k1": Do(sleep=5.0)})
        async with self.running(provider, (PARENT, parent, None), (KID, kid, None)):
            handle = await provider.execute(PARENT, Order(key="p"))
            await self.until(lambda: bool(kid.of("step", "k1")), "the child to start")
            await provider.cancel(handle.id, "operator")
            error = await self.failure(handle)
            child_id = (await provider.describe(handle.id)).step("kid").child_id
            assert child_id is not None
            child_status = await self.status_becomes(provider, child_id, FlowStatus.CANCELLED)
        assert isinstance(error, WorkflowCancelledError) and error.reason == "operator"
        assert child_status[-1] == FlowStatus.CANCELLED
        assert kid.of("step", "k1")[0].outcome == "cancelled"
        assert parent.names("rollback") == ["a"]

    async def test_the_parents_timeout_cancels_its_child(self, provider: WorkflowProvider) -> None:
        parent, kid = Scripted(PARENT), Scripted(KID, {"k1": Do(sleep=5.0)})
        async with self.running(provider, (PARENT, parent, None), (KID, kid, None)):
            handle = await provider.execute(PARENT, Order(key="p"), timeout=0.3 + self.latency)
            error = await self.failure(handle)
            child_id = (await provider.describe(handle.id)).step("kid").child_id
            assert child_id is not None
            await self.status_becomes(provider, child_id, FlowStatus.CANCELLED)
        assert isinstance(error, WorkflowTimeoutError)

    # -- undo --

    async def test_compensate_undoes_a_completed_flow_in_reverse_order(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(DIAMOND)
        async with self.running(provider, (DIAMOND, consumer, None)):
            handle = await provider.execute(DIAMOND, Order(key="k"))
            await self.result(handle)
            status = await provider.compensate(handle.id, "customer cancelled the order")
            assert status in (FlowStatus.COMPENSATING, FlowStatus.COMPENSATED)
            seen = await self.status_becomes(provider, handle.id, FlowStatus.COMPENSATED)
            with pytest.raises(WorkflowCompensatedError, match="customer cancelled the order"):
                await handle.result(timeout=self.wait)
            info = await provider.describe(handle.id)
        assert seen[-1] == FlowStatus.COMPENSATED
        assert consumer.names("rollback") == ["d", "c", "b", "a"]
        assert all(step.has_rollback for step in info.steps)
        assert info.compensated == ("d", "c", "b", "a")
        assert len(consumer.of("on_error")) == 0  # nothing failed
        for call in consumer.of("rollback"):
            output = call.step_ctx.output
            assert isinstance(output, StepOut) and output.step == call.step

    async def test_compensate_applies_to_completed_flows_only_and_twice_changes_nothing(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(WAIT)
        async with self.running(provider, (WAIT, consumer, None)):
            handle = await provider.execute(WAIT, Order(key="k"))
            await self.status_becomes(provider, handle.id, FlowStatus.WAITING)
            with pytest.raises(FlowStateError, match="only a completed flow can be compensated"):
                await provider.compensate(handle.id)
            await provider.signal(handle.id, "approval", Note(by="x"))
            await self.result(handle)
            await provider.compensate(handle.id)
            await self.status_becomes(provider, handle.id, FlowStatus.COMPENSATED)
            assert await provider.compensate(handle.id) == FlowStatus.COMPENSATED
            await asyncio.sleep(self.latency)
        assert consumer.names("rollback") == ["b", "a"]

    # -- failing siblings and waiting flows --

    async def test_a_sibling_waiting_out_its_backoff_is_not_retried_once_the_flow_fails(
        self, provider: WorkflowProvider
    ) -> None:
        from plait.core import Backoff

        consumer = Scripted(DIAMOND, {"b": Do(sleep=0.2, fail=FOREVER, raises=Declined), "c": Do(fail=1)})
        options = self.options(attempts=3, backoff=Backoff.fixed(3.0))
        async with self.running(provider, (DIAMOND, consumer, options)):
            handle = await provider.execute(DIAMOND, Order(key="k"))
            started = time.monotonic()
            error = await self.failure(handle)
        assert isinstance(error, WorkflowStepError) and error.step_name == "b"
        assert time.monotonic() - started < 3.0  # the rollback did not wait for c's retry
        assert [c.attempt for c in consumer.of("step", "c")] == [1]

    async def test_a_waiting_flow_holds_no_concurrency_slot(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(WAIT)
        async with self.running(provider, (WAIT, consumer, self.options(concurrency=1))):
            first = await provider.execute(WAIT, Order(key="one"))
            await self.status_becomes(provider, first.id, FlowStatus.WAITING)
            second = await provider.execute(WAIT, Order(key="two"))
            await self.status_becomes(provider, second.id, FlowStatus.WAITING)  # it ran while the first waits
            await provider.signal(first.id, "approval", Note(by="x"))
            await provider.signal(second.id, "approval", Note(by="y"))
            assert (await self.result(first)).key == "one"
            assert (await self.result(second)).key == "two"

    async def test_a_failed_step_error_is_a_rollback_error_when_a_rollback_fails_too(
        self, provider: WorkflowProvider
    ) -> None:
        parent, kid = Scripted(PARENT, {"b": Do(fail=FOREVER)}), Scripted(KID, {"k1": Do(rollback_fail=FOREVER)})
        async with self.running(provider, (PARENT, parent, None), (KID, kid, None)):
            error = await self.failure(await provider.execute(PARENT, Order(key="p")))
        assert isinstance(error, WorkflowRollbackError)
        assert [e.step_name for e in error.rollback_errors] == ["kid"]
        assert parent.names("rollback") == ["a"]  # the other rollbacks still ran
