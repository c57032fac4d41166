"""The pub/sub notifier: channels (un)subscribed in one turn of the event loop share one command."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import pytest
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection

from plait.providers.arq._notify import Notifier
from plait.providers.arq.provider import _Wakeup


class RecordingConnection(Connection):
    """A connection that records the (un)subscription commands it sends, with their channels."""

    sent: ClassVar[list[tuple[Any, ...]]] = []

    async def send_command(self, *args: Any, **kwargs: Any) -> None:
        if args and args[0] in ("SUBSCRIBE", "UNSUBSCRIBE"):
            self.sent.append(tuple(a.decode() if isinstance(a, bytes) else a for a in args))
        await super().send_command(*args, **kwargs)


@pytest.fixture
async def notifier(redis_url: str) -> AsyncIterator[Notifier]:
    RecordingConnection.sent = []
    client = ArqRedis(connection_pool=ConnectionPool.from_url(redis_url, connection_class=RecordingConnection))
    found = Notifier(client)
    yield found
    await found.close()
    await client.aclose(close_connection_pool=True)


@pytest.fixture
async def publisher(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_channels_subscribed_together_share_one_command_and_each_gets_its_messages(
    notifier: Notifier, publisher: Redis
) -> None:
    got: dict[str, list[bytes]] = {f"c{i}": [] for i in range(20)}
    all_got = asyncio.Event()

    def handler(name: str) -> Callable[[bytes], None]:
        def handle(data: bytes) -> None:
            got[name].append(data)
            if all(got.values()):
                all_got.set()

        return handle

    handlers = {name: handler(name) for name in got}
    await asyncio.gather(*(notifier.subscribe(name, handlers[name]) for name in got))
    assert RecordingConnection.sent == [("SUBSCRIBE", *got)]
    for name in got:
        assert await publisher.publish(name, name.encode()) == 1
    await asyncio.wait_for(all_got.wait(), 5)
    assert got == {name: [name.encode()] for name in got}
    await asyncio.gather(*(notifier.unsubscribe(name, handlers[name]) for name in got))
    await asyncio.sleep(0.05)
    assert RecordingConnection.sent[1:] == [("UNSUBSCRIBE", *got)]


async def test_a_subscription_given_up_is_not_left_behind(notifier: Notifier, publisher: Redis) -> None:
    def ignore(data: bytes) -> None:
        pass

    async def subscribers(channel: str) -> int:
        [(_, count)] = await publisher.pubsub_numsub(channel)
        return int(count)

    gone = asyncio.ensure_future(notifier.subscribe("gone", ignore))
    kept = asyncio.ensure_future(notifier.subscribe("kept", ignore))
    await asyncio.sleep(0)
    gone.cancel()
    await kept
    with pytest.raises(asyncio.CancelledError):
        await gone
    await asyncio.sleep(0.05)
    assert await subscribers("gone") == 0
    assert await subscribers("kept") == 1


async def test_a_channel_subscribed_again_before_its_unsubscription_went_stays_subscribed(
    notifier: Notifier, publisher: Redis
) -> None:
    got: list[bytes] = []
    arrived = asyncio.Event()

    def handle(data: bytes) -> None:
        got.append(data)
        arrived.set()

    await notifier.subscribe("c", handle)
    await notifier.unsubscribe("c", handle)  # not sent yet
    await notifier.subscribe("c", handle)
    assert await publisher.publish("c", b"hello") == 1
    await asyncio.wait_for(arrived.wait(), 5)
    assert got == [b"hello"]


async def test_a_result_waiters_wakeup_remembers_a_set_before_its_wait_and_times_out_without_one() -> None:
    loop = asyncio.get_running_loop()
    woken = _Wakeup()
    woken.set()  # the end announced while the waiter was reading the flow
    started = loop.time()
    await woken.wait(5.0)
    assert loop.time() - started < 1.0
    started = loop.time()
    await woken.wait(0.05)  # cleared by the last wait: nothing wakes it but the timeout
    assert loop.time() - started >= 0.04
    waiting = asyncio.ensure_future(woken.wait(5.0))
    await asyncio.sleep(0)
    woken.set()
    await asyncio.wait_for(waiting, 1.0)
    cancelled = asyncio.ensure_future(woken.wait(5.0))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    woken.set()  # no waiter left: remembered for the next wait
    await asyncio.wait_for(woken.wait(5.0), 1.0)
