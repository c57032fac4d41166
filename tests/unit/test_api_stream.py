"""A flow's events as Server-Sent Events: replayed, then live, until the flow's last; resumed after a reconnect;
kept alive when quiet; and closed as soon as the client goes away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.types import Message

from plait.core import FlowEvent, FlowStatus
from plait.core.api.stream import EventStream, parse_after, sse_message
from plait.providers.inprocess import InProcessWorkflowProvider
from tests.unit.test_api_app import MakeClient, allow_all, clients, ended_flow, until, waiting_flow


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    async with clients() as make:
        yield make


def parse_sse(text: str) -> list[dict[str, Any]]:
    """The messages of an SSE body: each a dict of its fields (``data`` parsed as JSON)."""
    messages = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(": ")
            fields[name] = json.loads(value) if name == "data" else value
        if "data" in fields:
            messages.append(fields)
    return messages


async def test_an_ended_flows_events_are_replayed_then_the_stream_ends(make_client: MakeClient) -> None:
    app, client = await make_client(allow_all)
    flow_id = await ended_flow(client, app)
    response = await client.get(f"/workflows/flows/{flow_id}/events")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.text.startswith("retry: 2000\n\n")
    messages = parse_sse(response.text)
    events, end = messages[:-1], messages[-1]
    assert [m["data"]["type"] for m in events] == [
        "flow_started",
        "step_started",
        "step_completed",
        "step_started",
        "step_completed",
        "flow_completed",
    ]
    assert [m["id"] for m in events] == [str(n) for n in range(1, 7)]
    assert events[1]["data"]["step"] == "reserve" and events[1]["data"]["flow_id"] == flow_id
    assert end == {"event": "end", "data": {"flow_id": flow_id}}


async def test_a_reconnecting_client_gets_only_what_it_has_not_seen(make_client: MakeClient) -> None:
    app, client = await make_client(allow_all)
    flow_id = await ended_flow(client, app)
    after = parse_sse((await client.get(f"/workflows/flows/{flow_id}/events?after=4")).text)
    assert [m.get("id") for m in after] == ["5", "6", None]
    resumed = await client.get(f"/workflows/flows/{flow_id}/events", headers={"last-event-id": "5"})
    assert [m.get("id") for m in parse_sse(resumed.text)] == ["6", None]
    bad = await client.get(f"/workflows/flows/{flow_id}/events?after=five")
    assert (bad.status_code, bad.json()["error"]) == (400, "bad_request")
    missing = await client.get("/workflows/flows/flow-nope/events")
    assert (missing.status_code, missing.json()["error"]) == (404, "flow_not_found")


async def test_a_live_flows_events_arrive_as_they_happen(make_client: MakeClient) -> None:
    app, client = await make_client(allow_all)
    flow_id = await waiting_flow(client, app)
    # The ASGI client returns the body once the response ends: the flow has to end while the request runs.
    request = asyncio.create_task(client.get(f"/workflows/flows/{flow_id}/events"))
    await asyncio.sleep(0.05)
    assert not request.done()  # the stream stays open while the flow waits
    await client.post(f"/workflows/flows/{flow_id}/signals/decision", json={"approved": True})
    response = await asyncio.wait_for(request, 10)
    types = [m["data"]["type"] for m in parse_sse(response.text)[:-1]]
    assert types[:5] == ["flow_started", "step_started", "step_completed", "step_started", "flow_waiting"]
    assert "signal_received" in types
    assert types[-1] == "flow_completed"


class TrackingProvider(InProcessWorkflowProvider):
    """Counts the subscriptions that are open."""

    open_subscriptions = 0

    async def subscribe(self, flow_id: str) -> AsyncIterator[FlowEvent]:
        TrackingProvider.open_subscriptions += 1
        try:
            async for event in super().subscribe(flow_id):
                yield event
        finally:
            TrackingProvider.open_subscriptions -= 1


async def test_a_client_that_goes_away_closes_the_subscription_at_once(make_client: MakeClient) -> None:
    app, client = await make_client(allow_all, provider=TrackingProvider())
    flow_id = await waiting_flow(client, app)
    sent: list[Message] = []
    gone = asyncio.Event()

    async def receive() -> Message:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if b"flow_waiting" in message.get("body", b""):
            gone.set()  # the client reads up to the wait, then closes the tab

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/workflows/flows/{flow_id}/events",
        "raw_path": f"/workflows/flows/{flow_id}/events".encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 5000),
        "server": ("plait.test", 80),
    }
    await asyncio.wait_for(app.asgi()(scope, receive, send), 5)
    assert TrackingProvider.open_subscriptions == 0
    assert sent[0]["status"] == 200
    assert await app.context.workflows.get_status(flow_id) == FlowStatus.WAITING  # the flow goes on


async def test_a_quiet_stream_sends_keepalive_comments() -> None:
    never = asyncio.Event()

    async def quiet() -> AsyncIterator[FlowEvent]:
        await never.wait()
        yield  # type: ignore[misc]  # never reached: the flow says nothing

    body: list[bytes] = []
    done = asyncio.Event()

    async def receive() -> Message:
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        body.append(message.get("body", b""))
        if b"".join(body).count(b": keepalive") >= 2:
            done.set()

    stream = EventStream("flow-q", quiet(), keepalive=0.01)
    await asyncio.wait_for(stream({"type": "http"}, receive, send), 5)
    assert b"".join(body).startswith(b"retry: 2000\n\n: keepalive\n\n")


async def test_a_subscription_that_breaks_ends_the_stream_with_an_error_message() -> None:
    async def broken() -> AsyncIterator[FlowEvent]:
        raise RuntimeError("store went away")
        yield  # type: ignore[unreachable]

    body: list[bytes] = []

    async def receive() -> Message:
        await asyncio.Event().wait()
        raise AssertionError  # never: the stream ends first

    async def send(message: Message) -> None:
        body.append(message.get("body", b""))

    await asyncio.wait_for(EventStream("flow-b", broken())({"type": "http"}, receive, send), 5)
    messages = parse_sse(b"".join(body).decode())
    assert messages == [
        {"event": "error", "data": {"flow_id": "flow-b", "message": "store went away"}},
        {"event": "end", "data": {"flow_id": "flow-b"}},
    ]


def test_sse_messages_and_after() -> None:
    assert sse_message({"a": "two\nlines"}, event="x", id=3) == b'id: 3\nevent: x\ndata: {"a":"two\\nlines"}\n\n'
    assert parse_after(None, None) == 0
    assert parse_after("7", "3") == 7  # the query wins over the header
    assert parse_after(None, "3") == 3
    with pytest.raises(ValueError, match="sequence number"):
        parse_after("-1", None)


async def test_the_stream_works_over_a_real_connection(make_client: MakeClient, unused_port: int) -> None:
    import uvicorn

    app, client = await make_client(allow_all)
    flow_id = await waiting_flow(client, app)
    server = uvicorn.Server(uvicorn.Config(app.asgi(), port=unused_port, lifespan="off", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110  # uvicorn says so with a flag only
            await asyncio.sleep(0.01)
        lines: list[str] = []
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{unused_port}") as http,
            http.stream("GET", f"/workflows/flows/{flow_id}/events") as response,
        ):
            async for line in response.aiter_lines():
                lines.append(line)
                if "flow_waiting" in line:
                    await http.post(f"/workflows/flows/{flow_id}/signals/decision", json={"approved": True})
        text = "\n".join(lines)
        assert '"type":"signal_received"' in text and "event: end" in text
        assert text.index("flow_waiting") < text.index("signal_received") < text.index("flow_completed")
    finally:
        server.should_exit = True
        await serving
    assert app.started  # the test server's lifespan was off: the application is the fixture's
    await until(app, flow_id, lambda info: info.status == FlowStatus.COMPLETED)
