"""plait.testing.VirtualClock: time that jumps to the next timer whenever nothing runs, in order, never overtaking a
handler's real I/O; and the in-process provider's sleeps, signal timeouts, backoff and flow timeouts on it."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel

from plait.core import (
    Backoff,
    ConsumerOptions,
    IWorkflowConsumer,
    StepContext,
    StepHandler,
    Workflow,
    WorkflowContext,
    WorkflowStepError,
    WorkflowTimeoutError,
)
from plait.core.clock import Clock
from plait.providers.inprocess import InProcessWorkflowProvider
from plait.testing import VirtualClock

HOUR = 3600.0
DAY = 24 * HOUR


class Job(BaseModel):
    key: str


class Done(BaseModel):
    at: float


class Approval(BaseModel):
    approved: bool


NAP = Workflow.define(name="nap", data=Job, result=Done).steps(
    lambda s: s.sequential(s.sleep("nap", seconds=7 * DAY)).sequential(s.step("wake", Done))
)
APPROVE = Workflow.define(name="approve", data=Job, result=Approval).steps(
    lambda s: s.sequential(s.step("ask", Done)).sequential(s.wait_for("approval", Approval, timeout=48 * HOUR))
)
FLAKY = Workflow.define(name="flaky", data=Job, result=Done).steps(lambda s: s.sequential(s.step("call", Done)))


class Sleeper(IWorkflowConsumer[Job, Done]):
    """Wakes after its week of sleep, noting the (virtual) time it woke."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.woke: list[tuple[str, float]] = []
        self.steps = {"wake": StepHandler(execute=self.wake)}

    async def wake(self, ctx: StepContext[Job]) -> Done:
        self.woke.append((ctx.data.key, self.clock.time()))
        return Done(at=self.clock.time())

    async def on_complete(self, ctx: WorkflowContext[Job]) -> Done:
        return ctx.result("wake", Done)


class Approver(IWorkflowConsumer[Job, Approval]):
    def __init__(self) -> None:
        self.withdrawn = 0
        self.steps = {"ask": StepHandler(execute=self.ask, rollback=self.withdraw)}

    async def ask(self, ctx: StepContext[Job]) -> Done:
        return Done(at=0)

    async def withdraw(self, ctx: StepContext[Job]) -> None:
        self.withdrawn += 1

    async def on_complete(self, ctx: WorkflowContext[Job]) -> Approval:
        return ctx.result("approval", Approval)


class Flaky(IWorkflowConsumer[Job, Done]):
    """Fails its first attempts; each attempt notes the virtual time it started."""

    def __init__(self, clock: Clock, failures: int, io: float = 0.0) -> None:
        self.clock = clock
        self.failures = failures
        self.io = io
        self.attempts: list[float] = []
        self.steps = {"call": StepHandler(execute=self.call)}

    async def call(self, ctx: StepContext[Job]) -> Done:
        self.attempts.append(self.clock.time())
        if self.io:
            await asyncio.sleep(self.io)  # real I/O: the clock must stand still meanwhile
        if ctx.attempt <= self.failures:
            raise ConnectionError("down")
        return Done(at=self.clock.time())

    async def on_complete(self, ctx: WorkflowContext[Job]) -> Done:
        return ctx.result("call", Done)


# -- the clock alone --


async def test_timers_fire_in_order_of_their_time_and_time_jumps_to_each() -> None:
    clock = VirtualClock(start=1000.0)
    fired: list[tuple[str, float]] = []
    for name, delay in (("c", 30.0), ("a", 10.0), ("b", 20.0), ("a2", 10.0)):
        clock.call_later(delay, lambda name=name: fired.append((name, clock.time())))  # type: ignore[misc]
    assert clock.pending == 4 and clock.next_at == 1010.0
    real = time.monotonic()
    await clock.sleep(60)
    assert fired == [("a", 1010.0), ("a2", 1010.0), ("b", 1020.0), ("c", 1030.0)]
    assert clock.time() == 1060.0 and clock.pending == 0
    assert time.monotonic() - real < 0.5


async def test_a_cancelled_timer_never_fires() -> None:
    clock = VirtualClock(start=0.0)
    fired: list[str] = []
    timer = clock.call_later(5, lambda: fired.append("no"))
    clock.call_later(10, lambda: fired.append("yes"))
    timer.cancel()
    timer.cancel()  # twice is fine
    assert clock.pending == 1
    await clock.sleep(20)
    assert fired == ["yes"]


async def test_time_stands_still_while_a_provider_is_busy() -> None:
    clock = VirtualClock(start=0.0)
    busy = True
    clock.attach(lambda: not busy)
    fired: list[float] = []
    clock.call_later(10, lambda: fired.append(clock.time()))
    await asyncio.sleep(0.05)
    assert fired == [] and clock.time() == 0.0
    busy = False
    clock.idle()
    await asyncio.sleep(0.01)
    assert fired == [10.0]


