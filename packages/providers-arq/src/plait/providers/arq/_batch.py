"""Scripts (and state reads) sent in the same turn of the event loop go to Redis together, in writes of up to
sixteen, on one pipelined connection.

A worker running a hundred flows commits many of them at about the same moment; each commit on its own costs a
system call each way and a reply parse in both Redis and this process. Sent together they cost one of each. Every
script stays its own atomic ``EVALSHA``, with its own reply or error for its caller: only the round trip is shared.
A caller that gives up (is cancelled) before its batch is written is left out of it.

Batching waits for the end of the turn, so a script called while nothing is on its way to Redis goes at once: a
lone flow's steps pay no extra turn of the loop, and scripts called while it is in flight share the next trip;
but sixteen of them go as soon as they are there, so that Redis runs them while the turn goes on.

The commands are packed by hiredis (a dependency of this package) in C: redis-py's own packing is pure Python, and
a commit has a score of arguments. They go on one connection of the client's pool, checked out once and kept: its
socket is read by a protocol of its own, which parses the replies as they arrive and hands each batch its replies
in the order the batches were written. No task waits on the socket and no connection is checked out per trip
(together about a fifth of a worker's CPU for a lone flow). Redis answers one connection's commands in order, so
batches written while others are on their way simply follow them. When the connection breaks, every batch on it
gets the error, and the next one connects again; closing the pool closes it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

import hiredis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, DefaultParser
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError

__all__ = ["ScriptBatcher", "pack"]

_Arg = str | bytes | int
_Script = tuple[AsyncScript, Sequence[str], Sequence[_Arg]]
_Parse = Callable[[Any], Any]
# One command called: packed, the script it runs (to load it if Redis does not have it), its future, what makes the
# reply the future's result (None: the reply itself), and the caller's waiter, settled with it (None: no other).
_Call = tuple[bytes, _Script | None, "asyncio.Future[Any]", _Parse | None, "asyncio.Future[Any] | None"]


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


# Given str, bytes or int hiredis writes what _pack_python does. (Its stub types the tuple as one of one item.)
pack = cast(Callable[[tuple[_Arg, ...]], bytes], hiredis.pack_command)


# redis-py before 5.3 wants a command's name to check a connection out of the pool; 5.3 deprecates it.
_NAMED_CHECKOUT = (
    inspect.signature(ConnectionPool.get_connection).parameters["command_name"].default is inspect.Parameter.empty
)
_MORE = object()  # what hiredis returns while a reply is incomplete
# Calls gathered while others are on their way are written once this many wait, without waiting for the turn to
# end: Redis runs them while this process goes on with the turn (a worker's turn that hands a hundred replies to
# their flows makes a hundred commits). Measured: 8 to 32 alike, a sixth more flows/s than one write per turn.
_FLUSH_AT = 16
_Done = Callable[["list[Any] | BaseException"], None]


class _Pipe(asyncio.Protocol):
    """One connection to Redis, pipelined: each write is a batch of commands, and each batch's callback gets its
    replies (an error reply as the exception redis-py would raise) once they have all come, in the order written."""

    def __init__(self, connection: AbstractConnection, transport: asyncio.Transport) -> None:
        self.connection = connection
        self.open = True
        self._transport = transport
        self._stream = transport.get_protocol()  # redis-py's, told when the connection ends (its close waits for it)
        options: dict[str, Any] = {
            "protocolError": InvalidResponse,
            "replyError": DefaultParser.parse_error,
            "notEnoughData": _MORE,
        }
        encoder = connection.encoder
        if encoder.decode_responses:
            options["encoding"] = encoder.encoding
            options["errors"] = encoder.encoding_errors
        self._reader = hiredis.Reader(**options)
        self._waiting: deque[tuple[int, _Done]] = deque()
        self._replies: list[Any] = []

    @property
    def busy(self) -> bool:
        """Whether replies are awaited."""
        return bool(self._waiting)

    def write(self, data: bytes, count: int, done: _Done) -> None:
        """Writes ``count`` packed commands; ``done`` gets their replies, or the error that broke the connection."""
        self._waiting.append((count, done))
        self._transport.write(data)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not _MORE:
                replies = self._replies
                replies.append(reply)
                count, done = self._waiting[0]
                if len(replies) == count:
                    self._waiting.popleft()
                    self._replies = []
                    done(replies)
        except (InvalidResponse, IndexError):  # garbage, or a reply nobody asked for: this connection is lost
            self._transport.close()

    def eof_received(self) -> bool:
        return False  # closes the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._stream.connection_lost(exc)
        error = RedisConnectionError(
            "Connection closed by server." if exc is None else f"Error while reading from Redis: {exc}"
        )
        waiting, self._waiting = self._waiting, deque()
        for _, done in waiting:
            done(error)


class ScriptBatcher:
    """Runs Lua scripts (and plain commands) on ``redis``, those called in one turn of the event loop in one
    pipeline."""

    __slots__ = ("_connecting", "_pending", "_pipe", "_redis", "_tasks")

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pending: list[_Call] = []
        self._pipe: _Pipe | None = None
        self._connecting: asyncio.Future[_Pipe] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # connecting, or loading scripts Redis did not have

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[_Arg]) -> Any:
        """Runs ``script`` with ``keys`` and ``args``; returns its reply, or raises what Redis answered."""
        return await self._enqueue(_evalsha(script, keys, args), (script, keys, args), None, None)

    async def command(self, *args: _Arg) -> Any:
        """Runs one command whose reply redis-py would hand over as it came (``HGET``, ``HMGET``: no parsing)."""
        return await self._enqueue(pack(args), None, None, None)

    def submit(
        self,
        script: AsyncScript,
        keys: Sequence[str],
        args: Sequence[_Arg],
        parse: _Parse | None = None,
        waiter: asyncio.Future[Any] | None = None,
    ) -> asyncio.Future[Any]:
        """Sends ``script`` with the others called in this turn of the loop (at once if none is on its way) and
        returns the future of its reply, passed through ``parse``. The future is settled whether or not anyone
        still waits for it (a callback on it runs once the script ran); cancelling it before it is written (at the
        end of the turn, or once sixteen wait) leaves the script out.

        ``waiter`` gets the same outcome at the same moment. A caller that awaits it rather than the future can be
        cancelled without cancelling the script, and wakes in the turn after the reply: ``asyncio.shield`` would
        pass the outcome on through a callback of its own, a turn of the loop later."""
        return self._enqueue(_evalsha(script, keys, args), (script, keys, args), parse, waiter)

    def _enqueue(
        self, packed: bytes, script: _Script | None, parse: _Parse | None, waiter: asyncio.Future[Any] | None
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        call = (packed, script, future, parse, waiter)
        pipe = self._pipe
        if not self._pending and pipe is not None and pipe.open and not pipe.busy:
            self._write(pipe, [call])  # nothing on its way: at once
        else:
            pending = self._pending
            if not pending:
                loop.call_soon(self._flush)
            pending.append(call)
            if len(pending) >= _FLUSH_AT and pipe is not None and pipe.open:
                self._flush()  # Redis starts on these while this turn goes on
        return future

    def _flush(self) -> None:
        batch = [call for call in self._pending if not call[2].done()]
        self._pending = []
        if not batch:
            return
        pipe = self._pipe
        if pipe is not None and pipe.open:
            self._write(pipe, batch)
        else:
            self._spawn(self._connect_and_write(batch))

    def _write(self, pipe: _Pipe, batch: list[_Call]) -> None:
        pipe.write(b"".join([call[0] for call in batch]), len(batch), functools.partial(self._deliver, batch))

    def _deliver(self, batch: list[_Call], replies: list[Any] | BaseException) -> None:
        if isinstance(replies, BaseException):  # the connection broke: every caller in the batch gets the error
            _fail(batch, replies)
            return
        unloaded: list[_Call] = []
        for call, reply in zip(batch, replies, strict=True):
            _, script, future, parse, waiter = call
            if isinstance(reply, NoScriptError) and script is not None:
                unloaded.append(call)
            else:
                _settle(future, reply, parse, waiter)
        if unloaded:
            self._spawn(self._load_and_run(unloaded))

    async def _load_and_run(self, calls: list[_Call]) -> None:
        # Not loaded (after a Redis restart or SCRIPT FLUSH): AsyncScript loads each and runs it again.
        for _, script, future, parse, waiter in calls:
            assert script is not None
            run, keys, args = script
            try:
                reply = await run(keys=list(keys), args=list(args))
            except Exception as error:
                reply = error
            _settle(future, reply, parse, waiter)

    async def _connect_and_write(self, batch: list[_Call]) -> None:
        try:
            pipe = await self._connected()
        except asyncio.CancelledError:
            for call in batch:
                call[2].cancel()
                if call[4] is not None:
                    call[4].cancel()
            raise
        except Exception as error:  # Redis unreachable, say
            _fail(batch, error)
            return
        batch = [call for call in batch if not call[2].done()]
        if batch:
            self._write(pipe, batch)

    async def _connected(self) -> _Pipe:
        """The open pipe, connecting it first if need be (once for every batch waiting for it)."""
        pipe = self._pipe
        if pipe is not None and pipe.open:
            return pipe
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _Pipe:
        pool = self._redis.connection_pool
        broken, self._pipe = self._pipe, None
        if broken is not None:  # hand the lost connection back, closed
            await broken.connection.disconnect(nowait=True)
            await pool.release(broken.connection)
        connection: AbstractConnection = await (
            pool.get_connection("EVALSHA") if _NAMED_CHECKOUT else pool.get_connection()
        )
        # redis-py connected it (TLS, authentication, database); from now on its socket is read by the pipe. (Its
        # stream writer is a private attribute of redis-py 5, the major version this package requires.)
        writer = connection._writer
        if writer is None or writer.transport.is_closing():
            await pool.release(connection)
            raise RedisConnectionError("Redis closed the connection before its first command")
        pipe = _Pipe(connection, cast(asyncio.Transport, writer.transport))
        writer.transport.set_protocol(pipe)
        self._pipe = pipe
        return pipe

    async def close(self) -> None:
        """Closes the connection, if open, and hands it back to the pool: a command still on its way (a blocking
        one, say) ends there, with a connection error for whoever still awaits it."""
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            await pipe.connection.disconnect(nowait=True)
            await self._redis.connection_pool.release(pipe.connection)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _evalsha(script: AsyncScript, keys: Sequence[str], args: Sequence[_Arg]) -> bytes:
    return pack(("EVALSHA", script.sha, len(keys), *keys, *args))


def _settle(future: asyncio.Future[Any], reply: Any, parse: _Parse | None, waiter: asyncio.Future[Any] | None) -> None:
    if future.done():
        return  # its caller gave up
    if parse is not None and not isinstance(reply, Exception):
        try:
            reply = parse(reply)
        except Exception as error:
            reply = error
    for each in (future, waiter):
        if each is None or each.done():
            continue  # no waiter, or it was cancelled
        if isinstance(reply, Exception):
            each.set_exception(reply)
        else:
            each.set_result(reply)


def _fail(batch: list[_Call], error: BaseException) -> None:
    for call in batch:
        for each in (call[2], call[4]):
            if each is not None and not each.done():
                each.set_exception(error)
