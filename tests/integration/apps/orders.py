"""A 5-step order workflow whose handlers count their side effects in Redis, for tests with worker processes.

Two things ``plait worker`` can run, both configured by ``PLAIT_TEST_REDIS_URL``, ``PLAIT_TEST_PREFIX`` and
``PLAIT_TEST_STALL``: ``create_app()`` returns a bare provider with its consumer (in a small object with
``async start()``/``async stop()``), ``create_plait_app()`` a Plait application built by the app builder. Each
handler increments ``side:<flow>:<step>:started`` when it starts and ``...:done`` when it returns, and marks
``inflight:<flow>:<step>`` with its pid while it runs.

An order can also make its handlers misbehave: ``raise_in``/``raises`` raise a ``BaseException`` by name from a
step's first attempt, and ``boom_in`` makes the runner itself raise ``SystemExit`` once that step returned, in a
worker process: a stand-in for a bug in Plait, outside any handler, that the worker's own loop must survive.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnectionError

from plait.core import Application, IWorkflowConsumer, Plait, StepContext, StepHandler, Workflow, WorkflowContext
from plait.core.runner import FlowView, Runner
from plait.providers.arq import ArqWorkflowProvider


class Order(BaseModel):
    order_id: str
    slow_step: str = ""
    slow: float = 0.0
    raise_in: str = ""
    raises: str = ""
    boom_in: str = ""


BASE_EXCEPTIONS: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
}


class StepOut(BaseModel):
    step: str
    pid: int


class Receipt(BaseModel):
    order_id: str
    pids: dict[str, int]


ORDER = Workflow.define(name="it-order", data=Order, result=Receipt).steps(
    lambda s: (
        s.sequential(s.step("validate", StepOut))
        .sequential(s.step("charge", StepOut))
        .parallel(s.step("email", StepOut), s.step("sms", StepOut))
        .sequential(s.step("finalize", StepOut))
    )
)


async def call(redis: aioredis.Redis, *args: str | int | float) -> object:
    """One Redis command, tried again for up to 20 s while Redis restarts: the counting must not fail a step."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return await redis.execute_command(*args)  # type: ignore[no-untyped-call]  # unannotated in redis-py
        except (RedisConnectionError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


class SideEffects:
    """Where handlers count what they did: a Redis client (a service of the Plait application)."""

    def __init__(self) -> None:
        self.redis = aioredis.Redis.from_url(os.environ["PLAIT_TEST_REDIS_URL"])

    async def call(self, *args: str | int | float) -> object:
        return await call(self.redis, *args)


class OrderWorkflow(IWorkflowConsumer[Order, Receipt]):
    """Counts every start and completion of every step in Redis."""

    def __init__(self, side: SideEffects) -> None:
        self.side = side
        self.steps = {name: StepHandler(execute=self.run, rollback=self.undo) for name in ORDER.step_names}

    async def _call(self, *args: str | int | float) -> object:
        return await self.side.call(*args)

    async def run(self, ctx: StepContext[Order]) -> StepOut:
        side = f"side:{ctx.flow_id}:{ctx.step_name}"
        inflight = f"inflight:{ctx.flow_id}:{ctx.step_name}"
        await self._call("INCR", f"{side}:started")
        await self._call("SET", inflight, os.getpid())
        if ctx.data.slow_step == ctx.step_name:
            await asyncio.sleep(ctx.data.slow)
        if ctx.data.raise_in == ctx.step_name and ctx.attempt == 1:
            await self._call("DEL", inflight)
            raise BASE_EXCEPTIONS[ctx.data.raises](f"raised by step {ctx.step_name}")
        await self._call("INCR", f"{side}:done")
        await self._call("DEL", inflight)
        return StepOut(step=ctx.step_name, pid=os.getpid())

    async def undo(self, ctx: StepContext[Order]) -> None:
        await self._call("INCR", f"side:{ctx.flow_id}:{ctx.step_name}:rolled_back")

    async def on_complete(self, ctx: WorkflowContext[Order]) -> Receipt:
        await self._call("INCR", f"side:{ctx.flow_id}:complete")
        pids = {name: ctx.result(name, StepOut).pid for name in ctx.results}
        return Receipt(order_id=ctx.data.order_id, pids=pids)


def _provider() -> ArqWorkflowProvider:
    return ArqWorkflowProvider(
        os.environ["PLAIT_TEST_REDIS_URL"],
        queue_prefix=os.environ.get("PLAIT_TEST_PREFIX", "workflow"),
        stall_interval=float(os.environ.get("PLAIT_TEST_STALL", "5")),
        stop_grace=5.0,
        provider_id=f"it-{os.getpid()}",
    )


class OrdersApp:
    """A bare provider with its consumer registered, and the consumer's Redis client."""

    def __init__(self) -> None:
        self.side = SideEffects()
        self.provider = _provider()
        self.provider.register(ORDER, OrderWorkflow(self.side))

    async def start(self) -> None:
        await self.provider.start()

    async def stop(self) -> None:
        await self.provider.stop()
        await self.side.redis.aclose()


def _inject_a_plait_bug() -> None:
    """Makes the runner raise ``SystemExit`` the first time a step named by its order's ``boom_in`` returns, in
    this process only: a bug in Plait's own code, which no handler guard catches."""
    original = Runner.run_step
    fired: set[str] = set()

    async def run_step(
        self: Runner[Any, Any], view: FlowView[Any], step: str, attempt: int, index: int | None = None
    ) -> Any:
        event = await original(self, view, step, attempt, index)
        data = view.state.data
        if isinstance(data, dict) and data.get("boom_in") == step and view.state.flow_id not in fired:
            fired.add(view.state.flow_id)
            raise SystemExit("a bug in Plait asked the process to exit")
        return event

    Runner.run_step = run_step  # type: ignore[method-assign]


def create_app() -> OrdersApp:
    """The worker's factory for a bare provider."""
    _inject_a_plait_bug()
    return OrdersApp()


def create_plait_app() -> Application:
    """The worker's factory for a Plait application (no controllers are served: no HTTP in a worker)."""
    _inject_a_plait_bug()
    return (
        Plait.create()
        .provider(SideEffects)
        .workflow_provider(_provider())
        .workflow(ORDER)
        .consumer(OrderWorkflow, [SideEffects])
    )
