"""The provider conformance suite: the execution contract, group by group, through the public provider API only.

A provider author subclasses :class:`ProviderContract` and overrides the ``provider`` fixture. Every test builds
its own consumer (a ``Scripted`` one, told what each step does), registers it, starts the provider, runs flows
and stops the provider again. Consumers count their calls in memory, so the provider must run consumer code in
the test's process (a remote provider's ``start()`` can start in-process workers for that). Rules 1-4 live in
``_contract_flow``, 5-8 in ``_contract_failure``, 9-12 here.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from plait.core import (
    DefinitionError,
    FlowConflictError,
    FlowNotFoundError,
    FlowStatus,
    PlaitError,
    ProviderNotStartedError,
    WorkflowProvider,
)
from plait.testing._contract_base import ContractBase
from plait.testing._contract_control import RunControlRules
from plait.testing._contract_failure import FailureRules
from plait.testing._contract_flow import FlowRules
from plait.testing._contract_hardening import HardeningRules
from plait.testing._contract_nodes import ControlFlowRules
from plait.testing._scripted import (
    DIAMOND,
    FOREVER,
    LINE,
    SOLO,
    Do,
    FlowOut,
    Order,
    Scripted,
)

__all__ = ["LifecycleRules", "ProviderContract"]


class LifecycleRules(ContractBase):
    """Rules 9-12 of the execution contract: exactly once, idempotent flow ids, status and handles, start and stop."""

    # -- rules 9 and 10: exactly once, idempotent ids --

    async def test_an_existing_id_returns_that_flow_and_runs_nothing(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE)
        flow_id = f"flow-contract-{uuid.uuid4().hex}"
        async with self.running(provider, (LINE, consumer, None)):
            first = await provider.execute(LINE, Order(key="k"), id=flow_id)
            assert first.id == flow_id
            result = await self.result(first)
            again = await provider.execute(LINE, {"key": "k"}, id=flow_id)
            assert again.id == flow_id
            assert await self.result(again) == result
            await asyncio.sleep(self.latency)
        assert consumer.names("step") == ["a", "b", "c"]
        assert len(consumer.of("complete")) == 1

    async def test_an_existing_id_with_other_data_or_workflow_raises_conflict(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO)
        flow_id = f"flow-contract-{uuid.uuid4().hex}"
        async with self.running(provider, (SOLO, consumer, None), (LINE, Scripted(LINE), None)):
            await self.result(await provider.execute(SOLO, Order(key="k"), id=flow_id))
            with pytest.raises(FlowConflictError):
                await provider.execute(SOLO, Order(key="k", amount=2), id=flow_id)
            with pytest.raises(FlowConflictError):
                await provider.execute(LINE, Order(key="k"), id=flow_id)
        assert len(consumer.of("step")) == 1

    async def test_racing_executes_with_one_id_start_one_flow(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"a": Do(sleep=0.05)})
        flow_id = f"flow-contract-{uuid.uuid4().hex}"
        async with self.running(provider, (LINE, consumer, None)):
            handles = await asyncio.gather(*(provider.execute(LINE, Order(key="k"), id=flow_id) for _ in range(5)))
            assert {h.id for h in handles} == {flow_id}
            results = await asyncio.gather(*(self.result(h) for h in handles))
            assert len({r.model_dump_json() for r in results}) == 1
            await asyncio.sleep(self.latency)
        assert consumer.names("step") == ["a", "b", "c"]
        assert len(consumer.of("complete")) == 1

    # -- rule 11: status and handles --

    async def test_unknown_ids_raise_flow_not_found(self, provider: WorkflowProvider) -> None:
        async with self.running(provider, (SOLO, Scripted(SOLO), None)):
            unknown = f"flow-contract-{uuid.uuid4().hex}"
            with pytest.raises(FlowNotFoundError) as caught:
                await provider.get_status(unknown)
            assert caught.value.flow_id == unknown
            with pytest.raises(FlowNotFoundError):
                await provider.get_handle(unknown)
            with pytest.raises(FlowNotFoundError):
                await provider.describe(unknown)

    async def test_describe_lists_every_step_of_a_completed_flow(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(DIAMOND, {"b": Do(fail=1)})
        async with self.running(provider, (DIAMOND, consumer, self.options(attempts=2))):
            handle = await provider.execute(DIAMOND, Order(key="k"), meta={"tenant": "t-1"})
            await self.result(handle)
            info = await provider.describe(handle.id)
        assert (info.flow_id, info.workflow, info.status) == (handle.id, DIAMOND.name, FlowStatus.COMPLETED)
        assert [(s.name, s.status) for s in info.steps] == [(n, "completed") for n in ("a", "b", "c", "d")]
        assert (info.step("a").attempts, info.step("b").attempts) == (1, 2)
        retried = info.step("b").error
        assert retried is not None and "boom b 1" in retried
        assert info.error is None and info.compensated == ()
        assert info.finished_at is not None and info.finished_at >= info.created_at
        assert info.meta is not None and info.meta.get("tenant") == "t-1"

    async def test_describe_shows_what_failed_and_what_was_rolled_back(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"b": Do(fail=FOREVER)})
        async with self.running(provider, (LINE, consumer, None)):
            handle = await provider.execute(LINE, Order(key="k"))
            error = await self.failure(handle)
            info = await provider.describe(handle.id)
        assert info.status == FlowStatus.FAILED
        assert [(s.name, s.status) for s in info.steps] == [("a", "compensated"), ("b", "failed"), ("c", "pending")]
        assert info.compensated == ("a",)
        # The message result() raises; across processes the cause's type name is part of it.
        assert info.error is not None and str(error).split(": ")[-1] in info.error
        assert info.error.startswith("Step 'b' failed: ")
        failed = info.step("b")
        assert failed.attempts == 1 and failed.error is not None
        assert "StepBoom" in failed.error and "boom b 1" in failed.error

    async def test_get_handle_re_attaches_to_a_flow(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO, {"a": Do(sleep=0.1)})
        async with self.running(provider, (SOLO, consumer, None)):
            handle = await provider.execute(SOLO, Order(key="k"))
            attached = await provider.get_handle(handle.id)
            assert attached.id == handle.id
            result = await attached.result(timeout=self.wait)
            assert isinstance(result, FlowOut)
            assert result == await self.result(handle)
            assert await attached.status() == await provider.get_status(handle.id) == FlowStatus.COMPLETED

    async def test_status_runs_then_completes(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO, {"a": Do(sleep=0.2 + self.latency)})
        async with self.running(provider, (SOLO, consumer, None)):
            handle = await provider.execute(SOLO, Order(key="k"))
            seen = await self.status_becomes(provider, handle.id, FlowStatus.RUNNING)
            assert set(seen) <= {FlowStatus.PENDING, FlowStatus.RUNNING}
            await self.result(handle)
            status = await handle.status()
            assert status == FlowStatus.COMPLETED and status.is_terminal

    async def test_status_compensates_then_fails(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"a": Do(rollback_sleep=0.2 + self.latency), "b": Do(fail=FOREVER)})
        async with self.running(provider, (LINE, consumer, None)):
            handle = await provider.execute(LINE, Order(key="k"))
            seen = await self.status_becomes(provider, handle.id, FlowStatus.COMPENSATING)
            assert set(seen) <= {FlowStatus.PENDING, FlowStatus.RUNNING, FlowStatus.COMPENSATING}
            await self.failure(handle)
            assert await handle.status() == FlowStatus.FAILED

    async def test_result_with_a_timeout_raises_and_the_flow_goes_on(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO, {"a": Do(sleep=0.3)})
        async with self.running(provider, (SOLO, consumer, None)):
            handle = await provider.execute(SOLO, Order(key="k"))
            with pytest.raises(TimeoutError):
                await handle.result(timeout=0.05)
            assert (await self.result(handle)).key == "k"

    async def test_concurrency_keeps_extra_flows_pending(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO, {"a": Do(sleep=0.2 + self.latency)})
        async with self.running(provider, (SOLO, consumer, self.options(concurrency=1))):
            first = await provider.execute(SOLO, Order(key="k1"))
            await self.until(lambda: bool(consumer.of("step")), "the first flow to start")
            second = await provider.execute(SOLO, Order(key="k2"))
            assert await second.status() == FlowStatus.PENDING
            assert (await self.result(first)).key == "k1"
            assert (await self.result(second)).key == "k2"
        one, two = consumer.of("step", "a")
        assert one.end is not None and one.end <= two.start

    # -- rule 12: start and stop --

    async def test_start_and_stop_are_idempotent(self, provider: WorkflowProvider) -> None:
        await provider.stop()  # before start: nothing to do
        provider.register(SOLO, consumer := Scripted(SOLO))
        await provider.start()
        try:
            await provider.start()
            assert (await self.result(await provider.execute(SOLO, Order(key="k")))).key == "k"
        finally:
            await provider.stop()
        with pytest.raises(ProviderNotStartedError):
            await provider.execute(SOLO, Order(key="k"))
        await provider.stop()
        assert len(consumer.of("complete")) == 1

    async def test_stop_lets_a_running_step_finish(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO, {"a": Do(sleep=self.stop_grace / 4)})
        async with self.running(provider, (SOLO, consumer, None)):
            await provider.execute(SOLO, Order(key="k"))
            await self.until(lambda: bool(consumer.of("step")), "step a to start")
        assert [c.outcome for c in consumer.of("step", "a")] == ["ok"]

    async def test_stop_never_leaves_result_hanging(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO, {"a": Do(sleep=30.0)})
        async with self.running(provider, (SOLO, consumer, None)):
            handle = await provider.execute(SOLO, Order(key="k"))
            waiter = asyncio.ensure_future(handle.result())
            await self.until(lambda: bool(consumer.of("step")), "step a to start")
            started = time.monotonic()
        assert time.monotonic() - started < 3 * self.stop_grace + self.latency + 1.0
        try:
            done, _ = await asyncio.wait([waiter], timeout=self.stop_grace + self.latency + 1.0)
            assert done, "result() still waits after stop()"
            error = waiter.exception()
            # A durable provider may keep the flow for another process: any Plait error is fine, a hang is not.
            assert isinstance(error, PlaitError), error
        finally:
            waiter.cancel()

    async def test_register_rejects_a_mismatched_consumer_and_a_second_registration(
        self, provider: WorkflowProvider
    ) -> None:
        with pytest.raises(DefinitionError):
            provider.register(LINE, Scripted(SOLO))
        provider.register(SOLO, Scripted(SOLO))
        with pytest.raises(DefinitionError):
            provider.register(SOLO, Scripted(SOLO))
        await provider.stop()


class ProviderContract(RunControlRules, ControlFlowRules, HardeningRules, FailureRules, FlowRules, LifecycleRules):
    """Every rule group as one pytest class: subclass it and override the ``provider`` fixture.

    The fixture returns a new, unstarted provider built with ``stop_grace=self.stop_grace``; each test registers
    its workflows on it, starts it and stops it. Consumer code must run in the test's process (consumers count
    their calls in memory), and no flow may be left from an earlier test (tests reuse workflow names: a durable
    provider's fixture empties its store)::

        class TestMyProvider(ProviderContract):
            @pytest.fixture
            def provider(self) -> MyProvider:
                return MyProvider(stop_grace=self.stop_grace)

    A provider that supports only some features subclasses the groups it supports instead:
    :class:`FlowRules`, :class:`FailureRules`, :class:`LifecycleRules`, :class:`HardeningRules`,
    :class:`ControlFlowRules` and :class:`RunControlRules`. Each carries ``pytest.mark.asyncio``, so it runs
    whether or not pytest-asyncio's auto mode is on.

    Attributes:
        latency: seconds a provider may need to hand a step or an event on (a remote provider's round trips);
            added to the waits of timing-sensitive tests. 0.1 by default.
        timer_latency: seconds a provider may fire a timer (a sleep's end, a signal's timeout) after it is due.
            0.1 by default.
        stop_grace: the grace period of the provider the fixture returns, which the fixture must pass to it;
            ``stop()`` should let a step shorter than this finish and return within a few grace periods when a
            step blocks. 0.5 by default.
        wait: the longest a test waits for a flow's result before it fails. 5 by default.
    """
