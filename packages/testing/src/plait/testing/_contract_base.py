"""The conformance suite's base: timing knobs, the ``provider`` fixture to override, and the helpers every rule
uses. The rules themselves are in ``_contract_flow`` (1-4), ``_contract_failure`` (5-8) and ``_contract`` (9-12).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel

from plait.core import (
    ConsumerOptions,
    FlowHandle,
    FlowStatus,
    IWorkflowConsumer,
    RemoteError,
    WorkflowDefinition,
    WorkflowError,
    WorkflowProvider,
    WorkflowStepError,
)
from plait.testing._scripted import (
    FAST,
)

__all__ = ["ContractBase", "Registration", "cause_message", "cause_name"]

R = TypeVar("R", bound=BaseModel)


def cause_name(error: WorkflowStepError) -> str:
    """The class name of a step error's cause, whether it is the exception itself or a :class:`RemoteError`."""
    cause = error.cause
    if isinstance(cause, RemoteError):
        return cause.type_name.rsplit(".", 1)[-1]
    return type(cause).__name__


def cause_message(error: WorkflowStepError) -> str:
    cause = error.cause
    return cause.message if isinstance(cause, RemoteError) else str(cause)


Registration = tuple[WorkflowDefinition[Any, Any], IWorkflowConsumer[Any, Any], ConsumerOptions | None]


class ContractBase:
    """What every rule group shares: the ``provider`` fixture to override, timing knobs, and helpers.

    A provider author sets the knobs as class attributes of the test class when the defaults do not fit::

        class TestMyProvider(ProviderContract):
            latency = 0.3          # a remote provider's round trips
            stop_grace = 0.5       # and build the provider with it

            @pytest.fixture
            def provider(self) -> MyProvider:
                return MyProvider(stop_grace=self.stop_grace)

    Attributes:
        latency: seconds a provider may need to hand a step or an event on (a remote provider's round trips);
            added to the waits of timing-sensitive tests.
        timer_latency: seconds a provider may fire a timer (a sleep's end, a signal's timeout) after it is due.
        stop_grace: the grace period of the provider the fixture returns, which the fixture must pass to it;
            ``stop()`` should let a step shorter than this finish and return within a few grace periods when a
            step blocks.
        wait: the longest a test waits for a flow's result before it fails.
    """

    # Every rule group runs under pytest-asyncio, in its auto mode or not.
    pytestmark = [pytest.mark.asyncio]

    latency: float = 0.1
    timer_latency: float = 0.1
    stop_grace: float = 0.5
    wait: float = 5.0

    @pytest.fixture
    def provider(self) -> WorkflowProvider:
        """Override this: return a new, unstarted provider built with a grace period of ``stop_grace``."""
        pytest.fail("Subclasses of ProviderContract override the 'provider' fixture")

    # -- helpers --

    @asynccontextmanager
    async def running(self, provider: WorkflowProvider, *registrations: Registration) -> AsyncIterator[None]:
        """Registers the workflows, starts the provider, and always stops it."""
        for definition, consumer, options in registrations:
            provider.register(definition, consumer, options)
        await provider.start()
        try:
            yield
        finally:
            await provider.stop()

    async def result(self, handle: FlowHandle[R]) -> R:
        """The flow's result, waiting at most ``wait`` seconds."""
        return await handle.result(timeout=self.wait)

    async def failure(self, handle: FlowHandle[R]) -> WorkflowError:
        """The error the flow failed with, waiting at most ``wait`` seconds."""
        with pytest.raises(WorkflowError) as caught:
            await handle.result(timeout=self.wait)
        assert caught.value.flow_id == handle.id
        return caught.value

    async def until(self, condition: Callable[[], bool], what: str, within: float | None = None) -> None:
        """Polls ``condition`` until it holds; fails the test after ``within`` (default ``wait``) seconds."""
        deadline = time.monotonic() + (self.wait if within is None else within)
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"Timed out waiting for {what}")
            await asyncio.sleep(0.005)

    async def status_becomes(self, provider: WorkflowProvider, flow_id: str, status: FlowStatus) -> list[FlowStatus]:
        """Polls the flow's status until it is ``status``; returns every distinct status seen, in order."""
        seen: list[FlowStatus] = []
        deadline = time.monotonic() + self.wait
        while True:
            current = await provider.get_status(flow_id)
            if not seen or seen[-1] != current:
                seen.append(current)
            if current == status:
                return seen
            if current.is_terminal or time.monotonic() > deadline:
                pytest.fail(f"Flow {flow_id} never became {status}: saw {seen}")
            await asyncio.sleep(0.005)

    @staticmethod
    def options(**kwargs: Any) -> ConsumerOptions:
        """ConsumerOptions with a 10 ms fixed backoff unless told otherwise."""
        kwargs.setdefault("backoff", FAST)
        return ConsumerOptions(**kwargs)
