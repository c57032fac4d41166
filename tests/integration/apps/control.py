"""Workflows of control flow and run control, for tests whose flows run in ``plait worker`` processes while the
test process steers them (``tests/integration/test_arq_processes.py``).

Four things ``plait worker`` can run, configured by ``PLAIT_TEST_REDIS_URL`` and ``PLAIT_TEST_STALL``:

* ``create_app()``: the consumers of ``xp-cancel``, ``xp-fanout``, ``xp-approval``, ``xp-approval-quick``,
  ``xp-nap`` and ``xp-progress``;
* ``create_parent_app()`` and ``create_child_app()``: the consumers of ``xp-parent`` and of its sub-workflow
  ``xp-child``, one each, so that a parent and its child run in different processes;
* ``create_traced_app()``: the consumer of ``xp-traced``, with an OpenTelemetry SDK tracer provider whose exporter
  appends each finished span as a JSON line to the file ``PLAIT_TEST_SPANS`` names.

Handlers record what they did in the Redis hash ``xp:<flow>``: ``<what>`` counts, ``<what>.pid`` and
``<what>.at`` (``time.time()``) say which process did it last and when. A step named by the data's ``block_in``
blocks until it is cancelled, recording ``<step>.started`` first and ``<step>.cancelled`` when the cancellation
reaches it; one named by ``gate_in`` records ``<step>.started`` and waits until the test pushes to its gate (see
:func:`gate_key`).

``python -m tests.integration.apps.control <redis url> <flow id>`` starts a flow of ``xp-progress`` with that id
from a process of its own (which runs no step) and exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from pydantic import BaseModel

from plait.core import (
    Backoff,
    ConsumerOptions,
    IWorkflowConsumer,
    StepContext,
    StepHandler,
    Workflow,
    WorkflowCancelledError,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowError,
)
from plait.providers.arq import ArqWorkflowProvider

R = TypeVar("R", bound=BaseModel)

BLOCK = 60.0  # seconds a blocking step sleeps: far longer than any test waits


class Ticket(BaseModel):
    ticket: str
    block_in: str = ""
    gate_in: str = ""


class Done(BaseModel):
    step: str
    pid: int


class Approval(BaseModel):
    approver: str


class Applied(BaseModel):
    approver: str
    pid: int


class Stamp(BaseModel):
    pid: int
    at: float


class Napped(BaseModel):
    before: Stamp
    after: Stamp


class Parcel(BaseModel):
    ticket: str
    block: bool = False


class Shipment(BaseModel):
    tracking: str
    pid: int


class Delivered(BaseModel):
    tracking: str
    child_pid: int
    prepare_pid: int
    finish_pid: int


CANCEL = Workflow.define(name="xp-cancel", data=Ticket, result=Done).steps(
    lambda s: s.sequential(s.step("reserve", Done)).sequential(s.step("hold", Done)).sequential(s.step("release", Done))
)


def _approval(name: str, timeout: float) -> WorkflowDefinition[Ticket, Applied]:
    return Workflow.define(name=name, data=Ticket, result=Applied).steps(
        lambda s: (
            s.sequential(s.step("request", Done))
            .sequential(s.wait_for("approval", Approval, timeout=timeout))
            .sequential(s.step("apply", Applied))
        )
    )


APPROVAL = _approval("xp-approval", timeout=60.0)
APPROVAL_QUICK = _approval("xp-approval-quick", timeout=1.0)

NAP_SECONDS = 2.0
NAP = Workflow.define(name="xp-nap", data=Ticket, result=Napped).steps(
    lambda s: (
        s.sequential(s.step("before", Stamp))
        .sequential(s.sleep("pause", seconds=NAP_SECONDS))
        .sequential(s.step("after", Stamp))
    )
)

FANOUT = Workflow.define(name="xp-fanout", data=Ticket, result=Done).steps(
    lambda s: s.sequential(s.step("reserve", Done)).sequential(s.for_each("pack", Done, items=lambda ctx: [0, 1, 2]))
)

PROGRESS = Workflow.define(name="xp-progress", data=Ticket, result=Done).steps(
    lambda s: s.sequential(s.step("label", Done)).sequential(s.step("ship", Done))
)

CHILD = Workflow.define(name="xp-child", data=Parcel, result=Shipment).steps(
    lambda s: s.sequential(s.step("pack", Done))
)


def _parcel(ctx: WorkflowContext[Ticket]) -> Parcel:
    return Parcel(ticket=ctx.data.ticket, block=ctx.data.block_in == "pack")


PARENT = Workflow.define(name="xp-parent", data=Ticket, result=Delivered).steps(
    lambda s: (
        s.sequential(s.step("prepare", Done))
        .sequential(s.sub_workflow("ship", CHILD, data=_parcel))
        .sequential(s.step("finish", Done))
    )
)

TRACED = Workflow.define(name="xp-traced", data=Ticket, result=Done).steps(
    lambda s: s.sequential(s.step("reserve", Done)).sequential(s.step("charge", Done))
)

DEFINITIONS: tuple[WorkflowDefinition[Any, Any], ...] = (
    CANCEL,
    FANOUT,
    APPROVAL,
    APPROVAL_QUICK,
    NAP,
    PROGRESS,
    PARENT,
    CHILD,
    TRACED,
)


def record_key(flow_id: str) -> str:
    """The Redis hash where the handlers of flow ``flow_id`` record what they did."""
    return f"xp:{flow_id}"


def gate_key(flow_id: str) -> str:
    """The Redis list a push to which lets the gated step of flow ``flow_id`` finish."""
    return f"xp:{flow_id}:gate"


class Recorder:
    """Records what handlers did in Redis (a connection of the worker process)."""

    def __init__(self) -> None:
        self.redis = aioredis.Redis.from_url(os.environ["PLAIT_TEST_REDIS_URL"])

    async def record(self, flow_id: str, what: str, **extra: str) -> None:
        key = record_key(flow_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, what, 1)
            pipe.hset(key, mapping={f"{what}.pid": os.getpid(), f"{what}.at": repr(time.time())})
            for name, value in extra.items():
                pipe.hset(key, f"{what}.{name}", value)
            await pipe.execute()

    async def block(self, ctx: StepContext[Ticket] | StepContext[Parcel]) -> None:
        """Blocks until cancelled, recording that the step started and that its cancellation arrived."""
        await self.record(ctx.flow_id, f"{ctx.step_name}.started")
        try:
            await asyncio.sleep(BLOCK)
        except asyncio.CancelledError:
            await asyncio.shield(self.record(ctx.flow_id, f"{ctx.step_name}.cancelled"))
            raise

    async def gate(self, ctx: StepContext[Ticket]) -> None:
        """Waits until the test opens the gate of the flow."""
        await self.record(ctx.flow_id, f"{ctx.step_name}.started")
        opened = await self.redis.blpop([gate_key(ctx.flow_id)], timeout=BLOCK)
        if opened is None:
            raise TimeoutError("the test never opened the gate")

    async def on_error(self, ctx: WorkflowContext[Ticket] | WorkflowContext[Parcel], error: WorkflowError) -> None:
        reason = error.reason if isinstance(error, WorkflowCancelledError) else str(error)
        await self.record(ctx.flow_id, "on_error", error=type(error).__name__, reason=reason)

    async def close(self) -> None:
        await self.redis.aclose()


class _Consumer(IWorkflowConsumer[Ticket, R], Generic[R]):
    """Steps that record their run and rollback, and block when the data names them."""

    def __init__(self, recorder: Recorder, definition: WorkflowDefinition[Ticket, R]) -> None:
        self.recorder = recorder
        self.steps = {
            name: StepHandler(execute=self.run, rollback=self.undo)
            for name in definition.step_names
            if definition.step(name).has_handler
        }

    async def run(self, ctx: StepContext[Ticket]) -> Done:
        if ctx.data.block_in == ctx.step_name:
            await self.recorder.block(ctx)
        if ctx.data.gate_in == ctx.step_name:
            await self.recorder.gate(ctx)
        await self.recorder.record(ctx.flow_id, ctx.step_name)
        return Done(step=ctx.step_name, pid=os.getpid())

    async def undo(self, ctx: StepContext[Ticket]) -> None:
        await self.recorder.record(ctx.flow_id, f"{ctx.step_name}.rolled_back")

    async def on_complete(self, ctx: WorkflowContext[Ticket]) -> R:
        raise NotImplementedError

    async def on_error(self, ctx: WorkflowContext[Ticket], error: WorkflowError) -> None:
        await self.recorder.on_error(ctx, error)


class CancelWorkflow(_Consumer[Done]):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder, CANCEL)

    async def on_complete(self, ctx: WorkflowContext[Ticket]) -> Done:
        return ctx.result("release", Done)


class FanOutWorkflow(_Consumer[Done]):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder, FANOUT)

    async def on_complete(self, ctx: WorkflowContext[Ticket]) -> Done:
        return ctx.result("reserve", Done)


class ApprovalWorkflow(_Consumer[Applied]):
    def __init__(self, recorder: Recorder, definition: WorkflowDefinition[Ticket, Applied]) -> None:
        super().__init__(recorder, definition)
        self.steps = {**self.steps, "apply": StepHandler(execute=self.apply)}

    async def apply(self, ctx: StepContext[Ticket]) -> Applied:
        await self.recorder.record(ctx.flow_id, "apply")
        return Applied(approver=ctx.result("approval", Approval).approver, pid=os.getpid())

    async def on_complete(self, ctx: WorkflowContext[Ticket]) -> Applied:
        return ctx.result("apply", Applied)


class NapWorkflow(_Consumer[Napped]):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder, NAP)
        self.steps = {name: StepHandler(execute=self.stamp) for name in ("before", "after")}

    async def stamp(self, ctx: StepContext[Ticket]) -> Stamp:
        await self.recorder.record(ctx.flow_id, ctx.step_name)
        return Stamp(pid=os.getpid(), at=time.time())

    async def on_complete(self, ctx: WorkflowContext[Ticket]) -> Napped:
        return Napped(before=ctx.result("before", Stamp), after=ctx.result("after", Stamp))


class ProgressWorkflow(_Consumer[Done]):
    """``label`` reports half its progress, waits for the test's gate, then reports the rest."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder, PROGRESS)
        self.steps = {**self.steps, "label": StepHandler(execute=self.label)}

    async def label(self, ctx: StepContext[Ticket]) -> Done:
        await ctx.progress(0.5, "half labelled")
        await self.recorder.gate(ctx)
        await ctx.progress(1.0, "all labelled")
        return Done(step="label", pid=os.getpid())

    async def on_complete(self, ctx: WorkflowContext[Ticket]) -> Done:
        return ctx.result("ship", Done)


