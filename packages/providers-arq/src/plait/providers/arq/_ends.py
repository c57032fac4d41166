"""The ends of the flows this provider started, announced on a channel of its own.

A caller of ``result()`` on a flow it has not started subscribes to that flow's channel, then reads the flow (so
that an end announced in between is not missed): two round trips to Redis, and an unsubscription after. The
flows a provider starts itself need none of them: its channel is subscribed, and confirmed, before the first
flow is stored, and each flow records the channel, so the commit that ends the flow announces it there too, as
the flow's id, a newline and what the flow's own channel gets (its final state, or its status when large). Flow
ids are printable, so they hold no newline.

Announcements are kept until ``result()`` takes them, for a bounded number of flows (the oldest are forgotten
first): a flow that nobody waits for must not hold memory for ever. A forgotten flow, one started before a lost
connection, and one this provider did not start take the general path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable

from plait.providers.arq._notify import Notifier

__all__ = ["Ends"]

_KEPT_BYTES = 16_384  # a larger announcement is kept as "it ended": result() then reads the flow
_ENDED = b""  # what a waiter is handed for "look at the flow": it ended, or an announcement may have been lost

Handler = Callable[[bytes], None]


class Ends:
    """The flows started here that nobody has waited for yet, and what their end was announced with.

    Args:
        notifier: the provider's pub/sub connection.
        channel: this provider's channel (``Keys.ends``), unique to it.
        limit: how many flows are followed at most; the oldest are let go first.
    """

    __slots__ = ("_flows", "_limit", "_notifier", "_ready", "channel")

    def __init__(self, notifier: Notifier, channel: str, limit: int = 10_000) -> None:
        self._notifier = notifier
        self.channel = channel
        self._limit = limit
        # flow id -> None (not ended yet), its announcement, or the handler of the result() waiting for it
        self._flows: OrderedDict[str, bytes | Handler | None] = OrderedDict()
        self._ready: asyncio.Future[None] | None = None

    async def ready(self) -> str:
        """Subscribes to the channel the first time (later callers wait for that subscription); returns it.

        Raises:
            Whatever ``Notifier.subscribe`` raises; the next call tries again.
        """
        ready = self._ready
        if ready is None:
            ready = self._ready = asyncio.get_running_loop().create_future()
            try:
                await self._notifier.subscribe(self.channel, self._announced)
            except BaseException as error:
                self._ready = None
                ready.set_exception(error)
                ready.exception()  # retrieved: a caller waiting below gets it; nobody else need
                raise
            ready.set_result(None)
        elif not ready.done():
            await asyncio.shield(ready)
        return self.channel

    def follow(self, flow_id: str) -> bool:
        """Follows ``flow_id``, about to be stored with this channel; returns ``False`` when it is followed already
        (this provider stored it before: storing it again changes nothing)."""
        flows = self._flows
        if flow_id in flows:
            return False
        flows[flow_id] = None
        while len(flows) > self._limit:
            flows.popitem(last=False)
        return True

    def forget(self, flow_id: str) -> None:
        """Stops following ``flow_id`` (it was not stored by this provider, or a waiter is done with it)."""
        self._flows.pop(flow_id, None)

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
            return False  # another result() waits for it already: it takes the general path
        flows[flow_id] = handler
        if found is not None:
            handler(found)
        return True

    def _announced(self, data: bytes) -> None:
        if not data:  # the connection was lost and is back: announcements may have been lost meanwhile
            for flow_id, found in list(self._flows.items()):
                if callable(found):
                    found(_ENDED)
                else:
                    del self._flows[flow_id]
            return
        flow_id_bytes, _, announcement = data.partition(b"\n")
        with contextlib.suppress(UnicodeDecodeError):
            flow_id = flow_id_bytes.decode()
            if flow_id in self._flows:
                found = self._flows[flow_id]
                if callable(found):
                    found(announcement)
                else:
                    self._flows[flow_id] = announcement if len(announcement) <= _KEPT_BYTES else _ENDED
