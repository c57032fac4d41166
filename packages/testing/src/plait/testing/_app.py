"""Running a Plait application under test: started, served to an HTTP client in memory, stopped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Protocol

import httpx

from plait.core import Application

__all__ = ["AppClient", "run_app"]


class AppClient(Protocol):
    """The ``app_client`` fixture: ``client = await app_client(app)`` starts ``app`` and returns an HTTP client."""

    def __call__(self, app: Application) -> Awaitable[httpx.AsyncClient]:
        """Starts ``app`` (stopped after the test) and returns an ``httpx.AsyncClient`` wired to it in memory."""
        ...


@asynccontextmanager
async def run_app(app: Application, *, base_url: str = "http://testserver") -> AsyncIterator[httpx.AsyncClient]:
    """Starts ``app`` (its container, provider and consumers), yields an HTTP client wired to it, stops it.

    Requests go straight to the ASGI app in memory; no port is opened. Start-up errors (a missing dependency,
    a cycle, a consumer that does not match its workflow) are raised here::

        async with run_app(app) as client:
            response = await client.post("/orders", json={...})
    """
    await app.start()
    try:
        transport = httpx.ASGITransport(app=app.asgi())
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client
    finally:
        await app.stop()
