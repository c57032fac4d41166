"""The provider conformance suite: DESIGN §3, rule by rule, through the public provider API only.

A provider author subclasses :class:`ProviderContract` and overrides the ``provider`` fixture. Every test builds
its own consumer (a :class:`_Scripted` one told what each step does), registers it, starts the provider, runs
flows and stops the provider again. Consumers count their calls in memory, so the provider must run consumer
code in the test's process (a remote provider's ``start()`` can start in-process workers for that).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar

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
    StepHandler,
    Workflow,
    WorkflowCompletionError,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowError,
    WorkflowProvider,
    WorkflowRollbackError,
    WorkflowStepError,
    WorkflowTimeoutError,
    WorkflowValidationError,
)

__all__ = ["ProviderContract"]

R = TypeVar("R", bound=BaseModel)
T = TypeVar("T")


# --- models and definitions shared by every test ----------------------------------------------------------


class Order(BaseModel):
    """The data of every contract workflow."""

    key: str
    amount: int = 1


class StepOut(BaseModel):
    """What a contract step returns: who ran, which attempt, which results it saw."""

    step: str
    attempt: int
    seen: list[str]


class AOut(StepOut):
    """Output of step ``a``."""


class BOut(StepOut):
    """Output of step ``b``."""


class COut(StepOut):
    """Output of step ``c``."""


class DOut(StepOut):
    """Output of step ``d``."""


class FlowOut(BaseModel):
    """The result of every contract workflow: the key and ``<step>:<output class>`` of each result seen."""

    key: str
    results: list[str]


class Rich(BaseModel):
    """Data whose JSON form differs from its Python form, for providers that store JSON."""

    when: datetime
    price: Decimal
    ref: uuid.UUID
    tags: tuple[str, ...]
    nested: Order
    note: str | None


class StepBoom(Exception):
    """Raised by scripted steps, rollbacks and callbacks that are told to fail."""


LINE = Workflow.define(name="contract-line", data=Order, result=FlowOut).steps(
    lambda s: s.sequential(s.step("a", AOut), s.step("b", BOut), s.step("c", COut))
)
"""Three sequential steps: a, b, c."""

DIAMOND = Workflow.define(name="contract-diamond", data=Order, result=FlowOut).steps(
    lambda s: (
        s.sequential(s.step("a", AOut)).parallel(s.step("b", BOut), s.step("c", COut)).sequential(s.step("d", DOut))
    )
)
"""a, then b and c in parallel, then d."""

SOLO = Workflow.define(name="contract-solo", data=Order, result=FlowOut).steps(
    lambda s: s.sequential(s.step("a", AOut))
)
"""One step."""

BARE = Workflow.define(name="contract-bare", data=Order, result=FlowOut)
"""No steps: on_complete does the work."""

RICH = Workflow.define(name="contract-rich", data=Rich, result=Rich).steps(lambda s: s.sequential(s.step("echo", Rich)))
"""One step that returns its data; on_complete returns the step's result."""

_FAST = Backoff.fixed(0.01)
_FOREVER = 1_000_000  # attempts that fail: every one


# --- a consumer that does what it is told and records what happened ---------------------------------------


@dataclass(frozen=True, slots=True)
class Do:
    """What one step of a :class:`_Scripted` consumer does.

    Attributes:
        fail: the first ``fail`` attempts raise (``_FOREVER``: every attempt).
        raises: what a failing attempt raises.
        sleep: seconds each attempt takes before it returns or raises.
        sleep_attempts: attempts that sleep (all of them when empty).
        invalid: return an output that does not validate.
        plain: return a dict rather than the output model.
        rollback: whether the step has a rollback.
        rollback_fail: the first ``rollback_fail`` rollback attempts raise.
        rollback_sleep: seconds each rollback attempt takes.
        finish_late: when cancelled, keep going and return the output anyway (a worker that cannot be interrupted).
    """

    fail: int = 0
    raises: type[BaseException] = StepBoom
    sleep: float = 0.0
    sleep_attempts: frozenset[int] = frozenset()
    invalid: bool = False
    plain: bool = False
    rollback: bool = True
    rollback_fail: int = 0
    rollback_sleep: float = 0.0
    finish_late: bool = False


