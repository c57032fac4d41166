"""The workflows API's test application (imported by the other ``test_api_*`` modules), and the tests of what it
describes: workflows and their graphs, permissions, the OpenAPI document, the inspector's files, and Mermaid."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, Field
from starlette.requests import Request

from plait.core import (
    Application,
    FlowEvent,
    FlowInfo,
    IWorkflowConsumer,
    NonRetryableError,
    Plait,
    StepContext,
    StepHandler,
    Workflow,
    WorkflowContext,
)
from plait.core.api import ACTIONS, Action, WorkflowsApi
from plait.providers.inprocess import InProcessWorkflowProvider

# --- the workflows ---------------------------------------------------------------------------------------------


class Order(BaseModel):
    """An order to approve."""

    amount: int = Field(gt=0)
    fail_at: str | None = None


class Decision(BaseModel):
    """A manager's decision."""

    approved: bool
    by: str = "mo"


class Out(BaseModel):
    n: int


class Done(BaseModel):
    total: int


class Rows(BaseModel):
    rows: list[int]


class Child(BaseModel):
    rows: int


Approve = Workflow.define(name="approve", data=Order, result=Done).steps(
    lambda s: (
        s.sequential(s.step("reserve", Out))
        .sequential(s.wait_for("decision", Decision, timeout=60))
        .dag(s.step("charge", Out), s.step("notify", Out, after=("charge",), when=lambda ctx: ctx.data.amount > 10))
    )
)
"""reserve -> wait for 'decision' -> dag(charge -> notify if amount > 10)."""

Quick = Workflow.define(name="quick", data=Order, result=Done).steps(
    lambda s: s.sequential(s.step("reserve", Out)).sequential(s.step("charge", Out))
)
"""reserve -> charge, no waiting: ends as soon as it starts."""

Export = Workflow.define(name="export", data=Rows, result=Done).steps(
    lambda s: (
        s.sequential(s.sleep("cool_off", seconds=3600))
        .parallel(s.for_each("row", Out, items=lambda ctx: ctx.data.rows, concurrency=2))
        .sequential(
            s.sub_workflow("child", Quick, data=lambda ctx: Order(amount=1)), when=lambda ctx: bool(ctx.data.rows)
        )
    )
)
"""Every other kind of node, for the graph and the chart (never run)."""


class Ledger:
    """What the consumers did, and a switch that breaks rollbacks."""

    def __init__(self) -> None:
        self.done: list[str] = []
        self.undone: list[str] = []
        self.rollbacks_broken = False


class ApproveWorkflow(IWorkflowConsumer[Order, Done]):
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.steps = {
            "reserve": StepHandler(execute=self.work, rollback=self.undo),
            "charge": StepHandler(execute=self.work, rollback=self.undo),
            "notify": StepHandler(execute=self.work),
        }

    async def work(self, ctx: StepContext[Order]) -> Out:
        if ctx.data.fail_at == ctx.step_name:
            raise NonRetryableError(f"{ctx.step_name} broke")
        self.ledger.done.append(ctx.step_name)
        return Out(n=len(self.ledger.done))

    async def undo(self, ctx: StepContext[Order]) -> None:
        if self.ledger.rollbacks_broken:
            raise RuntimeError(f"cannot undo {ctx.step_name}")
        self.ledger.undone.append(ctx.step_name)

    async def on_complete(self, ctx: WorkflowContext[Order]) -> Done:
        return Done(total=ctx.data.amount)


class QuickWorkflow(ApproveWorkflow):
    def __init__(self, ledger: Ledger) -> None:
        super().__init__(ledger)
        self.steps = {key: handler for key, handler in self.steps.items() if key != "notify"}


Authorizer = Callable[[Request, Action, str], bool | Awaitable[bool]]


def build_app(
    authorize: Authorizer | None = None,
    *,
    provider: InProcessWorkflowProvider | None = None,
    max_body_size: int = 1024 * 1024,
    prefix: str = "/workflows",
) -> tuple[Application, WorkflowsApi]:
    """The test application: approve and quick run here, export is only known (emitted elsewhere)."""
    app = Plait.create(max_body_size=max_body_size)
    if provider is not None:
        app.workflow_provider(provider)
    app.provider(Ledger)
    app.workflow(Approve).consumer(ApproveWorkflow, [Ledger])
    app.workflow(Quick).consumer(QuickWorkflow, [Ledger])
    app.workflow(Export)
    api = app.workflows_api(prefix, authorize=authorize)
    return app, api


def allow_all(request: Request, action: Action, workflow: str) -> bool:
    return True


Client = httpx.AsyncClient
MakeClient = Callable[..., Awaitable[tuple[Application, httpx.AsyncClient]]]


