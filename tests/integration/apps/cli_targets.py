"""Objects for ``plait worker``'s loader: something to run, factories of it, and things it refuses."""

from __future__ import annotations

from plait.core import Application, Plait
from plait.providers.arq import ArqWorkflowProvider
from plait.providers.inprocess import InProcessWorkflowProvider
from tests.integration.apps.orders import ORDER, OrderWorkflow, SideEffects


class Runnable:
    """Anything with ``async start()`` and ``async stop()``."""

    def __init__(self) -> None:
        self.running = False

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False


runnable = Runnable()


def factory() -> Runnable:
    return Runnable()


async def async_factory() -> Runnable:
    return Runnable()


def wrong_factory() -> int:
    return 42


class Namespace:
    nested = Runnable()


not_runnable = 42


def inprocess_app() -> Application:
    """An application that sets no provider: it runs the in-process one."""
    return Plait.create().workflow(ORDER).consumer(OrderWorkflow, [SideEffects]).provider(SideEffects)


def explicit_inprocess_app() -> Application:
    return Plait.create().workflow_provider(InProcessWorkflowProvider())


def arq_app() -> Application:
    return Plait.create().workflow_provider(ArqWorkflowProvider("redis://127.0.0.1:1/0"))


class Wrapper:
    """An object that is not a provider but holds one, as tests' worker apps do."""

    def __init__(self) -> None:
        self.provider = ArqWorkflowProvider("redis://127.0.0.1:1/0")

    async def start(self) -> None:
        await self.provider.start()

    async def stop(self) -> None:
        await self.provider.stop()
