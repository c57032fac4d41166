"""Real worker processes (``plait worker``): crash one mid-step, stop one gracefully, pause one past its lease,
let a step raise what would end a process; count every side effect.

Flows are started by an emitter process that registers no consumer and exits at once; this process re-attaches
to them with ``get_handle()``. Workers run a bare provider or a Plait application built by the app builder.
Handlers count their starts and completions in Redis (see ``apps/orders.py``).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
import pytest_asyncio
import redis

from plait.core import FlowStatus, RemoteError, WorkflowStepError
from plait.providers.arq import ArqWorkflowProvider
from tests.integration.apps.orders import ORDER, Order, Receipt
from tests.integration.conftest import Workers

ROOT = Path(__file__).resolve().parents[2]
STALL = 1.0


@pytest_asyncio.fixture
async def emitter(redis_url: str) -> AsyncIterator[ArqWorkflowProvider]:
    """A provider of this process that knows the definition but runs no step."""
    provider = ArqWorkflowProvider(redis_url)
    provider.register(ORDER)
    await provider.start()
    yield provider
    await provider.stop()


async def inflight(client: redis.Redis, step: str, within: float = 20.0) -> dict[str, int]:
    """Waits until some flow runs ``step``; returns flow id -> pid of the worker running it."""
    deadline = time.monotonic() + within
    while True:
        keys = [k.decode() for k in client.scan_iter(match=f"inflight:*:{step}")]
        found = {k.split(":")[1]: int(v) for k in keys if (v := get(client, k)) is not None}
        if found:
            return found
        assert time.monotonic() < deadline, f"no flow started {step}"
        await asyncio.sleep(0.02)


def get(client: redis.Redis, key: str) -> bytes | None:
    return cast(bytes | None, client.get(key))


def count(client: redis.Redis, flow_id: str, what: str) -> int:
    return int(get(client, f"side:{flow_id}:{what}") or 0)


async def emit(redis_url: str, n: int, slow_step: str, slow: float) -> list[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.apps.emit",
        redis_url,
        "workflow",
        str(n),
        slow_step,
        str(slow),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    return out.decode().split()


async def test_a_sigkilled_worker_loses_no_flow_and_later_steps_run_once(
    redis_url: str, redis_client: redis.Redis, workers: Workers, emitter: ArqWorkflowProvider
) -> None:
    # One on asyncio's event loop, one on uvloop's (the default): they share the flows.
    first, second = workers.start(args=("--loop", "asyncio")), workers.start(console_script=True)
    await workers.ready(first, second)
    assert "on asyncio's event loop" in workers.log(first)
    assert "on uvloop's event loop" in workers.log(second)
    flow_ids = await emit(redis_url, 12, "charge", 2.0)
    assert len(flow_ids) == 12

    running = await inflight(redis_client, "charge")
    victim = first if first.pid in running.values() else second
    await asyncio.sleep(0.2)  # let the other charges of the victim start too
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = time.monotonic()
    killed = {f for f, pid in (await inflight(redis_client, "charge")).items() if pid == victim.pid}
    assert killed
    replacement = workers.start()
    await workers.ready(replacement)

    handles = [await emitter.get_handle(flow_id) for flow_id in flow_ids]
    results = await asyncio.gather(*(h.result(timeout=30) for h in handles))
    # The killed charges ran again elsewhere within the stall interval plus a few seconds (their 2 s included).
    assert time.monotonic() - killed_at < STALL + 2.0 + 5.0

    for flow_id, result in zip(flow_ids, results, strict=True):
        assert isinstance(result, Receipt)
        assert await emitter.get_status(flow_id) == FlowStatus.COMPLETED
        for step in ORDER.step_names:
            assert count(redis_client, flow_id, f"{step}:done") == 1, (flow_id, step)
            assert count(redis_client, flow_id, f"{step}:rolled_back") == 0
        assert count(redis_client, flow_id, "complete") == 1
        expected = 2 if flow_id in killed else 1
        assert count(redis_client, flow_id, "charge:started") == expected, flow_id
        for step in ("validate", "email", "sms", "finalize"):
            assert count(redis_client, flow_id, f"{step}:started") == 1, (flow_id, step)
        if flow_id in killed:
            assert result.pids["charge"] != victim.pid
    # Nothing is left over: no job waits, no lease is held.
    assert redis_client.zcard("workflow.it-order.steps") == redis_client.zcard("workflow.it-order") == 0
    assert redis_client.zcard("workflow:leases") == 0

    for worker in (first, second, replacement):
        if worker is not victim:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=15) == 0


async def test_sigterm_lets_the_running_step_finish_and_hands_the_flow_on(
    redis_client: redis.Redis, workers: Workers, emitter: ArqWorkflowProvider
) -> None:
    worker = workers.start("tests.integration.apps.orders:create_plait_app")  # a Plait application, without HTTP
    await workers.ready(worker)
    handle = await emitter.execute(ORDER, Order(order_id="o-1", slow_step="charge", slow=1.0))
    await inflight(redis_client, "charge")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    assert count(redis_client, handle.id, "charge:done") == 1  # finished within the grace period
    assert await handle.status() == FlowStatus.RUNNING  # the rest waits in the queue for another worker

    successor = workers.start("tests.integration.apps.orders:create_plait_app")
    await workers.ready(successor)
    result = await handle.result(timeout=15)
    assert result.order_id == "o-1"
    assert count(redis_client, handle.id, "charge:started") == 1
    assert result.pids["email"] == successor.pid
    successor.send_signal(signal.SIGTERM)
    assert successor.wait(timeout=15) == 0


# -- handlers raising BaseExceptions --


@pytest.mark.parametrize("raises", ["SystemExit", "KeyboardInterrupt", "GeneratorExit"])
async def test_a_step_raising_a_base_exception_fails_its_attempt_and_the_worker_goes_on(
    redis_client: redis.Redis, workers: Workers, emitter: ArqWorkflowProvider, raises: str
) -> None:
    worker = workers.start()
    await workers.ready(worker)
    handle = await emitter.execute(ORDER, Order(order_id="o-1", raise_in="charge", raises=raises))
    with pytest.raises(WorkflowStepError) as caught:
        await handle.result(timeout=15)
    assert caught.value.step_name == "charge"
    assert isinstance(caught.value.cause, RemoteError)
    assert caught.value.cause.type_name == raises
    assert count(redis_client, handle.id, "validate:rolled_back") == 1  # the flow went on: it rolled back
    # The same process runs the next flow.
    after = await emitter.execute(ORDER, Order(order_id="o-2"))
    assert (await after.result(timeout=15)).pids["finalize"] == worker.pid
    assert worker.poll() is None
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0


async def test_a_base_exception_from_code_the_runner_does_not_guard_does_not_end_the_worker(
    redis_client: redis.Redis, workers: Workers, emitter: ArqWorkflowProvider
) -> None:
    # The runner raises SystemExit after the step returned (a bug in Plait, outside any handler): it reaches the
    # worker's own code, which logs it, hands the job back and goes on; the step's second start completes.
    worker = workers.start()
    await workers.ready(worker)
    handle = await emitter.execute(ORDER, Order(order_id="o-1", boom_in="charge"))
    result = await handle.result(timeout=15)
    assert result.pids["charge"] == worker.pid
    assert count(redis_client, handle.id, "charge:started") == 2
    assert worker.poll() is None
    log = workers.log(worker)
    assert "Internal error running job" in log
    assert "SystemExit: a bug in Plait asked the process to exit" in log
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0


# -- zombie workers --


async def test_a_worker_paused_past_its_lease_cancels_its_handler_instead_of_landing_a_duplicate(
    redis_client: redis.Redis, workers: Workers, emitter: ArqWorkflowProvider
) -> None:
    first, second = workers.start(), workers.start()
    await workers.ready(first, second)
    handle = await emitter.execute(ORDER, Order(order_id="o-1", slow_step="charge", slow=3.0))
    running = await inflight(redis_client, "charge")
    paused = first if running[handle.id] == first.pid else second
    paused.send_signal(signal.SIGSTOP)  # mid-step: its handler sleeps until it would land the side effect
    try:
        # The lease runs out, the other worker takes the step over; the paused one resumes after its handler's
        # sleep has ended, with the side effect one step away.
        await asyncio.sleep(STALL + 3.0)
    finally:
        paused.send_signal(signal.SIGCONT)
    await handle.result(timeout=15)
    # The step ran again (on the other worker, unless a loaded machine starved it until the paused one resumed
    # and took the job back itself); either way its side effect landed once.
    assert count(redis_client, handle.id, "charge:started") == 2
    assert count(redis_client, handle.id, "charge:done") == 1, "the paused worker landed its side effect too"
    await workers.logged(paused, "Lost the lease of 1 job(s)")
    assert "cancelled their handlers" in workers.log(paused)
    for worker in (first, second):
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
