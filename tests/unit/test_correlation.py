"""A flow started by a step carries its parent's correlation id, whichever way the parent was started."""

from __future__ import annotations

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
