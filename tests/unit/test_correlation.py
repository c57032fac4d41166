"""A flow started by a step carries its parent's correlation id, whichever way the parent was started."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from plait.core import (
    IWorkflowConsumer,
    Plait,
    StepContext,
    StepHandler,
    Workflow,
    WorkflowContext,
    WorkflowExecutor,
)
from plait.core.engine import FlowState, StepReturned
from plait.core.executor import current_correlation_id
from plait.core.runner import Runner, correlate


class Parent(BaseModel):
    order_id: str


class Child(BaseModel):
    note: str


class Seen(BaseModel):
    correlation_id: str


Notify = Workflow.define(name="notify-child", data=Child, result=Seen).steps(
    lambda s: s.sequential(s.step("send", Seen))
)
Order = Workflow.define(name="order-parent", data=Parent, result=Seen).steps(
    lambda s: s.sequential(s.step("spawn", Seen))
)


class NotifyWorkflow(IWorkflowConsumer[Child, Seen]):
    def __init__(self) -> None:
        self.steps = {"send": StepHandler(execute=self.send)}

    async def send(self, ctx: StepContext[Child]) -> Seen:
        return Seen(correlation_id=ctx.correlation_id)

    async def on_complete(self, ctx: WorkflowContext[Child]) -> Seen:
        return ctx.result("send", Seen)


class OrderWorkflow(IWorkflowConsumer[Parent, Seen]):
    """Its step starts a child flow through the injected executor, as a service would."""

    def __init__(self, workflows: WorkflowExecutor) -> None:
        self.workflows = workflows
        self.steps = {"spawn": StepHandler(execute=self.spawn)}

    async def spawn(self, ctx: StepContext[Parent]) -> Seen:
        child = await self.workflows.execute(Notify, Child(note=ctx.data.order_id))
        return await child.result(timeout=5)

    async def on_complete(self, ctx: WorkflowContext[Parent]) -> Seen:
        return ctx.result("spawn", Seen)


async def test_a_child_flow_started_by_a_step_carries_the_parents_correlation_id() -> None:
    app = (
        Plait.create()
        .workflow(Notify)
        .consumer(NotifyWorkflow)
        .workflow(Order)
        .consumer(OrderWorkflow, [WorkflowExecutor])
    )
    await app.start()
    try:
        # Outside any request: only the running step can hand its id on.
        handle = await app.context.workflows.execute(
            Order, Parent(order_id="o-1"), meta={"correlation_id": "corr-parent"}
        )
        assert (await handle.result(timeout=5)).correlation_id == "corr-parent"
        without = await app.context.workflows.execute(Order, Parent(order_id="o-2"))
        # A parent with no correlation id of its own is correlated by its flow id.
        assert (await without.result(timeout=5)).correlation_id == without.id
    finally:
        await app.stop()


class _Watch(BaseModel):
    seen: str | None


Watched = Workflow.define(name="watched", data=Child, result=Seen).steps(
    lambda s: s.sequential(s.step("look", _Watch), s.step("again", _Watch))
)


class WatchingWorkflow(IWorkflowConsumer[Child, Seen]):
    """Records the correlation id current in each step, and changes it in the first, as a careless handler might."""

    def __init__(self) -> None:
        self.steps = {"look": StepHandler(execute=self.look), "again": StepHandler(execute=self.again)}
        self.seen: list[str | None] = []

    async def look(self, ctx: StepContext[Child]) -> _Watch:
        self.seen.append(current_correlation_id.get())
        current_correlation_id.set("changed-by-the-handler")
        return _Watch(seen=self.seen[-1])

    async def again(self, ctx: StepContext[Child]) -> _Watch:
        self.seen.append(current_correlation_id.get())
        return _Watch(seen=self.seen[-1])

    async def on_complete(self, ctx: WorkflowContext[Child]) -> Seen:
        return Seen(correlation_id=ctx.correlation_id)


async def _run_both_steps(runner: Runner[Child, Seen], state: FlowState) -> None:
    for step in ("look", "again"):
        event = await runner.run_step(runner.view(state), step, 1)
        assert isinstance(event, StepReturned), event
        runner.engine.handle(state, event, 0.0)


async def test_a_handler_runs_with_its_flows_correlation_id_whether_or_not_its_task_made_it_current() -> None:
    consumer = WatchingWorkflow()
    runner = Runner(Watched, consumer)

    async def unprepared() -> str | None:
        state = runner.engine.new_state("flow-1", {"note": "x"}, meta={"correlation_id": "corr-1"})
        runner.start(state, 0.0)
        await _run_both_steps(runner, state)
        return current_correlation_id.get()

    # A task that did not make it current: set around each call, and put back after it.
    assert await asyncio.create_task(unprepared()) is None
    assert consumer.seen == ["corr-1", "corr-1"]

    async def prepared() -> str | None:
        state = runner.engine.new_state("flow-2", {"note": "x"})
        runner.start(state, 0.0)
        correlate(state)  # as a provider's task does: the flow id, when meta names none
        await _run_both_steps(runner, state)
        return current_correlation_id.get()

    # A task that made it current keeps it; a handler that changed it does not pass the change on to the next.
    consumer.seen.clear()
    assert await asyncio.create_task(prepared()) == "changed-by-the-handler"
    assert consumer.seen == ["flow-2", "flow-2"]
