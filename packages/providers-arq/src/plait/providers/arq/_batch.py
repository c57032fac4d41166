"""Scripts run in the same turn of the event loop go to Redis together, in one pipeline.

A worker running a hundred flows commits many of them at about the same moment; each commit on its own costs a
connection checkout, a system call each way and a reply parse in both Redis and this process. Sent together they
cost one of each. Every script stays its own atomic ``EVALSHA``, with its own reply or error for its caller: only
the round trip is shared. A caller that gives up (is cancelled) before its turn ends is left out of the batch.

Batching waits for the end of the turn, so a script called while nothing is on its way to Redis goes at once: a
lone flow's steps pay no extra turn of the loop, and scripts called while it is in flight share the next trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

__all__ = ["ScriptBatcher"]

_Call = tuple[AsyncScript, Sequence[str], Sequence[str | bytes | int], "asyncio.Future[Any]"]


class ScriptBatcher:
    """Runs Lua scripts on ``redis``, those called in one turn of the event loop in one pipeline."""

    __slots__ = ("_alone", "_pending", "_redis", "_sending")

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pending: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._alone = 0  # scripts on their way one by one

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[str | bytes | int]) -> Any:
        """Runs ``script`` with ``keys`` and ``args``; returns its reply, or raises what Redis answered."""
        if not (self._alone or self._sending or self._pending):
            self._alone += 1
            try:
                # AsyncScript sends EVALSHA and loads the script on NOSCRIPT (after a Redis restart or SCRIPT FLUSH).
                return await script(keys=list(keys), args=list(args))
            finally:
                self._alone -= 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((script, keys, args, future))
        return await future

    def _flush(self) -> None:
        batch = [call for call in self._pending if not call[3].done()]
        self._pending = []
        if batch:
            task = asyncio.create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            if len(batch) == 1:
                script, keys, args, future = batch[0]
                _settle(future, await script(keys=list(keys), args=list(args)))
                return
            async with self._redis.pipeline(transaction=False) as pipe:
                for script, keys, args, _ in batch:
                    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
            for (script, keys, args, future), reply in zip(batch, replies, strict=True):
                if isinstance(reply, NoScriptError):  # not loaded yet: one more round trip loads and runs it
                    try:
                        reply = await script(keys=list(keys), args=list(args))
                    except Exception as error:
                        reply = error
                _settle(future, reply)
        except asyncio.CancelledError:
            for *_, future in batch:
                future.cancel()
            raise
        except Exception as error:  # Redis unreachable, say: every caller in the batch gets the error
            for *_, future in batch:
                if not future.done():
                    future.set_exception(error)


def _settle(future: asyncio.Future[Any], reply: Any) -> None:
    if future.done():
        return
    if isinstance(reply, Exception):
        future.set_exception(reply)
    else:
        future.set_result(reply)
