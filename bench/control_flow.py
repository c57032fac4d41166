"""For-each scaling on both providers; on arq, a signal's round trip and a 0-second sleep beside raw arq's latency.

* **For-each scaling:** one flow whose only node is ``s.for_each("item", Done, items=..., concurrency=10)``
  over no-op items (``--item-concurrency`` sets the bound), at each size (1,000 and 10,000 items by default).
  Each round runs the same number of items at every size (ten 1,000-item flows one after another, one
  10,000-item flow), sizes alternating, on the in-process provider (in this process) and on arq (two ``plait
  worker`` processes; this process only starts flows). Reports items/s and the per-item cost of the largest size
  against the smallest: wall time, and on arq also the CPU seconds the workers and redis-server spent, which
  other work on a shared machine disturbs less. It also counts the jobs the workers handed back after an internal
  error (each waits out ``stall_interval`` before it runs again).
* **Latency on arq**, one flow at a time, the kinds interleaved sample by sample:

  - a signal's round trip: from ``await emitter.signal(flow_id, "go", payload)`` on a flow that waits for it to
    the next step's handler starting (the handler returns its ``time.time()``);
  - a 0-second sleep: ``step -> s.sleep(seconds=0) -> step``, from the first step's handler to the second's (each
    returns its ``time.time()``; the first does nothing else, so its start is its end);
  - beside them, the same gap between two steps in a row with no sleep, and raw arq's job round trip: from
    ``enqueue_job`` to the job starting (two ``arq.worker.Worker`` processes polling every ``--poll-delay``,
    started for this part only).

Starts its own ``redis-server`` (no persistence) on a free loopback port. Run: ``uv run python -m
bench.control_flow [--sizes 1000 10000] [--rounds K] [--samples N] [--item-concurrency C] [--poll-delay S]``.
Prints the numbers; exits 0 (targets are reported, not enforced).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO

from arq.connections import ArqRedis, RedisSettings, create_pool
from pydantic import BaseModel

from bench.arq_provider import CONCURRENCY, arq_start_latency, arq_worker_command
from bench.common import (
    cpu_seconds,
    internal_errors,
    percentile,
    plait_worker_command,
    redis_calls,
    redis_cpu_seconds,
    redis_server,
    redis_url,
    spawn,
    stop,
    wait_for_clients,
    wait_for_plait_workers,
    wait_until,
)
from bench.inprocess import Timing, clock, since
from plait.core import (
    FlowStatus,
    IWorkflowConsumer,
    StepContext,
    StepHandler,
    Workflow,
    WorkflowContext,
    WorkflowDefinition,
)
from plait.providers.arq import ArqWorkflowProvider
from plait.providers.arq._keys import dumps, loads
from plait.providers.inprocess import InProcessWorkflowProvider

# Not the engine's default of 100: at 100, every item's commit on arq races the others' compare-and-set on the
# one flow (about 50 tries per item, 25-36 items/s: a 10,000-item flow takes 6 minutes; see BENCHMARKS.md).
# --item-concurrency 100 measures that.
ITEM_CONCURRENCY = 10


class Count(BaseModel):
    n: int


class Done(BaseModel):
    ok: bool = True


class Stamp(BaseModel):
    at: float


class Stamps(BaseModel):
    before: float
    after: float


def fan_out(concurrency: int) -> WorkflowDefinition[Count, Count]:
    """One for-each of ``ctx.data.n`` no-op items, at most ``concurrency`` at once."""
    return Workflow.define(name="bench-fan-out", data=Count, result=Count).steps(
        lambda s: s.sequential(s.for_each("item", Done, items=lambda ctx: range(ctx.data.n), concurrency=concurrency))
    )


Signalled = Workflow.define(name="bench-signal", data=Count, result=Stamps).steps(
    lambda s: s.sequential(s.wait_for("go", Stamp), s.step("after", Stamp))
)

Napping = Workflow.define(name="bench-sleep", data=Count, result=Stamps).steps(
    lambda s: s.sequential(s.step("before", Stamp), s.sleep("nap", seconds=0), s.step("after", Stamp))
)

Stepping = Workflow.define(name="bench-steps", data=Count, result=Stamps).steps(
    lambda s: s.sequential(s.step("before", Stamp), s.step("after", Stamp))
)


class FanOutWorkflow(IWorkflowConsumer[Count, Count]):
    """A no-op item handler: the benchmark measures the fan-out, not the work."""

    def __init__(self) -> None:
        self.steps = {"item": StepHandler(execute=self.item)}

    async def item(self, ctx: StepContext[Count]) -> Done:
        return Done()

    async def on_complete(self, ctx: WorkflowContext[Count]) -> Count:
        return Count(n=len(ctx.results_of("item", Done)))


class StampWorkflow(IWorkflowConsumer[Count, Stamps]):
    """Each step returns when its handler started; the result gathers them (the signal's payload says when it was
    sent)."""

    def __init__(self, *names: str) -> None:
        self.steps = {name: StepHandler(execute=self.stamp) for name in names}

    async def stamp(self, ctx: StepContext[Count]) -> Stamp:
        return Stamp(at=time.time())

    async def on_complete(self, ctx: WorkflowContext[Count]) -> Stamps:
        first = "go" if "go" in ctx.results else "before"
        return Stamps(before=ctx.result(first, Stamp).at, after=ctx.result("after", Stamp).at)


def create_app() -> ArqWorkflowProvider:
    """The Plait worker: ``plait worker bench.control_flow:create_app`` with ``PLAIT_BENCH_REDIS_URL`` set."""
    provider = ArqWorkflowProvider(os.environ["PLAIT_BENCH_REDIS_URL"], concurrency=CONCURRENCY)
    concurrency = int(os.environ.get("PLAIT_BENCH_ITEM_CONCURRENCY", ITEM_CONCURRENCY))
    provider.register(fan_out(concurrency), FanOutWorkflow())
    provider.register(Signalled, StampWorkflow("after"))
    provider.register(Napping, StampWorkflow("before", "after"))
    provider.register(Stepping, StampWorkflow("before", "after"))
    return provider


# --- for-each scaling -------------------------------------------------------------------------------------


@dataclass
class Scaling:
    """Seconds per round of each size: wall, and CPU (this process in-process; workers plus Redis on arq)."""

    wall: dict[int, list[float]] = field(default_factory=dict)
    cpu: dict[int, list[float]] = field(default_factory=dict)
    redis_cpu: dict[int, list[float]] = field(default_factory=dict)
    redis_calls: dict[int, list[int]] = field(default_factory=dict)

    def add(self, size: int, wall: float, cpu: float, redis_cpu: float = 0.0, redis_calls: int = 0) -> None:
        self.redis_calls.setdefault(size, []).append(redis_calls)
        self.wall.setdefault(size, []).append(wall)
        self.cpu.setdefault(size, []).append(cpu)
        self.redis_cpu.setdefault(size, []).append(redis_cpu)


async def inprocess_fan_out(definition: WorkflowDefinition[Count, Count], size: int, flows: int) -> Timing:
    """Runs ``flows`` for-each flows of ``size`` items one after another on a fresh in-process provider."""
    provider = InProcessWorkflowProvider()
    provider.register(definition, FanOutWorkflow())
    await provider.start()
    try:
        gc.collect()
        started = clock()
        for _ in range(flows):
            handle = await provider.execute(definition, Count(n=size))
            assert (await handle.result()).n == size
        return since(started)
    finally:
        await provider.stop()


async def arq_fan_out(
    emitter: ArqWorkflowProvider, definition: WorkflowDefinition[Count, Count], size: int, flows: int
) -> float:
    """Runs ``flows`` for-each flows of ``size`` items one after another on the workers; returns wall seconds."""
    started = time.perf_counter()
    for _ in range(flows):
        handle = await emitter.execute(definition, Count(n=size))
        assert (await handle.result(timeout=600)).n == size
    return time.perf_counter() - started


def flows_per_round(size: int, sizes: list[int]) -> int:
    """Every size runs as many items per round as the largest: ten 1,000-item flows beside one of 10,000."""
    return max(1, max(sizes) // size)


async def measure_inprocess(definition: WorkflowDefinition[Count, Count], sizes: list[int], rounds: int) -> Scaling:
    scaling = Scaling()
    for size in sizes:
        await inprocess_fan_out(definition, size, 1)  # warm-up
    for _ in range(rounds):
        for size in sizes:
            cpu, wall = await inprocess_fan_out(definition, size, flows_per_round(size, sizes))
            scaling.add(size, wall, cpu)
    return scaling


async def measure_arq(
    emitter: ArqWorkflowProvider,
    definition: WorkflowDefinition[Count, Count],
    redis: ArqRedis,
    workers: list[subprocess.Popen[bytes]],
    sizes: list[int],
    rounds: int,
) -> Scaling:
    scaling = Scaling()
    pids = [worker.pid for worker in workers]
    await arq_fan_out(emitter, definition, min(sizes), 1)  # warm-up
    for _ in range(rounds):
        for size in sizes:
            cpu, redis_cpu, calls = cpu_seconds(pids), await redis_cpu_seconds(redis), await redis_calls(redis)
            wall = await arq_fan_out(emitter, definition, size, flows_per_round(size, sizes))
            cpu, redis_cpu = cpu_seconds(pids) - cpu, await redis_cpu_seconds(redis) - redis_cpu
            scaling.add(size, wall, cpu, redis_cpu, await redis_calls(redis) - calls - 3)  # not the 3 INFO calls
    return scaling


# --- latency ----------------------------------------------------------------------------------------------


async def signal_trip(emitter: ArqWorkflowProvider, i: int) -> float:
    """Seconds from ``signal()`` to the next step's handler starting, on a flow already waiting for it."""
    handle = await emitter.execute(Signalled, Count(n=i))

    async def waiting() -> bool:
        return await emitter.get_status(handle.id) == FlowStatus.WAITING

    await wait_until(waiting, "the flow to wait for its signal", within=10)
    sent = time.time()
    await emitter.signal(handle.id, "go", Stamp(at=sent))
    stamps = await handle.result(timeout=10)
    return stamps.after - stamps.before


