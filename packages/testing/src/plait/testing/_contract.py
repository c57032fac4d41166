"""The provider conformance suite: DESIGN §3, rule by rule, through the public provider API only.

A provider author subclasses :class:`ProviderContract` and overrides the ``provider`` fixture. Every test builds
its own consumer (a ``Scripted`` one, told what each step does), registers it, starts the provider, runs flows
and stops the provider again. Consumers count their calls in memory, so the provider must run consumer code in
the test's process (a remote provider's ``start()`` can start in-process workers for that).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel, ValidationError

from plait.core import (
    Backoff,
    ConsumerOptions,
    DefinitionError,
    FlowConflictError,
    FlowHandle,
    FlowNotFoundError,
    FlowStatus,
    IWorkflowConsumer,
    PlaitError,
    ProviderNotStartedError,
    RemoteError,
    StepContext,
    WorkflowCompletionError,
    WorkflowDefinition,
    WorkflowError,
    WorkflowProvider,
    WorkflowRollbackError,
    WorkflowStepError,
    WorkflowTimeoutError,
    WorkflowValidationError,
)
from plait.testing._scripted import (
    BARE,
    DIAMOND,
    FAST,
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

__all__ = ["ProviderContract"]

R = TypeVar("R", bound=BaseModel)


# --- the suite --------------------------------------------------------------------------------------------


def _cause_name(error: WorkflowStepError) -> str:
    """The class name of a step error's cause, whether it is the exception itself or a :class:`RemoteError`."""
    cause = error.cause
    if isinstance(cause, RemoteError):
        return cause.type_name.rsplit(".", 1)[-1]
    return type(cause).__name__


def _cause_message(error: WorkflowStepError) -> str:
    cause = error.cause
    return cause.message if isinstance(cause, RemoteError) else str(cause)


Registration = tuple[WorkflowDefinition[Any, Any], IWorkflowConsumer[Any, Any], ConsumerOptions | None]


@pytest.mark.asyncio
class ProviderContract:
    """DESIGN §3 as a pytest class: subclass it and override the ``provider`` fixture.

    The fixture returns a new, unstarted provider; each test registers its workflows on it, starts it and stops
    it. Consumer code must run in the test's process (consumers count their calls in memory), and no flow may be
    left from an earlier test (tests reuse workflow names: a durable provider's fixture empties its store)::

        class TestMyProvider(ProviderContract):
            @pytest.fixture
            def provider(self) -> MyProvider:
                return MyProvider(stop_grace=self.stop_grace)

    The class carries ``pytest.mark.asyncio``, so it runs whether or not pytest-asyncio's auto mode is on.

    Attributes:
        latency: seconds a provider may need to hand a step or an event on (a remote provider's round trips);
            added to the waits of timing-sensitive tests.
        stop_grace: the grace period of the provider the fixture returns; ``stop()`` should let a step shorter
            than this finish and return within a few grace periods when a step blocks.
        wait: the longest a test waits for a flow's result before it fails.
    """

    latency: float = 0.1
    stop_grace: float = 0.5
    wait: float = 5.0

    @pytest.fixture
    def provider(self) -> WorkflowProvider:
        """Override this: return a new, unstarted provider built with a grace period of ``stop_grace``."""
        pytest.fail("Subclasses of ProviderContract override the 'provider' fixture")

    # -- helpers --

    @asynccontextmanager
    async def running(self, provider: WorkflowProvider, *registrations: Registration) -> AsyncIterator[None]:
        """Registers the workflows, starts the provider, and always stops it."""
        for definition, consumer, options in registrations:
            provider.register(definition, consumer, options)
        await provider.start()
        try:
            yield
        finally:
            await provider.stop()

    async def result(self, handle: FlowHandle[R]) -> R:
        """The flow's result, waiting at most ``wait`` seconds."""
        return await handle.result(timeout=self.wait)

    async def failure(self, handle: FlowHandle[R]) -> WorkflowError:
        """The error the flow failed with, waiting at most ``wait`` seconds."""
        with pytest.raises(WorkflowError) as caught:
            await handle.result(timeout=self.wait)
        assert caught.value.flow_id == handle.id
        return caught.value

    async def until(self, condition: Callable[[], bool], what: str, within: float | None = None) -> None:
        """Polls ``condition`` until it holds; fails the test after ``within`` (default ``wait``) seconds."""
        deadline = time.monotonic() + (self.wait if within is None else within)
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"Timed out waiting for {what}")
            await asyncio.sleep(0.005)

    async def status_becomes(self, provider: WorkflowProvider, flow_id: str, status: FlowStatus) -> list[FlowStatus]:
        """Polls the flow's status until it is ``status``; returns every distinct status seen, in order."""
        seen: list[FlowStatus] = []
        deadline = time.monotonic() + self.wait
        while True:
            current = await provider.get_status(flow_id)
            if not seen or seen[-1] != current:
                seen.append(current)
            if current == status:
                return seen
            if current.is_terminal or time.monotonic() > deadline:
                pytest.fail(f"Flow {flow_id} never became {status}: saw {seen}")
            await asyncio.sleep(0.005)

    @staticmethod
    def options(**kwargs: Any) -> ConsumerOptions:
        """ConsumerOptions with a 10 ms fixed backoff unless told otherwise."""
        kwargs.setdefault("backoff", FAST)
        return ConsumerOptions(**kwargs)

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
        assert _cause_name(error) == "TimeoutError"
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
        assert _cause_name(error) == "Declined"
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
            assert _cause_name(each) == "StepBoom"
            assert _cause_message(each) == "boom a 1"
            assert each.flow_id == handle.id

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
        assert _cause_name(error.rollback_errors[0]) == "StepBoom"
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
        assert _cause_name(error.rollback_errors[0]) == "TimeoutError"

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
