"""Scripts run in one turn of the event loop share one pipeline, each with its own reply, error or cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from plait.providers.arq._batch import ScriptBatcher, _pack_python, _Pipe, pack
from tests.integration.conftest import MakeRedis

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
FAILS_ON_ZERO = "if ARGV[1] == '0' then return redis.error_reply('zero refused') end return ARGV[1]"


def command_names(data: bytes) -> list[bytes]:
    """The commands a write carries (each an array of bulk strings, in RESP), by name."""
    names = []
    at = 0
    while at < len(data):
        end = data.index(b"\r\n", at)
        items, at = int(data[at + 1 : end]), end + 2
        for item in range(items):
            end = data.index(b"\r\n", at)
            size = int(data[at + 1 : end])
            if item == 0:
                names.append(data[end + 2 : end + 2 + size].upper())
            at = end + 2 + size + 2
    return names


class CountingConnection(Connection):
    """A connection that records each round trip it makes (but those of its handshake): how many commands each
    write carries."""

    trips: ClassVar[list[int]] = []

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        names = command_names(command if isinstance(command, bytes) else b"".join(command))
        if names[0] not in (b"CLIENT", b"HELLO", b"AUTH", b"SELECT"):
            self.trips.append(len(names))
        await super().send_packed_command(command, check_health)


class CountingRedis(Redis):
    """A client whose connections record their round trips (how many commands share each), the batcher's pipe
    included."""

    @property
    def trips(self) -> list[int]:
        return CountingConnection.trips


@pytest.fixture
async def redis(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[CountingRedis]:
    CountingConnection.trips = []
    write = _Pipe.write

    def counted(pipe: _Pipe, data: bytes, count: int, done: Any) -> None:
        CountingConnection.trips.append(len(command_names(data)))
        write(pipe, data, count, done)

    monkeypatch.setattr(_Pipe, "write", counted)
    client = CountingRedis(connection_pool=ConnectionPool.from_url(redis_url, connection_class=CountingConnection))
    yield client
    await client.aclose(close_connection_pool=True)


async def test_scripts_called_together_share_one_pipeline_each_with_its_reply(redis: CountingRedis) -> None:
    batcher = ScriptBatcher(redis)
    incr = redis.register_script(INCR)
    await batcher.run(incr, ["warm"], [1])  # loads the script
    redis.trips.clear()
    # The first goes at once, alone; the 29 called while it is on its way share round trips, 16 at the most.
    replies = await asyncio.gather(*(batcher.run(incr, [f"k{i % 3}"], [i]) for i in range(30)))
    assert redis.trips == [1, 16, 13]
    # Each caller gets its own script's reply, and the scripts ran in the order they were called.
    totals = {f"k{k}": 0 for k in range(3)}
    for i, reply in enumerate(replies):
        totals[f"k{i % 3}"] += i
        assert reply == totals[f"k{i % 3}"]


async def test_sixteen_scripts_waiting_go_before_the_turn_ends(redis: CountingRedis) -> None:
    batcher = ScriptBatcher(redis)
    incr = redis.register_script(INCR)
    await batcher.run(incr, ["n"], [0])  # loads the script
    redis.trips.clear()
    futures = [batcher.submit(incr, ["n"], [1]) for _ in range(40)]
    # Still in the turn that called them: the first went at once, then each 16 as soon as they were there.
    assert redis.trips == [1, 16, 16]
    assert await asyncio.gather(*futures) == list(range(1, 41))
    assert redis.trips == [1, 16, 16, 7]  # the rest at the end of the turn


async def test_a_script_called_while_nothing_is_in_flight_goes_at_once(redis: CountingRedis) -> None:
    batcher = ScriptBatcher(redis)
    incr = redis.register_script(INCR)
    for n in range(1, 4):
        assert await batcher.run(incr, ["n"], [1]) == n
    assert redis.trips == [1, 1, 1]


async def test_a_script_error_goes_to_its_caller_only(redis: CountingRedis) -> None:
    batcher = ScriptBatcher(redis)
    script = redis.register_script(FAILS_ON_ZERO)
    results = await asyncio.gather(*(batcher.run(script, [], [n]) for n in (1, 0, 2)), return_exceptions=True)
    assert results[0] == b"1"
    assert results[2] == b"2"
    assert isinstance(results[1], ResponseError)
    assert "zero refused" in str(results[1])


async def test_scripts_redis_forgot_are_loaded_again(redis: CountingRedis) -> None:
    batcher = ScriptBatcher(redis)
    incr = redis.register_script(INCR)
    await batcher.run(incr, ["n"], [1])
    await redis.script_flush()  # as after a Redis restart
    replies = await asyncio.gather(*(batcher.run(incr, ["n"], [1]) for _ in range(5)))
    assert sorted(replies) == [2, 3, 4, 5, 6]
    assert await redis.get("n") == b"6"


async def test_a_caller_cancelled_before_its_turn_ends_runs_nothing(redis: CountingRedis) -> None:
    batcher = ScriptBatcher(redis)
    incr = redis.register_script(INCR)
    first = asyncio.ensure_future(batcher.run(incr, ["n"], [1]))
    gone = asyncio.ensure_future(batcher.run(incr, ["n"], [100]))
    kept = asyncio.ensure_future(batcher.run(incr, ["n"], [10]))
    await asyncio.sleep(0)  # the first is on its way; the other two wait for the end of this turn
    gone.cancel()
    assert await first == 1
    assert await kept == 11
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert await redis.get("n") == b"11"


async def test_every_caller_of_a_batch_gets_the_outage(private_redis: MakeRedis) -> None:
    server = private_redis()
    client = Redis(host="127.0.0.1", port=server.port)
    try:
        batcher = ScriptBatcher(client)
        incr = client.register_script(INCR)
        await batcher.run(incr, ["n"], [1])
        server.stop()
        results = await asyncio.gather(*(batcher.run(incr, ["n"], [1]) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, (RedisConnectionError, OSError)) for r in results), results
        server.start()
        assert await batcher.run(incr, ["n"], [1]) == 1  # a fresh server: the script is loaded again
    finally:
        await client.aclose()


@pytest.mark.parametrize("packer", [pack, _pack_python], ids=["default", "python"])
def test_commands_are_packed_as_redis_py_packs_them(packer: Any) -> None:
    args = ("EVALSHA", "f" * 40, 2, "k:{ü}", b"\x00\r\n", 0, -7, 2**70, "", b"x" * 100_000)
    assert packer(args) == b"".join(Connection().pack_command(*args))
    with pytest.raises(TypeError):
        packer(("SET", "k", None))


async def test_a_caller_cancelled_while_its_reply_is_on_its_way_leaves_no_reply_behind(redis: CountingRedis) -> None:
    batcher = ScriptBatcher(redis)
    slow = redis.register_script(
        "redis.call('INCR', KEYS[1]) local t = redis.call('TIME') "
        "repeat local n = redis.call('TIME') until (n[1] - t[1]) * 1000000 + n[2] - t[2] > 50000 "
        "return 'slow'"
    )
    incr = redis.register_script(INCR)
    await batcher.run(incr, ["n"], [1])
    await redis.script_load(slow.script)
    caller = asyncio.ensure_future(batcher.run(slow, ["s"], []))
    await asyncio.sleep(0.01)  # written, its reply not read yet
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    # Each later script gets its own reply, not the one the cancelled caller left unread.
    assert await batcher.run(incr, ["n"], [1]) == 2
    assert await asyncio.gather(*(batcher.run(incr, ["n"], [1]) for _ in range(3))) == [3, 4, 5]


async def test_plain_commands_share_the_round_trip_of_scripts_each_with_its_reply(redis: CountingRedis) -> None:
    batcher = ScriptBatcher(redis)
    incr = redis.register_script(INCR)
    await batcher.command("HSET", "h", "a", "1", "b", "2")
    await batcher.run(incr, ["n"], [1])
    redis.trips.clear()
    replies = await asyncio.gather(
        batcher.command("HGET", "h", "a"),  # goes at once
        batcher.run(incr, ["n"], [1]),
        batcher.command("HMGET", "h", "b", "missing"),
        batcher.command("HGET", "n", "a"),  # the wrong type: its caller alone gets the error
        return_exceptions=True,
    )
    assert list(replies[:3]) == [b"1", 2, [b"2", None]]
    assert isinstance(replies[3], ResponseError)
    assert redis.trips == [1, 3]


async def test_a_submitted_script_runs_and_settles_though_its_caller_is_cancelled(redis: CountingRedis) -> None:
    batcher = ScriptBatcher(redis)
    incr = redis.register_script(INCR)
    await batcher.run(incr, ["n"], [1])
    settled: list[Any] = []
    all_settled = asyncio.Event()

    def record(done: asyncio.Future[Any]) -> None:
        settled.append(done.result())
        if len(settled) == 3:
            all_settled.set()

    async def caller(step: int) -> Any:
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future = batcher.submit(incr, ["n"], [step], parse=lambda reply: reply * 100, waiter=waiter)
        future.add_done_callback(record)
        return await waiter  # as the worker's commits wait: cancelling it leaves the script be

    alone = asyncio.ensure_future(caller(1))  # nothing in flight: it goes at once
    batched = [asyncio.ensure_future(caller(10)), asyncio.ensure_future(caller(100))]  # these share the next trip
    await asyncio.sleep(0)
    for task in (alone, *batched):
        task.cancel()
    await asyncio.gather(alone, *batched, return_exceptions=True)
    await asyncio.wait_for(all_settled.wait(), 5)
    assert settled == [200, 1200, 11200]
    assert redis.trips[-2:] == [1, 2]
    assert await redis.get("n") == b"112"


async def test_a_waiter_gets_the_outcome_and_wakes_its_caller_in_the_turn_the_reply_came(
    redis: CountingRedis,
) -> None:
    batcher = ScriptBatcher(redis)
    fails = redis.register_script(FAILS_ON_ZERO)
    await batcher.run(fails, [], [1])
    loop = asyncio.get_running_loop()
    order: list[str] = []

    def replied(_: asyncio.Future[Any]) -> None:
        # A marker for the next turn: a caller woken through a relay of its own (asyncio.shield) would come after it.
        order.append("reply")
        loop.call_soon(order.append, "next turn")

    async def caller(value: int) -> Any:
        waiter: asyncio.Future[Any] = loop.create_future()
        future = batcher.submit(fails, [], [value], waiter=waiter)
        future.add_done_callback(replied)
        try:
            return await waiter
        finally:
            order.append("caller")

    assert await caller(7) == b"7"
    with pytest.raises(ResponseError, match="zero refused"):
        await caller(0)
    await asyncio.sleep(0)
    assert order == ["reply", "caller", "next turn"] * 2


class CheckoutCountingPool(ConnectionPool):
    """A pool that counts the connections checked out of it."""

    checkouts = 0

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        self.checkouts += 1
        return await super().get_connection(*args, **kwargs)


async def test_round_trips_keep_their_connection_rather_than_check_one_out_each(redis_url: str) -> None:
    # A checkout costs a lock, a zero-timeout read and an event dispatch (a seventh of a worker's CPU for a lone
    # flow). One connection, checked out once, carries every trip: batches written while others are on their way
    # follow.
    pool = CheckoutCountingPool.from_url(redis_url)
    client = Redis(connection_pool=pool)
    try:
        batcher = ScriptBatcher(client)
        incr = client.register_script(INCR)
        for n in range(1, 21):
            assert await batcher.run(incr, ["n"], [1]) == n
        assert await asyncio.gather(*(batcher.run(incr, ["n"], [1]) for _ in range(5))) == [21, 22, 23, 24, 25]
        assert pool.checkouts == 1
    finally:
        await client.aclose(close_connection_pool=True)


async def test_a_kept_connection_that_redis_closed_is_replaced_before_it_is_used(redis: CountingRedis) -> None:
    batcher = ScriptBatcher(redis)
    incr = redis.register_script(INCR)
    assert await batcher.run(incr, ["n"], [1]) == 1
    killed = await redis.client_kill_filter(_type="normal", skipme=True)  # on another pooled connection: kills ours
    assert killed >= 1
    await asyncio.sleep(0.05)  # the end of file reaches this process
    assert await batcher.run(incr, ["n"], [1]) == 2  # no ConnectionError: a fresh connection took its place
