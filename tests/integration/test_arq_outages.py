"""Redis outages: each test runs its own redis-server, stops it and starts it again.

Callers get ``ProviderUnavailableError`` at once, waiters ride through, workers log an outage once and go on,
and a worker started before Redis waits for it. The soak at the end SIGKILLs a worker and restarts Redis
mid-run, and loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest

from plait.core import FlowStatus, ProviderUnavailableError
from plait.providers.arq import ArqWorkflowProvider
from tests.integration.apps.orders import ORDER, Order, Receipt
from tests.integration.conftest import MakeRedis, PrivateRedis, Workers
from tests.integration.test_arq_provider import LINE, Data, Recorder

SECRET = "s3cret-pa55"


@asynccontextmanager
async def started(provider: ArqWorkflowProvider) -> AsyncIterator[ArqWorkflowProvider]:
    await provider.start()
    try:
        yield provider
    finally:
        await provider.stop()


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def outage_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("plait")]


async def test_execute_and_reads_raise_provider_unavailable_at_once_during_an_outage(
    private_redis: MakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    server = private_redis(persistent=True, password=SECRET)
    provider = ArqWorkflowProvider(server.url)
    provider.register(LINE)
    async with started(provider):
        handle = await provider.execute(LINE, Data(key="k"))
        server.stop()
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "execute": lambda: provider.execute(LINE, Data(key="k")),
            "get_status": lambda: provider.get_status(handle.id),
            "describe": lambda: provider.describe(handle.id),
            "get_handle": lambda: provider.get_handle(handle.id),
            "get_state": lambda: provider.get_state(handle.id),
        }
        for name, call in calls.items():
            began = time.monotonic()
            with pytest.raises(ProviderUnavailableError) as caught:
                await call()
            assert time.monotonic() - began < 1.0, name
            assert f"Redis at redis://127.0.0.1:{server.port}/0 cannot be reached" in str(caught.value), name
            assert SECRET not in str(caught.value)
        server.start()
        assert await provider.get_status(handle.id) == FlowStatus.PENDING  # back as soon as Redis is
    assert not [r for r in caplog.records if SECRET in r.getMessage()]


async def test_result_rides_through_an_outage_and_a_commit_waits_for_redis(
    private_redis: MakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    server = private_redis(persistent=True)
    consumer = Recorder(("a", "b"))
    worker = ArqWorkflowProvider(server.url, stall_interval=5.0)
    worker.register(LINE, consumer)
    emitter = ArqWorkflowProvider(server.url)
    emitter.register(LINE)
    caplog.set_level(logging.INFO)
    async with started(worker), started(emitter):
        handle = await emitter.execute(LINE, Data(key="k", sleep=1.0))
        before = asyncio.create_task(handle.result(timeout=20))  # waits on pub/sub when Redis goes away
        await eventually(lambda: bool(consumer.calls))
        server.stop()  # step a ends during the outage: its commit waits for Redis (its lease lasts 5 s)
        during = asyncio.create_task(handle.result(timeout=20))  # cannot even subscribe or read yet
        await asyncio.sleep(2.0)
        assert not before.done() and not during.done()
        server.start()
        assert (await before).steps == (await during).steps == ["a", "b"]
    assert [(c.step, c.outcome) for c in consumer.of("step")] == [("a", "ok"), ("b", "ok")]  # nothing ran twice
    records = outage_records(caplog)
    assert not [r for r in records if r.levelno >= logging.ERROR or r.exc_info]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    # One line per outage and place that saw it, never one per retry.
    assert len([w for w in warnings if w.startswith("Redis cannot be used while")]) == 1, warnings
    # At most one for the waiter that came during the outage: when its subscription waits for the pub/sub
    # connection to come back, that connection's own line is what says so.
    assert len([w for w in warnings if "result() of flow" in w]) <= 1, warnings
    assert any(w.startswith("Redis pub/sub connection failed") for w in warnings), warnings
    assert len(warnings) <= 5, warnings


async def test_a_commit_gives_up_quietly_when_the_lease_runs_out_and_the_job_runs_again(
    private_redis: MakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    server = private_redis(persistent=True)
    consumer = Recorder(("a", "b"))
    worker = ArqWorkflowProvider(server.url, stall_interval=1.0)
    worker.register(LINE, consumer)
    caplog.set_level(logging.INFO)
    async with started(worker):
        handle = await worker.execute(LINE, Data(key="k", sleep=0.3))
        await eventually(lambda: bool(consumer.calls))
        server.stop()  # step a returns at once, then its commit fails until its lease has run out
        await asyncio.sleep(2.5)
        server.start()
        assert (await handle.result(timeout=10)).steps == ["a", "b"]
    assert [(c.step, c.outcome) for c in consumer.of("step")] == [("a", "ok"), ("a", "ok"), ("b", "ok")]
    records = outage_records(caplog)
    assert not [r for r in records if r.levelno >= logging.ERROR or r.exc_info]
    gave_up = [r.getMessage() for r in records if r.getMessage().startswith("Gave up committing job")]
    assert len(gave_up) == 1
    assert "its lease ran out; it runs again elsewhere" in gave_up[0]


# -- workers and the plait command --


async def test_a_worker_started_while_redis_is_down_waits_for_it(private_redis: MakeRedis, workers: Workers) -> None:
    server = private_redis(persistent=True, start=False, password=SECRET)
    worker = workers.start(url=server.url)
    await workers.logged(worker, "try 2 failed, next in 2s", within=10)
    log = workers.log(worker)
    tries = [line for line in log.splitlines() if "Cannot start" in line]
    assert len(tries) >= 2  # a third comes 2 s after the second
    assert all(" WARNING " in line for line in tries)
    assert len(log.splitlines()) == len(tries)  # one line per try, nothing else
    assert f"Redis at redis://127.0.0.1:{server.port}/0 cannot be reached" in tries[0]
    assert "Traceback" not in log
    assert SECRET not in log
    assert worker.poll() is None
    server.start()
    await workers.ready(worker, within=10)
    emitter = ArqWorkflowProvider(server.url)
    emitter.register(ORDER)
    async with started(emitter):
        handle = await emitter.execute(ORDER, Order(order_id="o-1"))
        assert (await handle.result(timeout=10)).pids["charge"] == worker.pid
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0


async def test_a_worker_gives_up_after_its_connect_timeout_in_one_line(
    private_redis: MakeRedis, workers: Workers
) -> None:
    server = private_redis(start=False, password=SECRET)
    began = time.monotonic()
    worker = workers.start(url=server.url, args=("--connect-timeout", "1.5"))
    assert await asyncio.to_thread(worker.wait, 20) == 1
    assert time.monotonic() - began < 10
    lines = workers.log(worker).splitlines()
    assert lines[-1].startswith("plait worker: cannot start tests.integration.apps.orders:create_app: Redis at ")
    assert "(gave up after 2 tries, --connect-timeout)" in lines[-1]
    assert len(lines) == 2  # the first try's WARNING, then the refusal
    assert "Traceback" not in "\n".join(lines)
    assert SECRET not in "\n".join(lines)


# -- the soak --


async def test_a_soak_with_a_sigkilled_worker_and_a_redis_restart_loses_nothing(
    private_redis: MakeRedis, workers: Workers
) -> None:
    server: PrivateRedis = private_redis(persistent=True)
    client = server.client()
    first, second = workers.start(url=server.url), workers.start(url=server.url)
    await workers.ready(first, second)
    emitter = ArqWorkflowProvider(server.url)
    emitter.register(ORDER)
    async with started(emitter):
        handles = [
            await emitter.execute(ORDER, Order(order_id=f"o-{i}", slow_step="charge", slow=0.3)) for i in range(24)
        ]
        waiters = [asyncio.create_task(h.result(timeout=60)) for h in handles]
        await eventually(lambda: bool(list(client.scan_iter(match="inflight:*:charge"))))
        first.send_signal(signal.SIGKILL)
        first.wait()
        server.stop()
        await asyncio.sleep(1.0)
        server.start()
        replacement = workers.start(url=server.url)
        await workers.ready(replacement)
        results = cast(list[Receipt], await asyncio.gather(*waiters))
        assert [r.order_id for r in results] == [f"o-{i}" for i in range(24)]
        for handle in handles:
            assert await emitter.get_status(handle.id) == FlowStatus.COMPLETED
            for step in ORDER.step_names:
                # At least once each (a killed or cut-off step runs again), and never rolled back.
                assert int(cast(Any, client.get(f"side:{handle.id}:{step}:done")) or 0) >= 1, (handle.id, step)
                assert not client.exists(f"side:{handle.id}:{step}:rolled_back")
    assert client.zcard("workflow.it-order") == client.zcard("workflow.it-order.steps") == 0
    assert client.zcard("workflow:leases") == 0
    client.close()
    for worker in (second, replacement):
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0


async def test_a_full_redis_is_an_outage_callers_hear_of_and_workers_ride_through(
    private_redis: MakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    server = private_redis()
    client = server.client()
    consumer = Recorder(("a", "b"))
    provider = ArqWorkflowProvider(server.url, stall_interval=1.0)
    provider.register(LINE, consumer)
    async with started(provider):
        handle = await provider.execute(LINE, Data(key="k", sleep=0.5))
        await eventually(lambda: bool(consumer.calls))
        used = int(cast(dict[str, Any], client.info("memory"))["used_memory"])
        client.config_set("maxmemory", str(used // 2))  # full: every write is refused from now on
        with pytest.raises(ProviderUnavailableError, match="is full \\(maxmemory\\)"):
            await provider.execute(LINE, Data(key="refused"))
        await asyncio.sleep(1.0)  # step a ends meanwhile: its commit waits for Redis
        client.config_set("maxmemory", "0")
        assert (await handle.result(timeout=15)).steps == ["a", "b"]
    warnings = [r.getMessage() for r in outage_records(caplog) if r.levelno == logging.WARNING]
    assert any("Redis cannot be used while" in w and "OutOfMemoryError" in w for w in warnings), warnings
    assert not [r for r in outage_records(caplog) if r.levelno >= logging.ERROR]