@contextlib.asynccontextmanager
async def clients() -> AsyncIterator[MakeClient]:
    """Yields ``make(...)``, which starts a test application (``build_app``'s arguments) and returns it with a
    client; every one is stopped at the end. Each test module wraps it in its fixtures."""
    apps: list[Application] = []
    clients: list[httpx.AsyncClient] = []

    async def make(*args: Any, **kwargs: Any) -> tuple[Application, httpx.AsyncClient]:
        app, _ = build_app(*args, **kwargs)
        await app.start()
        apps.append(app)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app.asgi()), base_url="http://plait.test")
        clients.append(client)
        return app, client

    yield make
    for client in clients:
        await client.aclose()
    for app in apps:
        await app.stop()


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    async with clients() as make:
        yield make


@pytest.fixture
async def client(make_client: MakeClient) -> httpx.AsyncClient:
    """A client of a started application whose API allows everything."""
    return (await make_client(allow_all))[1]


JSON = {"content-type": "application/json"}


async def until(app: Application, flow_id: str, ready: Callable[[FlowInfo], bool]) -> FlowInfo:
    """Waits (up to 10 s) until the flow's ``describe()`` satisfies ``ready``."""
    async with asyncio.timeout(10):
        while not ready(info := await app.context.workflows.describe(flow_id)):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    return info


async def waiting_flow(client: httpx.AsyncClient, app: Application, **data: Any) -> str:
    """Starts an approve flow and returns its id once it waits for its decision."""
    started = await client.post("/workflows/approve", json={"amount": 50, **data})
    assert started.status_code == 202, started.text
    flow_id: str = started.json()["flow_id"]
    await until(app, flow_id, lambda info: info.step("decision").status == "waiting")
    return flow_id


async def ended_flow(client: httpx.AsyncClient, app: Application, workflow: str = "quick", **data: Any) -> str:
    """Starts a flow of ``workflow`` (quick: no waiting) and returns its id once it has ended."""
    started = await client.post(f"/workflows/{workflow}", json={"amount": 5, **data})
    assert started.status_code == 202, started.text
    flow_id: str = started.json()["flow_id"]
    await until(app, flow_id, lambda info: info.status.is_terminal)
    return flow_id


def event_types(events: list[FlowEvent]) -> list[str]:
    return [event.type for event in events]


# --- tests: what the API describes -------------------------------------------------------------------------------


def test_the_api_package_exports() -> None:
    import plait.core.api as api

    assert sorted(api.__all__) == ["ACTIONS", "Action", "Authorize", "WorkflowsApi"]
    assert ACTIONS == ("start", "signal", "cancel", "compensate", "retry", "retry_compensation")


async def test_workflows_lists_each_definition_with_its_graph(client: httpx.AsyncClient) -> None:
    response = await client.get("/workflows/workflows")
    assert response.status_code == 200
    workflows = {w["name"]: w for w in response.json()["workflows"]}
    assert list(workflows) == ["approve", "quick", "export"]
    approve = workflows["approve"]
    assert (approve["data"], approve["result"], approve["registered"]) == ("Order", "Done", True)
    assert approve["signals"]["decision"]["properties"]["approved"] == {"title": "Approved", "type": "boolean"}
    assert [g["kind"] for g in approve["groups"]] == ["sequential", "sequential", "dag"]
    reserve, decision = approve["groups"][0]["nodes"][0], approve["groups"][1]["nodes"][0]
    assert reserve == {
        "name": "reserve",
        "kind": "step",
        "output": "Out",
        "conditional": False,
        "after": [],
        "rollback": True,
    }
    assert decision["kind"] == "wait_for" and decision["timeout"] == 60 and decision["rollback"] is False
    charge, notify = approve["groups"][2]["nodes"]
    assert (charge["rollback"], notify["rollback"]) == (True, False)  # from the consumer this app runs
    assert (notify["after"], notify["conditional"]) == (["charge"], True)
    assert approve["mermaid"] == Approve.to_mermaid(rollbacks={"reserve", "charge"})
    export = workflows["export"]
    nodes = [n for g in export["groups"] for n in g["nodes"]]
    assert [(n["kind"], n["rollback"]) for n in nodes] == [("sleep", False), ("for_each", None), ("sub_workflow", None)]
    assert (nodes[0]["seconds"], nodes[1]["concurrency"], nodes[2]["workflow"]) == (3600, 2, "quick")
    assert export["groups"][2]["conditional"] is True


async def test_permissions_ask_authorize_for_each_action_of_each_workflow(
    make_client: MakeClient,
) -> None:
    asked: list[tuple[Action, str]] = []

    async def only_quick_starts(request: Request, action: Action, workflow: str) -> bool:
        asked.append((action, workflow))
        return workflow == "quick" and action == "start"

    _, client = await make_client(only_quick_starts)
    body = (await client.get("/workflows/permissions")).json()
    assert body == {"read_only": False, "workflows": {"approve": [], "quick": ["start"], "export": []}}
    assert len(asked) == 3 * len(ACTIONS)
    _, read_only = await make_client()
    body = (await read_only.get("/workflows/permissions")).json()
    assert body == {"read_only": True, "workflows": {"approve": [], "quick": [], "export": []}}