async def gap(emitter: ArqWorkflowProvider, sleeping: bool, i: int) -> float:
    """Seconds from one step's handler to the next one's, with a 0-second sleep between them or not."""
    handle = await emitter.execute(Napping if sleeping else Stepping, Count(n=i))
    stamps = await handle.result(timeout=10)
    return stamps.after - stamps.before


@dataclass
class Latencies:
    signal: list[float] = field(default_factory=list)
    sleep: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    arq: list[float] = field(default_factory=list)


async def measure_latency(emitter: ArqWorkflowProvider, pool: ArqRedis, samples: int, poll_delay: float) -> Latencies:
    latencies = Latencies()
    for i in range(samples):
        latencies.arq += await arq_start_latency(pool, 1, poll_delay)
        latencies.steps.append(await gap(emitter, False, i))
        latencies.sleep.append(await gap(emitter, True, i))
        latencies.signal.append(await signal_trip(emitter, i))
    return latencies


# --- orchestration ----------------------------------------------------------------------------------------


@dataclass
class Results:
    inprocess: Scaling
    arq: Scaling | None = None
    latency: Latencies | None = None
    errors: tuple[int, str] = (0, "")


async def measure(args: argparse.Namespace, url: str, env: dict[str, str]) -> Results:
    definition = fan_out(args.item_concurrency)
    results = Results(await measure_inprocess(definition, args.sizes, args.rounds))
    if not args.inprocess_only:
        with tempfile.TemporaryFile() as log:  # the workers' stderr, to count the jobs they handed back
            await measure_on_arq(args, url, env, definition, results, log)
            results.errors = internal_errors(log)
    return results


