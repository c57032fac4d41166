"""Scripts (and state reads) sent in the same turn of the event loop go to Redis together, in one write.

A worker running a hundred flows commits many of them at about the same moment; each commit on its own costs a
connection checkout, a system call each way and a reply parse in both Redis and this process. Sent together they
cost one of each. Every script stays its own atomic ``EVALSHA``, with its own reply or error for its caller: only
the round trip is shared. A caller that gives up (is cancelled) before its turn ends is left out of the batch.

Batching waits for the end of the turn, so a script called while nothing is on its way to Redis goes at once: a
lone flow's steps pay no extra turn of the loop, and scripts called while it is in flight share the next trip.

The ``EVALSHA`` commands are packed here and written on a pooled connection, whose replies are read one by one:
redis-py's own packing is pure Python, and a commit has a score of arguments, so it cost more than the rest of a
commit's trip through this process. hiredis (a dependency of this package) packs them in C.

The connections stay checked out of the pool between trips, kept here for the next one: checking one out and in
costs a lock, a zero-timeout read to see that nothing is left on it, and an event dispatch, a sixth of a lone
flow's time in a worker. A kept connection that Redis closed meanwhile (a restart, say) shows its end of file and
is dropped before it is used; one that fails is closed and handed back. Closing the pool closes them all.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import Any, cast

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

__all__ = ["ScriptBatcher", "pack"]

_Arg = str | bytes | int
_Script = tuple[AsyncScript, Sequence[str], Sequence[_Arg]]
_Parse = Callable[[Any], Any]
# One command called: packed, the script it runs (to load it if Redis does not have it), its caller's future, and
# what makes the reply the future's result (None: the reply itself).
_Call = tuple[bytes, _Script | None, "asyncio.Future[Any]", _Parse | None]


def _pack_python(args: tuple[_Arg, ...]) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int) and not isinstance(arg, bool):
            data = b"%d" % arg
        else:
            raise TypeError(f"A Redis argument must be str, bytes or int, not {type(arg).__name__}")
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - a dependency of this package; kept usable without it
    pack: Callable[[tuple[_Arg, ...]], bytes] = _pack_python
else:
    # Given str, bytes or int it writes what _pack_python does. (Its stub types the tuple as one of one item.)
    pack = cast(Callable[[tuple[_Arg, ...]], bytes], _hiredis_pack)


# redis-py before 5.3 wants a command's name to check a connection out of the pool; 5.3 deprecates it.
_NAMED_CHECKOUT = (
    inspect.signature(ConnectionPool.get_connection).parameters["command_name"].default is inspect.Parameter.empty
)


class ScriptBatcher:
    """Runs Lua scripts (and plain commands) on ``redis``, those called in one turn of the event loop in one
    pipeline."""

    __slots__ = ("_alone", "_kept", "_pending", "_redis", "_sending")

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pending: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._alone = 0  # commands on their way one by one
        self._kept: list[AbstractConnection] = []  # checked out of the pool, idle

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[_Arg]) -> Any:
        """Runs ``script`` with ``keys`` and ``args``; returns its reply, or raises what Redis answered."""
        return await self._call(_evalsha(script, keys, args), (script, keys, args))

    async def command(self, *args: _Arg) -> Any:
        """Runs one command whose reply redis-py would hand over as it came (``HGET``, ``HMGET``: no parsing)."""
        return await self._call(pack(args), None)

    async def _call(self, packed: bytes, script: _Script | None) -> Any:
        if not (self._alone or self._sending or self._pending):
            self._alone += 1
            try:
                (reply,) = await self._send_packed(packed, 1)
            finally:
                self._alone -= 1
            if isinstance(reply, NoScriptError) and script is not None:
                # Not loaded (after a Redis restart or SCRIPT FLUSH): AsyncScript loads it and runs it again.
                run, keys, args = script
                return await run(keys=list(keys), args=list(args))
            if isinstance(reply, Exception):
                raise reply
            return reply
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((packed, script, future, None))
        return await future

    def submit(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[_Arg], parse: _Parse | None = None
    ) -> asyncio.Future[Any]:
        """Sends ``script`` with the others called in this turn of the loop (at once if none is on its way) and
        returns the future of its reply, passed through ``parse``. The future is settled whether or not anyone
        still waits for it (a callback on it runs once the script ran); cancelling it before the turn ends leaves
        the script out."""
        packed = _evalsha(script, keys, args)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        call = (packed, (script, keys, args), future, parse)
        if not (self._alone or self._sending or self._pending):
            self._start([call])
        else:
            if not self._pending:
                loop.call_soon(self._flush)
            self._pending.append(call)
        return future

    def _flush(self) -> None:
        batch = [call for call in self._pending if not call[2].done()]
        self._pending = []
        if batch:
            self._start(batch)

    def _start(self, batch: list[_Call]) -> None:
        task = asyncio.create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            replies = await self._send_packed(b"".join([call[0] for call in batch]), len(batch))
            for (_, script, future, parse), reply in zip(batch, replies, strict=True):
                if isinstance(reply, NoScriptError) and script is not None:
                    # Not loaded yet: one more round trip loads and runs it.
                    run, keys, args = script
                    try:
                        reply = await run(keys=list(keys), args=list(args))
                    except Exception as error:
                        reply = error
                if parse is not None and not isinstance(reply, Exception):
                    try:
                        reply = parse(reply)
                    except Exception as error:
                        reply = error
                _settle(future, reply)
        except asyncio.CancelledError:
            for call in batch:
                call[2].cancel()
            raise
        except Exception as error:  # Redis unreachable, say: every caller in the batch gets the error
            for call in batch:
                if not call[2].done():
                    call[2].set_exception(error)

    async def _send_packed(self, packed: bytes, count: int) -> list[Any]:
        """Writes ``count`` packed commands on one connection; returns their replies (an error reply as its
        ``ResponseError``). Raises what the connection raised (an outage), having closed it and handed it back:
        replies may be left unread on it."""
        connection = await self._checkout()
        try:
            await connection.send_packed_command(packed, check_health=False)
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(await connection.read_response())
                except ResponseError as error:
                    replies.append(error)
        except BaseException:
            await self._drop(connection)
            raise
        self._kept.append(connection)
        return replies

    async def _checkout(self) -> AbstractConnection:
        """A kept connection that is still open, else one from the pool."""
        kept = self._kept
        while kept:
            connection = kept.pop()
            reader = getattr(connection, "_reader", None)  # redis-py's stream, while connected
            if reader is not None and not reader.at_eof():
                return connection
            await self._drop(connection)  # Redis closed it (restarted, or timed it out)
        pool = self._redis.connection_pool
        fresh: AbstractConnection = await (pool.get_connection("EVALSHA") if _NAMED_CHECKOUT else pool.get_connection())
        return fresh

    async def _drop(self, connection: AbstractConnection) -> None:
        await connection.disconnect(nowait=True)
        await self._redis.connection_pool.release(connection)


def _evalsha(script: AsyncScript, keys: Sequence[str], args: Sequence[_Arg]) -> bytes:
    return pack(("EVALSHA", script.sha, len(keys), *keys, *args))


def _settle(future: asyncio.Future[Any], reply: Any) -> None:
    if future.done():
        return
    if isinstance(reply, Exception):
        future.set_exception(reply)
    else:
        future.set_result(reply)
