"""``result()`` of a flow this provider started: its end comes on the provider's own channel, with no subscription
and no read of the flow's own (and the general path still answers whenever that channel cannot)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import redis
from pydantic import BaseModel

from plait.core import FlowStatus, IWorkflowConsumer, StepContext, StepHandler, Workflow, WorkflowContext
from plait.providers.arq import ArqWorkflowProvider
from plait.providers.arq._notify import Notifier
from plait.providers.arq._store import Store


class Data(BaseModel):
    key: str
    sleep: float = 0.0


class Out(BaseModel):
    key: str


LINE = Workflow.define(name="ends-line", data=Data, result=Out).steps(
    lambda s: s.sequential(s.step("a", Out), s.step("b", Out))
)


class Line(IWorkflowConsumer[Data, Out]):
    def __init__(self) -> None:
        self.steps = {"a": StepHandler(execute=self.run), "b": StepHandler(execute=self.run)}

    async def run(self, ctx: StepContext[Data]) -> Out:
        await asyncio.sleep(ctx.data.sleep)
        return Out(key=ctx.data.key)

    async def on_complete(self, ctx: WorkflowContext[Data]) -> Out:
        return Out(key=ctx.data.key)


class Spy:
    """Counts the reads of flows and the channels subscribed, passing every call on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loads = 0
        self.channels: list[str] = []
        load, subscribe = Store.load, Notifier.subscribe

        async def counted_load(store: Store, flow_id: str) -> Any:
            self.loads += 1
            return await load(store, flow_id)

        async def counted_subscribe(notifier: Notifier, channel: str, *args: Any, **kwargs: Any) -> None:
            self.channels.append(channel)
            await subscribe(notifier, channel, *args, **kwargs)

        monkeypatch.setattr(Store, "load", counted_load)
        monkeypatch.setattr(Notifier, "subscribe", counted_subscribe)

    def reset(self) -> None:
        self.loads = 0
        self.channels.clear()


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    return Spy(monkeypatch)


@pytest.fixture
async def provider(redis_url: str) -> AsyncIterator[ArqWorkflowProvider]:
    found = ArqWorkflowProvider(redis_url, provider_id="ends")
    found.register(LINE, Line())
    await found.start()
    yield found
    await found.stop()


async def test_result_of_flows_started_here_subscribes_once_and_reads_no_flow(
    provider: ArqWorkflowProvider, spy: Spy
) -> None:
    spy.reset()  # the worker's own subscription (the cancel channel) is not this test's business
    handles = [await provider.execute(LINE, Data(key=f"k{i}", sleep=0.05)) for i in range(5)]
    results = await asyncio.gather(*(h.result(timeout=10) for h in handles))
    assert [r.key for r in results] == [f"k{i}" for i in range(5)]
    assert spy.channels == [provider.keys.ends(provider._store.owner)]  # type: ignore[union-attr]
    assert spy.loads == 0
    again = await provider.execute(LINE, Data(key="again"))
    assert (await again.result(timeout=10)).key == "again"
    assert len(spy.channels) == 1 and spy.loads == 0


async def test_an_end_announced_before_result_is_kept_for_it(provider: ArqWorkflowProvider, spy: Spy) -> None:
    handle = await provider.execute(LINE, Data(key="early"))
    for _ in range(500):
        if await handle.status() == FlowStatus.COMPLETED:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the announcement follows the commit
    spy.reset()
    assert (await handle.result(timeout=1)).key == "early"
    assert spy.loads == 0 and spy.channels == []


async def test_a_final_state_over_64_kib_is_read_once_its_end_is_announced(
    provider: ArqWorkflowProvider, spy: Spy
) -> None:
    # The data, two outputs and the result each hold the key: a state of about 100 KB, announced by its status.
    spy.reset()
    handle = await provider.execute(LINE, Data(key="x" * 25_000, sleep=0.1))
    assert (await handle.result(timeout=10)).key == "x" * 25_000
    assert spy.loads == 1
    early = await provider.execute(LINE, Data(key="y" * 25_000))
    await asyncio.sleep(0.5)
    assert (await early.result(timeout=10)).key == "y" * 25_000
    assert spy.loads == 2


async def test_announcements_beyond_the_bytes_kept_are_read_instead(provider: ArqWorkflowProvider, spy: Spy) -> None:
    ends = provider._ends
    assert ends is not None
    spy.reset()
    first = await provider.execute(LINE, Data(key="first"))
    await asyncio.sleep(0.5)  # ended, nobody waiting
    assert ends._bytes > 0
    ends._kept_bytes = ends._bytes * 3 // 2  # room for one such final state, not two
    second = await provider.execute(LINE, Data(key="second"))
    await asyncio.sleep(0.5)
    assert (await second.result(timeout=5)).key == "second"
    assert (await first.result(timeout=5)).key == "first"
    assert spy.loads == 1  # the one announced past the budget
    assert ends._bytes == 0  # what was kept was handed over


async def test_flows_beyond_the_bound_take_the_general_path(provider: ArqWorkflowProvider, spy: Spy) -> None:
    assert provider._ends is not None
    provider._ends._limit = 2  # followed at most: the two latest
    spy.reset()
    handles = [await provider.execute(LINE, Data(key=f"k{i}")) for i in range(4)]
    results = await asyncio.gather(*(h.result(timeout=10) for h in handles))
    assert [r.key for r in results] == ["k0", "k1", "k2", "k3"]
    flows = {provider.keys.done(h.id) for h in handles[:2]}
    assert set(spy.channels[1:]) == flows and spy.loads == 2  # subscribed to and read: the two let go


async def test_storing_an_id_again_keeps_a_waiter_on_the_channel(provider: ArqWorkflowProvider, spy: Spy) -> None:
    first = await provider.execute(LINE, Data(key="same", sleep=0.3), id="same-id")
    waiting = asyncio.ensure_future(first.result(timeout=10))
    await asyncio.sleep(0.05)
    second = await provider.execute(LINE, Data(key="same", sleep=0.3), id="same-id")  # the existing flow
    spy.reset()
    assert (await asyncio.wait_for(waiting, 5)).key == "same"  # well before the 10-second look of its own
    assert (await second.result(timeout=5)).key == "same"
    assert spy.loads == 1  # the second waiter: the first result() took the announcement


async def test_waits_end_when_the_pubsub_connection_is_lost(
    provider: ArqWorkflowProvider, spy: Spy, redis_client: redis.Redis
) -> None:
    slow = await provider.execute(LINE, Data(key="slow", sleep=0.5))
    waiting = asyncio.ensure_future(slow.result(timeout=10))
    ended = await provider.execute(LINE, Data(key="ended"))
    await asyncio.sleep(0.2)
    spy.reset()
    assert cast(int, redis_client.client_kill_filter(_type="pubsub")) >= 1
    # The waiter looks at its flow once the subscriptions are back, and still gets the announcement after.
    assert (await asyncio.wait_for(waiting, 5)).key == "slow"
    assert spy.loads >= 1
    # An end announced while nobody waited may have been lost with the connection: read, not waited for.
    assert (await ended.result(timeout=5)).key == "ended"


async def test_a_caller_cancelled_while_the_channel_is_subscribed_leaves_the_others_to_go_on(
    provider: ArqWorkflowProvider,
) -> None:
    first = asyncio.ensure_future(provider.execute(LINE, Data(key="first")))
    second = asyncio.ensure_future(provider.execute(LINE, Data(key="second")))
    await asyncio.sleep(0)  # the first is subscribing the provider's channel, the second waits for it
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    handle = await asyncio.wait_for(second, 5)
    assert (await handle.result(timeout=10)).key == "second"