class ParentWorkflow(_Consumer[Delivered]):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder, PARENT)

    async def on_complete(self, ctx: WorkflowContext[Ticket]) -> Delivered:
        shipment = ctx.result("ship", Shipment)
        return Delivered(
            tracking=shipment.tracking,
            child_pid=shipment.pid,
            prepare_pid=ctx.result("prepare", Done).pid,
            finish_pid=ctx.result("finish", Done).pid,
        )


class ChildWorkflow(IWorkflowConsumer[Parcel, Shipment]):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.steps = {"pack": StepHandler(execute=self.pack, rollback=self.unpack)}

    async def pack(self, ctx: StepContext[Parcel]) -> Done:
        if ctx.data.block:
            await self.recorder.block(ctx)
        await self.recorder.record(ctx.flow_id, "pack")
        return Done(step="pack", pid=os.getpid())

    async def unpack(self, ctx: StepContext[Parcel]) -> None:
        await self.recorder.record(ctx.flow_id, "pack.rolled_back")

    async def on_complete(self, ctx: WorkflowContext[Parcel]) -> Shipment:
        return Shipment(tracking=f"trk-{ctx.data.ticket}", pid=ctx.result("pack", Done).pid)

    async def on_error(self, ctx: WorkflowContext[Parcel], error: WorkflowError) -> None:
        await self.recorder.on_error(ctx, error)


