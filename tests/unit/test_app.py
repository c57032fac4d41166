"""The application builder and its lifecycle: registration, the provider, start/stop, the ASGI lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import TypeVar, assert_type

import httpx
import pytest
from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import ASGIApp, Message

from plait.core import (
    Application,
    ConsumerOptions,
    DefinitionError,
    FlowCompleted,
    FlowEvent,
    FlowStatus,
    IWorkflowConsumer,
    Plait,
    PlaitError,
    ProviderNotStartedError,
    RequestContext,
    RouteBuilder,
    StepContext,
    StepHandler,
    Workflow,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowExecutor,
    WorkflowNotRegisteredError,
    WorkflowRegistration,
)
from plait.core.options import Backoff
from plait.providers.inprocess import InProcessWorkflowProvider
from plait.testing import run_app

D = TypeVar("D", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


class Order(BaseModel):
    order_id: str


class Charged(BaseModel):
    attempts: int


class Receipt(BaseModel):
    order_id: str
    attempts: int


Charge = Workflow.define(name="charge", data=Order, result=Receipt).steps(
    lambda s: s.sequential(s.step("charge", Charged))
)
Notify = Workflow.define(name="notify", data=Order, result=Receipt)


class ChargeWorkflow(IWorkflowConsumer[Order, Receipt]):
    """Fails the first ``failures`` attempts of its step."""

    failures = 0

    def __init__(self) -> None:
        self.steps = {"charge": StepHandler(execute=self.charge)}

    async def charge(self, ctx: StepContext[Order]) -> Charged:
        if ctx.attempt <= self.failures:
            raise ConnectionError("gateway unavailable")
        return Charged(attempts=ctx.attempt)

    async def on_complete(self, ctx: WorkflowContext[Order]) -> Receipt:
        return Receipt(order_id=ctx.data.order_id, attempts=ctx.result("charge", Charged).attempts)


class FlakyChargeWorkflow(ChargeWorkflow):
    failures = 2


class IncompleteWorkflow(IWorkflowConsumer[Order, Receipt]):
    def __init__(self) -> None:
        self.steps = {}  # no handler for "charge"

    async def on_complete(self, ctx: WorkflowContext[Order]) -> Receipt:
        raise AssertionError("never runs")  # pragma: no cover


class RecordingProvider(InProcessWorkflowProvider):
    """An in-process provider that records what the application registers, starts and stops."""

    def __init__(self) -> None:
        super().__init__(stop_grace=1.0)
        self.registered: list[tuple[str, object, ConsumerOptions | None]] = []
        self.starts = 0
        self.stops = 0

    def register(
        self,
        definition: WorkflowDefinition[D, R],
        consumer: IWorkflowConsumer[D, R] | None = None,
        options: ConsumerOptions | None = None,
    ) -> None:
        self.registered.append((definition.name, consumer, options))
        super().register(definition, consumer, options)

    async def start(self) -> None:
        self.starts += 1
        await super().start()

    async def stop(self) -> None:
        self.stops += 1
        await super().stop()


def running(app: Application) -> bool:
    return app.started  # a call, so that mypy does not keep an earlier assert's narrowing


@contextlib.asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Runs an ASGI app's lifespan as a server does: startup before the body, shutdown after."""
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()

    async def receive() -> Message:
        return await to_app.get()

    async def send(message: Message) -> None:
        await from_app.put(message)

    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}

    async def run() -> None:
        await app(scope, receive, send)

    task = asyncio.create_task(run())
    await to_app.put({"type": "lifespan.startup"})
    message = await from_app.get()
    if message["type"] == "lifespan.startup.failed":
        await task  # raises what the startup raised
        raise AssertionError(message)  # pragma: no cover
    assert message["type"] == "lifespan.startup.complete"
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        assert (await from_app.get())["type"] == "lifespan.shutdown.complete"
        await task


class StatusController:
    def configure(self, r: RouteBuilder) -> None:
        r.get("/{flow_id}", self.status)

    async def status(self, ctx: RequestContext) -> Response:
        return ctx.json({"status": await ctx.workflows.get_status(ctx.params["flow_id"])})


def test_the_builder_chains_and_consumer_returns_the_application() -> None:
    app = Plait.create()
    registration = app.workflow(Charge)
    assert isinstance(registration, WorkflowRegistration)
    assert registration.consumer(ChargeWorkflow, options=ConsumerOptions(attempts=2)) is app
    assert app.workflow(Notify).controller("/flows", StatusController) is app  # Notify: started from here only
    assert repr(app) == "Application(stopped, workflows=['charge', 'notify'])"