@dataclass(slots=True)
class Call:
    """One call of a handler: its kind, step, attempt and start/end times (``end`` is ``None`` while running)."""

    kind: Literal["step", "rollback", "complete", "on_error"]
    step: str | None
    attempt: int
    start: float
    end: float | None = None
    outcome: str = "running"
    ctx: WorkflowContext[Order] | None = field(default=None, repr=False)
    error: WorkflowError | None = field(default=None, repr=False)


class _Scripted(IWorkflowConsumer[Order, FlowOut]):
    """A consumer of any contract workflow whose steps behave as ``plan`` says and record every call."""

    def __init__(
        self,
        definition: WorkflowDefinition[Order, FlowOut],
        plan: Mapping[str, Do] | None = None,
        *,
        complete: Literal["ok", "raise", "invalid"] = "ok",
        complete_sleep: float = 0.0,
        on_error_raises: bool = False,
    ) -> None:
        self.plan = dict(plan or {})
        self.outputs = {step.name: step.output for group in definition.step_groups for step in group.steps}
        self.complete = complete
        self.complete_sleep = complete_sleep
        self.on_error_raises = on_error_raises
        self.calls: list[Call] = []
        self.late_finished = asyncio.Event()
        self.steps = {
            name: StepHandler(
                execute=self._execute_for(name),
                rollback=self._rollback_for(name) if self.plan.get(name, Do()).rollback else None,
            )
            for name in self.outputs
        }

    # -- queries used by the tests --

    def of(self, kind: str, step: str | None = None) -> list[Call]:
        """The calls of ``kind`` (for ``step``), in the order they started."""
        return [c for c in self.calls if c.kind == kind and (step is None or c.step == step)]

    def names(self, kind: str) -> list[str | None]:
        """The steps of the calls of ``kind``, in the order they started."""
        return [c.step for c in self.of(kind)]

    def finished(self, kind: str) -> list[str | None]:
        """The steps of the calls of ``kind`` that returned, in the order they ended."""
        done = [c for c in self.calls if c.kind == kind and c.outcome == "ok"]
        return [c.step for c in sorted(done, key=lambda c: c.end or 0.0)]

    # -- handlers --

    def _execute_for(self, name: str) -> Callable[[StepContext[Order]], Awaitable[BaseModel | dict[str, object]]]:
        do = self.plan.get(name, Do())
        output = self.outputs[name]

        async def execute(ctx: StepContext[Order]) -> BaseModel | dict[str, object]:
            call = self._begin("step", name, ctx.attempt, ctx)
            try:
                if do.sleep and (not do.sleep_attempts or ctx.attempt in do.sleep_attempts):
                    await self._sleep(do, call)
                if ctx.attempt <= do.fail:
                    self._end(call, "raised", None)
                    raise do.raises(f"boom {name} {ctx.attempt}")
                if do.invalid:
                    invalid: dict[str, object] = {"step": name, "attempt": "not a number", "seen": None}
                    return self._end(call, "ok", invalid)
                fields: dict[str, object] = {"step": name, "attempt": ctx.attempt, "seen": list(ctx.results)}
                return self._end(call, "ok", fields if do.plain else output.model_validate(fields))
            except BaseException as error:
                if call.outcome == "running":
                    self._end(call, "cancelled" if isinstance(error, asyncio.CancelledError) else "raised", None)
                raise

        return execute

    def _rollback_for(self, name: str) -> Callable[[StepContext[Order]], Awaitable[None]]:
        do = self.plan.get(name, Do())

        async def rollback(ctx: StepContext[Order]) -> None:
            call = self._begin("rollback", name, ctx.attempt, ctx)
            if do.rollback_sleep:
                await asyncio.sleep(do.rollback_sleep)
            if ctx.attempt <= do.rollback_fail:
                self._end(call, "raised", None)
                raise StepBoom(f"rollback boom {name} {ctx.attempt}")
            self._end(call, "ok", None)

        return rollback

    async def on_complete(self, ctx: WorkflowContext[Order]) -> FlowOut:
        call = self._begin("complete", None, 1, ctx)
        if self.complete_sleep:
            await asyncio.sleep(self.complete_sleep)
        if self.complete == "raise":
            self._end(call, "raised", None)
            raise StepBoom("boom on_complete")
        if self.complete == "invalid":
            self._end(call, "ok", None)
            return {"key": ctx.data.key, "results": "not a list"}  # type: ignore[return-value]
        seen = [f"{name}:{type(value).__name__}" for name, value in ctx.results.items()]
        return self._end(call, "ok", FlowOut(key=ctx.data.key, results=seen))

    async def on_error(self, ctx: WorkflowContext[Order], error: WorkflowError) -> None:
        call = self._begin("on_error", None, 1, ctx)
        call.error = error
        if self.on_error_raises:
            self._end(call, "raised", None)
            raise StepBoom("boom on_error")
        self._end(call, "ok", None)

    # -- recording --

    def _begin(self, kind: Any, step: str | None, attempt: int, ctx: WorkflowContext[Order]) -> Call:
        call = Call(kind, step, attempt, time.monotonic(), ctx=ctx)
        self.calls.append(call)
        return call

    def _end(self, call: Call, outcome: str, value: T) -> T:
        call.end = time.monotonic()
        call.outcome = outcome
        return value

    async def _sleep(self, do: Do, call: Call) -> None:
        if not do.finish_late:
            await asyncio.sleep(do.sleep)
            return
        try:
            await asyncio.sleep(do.sleep)
        except asyncio.CancelledError:
            # Simulates a worker that cannot be interrupted: it finishes and reports success after all.
            await asyncio.sleep(max(0.0, call.start + do.sleep - time.monotonic()))
        finally:
            self.late_finished.set()