class TracedWorkflow(_Consumer[Done]):
    """``charge`` fails its first attempt; its second opens a span of its own (a client's, say)."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder, TRACED)
        self.steps = {**self.steps, "charge": StepHandler(execute=self.charge)}

    async def charge(self, ctx: StepContext[Ticket]) -> Done:
        if ctx.attempt == 1:
            raise RuntimeError("the bank is busy")
        with trace.get_tracer("tests.bank").start_as_current_span("bank.charge"):
            await self.recorder.record(ctx.flow_id, "charge")
        return Done(step="charge", pid=os.getpid())

    async def on_complete(self, ctx: WorkflowContext[Ticket]) -> Done:
        return ctx.result("charge", Done)


class JsonLinesExporter(SpanExporter):
    """Appends each finished span to a file as one JSON line (names, ids in hex, attributes, status, pid)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            context = span.get_span_context()
            assert context is not None
            lines.append(
                json.dumps(
                    {
                        "name": span.name,
                        "trace_id": format(context.trace_id, "032x"),
                        "span_id": format(context.span_id, "016x"),
                        "parent_id": format(span.parent.span_id, "016x") if span.parent is not None else None,
                        "start_time": span.start_time,
                        "attributes": dict(span.attributes or {}),
                        "status": span.status.status_code.name,
                        "pid": os.getpid(),
                    }
                )
                + "\n"
            )
        with open(self.path, "a", encoding="utf-8") as out:
            out.write("".join(lines))  # one write per export: a reader sees whole lines or none of a batch
        return SpanExportResult.SUCCESS


