"""Plait's pytest plugin, loaded automatically through the ``pytest11`` entry point of ``plait-testing``.

Fixtures:
    inprocess_provider: a started :class:`~plait.providers.inprocess.InProcessWorkflowProvider`, stopped after
        the test. Register workflows on it, then execute them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from plait.providers.inprocess import InProcessWorkflowProvider

__all__ = ["inprocess_provider"]


@pytest_asyncio.fixture
async def inprocess_provider() -> AsyncIterator[InProcessWorkflowProvider]:
    """A started in-process provider with a short stop grace, stopped after the test.

    Registering after ``start()`` is fine for the in-process provider::

        async def test_order(inprocess_provider: InProcessWorkflowProvider) -> None:
            inprocess_provider.register(ProcessOrder, ProcessOrderWorkflow())
            handle = await inprocess_provider.execute(ProcessOrder, {"order_id": "o-1"})
            assert (await handle.result()).charge_id
    """
    provider = InProcessWorkflowProvider(provider_id="test", stop_grace=1.0)
    await provider.start()
    try:
        yield provider
    finally:
        await provider.stop()
