"""Contract rules 1-4: acceptance and ids, ordering, visibility of results, retries and timeouts of steps."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from plait.core import (
    Backoff,
    ConsumerOptions,
    FlowNotFoundError,
    FlowStatus,
    ProviderNotStartedError,
    StepContext,
    WorkflowProvider,
    WorkflowStepError,
    WorkflowValidationError,
)
from plait.testing._contract_base import ContractBase, cause_message, cause_name
from plait.testing._scripted import (
    DIAMOND,
    FOREVER,
    LINE,
    OPAQUE,
    RICH,
    SOLO,
    AOut,
    BOut,
    COut,
    Declined,
    Do,
    Echo,
    FlowOut,
    Order,
    Rich,
    Scripted,
)

__all__ = ["FlowRules"]


class FlowRules(ContractBase):
    """Contract rules 1-4: acceptance and ids, ordering, visibility of results, retries and timeouts of steps."""

    # -- rule 1: validation, acceptance, ids --

    async def test_execute_returns_a_flow_id_and_the_flow_completes(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO)
        async with self.running(provider, (SOLO, consumer, None)):
            first = await provider.execute(SOLO, Order(key="k1"))
            second = await provider.execute(SOLO, Order(key="k2"))
            assert first.id.startswith("flow-")
            assert second.id.startswith("flow-")
            assert first.id != second.id
            assert await self.result(first) == FlowOut(key="k1", results=["a:AOut"])
            assert await self.result(second) == FlowOut(key="k2", results=["a:AOut"])

    async def test_bad_data_raises_validation_error_and_nothing_runs(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO)
        flow_id = f"flow-contract-{uuid.uuid4().hex}"
        async with self.running(provider, (SOLO, consumer, None)):
            with pytest.raises(WorkflowValidationError) as caught:
                await provider.execute(SOLO, {"amount": "many"}, id=flow_id)
            assert isinstance(caught.value.cause, ValidationError)
            assert {tuple(e["loc"]) for e in caught.value.errors} >= {("key",), ("amount",)}  # type: ignore[arg-type]
            assert "contract-solo" in str(caught.value)
            with pytest.raises(FlowNotFoundError):
                await provider.get_status(flow_id)
            await asyncio.sleep(self.latency)
            assert consumer.calls == []

    async def test_a_non_positive_execute_timeout_is_refused_and_nothing_runs(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO)
        flow_id = f"flow-contract-{uuid.uuid4().hex}"
        async with self.running(provider, (SOLO, consumer, None)):
            for bad in (0, -1.0):
                with pytest.raises(ValueError, match="timeout"):
                    await provider.execute(SOLO, Order(key="k"), id=flow_id, timeout=bad)
            with pytest.raises(FlowNotFoundError):
                await provider.get_status(flow_id)
            await asyncio.sleep(self.latency)
            assert consumer.calls == []

    async def test_dict_data_is_validated_into_the_data_model(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO)
        async with self.running(provider, (SOLO, consumer, None)):
            handle = await provider.execute(SOLO, {"key": "from-dict", "amount": "3"})
            assert (await self.result(handle)).key == "from-dict"
            ctx = consumer.of("step", "a")[0].ctx
            assert ctx is not None
            assert type(ctx.data) is Order
            assert ctx.data == Order(key="from-dict", amount=3)

    async def test_execute_returns_before_the_flow_ends(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO, {"a": Do(sleep=0.3 + self.latency)})
        async with self.running(provider, (SOLO, consumer, None)):
            handle = await provider.execute(SOLO, Order(key="k"))
            assert await handle.status() in (FlowStatus.PENDING, FlowStatus.RUNNING)
            assert consumer.of("complete") == []
            await self.result(handle)
            assert await handle.status() == FlowStatus.COMPLETED

    async def test_execute_before_start_raises_provider_not_started(self, provider: WorkflowProvider) -> None:
        provider.register(SOLO, Scripted(SOLO))
        with pytest.raises(ProviderNotStartedError):
            await provider.execute(SOLO, Order(key="k"))
        await provider.stop()

    # -- rule 2: ordering --

    async def test_sequential_steps_run_one_after_another_in_order(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"a": Do(sleep=0.05), "b": Do(sleep=0.05)})
        async with self.running(provider, (LINE, consumer, None)):
            await self.result(await provider.execute(LINE, Order(key="k")))
        assert consumer.names("step") == ["a", "b", "c"]
        a, b, c = (consumer.of("step", n)[0] for n in "abc")
        assert a.end is not None and b.end is not None
        assert a.end <= b.start and b.end <= c.start

    async def test_parallel_steps_run_concurrently(self, provider: WorkflowProvider) -> None:
        pause = 0.3 + self.latency
        consumer = Scripted(DIAMOND, {"b": Do(sleep=pause), "c": Do(sleep=pause)})
        async with self.running(provider, (DIAMOND, consumer, None)):
            await self.result(await provider.execute(DIAMOND, Order(key="k")))
        b, c = consumer.of("step", "b")[0], consumer.of("step", "c")[0]
        assert b.end is not None and c.end is not None
        # Each started before the other ended: they overlapped.
        assert b.start < c.end and c.start < b.end

    async def test_next_group_waits_for_every_parallel_sibling(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(DIAMOND, {"b": Do(sleep=0.2)})
        async with self.running(provider, (DIAMOND, consumer, None)):
            await self.result(await provider.execute(DIAMOND, Order(key="k")))
        assert consumer.names("step")[0] == "a"
        assert consumer.names("step")[-1] == "d"
        d = consumer.of("step", "d")[0]
        for sibling in ("b", "c"):
            end = consumer.of("step", sibling)[0].end
            assert end is not None and end <= d.start

    async def test_each_step_and_on_complete_run_once_on_success(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(DIAMOND)
        async with self.running(provider, (DIAMOND, consumer, None)):
            handle = await provider.execute(DIAMOND, Order(key="k"))
            await self.result(handle)
            await asyncio.sleep(self.latency)
        assert sorted(n or "" for n in consumer.names("step")) == ["a", "b", "c", "d"]
        assert len(consumer.of("complete")) == 1
        assert consumer.of("rollback") == []
        assert consumer.of("on_error") == []

    # -- rule 3: visibility of results --

    async def test_steps_see_results_of_earlier_groups_only(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(DIAMOND)
        async with self.running(provider, (DIAMOND, consumer, None)):
            await self.result(await provider.execute(DIAMOND, Order(key="k")))
        seen = {c.step: sorted(c.ctx.results) for c in consumer.of("step") if c.ctx is not None}
        assert seen == {"a": [], "b": ["a"], "c": ["a"], "d": ["a", "b", "c"]}

    async def test_results_are_instances_of_the_output_models(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(DIAMOND)
        async with self.running(provider, (DIAMOND, consumer, None)):
            result = await self.result(await provider.execute(DIAMOND, Order(key="k")))
        d = consumer.of("step", "d")[0].ctx
        assert d is not None
        assert {name: type(value) for name, value in d.results.items()} == {"a": AOut, "b": BOut, "c": COut}
        assert d.results["a"] == AOut(step="a", attempt=1, seen=[])
        assert d.results["b"] == BOut(step="b", attempt=1, seen=["a"])
        assert type(result) is FlowOut
        assert result == FlowOut(key="k", results=["a:AOut", "b:BOut", "c:COut", "d:DOut"])

    async def test_a_step_may_return_a_dict_that_validates(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"a": Do(plain=True)})
        async with self.running(provider, (LINE, consumer, None)):
            result = await self.result(await provider.execute(LINE, Order(key="k")))
        assert result.results == ["a:AOut", "b:BOut", "c:COut"]

    async def test_rollbacks_and_on_error_see_every_completed_result(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(DIAMOND, {"d": Do(fail=FOREVER)})
        async with self.running(provider, (DIAMOND, consumer, None)):
            await self.failure(await provider.execute(DIAMOND, Order(key="k")))
        for call in [*consumer.of("rollback"), *consumer.of("on_error")]:
            assert call.ctx is not None
            assert {n: type(v) for n, v in call.ctx.results.items()} == {"a": AOut, "b": BOut, "c": COut}

    async def test_meta_and_correlation_id_reach_every_context(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"c": Do(fail=FOREVER)})
        meta = {"correlation_id": "corr-1", "trace_id": "trace-1"}
        async with self.running(provider, (LINE, consumer, None), (SOLO, plain := Scripted(SOLO), None)):
            failed = await provider.execute(LINE, Order(key="k"), meta=meta)
            await self.failure(failed)
            handle = await provider.execute(SOLO, Order(key="k"))
            await self.result(handle)
        for call in consumer.calls:
            ctx = call.ctx
            assert ctx is not None
            assert (ctx.flow_id, ctx.workflow) == (failed.id, "contract-line")
            assert meta.items() <= ctx.meta.items()  # a provider may add its own keys, such as a trace id
            assert ctx.correlation_id == "corr-1"
            assert ctx.step_name == call.step
            assert isinstance(ctx, StepContext) == (call.kind in ("step", "rollback"))
        assert {c.kind for c in consumer.calls} == {"step", "rollback", "on_error"}
        ctx = plain.of("complete")[0].ctx
        assert ctx is not None
        assert ctx.correlation_id == handle.id  # no correlation id given: the flow id

    async def test_data_and_results_keep_their_types_through_the_provider(self, provider: WorkflowProvider) -> None:
        consumer = Echo()
        data = Rich(
            when=datetime(2030, 1, 2, 3, 4, 5, 600000, tzinfo=UTC),
            price=Decimal("12.30"),
            ref=uuid.UUID(int=7),
            tags=("x", "y"),
            nested=Order(key="inner", amount=2),
            note=None,
        )
        async with self.running(provider, (RICH, consumer, None)):
            result = await self.result(await provider.execute(RICH, data))
        assert type(result) is Rich
        assert result == data
        assert consumer.seen == [data, data]  # the step's data and the result it then saw

    # -- rule 4: retries, step timeouts, invalid outputs --

    async def test_a_failing_step_is_retried_and_attempt_counts(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"b": Do(fail=2)})
        async with self.running(provider, (LINE, consumer, self.options(attempts=3))):
            result = await self.result(await provider.execute(LINE, Order(key="k")))
        assert [c.attempt for c in consumer.of("step", "b")] == [1, 2, 3]
        assert [c.outcome for c in consumer.of("step", "b")] == ["raised", "raised", "ok"]
        assert consumer.names("step") == ["a", "b", "b", "b", "c"]
        c = consumer.of("step", "c")[0].ctx
        assert c is not None
        assert c.results["b"] == BOut(step="b", attempt=3, seen=["a"])
        assert result.results == ["a:AOut", "b:BOut", "c:COut"]

    async def test_a_step_failing_every_attempt_fails_the_flow(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"b": Do(fail=FOREVER)})
        async with self.running(provider, (LINE, consumer, self.options(attempts=3))):
            handle = await provider.execute(LINE, Order(key="k"))
            error = await self.failure(handle)
            assert await handle.status() == FlowStatus.FAILED
        assert isinstance(error, WorkflowStepError)
        assert error.step_name == "b"
        assert str(error) == "Step 'b' failed: boom b 3"
        assert len(consumer.of("step", "b")) == 3
        assert consumer.of("step", "c") == []

    async def test_retries_wait_for_the_backoff(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO, {"a": Do(fail=1)})
        options = ConsumerOptions(attempts=2, backoff=Backoff.fixed(0.2))
        async with self.running(provider, (SOLO, consumer, options)):
            await self.result(await provider.execute(SOLO, Order(key="k")))
        first, second = consumer.of("step", "a")
        assert first.end is not None
        assert second.start - first.end >= 0.19

    async def test_step_timeout_fails_the_attempt_and_it_is_retried(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO, {"a": Do(sleep=3.0, sleep_attempts=frozenset({1}))})
        options = self.options(attempts=2, step_timeout=0.2 + self.latency)
        async with self.running(provider, (SOLO, consumer, options)):
            started = time.monotonic()
            await self.result(await provider.execute(SOLO, Order(key="k")))
            assert time.monotonic() - started < 2.0
        assert [c.attempt for c in consumer.of("step", "a")] == [1, 2]
        assert consumer.of("step", "a")[1].outcome == "ok"

    async def test_step_timeout_on_every_attempt_fails_with_a_timeout(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO, {"a": Do(sleep=3.0)})
        async with self.running(provider, (SOLO, consumer, self.options(attempts=2, step_timeout=0.1 + self.latency))):
            error = await self.failure(await provider.execute(SOLO, Order(key="k")))
        assert isinstance(error, WorkflowStepError)
        assert error.step_name == "a"
        assert cause_name(error) == "TimeoutError"
        assert "timed out" in str(error)
        assert len(consumer.of("step", "a")) == 2

    async def test_a_step_raising_cancelled_error_itself_fails_like_any_error(self, provider: WorkflowProvider) -> None:
        # Not a cancellation of the step: say, an awaited future that somebody else cancelled.
        consumer = Scripted(LINE, {"b": Do(fail=1, raises=asyncio.CancelledError)})
        async with self.running(provider, (LINE, consumer, self.options(attempts=2))):
            result = await self.result(await provider.execute(LINE, Order(key="k")))
        assert result.results == ["a:AOut", "b:BOut", "c:COut"]
        assert [(c.attempt, c.outcome) for c in consumer.of("step", "b")] == [(1, "raised"), (2, "ok")]

    async def test_an_invalid_output_fails_the_step_without_retry(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"b": Do(invalid=True)})
        async with self.running(provider, (LINE, consumer, self.options(attempts=3))):
            error = await self.failure(await provider.execute(LINE, Order(key="k")))
            await asyncio.sleep(self.latency)
        assert isinstance(error, WorkflowStepError)
        assert error.step_name == "b"
        assert "BOut" in str(error)
        assert len(consumer.of("step", "b")) == 1
        assert consumer.names("rollback") == ["a"]

    async def test_a_non_retryable_error_fails_the_step_without_retry(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"b": Do(fail=FOREVER, raises=Declined)})
        async with self.running(provider, (LINE, consumer, self.options(attempts=3))):
            error = await self.failure(await provider.execute(LINE, Order(key="k")))
        assert isinstance(error, WorkflowStepError)
        assert error.step_name == "b"
        assert cause_name(error) == "Declined"
        assert len(consumer.of("step", "b")) == 1
        assert consumer.names("rollback") == ["a"]

    async def test_an_output_json_cannot_hold_fails_the_step_without_retry(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(OPAQUE, {"b": Do(opaque=True)})
        async with self.running(provider, (OPAQUE, consumer, self.options(attempts=3))):
            handle = await provider.execute(OPAQUE, Order(key="k"))
            error = await self.failure(handle)
            assert await handle.status() == FlowStatus.FAILED
        assert isinstance(error, WorkflowStepError)
        assert error.step_name == "b"
        assert len(consumer.of("step", "b")) == 1
        assert consumer.names("rollback") == ["a"]
        assert len(consumer.of("on_error")) == 1

    async def test_step_error_keeps_the_cause_type_and_message(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO, {"a": Do(fail=FOREVER)})
        async with self.running(provider, (SOLO, consumer, None)):
            handle = await provider.execute(SOLO, Order(key="k"))
            error = await self.failure(handle)
            again = await self.failure(await provider.get_handle(handle.id))
        for each in (error, again):
            assert isinstance(each, WorkflowStepError)
            assert cause_name(each) == "StepBoom"
            assert cause_message(each) == "boom a 1"
            assert each.flow_id == handle.id
