"""A for-each of many items for ``plait worker`` (``PLAIT_TEST_REDIS_URL``, ``PLAIT_TEST_STALL``): each item counts
its runs in the Redis hash ``fan:<flow id>``, so a test can tell that every item ran once."""

from __future__ import annotations

import os

import redis
from pydantic import BaseModel

from plait.core import IWorkflowConsumer, StepContext, StepHandler, Workflow, WorkflowContext
from plait.providers.arq import ArqWorkflowProvider


class Count(BaseModel):
    n: int


class Done(BaseModel):
    index: int


FAN = Workflow.define(name="it-fan", data=Count, result=Count).steps(
    lambda s: s.sequential(s.for_each("item", Done, items=lambda ctx: range(ctx.data.n), concurrency=10))
)


class Fan(IWorkflowConsumer[Count, Count]):
    def __init__(self) -> None:
        # A blocking client: the handler returns without yielding to the event loop, as a quick one does.
        self.redis = redis.Redis.from_url(os.environ["PLAIT_TEST_REDIS_URL"])
        self.steps = {"item": StepHandler(execute=self.item)}

    async def item(self, ctx: StepContext[Count]) -> Done:
        assert ctx.index is not None
        self.redis.hincrby(f"fan:{ctx.flow_id}", str(ctx.index), 1)
        return Done(index=ctx.index)

    async def on_complete(self, ctx: WorkflowContext[Count]) -> Count:
        return Count(n=len(ctx.results["item"]))


def create_app() -> ArqWorkflowProvider:
    provider = ArqWorkflowProvider(
        os.environ["PLAIT_TEST_REDIS_URL"], stall_interval=float(os.environ["PLAIT_TEST_STALL"]), concurrency=100
    )
    provider.register(FAN, Fan())
    return provider
