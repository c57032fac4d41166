"""Redis pub/sub for one provider: one connection, many channels, a callback per subscriber.

Callers of ``result()`` subscribe to their flow's channel and workers to the cancel channel. A subscription is
confirmed by the server before :meth:`Notifier.subscribe` returns, so a caller that subscribes and then reads the
flow's status cannot miss an end announced in between. The channels subscribed (or unsubscribed) in one turn of
the event loop go in one ``SUBSCRIBE`` (or ``UNSUBSCRIBE``), each still confirmed on its own.

When the connection fails (Redis restarts, say), redis-py reconnects on the next read and subscribes again, but a
message published meanwhile is lost: once the subscriptions are confirmed again, every handler is called with an
empty message, which means "look again".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from arq.connections import ArqRedis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

__all__ = ["Notifier"]

_log = logging.getLogger("plait.providers.arq")

Handler = Callable[[bytes], None]


class Notifier:
    """Channels and their handlers over one pub/sub connection, opened at the first subscription."""

    __slots__ = (
        "_broken",
        "_closed",
        "_confirmations",
        "_flush",
        "_handlers",
        "_pubsub",
        "_reader",
        "_sending",
        "_to_subscribe",
        "_to_unsubscribe",
    )

    def __init__(self, redis: ArqRedis) -> None:
        self._pubsub = redis.pubsub()
        self._handlers: dict[str, list[Handler]] = {}
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self._broken = False  # the connection failed; it is not known to be back yet
        # redis-py's PubSub opens its connection on first use: two first uses at once would open two.
        self._sending = asyncio.Lock()
        # Channels (un)subscribed in one turn of the event loop go in one command: callers of result() waiting for
        # many flows would otherwise send a SUBSCRIBE and an UNSUBSCRIBE each.
        self._to_subscribe: dict[str, None] = {}
        self._to_unsubscribe: dict[str, None] = {}
        self._flush: asyncio.Task[None] | None = None

    async def subscribe(self, channel: str, handler: Handler, timeout: float = 5.0) -> None:
        """Calls ``handler(data)`` for each message on ``channel`` from now on.

        Raises:
            TimeoutError: the server did not confirm the subscription within ``timeout`` seconds.
        """
        if self._closed:
            raise RuntimeError("Notifier is closed")
        handlers = self._handlers.get(channel)
        if handlers is not None:
            handlers.append(handler)
            pending = self._confirmations.get(channel)
            if pending is not None:
                await asyncio.wait_for(asyncio.shield(pending), timeout)
            return
        self._handlers[channel] = [handler]
        confirmed = self._confirmations[channel] = asyncio.get_running_loop().create_future()
        self._to_unsubscribe.pop(channel, None)
        self._to_subscribe[channel] = None
        self._schedule()
        try:
            await asyncio.wait_for(asyncio.shield(confirmed), timeout)
        except BaseException:
            await self.unsubscribe(channel, handler)
            raise

    async def unsubscribe(self, channel: str, handler: Handler) -> None:
        """Stops calling ``handler`` for ``channel``; the last handler's removal unsubscribes the connection."""
        handlers = self._handlers.get(channel)
        if handlers is None or handler not in handlers:
            return
        handlers.remove(handler)
        if handlers:
            return
        del self._handlers[channel]
        pending = self._confirmations.pop(channel, None)
        if pending is not None and not pending.done():
            pending.cancel()
        if channel in self._to_subscribe:
            del self._to_subscribe[channel]  # not sent yet: nothing to take back
            return
        if not self._closed:
            self._to_unsubscribe[channel] = None
            self._schedule()

    def _schedule(self) -> None:
        if self._flush is None:
            self._flush = asyncio.create_task(self._send(), name="plait-arq-pubsub-subscriptions")

    async def _send(self) -> None:
        """Sends the (un)subscriptions of this turn of the loop (the task starts at the end of the turn)."""
        async with self._sending:
            self._flush = None  # from here on, a change goes with the next flush
            unsubscribe, self._to_unsubscribe = list(self._to_unsubscribe), {}
            subscribe, self._to_subscribe = list(self._to_subscribe), {}
            if self._closed:
                return
            if unsubscribe:
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.unsubscribe(*unsubscribe)
            if not subscribe:
                return
            try:
                await self._pubsub.subscribe(*subscribe)
            except Exception as error:  # Redis unreachable, say: each of those subscribers gets the error
                for channel in subscribe:
                    pending = self._confirmations.get(channel)
                    if pending is not None and not pending.done():
                        pending.set_exception(error)
                return
            if self._reader is None:
                self._reader = asyncio.create_task(self._read(), name="plait-arq-pubsub")

    async def close(self) -> None:
        """Stops reading and closes the connection; idempotent."""
        self._closed = True
        flush, self._flush = self._flush, None
        if flush is not None:
            flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flush
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        for pending in self._confirmations.values():
            pending.cancel()
        self._confirmations.clear()
        self._handlers.clear()
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated in redis-py

    async def _read(self) -> None:
        while True:
            try:
                # Typed None in redis-py (assigned on first use).
                connection: AbstractConnection | None = getattr(self._pubsub, "connection", None)
                if connection is not None and not connection.is_connected:
                    # Reconnect under the lock subscribers hold: redis-py would otherwise let this read and a
                    # SUBSCRIBE connect the same connection at once, opening two sockets and leaking one.
                    async with self._sending:
                        await self._pubsub.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
                message = await self._pubsub.get_message(timeout=None)
            except (RedisError, OSError) as error:
                if not self._broken:
                    self._broken = True
                    _log.warning("Redis pub/sub connection failed (%s); reconnecting until Redis is back", error)
                await asyncio.sleep(0.5)
                continue
            if message is None:
                continue
            kind = message["type"]
            channel = message["channel"]
            name = channel.decode() if isinstance(channel, bytes) else str(channel)
            if kind == "subscribe":
                pending = self._confirmations.pop(name, None)
                if pending is not None and not pending.done():
                    pending.set_result(None)
                if self._broken:
                    self._broken = False
                    _log.info("Redis pub/sub connection is back")
                    self._call_all(b"")
            elif kind == "message":
                self._call(name, message["data"])

    def _call_all(self, data: bytes) -> None:
        for name in list(self._handlers):
            self._call(name, data)

    def _call(self, name: str, data: bytes) -> None:
        for handler in list(self._handlers.get(name, ())):
            try:
                handler(data)
            except Exception:
                _log.exception("Pub/sub handler for %s failed", name)