async def measure_on_arq(
    args: argparse.Namespace,
    url: str,
    env: dict[str, str],
    definition: WorkflowDefinition[Count, Count],
    results: Results,
    log: IO[bytes],
) -> None:
    pool = await create_pool(RedisSettings.from_dsn(url), job_serializer=dumps, job_deserializer=loads)
    emitter = ArqWorkflowProvider(url)
    emitter.register(definition)  # definitions only: this process runs no step
    emitter.register(Signalled)
    emitter.register(Napping)
    emitter.register(Stepping)
    await emitter.start()
    workers = [spawn(plait_worker_command("bench.control_flow:create_app"), env, stderr=log) for _ in range(2)]
    arq_workers: list[subprocess.Popen[bytes]] = []
    try:
        await wait_for_plait_workers(pool, emitter.keys.cancel, 2)
        results.arq = await measure_arq(emitter, definition, pool, workers, args.sizes, args.rounds)
        # Raw arq workers poll all the time: they run for the latency part only.
        arq_workers = [spawn(arq_worker_command(url, args.poll_delay), env) for _ in range(2)]
        await wait_for_clients(pool, 4)
        await measure_latency(emitter, pool, 5, args.poll_delay)  # warm-up
        results.latency = await measure_latency(emitter, pool, args.samples, args.poll_delay)
    finally:
        await emitter.stop()
        await pool.aclose()
        await asyncio.to_thread(stop, workers + arq_workers)


