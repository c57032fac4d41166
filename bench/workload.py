"""The benchmarks' workloads, with no-op handlers so that a benchmark measures Plait and its transport, not the
work: the 5-step order shape (validate -> charge -> [email || sms] -> finalize), and a line of four steps."""

from __future__ import annotations

from pydantic import BaseModel

from plait.core import IWorkflowConsumer, StepContext, StepHandler, Workflow, WorkflowContext

__all__ = [
    "Charged",
    "Finalized",
    "Line",
    "LineWorkflow",
    "Order",
    "OrderResult",
    "OrderWorkflow",
    "Out",
    "ProcessOrder",
    "Sent",
    "Validated",
]


class Order(BaseModel):
    order_id: str
    amount: float


class Validated(BaseModel):
    ok: bool


class Charged(BaseModel):
    charge_id: str


class Sent(BaseModel):
    sent: bool


class Finalized(BaseModel):
    done: bool


class OrderResult(BaseModel):
    charge_id: str


ProcessOrder = Workflow.define(name="bench-order", data=Order, result=OrderResult).steps(
    lambda s: (
        s.sequential(s.step("validate", Validated))
        .sequential(s.step("charge", Charged))
        .parallel(s.step("email", Sent), s.step("sms", Sent))
        .sequential(s.step("finalize", Finalized))
    )
)


class OrderWorkflow(IWorkflowConsumer[Order, OrderResult]):
    """No-op handlers: the benchmark measures the engine, not the work."""

    def __init__(self) -> None:
        self.steps = {
            "validate": StepHandler(execute=self.validate),
            "charge": StepHandler(execute=self.charge, rollback=self.refund),
            "email": StepHandler(execute=self.send),
            "sms": StepHandler(execute=self.send),
            "finalize": StepHandler(execute=self.finalize),
        }

    async def validate(self, ctx: StepContext[Order]) -> Validated:
        return Validated(ok=True)

    async def charge(self, ctx: StepContext[Order]) -> Charged:
        return Charged(charge_id="ch-1")

    async def refund(self, ctx: StepContext[Order]) -> None:
        return None

    async def send(self, ctx: StepContext[Order]) -> Sent:
        return Sent(sent=True)

    async def finalize(self, ctx: StepContext[Order]) -> Finalized:
        return Finalized(done=True)

    async def on_complete(self, ctx: WorkflowContext[Order]) -> OrderResult:
        return OrderResult(charge_id="ch-1")


class Out(BaseModel):
    n: int


Line = Workflow.define(name="bench-line", data=Out, result=Out).steps(
    lambda s: s.sequential(s.step("a", Out), s.step("b", Out), s.step("c", Out), s.step("d", Out))
)


class LineWorkflow(IWorkflowConsumer[Out, Out]):
    """Four no-op steps in a row."""

    def __init__(self) -> None:
        self.steps = {name: StepHandler(execute=self.step) for name in "abcd"}

    async def step(self, ctx: StepContext[Out]) -> Out:
        return Out(n=ctx.data.n + len(ctx.results))

    async def on_complete(self, ctx: WorkflowContext[Out]) -> Out:
        return Out(n=ctx.data.n)
