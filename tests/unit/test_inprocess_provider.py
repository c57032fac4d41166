"""What the in-process provider does beyond the conformance suite: in-process causes, shutdown, defaults."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from plait.core import (
    ConsumerOptions,
    DefinitionError,
    FlowNotFoundError,
    FlowStatus,
    IWorkflowConsumer,
    ProviderNotStartedError,
    StepContext,
    StepHandler,
    Workflow,
    WorkflowCancelledError,
    WorkflowContext,
    WorkflowNotRegisteredError,
    WorkflowRollbackError,
    WorkflowStepError,
    WorkflowTimeoutError,
)
from plait.providers.inprocess import InProcessWorkflowProvider
from tests.garbage import plait_cycles


class Data(BaseModel):
    n: int = 0


class Out(BaseModel):
    v: int = 0


class Res(BaseModel):
    steps: list[str]


TWO = Workflow.define(name="two", data=Data, result=Res).steps(
    lambda s: s.sequential(s.step("a", Out), s.step("b", Out))
)


class Boom(Exception):
    pass


class Two(IWorkflowConsumer[Data, Res]):
    """Step b does what ``b`` says; ``undo`` is how long a's rollback takes."""

    def __init__(self, b: float | BaseException = 0.0, undo: float = 0.0) -> None:
        self.b = b
        self.undo = undo
        self.rolled_back: list[str] = []
        self.contexts: list[StepContext[Data]] = []
        self.steps = {
            "a": StepHandler(execute=self.run_a, rollback=self.rollback_a),
            "b": StepHandler(execute=self.run_b),
        }

    async def run_a(self, ctx: StepContext[Data]) -> Out:
        self.contexts.append(ctx)
        return Out(v=1)

    async def rollback_a(self, ctx: StepContext[Data]) -> None:
        await asyncio.sleep(self.undo)
        self.rolled_back.append("a")

    async def run_b(self, ctx: StepContext[Data]) -> Out:
        self.contexts.append(ctx)
        if isinstance(self.b, BaseException):
            raise self.b
        await asyncio.sleep(self.b)
        return Out(v=2)

    async def on_complete(self, ctx: WorkflowContext[Data]) -> Res:
        return Res(steps=list(ctx.results))


async def started(consumer: Two) -> None:
    """Waits until step b has started."""
    for _ in range(1000):
        if len(consumer.contexts) == 2:
            return
        await asyncio.sleep(0.005)
    pytest.fail("step b never started")


@pytest.fixture
async def provider() -> AsyncIterator[InProcessWorkflowProvider]:
    provider = InProcessWorkflowProvider(stop_grace=0.2)
    yield provider
    await provider.stop()


async def test_the_plugin_fixture_is_a_started_provider(inprocess_provider: InProcessWorkflowProvider) -> None:
    inprocess_provider.register(TWO, Two())
    handle = await inprocess_provider.execute(TWO, Data())
    assert await handle.result(timeout=5) == Res(steps=["a", "b"])


async def test_unregistered_workflows_raise(provider: InProcessWorkflowProvider) -> None:
    await provider.start()
    with pytest.raises(WorkflowNotRegisteredError, match="register it with a consumer"):
        await provider.execute(TWO, Data())
    provider.register(TWO)  # no consumer: this process could only start flows elsewhere
    with pytest.raises(WorkflowNotRegisteredError, match="no consumer is registered here"):
        await provider.execute(TWO, Data())


async def test_register_rejects_what_is_not_a_definition_or_options(provider: InProcessWorkflowProvider) -> None:
    with pytest.raises(DefinitionError, match="takes a definition"):
        provider.register("two", Two())  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="must be ConsumerOptions"):
        provider.register(TWO, Two(), {"attempts": 3})  # type: ignore[arg-type]


async def test_the_cause_is_the_very_exception_object(provider: InProcessWorkflowProvider) -> None:
    boom = Boom("exactly this one")
    provider.register(TWO, Two(b=boom))
    await provider.start()
    with pytest.raises(WorkflowStepError) as caught:
        await (await provider.execute(TWO, Data())).result(timeout=5)
    assert caught.value.cause is boom
    assert caught.value.__cause__ is boom