async def test_without_auto_advance_time_moves_only_when_told() -> None:
    clock = VirtualClock(start=0.0, auto_advance=False)
    fired: list[float] = []
    for delay in (5.0, 15.0):
        clock.call_later(delay, lambda: fired.append(clock.time()))
    await asyncio.sleep(0.02)
    assert fired == []
    await clock.advance(10)
    assert fired == [5.0] and clock.time() == 10.0
    await clock.advance(10)
    assert fired == [5.0, 15.0] and clock.time() == 20.0
    with pytest.raises(ValueError, match="forward"):
        await clock.advance(-1)
    clock.call_later(1, lambda: fired.append(clock.time()))
    clock.auto_advance = True
    await asyncio.sleep(0.01)
    assert fired[-1] == 21.0


# -- the in-process provider on virtual time --


async def test_a_week_of_sleep_takes_no_time_and_flows_wake_in_order() -> None:
    clock = VirtualClock(start=0.0)
    consumer = Sleeper(clock)
    provider = InProcessWorkflowProvider(clock=clock, stop_grace=1.0)
    provider.register(NAP, consumer)
    await provider.start()
    try:
        real = time.monotonic()
        first = await provider.execute(NAP, Job(key="first"))
        await clock.advance(DAY)  # the second flow starts a day later
        second = await provider.execute(NAP, Job(key="second"))
        assert (await first.result(timeout=5)).at == 7 * DAY
        assert (await second.result(timeout=5)).at == 8 * DAY
        assert time.monotonic() - real < 1.0
    finally:
        await provider.stop()
    assert consumer.woke == [("first", 7 * DAY), ("second", 8 * DAY)]


async def test_a_48_hour_signal_timeout_fails_the_wait_and_rolls_back(
    virtual_provider: InProcessWorkflowProvider, virtual_clock: VirtualClock
) -> None:
    consumer = Approver()
    virtual_provider.register(APPROVE, consumer)
    started, real = virtual_clock.time(), time.monotonic()
    handle = await virtual_provider.execute(APPROVE, Job(key="k"))
    with pytest.raises(WorkflowStepError, match="approval") as caught:
        await handle.result(timeout=5)
    assert "TimeoutError" in str(caught.value)
    assert virtual_clock.time() - started == pytest.approx(48 * HOUR)
    assert consumer.withdrawn == 1
    assert time.monotonic() - real < 1.0


async def test_a_signal_before_the_timeout_completes_the_flow() -> None:
    clock = VirtualClock(start=0.0, auto_advance=False)
    provider = InProcessWorkflowProvider(clock=clock, stop_grace=1.0)
    provider.register(APPROVE, Approver())
    await provider.start()
    try:
        handle = await provider.execute(APPROVE, Job(key="k"))
        await clock.advance(47 * HOUR)
        await provider.signal(handle.id, "approval", Approval(approved=True))
        assert (await handle.result(timeout=5)).approved
        assert clock.time() == 47 * HOUR
    finally:
        await provider.stop()


async def test_retry_backoff_is_waited_in_virtual_time_and_in_order(virtual_clock: VirtualClock) -> None:
    provider = InProcessWorkflowProvider(clock=virtual_clock, stop_grace=1.0)
    consumer = Flaky(virtual_clock, failures=3)
    options = ConsumerOptions(attempts=4, backoff=Backoff.exponential(HOUR, max_delay=DAY, jitter=False))
    provider.register(FLAKY, consumer, options)
    await provider.start()
    try:
        start = virtual_clock.time()
        await (await provider.execute(FLAKY, Job(key="k"))).result(timeout=5)
    finally:
        await provider.stop()
    assert [round(t - start) for t in consumer.attempts] == [0, 3600, 3 * 3600, 7 * 3600]


async def test_a_workflow_timeout_ends_a_flow_sleeping_past_it(virtual_provider: InProcessWorkflowProvider) -> None:
    virtual_provider.register(NAP, Sleeper(virtual_provider.clock))
    handle = await virtual_provider.execute(NAP, Job(key="k"), timeout=DAY)
    with pytest.raises(WorkflowTimeoutError):
        await handle.result(timeout=5)


async def test_real_io_in_a_handler_is_never_overtaken(virtual_clock: VirtualClock) -> None:
    provider = InProcessWorkflowProvider(clock=virtual_clock, stop_grace=1.0)
    sleeper = Sleeper(virtual_clock)
    slow = Flaky(virtual_clock, failures=0, io=0.2)
    provider.register(NAP, sleeper)
    provider.register(FLAKY, slow)
    await provider.start()
    try:
        start = virtual_clock.time()
        napping = await provider.execute(NAP, Job(key="nap"))
        working = await provider.execute(FLAKY, Job(key="io"))
        done = await working.result(timeout=5)
        # The handler awaited 0.2 s of real time while a week-long sleep was due: the clock stood still.
        assert slow.attempts == [start] and done.at == start
        assert sleeper.woke == []
        assert (await napping.result(timeout=5)).at == start + 7 * DAY
    finally:
        await provider.stop()