def _provider() -> ArqWorkflowProvider:
    return ArqWorkflowProvider(
        os.environ["PLAIT_TEST_REDIS_URL"],
        stall_interval=float(os.environ.get("PLAIT_TEST_STALL", "5")),
        stop_grace=5.0,
        provider_id=f"xp-{os.getpid()}",
    )


class ControlApp:
    """A bare provider with some of this module's consumers registered, and their Redis client."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.provider = _provider()

    async def start(self) -> None:
        await self.provider.start()

    async def stop(self) -> None:
        await self.provider.stop()
        await self.recorder.close()


def create_app() -> ControlApp:
    """Runs the flows of cancellation, signals, durable sleeps and progress."""
    app = ControlApp()
    app.provider.register(CANCEL, CancelWorkflow(app.recorder))
    app.provider.register(FANOUT, FanOutWorkflow(app.recorder))
    app.provider.register(APPROVAL, ApprovalWorkflow(app.recorder, APPROVAL))
    app.provider.register(APPROVAL_QUICK, ApprovalWorkflow(app.recorder, APPROVAL_QUICK))
    app.provider.register(NAP, NapWorkflow(app.recorder))
    app.provider.register(PROGRESS, ProgressWorkflow(app.recorder))
    return app


def create_parent_app() -> ControlApp:
    """Runs ``xp-parent`` only: its child flows run wherever ``xp-child``'s consumer is."""
    app = ControlApp()
    app.provider.register(PARENT, ParentWorkflow(app.recorder))
    return app


def create_child_app() -> ControlApp:
    """Runs ``xp-child`` only."""
    app = ControlApp()
    app.provider.register(CHILD, ChildWorkflow(app.recorder))
    return app


def create_traced_app() -> ControlApp:
    """Runs ``xp-traced`` with a global SDK tracer provider that writes spans to ``PLAIT_TEST_SPANS``."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(os.environ["PLAIT_TEST_SPANS"])))
    trace.set_tracer_provider(tracer_provider)
    app = ControlApp()
    options = ConsumerOptions(attempts=2, backoff=Backoff.fixed(0))
    app.provider.register(TRACED, TracedWorkflow(app.recorder), options)
    return app


async def start_progress(url: str, flow_id: str) -> None:
    """Starts a flow of ``xp-progress`` with id ``flow_id`` from this process, which runs no step."""
    provider = ArqWorkflowProvider(url)
    provider.register(PROGRESS)
    await provider.start()
    try:
        await provider.execute(PROGRESS, Ticket(ticket=flow_id), id=flow_id)
    finally:
        await provider.stop()


if __name__ == "__main__":
    asyncio.run(start_progress(sys.argv[1], sys.argv[2]))