async def test_a_step_raising_its_own_timeout_error_keeps_it(provider: InProcessWorkflowProvider) -> None:
    upstream = TimeoutError("the bank did not answer")
    provider.register(TWO, Two(b=upstream), ConsumerOptions(step_timeout=5.0))
    await provider.start()
    with pytest.raises(WorkflowStepError) as caught:
        await (await provider.execute(TWO, Data())).result(timeout=5)
    assert caught.value.cause is upstream
    assert str(caught.value) == "Step 'b' failed: the bank did not answer"


async def test_the_provider_step_timeout_applies_without_a_registered_one() -> None:
    provider = InProcessWorkflowProvider(step_timeout=0.05)
    provider.register(TWO, Two(b=5.0))
    await provider.start()
    try:
        with pytest.raises(WorkflowStepError) as caught:
            await (await provider.execute(TWO, Data())).result(timeout=5)
    finally:
        await provider.stop()
    assert isinstance(caught.value.cause, TimeoutError)
    assert str(caught.value) == "Step 'b' failed: Step 'b' timed out after 0.05s"


async def test_the_provider_default_timeout_applies_last() -> None:
    provider = InProcessWorkflowProvider(default_timeout=0.05)
    provider.register(TWO, Two(b=5.0))
    await provider.start()
    try:
        with pytest.raises(WorkflowTimeoutError) as caught:
            await (await provider.execute(TWO, Data())).result(timeout=5)
        assert caught.value.timeout == 0.05
        assert provider.get_state(caught.value.flow_id).timeout == 0.05
    finally:
        await provider.stop()


async def test_stop_cancels_a_flow_past_the_grace_and_rolls_it_back(provider: InProcessWorkflowProvider) -> None:
    consumer = Two(b=30.0)
    provider.register(TWO, consumer)
    await provider.start()
    handle = await provider.execute(TWO, Data())
    waiter = asyncio.ensure_future(handle.result())
    await started(consumer)
    await provider.stop()
    with pytest.raises(WorkflowCancelledError, match="provider stopped"):
        await asyncio.wait_for(waiter, 1)
    assert await handle.status() == FlowStatus.CANCELLED
    assert consumer.rolled_back == ["a"]
    with pytest.raises(ProviderNotStartedError):
        await provider.execute(TWO, Data())


