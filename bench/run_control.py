"""The arq provider's run control: the event stream's cost, listing flows as they pile up, and cancel latency.

* **Events on vs off:** steps/s of the 5-step order shape (validate -> charge -> [email || sms] -> finalize, no-op
  handlers), 1,000 flows a round: every ``execute()``, then every ``result()``, from this process (an emitter),
  run by two ``plait worker`` processes with the event stream on (the default), and by two others (their own
  queue prefix) built with ``ArqWorkflowProvider(..., record_events=False)``. Beside them raw arq no-op jobs/s
  (two ``arq.worker.Worker`` processes, as in ``bench.arq_provider``). The three sides alternate rounds (their
  order rotating); medians are reported, with the CPU seconds per step of the side's workers and of redis-server.
* **Cancel latency:** a flow whose one step blocks (in a worker with events on) until it is cancelled; this process
  calls ``cancel(flow_id)`` once the handler has started, and the handler records ``time.time()`` when it sees its
  ``CancelledError`` (pushed to a Redis list). One flow at a time.
* **Listing:** two stores of flows under their own queue prefixes, 10,000 and 100,000 flows, created with
  ``execute()`` (in concurrent batches) while no worker runs them, so they stay pending: 80% of the order
  workflow, 20% of ``bench-line``; one flow in ten is then cancelled, which leaves it ``compensating`` (its
  ``on_error`` waits for a worker). Then ``list_flows(limit=50)`` one call at a time: unfiltered, by workflow
  (``bench-line``), by status (``compensating``), and page after page with a cursor, starting from a cursor in the
  middle of the listing. The two sizes alternate rounds; p50 and p95 are reported, and the ratio of the sizes.

Starts its own ``redis-server`` (no persistence) on a free loopback port. Run: ``uv run python -m bench.run_control
[--flows N] [--rounds K] [--cancels N] [--sizes 10000 100000] [--list-samples N]``. Prints the numbers; exits 0
(targets are reported, not enforced).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO, Any, cast

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio import Redis

from bench.arq_provider import (
    CONCURRENCY,
    ORDER_STEPS,
    arq_throughput,
    arq_worker_command,
    plait_throughput,
)
from bench.common import (
    cpu_seconds,
    internal_errors,
    percentile,
    plait_worker_command,
    redis_cpu_seconds,
    redis_server,
    redis_url,
    spawn,
    stop,
    wait_for_clients,
    wait_for_plait_workers,
)
from bench.workload import Line, Order, OrderWorkflow, Out, ProcessOrder
from plait.core import IWorkflowConsumer, StepContext, StepHandler, Workflow, WorkflowCancelledError, WorkflowContext
from plait.core.info import FlowPage
from plait.core.listing import encode_cursor
from plait.providers.arq import ArqWorkflowProvider
from plait.providers.arq._keys import dumps, loads

EVENTS_ON = "bench-on"  # queue prefixes: each side's workers take only its own flows
EVENTS_OFF = "bench-off"
STARTED = "bench:blocked"  # Redis lists the blocking handler pushes to: its flow id when it starts,
SEEN = "bench:cancel-seen"  # and [flow id, time.time()] when it sees its cancellation

Blocking = Workflow.define(name="bench-block", data=Out, result=Out).steps(lambda s: s.sequential(s.step("block", Out)))


class BlockingWorkflow(IWorkflowConsumer[Out, Out]):
    """One step that blocks until it is cancelled, and says when it started and when it saw the cancellation."""

    def __init__(self, url: str) -> None:
        self.redis = Redis.from_url(url)
        self.steps = {"block": StepHandler(execute=self.block)}
        self._writes: set[asyncio.Task[Any]] = set()

    async def block(self, ctx: StepContext[Out]) -> Out:
        await self.redis.rpush(STARTED, ctx.flow_id)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen = time.time()
            # Written from a task of its own: this one is being cancelled, and the time is taken already.
            write = asyncio.create_task(self.redis.rpush(SEEN, dumps([ctx.flow_id, seen])))
            self._writes.add(write)
            write.add_done_callback(self._writes.discard)
            raise
        return Out(n=0)

    async def on_complete(self, ctx: WorkflowContext[Out]) -> Out:
        return Out(n=0)


def events_on_app() -> ArqWorkflowProvider:
    """A worker with the event stream on (the default): ``plait worker bench.run_control:events_on_app``."""
    url = os.environ["PLAIT_BENCH_REDIS_URL"]
    provider = ArqWorkflowProvider(url, queue_prefix=EVENTS_ON, concurrency=CONCURRENCY)
    provider.register(ProcessOrder, OrderWorkflow())
    provider.register(Blocking, BlockingWorkflow(url))
    return provider


def events_off_app() -> ArqWorkflowProvider:
    """A worker that writes no event stream: ``plait worker bench.run_control:events_off_app``."""
    url = os.environ["PLAIT_BENCH_REDIS_URL"]
    provider = ArqWorkflowProvider(url, queue_prefix=EVENTS_OFF, concurrency=CONCURRENCY, record_events=False)
    provider.register(ProcessOrder, OrderWorkflow())
    return provider


# --- events on vs off -------------------------------------------------------------------------------------


@dataclass
class Side:
    """One side of the throughput comparison: its rates per round, and CPU seconds per step (or job)."""

    name: str
    rates: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    redis_cpu: list[float] = field(default_factory=list)


async def throughput(
    args: argparse.Namespace,
    pool: ArqRedis,
    emitters: dict[str, ArqWorkflowProvider],
    workers: dict[str, list[subprocess.Popen[bytes]]],
) -> dict[str, Side]:
    runs: dict[str, Callable[[int], Awaitable[float]]] = {
        "arq": lambda n: arq_throughput(pool, n * ORDER_STEPS),
        "on": lambda n: plait_throughput(emitters["on"], n),
        "off": lambda n: plait_throughput(emitters["off"], n),
    }
    for run in runs.values():
        await run(200)  # warm-up: imports, script caches, connections
    sides = {name: Side(name) for name in runs}
    names = list(runs)
    for round_ in range(args.rounds):
        for name in names[round_ % 3 :] + names[: round_ % 3]:
            side = sides[name]
            pids = [worker.pid for worker in workers[name]]
            cpu, redis_cpu = cpu_seconds(pids), await redis_cpu_seconds(pool)
            side.rates.append(await runs[name](args.flows))
            units = args.flows * ORDER_STEPS
            side.cpu.append((cpu_seconds(pids) - cpu) / units)
            side.redis_cpu.append((await redis_cpu_seconds(pool) - redis_cpu) / units)
    return sides


# --- cancel latency ---------------------------------------------------------------------------------------


@dataclass
class Cancels:
    seen: list[float] = field(default_factory=list)  # cancel() called -> the handler sees CancelledError
    call: list[float] = field(default_factory=list)  # cancel() called -> it returns


async def pop(redis: Redis, key: str) -> list[bytes] | None:
    """``BLPOP key`` with a 10 s timeout (redis-py's stubs say it may not be awaitable)."""
    return await cast(Awaitable[list[bytes] | None], redis.blpop([key], timeout=10))


async def cancel_latency(emitter: ArqWorkflowProvider, pool: ArqRedis, samples: int) -> Cancels:
    cancels = Cancels()
    for i in range(samples):
        handle = await emitter.execute(Blocking, Out(n=i))
        started = await pop(pool, STARTED)
        if started is None or started[1].decode() != handle.id:
            raise RuntimeError(f"the blocking step of flow {handle.id} did not start")
        sent = time.time()
        await emitter.cancel(handle.id)
        cancels.call.append(time.time() - sent)
        seen = await pop(pool, SEEN)
        if seen is None:
            raise RuntimeError(f"the blocking step of flow {handle.id} did not see its cancellation")
        flow_id, at = loads(seen[1])
        assert flow_id == handle.id
        cancels.seen.append(at - sent)
        with contextlib.suppress(WorkflowCancelledError):
            await handle.result(timeout=10)
    return cancels


# --- listing ----------------------------------------------------------------------------------------------

QUERIES = ("unfiltered", "workflow", "status", "cursor")


async def populate(emitter: ArqWorkflowProvider, flows: int, batch: int = 500) -> float:
    """Creates ``flows`` pending flows (80% order, 20% line), then cancels one in ten; returns the seconds taken."""
    started = time.perf_counter()
    ids: list[str] = []

    async def create(i: int) -> str:
        if i % 5 == 0:
            return (await emitter.execute(Line, Out(n=i))).id
        return (await emitter.execute(ProcessOrder, Order(order_id=f"o-{i}", amount=1.0))).id

    for first in range(0, flows, batch):
        ids += await asyncio.gather(*(create(i) for i in range(first, min(flows, first + batch))))
    cancelled = ids[3::10]
    for first in range(0, len(cancelled), batch):
        await asyncio.gather(*(emitter.cancel(flow_id) for flow_id in cancelled[first : first + batch]))
    return time.perf_counter() - started


async def middle_cursor(emitter: ArqWorkflowProvider, pool: ArqRedis) -> str:
    """The cursor a client paging through the unfiltered listing holds halfway down."""
    index = emitter.keys.index
    middle = await pool.zcard(index) // 2
    entry: list[tuple[bytes, float]] = await pool.zrevrange(index, middle, middle, withscores=True)
    flow_id, created_at = entry[0]
    return encode_cursor(created_at, flow_id.decode())


async def list_once(emitter: ArqWorkflowProvider, query: str, cursor: str) -> tuple[float, FlowPage]:
    """Seconds one ``list_flows(limit=50)`` of ``query`` takes (``cursor`` is for the ``"cursor"`` query), and the
    page."""
    started = time.perf_counter()
    if query == "workflow":
        page = await emitter.list_flows(workflow=Line.name, limit=50)
    elif query == "status":
        page = await emitter.list_flows(status="compensating", limit=50)
    else:
        page = await emitter.list_flows(limit=50, cursor=cursor if query == "cursor" else None)
    elapsed = time.perf_counter() - started
    if (len(page.items) != 50 and page.next_cursor is not None) or (query != "cursor" and len(page.items) != 50):
        raise RuntimeError(f"a {query} listing returned {len(page.items)} flows, not 50")
    return elapsed, page


async def listing(
    stores: dict[int, ArqWorkflowProvider], pool: ArqRedis, rounds: int, samples: int
) -> dict[tuple[int, str], list[float]]:
    times: dict[tuple[int, str], list[float]] = {}
    middles = {size: await middle_cursor(emitter, pool) for size, emitter in stores.items()}
    cursors = dict(middles)  # where each store's cursor paging has got to
    for size, emitter in stores.items():  # warm-up
        for query in QUERIES:
            await list_once(emitter, query, middles[size])
    per_round = max(1, samples // rounds)
    for _ in range(rounds):
        for size, emitter in stores.items():
            for query in QUERIES:
                for _ in range(per_round):
                    elapsed, page = await list_once(emitter, query, cursors[size])
                    times.setdefault((size, query), []).append(elapsed)
                    if query == "cursor":  # the next page, or from the middle again after the last
                        cursors[size] = page.next_cursor or middles[size]
    return times


# --- orchestration ----------------------------------------------------------------------------------------


@dataclass
class Results:
    sides: dict[str, Side]
    cancels: Cancels
    listing: dict[tuple[int, str], list[float]]
    populated: dict[int, float]
    errors: tuple[int, str] = (0, "")


async def measure(args: argparse.Namespace, url: str, log: IO[bytes]) -> Results:
    """Runs every measurement; the Plait workers' stderr goes to ``log`` (a cancelled flow is a WARNING line)."""
    env = {"PLAIT_BENCH_REDIS_URL": url}
    pool = await create_pool(RedisSettings.from_dsn(url), job_serializer=dumps, job_deserializer=loads)
    emitters = {
        "on": ArqWorkflowProvider(url, queue_prefix=EVENTS_ON),
        "off": ArqWorkflowProvider(url, queue_prefix=EVENTS_OFF, record_events=False),
    }
    emitters["on"].register(Blocking)
    for emitter in emitters.values():
        emitter.register(ProcessOrder)  # definitions only: this process runs no step
    stores = {size: ArqWorkflowProvider(url, queue_prefix=f"bench-list-{size}") for size in args.sizes}
    for store in stores.values():
        store.register(ProcessOrder)
        store.register(Line)
    everyone = [*emitters.values(), *stores.values()]
    workers = {
        "on": [spawn(plait_worker_command("bench.run_control:events_on_app"), env, stderr=log) for _ in range(2)],
        "off": [spawn(plait_worker_command("bench.run_control:events_off_app"), env, stderr=log) for _ in range(2)],
        "arq": [spawn(arq_worker_command(url, 0.01), env) for _ in range(2)],
    }
    try:
        for provider in everyone:
            await provider.start()
        await wait_for_plait_workers(pool, emitters["on"].keys.cancel, 2)
        await wait_for_plait_workers(pool, emitters["off"].keys.cancel, 2)
        await wait_for_clients(pool, 6)
        sides = await throughput(args, pool, emitters, workers)
        # The rest needs only the workers with events on: the others would only add noise.
        await asyncio.to_thread(stop, workers["arq"] + workers["off"])
        await cancel_latency(emitters["on"], pool, 3)  # warm-up
        cancels = await cancel_latency(emitters["on"], pool, args.cancels)
        populated = {size: await populate(store, size) for size, store in stores.items()}
        times = await listing(stores, pool, args.rounds, args.list_samples)
    finally:
        for provider in everyone:
            await provider.stop()
        await pool.aclose()
        await asyncio.to_thread(stop, [w for side in workers.values() for w in side])
    return Results(sides, cancels, times, populated)


def report(args: argparse.Namespace, results: Results) -> None:
    ms, us = 1000, 1e6
    print(
        f"setup: {os.cpu_count()} CPUs; one redis-server; 2 Plait workers with events on, 2 with events off, "
        f"2 raw arq workers (poll 10 ms, JSON, max_jobs={CONCURRENCY}); {args.rounds} alternating rounds, medians"
    )
    sides = results.sides
    rate = {name: statistics.median(side.rates) for name, side in sides.items()}
    print(f"throughput ({args.flows} order flows x {ORDER_STEPS} steps a round; raw arq: as many no-op jobs)")
    labels = {"arq": "raw arq no-op jobs", "on": "Plait, events on", "off": "Plait, events off"}
    for name, side in sides.items():
        unit = "jobs/s " if name == "arq" else "steps/s"
        cpu, redis_cpu = statistics.median(side.cpu) * us, statistics.median(side.redis_cpu) * us
        rounds = ", ".join(f"{r:,.0f}" for r in side.rates)
        print(f"  {labels[name]:<20} {rate[name]:8,.0f} {unit}   workers {cpu:4.0f} us CPU, Redis {redis_cpu:3.0f} us")
        print(f"  {'':<20} rounds: {rounds}")
    print(f"  events on / off:       {rate['on'] / rate['off']:6.2f}x steps/s   (target >= 0.85)")
    cpu_on, cpu_off = (statistics.median(sides[n].cpu) + statistics.median(sides[n].redis_cpu) for n in ("on", "off"))
    print(f"                         {cpu_off / cpu_on:6.2f}x by CPU per step (workers + Redis), off / on")
    print(f"  Plait (events on) / raw arq: {rate['on'] / rate['arq']:6.2f}x   (target >= 2.5)")
    print(f"  Plait (events off) / raw arq: {rate['off'] / rate['arq']:5.2f}x")
    seen, call = results.cancels.seen, results.cancels.call
    print(f"cancel ({len(seen)} samples): cancel() called -> handler sees CancelledError")
    print(f"  p50 {statistics.median(seen) * ms:7.2f} ms   p95 {percentile(seen, 0.95) * ms:7.2f} ms")
    call_p50, call_p95 = statistics.median(call) * ms, percentile(call, 0.95) * ms
    print(f"  (cancel() itself returns after p50 {call_p50:.2f} ms, p95 {call_p95:.2f} ms)")
    small, large = min(args.sizes), max(args.sizes)
    filled = ", ".join(f"{size:,} in {seconds:.0f} s" for size, seconds in results.populated.items())
    print(f"list_flows(limit=50), one call at a time (stores filled: {filled})")
    print(f"  {'query':<12} {small:>8,} p50    p95   {large:>8,} p50    p95   ratio of p50s (target <= 2)")
    for query in QUERIES:
        a, b = results.listing[small, query], results.listing[large, query]
        p50a, p50b = statistics.median(a), statistics.median(b)
        print(
            f"  {query:<12} {p50a * ms:9.2f} ms {percentile(a, 0.95) * ms:6.2f}   {p50b * ms:9.2f} ms "
            f"{percentile(b, 0.95) * ms:6.2f}   {p50b / p50a:5.2f}x"
        )
    count, first = results.errors
    print(f"jobs the Plait workers handed back after an internal error: {count}", f"(first: {first})" if count else "")


MIN_STORED = 1_000
"""The fewest stored flows a listing size may have: a tenth of them cancelled still fills a page of 50."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--flows", type=int, default=1000, help="order flows per throughput round (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--cancels", type=int, default=30, help="cancel latency samples (default 30)")
    parser.add_argument("--sizes", type=int, nargs=2, default=[10_000, 100_000], help="stored flows (10000 100000)")
    parser.add_argument("--list-samples", type=int, default=60, help="list_flows calls per query and size (60)")
    args = parser.parse_args()
    if min(args.sizes) < MIN_STORED:
        # Each listing asks for a full page of 50: by status that is the tenth of the flows cancelled.
        parser.error(f"--sizes must each be at least {MIN_STORED:,} (a page of 50 of every filter), got {args.sizes}")
    with redis_server() as port, tempfile.TemporaryFile() as log:
        results = asyncio.run(measure(args, redis_url(port), log))
        results.errors = internal_errors(log)
    report(args, results)


if __name__ == "__main__":
    main()
