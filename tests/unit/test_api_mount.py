"""The workflows API mounted into a Starlette application of its own, with Plait started by that app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message

from plait.core import Plait
from tests.unit.test_api_app import allow_all, build_app


@contextlib.asynccontextmanager
async def served(app: ASGIApp, *, lifespan: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """Runs ``app``'s lifespan the way a server does (ASGI lifespan messages), and yields a client of it."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()

    async def send(message: Message) -> None:
        await outbox.put(message)

    async def run() -> None:
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, send)

    task = asyncio.create_task(run())
    try:
        if lifespan:
            await inbox.put({"type": "lifespan.startup"})
            assert (await outbox.get())["type"] == "lifespan.startup.complete"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://host") as client:
            yield client
        if lifespan:
            await inbox.put({"type": "lifespan.shutdown"})
            assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def host_app() -> tuple[Starlette, list[str]]:
    """A host with a route of its own, the API at /ops/api (not the prefix it was made with), and a lifespan of
    its own around Plait's."""
    plait, api = build_app(allow_all, prefix="/workflows")
    calls: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        calls.append("host up")
        async with plait.lifespan(app):
            calls.append(f"plait started: {plait.started}")
            yield
        calls.append(f"plait stopped: {not plait.started}")

    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({"hello": "from the host"})

    return Starlette(routes=[Route("/hello", hello), Mount("/ops/api", app=api)], lifespan=lifespan), calls


async def test_the_api_serves_under_the_hosts_mount_with_plait_run_by_the_hosts_lifespan() -> None:
    host, calls = host_app()
    async with served(host) as client:
        assert (await client.get("/hello")).json() == {"hello": "from the host"}
        started = await client.post("/ops/api/quick", json={"amount": 3})
        assert started.status_code == 202
        flow_id = started.json()["flow_id"]
        assert started.headers["location"] == f"/ops/api/flows/{flow_id}"  # where it is mounted, not its prefix
        assert "x-correlation-id" in started.headers  # Plait's middleware comes with the API
        result = await client.get(f"/ops/api/flows/{flow_id}/result?wait=5")
        assert result.json()["result"] == {"total": 3}
        events = await client.get(f"/ops/api/flows/{flow_id}/events")
        assert "flow_completed" in events.text
        paths = (await client.get("/ops/api/openapi.json")).json()["paths"]
        assert "/ops/api/flows/{flow_id}/signals/decision" in paths
        page = await client.get("/ops/api/ui")
        assert '<meta name="plait-api" content="/ops/api">' in page.text
        assert (await client.get("/ops/api/ui/inspector.js")).status_code == 200
        assert (await client.get("/ops/api/flows/flow-nope")).json()["error"] == "flow_not_found"
    assert calls == ["host up", "plait started: True", "plait stopped: True"]


async def test_without_the_lifespan_the_api_answers_503() -> None:
    host, _ = host_app()
    async with served(host, lifespan=False) as client:
        response = await client.get("/ops/api/flows")
        assert (response.status_code, response.json()["error"]) == (503, "not_started")
        assert (await client.get("/hello")).status_code == 200


async def test_the_api_route_mounts_it_at_its_prefix() -> None:
    plait, api = build_app(allow_all, prefix="/flows-api")
    assert repr(api) == "WorkflowsApi(prefix='/flows-api')"
    async with served(Starlette(routes=[api.route()], lifespan=plait.lifespan)) as client:
        assert (await client.get("/flows-api/flows")).json() == {"items": [], "next_cursor": None}


async def test_an_api_added_after_asgi_is_served_too() -> None:
    app = Plait.create()
    asgi = app.asgi()
    app.workflows_api("/late")
    async with served(asgi) as client:
        assert (await client.get("/late/workflows")).json() == {"workflows": []}
