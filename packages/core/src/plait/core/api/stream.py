"""A flow's events as Server-Sent Events: the history replayed, then live, until the flow's last event.

Each event is one SSE message whose ``id`` is the event's sequence number and whose ``data`` is the event as JSON
(its ``type`` says which). A client that reconnects with ``Last-Event-ID`` (browsers do it by themselves) or
``?after=<seq>`` gets only what it has not seen. After the flow's last event comes a message of type ``end``, and
the response ends; a client should close rather than reconnect then. A comment line every ``keepalive`` seconds
keeps proxies from closing a quiet stream.

The stream watches the connection: when the client goes away, the subscription is closed at once, not at the
next event.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator

import anyio
import pydantic_core
from anyio.streams.memory import MemoryObjectSendStream
from starlette.types import Receive, Scope, Send

from plait.core.events import FlowEvent

__all__ = ["KEEPALIVE", "EventStream", "parse_after", "sse_message"]

KEEPALIVE = 15.0
"""Seconds between keep-alive comments on a quiet stream."""

_RETRY_MS = 2000
_log = logging.getLogger("plait.api")


def sse_message(data: object, *, event: str | None = None, id: int | None = None) -> bytes:
    """One SSE message: optional ``event`` and ``id`` lines, then ``data`` as one line of JSON."""
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    # JSON escapes newlines inside strings, so the data is always a single line.
    lines.append("data: " + pydantic_core.to_json(data).decode())
    return ("\n".join(lines) + "\n\n").encode()


class EventStream:
    """The ASGI response that streams ``events`` (skipping those numbered ``after`` or less).

    Args:
        flow_id: the flow, named in the final ``end`` message.
        events: the flow's events, as ``executor.subscribe(flow_id)`` yields them; closed when the response ends.
        after: the sequence number of the last event the client has seen (0: none).
        keepalive: seconds between keep-alive comments.
    """

    def __init__(
        self, flow_id: str, events: AsyncIterator[FlowEvent], *, after: int = 0, keepalive: float = KEEPALIVE
    ) -> None:
        self.flow_id = flow_id
        self.events = events
        self.after = after
        self.keepalive = keepalive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # nginx would otherwise hold events back in its buffer
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the client went away mid-write
                        await self._stream(send)
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                group.start_soon(stream)
        finally:
            with anyio.CancelScope(shield=True):
                await _close(self.events)

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.body", "body": f"retry: {_RETRY_MS}\n\n".encode(), "more_body": True})
        writer, reader = anyio.create_memory_object_stream[FlowEvent | BaseException](math.inf)
        async with anyio.create_task_group() as group:
            group.start_soon(self._read, writer)
            async with reader:
                while True:
                    item: FlowEvent | BaseException | None = None
                    with anyio.move_on_after(self.keepalive):
                        try:
                            item = await reader.receive()
                        except anyio.EndOfStream:
                            break
                    if item is None:
                        await send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})
                    elif isinstance(item, BaseException):
                        message = sse_message({"flow_id": self.flow_id, "message": str(item)}, event="error")
                        await send({"type": "http.response.body", "body": message, "more_body": True})
                        break
                    elif item.seq > self.after:
                        body = sse_message(item.model_dump(mode="json"), id=item.seq)
                        await send({"type": "http.response.body", "body": body, "more_body": True})
            group.cancel_scope.cancel()
        end = sse_message({"flow_id": self.flow_id}, event="end")
        await send({"type": "http.response.body", "body": end, "more_body": False})

    async def _read(self, writer: MemoryObjectSendStream[FlowEvent | BaseException]) -> None:
        # A task of its own, so that waiting with a keep-alive timeout never cancels the subscription mid-await.
        async with writer:
            try:
                async for event in self.events:
                    await writer.send(event)
            except Exception as error:
                _log.warning("Event stream of flow %s ended early: %s", self.flow_id, error)
                await writer.send(error)


async def _close(events: AsyncIterator[FlowEvent]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception as error:  # closing is best effort: the response is over either way
            _log.debug("Closing the event subscription failed: %s", error)


def parse_after(query: str | None, header: str | None) -> int:
    """The last event a client has seen: ``?after=`` wins over ``Last-Event-ID``; 0 when neither is given.

    Raises:
        ValueError: not a non-negative integer.
    """
    raw = query if query is not None else header
    if raw is None or raw == "":
        return 0
    if not raw.isdigit():
        raise ValueError(f"after (or Last-Event-ID) must be an event sequence number, got {json.dumps(raw)[:60]}")
    return int(raw)
