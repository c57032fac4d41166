"""Real worker processes (``plait worker``): crash one mid-step, stop one gracefully, count every side effect.

Flows are started by an emitter process that registers no consumer and exits at once; this process re-attaches
to them with ``get_handle()``. Workers run a bare provider or a Plait application built by the app builder.
Handlers count their starts and completions in Redis (see ``apps/orders.py``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import cast

import pytest
import pytest_asyncio
import redis

from plait.core import FlowStatus
from plait.providers.arq import ArqWorkflowProvider
from tests.integration.apps.orders import ORDER, Order, Receipt

ROOT = Path(__file__).resolve().parents[2]
PLAIT = Path(sys.executable).parent / "plait"  # the console script of plait-providers-arq
STALL = 1.0

StartWorker = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_worker(redis_url: str, tmp_path: Path) -> Iterator[StartWorker]:
    """Starts ``plait worker tests.integration.apps.orders:<factory>`` processes; kills leftovers afterwards.

    Each writes its log to ``worker-<n>.log`` (``worker.args[-1]`` names it); the logs are printed at the end.
    """
    started: list[subprocess.Popen[bytes]] = []

    def start(*, console_script: bool = False, factory: str = "create_app") -> subprocess.Popen[bytes]:
        command = [str(PLAIT)] if console_script else [sys.executable, "-m", "plait.providers.arq"]
        command += ["worker", f"tests.integration.apps.orders:{factory}", "--app-dir", str(ROOT)]
        env = {**os.environ, "PLAIT_TEST_REDIS_URL": redis_url, "PLAIT_TEST_STALL": str(STALL)}
        log = tmp_path / f"worker-{len(started)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        LOGS[process.pid] = log
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
    for log in sorted(tmp_path.glob("worker-*.log")):
        sys.stdout.write(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}\n")


@pytest_asyncio.fixture
async def emitter(redis_url: str) -> AsyncIterator[ArqWorkflowProvider]:
    """A provider of this process that knows the definition but runs no step."""
    provider = ArqWorkflowProvider(redis_url)
    provider.register(ORDER)
    await provider.start()
    yield provider
    await provider.stop()


LOGS: dict[int, Path] = {}


async def ready(*workers: subprocess.Popen[bytes], within: float = 20.0) -> None:
    """Waits until each worker logged that it runs (after its application's ``start()`` returned)."""
    deadline = time.monotonic() + within
    for worker in workers:
        while f"running (pid {worker.pid})" not in LOGS[worker.pid].read_text(errors="replace"):
            assert worker.poll() is None, f"worker {worker.pid} exited with {worker.returncode}"
            assert time.monotonic() < deadline, "workers did not start"
            await asyncio.sleep(0.05)


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
    redis_url: str, redis_client: redis.Redis, start_worker: StartWorker, emitter: ArqWorkflowProvider
) -> None:
    first, second = start_worker(), start_worker(console_script=True)
    await ready(first, second)
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
    replacement = start_worker()
    await ready(replacement)

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
    redis_client: redis.Redis, start_worker: StartWorker, emitter: ArqWorkflowProvider
) -> None:
    worker = start_worker(factory="create_plait_app")  # a Plait application, run without HTTP
    await ready(worker)
    handle = await emitter.execute(ORDER, Order(order_id="o-1", slow_step="charge", slow=1.0))
    await inflight(redis_client, "charge")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    assert count(redis_client, handle.id, "charge:done") == 1  # finished within the grace period
    assert await handle.status() == FlowStatus.RUNNING  # the rest waits in the queue for another worker

    successor = start_worker(factory="create_plait_app")
    await ready(successor)
    result = await handle.result(timeout=15)
    assert result.order_id == "o-1"
    assert count(redis_client, handle.id, "charge:started") == 1
    assert result.pids["email"] == successor.pid
    successor.send_signal(signal.SIGTERM)
    assert successor.wait(timeout=15) == 0