def test_a_workflow_name_registered_twice_is_a_definition_error() -> None:
    app = Plait.create().workflow(Charge).consumer(ChargeWorkflow)
    same_name = Workflow.define(name="charge", data=Order, result=Receipt)
    with pytest.raises(DefinitionError, match="Workflow 'charge' is registered twice"):
        app.workflow(same_name)
    with pytest.raises(DefinitionError, match="Workflow 'charge' is registered twice"):
        app.workflow(Charge)


def test_registration_mistakes_are_reported_at_once() -> None:
    app = Plait.create()
    registration = app.workflow(Notify)
    registration.consumer(ChargeWorkflow)
    with pytest.raises(DefinitionError, match="already has a consumer"):
        registration.consumer(ChargeWorkflow)
    with pytest.raises(DefinitionError, match="must be ConsumerOptions"):
        app.workflow(Charge).consumer(ChargeWorkflow, options={"attempts": 3})  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match=r"takes a definition from Workflow\.define\(\)"):
        app.workflow("charge")  # type: ignore[arg-type]
    with pytest.raises(PlaitError, match="has no configure"):
        app.controller("/x", ChargeWorkflow)
    with pytest.raises(PlaitError, match="takes a WorkflowProvider"):
        app.workflow_provider(object())  # type: ignore[arg-type]


async def test_the_default_provider_is_in_process_and_options_reach_it() -> None:
    app = (
        Plait.create()
        .workflow(Charge)
        .consumer(FlakyChargeWorkflow, options=ConsumerOptions(attempts=3, backoff=Backoff.fixed(0)))
    )
    await app.start()
    try:
        assert isinstance(app.context.provider, InProcessWorkflowProvider)
        handle = await app.context.workflows.execute(Charge, {"order_id": "o-1"})
        assert await handle.result(timeout=5) == Receipt(order_id="o-1", attempts=3)
    finally:
        await app.stop()


async def test_without_the_in_process_package_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "plait.providers.inprocess", None)  # makes the import fail
    app = Plait.create().workflow(Charge).consumer(ChargeWorkflow)
    with pytest.raises(PlaitError, match="pip install plait-providers-inprocess"):
        await app.start()


async def test_the_given_provider_gets_every_workflow_with_its_consumer_and_options() -> None:
    provider = RecordingProvider()
    options = ConsumerOptions(attempts=4)
    app = Plait.create().workflow_provider(provider).workflow(Charge).consumer(ChargeWorkflow, options=options)
    app.workflow(Notify)  # emitter only
    await app.start()
    try:
        assert app.context.provider is provider
        (charge_name, consumer, charge_options), notify = provider.registered
        assert (charge_name, type(consumer), charge_options) == ("charge", ChargeWorkflow, options)
        assert notify == ("notify", None, None)
        handle = await app.context.workflows.execute(Charge, Order(order_id="o-2"))
        assert (await handle.result(timeout=5)).order_id == "o-2"
        # A workflow without a consumer here is still executed through the provider, which runs it wherever its
        # consumer is; the in-process provider has it nowhere and says so.
        with pytest.raises(WorkflowNotRegisteredError, match="no consumer is registered here"):
            await app.context.workflows.execute(Notify, {"order_id": "o-3"})
    finally:
        await app.stop()
    assert (provider.starts, provider.stops) == (1, 1)


async def test_start_and_stop_are_idempotent_and_stop_is_safe_before_start() -> None:
    provider = RecordingProvider()
    app = Plait.create().workflow_provider(provider).workflow(Charge).consumer(ChargeWorkflow)
    await app.stop()
    await asyncio.gather(app.start(), app.start())
    await app.start()
    assert running(app)
    assert provider.starts == 1
    await app.stop()
    await app.stop()
    assert not running(app)
    assert provider.stops == 1
    # Restarting reuses what was built: the provider is not asked to register the workflows again.
    await app.start()
    assert len(provider.registered) == 1
    await app.stop()


async def test_the_executor_refuses_work_outside_start_and_stop() -> None:
    app = Plait.create().workflow(Charge).consumer(ChargeWorkflow)
    with pytest.raises(ProviderNotStartedError, match=r"await app\.start\(\) first"):
        await app.context.workflows.execute(Charge, {"order_id": "o-1"})
    with pytest.raises(PlaitError, match="no workflow provider yet"):
        app.context.provider  # noqa: B018
    await app.start()
    handle = await app.context.workflows.execute(Charge, {"order_id": "o-1"})
    await handle.result(timeout=5)
    await app.stop()
    with pytest.raises(ProviderNotStartedError):  # the provider's own refusal, once stopped
        await app.context.workflows.execute(Charge, {"order_id": "o-2"})
    assert await app.context.workflows.get_status(handle.id) == FlowStatus.COMPLETED  # what it knows, it tells


