"""Plait: typed, multi-step workflows with saga rollback.

Define a workflow once, implement it with a consumer, run it on any provider::

    from pydantic import BaseModel
    from plait.core import Workflow, IWorkflowConsumer, StepHandler, StepContext, WorkflowContext

    class Order(BaseModel):
        order_id: str

    class Charged(BaseModel):
        charge_id: str

    class Done(BaseModel):
        charge_id: str

    ProcessOrder = Workflow.define(name="process-order", data=Order, result=Done).steps(
        lambda s: s.sequential(s.step("charge", Charged))
    )

    class ProcessOrderWorkflow(IWorkflowConsumer[Order, Done]):
        def __init__(self) -> None:
            self.steps = {"charge": StepHandler(execute=self.charge)}

        async def charge(self, ctx: StepContext[Order]) -> Charged:
            return Charged(charge_id="ch-1")

        async def on_complete(self, ctx: WorkflowContext[Order]) -> Done:
            return Done(charge_id=ctx.result("charge", Charged).charge_id)

Wire it into an application whose request handlers start flows::

    from plait.core import Plait, RequestContext, RouteBuilder
    from starlette.responses import Response

    class OrderController:
        def configure(self, r: RouteBuilder) -> None:
            r.post("/", self.place)

        async def place(self, ctx: RequestContext) -> Response:
            handle = await ctx.workflows.execute(ProcessOrder, await ctx.body(Order))
            return ctx.json({"flow_id": handle.id}, status=202)

    app = (
        Plait.create()
        .workflow(ProcessOrder).consumer(ProcessOrderWorkflow)
        .controller("/orders", OrderController)
    )
    app.listen(8000)  # or app.asgi() for any ASGI server; await app.start() / app.stop() without HTTP
"""

from plait.core.app import AppContext, Application, Plait, WorkflowRegistration
from plait.core.consumer import IWorkflowConsumer, StepHandler
from plait.core.context import StepContext, WorkflowContext
from plait.core.errors import (
    CorruptFlowError,
    DefinitionError,
    FlowConflictError,
    FlowNotFoundError,
    FlowStateError,
    NoEffectError,
    NonRetryableError,
    PayloadTooLargeError,
    PlaitError,
    ProviderNotStartedError,
    ProviderUnavailableError,
    RemoteError,
    SignalError,
    WorkflowCancelledError,
    WorkflowCompensatedError,
    WorkflowCompletionError,
    WorkflowError,
    WorkflowNotRegisteredError,
    WorkflowRollbackError,
    WorkflowStepError,
    WorkflowTimeoutError,
    WorkflowValidationError,
)
from plait.core.events import (
    FlowCancelled,
    FlowCompensated,
    FlowCompleted,
    FlowEvent,
    FlowFailed,
    FlowStarted,
    FlowWaiting,
    ProgressReported,
    RollbackCompleted,
    RollbackFailed,
    RollbackStarted,
    SignalReceived,
    StepCompleted,
    StepFailed,
    StepSkipped,
    StepStarted,
)
from plait.core.handle import FlowHandle, FlowStatus
from plait.core.info import FlowInfo, FlowPage, FlowSummary, ProgressInfo, StepInfo, StepStatus
from plait.core.options import Backoff, ConsumerOptions
from plait.core.provider import EventHook, WorkflowExecutor, WorkflowLifecycle, WorkflowProvider
from plait.core.routing import RequestContext, RouteBuilder
from plait.core.workflow import Step, StepGroup, Workflow, WorkflowDefinition

__all__ = [
    "AppContext",
    "Application",
    "Backoff",
    "ConsumerOptions",
    "CorruptFlowError",
    "DefinitionError",
    "EventHook",
    "FlowCancelled",
    "FlowCompensated",
    "FlowCompleted",
    "FlowConflictError",
    "FlowEvent",
    "FlowFailed",
    "FlowHandle",
    "FlowInfo",
    "FlowNotFoundError",
    "FlowPage",
    "FlowStarted",
    "FlowStateError",
    "FlowStatus",
    "FlowSummary",
    "FlowWaiting",
    "IWorkflowConsumer",
    "NoEffectError",
    "NonRetryableError",
    "PayloadTooLargeError",
    "Plait",
    "PlaitError",
    "ProgressInfo",
    "ProgressReported",
    "ProviderNotStartedError",
    "ProviderUnavailableError",
    "RemoteError",
    "RequestContext",
    "RollbackCompleted",
    "RollbackFailed",
    "RollbackStarted",
    "RouteBuilder",
    "SignalError",
    "SignalReceived",
    "Step",
    "StepCompleted",
    "StepContext",
    "StepFailed",
    "StepGroup",
    "StepHandler",
    "StepInfo",
    "StepSkipped",
    "StepStarted",
    "StepStatus",
    "Workflow",
    "WorkflowCancelledError",
    "WorkflowCompensatedError",
    "WorkflowCompletionError",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowError",
    "WorkflowExecutor",
    "WorkflowLifecycle",
    "WorkflowNotRegisteredError",
    "WorkflowProvider",
    "WorkflowRegistration",
    "WorkflowRollbackError",
    "WorkflowStepError",
    "WorkflowTimeoutError",
    "WorkflowValidationError",
]
