"""The ends of the flows this provider started, announced on a channel of its own.

A caller of ``result()`` on a flow it has not started subscribes to that flow's channel, then reads the flow (so
that an end announced in between is not missed): two round trips to Redis, and an unsubscription after. The
flows a provider starts itself need none of them: its channel is subscribed, and confirmed, before the first
flow is stored, and each flow records the channel, so the commit that ends the flow announces it there too, as
the flow's id, a newline and what the flow's own channel gets (its final state, or its status when large). Flow
ids are printable, so they hold no newline.

Announcements are kept until ``result()`` takes them, for a bounded number of flows and bytes (the oldest flows
are let go first; past the bytes, an end is kept as "it ended", and its ``result()`` reads the flow): a flow that
nobody waits for must not hold memory for ever. A flow let go, one started before a lost connection, and one this
provider did not start take the general path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable

from plait.providers.arq._notify import Notifier

__all__ = ["Ends"]

_ENDED = b""  # what a waiter is handed for "look at the flow": it ended, or an announcement may have been lost

Handler = Callable[[bytes], None]


class Ends:
    """The flows started here that nobody has waited for yet, and what their end was announced with.

    Args:
        notifier: the provider's pub/sub connection.
        channel: this provider's channel (``Keys.ends``), unique to it.
        limit: how many flows are followed at most; the oldest are let go first.
        kept_bytes: how many bytes of announcements are kept at most, all flows together.
    """

    __slots__ = ("_bytes", "_flows", "_kept_bytes", "_limit", "_notifier", "_ready", "channel")

    def __init__(self, notifier: Notifier, channel: str, limit: int = 10_000, kept_bytes: int = 4_000_000) -> None:
        self._notifier = notifier
        self.channel = channel
        self._limit = limit
        self._kept_bytes = kept_bytes
        self._bytes = 0  # of the announcements kept now
        # flow id -> None (not ended yet), its announcement, or the handler of the result() waiting for it
        self._flows: OrderedDict[str, bytes | Handler | None] = OrderedDict()
        self._ready: asyncio.Future[None] | None = None

    async def ready(self) -> str:
        """Subscribes to the channel the first time (later callers wait for that subscription); returns it.

        Raises:
            Whatever ``Notifier.subscribe`` raises; the next call tries again.
        """
        while True:
            ready = self._ready
            if ready is None:
                ready = self._ready = asyncio.get_running_loop().create_future()
                try:
                    await self._notifier.subscribe(self.channel, self._announced)
                except BaseException as error:
                    self._ready = None
                    if isinstance(error, asyncio.CancelledError):
                        ready.cancel()  # the callers waiting for it try again themselves
                    else:
                        ready.set_exception(error)
                        ready.exception()  # retrieved: the callers waiting for it get it, nobody else need
                    raise
                ready.set_result(None)
            elif not ready.done():
                try:
                    await asyncio.shield(ready)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if ready.cancelled() and task is not None and not task.cancelling():
                        continue  # the caller subscribing was cancelled, not this one
                    raise
            return self.channel

    def follow(self, flow_id: str) -> bool:
        """Follows ``flow_id``, about to be stored with this channel; returns ``False`` when it is followed already
        (this provider stored it before: storing it again changes nothing)."""
        flows = self._flows
        if flow_id in flows:
            return False
        flows[flow_id] = None
        while len(flows) > self._limit:
            self._let_go(next(iter(flows)))
        return True

    def forget(self, flow_id: str) -> None:
        """Stops following ``flow_id`` (it was not stored by this provider, or a waiter is done with it)."""
        if flow_id in self._flows:
            self._let_go(flow_id)

    def claim(self, flow_id: str, handler: Handler) -> bool:
        """Hands ``flow_id``'s announcement to ``handler``, now if it came already, else when it comes.

        Returns:
            Whether the flow is followed; if not, the caller must subscribe to the flow's own channel and read it.
        """
        flows = self._flows
        if flow_id not in flows:
            return False
        found = flows[flow_id]
        if callable(found):
            return False  # another result() waits for it already: this one takes the general path
        if found is not None:
            self._bytes -= len(found)
        flows[flow_id] = handler
        if found is not None:
            handler(found)
        return True

    def _let_go(self, flow_id: str) -> None:
        found = self._flows.pop(flow_id)
        if isinstance(found, bytes):
            self._bytes -= len(found)

    def _announced(self, data: bytes) -> None:
        flows = self._flows
        if not data:  # the connection was lost and is back: announcements may have been lost meanwhile
            for flow_id, found in list(flows.items()):
                if callable(found):
                    found(_ENDED)
                else:
                    self._let_go(flow_id)
            return
        flow_id_bytes, _, announcement = data.partition(b"\n")
        with contextlib.suppress(UnicodeDecodeError):
            flow_id = flow_id_bytes.decode()
            if flow_id not in flows:
                return
            found = flows[flow_id]
            if callable(found):
                found(announcement)
                return
            if isinstance(found, bytes):  # announced again (a completed flow undone since, say): the latest counts
                self._bytes -= len(found)
            if self._bytes + len(announcement) > self._kept_bytes:
                announcement = _ENDED
            flows[flow_id] = announcement
            self._bytes += len(announcement)
