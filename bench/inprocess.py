"""In-process provider throughput against a hand-written baseline, measured in the same run.

The workload is the 5-step order shape (validate -> charge -> [email || sms] -> finalize) with no-op handlers.
The baseline awaits the same handlers directly (the parallel group with ``asyncio.gather``) and validates their
outputs and the result with pydantic: what the flow would cost with no workflow engine at all. Both run the same
number of flows in batches of concurrent flows, alternating rounds so that a noisy neighbour hits both. Rates
are computed from this process's CPU time (``time.process_time``), which other processes on a shared machine
disturb far less than wall time; wall-clock rates are printed beside them.

Run: ``uv run python -m bench.inprocess [--flows N] [--batch B] [--rounds K]``. Prints flows/s of both, the
per-flow cost ratio, and exits 0 (targets are reported, not enforced: these machines are shared and noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable

from bench.workload import Charged, Finalized, Order, OrderResult, OrderWorkflow, ProcessOrder, Sent, Validated
from plait.core import StepContext
from plait.providers.inprocess import InProcessWorkflowProvider


async def baseline_flow(consumer: OrderWorkflow, order: Order) -> OrderResult:
    """The same handlers awaited by hand, outputs validated, no engine."""
    ctx = StepContext(
        flow_id="flow-1",
        workflow="bench-order",
        data=order,
        results={},
        meta={},
        provider_id="",
        step_name="",
        attempt=1,
    )
    Validated.model_validate(await consumer.validate(ctx))
    Charged.model_validate(await consumer.charge(ctx))
    email, sms = await asyncio.gather(consumer.send(ctx), consumer.send(ctx))
    Sent.model_validate(email)
    Sent.model_validate(sms)
    Finalized.model_validate(await consumer.finalize(ctx))
    return OrderResult.model_validate(await consumer.on_complete(ctx))


Timing = tuple[float, float]
"""(CPU seconds, wall seconds)"""


def clock() -> Timing:
    return time.process_time(), time.perf_counter()


def since(start: Timing) -> Timing:
    cpu, wall = clock()
    return cpu - start[0], wall - start[1]


async def run_baseline(flows: int, batch: int) -> Timing:
    consumer = OrderWorkflow()
    orders = [Order(order_id=f"o-{i}", amount=10.0) for i in range(batch)]
    started = clock()
    for _ in range(flows // batch):
        await asyncio.gather(*(baseline_flow(consumer, order) for order in orders))
    return since(started)


async def run_plait(flows: int, batch: int) -> Timing:
    provider = InProcessWorkflowProvider()
    provider.register(ProcessOrder, OrderWorkflow())
    await provider.start()
    orders = [Order(order_id=f"o-{i}", amount=10.0) for i in range(batch)]
    started = clock()
    for _ in range(flows // batch):
        handles = [await provider.execute(ProcessOrder, order) for order in orders]
        for handle in handles:
            await handle.result()
    elapsed = since(started)
    await provider.stop()
    return elapsed


async def measure(run: Callable[[int, int], Awaitable[Timing]], flows: int, batch: int) -> Timing:
    """Flows per CPU second and per wall second."""
    gc.collect()
    cpu, wall = await run(flows, batch)
    return flows / cpu, flows / wall


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--flows", type=int, default=20_000, help="flows per round (default 20000)")
    parser.add_argument("--batch", type=int, default=100, help="concurrent flows per batch (default 100)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    args = parser.parse_args()
    await measure(run_baseline, args.batch * 10, args.batch)  # warm-up: imports, caches, allocator
    await measure(run_plait, args.batch * 10, args.batch)
    base: list[Timing] = []
    plait: list[Timing] = []
    for _ in range(args.rounds):
        base.append(await measure(run_baseline, args.flows, args.batch))
        plait.append(await measure(run_plait, args.flows, args.batch))
    base_cpu, base_wall = (statistics.median(t[i] for t in base) for i in (0, 1))
    plait_cpu, plait_wall = (statistics.median(t[i] for t in plait) for i in (0, 1))
    print(f"workload: 5-step order flow, {args.flows} flows x {args.rounds} rounds, batches of {args.batch}")
    print("                                       per CPU second     per wall second")
    print(f"baseline (handlers awaited directly): {base_cpu:10,.0f} flows/s   {base_wall:10,.0f} flows/s")
    print(f"plait in-process provider:            {plait_cpu:10,.0f} flows/s   {plait_wall:10,.0f} flows/s")
    cpu_ratio, wall_ratio = base_cpu / plait_cpu, base_wall / plait_wall
    print(f"per-flow cost ratio plait/baseline:   {cpu_ratio:10.2f}x          {wall_ratio:10.2f}x")
    print("targets: >= 10,000 flows/s on one core; cost ratio <= 1.8x (2.2-2.4x before control flow and run control)")


if __name__ == "__main__":
    asyncio.run(main())