class _Echo(IWorkflowConsumer[Rich, Rich]):
    """Echoes the data through a step and back as the result, recording what it saw."""

    def __init__(self) -> None:
        self.seen: list[BaseModel] = []
        self.steps = {"echo": StepHandler(execute=self.echo)}

    async def echo(self, ctx: StepContext[Rich]) -> Rich:
        self.seen.append(ctx.data)
        return ctx.data

    async def on_complete(self, ctx: WorkflowContext[Rich]) -> Rich:
        echoed = ctx.results["echo"]
        self.seen.append(echoed)
        assert isinstance(echoed, Rich)
        return echoed


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
    it. Consumer code must run in the test's process (consumers count their calls in memory)::

        class TestMyProvider(ProviderContract):
            @pytest.fixture
            def provider(self) -> MyProvider:
                return MyProvider(stop_grace=0.5)

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
        kwargs.setdefault("backoff", _FAST)
        return ConsumerOptions(**kwargs)

    # -- rule 1: validation, acceptance, ids --

    async def test_execute_returns_a_flow_id_and_the_flow_completes(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(SOLO)
        async with self.running(provider, (SOLO, consumer, None)):
            first = await provider.execute(SOLO, Order(key="k1"))
            second = await provider.execute(SOLO, Order(key="k2"))
            assert first.id.startswith("flow-")
            assert second.id.startswith("flow-")
            assert first.id != second.id
            assert await self.result(first) == FlowOut(key="k1", results=["a:AOut"])
            assert await self.result(second) == FlowOut(key="k2", results=["a:AOut"])

    async def test_bad_data_raises_validation_error_and_nothing_runs(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(SOLO)
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

    async def test_dict_data_is_validated_into_the_data_model(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(SOLO)
        async with self.running(provider, (SOLO, consumer, None)):
            handle = await provider.execute(SOLO, {"key": "from-dict", "amount": "3"})
            assert (await self.result(handle)).key == "from-dict"
            ctx = consumer.of("step", "a")[0].ctx
            assert ctx is not None
            assert type(ctx.data) is Order
            assert ctx.data == Order(key="from-dict", amount=3)

    async def test_execute_returns_before_the_flow_ends(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(SOLO, {"a": Do(sleep=0.3 + self.latency)})
        async with self.running(provider, (SOLO, consumer, None)):
            handle = await provider.execute(SOLO, Order(key="k"))
            assert await handle.status() in (FlowStatus.PENDING, FlowStatus.RUNNING)
            assert consumer.of("complete") == []
            await self.result(handle)
            assert await handle.status() == FlowStatus.COMPLETED

    async def test_execute_before_start_raises_provider_not_started(self, provider: WorkflowProvider) -> None:
        provider.register(SOLO, _Scripted(SOLO))
        with pytest.raises(ProviderNotStartedError):
            await provider.execute(SOLO, Order(key="k"))
        await provider.stop()

    # -- rule 2: ordering --

    async def test_sequential_steps_run_one_after_another_in_order(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(LINE, {"a": Do(sleep=0.05), "b": Do(sleep=0.05)})
        async with self.running(provider, (LINE, consumer, None)):
            await self.result(await provider.execute(LINE, Order(key="k")))
        assert consumer.names("step") == ["a", "b", "c"]
        a, b, c = (consumer.of("step", n)[0] for n in "abc")
        assert a.end is not None and b.end is not None
        assert a.end <= b.start and b.end <= c.start

    async def test_parallel_steps_run_concurrently(self, provider: WorkflowProvider) -> None:
        pause = 0.3 + self.latency
        consumer = _Scripted(DIAMOND, {"b": Do(sleep=pause), "c": Do(sleep=pause)})
        async with self.running(provider, (DIAMOND, consumer, None)):
            await self.result(await provider.execute(DIAMOND, Order(key="k")))
        b, c = consumer.of("step", "b")[0], consumer.of("step", "c")[0]
        assert b.end is not None and c.end is not None
        # Each started before the other ended: they overlapped.
        assert b.start < c.end and c.start < b.end

    async def test_next_group_waits_for_every_parallel_sibling(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(DIAMOND, {"b": Do(sleep=0.2)})
        async with self.running(provider, (DIAMOND, consumer, None)):
            await self.result(await provider.execute(DIAMOND, Order(key="k")))
        assert consumer.names("step")[0] == "a"
        assert consumer.names("step")[-1] == "d"
        d = consumer.of("step", "d")[0]
        for sibling in ("b", "c"):
            end = consumer.of("step", sibling)[0].end
            assert end is not None and end <= d.start

    async def test_each_step_and_on_complete_run_once_on_success(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(DIAMOND)
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
        consumer = _Scripted(DIAMOND)
        async with self.running(provider, (DIAMOND, consumer, None)):
            await self.result(await provider.execute(DIAMOND, Order(key="k")))
        seen = {c.step: sorted(c.ctx.results) for c in consumer.of("step") if c.ctx is not None}
        assert seen == {"a": [], "b": ["a"], "c": ["a"], "d": ["a", "b", "c"]}

    async def test_results_are_instances_of_the_output_models(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(DIAMOND)
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
        consumer = _Scripted(LINE, {"a": Do(plain=True)})
        async with self.running(provider, (LINE, consumer, None)):
            result = await self.result(await provider.execute(LINE, Order(key="k")))
        assert result.results == ["a:AOut", "b:BOut", "c:COut"]

    async def test_rollbacks_and_on_error_see_every_completed_result(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(DIAMOND, {"d": Do(fail=_FOREVER)})
        async with self.running(provider, (DIAMOND, consumer, None)):
            await self.failure(await provider.execute(DIAMOND, Order(key="k")))
        for call in [*consumer.of("rollback"), *consumer.of("on_error")]:
            assert call.ctx is not None
            assert {n: type(v) for n, v in call.ctx.results.items()} == {"a": AOut, "b": BOut, "c": COut}

    async def test_meta_and_correlation_id_reach_every_context(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(LINE, {"c": Do(fail=_FOREVER)})
        meta = {"correlation_id": "corr-1", "trace_id": "trace-1"}
        async with self.running(provider, (LINE, consumer, None), (SOLO, plain := _Scripted(SOLO), None)):
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
        consumer = _Echo()
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
        consumer = _Scripted(LINE, {"b": Do(fail=2)})
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
        consumer = _Scripted(LINE, {"b": Do(fail=_FOREVER)})
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
        consumer = _Scripted(SOLO, {"a": Do(fail=1)})
        options = ConsumerOptions(attempts=2, backoff=Backoff.fixed(0.2))
        async with self.running(provider, (SOLO, consumer, options)):
            await self.result(await provider.execute(SOLO, Order(key="k")))
        first, second = consumer.of("step", "a")
        assert first.end is not None
        assert second.start - first.end >= 0.19

    async def test_step_timeout_fails_the_attempt_and_it_is_retried(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(SOLO, {"a": Do(sleep=3.0, sleep_attempts=frozenset({1}))})
        options = self.options(attempts=2, step_timeout=0.2 + self.latency)
        async with self.running(provider, (SOLO, consumer, options)):
            started = time.monotonic()
            await self.result(await provider.execute(SOLO, Order(key="k")))
            assert time.monotonic() - started < 2.0
        assert [c.attempt for c in consumer.of("step", "a")] == [1, 2]
        assert consumer.of("step", "a")[1].outcome == "ok"

    async def test_step_timeout_on_every_attempt_fails_with_a_timeout(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(SOLO, {"a": Do(sleep=3.0)})
        async with self.running(provider, (SOLO, consumer, self.options(attempts=2, step_timeout=0.1 + self.latency))):
            error = await self.failure(await provider.execute(SOLO, Order(key="k")))
        assert isinstance(error, WorkflowStepError)
        assert error.step_name == "a"
        assert _cause_name(error) == "TimeoutError"
        assert "timed out" in str(error)
        assert len(consumer.of("step", "a")) == 2

    async def test_a_step_raising_cancelled_error_itself_fails_like_any_error(self, provider: WorkflowProvider) -> None:
        # Not a cancellation of the step: say, an awaited future that somebody else cancelled.
        consumer = _Scripted(LINE, {"b": Do(fail=1, raises=asyncio.CancelledError)})
        async with self.running(provider, (LINE, consumer, self.options(attempts=2))):
            result = await self.result(await provider.execute(LINE, Order(key="k")))
        assert result.results == ["a:AOut", "b:BOut", "c:COut"]
        assert [(c.attempt, c.outcome) for c in consumer.of("step", "b")] == [(1, "raised"), (2, "ok")]

    async def test_an_invalid_output_fails_the_step_without_retry(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(LINE, {"b": Do(invalid=True)})
        async with self.running(provider, (LINE, consumer, self.options(attempts=3))):
            error = await self.failure(await provider.execute(LINE, Order(key="k")))
            await asyncio.sleep(self.latency)
        assert isinstance(error, WorkflowStepError)
        assert error.step_name == "b"
        assert "BOut" in str(error)
        assert len(consumer.of("step", "b")) == 1
        assert consumer.names("rollback") == ["a"]

    async def test_step_error_keeps_the_cause_type_and_message(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(SOLO, {"a": Do(fail=_FOREVER)})
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
        consumer = _Scripted(
            DIAMOND,
            {"d": Do(fail=_FOREVER), **{n: Do(rollback_sleep=0.03) for n in "abc"}},
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
        consumer = _Scripted(LINE, {"b": Do(rollback=False), "c": Do(fail=_FOREVER)})
        async with self.running(provider, (LINE, consumer, None)):
            await self.failure(await provider.execute(LINE, Order(key="k")))
            await asyncio.sleep(self.latency)
        assert consumer.names("rollback") == ["a"]

    async def test_no_later_group_starts_after_a_failure(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(LINE, {"a": Do(fail=_FOREVER)})
        async with self.running(provider, (LINE, consumer, None)):
            await self.failure(await provider.execute(LINE, Order(key="k")))
            await asyncio.sleep(self.latency)
        assert consumer.names("step") == ["a"]
        assert consumer.of("rollback") == []
        assert consumer.of("complete") == []

    async def test_a_parallel_failure_lets_siblings_finish_then_rolls_them_back(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = _Scripted(DIAMOND, {"b": Do(fail=_FOREVER), "c": Do(sleep=0.3)})
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
        consumer = _Scripted(LINE, {"b": Do(rollback_fail=1), "c": Do(fail=_FOREVER)})
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
        consumer = _Scripted(DIAMOND, {"c": Do(rollback_fail=_FOREVER), "d": Do(fail=_FOREVER)})
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
        consumer = _Scripted(DIAMOND, {"b": Do(invalid=True), "c": Do(sleep=0.2, fail=1)})
        async with self.running(provider, (DIAMOND, consumer, self.options(attempts=3))):
            error = await self.failure(await provider.execute(DIAMOND, Order(key="k")))
            await asyncio.sleep(self.latency)
        assert isinstance(error, WorkflowStepError)
        assert error.step_name == "b"
        assert [(c.attempt, c.outcome) for c in consumer.of("step", "c")] == [(1, "raised")]
        assert consumer.names("rollback") == ["a"]

    async def test_a_retried_sibling_still_does_not_see_its_sibling(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(DIAMOND, {"b": Do(sleep=0.05), "c": Do(fail=1, sleep=0.1, sleep_attempts=frozenset({2}))})
        async with self.running(provider, (DIAMOND, consumer, self.options(attempts=2))):
            await self.result(await provider.execute(DIAMOND, Order(key="k")))
        retry = consumer.of("step", "c")[1]
        assert retry.ctx is not None
        assert sorted(retry.ctx.results) == ["a"]

    async def test_a_rollback_exceeding_the_step_timeout_is_retried_then_recorded(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = _Scripted(LINE, {"b": Do(rollback_sleep=3.0), "c": Do(fail=_FOREVER)})
        options = self.options(attempts=2, step_timeout=0.1 + self.latency)
        async with self.running(provider, (LINE, consumer, options)):
            error = await self.failure(await provider.execute(LINE, Order(key="k")))
        assert [(c.step, c.attempt) for c in consumer.of("rollback")] == [("b", 1), ("b", 2), ("a", 1)]
        assert isinstance(error, WorkflowRollbackError)
        assert [e.step_name for e in error.rollback_errors] == ["b"]
        assert _cause_name(error.rollback_errors[0]) == "TimeoutError"

    # -- rule 6: on_error --

    async def test_on_error_runs_once_after_the_rollbacks_with_the_error(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(LINE, {"c": Do(fail=_FOREVER)})
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
        consumer = _Scripted(LINE, {"b": Do(fail=_FOREVER)}, on_error_raises=True)
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
        consumer = _Scripted(DIAMOND, complete="raise")
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
        consumer = _Scripted(LINE, complete="invalid")
        async with self.running(provider, (LINE, consumer, None)):
            error = await self.failure(await provider.execute(LINE, Order(key="k")))
        assert isinstance(error, WorkflowCompletionError)
        assert "FlowOut" in str(error)
        assert consumer.names("rollback") == ["c", "b", "a"]
        assert len(consumer.of("on_error")) == 1

    async def test_a_step_less_workflow_runs_on_complete_only(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(BARE)
        async with self.running(provider, (BARE, consumer, None)):
            handle = await provider.execute(BARE, {"key": "bare"})
            assert await self.result(handle) == FlowOut(key="bare", results=[])
            assert await handle.status() == FlowStatus.COMPLETED
        assert [c.kind for c in consumer.calls] == ["complete"]

    async def test_a_failing_step_less_workflow_calls_on_error(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(BARE, complete="raise")
        async with self.running(provider, (BARE, consumer, None)):
            error = await self.failure(await provider.execute(BARE, {"key": "bare"}))
        assert isinstance(error, WorkflowCompletionError)
        assert [c.kind for c in consumer.calls] == ["complete", "on_error"]

    # -- rule 8: workflow timeouts --

    async def test_execute_timeout_cancels_rolls_back_and_calls_on_error(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(LINE, {"b": Do(sleep=3.0)})
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
        consumer = _Scripted(SOLO, {"a": Do(sleep=3.0)})
        async with self.running(provider, (SOLO, consumer, self.options(timeout=0.2 + self.latency))):
            error = await self.failure(await provider.execute(SOLO, Order(key="k")))
        assert isinstance(error, WorkflowTimeoutError)
        assert len(consumer.of("on_error")) == 1

    async def test_execute_timeout_overrides_the_registration_timeout(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(SOLO, {"a": Do(sleep=0.3)})
        async with self.running(provider, (SOLO, consumer, self.options(timeout=0.1))):
            handle = await provider.execute(SOLO, Order(key="k"), timeout=self.wait)
            assert (await self.result(handle)).key == "k"

    async def test_a_late_step_success_does_not_overwrite_a_timeout(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(SOLO, {"a": Do(sleep=0.5 + self.latency, finish_late=True)})
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
        consumer = _Scripted(LINE, complete_sleep=3.0)
        async with self.running(provider, (LINE, consumer, None)):
            error = await self.failure(await provider.execute(LINE, Order(key="k"), timeout=0.2 + self.latency))
        assert isinstance(error, WorkflowTimeoutError)
        assert consumer.names("rollback") == ["c", "b", "a"]

    async def test_a_timeout_after_a_step_failed_keeps_the_step_error(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(DIAMOND, {"b": Do(fail=_FOREVER), "c": Do(sleep=3.0)})
        async with self.running(provider, (DIAMOND, consumer, None)):
            error = await self.failure(await provider.execute(DIAMOND, Order(key="k"), timeout=0.2 + self.latency))
        assert isinstance(error, WorkflowStepError)
        assert error.step_name == "b"
        assert consumer.names("rollback") == ["a"]
        assert len(consumer.of("on_error")) == 1

    async def test_a_timeout_during_rollbacks_changes_nothing(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(LINE, {"b": Do(rollback_sleep=0.4 + self.latency), "c": Do(fail=_FOREVER)})
        async with self.running(provider, (LINE, consumer, None)):
            handle = await provider.execute(LINE, Order(key="k"), timeout=0.2 + self.latency)
            error = await self.failure(handle)
            assert await handle.status() == FlowStatus.FAILED
        assert isinstance(error, WorkflowStepError)
        assert [(c.step, c.outcome) for c in consumer.of("rollback")] == [("b", "ok"), ("a", "ok")]
        assert len(consumer.of("on_error")) == 1

    # -- rules 9 and 10: exactly once, idempotent ids --

    async def test_an_existing_id_returns_that_flow_and_runs_nothing(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(LINE)
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
        consumer = _Scripted(SOLO)
        flow_id = f"flow-contract-{uuid.uuid4().hex}"
        async with self.running(provider, (SOLO, consumer, None), (LINE, _Scripted(LINE), None)):
            await self.result(await provider.execute(SOLO, Order(key="k"), id=flow_id))
            with pytest.raises(FlowConflictError):
                await provider.execute(SOLO, Order(key="k", amount=2), id=flow_id)
            with pytest.raises(FlowConflictError):
                await provider.execute(LINE, Order(key="k"), id=flow_id)
        assert len(consumer.of("step")) == 1

    async def test_racing_executes_with_one_id_start_one_flow(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(LINE, {"a": Do(sleep=0.05)})
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
        async with self.running(provider, (SOLO, _Scripted(SOLO), None)):
            unknown = f"flow-contract-{uuid.uuid4().hex}"
            with pytest.raises(FlowNotFoundError) as caught:
                await provider.get_status(unknown)
            assert caught.value.flow_id == unknown
            with pytest.raises(FlowNotFoundError):
                await provider.get_handle(unknown)

    async def test_get_handle_re_attaches_to_a_flow(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(SOLO, {"a": Do(sleep=0.1)})
        async with self.running(provider, (SOLO, consumer, None)):
            handle = await provider.execute(SOLO, Order(key="k"))
            attached = await provider.get_handle(handle.id)
            assert attached.id == handle.id
            result = await attached.result(timeout=self.wait)
            assert isinstance(result, FlowOut)
            assert result == await self.result(handle)
            assert await attached.status() == await provider.get_status(handle.id) == FlowStatus.COMPLETED

    async def test_status_runs_then_completes(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(SOLO, {"a": Do(sleep=0.2 + self.latency)})
        async with self.running(provider, (SOLO, consumer, None)):
            handle = await provider.execute(SOLO, Order(key="k"))
            seen = await self.status_becomes(provider, handle.id, FlowStatus.RUNNING)
            assert set(seen) <= {FlowStatus.PENDING, FlowStatus.RUNNING}
            await self.result(handle)
            status = await handle.status()
            assert status == FlowStatus.COMPLETED and status.is_terminal

    async def test_status_compensates_then_fails(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(LINE, {"a": Do(rollback_sleep=0.2 + self.latency), "b": Do(fail=_FOREVER)})
        async with self.running(provider, (LINE, consumer, None)):
            handle = await provider.execute(LINE, Order(key="k"))
            seen = await self.status_becomes(provider, handle.id, FlowStatus.COMPENSATING)
            assert set(seen) <= {FlowStatus.PENDING, FlowStatus.RUNNING, FlowStatus.COMPENSATING}
            await self.failure(handle)
            assert await handle.status() == FlowStatus.FAILED

    async def test_result_with_a_timeout_raises_and_the_flow_goes_on(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(SOLO, {"a": Do(sleep=0.3)})
        async with self.running(provider, (SOLO, consumer, None)):
            handle = await provider.execute(SOLO, Order(key="k"))
            with pytest.raises(TimeoutError):
                await handle.result(timeout=0.05)
            assert (await self.result(handle)).key == "k"

    async def test_concurrency_keeps_extra_flows_pending(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(SOLO, {"a": Do(sleep=0.2 + self.latency)})
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
        provider.register(SOLO, consumer := _Scripted(SOLO))
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
        consumer = _Scripted(SOLO, {"a": Do(sleep=self.stop_grace / 4)})
        async with self.running(provider, (SOLO, consumer, None)):
            await provider.execute(SOLO, Order(key="k"))
            await self.until(lambda: bool(consumer.of("step")), "step a to start")
        assert [c.outcome for c in consumer.of("step", "a")] == ["ok"]

    async def test_stop_never_leaves_result_hanging(self, provider: WorkflowProvider) -> None:
        consumer = _Scripted(SOLO, {"a": Do(sleep=30.0)})
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
            provider.register(LINE, _Scripted(SOLO))
        provider.register(SOLO, _Scripted(SOLO))
        with pytest.raises(DefinitionError):
            provider.register(SOLO, _Scripted(SOLO))
        await provider.stop()