def report_scaling(title: str, scaling: Scaling, sizes: list[int], cpu_what: str) -> None:
    print(title)
    small, large = min(sizes), max(sizes)
    per_item: dict[int, tuple[float, float, float]] = {}
    for size in sizes:
        items = size * flows_per_round(size, sizes)
        wall, cpu = statistics.median(scaling.wall[size]), statistics.median(scaling.cpu[size])
        redis_cpu = statistics.median(scaling.redis_cpu[size])
        per_item[size] = (wall / items, cpu / items, redis_cpu / items)
        line = f"  {size:>7,} items/flow, {items // size:>3} flow(s)/round: {items / wall:8,.0f} items/s (wall)"
        line += f"   {cpu / items * 1e6:7.1f} us CPU/item ({cpu_what})"
        if redis_cpu:
            calls = statistics.median(scaling.redis_calls[size]) / items
            line += f"   {redis_cpu / items * 1e6:6.1f} us Redis CPU/item, {calls:5.1f} Redis commands/item"
            rounds = ", ".join(f"{items / wall:,.0f}" for wall in scaling.wall[size])
            line += f"\n{'':>43}rounds: {rounds} items/s"
        print(line)
    ratios = [per_item[large][k] / per_item[small][k] for k in range(3) if per_item[small][k]]
    labels = ["wall", cpu_what, "Redis CPU"][: len(ratios)]
    shown = ", ".join(f"{label} {ratio:.2f}x" for label, ratio in zip(labels, ratios, strict=True))
    print(f"  per-item cost {large:,} vs {small:,}: {shown}   (target: not much above 1.0x)")


def report_latency(latency: Latencies, poll_delay: float) -> None:
    ms = 1000
    print(f"latency on arq ({len(latency.signal)} samples each, interleaved)       p50        p95")
    rows = [
        ("raw arq job, enqueue -> start", latency.arq, f"(poll_delay {poll_delay * ms:g} ms)"),
        ("Plait step -> next step", latency.steps, ""),
        ("Plait step -> sleep(0) -> next step", latency.sleep, ""),
        ("Plait signal() -> next step starts", latency.signal, ""),
    ]
    for label, values, note in rows:
        p50, p95 = statistics.median(values) * ms, percentile(values, 0.95) * ms
        print(f"  {label:<42} {p50:7.2f} ms {p95:7.2f} ms  {note}")
    arq = statistics.median(latency.arq)
    signal, sleep, steps = (statistics.median(v) / arq for v in (latency.signal, latency.sleep, latency.steps))
    print(f"  p50 ratios to raw arq: signal {signal:.2f}x, sleep(0) {sleep:.2f}x, step -> step {steps:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000], help="items per flow (1000 10000)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the for-each part (default 2)")
    parser.add_argument("--samples", type=int, default=50, help="latency samples of each kind (default 50)")
    parser.add_argument("--poll-delay", type=float, default=0.01, help="raw arq poll_delay in seconds (0.01)")
    parser.add_argument("--item-concurrency", type=int, default=ITEM_CONCURRENCY, help="the for-each's (10)")
    parser.add_argument("--inprocess-only", action="store_true", help="skip the arq part")
    args = parser.parse_args()
    args.sizes = sorted(set(args.sizes))
    with redis_server() as port:
        url = redis_url(port)
        env = {"PLAIT_BENCH_REDIS_URL": url, "PLAIT_BENCH_ITEM_CONCURRENCY": str(args.item_concurrency)}
        results = asyncio.run(measure(args, url, env))
    print(
        f"setup: {os.cpu_count()} CPUs; for-each concurrency {args.item_concurrency}, no-op items; {args.rounds} "
        "alternating rounds, medians; arq: one redis-server, 2 plait workers, this process starts flows"
    )
    report_scaling("for-each, in-process provider:", results.inprocess, args.sizes, "this process")
    if results.arq is not None:
        report_scaling("for-each, arq provider (2 workers):", results.arq, args.sizes, "workers")
    if results.latency is not None:
        report_latency(results.latency, args.poll_delay)
    if results.arq is not None:
        count, first = results.errors
        print(
            f"jobs the Plait workers handed back after an internal error: {count}"
            + (f" (first: {first})" * bool(count))
        )


if __name__ == "__main__":
    main()
