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

    if __name__ == "__main__":
        app.listen(8000)  # or app.asgi() for any ASGI server; await app.start() / app.stop() without HTTP

The app builder's names (``Plait``, ``Application``, ``RequestContext``, ...) are imported on first use: they need
Starlette, uvicorn and dependency-injector, which a worker process or a custom provider that imports
``plait.core.engine`` does without.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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
from plait.core.workflow import Step, StepGroup, Workflow, WorkflowDefinition

if TYPE_CHECKING:  # imported on first use, by __getattr__ below; type checkers and IDEs see them here
    from plait.core.app import AppContext, Application, Plait, WorkflowRegistration
    from plait.core.routing import RequestContext, RouteBuilder

# Grouped by purpose, sorted within each group.

# Definitions: what a workflow does, in which order, with which models.
__all__ = ["Step", "StepGroup", "Workflow", "WorkflowDefinition"]

# Consumers and contexts: the code that runs the steps, what it is given, how it is retried.
__all__ += ["Backoff", "ConsumerOptions", "IWorkflowConsumer", "StepContext", "StepHandler", "WorkflowContext"]

# Executing and inspecting: a started flow's handle, its status, each node's fate, listings.
__all__ += [
    "FlowHandle",
    "FlowInfo",
    "FlowPage",
    "FlowStatus",
    "FlowSummary",
    "ProgressInfo",
    "StepInfo",
    "StepStatus",
]

# Events: a flow's history, for subscribe() and on_event() hooks.
__all__ += [
    "EventHook",
    "FlowCancelled",
    "FlowCompensated",
    "FlowCompleted",
    "FlowEvent",
    "FlowFailed",
    "FlowStarted",
    "FlowWaiting",
    "ProgressReported",
    "RollbackCompleted",
    "RollbackFailed",
    "RollbackStarted",
    "SignalReceived",
    "StepCompleted",
    "StepFailed",
    "StepSkipped",
    "StepStarted",
]

# Errors: one base class; a failed flow is a WorkflowError.
__all__ += [
    "CorruptFlowError",
    "DefinitionError",
    "FlowConflictError",
    "FlowNotFoundError",
    "FlowStateError",
    "NoEffectError",
    "NonRetryableError",
    "PayloadTooLargeError",
    "PlaitError",
    "ProviderNotStartedError",
    "ProviderUnavailableError",
    "RemoteError",
    "SignalError",
    "WorkflowCancelledError",
    "WorkflowCompensatedError",
    "WorkflowCompletionError",
    "WorkflowError",
    "WorkflowNotRegisteredError",
    "WorkflowRollbackError",
    "WorkflowStepError",
    "WorkflowTimeoutError",
    "WorkflowValidationError",
]

# Providers: the protocols every provider satisfies.
__all__ += ["WorkflowExecutor", "WorkflowLifecycle", "WorkflowProvider"]

# App builder: services, workflows and controllers in one Starlette application (imported on first use).
__all__ += ["AppContext", "Application", "Plait", "RequestContext", "RouteBuilder", "WorkflowRegistration"]

# Name -> module of the app builder's names. They pull in Starlette, uvicorn and dependency-injector, so they are
# imported when first asked for rather than by every `import plait.core...`.
_LAZY = {
    "AppContext": "plait.core.app",
    "Application": "plait.core.app",
    "Plait": "plait.core.app",
    "WorkflowRegistration": "plait.core.app",
    "RequestContext": "plait.core.routing",
    "RouteBuilder": "plait.core.routing",
}

# Hidden from type checkers, which see the names above; to them a module __getattr__ would make every misspelt
# `from plait.core import X` valid.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later lookups find it without calling __getattr__
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
