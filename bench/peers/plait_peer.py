"""Plait's side of ``bench.peers``: the workers' application, the saga of W3, and the driver.

Workers: ``plait worker bench.peers.plait_peer:create_app`` with ``BENCH_REDIS_URL`` set (and
``BENCH_EFFECTS_DIR``, where each worker writes the side effects of W3's handlers when it exits).
Driver: ``python -m bench.peers.plait_peer``, an emitter that registers the definitions only, speaking the
line protocol described in :mod:`bench.peers`.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bench.workload import Line, LineWorkflow, Order, OrderWorkflow, Out, ProcessOrder
from plait.core import (
    FlowHandle,
    IWorkflowConsumer,
    NonRetryableError,
    StepContext,
    StepHandler,
    Workflow,
    WorkflowContext,
    WorkflowStepError,
)
from plait.providers.arq import ArqWorkflowProvider

CONCURRENCY = 100  # jobs of one workflow a worker runs at once; BullMQ's workers get the same
BATCH = 200  # flows started concurrently by the driver; every peer's driver uses the same
TIMEOUT = 300.0  # seconds one round may take before the driver gives up on it


class SagaData(BaseModel):
    key: str


class Done(BaseModel):
    ok: bool


Saga = Workflow.define(name="bench-saga", data=SagaData, result=Done).steps(
    lambda s: s.sequential(*(s.step(f"s{i}", Done) for i in range(1, 6)))
)

# Side effects of the saga's handlers in this process: (flow key, effect, CLOCK_MONOTONIC ns). Effects "s1".."s5"
# are steps starting, "c1".."c3" compensations; written to BENCH_EFFECTS_DIR when the worker exits.
EFFECTS: list[tuple[str, str, int]] = []


def record(ctx: StepContext[SagaData], effect: str) -> None:
    EFFECTS.append((ctx.data.key, effect, time.monotonic_ns()))


class SagaWorkflow(IWorkflowConsumer[SagaData, Done]):
    """Five steps; the fourth fails for good; the first three have compensations."""

    def __init__(self) -> None:
        self.steps = {
            "s1": StepHandler(execute=self.s1, rollback=self.c1),
            "s2": StepHandler(execute=self.s2, rollback=self.c2),
            "s3": StepHandler(execute=self.s3, rollback=self.c3),
            "s4": StepHandler(execute=self.s4),
            "s5": StepHandler(execute=self.s5),
        }

    async def s1(self, ctx: StepContext[SagaData]) -> Done:
        record(ctx, "s1")
        return Done(ok=True)

    async def s2(self, ctx: StepContext[SagaData]) -> Done:
        record(ctx, "s2")
        return Done(ok=True)

    async def s3(self, ctx: StepContext[SagaData]) -> Done:
        record(ctx, "s3")
        return Done(ok=True)

    async def s4(self, ctx: StepContext[SagaData]) -> Done:
        record(ctx, "s4")
        raise NonRetryableError("declined")

    async def s5(self, ctx: StepContext[SagaData]) -> Done:
        record(ctx, "s5")
        return Done(ok=True)

    async def c1(self, ctx: StepContext[SagaData]) -> None:
        record(ctx, "c1")

    async def c2(self, ctx: StepContext[SagaData]) -> None:
        record(ctx, "c2")

    async def c3(self, ctx: StepContext[SagaData]) -> None:
        record(ctx, "c3")

    async def on_complete(self, ctx: WorkflowContext[SagaData]) -> Done:
        return Done(ok=True)


def dump_effects() -> None:
    folder = os.environ.get("BENCH_EFFECTS_DIR")
    if folder:
        Path(folder, f"plait-{os.getpid()}.json").write_text(json.dumps(EFFECTS))


def create_app() -> ArqWorkflowProvider:
    """A Plait worker of every workload: ``plait worker bench.peers.plait_peer:create_app``."""
    provider = ArqWorkflowProvider(os.environ["BENCH_REDIS_URL"], concurrency=CONCURRENCY)
    provider.register(ProcessOrder, OrderWorkflow())
    provider.register(Line, LineWorkflow())
    provider.register(Saga, SagaWorkflow())
    atexit.register(dump_effects)
    return provider


# --- the driver --------------------------------------------------------------------------------------------


async def w1(provider: ArqWorkflowProvider, n: int, tag: str) -> dict[str, Any]:
    """Starts ``n`` order flows (``BATCH`` at a time), then waits for every result."""
    started = time.perf_counter()
    handles: list[FlowHandle[Any]] = []
    for first in range(0, n, BATCH):
        batch = range(first, min(n, first + BATCH))
        handles += await asyncio.gather(
            *(provider.execute(ProcessOrder, Order(order_id=f"{tag}-{i}", amount=1.0)) for i in batch)
        )
    await asyncio.gather(*(h.result(timeout=TIMEOUT) for h in handles))
    return {"seconds": time.perf_counter() - started}


async def w2(provider: ArqWorkflowProvider, n: int, tag: str) -> dict[str, Any]:
    """``n`` times, one at a time: execute the 4-step line, wait for its result."""
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        handle = await provider.execute(Line, Out(n=i))
        await handle.result(timeout=TIMEOUT)
        latencies.append(time.perf_counter() - started)
    return {"latencies": latencies}


async def w3(provider: ArqWorkflowProvider, n: int, tag: str) -> dict[str, Any]:
    """Starts ``n`` sagas, then waits for each to end: failed at step 4, after its compensations."""

    async def end(handle: FlowHandle[Done]) -> bool:
        try:
            await handle.result(timeout=TIMEOUT)
        except WorkflowStepError as error:
            return error.step_name == "s4" and not error.rollback
        return False

    started = time.perf_counter()
    handles: list[FlowHandle[Done]] = []
    for first in range(0, n, BATCH):
        batch = range(first, min(n, first + BATCH))
        handles += await asyncio.gather(*(provider.execute(Saga, SagaData(key=f"{tag}-{i}")) for i in batch))
    ends = await asyncio.gather(*(end(h) for h in handles))
    return {"seconds": time.perf_counter() - started, "ends": sum(ends)}


OPS = {"w1": w1, "w2": w2, "w3": w3}


async def drive() -> None:
    provider = ArqWorkflowProvider(os.environ["BENCH_REDIS_URL"])
    provider.register(ProcessOrder)  # definitions only: the driver runs no step
    provider.register(Line)
    provider.register(Saga)
    await provider.start()
    try:
        while line := await asyncio.to_thread(sys.stdin.readline):
            request = json.loads(line)
            if request["op"] == "quit":
                break
            try:
                reply = await OPS[request["op"]](provider, request["n"], request["tag"])
            except Exception as error:
                reply = {"error": f"{type(error).__name__}: {error}"}
            print(json.dumps(reply), flush=True)
    finally:
        await provider.stop()


if __name__ == "__main__":
    asyncio.run(drive())
