"""Types flow through the public API: mypy (strict, run by the test command) checks the assert_type calls here.

The test also runs, so the same code is exercised at run time.
"""

from __future__ import annotations

from typing import assert_type

from pydantic import BaseModel

from plait.core import (
    FlowHandle,
    FlowStatus,
    IWorkflowConsumer,
    StepContext,
    StepHandler,
    Workflow,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowError,
    WorkflowExecutor,
    WorkflowProvider,
)
from plait.providers.inprocess import InProcessWorkflowProvider


class Order(BaseModel):
    order_id: str


class Charged(BaseModel):
    charge_id: str


class Receipt(BaseModel):
    charge_id: str


Charge = Workflow.define(name="typed-charge", data=Order, result=Receipt).steps(
    lambda s: s.sequential(s.step("charge", Charged))
)


class ChargeWorkflow(IWorkflowConsumer[Order, Receipt]):
    def __init__(self) -> None:
        self.steps = {"charge": StepHandler(execute=self.charge, rollback=self.refund)}
        self.errors: list[WorkflowError] = []

    async def charge(self, ctx: StepContext[Order]) -> Charged:
        assert_type(ctx.data, Order)
        assert_type(ctx.attempt, int)
        return Charged(charge_id=f"ch-{ctx.data.order_id}")

    async def refund(self, ctx: StepContext[Order]) -> None:
        assert_type(ctx.result("charge", Charged), Charged)

    async def on_complete(self, ctx: WorkflowContext[Order]) -> Receipt:
        return Receipt(charge_id=ctx.result("charge", Charged).charge_id)

    async def on_error(self, ctx: WorkflowContext[Order], error: WorkflowError) -> None:
        self.errors.append(error)


async def run(executor: WorkflowExecutor) -> Receipt:
    handle = await executor.execute(Charge, Order(order_id="o-1"))
    assert_type(handle, FlowHandle[Receipt])
    assert_type(await handle.status(), FlowStatus)
    result = await handle.result()
    assert_type(result, Receipt)
    return result


async def test_types_flow_from_definition_to_result() -> None:
    assert_type(Charge, WorkflowDefinition[Order, Receipt])
    provider = InProcessWorkflowProvider()
    as_protocol: WorkflowProvider = provider  # the in-process provider satisfies the Protocol structurally
    as_protocol.register(Charge, ChargeWorkflow())
    await provider.start()
    try:
        receipt = await run(provider)
    finally:
        await provider.stop()
    assert receipt == Receipt(charge_id="ch-o-1")
    assert isinstance(provider, WorkflowProvider)