async def test_openapi_has_every_workflows_models_and_every_route(client: httpx.AsyncClient) -> None:
    response = await client.get("/workflows/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"] == "3.1.0"
    schemas = doc["components"]["schemas"]
    for name in ("Order", "Done", "Decision", "Rows", "FlowInfo", "FlowPage", "Problem", "StepFailed"):
        assert name in schemas, name
    assert schemas["Order"]["properties"]["amount"] == {"exclusiveMinimum": 0, "title": "Amount", "type": "integer"}
    paths = doc["paths"]
    assert set(paths) >= {
        "/workflows/approve",
        "/workflows/quick",
        "/workflows/export",
        "/workflows/flows",
        "/workflows/flows/{flow_id}",
        "/workflows/flows/{flow_id}/result",
        "/workflows/flows/{flow_id}/events",
        "/workflows/flows/{flow_id}/signals/decision",
        "/workflows/flows/{flow_id}/cancel",
        "/workflows/flows/{flow_id}/compensate",
        "/workflows/flows/{flow_id}/retry",
        "/workflows/flows/{flow_id}/retry-compensation",
        "/workflows/workflows",
        "/workflows/openapi.json",
        "/workflows/permissions",
        "/workflows/ui",
    }
    start = paths["/workflows/approve"]["post"]
    assert start["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Order"}
    assert start["x-plait-result"] == {"$ref": "#/components/schemas/Done"}
    assert {"202", "403", "409", "413", "415", "422"} <= set(start["responses"])
    signal = paths["/workflows/flows/{flow_id}/signals/decision"]["post"]
    assert signal["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Decision"}
    # Every reference resolves.
    for ref in _refs(doc):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


async def test_the_inspector_page_and_its_files(client: httpx.AsyncClient) -> None:
    page = await client.get("/workflows/ui")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert '<meta name="plait-api" content="/workflows">' in page.text
    assert 'src="/workflows/ui/inspector.js"' in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from another origin
    script = await client.get("/workflows/ui/inspector.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "EventSource" in script.text
    assert (await client.get("/workflows/ui/inspector.css")).headers["content-type"].startswith("text/css")
    assert (await client.get("/workflows/ui/favicon.svg")).headers["content-type"] == "image/svg+xml"
    missing = await client.get("/workflows/ui/secrets.txt")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    root = await client.get("/workflows/")
    assert (root.status_code, root.headers["location"]) == (307, "/workflows/ui")


async def test_without_ui_there_is_no_page() -> None:
    app = Plait.create().workflow(Quick).consumer(QuickWorkflow, [Ledger]).provider(Ledger)
    app.workflows_api("/api", ui=False)
    await app.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.asgi()), base_url="http://t") as client:
            page = await client.get("/api/ui")
            assert page.status_code == 405  # only POST /api/{workflow} matches it
            assert page.headers["content-type"] == "application/json"
            assert (await client.get("/api/workflows")).status_code == 200
    finally:
        await app.stop()


def test_to_mermaid_draws_kinds_edges_conditions_and_the_rollback_path() -> None:
    chart = Approve.to_mermaid()
    assert chart.splitlines()[0] == "flowchart TD"
    assert '    subgraph g2["dag"]' in chart
    assert '        n0["reserve"]' in chart
    assert '        n1{{"decision<br/>wait for signal, timeout 60s"}}' in chart
    assert '        n3["notify ?"]' in chart
    assert "    g0 --> g1\n    g1 --> g2" in chart
    assert "    n2 --> n3" in chart  # notify after charge
    assert "    n3 -.->|undo| n2\n    n2 -.->|undo| n0" in chart  # every step may have a rollback
    assert "    class n3 conditional" in chart
    chart = Approve.to_mermaid(rollbacks={"reserve", "charge"})
    assert "    n2 -.->|undo| n0" in chart and "n3 -.->" not in chart
    export = Export.to_mermaid()
    assert '        n0(["cool_off<br/>sleep 3600s"])' in export
    assert '        n1[["row<br/>for each item"]]' in export
    assert '        n2[/"child<br/>sub-workflow quick"/]' in export
    assert '    subgraph g2["sequential ?"]' in export and "    class n2 conditional" in export
    assert "    n2 -.->|undo| n1" in export


def test_a_prefix_must_be_below_the_root_and_served_once() -> None:
    app = Plait.create()
    for bad in ("", "/", "workflows"):
        with pytest.raises(Exception, match="prefix"):
            app.workflows_api(bad)
    app.workflows_api("/ops/")
    with pytest.raises(Exception, match="served at '/ops' already"):
        app.workflows_api("/ops")


async def test_the_openapi_document_is_valid_openapi_3_1(client: httpx.AsyncClient) -> None:
    from openapi_spec_validator import validate

    validate((await client.get("/workflows/openapi.json")).json())
