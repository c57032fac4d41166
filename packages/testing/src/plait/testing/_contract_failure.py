"""Contract rules 5-8: rollbacks, on_error, on_complete and workflow timeouts."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from plait.core import (
    FlowStatus,
    WorkflowCompletionError,
    WorkflowProvider,
    WorkflowRollbackError,
    WorkflowStepError,
    WorkflowTimeoutError,
)
from plait.testing._contract_base import ContractBase, cause_name
from plait.testing._scripted import (
    BARE,
    DIAMOND,
    FOREVER,
    LINE,
    SOLO,
    Do,
    FlowOut,
    Order,
    Scripted,
)

__all__ = ["FailureRules"]


class FailureRules(ContractBase):
    """Contract rules 5-8: rollbacks, on_error, on_complete and workflow timeouts."""

    # -- rule 5: rollbacks --

    async def test_rollbacks_run_in_reverse_definition_order_one_at_a_time(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(
            DIAMOND,
            {"d": Do(fail=FOREVER), **{n: Do(rollback_sleep=0.03) for n in "abc"}},
        )
        async with self.running(provider, (DIAMOND, consumer, None)):
            await self.failure(await provider.execute(DIAMOND, Order(key="k")))
        assert consumer.names("rollback") == ["c", "b", "a"]
        rollbacks = consumer.of("rollback")
        for earlier, later in itertools.pairwise(rollbacks):
            assert earlier.end is not None and earlier.end <= later.start

    async def test_the_failed_step_and_steps_without_rollback_are_not_rolled_back(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(LINE, {"b": Do(rollback=False), "c": Do(fail=FOREVER)})
        async with self.running(provider, (LINE, consumer, None)):
            await self.failure(await provider.execute(LINE, Order(key="k")))
            await asyncio.sleep(self.latency)
        assert consumer.names("rollback") == ["a"]

    async def test_no_later_group_starts_after_a_failure(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"a": Do(fail=FOREVER)})
        async with self.running(provider, (LINE, consumer, None)):
            await self.failure(await provider.execute(LINE, Order(key="k")))
            await asyncio.sleep(self.latency)
        assert consumer.names("step") == ["a"]
        assert consumer.of("rollback") == []
        assert consumer.of("complete") == []

    async def test_a_parallel_failure_lets_siblings_finish_then_rolls_them_back(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(DIAMOND, {"b": Do(fail=FOREVER), "c": Do(sleep=0.3)})
        async with self.running(provider, (DIAMOND, consumer, self.options(attempts=2))):
            error = await self.failure(await provider.execute(DIAMOND, Order(key="k")))
            await asyncio.sleep(self.latency)
        assert isinstance(error, WorkflowStepError)
        assert error.step_name == "b"
        c = consumer.of("step", "c")
        assert [x.outcome for x in c] == ["ok"]  # finished, not cancelled
        assert consumer.of("step", "d") == []
        assert consumer.names("rollback") == ["c", "a"]
        assert c[0].end is not None and c[0].end <= consumer.of("rollback")[0].start

    async def test_a_failing_rollback_is_retried(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"b": Do(rollback_fail=1), "c": Do(fail=FOREVER)})
        async with self.running(provider, (LINE, consumer, self.options(attempts=2))):
            error = await self.failure(await provider.execute(LINE, Order(key="k")))
        assert [(c.step, c.attempt, c.outcome) for c in consumer.of("rollback")] == [
            ("b", 1, "raised"),
            ("b", 2, "ok"),
            ("a", 1, "ok"),
        ]
        assert isinstance(error, WorkflowStepError)
        assert error.step_name == "c"

    async def test_a_rollback_failing_for_good_becomes_a_rollback_error_and_the_rest_still_run(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(DIAMOND, {"c": Do(rollback_fail=FOREVER), "d": Do(fail=FOREVER)})
        async with self.running(provider, (DIAMOND, consumer, self.options(attempts=2))):
            handle = await provider.execute(DIAMOND, Order(key="k"))
            error = await self.failure(handle)
            assert await handle.status() == FlowStatus.FAILED
        assert [(c.step, c.attempt) for c in consumer.of("rollback")] == [("c", 1), ("c", 2), ("b", 1), ("a", 1)]
        assert isinstance(error, WorkflowRollbackError)
        assert isinstance(error.primary_error, WorkflowStepError)
        assert error.primary_error.step_name == "d"
        assert [e.step_name for e in error.rollback_errors] == ["c"]
        assert all(e.rollback for e in error.rollback_errors)
        assert cause_name(error.rollback_errors[0]) == "StepBoom"
        assert len(consumer.of("on_error")) == 1
        assert isinstance(consumer.of("on_error")[0].error, WorkflowRollbackError)

    async def test_running_siblings_are_not_retried_once_the_flow_fails(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(DIAMOND, {"b": Do(invalid=True), "c": Do(sleep=0.2, fail=1)})
        async with self.running(provider, (DIAMOND, consumer, self.options(attempts=3))):
            error = await self.failure(await provider.execute(DIAMOND, Order(key="k")))
            await asyncio.sleep(self.latency)
        assert isinstance(error, WorkflowStepError)
        assert error.step_name == "b"
        assert [(c.attempt, c.outcome) for c in consumer.of("step", "c")] == [(1, "raised")]
        assert consumer.names("rollback") == ["a"]

    async def test_a_retried_sibling_still_does_not_see_its_sibling(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(DIAMOND, {"b": Do(sleep=0.05), "c": Do(fail=1, sleep=0.1, sleep_attempts=frozenset({2}))})
        async with self.running(provider, (DIAMOND, consumer, self.options(attempts=2))):
            await self.result(await provider.execute(DIAMOND, Order(key="k")))
        retry = consumer.of("step", "c")[1]
        assert retry.ctx is not None
        assert sorted(retry.ctx.results) == ["a"]

    async def test_a_rollback_exceeding_the_step_timeout_is_retried_then_recorded(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(LINE, {"b": Do(rollback_sleep=3.0), "c": Do(fail=FOREVER)})
        options = self.options(attempts=2, step_timeout=0.1 + self.latency)
        async with self.running(provider, (LINE, consumer, options)):
            error = await self.failure(await provider.execute(LINE, Order(key="k")))
        assert [(c.step, c.attempt) for c in consumer.of("rollback")] == [("b", 1), ("b", 2), ("a", 1)]
        assert isinstance(error, WorkflowRollbackError)
        assert [e.step_name for e in error.rollback_errors] == ["b"]
        assert cause_name(error.rollback_errors[0]) == "TimeoutError"

    # -- rule 6: on_error --

    async def test_on_error_runs_once_after_the_rollbacks_with_the_error(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"c": Do(fail=FOREVER)})
        async with self.running(provider, (LINE, consumer, self.options(attempts=2))):
            error = await self.failure(await provider.execute(LINE, Order(key="k")))
            await asyncio.sleep(self.latency)
        calls = consumer.of("on_error")
        assert len(calls) == 1
        assert consumer.calls[-1] is calls[0]  # after every rollback
        received = calls[0].error
        assert isinstance(received, WorkflowStepError)
        assert received.step_name == "c"
        assert received.flow_id == error.flow_id
        assert str(received) == str(error)

    async def test_on_error_raising_keeps_the_original_error(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"b": Do(fail=FOREVER)}, on_error_raises=True)
        async with self.running(provider, (LINE, consumer, None)):
            handle = await provider.execute(LINE, Order(key="k"))
            error = await self.failure(handle)
            assert await handle.status() == FlowStatus.FAILED
            await asyncio.sleep(self.latency)
        assert isinstance(error, WorkflowStepError)
        assert error.step_name == "b"
        assert len(consumer.of("on_error")) == 1

    # -- rule 7: on_complete --

    async def test_on_complete_raising_rolls_back_every_step(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(DIAMOND, complete="raise")
        async with self.running(provider, (DIAMOND, consumer, self.options(attempts=2))):
            handle = await provider.execute(DIAMOND, Order(key="k"))
            error = await self.failure(handle)
            assert await handle.status() == FlowStatus.FAILED
        assert isinstance(error, WorkflowCompletionError)
        assert "boom on_complete" in str(error)
        assert len(consumer.of("complete")) == 1
        assert consumer.names("rollback") == ["d", "c", "b", "a"]
        assert len(consumer.of("on_error")) == 1

    async def test_on_complete_returning_an_invalid_result_rolls_back_every_step(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(LINE, complete="invalid")
        async with self.running(provider, (LINE, consumer, None)):
            error = await self.failure(await provider.execute(LINE, Order(key="k")))
        assert isinstance(error, WorkflowCompletionError)
        assert "FlowOut" in str(error)
        assert consumer.names("rollback") == ["c", "b", "a"]
        assert len(consumer.of("on_error")) == 1

    async def test_a_step_less_workflow_runs_on_complete_only(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(BARE)
        async with self.running(provider, (BARE, consumer, None)):
            handle = await provider.execute(BARE, {"key": "bare"})
            assert await self.result(handle) == FlowOut(key="bare", results=[])
            assert await handle.status() == FlowStatus.COMPLETED
        assert [c.kind for c in consumer.calls] == ["complete"]

    async def test_a_failing_step_less_workflow_calls_on_error(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(BARE, complete="raise")
        async with self.running(provider, (BARE, consumer, None)):
            error = await self.failure(await provider.execute(BARE, {"key": "bare"}))
        assert isinstance(error, WorkflowCompletionError)
        assert [c.kind for c in consumer.calls] == ["complete", "on_error"]

    # -- rule 8: workflow timeouts --

    async def test_execute_timeout_cancels_rolls_back_and_calls_on_error(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"b": Do(sleep=3.0)})
        timeout = 0.2 + self.latency
        async with self.running(provider, (LINE, consumer, None)):
            started = time.monotonic()
            handle = await provider.execute(LINE, Order(key="k"), timeout=timeout)
            error = await self.failure(handle)
            assert time.monotonic() - started < 2.0
            assert await handle.status() == FlowStatus.FAILED
            await self.until(lambda: consumer.of("step", "b")[0].outcome == "cancelled", "step b to be cancelled")
            await asyncio.sleep(self.latency)
        assert isinstance(error, WorkflowTimeoutError)
        assert error.timeout == pytest.approx(timeout)
        assert "timed out" in str(error)
        assert consumer.names("step") == ["a", "b"]
        assert consumer.names("rollback") == ["a"]
        on_error = consumer.of("on_error")
        assert len(on_error) == 1 and isinstance(on_error[0].error, WorkflowTimeoutError)

    async def test_registration_timeout_applies_without_an_execute_timeout(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO, {"a": Do(sleep=3.0)})
        async with self.running(provider, (SOLO, consumer, self.options(timeout=0.2 + self.latency))):
            error = await self.failure(await provider.execute(SOLO, Order(key="k")))
        assert isinstance(error, WorkflowTimeoutError)
        assert len(consumer.of("on_error")) == 1

    async def test_execute_timeout_overrides_the_registration_timeout(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO, {"a": Do(sleep=0.3)})
        async with self.running(provider, (SOLO, consumer, self.options(timeout=0.1))):
            handle = await provider.execute(SOLO, Order(key="k"), timeout=self.wait)
            assert (await self.result(handle)).key == "k"

    async def test_a_late_step_success_does_not_overwrite_a_timeout(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO, {"a": Do(sleep=0.5 + self.latency, finish_late=True)})
        async with self.running(provider, (SOLO, consumer, None)):
            handle = await provider.execute(SOLO, Order(key="k"), timeout=0.1 + self.latency)
            error = await self.failure(handle)
            await asyncio.wait_for(consumer.late_finished.wait(), self.wait)
            await asyncio.sleep(self.latency + 0.05)
            assert await handle.status() == FlowStatus.FAILED
            assert isinstance(await self.failure(handle), WorkflowTimeoutError)
        assert isinstance(error, WorkflowTimeoutError)
        assert consumer.of("complete") == []
        assert len(consumer.of("on_error")) == 1

    async def test_a_timeout_during_on_complete_rolls_back_every_step(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, complete_sleep=3.0)
        async with self.running(provider, (LINE, consumer, None)):
            error = await self.failure(await provider.execute(LINE, Order(key="k"), timeout=0.2 + self.latency))
        assert isinstance(error, WorkflowTimeoutError)
        assert consumer.names("rollback") == ["c", "b", "a"]

    async def test_a_timeout_after_a_step_failed_keeps_the_step_error(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(DIAMOND, {"b": Do(fail=FOREVER), "c": Do(sleep=3.0)})
        async with self.running(provider, (DIAMOND, consumer, None)):
            error = await self.failure(await provider.execute(DIAMOND, Order(key="k"), timeout=0.2 + self.latency))
        assert isinstance(error, WorkflowStepError)
        assert error.step_name == "b"
        assert consumer.names("rollback") == ["a"]
        assert len(consumer.of("on_error")) == 1

    async def test_a_timeout_during_rollbacks_changes_nothing(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"b": Do(rollback_sleep=0.4 + self.latency), "c": Do(fail=FOREVER)})
        async with self.running(provider, (LINE, consumer, None)):
            handle = await provider.execute(LINE, Order(key="k"), timeout=0.2 + self.latency)
            error = await self.failure(handle)
            assert await handle.status() == FlowStatus.FAILED
        assert isinstance(error, WorkflowStepError)
        assert [(c.step, c.outcome) for c in consumer.of("rollback")] == [("b", "ok"), ("a", "ok")]
        assert len(consumer.of("on_error")) == 1
