"""plait.testing's application helpers: run_app and the app_client fixture start, serve and stop an app."""

from __future__ import annotations

import pytest
from pydantic import BaseModel
from starlette.responses import Response

from plait.core import (
    Application,
    IWorkflowConsumer,
    Plait,
    PlaitError,
    RequestContext,
    RouteBuilder,
    StepContext,
    StepHandler,
    Workflow,
    WorkflowContext,
)
from plait.testing import AppClient, run_app


class Greeting(BaseModel):
    name: str


class Said(BaseModel):
    text: str


Greet = Workflow.define(name="greet", data=Greeting, result=Said).steps(lambda s: s.sequential(s.step("say", Said)))


class Greeter:
    def greet(self, name: str) -> str:
        return f"hello {name}"


class GreetWorkflow(IWorkflowConsumer[Greeting, Said]):
    def __init__(self, greeter: Greeter) -> None:
        self.greeter = greeter
        self.steps = {"say": StepHandler(execute=self.say)}

    async def say(self, ctx: StepContext[Greeting]) -> Said:
        return Said(text=self.greeter.greet(ctx.data.name))

    async def on_complete(self, ctx: WorkflowContext[Greeting]) -> Said:
        return ctx.result("say", Said)


class GreetController:
    def configure(self, r: RouteBuilder) -> None:
        r.post("", self.greet)

    async def greet(self, ctx: RequestContext) -> Response:
        handle = await ctx.workflows.execute(Greet, await ctx.body(Greeting))
        return ctx.json((await handle.result(timeout=5)).model_dump())


class Unregistered:
    """Registered nowhere: an app whose controller needs it must fail at start-up."""


class NeedyController(GreetController):
    def __init__(self, missing: Unregistered) -> None:
        self.missing = missing


def build_app() -> Application:
    return (
        Plait.create()
        .provider(Greeter)
        .workflow(Greet)
        .consumer(GreetWorkflow, [Greeter])
        .controller("/greet", GreetController)
    )


async def test_run_app_serves_requests_and_stops_the_app() -> None:
    app = build_app()
    async with run_app(app) as client:
        response = await client.post("/greet", json={"name": "ada"})
        assert response.status_code == 200, response.text
        assert response.json() == {"text": "hello ada"}
        assert app.started
    assert not app.started


async def test_run_app_raises_start_up_errors() -> None:
    app = Plait.create().controller("/greet", NeedyController, [Unregistered])
    with pytest.raises(PlaitError, match="Unregistered"):
        async with run_app(app):
            pass  # pragma: no cover - start-up fails first


async def test_the_app_client_fixture_starts_the_app_for_the_test(app_client: AppClient) -> None:
    app = build_app()
    client = await app_client(app)
    assert app.started
    response = await client.post("/greet", json={"name": "grace"})
    assert response.json() == {"text": "hello grace"}
    bad = await client.post("/greet", json={})
    assert bad.status_code == 422
    assert "name" in bad.text