def test_the_builder_names_are_exported_and_documented() -> None:
    import plait.core

    for name in ("Plait", "Application", "AppContext", "WorkflowRegistration", "RouteBuilder", "RequestContext"):
        assert name in plait.core.__all__
        assert getattr(plait.core, name).__doc__, name


def test_types_flow_through_the_builder() -> None:
    # Checked by mypy: the registration keeps the definition's models, so a consumer of another workflow
    # (or a handle of another result) is a type error.
    registration = Plait.create().workflow(Charge)
    assert_type(registration, WorkflowRegistration[Order, Receipt])
    assert_type(registration.consumer(ChargeWorkflow), Application)
    assert_type(Plait.create().context.workflows, WorkflowExecutor)


async def test_the_builder_is_closed_once_started() -> None:
    app = Plait.create()
    await app.start()
    try:
        with pytest.raises(PlaitError, match="Cannot add a workflow after the application has started"):
            app.workflow(Charge)
        with pytest.raises(PlaitError, match="Cannot add a provider after"):
            app.provider(Order)
    finally:
        await app.stop()


async def test_a_consumer_that_does_not_match_its_workflow_fails_the_start() -> None:
    app = Plait.create().workflow(Charge).consumer(IncompleteWorkflow)
    with pytest.raises(DefinitionError, match="IncompleteWorkflow of workflow 'charge': no handler for step"):
        await app.start()
    with pytest.raises(PlaitError, match="failed to start and cannot be started again"):
        await app.start()


async def test_a_worker_runs_the_consumers_without_http() -> None:
    # `plait worker module:app` needs only start() and stop(): nothing here touches ASGI.
    app: Application = Plait.create().workflow(Charge).consumer(ChargeWorkflow)
    await app.start()
    handle = await app.context.workflows.execute(Charge, {"order_id": "w-1"})
    assert (await handle.result(timeout=5)).order_id == "w-1"
    assert await app.context.workflows.get_status(handle.id) == FlowStatus.COMPLETED
    await app.stop()


async def test_the_asgi_lifespan_starts_and_stops_the_application() -> None:
    app = Plait.create().workflow(Charge).consumer(ChargeWorkflow).controller("/flows", StatusController)
    asgi = app.asgi()
    assert app.asgi() is asgi
    async with lifespan(asgi):
        assert app.started
        handle = await app.context.workflows.execute(Charge, {"order_id": "l-1"})
        await handle.result(timeout=5)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://app") as client:
            response = await client.get(f"/flows/{handle.id}")
        assert response.json() == {"status": "completed"}
    assert not app.started


async def test_routes_are_mounted_when_asgi_is_asked_for_after_start() -> None:
    app = Plait.create().workflow(Charge).consumer(ChargeWorkflow).controller("/flows", StatusController)
    await app.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.asgi()), base_url="http://app") as client:
            assert (await client.get("/flows/flow-unknown")).status_code == 404
    finally:
        await app.stop()


async def test_a_wiring_error_fails_the_lifespan_startup() -> None:
    class Missing:
        pass

    class NeedsMissing(StatusController):
        def __init__(self, missing: Missing) -> None:
            self.missing = missing

    app = Plait.create().controller("/flows", NeedsMissing, [Missing])
    with pytest.raises(PlaitError, match="NeedsMissing needs Missing, which is not registered"):
        async with lifespan(app.asgi()):
            pass  # pragma: no cover
    assert not app.started


async def test_requests_before_start_get_a_503_that_says_why() -> None:
    app = Plait.create().controller("/flows", StatusController)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.asgi()), base_url="http://app") as client:
        response = await client.get("/flows/anything")
    assert response.status_code == 503
    assert response.json()["error"] == "not_started"
    assert "await app.start()" in response.json()["message"]


async def test_event_hooks_given_to_the_application_see_every_flow_event() -> None:
    seen: list[FlowEvent] = []

    async def hook(event: FlowEvent) -> None:
        seen.append(event)

    app = Plait.create().on_event(hook).workflow(Charge).consumer(ChargeWorkflow)
    async with run_app(app):
        handle = await app.context.workflows.execute(Charge, Order(order_id="o-9"))
        await handle.result(timeout=5)
        for _ in range(100):
            if any(isinstance(e, FlowCompleted) for e in seen):
                break
            await asyncio.sleep(0.01)
    assert [type(e).__name__ for e in seen] == ["FlowStarted", "StepStarted", "StepCompleted", "FlowCompleted"]
    assert {e.flow_id for e in seen} == {handle.id}
    with pytest.raises(PlaitError, match="takes an async function"):
        Plait.create().on_event("not a hook")  # type: ignore[arg-type]
