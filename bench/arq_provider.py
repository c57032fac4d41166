"""arq provider against raw arq, side by side on one Redis, two worker processes each.

Starts its own ``redis-server`` on a free loopback port, two Plait workers (``plait worker``, this module's
``create_app``) and two raw arq workers (``arq.worker.Worker`` configured for speed: a small ``poll_delay``, JSON
serialisation, ``max_jobs`` as Plait's concurrency), then measures, alternating rounds:

* throughput: Plait steps/s of the 5-step order shape (validate -> charge -> [email || sms] -> finalize, no-op
  handlers) from an emitter process that registers no consumer, against raw arq no-op jobs/s (a job is done
  when arq removes it from its queue, which it does after recording the result);
* latency: p50 of one 4-step sequential flow (execute, then ``result()``) against p50 of one raw arq job
  (``enqueue_job``, then ``job.result()`` polling at the same small delay);
* quiet: Redis commands per second (``INFO commandstats``) of an idle Plait worker.

Run: ``uv run python -m bench.arq_provider [--flows N] [--rounds K] [--poll-delay S]``. Prints the numbers and
ratios; exits non-zero only if something crashes (targets are reported, not enforced).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker

from bench.common import (
    percentile,
    plait_worker_command,
    redis_calls,
    redis_server,
    redis_url,
    spawn,
    stop,
    wait_for_clients,
)
from bench.workload import Line, LineWorkflow, Order, OrderWorkflow, Out, ProcessOrder
from plait.providers.arq import ArqWorkflowProvider
from plait.providers.arq._keys import dumps, loads

CONCURRENCY = 100  # Plait's per-workflow concurrency and arq's max_jobs

ORDER_STEPS = len(ProcessOrder.step_names)


def create_app() -> ArqWorkflowProvider:
    """The Plait worker: ``plait worker bench.arq_provider:create_app`` with ``PLAIT_BENCH_REDIS_URL`` set."""
    provider = ArqWorkflowProvider(os.environ["PLAIT_BENCH_REDIS_URL"], concurrency=CONCURRENCY)
    provider.register(ProcessOrder, OrderWorkflow())
    provider.register(Line, LineWorkflow())
    return provider


# --- raw arq ----------------------------------------------------------------------------------------------

ARQ_QUEUE = "bench.raw"


async def noop(ctx: dict[str, Any]) -> None:
    """The raw arq job: nothing."""
    return None


async def stamp(ctx: dict[str, Any]) -> float:
    """A raw arq job that returns when it started (``time.time()``), for the enqueue-to-start latency."""
    return time.time()


def arq_worker_command(url: str, poll_delay: float) -> list[str]:
    """A process running :func:`run_arq_worker`."""
    return [sys.executable, "-m", "bench.arq_provider", "arq-worker", url, str(poll_delay)]


def run_arq_worker(url: str, poll_delay: float) -> None:
    """A raw arq worker, configured for speed, until SIGTERM."""
    worker = Worker(
        functions=[noop, stamp],
        queue_name=ARQ_QUEUE,
        redis_settings=RedisSettings.from_dsn(url),
        poll_delay=poll_delay,
        max_jobs=CONCURRENCY,
        job_serializer=dumps,
        job_deserializer=loads,
        keep_result=60,
        log_results=False,
    )
    worker.run()


# --- measurements -----------------------------------------------------------------------------------------


async def arq_throughput(pool: ArqRedis, jobs: int) -> float:
    """Raw arq no-op jobs per second: enqueue them all, wait until arq has finished every one."""
    started = time.perf_counter()
    for first in range(0, jobs, 200):
        await asyncio.gather(*(pool.enqueue_job("noop", _queue_name=ARQ_QUEUE) for _ in range(first, first + 200)))
    # arq removes a job from its queue once it has finished it; its callers can only poll.
    while await pool.zcard(ARQ_QUEUE):  # noqa: ASYNC110
        await asyncio.sleep(0.002)
    return jobs / (time.perf_counter() - started)


async def plait_throughput(provider: ArqWorkflowProvider, flows: int) -> float:
    """Plait steps per second of the order shape: execute every flow, wait for every result."""
    started = time.perf_counter()
    handles = []
    for first in range(0, flows, 200):
        batch = range(first, min(flows, first + 200))
        handles += await asyncio.gather(
            *(provider.execute(ProcessOrder, Order(order_id=f"o-{i}", amount=1.0)) for i in batch)
        )
    await asyncio.gather(*(h.result(timeout=120) for h in handles))
    return flows * ORDER_STEPS / (time.perf_counter() - started)


async def arq_round_trips(pool: ArqRedis, samples: int, poll_delay: float) -> list[tuple[float, float]]:
    """Seconds from ``enqueue_job`` to the job starting and to ``job.result()``, one job at a time (the job
    returns when it started)."""
    times = []
    for _ in range(samples):
        enqueued = time.time()
        job = await pool.enqueue_job("stamp", _queue_name=ARQ_QUEUE)
        assert job is not None
        started = await job.result(timeout=10, poll_delay=poll_delay)
        times.append((started - enqueued, time.time() - enqueued))
    return times


async def arq_latency(pool: ArqRedis, samples: int, poll_delay: float) -> list[float]:
    """Seconds from ``enqueue_job`` to ``job.result()`` of one job at a time."""
    return [done for _, done in await arq_round_trips(pool, samples, poll_delay)]


async def arq_start_latency(pool: ArqRedis, samples: int, poll_delay: float) -> list[float]:
    """Seconds from ``enqueue_job`` to the job starting, one job at a time."""
    return [started for started, _ in await arq_round_trips(pool, samples, poll_delay)]


async def plait_latency(provider: ArqWorkflowProvider, samples: int) -> list[float]:
    """Seconds from ``execute()`` to ``result()`` of one 4-step sequential flow at a time."""
    times = []
    for i in range(samples):
        started = time.perf_counter()
        handle = await provider.execute(Line, Out(n=i))
        await handle.result(timeout=10)
        times.append(time.perf_counter() - started)
    return times


async def commands_per_second(pool: ArqRedis, seconds: float) -> float:
    """Redis commands per second over ``seconds``, not counting the two INFO calls that measure it."""

    before = await redis_calls(pool)
    await asyncio.sleep(seconds)
    return (await redis_calls(pool) - before - 1) / seconds


# --- orchestration ----------------------------------------------------------------------------------------


async def measure(args: argparse.Namespace, url: str, arq_workers: list[subprocess.Popen[bytes]]) -> dict[str, float]:
    """Runs every measurement against workers that are starting up; stops the arq workers at the end."""
    pool = await create_pool(RedisSettings.from_dsn(url), job_serializer=dumps, job_deserializer=loads)
    emitter = ArqWorkflowProvider(url)
    emitter.register(ProcessOrder)  # definitions only: this process runs no step
    emitter.register(Line)
    await emitter.start()
    try:
        await wait_for_clients(pool, 4)
        # Warm up both sides (imports, script caches, connections).
        await plait_latency(emitter, 20)
        await arq_latency(pool, 20, args.poll_delay)
        await plait_throughput(emitter, 200)
        await arq_throughput(pool, 1000)
        plait_rates, arq_rates = [], []
        for _ in range(args.rounds):
            arq_rates.append(await arq_throughput(pool, args.flows * ORDER_STEPS))
            plait_rates.append(await plait_throughput(emitter, args.flows))
        plait_lat, arq_lat = [], []
        for _ in range(args.rounds):
            arq_lat += await arq_latency(pool, args.samples, args.poll_delay)
            plait_lat += await plait_latency(emitter, args.samples)
        await emitter.stop()
        await asyncio.sleep(1.0)
        idle_all = await commands_per_second(pool, args.idle)
        for worker in arq_workers:
            worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(lambda: [w.wait(timeout=30) for w in arq_workers])
        await asyncio.sleep(1.0)
        idle_plait = await commands_per_second(pool, args.idle)
    finally:
        await emitter.stop()
        await pool.aclose()
    return {
        "arq_rate": statistics.median(arq_rates),
        "plait_rate": statistics.median(plait_rates),
        "arq_p50": statistics.median(arq_lat),
        "arq_p90": percentile(arq_lat, 0.9),
        "plait_p50": statistics.median(plait_lat),
        "plait_p90": percentile(plait_lat, 0.9),
        "idle_plait": idle_plait,
        "idle_arq": idle_all - idle_plait,
    }


def report(args: argparse.Namespace, m: dict[str, float]) -> None:
    ms = 1000
    print(
        f"setup: one redis-server; 2 Plait workers; 2 raw arq workers (poll_delay={args.poll_delay}s, JSON, "
        f"max_jobs={CONCURRENCY}); {args.rounds} alternating rounds; {os.cpu_count()} CPUs"
    )
    print(f"throughput  raw arq no-op jobs:       {m['arq_rate']:8,.0f} jobs/s   (median of {args.rounds} rounds)")
    print(f"            Plait order-shape steps:  {m['plait_rate']:8,.0f} steps/s  ({args.flows} flows x 5 steps)")
    print(f"            ratio Plait / arq:        {m['plait_rate'] / m['arq_rate']:8.2f}         (target >= 0.7)")
    print(f"latency     raw arq job p50:          {m['arq_p50'] * ms:8.2f} ms       (p90 {m['arq_p90'] * ms:.2f} ms)")
    plait_p50, plait_p90 = m["plait_p50"] * ms, m["plait_p90"] * ms
    print(f"            Plait 4-step flow p50:    {plait_p50:8.2f} ms       (p90 {plait_p90:.2f} ms)")
    print(f"            ratio Plait / arq:        {m['plait_p50'] / m['arq_p50']:8.2f}         (target <= 4.0)")
    idle = m["idle_plait"]
    print(f"idle        2 Plait workers:          {idle:8.1f} cmds/s   ({idle / 2:.1f} per worker, target <= 20)")
    print(f"            2 raw arq workers:        {m['idle_arq']:8.1f} cmds/s   (for comparison)")


def run(args: argparse.Namespace) -> None:
    workers: list[subprocess.Popen[bytes]] = []
    with redis_server() as port:
        try:
            url = redis_url(port)
            env = {"PLAIT_BENCH_REDIS_URL": url}
            workers += [spawn(plait_worker_command("bench.arq_provider:create_app"), env) for _ in range(2)]
            arq_workers = [spawn(arq_worker_command(url, args.poll_delay), env) for _ in range(2)]
            workers += arq_workers
            report(args, asyncio.run(measure(args, url, arq_workers)))
        finally:
            stop(workers)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "arq-worker":
        run_arq_worker(sys.argv[2], float(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--flows", type=int, default=1000, help="order flows per throughput round (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--samples", type=int, default=100, help="latency samples per round (default 100)")
    parser.add_argument("--poll-delay", type=float, default=0.01, help="raw arq poll_delay in seconds (0.01)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds to count idle commands (default 10)")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
