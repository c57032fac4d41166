"""Controllers through an ASGI client: routes, parameters, bodies, JSON responses, errors and correlation ids."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from plait.core import (
    Application,
    FlowConflictError,
    FlowStateError,
    IWorkflowConsumer,
    Plait,
    PlaitError,
    ProviderUnavailableError,
    RequestContext,
    RouteBuilder,
    SignalError,
    StepContext,
    StepHandler,
    Workflow,
    WorkflowContext,
    WorkflowExecutor,
    WorkflowNotRegisteredError,
)
from plait.core.engine import FlowState
from plait.providers.inprocess import InProcessWorkflowProvider
from plait.testing import run_app


class Item(BaseModel):
    sku: str
    quantity: int = Field(gt=0)


class Order(BaseModel):
    order_id: str
    items: list[Item] = Field(min_length=1)


class Seen(BaseModel):
    correlation_id: str
    meta: dict[str, str]


class Done(BaseModel):
    correlation_id: str


Place = Workflow.define(name="place", data=Order, result=Done).steps(lambda s: s.sequential(s.step("record", Seen)))


class PlaceWorkflow(IWorkflowConsumer[Order, Done]):
    def __init__(self) -> None:
        self.steps = {"record": StepHandler(execute=self.record)}

    async def record(self, ctx: StepContext[Order]) -> Seen:
        return Seen(correlation_id=ctx.correlation_id, meta=dict(ctx.meta))

    async def on_complete(self, ctx: WorkflowContext[Order]) -> Done:
        return Done(correlation_id=ctx.correlation_id)


class Checkout:
    """A service that starts flows with an injected executor, outside of any RequestContext."""

    def __init__(self, workflows: WorkflowExecutor) -> None:
        self.workflows = workflows

    async def place(self, order: Order) -> str:
        return (await self.workflows.execute(Place, order)).id


class OrderController:
    def __init__(self, checkout: Checkout) -> None:
        self.checkout = checkout

    def configure(self, r: RouteBuilder) -> None:
        r.post("/", self.place)
        r.post("/via-service", self.place_via_service)
        r.get("/{flow_id}", self.status)
        r.get("/{flow_id}/seen", self.seen)
        r.post("/raw", self.place_raw)

    async def place(self, ctx: RequestContext) -> Response:
        handle = await ctx.workflows.execute(Place, await ctx.body(Order))
        return ctx.json({"flow_id": handle.id, "correlation_id": ctx.correlation_id}, status=202)

    async def place_via_service(self, ctx: RequestContext) -> Response:
        return ctx.json({"flow_id": await self.checkout.place(await ctx.body(Order))}, status=202)

    async def place_raw(self, ctx: RequestContext) -> Response:
        # Data goes to execute() unchecked: the workflow's own validation answers.
        handle = await ctx.workflows.execute(Place, await ctx.request.json())
        return ctx.json({"flow_id": handle.id}, status=202)

    async def status(self, ctx: RequestContext) -> Response:
        return ctx.json({"status": await ctx.workflows.get_status(ctx.params["flow_id"])})

    async def seen(self, ctx: RequestContext) -> Response:
        handle = await ctx.workflows.get_handle(ctx.params["flow_id"])
        result = await handle.result(timeout=5)
        return ctx.json(result)


class Stamp(BaseModel):
    at: datetime


class EchoController:
    def configure(self, r: RouteBuilder) -> None:
        r.get("/items/{n:int}", self.item)
        r.put("/items/{n:int}", self.replace)
        r.patch("/items/{n:int}", self.update)
        r.delete("/items/{n:int}", self.remove)
        r.get("/search", self.search)
        r.get("/stamp", self.stamp)
        r.get("/text", self.text)
        r.get("/not-a-response", self.not_a_response)

    async def item(self, ctx: RequestContext) -> Response:
        return ctx.json({"n": ctx.params["n"], "doubled": ctx.params["n"] * 2})

    async def replace(self, ctx: RequestContext) -> Response:
        return ctx.json({"replaced": ctx.params["n"], "with": await ctx.body(Item)})

    async def update(self, ctx: RequestContext) -> Response:
        return ctx.json({"updated": ctx.params["n"]})

    async def remove(self, ctx: RequestContext) -> Response:
        return ctx.json(None)

    async def search(self, ctx: RequestContext) -> Response:
        return ctx.json({"q": ctx.query.get("q"), "tags": ctx.query.getlist("tag")})

    async def stamp(self, ctx: RequestContext) -> Response:
        stamp = Stamp(at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
        return ctx.json({"stamps": [stamp]}, headers={"x-kind": "stamp"})

    async def text(self, ctx: RequestContext) -> Response:
        return PlainTextResponse("plain")

    async def not_a_response(self, ctx: RequestContext) -> Response:
        return {"oops": True}  # type: ignore[return-value]


@pytest.fixture
async def app() -> AsyncIterator[Application]:
    application = (
        Plait.create()
        .provider(Checkout, [WorkflowExecutor])
        .workflow(Place)
        .consumer(PlaceWorkflow)
        .controller("/orders", OrderController, [Checkout])
        .controller("/echo/", EchoController)
    )
    await application.start()
    yield application
    await application.stop()


@pytest.fixture
async def client(app: Application) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.asgi()), base_url="http://test") as client:
        yield client


ORDER = {"order_id": "o-1", "items": [{"sku": "kb-1", "quantity": 2}]}


async def test_routes_join_the_controller_path_and_convert_parameters(client: httpx.AsyncClient) -> None:
    assert (await client.get("/echo/items/21")).json() == {"n": 21, "doubled": 42}
    replaced = await client.put("/echo/items/3", json={"sku": "ms-1", "quantity": 1})
    assert replaced.json() == {"replaced": 3, "with": {"sku": "ms-1", "quantity": 1}}
    assert (await client.patch("/echo/items/4")).json() == {"updated": 4}
    deleted = await client.delete("/echo/items/5")
    assert (deleted.status_code, deleted.json()) == (200, None)
    assert (await client.get("/echo/items/not-a-number")).status_code == 404
    assert (await client.post("/echo/items/1")).status_code == 405
    assert (await client.head("/echo/items/1")).status_code == 200


async def test_query_parameters(client: httpx.AsyncClient) -> None:
    response = await client.get("/echo/search", params=[("q", "keyboard"), ("tag", "a"), ("tag", "b")])
    assert response.json() == {"q": "keyboard", "tags": ["a", "b"]}


async def test_json_serializes_models_and_dates_and_keeps_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/echo/stamp")
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-kind"] == "stamp"
    assert response.json() == {"stamps": [{"at": "2026-01-02T03:04:05Z"}]}
    assert (await client.get("/echo/text")).text == "plain"


async def test_a_handler_that_returns_no_response_is_a_server_error(client: httpx.AsyncClient) -> None:
    with pytest.raises(TypeError, match=r"Handler of GET /echo/not-a-response returned dict, not a Response"):
        await client.get("/echo/not-a-response")


async def test_an_invalid_body_is_a_422_that_names_each_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/orders", json={"items": [{"sku": "kb-1", "quantity": 0}, {"quantity": 1}]})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_body"
    assert {f["field"] for f in body["fields"]} == {"order_id", "items.0.quantity", "items.1.sku"}
    assert {f["type"] for f in body["fields"]} == {"missing", "greater_than"}
    assert body["message"] == "The request body does not match Order: invalid order_id, items.0.quantity, items.1.sku"


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2"])
async def test_a_body_that_is_not_json_is_a_422(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post("/orders", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_json"
    assert response.json()["message"].startswith("The request body is not valid JSON: ")


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_a_body_without_a_json_content_type_is_a_415(client: httpx.AsyncClient, content_type: str | None) -> None:
    # A cross-site form or a "simple" fetch can send text/plain; only JSON content types are read.
    headers = {} if content_type is None else {"content-type": content_type}
    response = await client.post("/orders", content=json.dumps(ORDER).encode(), headers=headers)
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"
    assert "Content-Type: application/json" in response.json()["message"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/merge-patch+json"])
async def test_json_content_types_with_parameters_or_suffixes_are_read(
    client: httpx.AsyncClient, content_type: str
) -> None:
    response = await client.post("/orders", content=json.dumps(ORDER).encode(), headers={"content-type": content_type})
    assert response.status_code == 202


async def test_a_body_over_the_limit_is_a_413_even_without_a_content_length() -> None:
    application = Plait.create(max_body_size=100).controller("/echo", EchoController)
    async with run_app(application) as client:
        small = await client.put("/echo/items/1", json={"sku": "a", "quantity": 1})
        assert small.status_code == 200

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"sku": "' + b"x" * 80
            yield b"x" * 80 + b'", "quantity": 1}'

        streamed = await client.put("/echo/items/1", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert streamed.json() == {
            "error": "body_too_large",
            "message": "The request body is larger than the limit of 100 bytes",
        }
        declared = await client.put("/echo/items/1", json={"sku": "x" * 200, "quantity": 1})
        assert declared.status_code == 413


async def test_the_default_body_limit_is_one_mebibyte(client: httpx.AsyncClient) -> None:
    big = {"sku": "x" * (1024 * 1024), "quantity": 1}
    assert (await client.put("/echo/items/1", json=big)).status_code == 413
    assert (await client.put("/echo/items/1", json={"sku": "x" * 1000, "quantity": 1})).status_code == 200


def test_max_body_size_must_be_a_positive_int() -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(PlaitError, match="max_body_size"):
            Plait.create(max_body_size=bad)  # type: ignore[arg-type]


async def test_a_body_of_the_wrong_shape_names_the_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/orders", json=[1, 2])
    assert response.status_code == 422
    assert response.json()["fields"][0]["field"] == "(body)"


async def test_invalid_workflow_data_is_a_422_and_unknown_flows_a_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/orders/raw", json={"order_id": "o-9", "items": []})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_workflow_data"
    assert [f["field"] for f in response.json()["fields"]] == ["items"]
    response = await client.get("/orders/flow-nope")
    assert response.status_code == 404
    assert response.json() == {
        "error": "flow_not_found",
        "message": "Flow 'flow-nope' not found",
        "flow_id": "flow-nope",
    }


async def test_the_correlation_id_header_reaches_every_step_and_is_echoed(
    app: Application, client: httpx.AsyncClient
) -> None:
    response = await client.post("/orders", json=ORDER, headers={"x-correlation-id": "req-123"})
    assert response.status_code == 202
    assert response.headers["x-correlation-id"] == "req-123"
    assert response.json()["correlation_id"] == "req-123"
    seen = (await client.get(f"/orders/{response.json()['flow_id']}/seen")).json()
    assert seen == {"correlation_id": "req-123"}
    state = await flow_state(app, response.json()["flow_id"])
    assert state.results["record"] == {"correlation_id": "req-123", "meta": {"correlation_id": "req-123"}}


async def test_x_request_id_is_used_when_there_is_no_correlation_id(
    app: Application, client: httpx.AsyncClient
) -> None:
    response = await client.post("/orders", json=ORDER, headers={"x-request-id": "rid-7"})
    assert response.headers["x-correlation-id"] == "rid-7"
    assert (await flow_state(app, response.json()["flow_id"])).meta == {"correlation_id": "rid-7"}


async def test_without_a_header_a_new_id_is_made_echoed_and_given_to_the_flow(
    app: Application, client: httpx.AsyncClient
) -> None:
    response = await client.post("/orders", json=ORDER)
    generated = response.headers["x-correlation-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert response.json()["correlation_id"] == generated
    assert (await flow_state(app, response.json()["flow_id"])).meta == {"correlation_id": generated}
    again = await client.post("/orders", json=ORDER)
    assert again.headers["x-correlation-id"] != generated


async def test_an_unusable_header_is_replaced_by_a_new_id(client: httpx.AsyncClient) -> None:
    response = await client.post("/orders", json=ORDER, headers={"x-correlation-id": "x" * 500})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-correlation-id"])


async def test_every_response_carries_the_correlation_id(client: httpx.AsyncClient) -> None:
    assert (await client.get("/nowhere", headers={"x-correlation-id": "c-404"})).headers["x-correlation-id"] == "c-404"
    response = await client.post("/orders", content=b"{", headers={"x-correlation-id": "c-422"})
    assert response.headers["x-correlation-id"] == "c-422"


async def test_a_service_injected_with_the_executor_tags_flows_with_the_current_request(
    app: Application,
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/orders/via-service", json=ORDER, headers={"x-correlation-id": "svc-1"})
    assert (await flow_state(app, response.json()["flow_id"])).meta == {"correlation_id": "svc-1"}


async def test_outside_requests_flows_have_no_correlation_id_but_their_own(app: Application) -> None:
    handle = await app.context.workflows.execute(Place, ORDER)
    assert await handle.result(timeout=5) == Done(correlation_id=handle.id)
    tagged = await app.context.workflows.execute(Place, ORDER, meta={"correlation_id": "job-5", "trace": "t"})
    assert (await tagged.result(timeout=5)).correlation_id == "job-5"


async def test_a_correlation_id_in_meta_wins_over_the_requests(app: Application) -> None:
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""})
    ctx = RequestContext(request, app.context.workflows, "req-1")
    assert ctx.correlation_id == "req-1"
    bound = app._executor.bind("req-1")
    handle = await bound.execute(Place, ORDER, meta={"correlation_id": "explicit"})
    assert (await handle.result(timeout=5)).correlation_id == "explicit"
    handle = await bound.execute(Place, ORDER, meta={"trace": "t-1"})
    state = provider(app).get_state(handle.id)
    assert state.meta == {"correlation_id": "req-1", "trace": "t-1"}


async def test_one_execution_path_request_context_and_provider_see_the_same_flows(
    app: Application, client: httpx.AsyncClient
) -> None:
    response = await client.post("/orders", json=ORDER)
    flow_id = response.json()["flow_id"]
    handle = await app.context.workflows.get_handle(flow_id)
    await handle.result(timeout=5)
    assert await app.context.workflows.get_status(flow_id) == "completed"
    assert await provider(app).get_status(flow_id) == "completed"
    assert (await client.get(f"/orders/{flow_id}")).json() == {"status": "completed"}


async def test_route_builder_paths_and_handler_checks() -> None:
    async def handler(ctx: RequestContext) -> Response:
        return ctx.json({})

    class AsyncCallable:
        async def __call__(self, ctx: RequestContext) -> Response:
            return ctx.json({})

    r = RouteBuilder("/orders/").get("", handler).post("/", AsyncCallable()).delete("{order_id}/", handler)
    assert [(route.method, route.path) for route in r.routes] == [
        ("GET", "/orders"),
        ("POST", "/orders"),
        ("DELETE", "/orders/{order_id}"),
    ]
    assert [route.path for route in RouteBuilder("").get("/", handler).routes] == ["/"]
    with pytest.raises(PlaitError, match="Route GET /orders is declared twice"):
        r.get("/", handler)
    with pytest.raises(PlaitError, match=r"Route DELETE /orders/\{id\} is declared twice \(as /orders/\{order_id\}\)"):
        r.delete("/{id}", handler)

    def not_async(ctx: RequestContext) -> Response:
        return ctx.json({})

    with pytest.raises(PlaitError, match="Handler of GET /orders/sync must be an async function"):
        r.get("/sync", not_async)  # type: ignore[arg-type]


class OtherOrderController:
    def configure(self, r: RouteBuilder) -> None:
        r.get("/{order_id}", self.show)

    async def show(self, ctx: RequestContext) -> Response:
        return ctx.json({})  # pragma: no cover


async def test_two_controllers_declaring_one_route_fail_the_start() -> None:
    app = (
        Plait.create()
        .provider(Checkout, [WorkflowExecutor])
        .controller("/orders", OrderController, [Checkout])
        .controller("/orders", OtherOrderController)
    )
    message = r"Route GET /orders/\{flow_id\} of OrderController and GET /orders/\{order_id\} of OtherOrderController"
    with pytest.raises(PlaitError, match=message):
        await app.start()


def provider(app: Application) -> InProcessWorkflowProvider:
    found = app.context.provider
    assert isinstance(found, InProcessWorkflowProvider)
    return found


async def flow_state(app: Application, flow_id: str) -> FlowState:
    """The finished flow's recorded state, as the provider keeps it."""
    await (await app.context.workflows.get_handle(flow_id)).result(timeout=5)
    return provider(app).get_state(flow_id)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (FlowStateError("flow-1", "running", "only a completed flow can be compensated"), 409, "flow_state"),
        (SignalError("Workflow 'x' waits for no signal 'y'"), 409, "signal_refused"),
        (FlowConflictError("flow-1", "with different data"), 409, "flow_conflict"),
        (WorkflowNotRegisteredError("x"), 404, "workflow_not_registered"),
        (ProviderUnavailableError("Redis is down"), 503, "unavailable"),
    ],
)
async def test_plait_errors_a_handler_lets_through_are_json_with_their_status(
    error: Exception, status: int, code: str
) -> None:
    class Raising:
        def configure(self, r: RouteBuilder) -> None:
            r.get("/", self.fail)

        async def fail(self, ctx: RequestContext) -> Response:
            raise error

    async with run_app(Plait.create().controller("/boom", Raising)) as client:
        response = await client.get("/boom")
    assert response.status_code == status
    assert response.json()["error"] == code
    assert response.json()["message"] == str(error)
