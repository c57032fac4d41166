"""Plait's pytest plugin, loaded automatically through the ``pytest11`` entry point of ``plait-testing``.

It turns on pytest-asyncio's ``auto`` mode unless the project chose a mode itself (``asyncio_mode`` in its
configuration, or ``--asyncio-mode``), so that ``async def`` tests and fixtures run as written.

Fixtures:
    inprocess_provider: a started :class:`~plait.providers.inprocess.InProcessWorkflowProvider`, stopped after
        the test. Register workflows on it, then execute them.
    virtual_clock: a :class:`~plait.testing.VirtualClock`, the clock of ``virtual_provider``.
    virtual_provider: a started in-process provider on ``virtual_clock``: sleeps, signal timeouts, retry backoff
        and workflow timeouts happen at once.
    app_client: a factory, ``client = await app_client(app)``: starts a Plait application and returns an
        ``httpx.AsyncClient`` wired to it in memory; the application is stopped after the test.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest
import pytest_asyncio

from plait.core import Application
from plait.providers.inprocess import InProcessWorkflowProvider
from plait.testing._app import AppClient, run_app
from plait.testing._clock import VirtualClock

__all__ = ["app_client", "inprocess_provider", "virtual_clock", "virtual_provider"]


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Chooses pytest-asyncio's ``auto`` mode when the project has not chosen a mode."""
    if config.getoption("asyncio_mode", default=None) is not None or _configured(config, "asyncio_mode"):
        return
    # The same as passing --asyncio-mode=auto: pytest-asyncio reads the option before its ini value.
    config.option.asyncio_mode = "auto"
    if not _configured(config, "asyncio_default_fixture_loop_scope"):
        # pytest-asyncio's configure (after this one) warns that this option is unset, about a future default that
        # changes nothing for function-scoped fixtures: a project that says nothing about pytest-asyncio is not
        # told about its options. The filter matches that one message only.
        warnings.filterwarnings(
            "ignore", message='The configuration option "asyncio_default_fixture_loop_scope" is unset'
        )


def _configured(config: pytest.Config, name: str) -> bool:
    # pytest offers no public way to tell a value set in the configuration file from its default; its parsed
    # configuration is ``_inicfg`` from pytest 9 on and ``inicfg`` before.
    parsed = getattr(config, "_inicfg", None)
    if parsed is None:
        parsed = getattr(config, "inicfg", {})
    return name in parsed


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


@pytest.fixture
def virtual_clock() -> VirtualClock:
    """The virtual clock of ``virtual_provider``: ``virtual_clock.time()`` is the time its flows see."""
    return VirtualClock()


@pytest_asyncio.fixture
async def virtual_provider(virtual_clock: VirtualClock) -> AsyncIterator[InProcessWorkflowProvider]:
    """A started in-process provider on ``virtual_clock``, stopped after the test.

    Whenever no handler runs, time jumps to the next timer: a 48-hour signal timeout, a day of retry backoff or
    a week-long sleep take milliseconds, in order::

        async def test_approval_times_out(virtual_provider: InProcessWorkflowProvider) -> None:
            virtual_provider.register(Approve, ApproveWorkflow())
            handle = await virtual_provider.execute(Approve, {"expense_id": "e-1"})
            with pytest.raises(WorkflowStepError):
                await handle.result()
    """
    provider = InProcessWorkflowProvider(provider_id="test", stop_grace=1.0, clock=virtual_clock)
    await provider.start()
    try:
        yield provider
    finally:
        await provider.stop()


@pytest_asyncio.fixture
async def app_client() -> AsyncIterator[AppClient]:
    """A factory that starts an application and returns an HTTP client for it; everything stops after the test.

    ::

        async def test_place_order(app_client: AppClient) -> None:
            client = await app_client(build_app())
            response = await client.post("/orders", json={"sku": "KB-87"})
            assert response.status_code == 202
    """
    async with AsyncExitStack() as stack:

        async def start(app: Application) -> httpx.AsyncClient:
            return await stack.enter_async_context(run_app(app))

        yield start
