"""Event hooks (``on_event``): every event a provider records, handed to the application's callbacks in order.

Providers call :meth:`Hooks.publish` with the event records of each transition they record; the hooks run in a
task of their own, one event at a time, so a slow hook delays other hooks, never a flow, and a hook that raises
is logged and skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from plait.core.engine import EventRecord
from plait.core.events import event_from_record
from plait.core.provider import EventHook

__all__ = ["Hooks"]

_log = logging.getLogger("plait.hooks")


class Hooks:
    """The hooks of one provider, and the task that runs them.

    Args:
        name: names the task (and the provider in log lines).
    """

    __slots__ = ("_hooks", "_name", "_queue", "_task", "active")

    def __init__(self, name: str) -> None:
        self._name = name
        self._hooks: list[EventHook] = []
        self._queue: asyncio.Queue[tuple[str, str, Sequence[EventRecord]] | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.active = False
        """Whether there are hooks to call (a provider can skip building what nobody reads)."""

    def add(self, hook: EventHook) -> None:
        """Adds a hook; it gets the events published from now on.

        Raises:
            TypeError: ``hook`` is not callable.
        """
        if not callable(hook):
            raise TypeError(f"on_event() takes an async function of a FlowEvent, got {hook!r}")
        self._hooks.append(hook)
        self.active = True

    def start(self) -> None:
        """Starts the task that runs the hooks (a no-op without hooks, or when it runs already)."""
        if self._hooks and self._task is None:
            queue: asyncio.Queue[tuple[str, str, Sequence[EventRecord]] | None] = asyncio.Queue()
            self._queue = queue
            self._task = asyncio.create_task(self._run(queue), name=f"plait-hooks-{self._name}")

    def publish(self, flow_id: str, workflow: str, records: Sequence[EventRecord]) -> None:
        """Queues the events of one transition for the hooks (dropped when the hooks' task is not running)."""
        if self._queue is not None and records:
            self._queue.put_nowait((flow_id, workflow, records))

    async def stop(self, grace: float) -> None:
        """Lets the hooks take what is queued, for ``grace`` seconds at most, then stops the task."""
        task, queue = self._task, self._queue
        self._task = self._queue = None
        if task is None or queue is None:
            return
        queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
        except TimeoutError:
            task.cancel()
            _log.error(
                "Event hooks of %s did not finish within %gs; the rest of their events are dropped", self._name, grace
            )

    async def _run(self, queue: asyncio.Queue[tuple[str, str, Sequence[EventRecord]] | None]) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            flow_id, workflow, records = item
            for record in records:
                event = event_from_record(flow_id, workflow, record)
                for hook in self._hooks:
                    try:
                        await hook(event)
                    except Exception:
                        _log.exception("Event hook %r failed on %s of flow %s", hook, event.type, flow_id)
