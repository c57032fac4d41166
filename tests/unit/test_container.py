"""Dependency injection: services, consumers and controllers are built at start-up, and wiring mistakes stop
``start()`` with a message that names what is missing and who needs it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dependency_injector import containers
from dependency_injector import providers as di
from pydantic import BaseModel
from starlette.responses import Response

from plait.core import (
    Application,
    IWorkflowConsumer,
    Plait,
    PlaitError,
    RequestContext,
    RouteBuilder,
    Workflow,
    WorkflowContext,
    WorkflowExecutor,
)


class Order(BaseModel):
    order_id: str


class Done(BaseModel):
    ok: bool


Ping = Workflow.define(name="ping", data=Order, result=Done)


class HttpClient:
    built = 0

    def __init__(self) -> None:
        HttpClient.built += 1


class PaymentService:
    def __init__(self, http: HttpClient) -> None:
        self.http = http


class FulfillmentService:
    def __init__(self, http: HttpClient, payments: PaymentService) -> None:
        self.http = http
        self.payments = payments


class PingWorkflow(IWorkflowConsumer[Order, Done]):
    def __init__(self, payments: PaymentService) -> None:
        self.payments = payments

    async def on_complete(self, ctx: WorkflowContext[Order]) -> Done:
        return Done(ok=True)


class PaymentController:
    def __init__(self, payments: PaymentService) -> None:
        self.payments = payments

    def configure(self, r: RouteBuilder) -> None:
        r.get("/", self.index)

    async def index(self, ctx: RequestContext) -> Response:
        return ctx.json({"ok": True})


@pytest.fixture(autouse=True)
def _reset_counts() -> Iterator[None]:
    HttpClient.built = 0
    yield


async def start_error(app: Application) -> str:
    with pytest.raises(PlaitError) as caught:
        await app.start()
    assert not app.started
    return str(caught.value)


async def test_services_are_singletons_built_dependencies_first_whatever_the_registration_order() -> None:
    app = (
        Plait.create()
        .provider(FulfillmentService, [HttpClient, PaymentService])
        .provider(PaymentService, [HttpClient])
        .provider(HttpClient)
        .workflow(Ping)
        .consumer(PingWorkflow, [PaymentService])
    )
    await app.start()
    try:
        fulfillment = app.context.resolve(FulfillmentService)
        payments = app.context.resolve(PaymentService)
        assert fulfillment.payments is payments
        assert fulfillment.http is payments.http is app.context.resolve(HttpClient)
        assert HttpClient.built == 1
    finally:
        await app.stop()


async def test_a_missing_dependency_of_a_consumer_names_it_who_needs_it_and_the_chain() -> None:
    app = Plait.create().provider(PaymentService, [HttpClient]).workflow(Ping).consumer(PingWorkflow, [PaymentService])
    message = await start_error(app)
    assert message.startswith("PaymentService needs HttpClient, which is not registered")
    assert "PingWorkflow (consumer of workflow 'ping') -> PaymentService -> HttpClient" in message
    assert ".provider(HttpClient" in message


async def test_a_missing_dependency_of_a_controller_names_the_controller() -> None:
    message = await start_error(Plait.create().controller("/payments", PaymentController, [PaymentService]))
    assert message.startswith("PaymentController needs PaymentService, which is not registered")
    assert "(PaymentController (controller at '/payments') -> PaymentService)" in message


class Anything:
    def __init__(self, thing: object) -> None:
        self.thing = thing


async def test_a_consumer_class_is_not_injectable_and_the_error_says_so() -> None:
    app = Plait.create().provider(Anything, [PingWorkflow]).workflow(Ping).consumer(PingWorkflow, [PaymentService])
    app.provider(HttpClient).provider(PaymentService, [HttpClient])
    message = await start_error(app)
    assert "Anything needs PingWorkflow" in message
    assert "registered as a consumer, which is not injectable" in message


class A:
    def __init__(self, b: B) -> None:
        self.b = b


class B:
    def __init__(self, c: C) -> None:
        self.c = c


class C:
    def __init__(self, a: A) -> None:
        self.a = a


async def test_a_cycle_is_named() -> None:
    app = Plait.create().provider(A, [B]).provider(B, [C]).provider(C, [A])
    assert await start_error(app) == "Dependency cycle: A -> B -> C -> A"


class X:
    def __init__(self, y: Y) -> None: ...


class Y:
    def __init__(self, z: Z) -> None: ...


class Z:
    def __init__(self, y: Y) -> None: ...


class Dashboard(Anything):
    def configure(self, r: RouteBuilder) -> None:
        pass


async def test_a_cycle_reached_from_a_controller_names_only_the_cycle() -> None:
    app = Plait.create().provider(X, [Y]).provider(Y, [Z]).provider(Z, [Y]).controller("/x", Dashboard, [X])
    message = await start_error(app)
    assert message == "Dependency cycle: Y -> Z -> Y"


async def test_a_service_that_needs_itself_is_a_cycle() -> None:
    class Loop:
        def __init__(self, other: object) -> None: ...

    assert await start_error(Plait.create().provider(Loop, [Loop])) == "Dependency cycle: Loop -> Loop"


async def test_too_many_or_too_few_dependencies_are_wiring_errors() -> None:
    message = await start_error(Plait.create().provider(HttpClient).provider(PaymentService, [HttpClient, HttpClient]))
    assert "PaymentService cannot be built from its dependencies [HttpClient, HttpClient]" in message
    assert "PaymentService(http: " in message
    message = await start_error(Plait.create().provider(PaymentService))
    assert "PaymentService cannot be built from its dependencies []" in message
    assert "missing a required argument: 'http'" in message


async def test_dependencies_in_the_wrong_order_are_caught_by_the_constructor_annotations() -> None:
    app = Plait.create().provider(HttpClient).provider(PaymentService, [HttpClient])
    app.provider(FulfillmentService, [PaymentService, HttpClient])
    message = await start_error(app)
    assert (
        "FulfillmentService: parameter 'http' expects HttpClient, but the dependency given for it is PaymentService"
        in message
    )


def test_registration_mistakes_fail_at_once() -> None:
    app = Plait.create().provider(HttpClient)
    with pytest.raises(PlaitError, match="HttpClient is registered twice"):
        app.provider(HttpClient)
    with pytest.raises(PlaitError, match=r"neither a class registered with \.provider\(\)"):
        app.provider(PaymentService, ["HttpClient"])  # type: ignore[list-item]
    with pytest.raises(PlaitError, match="must be a list"):
        app.provider(PaymentService, HttpClient)  # type: ignore[arg-type]
    with pytest.raises(PlaitError, match="provider\\(\\) takes a class"):
        app.provider(HttpClient())  # type: ignore[arg-type]


async def test_a_constructor_that_raises_stops_the_start_with_a_note_naming_it() -> None:
    class Broken:
        def __init__(self, http: HttpClient) -> None:
            raise RuntimeError("no config")

    app = Plait.create().provider(HttpClient).provider(Broken, [HttpClient])
    with pytest.raises(RuntimeError, match="no config") as caught:
        await app.start()
    assert "(raised while Plait was building Broken)" in caught.value.__notes__
    with pytest.raises(PlaitError, match="failed to start and cannot be started again"):
        await app.start()


class Settings:
    def __init__(self, url: str) -> None:
        self.url = url


class Clock:
    pass


class Repository:
    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock


events: list[str] = []


def _database() -> Iterator[str]:
    events.append("open")
    yield "db-connection"
    events.append("close")


class Infrastructure(containers.DeclarativeContainer):
    settings = di.Singleton(Settings, url="postgres://db")
    clock = di.Singleton(Clock)
    database = di.Resource(_database)


class Store:
    def __init__(self, connection: str, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings


async def test_providers_and_classes_of_the_users_container_are_injectable() -> None:
    events.clear()
    infra = Infrastructure()
    app = (
        Plait.create(infra)
        .provider(Repository, [Settings, infra.clock])  # a class it provides, and one of its providers
        .provider(Store, [Infrastructure.database, Infrastructure.settings])  # declared on the class
    )
    await app.start()
    try:
        repository = app.context.resolve(Repository)
        store = app.context.resolve(Store)
        assert repository.settings is infra.settings() is store.settings  # one singleton, not a copy
        assert repository.clock is infra.clock()
        assert store.connection == "db-connection"
        assert events == ["open"]
    finally:
        await app.stop()
    assert events == ["open", "close"]


async def test_a_container_class_is_instantiated_and_its_resources_managed() -> None:
    events.clear()
    app = Plait.create(Infrastructure).provider(Store, [Infrastructure.database, Settings])
    await app.start()
    assert app.context.resolve(Store).connection == "db-connection"
    await app.stop()
    await app.stop()
    assert events == ["open", "close"]


async def test_a_class_the_users_container_provides_twice_is_ambiguous() -> None:
    class Twice(containers.DeclarativeContainer):
        settings = di.Singleton(Settings, url="sqlite://")
        primary = di.Singleton(Clock)
        replica = di.Singleton(Clock)

    message = await start_error(Plait.create(Twice()).provider(Repository, [Settings, Clock]))
    assert "Repository needs Clock, which several providers of your container build (primary, replica)" in message


async def test_a_class_missing_from_the_users_container_too_is_reported() -> None:
    message = await start_error(Plait.create(Infrastructure()).provider(PaymentService, [HttpClient]))
    assert message.startswith("PaymentService needs HttpClient, which is not registered")


class Checkout:
    def __init__(self, workflows: WorkflowExecutor) -> None:
        self.workflows = workflows


async def test_the_applications_executor_is_injectable_as_workflow_executor() -> None:
    app = Plait.create().provider(Checkout, [WorkflowExecutor])
    await app.start()
    try:
        assert app.context.resolve(Checkout).workflows is app.context.workflows
    finally:
        await app.stop()


async def test_resolve_before_start_or_of_an_unknown_class_is_an_error() -> None:
    app = Plait.create().provider(HttpClient)
    with pytest.raises(PlaitError, match="not built yet"):
        app.context.resolve(HttpClient)
    with pytest.raises(PlaitError, match="PaymentService is not registered"):
        app.context.resolve(PaymentService)


class PingConsumerWithStep(IWorkflowConsumer[Order, Done]):
    def __init__(self, http: HttpClient) -> None:
        self.http = http
        self.steps = {}

    async def on_complete(self, ctx: WorkflowContext[Order]) -> Done:
        return Done(ok=isinstance(self.http, HttpClient))


async def test_consumers_get_their_dependencies_and_run_on_the_provider() -> None:
    app = Plait.create().provider(HttpClient).workflow(Ping).consumer(PingConsumerWithStep, [HttpClient])
    await app.start()
    try:
        handle = await app.context.workflows.execute(Ping, {"order_id": "o-1"})
        assert await handle.result(timeout=5) == Done(ok=True)
    finally:
        await app.stop()


async def test_an_object_provider_holding_the_class_itself_is_not_a_way_to_build_it() -> None:
    class WithObject(containers.DeclarativeContainer):
        settings = di.Singleton(Settings, url="sqlite://")
        clock_class = di.Object(Clock)
        clock = di.Singleton(Clock)

    app = Plait.create(WithObject()).provider(Repository, [Settings, Clock])
    await app.start()
    try:
        assert isinstance(app.context.resolve(Repository).clock, Clock)
    finally:
        await app.stop()