async def test_stop_aborts_rollbacks_that_outlast_the_grace(
    provider: InProcessWorkflowProvider, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = Two(b=30.0, undo=30.0)
    provider.register(TWO, consumer)
    await provider.start()
    handle = await provider.execute(TWO, Data())
    await started(consumer)
    with caplog.at_level(logging.ERROR, logger="plait.providers.inprocess"):
        await asyncio.wait_for(provider.stop(), 2)
    assert await handle.status() == FlowStatus.CANCELLED
    assert consumer.rolled_back == []
    assert "did not finish its rollbacks" in caplog.text
    with pytest.raises(WorkflowRollbackError) as caught:
        await handle.result(timeout=1)
    assert isinstance(caught.value.primary_error, WorkflowCancelledError)
    assert [str(e) for e in caught.value.rollback_errors] == [
        "Rollback of step 'a' failed: plait.core.errors.WorkflowCancelledError: not rolled back: provider stopped"
    ]


async def test_a_stopped_provider_starts_again(provider: InProcessWorkflowProvider) -> None:
    provider.register(TWO, Two())
    await provider.start()
    await provider.stop()
    await provider.start()
    assert (await (await provider.execute(TWO, Data())).result(timeout=5)).steps == ["a", "b"]


async def test_get_state_shows_the_recorded_state(provider: InProcessWorkflowProvider) -> None:
    provider.register(TWO, Two())
    await provider.start()
    handle = await provider.execute(TWO, Data(n=4), meta={"correlation_id": "c"})
    await handle.result(timeout=5)
    state = provider.get_state(handle.id)
    assert (state.status, state.data, state.meta) == (FlowStatus.COMPLETED, {"n": 4}, {"correlation_id": "c"})
    assert state.results == {"a": {"v": 1}, "b": {"v": 2}}
    assert state.finished_at is not None and state.finished_at >= state.created_at
    with pytest.raises(FlowNotFoundError):
        provider.get_state("flow-nope")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("retention", -1, "retention must be a number of seconds 0 or more; got -1"),
        ("retention", None, "retention must be a number of seconds 0 or more; got None"),
        ("stop_grace", float("nan"), "stop_grace must be a number of seconds 0 or more; got nan"),
        ("stop_grace", True, "stop_grace must be a number of seconds 0 or more; got True"),
    ],
)
def test_durations_that_make_no_sense_are_refused(option: str, value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        InProcessWorkflowProvider(**{option: value})  # type: ignore[arg-type]
    assert str(caught.value) == message


async def test_finished_flows_are_forgotten_after_the_retention() -> None:
    provider = InProcessWorkflowProvider(retention=0.0)
    provider.register(TWO, Two())
    await provider.start()
    try:
        first = await provider.execute(TWO, Data())
        await first.result(timeout=5)
        assert provider.retention == 0.0
        await provider.execute(TWO, Data())  # executing prunes what has expired
        with pytest.raises(FlowNotFoundError):
            await provider.get_status(first.id)
    finally:
        await provider.stop()
    assert InProcessWorkflowProvider().retention == 7 * 24 * 3600


async def test_only_max_finished_flows_are_kept_and_kept_ones_still_answer() -> None:
    provider = InProcessWorkflowProvider(max_finished=2)
    provider.register(TWO, Two())
    await provider.start()
    try:
        handles = [await provider.execute(TWO, Data()) for _ in range(3)]
        for handle in handles:
            await handle.result(timeout=5)
        with pytest.raises(FlowNotFoundError):
            await provider.get_status(handles[0].id)
        for handle in handles[1:]:
            # Finished flows drop their cached models; the result and the state are still there.
            assert await (await provider.get_handle(handle.id)).result() == Res(steps=["a", "b"])
            assert provider.get_state(handle.id).results == {"a": {"v": 1}, "b": {"v": 2}}
    finally:
        await provider.stop()
    assert InProcessWorkflowProvider().max_finished == 100_000


async def test_a_failed_flow_keeps_its_exact_cause_after_it_ends(provider: InProcessWorkflowProvider) -> None:
    boom = Boom("no")
    provider.register(TWO, Two(b=boom))
    await provider.start()
    handle = await provider.execute(TWO, Data())
    for _ in range(2):  # the second time, from the compacted finished flow
        with pytest.raises(WorkflowStepError) as caught:
            await handle.result(timeout=5)
        assert caught.value.cause is boom


async def test_contexts_carry_the_provider_id() -> None:
    default = InProcessWorkflowProvider()
    assert default.provider_id == f"inprocess-{os.getpid()}"
    provider = InProcessWorkflowProvider(provider_id="p-1")
    consumer = Two()
    provider.register(TWO, consumer)
    await provider.start()
    try:
        await (await provider.execute(TWO, Data())).result(timeout=5)
    finally:
        await provider.stop()
    assert {c.provider_id for c in consumer.contexts} == {"p-1"}


async def _run_plain(ctx: StepContext[Data]) -> Out:
    return Out(v=1)


class _Plain(IWorkflowConsumer[Data, Res]):
    """Keeps nothing of its flows (Two keeps their contexts)."""

    steps = {"a": StepHandler(execute=_run_plain), "b": StepHandler(execute=_run_plain)}

    async def on_complete(self, ctx: WorkflowContext[Data]) -> Res:
        return Res(steps=list(ctx.results))


async def test_a_finished_flow_leaves_no_reference_cycles(provider: InProcessWorkflowProvider) -> None:
    # A flow whose objects referred to each other stayed in memory until a full pass of the garbage collector,
    # and those passes were a sixth of the provider's cost.
    provider.register(TWO, _Plain())
    await provider.start()
    await (await provider.execute(TWO, Data())).result()  # warm: the first flow builds caches
    with plait_cycles() as cycles:
        for _ in range(3):
            await (await provider.execute(TWO, Data())).result()
    assert cycles == []


async def test_finished_flows_are_kept_in_nothing_the_garbage_collector_walks(
    provider: InProcessWorkflowProvider,
) -> None:
    # Every object kept that the collector tracks brings its next full pass nearer, and each pass walks them all:
    # a record per finished flow that stayed tracked made those passes three times as frequent.
    provider.register(TWO, _Plain())
    await provider.start()
    await (await provider.execute(TWO, Data())).result()  # warm: the first flow builds caches
    gc.collect()
    before = len(gc.get_objects())
    handles = [await provider.execute(TWO, Data()) for _ in range(100)]
    for handle in handles:
        await handle.result()
    ids = [handle.id for handle in handles]
    del handles, handle
    gc.collect()
    assert len(gc.get_objects()) - before < 10
    # and each still reads back whole
    assert await (await provider.get_handle(ids[0], TWO)).result() == Res(steps=["a", "b"])
    assert (await provider.describe(ids[-1])).status == FlowStatus.COMPLETED
    assert len((await provider.list_flows(limit=200)).items) == 101


async def test_a_started_flow_holds_few_objects_the_garbage_collector_tracks(
    provider: InProcessWorkflowProvider,
) -> None:
    # Each tracked object a running flow holds is walked by every pass of the collector while the flow runs, and
    # is moved to an older generation when it survives one: with many flows in flight, each object per flow made
    # full passes more frequent. Counted after a young collection, as the collector would see them: it stops
    # tracking the event records (tuples of plain values) there. What remains: the flow, its state, view, data
    # model (and its fields set), node records, task map, events list, its first action, and asyncio's task,
    # coroutine, context, handle and weak reference.
    provider.register(TWO, _Plain())
    await provider.start()
    await (await provider.execute(TWO, Data())).result()
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        handles = [await provider.execute(TWO, Data()) for _ in range(100)]
        gc.collect(0)
        per_flow = (len(gc.get_objects()) - before - len(handles)) / 100
    finally:
        gc.enable()
    for handle in handles:
        await handle.result()
    assert per_flow <= 17, per_flow


async def _stored_output(provider: InProcessWorkflowProvider, output: BaseModel) -> Any:
    """What the state records of ``output``, returned by the only step of a flow."""
    model = type(output)
    one_step = Workflow.define(name=f"returns-{model.__name__.lower()}", data=Data, result=Res).steps(
        lambda s: s.sequential(s.step("a", model))
    )

    async def run(ctx: StepContext[Data]) -> BaseModel:
        return output

    class Returns(IWorkflowConsumer[Data, Res]):
        steps = {"a": StepHandler(execute=run)}

        async def on_complete(self, ctx: WorkflowContext[Data]) -> Res:
            return Res(steps=list(ctx.results))

    provider.register(one_step, Returns())
    await provider.start()
    handle = await provider.execute(one_step, Data())
    await handle.result()
    return provider.get_state(handle.id).results["a"]


async def test_a_model_that_overrides_model_dump_is_stored_as_its_model_dump_says(
    provider: InProcessWorkflowProvider,
) -> None:
    # Plait reads plain models straight through pydantic's serializer; an override must still be honoured.
    class Masked(BaseModel):
        card: str

        def model_dump(self, **kwargs: Any) -> dict[str, Any]:
            dumped = super().model_dump(**kwargs)
            dumped["card"] = "****" + dumped["card"][-4:]
            return dumped

    assert await _stored_output(provider, Masked(card="4242424242424242")) == {"card": "****4242"}


class _Ratios(BaseModel):
    nan: float
    inf: float
    ratio: float


class _Constants(_Ratios):
    model_config = ConfigDict(ser_json_inf_nan="constants")


@pytest.mark.parametrize(
    ("model", "stored"),
    [
        (_Ratios, {"nan": None, "inf": None, "ratio": 0.30000000000000004}),  # pydantic's default: null
        (_Constants, {"nan": "nan", "inf": "inf", "ratio": 0.30000000000000004}),  # NaN and Infinity, read as floats
    ],
)
async def test_an_output_is_stored_as_its_json_reads_back_as_a_durable_provider_would(
    provider: InProcessWorkflowProvider, model: type[_Ratios], stored: dict[str, Any]
) -> None:
    result = await _stored_output(provider, model(nan=math.nan, inf=math.inf, ratio=0.1 + 0.2))
    assert {key: str(value) if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in result.items()} == stored  # fmt: skip
