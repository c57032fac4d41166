"""OpenTelemetry: the spans of a flow (execute, each handler attempt, the flow) form one trace under the caller's
span, carry the flow's identity and outcome, and log records of handlers carry the trace ids."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

from plait.core import (
    Backoff,
    ConsumerOptions,
    IWorkflowConsumer,
    StepContext,
    StepHandler,
    Workflow,
    WorkflowContext,
    WorkflowError,
    telemetry,
)
from plait.providers.inprocess import InProcessWorkflowProvider


class Order(BaseModel):
    order_id: str


class Done(BaseModel):
    ok: bool = True


Traced = Workflow.define(name="traced", data=Order, result=Done).steps(
    lambda s: s.sequential(s.step("reserve", Done), s.step("charge", Done))
)


class TracedWorkflow(IWorkflowConsumer[Order, Done]):
    def __init__(self, charge_fails: int) -> None:
        self.charge_fails = charge_fails
        self.steps = {
            "reserve": StepHandler(execute=self.reserve, rollback=self.release),
            "charge": StepHandler(execute=self.charge),
        }

    async def reserve(self, ctx: StepContext[Order]) -> Done:
        ctx.log.info("reserving %s", ctx.data.order_id)
        return Done()

    async def release(self, ctx: StepContext[Order]) -> None:
        return None

    async def charge(self, ctx: StepContext[Order]) -> Done:
        if ctx.attempt <= self.charge_fails:
            raise RuntimeError(f"declined {ctx.attempt}")
        return Done()

    async def on_complete(self, ctx: WorkflowContext[Order]) -> Done:
        return Done()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        telemetry.use_tracer_provider(None)


def by_name(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


async def run(charge_fails: int, attempts: int) -> str:
    provider = InProcessWorkflowProvider(stop_grace=1.0)
    options = ConsumerOptions(attempts=attempts, backoff=Backoff.fixed(0))
    provider.register(Traced, TracedWorkflow(charge_fails), options)
    await provider.start()
    try:
        tracer = telemetry._tracer()
        with tracer.start_as_current_span("request"):
            handle = await provider.execute(Traced, Order(order_id="o-1"))
        with contextlib.suppress(WorkflowError):
            await handle.result(timeout=5)
        return handle.id
    finally:
        await provider.stop()


async def test_a_flow_is_one_trace_under_the_callers_span(spans: InMemorySpanExporter) -> None:
    flow_id = await run(charge_fails=1, attempts=2)
    finished = spans.get_finished_spans()
    request = by_name(finished, "request")[0]
    execute = by_name(finished, "plait.execute traced")[0]
    assert execute.kind == SpanKind.PRODUCER
    assert execute.parent is not None and execute.parent.span_id == request.context.span_id
    handlers = [s for s in finished if s.name.startswith(("plait.step", "plait.on_complete"))]
    assert [s.name for s in handlers] == [
        "plait.step traced.reserve",
        "plait.step traced.charge",
        "plait.step traced.charge",
        "plait.on_complete traced",
    ]
    flow = by_name(finished, "plait.flow traced")[0]
    for span in [*handlers, flow]:
        assert span.context.trace_id == request.context.trace_id
        assert span.parent is not None and span.parent.span_id == execute.context.span_id
        assert span.attributes is not None and span.attributes["plait.flow_id"] == flow_id
    first, second = by_name(finished, "plait.step traced.charge")
    assert first.attributes is not None and second.attributes is not None
    assert (first.attributes["plait.attempt"], first.attributes["plait.outcome"]) == (1, "error")
    assert first.status.status_code == StatusCode.ERROR
    assert [e.name for e in first.events] == ["exception"]
    assert (second.attributes["plait.attempt"], second.attributes["plait.outcome"]) == (2, "ok")
    assert flow.attributes is not None and flow.attributes["plait.status"] == "completed"
    assert flow.start_time is not None and flow.end_time is not None and flow.start_time <= flow.end_time


async def test_rollbacks_and_on_error_have_spans_and_the_flow_span_its_error(spans: InMemorySpanExporter) -> None:
    await run(charge_fails=9, attempts=1)
    finished = spans.get_finished_spans()
    assert [s.name for s in by_name(finished, "plait.rollback")] == ["plait.rollback traced.reserve"]
    assert [s.name for s in by_name(finished, "plait.on_error")] == ["plait.on_error traced"]
    flow = by_name(finished, "plait.flow traced")[0]
    assert flow.status.status_code == StatusCode.ERROR
    assert flow.status.description is not None and "declined 1" in flow.status.description


async def test_handler_log_records_carry_the_trace_ids(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="plait.workflow"):
        await run(charge_fails=0, attempts=1)
    record = next(r for r in caplog.records if "reserving" in r.getMessage())
    span = by_name(spans.get_finished_spans(), "plait.step traced.reserve")[0]
    assert record.trace_id == format(span.context.trace_id, "032x")  # type: ignore[attr-defined]
    assert record.span_id == format(span.context.span_id, "016x")  # type: ignore[attr-defined]


async def test_without_a_tracer_provider_nothing_is_recorded_or_added_to_meta() -> None:
    assert not telemetry.enabled()
    provider = InProcessWorkflowProvider(stop_grace=1.0)
    provider.register(Traced, TracedWorkflow(0))
    await provider.start()
    try:
        handle = await provider.execute(Traced, Order(order_id="o-2"), meta={"k": "v"})
        await handle.result(timeout=5)
        assert (await provider.describe(handle.id)).meta == {"k": "v"}
    finally:
        await provider.stop()
