"""Virtual time for tests: a clock that jumps to its next timer whenever nothing runs."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable

__all__ = ["VirtualClock"]

# How often a loop without a visible ready queue (not CPython's asyncio) is given a turn before time moves.
_BOUNCES = 20


class _VirtualTimer:
    """A timer of a :class:`VirtualClock`; ordered by due time, then by arming order."""

    __slots__ = ("callback", "clock", "seq", "when")

    def __init__(self, when: float, seq: int, callback: Callable[[], None] | None, clock: VirtualClock) -> None:
        self.when = when
        self.seq = seq
        self.callback = callback
        self.clock = clock

    def __lt__(self, other: _VirtualTimer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def cancel(self) -> None:
        """Disarms the timer (a no-op once it fired)."""
        if self.callback is not None:
            self.callback = None
            self.clock._armed -= 1

    def __repr__(self) -> str:
        state = "cancelled or fired" if self.callback is None else "armed"
        return f"<VirtualTimer at {self.when:.3f} {state}>"


class VirtualClock:
    """A :class:`~plait.core.clock.Clock` whose time stands still while anything runs and jumps when nothing does.

    Give it to an in-process provider, ``InProcessWorkflowProvider(clock=VirtualClock())``, and sleeps, signal
    timeouts, retry backoff and workflow timeouts happen at once and in order: whenever the provider runs no
    handler and the event loop has run every callback that was ready, time jumps to the next timer and fires it.
    A handler that awaits real I/O (a socket, ``asyncio.sleep``) keeps the clock still until it returns, so real
    work is never overtaken. Step timeouts (``step_timeout``) stay real time.

    Time also moves while the test itself awaits something the provider does not know about (a real
    ``asyncio.sleep`` in the test): send a signal before awaiting anything else, or set ``auto_advance=False``
    and move time yourself with :meth:`advance`::

        clock = VirtualClock(auto_advance=False)
        provider = InProcessWorkflowProvider(clock=clock)
        ...
        await clock.advance(3600)          # an hour passes; the timers due meanwhile fire in order

    Args:
        start: the time it starts at, in seconds since the epoch; now by default.
        auto_advance: jump to the next timer whenever every provider is idle.
    """

    def __init__(self, start: float | None = None, *, auto_advance: bool = True) -> None:
        self._now = time.time() if start is None else float(start)
        self._auto = auto_advance
        self._timers: list[_VirtualTimer] = []
        self._armed = 0
        self._seq = itertools.count()
        self._idle_checks: list[Callable[[], bool]] = []
        self._check: asyncio.Handle | None = None
        self._bounces = 0
        self._advancing = False
        self._became_idle: asyncio.Event | None = None

    # -- the Clock protocol --

    def time(self) -> float:
        """Now, in virtual seconds since the epoch."""
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _VirtualTimer:
        """Calls ``callback`` on the event loop once virtual time has moved ``delay`` seconds on."""
        timer = _VirtualTimer(self._now + max(0.0, delay), next(self._seq), callback, self)
        heapq.heappush(self._timers, timer)
        self._armed += 1
        self._poke()
        return timer

    async def sleep(self, delay: float) -> None:
        """Waits ``delay`` virtual seconds (no real time when nothing else runs)."""
        if delay <= 0:
            await asyncio.sleep(0)
            return
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)

        timer = self.call_later(delay, wake)
        try:
            await woken
        finally:
            timer.cancel()

    def attach(self, is_idle: Callable[[], bool]) -> None:
        """Adds a provider's idleness test: time moves only while every attached provider is idle."""
        self._idle_checks.append(is_idle)

    def idle(self) -> None:
        """A provider just became idle: time may move on once the event loop has nothing ready."""
        if self._became_idle is not None:
            self._became_idle.set()
        self._poke()

    # -- for tests --

    @property
    def auto_advance(self) -> bool:
        """Whether time jumps to the next timer by itself whenever everything is idle."""
        return self._auto

    @auto_advance.setter
    def auto_advance(self, value: bool) -> None:
        self._auto = value
        self._poke()

    @property
    def pending(self) -> int:
        """How many timers are armed."""
        return self._armed

    @property
    def next_at(self) -> float | None:
        """When the next armed timer is due, or ``None``."""
        timer = self._next()
        return None if timer is None else timer.when

    async def advance(self, seconds: float) -> None:
        """Moves time ``seconds`` on, firing the timers due meanwhile in order and letting what each one starts
        run until everything is idle again before the next one fires.

        Raises:
            ValueError: ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"advance() moves time forward, got {seconds!r} seconds")
        target = self._now + seconds
        self._advancing = True
        try:
            while True:
                await self._settle()
                timer = self._next()
                if timer is None or timer.when > target:
                    break
                self._fire(timer.when)
            self._now = max(self._now, target)
            await self._settle()
        finally:
            self._advancing = False
        self._poke()

    def __repr__(self) -> str:
        return f"VirtualClock(time={self._now:.3f}, pending={self._armed}, auto_advance={self._auto})"

    # -- moving time --

    def _is_idle(self) -> bool:
        return all(check() for check in self._idle_checks)

    def _next(self) -> _VirtualTimer | None:
        timers = self._timers
        while timers and timers[0].callback is None:
            heapq.heappop(timers)
        return timers[0] if timers else None

    def _fire(self, when: float) -> None:
        """Moves time to ``when`` and schedules the callbacks of every timer due then, in the order they were armed."""
        loop = asyncio.get_running_loop()
        self._now = max(self._now, when)
        timers = self._timers
        while timers and (timers[0].callback is None or timers[0].when <= self._now):
            timer = heapq.heappop(timers)
            callback = timer.callback
            if callback is not None:
                timer.cancel()
                loop.call_soon(callback)

    def _poke(self) -> None:
        """Looks, on a later turn of the loop, whether time may move."""
        if not self._auto or self._check is not None or self._advancing:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # armed outside a loop: the first turn of one will poke again
        self._bounces = 0
        self._check = loop.call_soon(self._maybe_advance)

    def _maybe_advance(self) -> None:
        self._check = None
        if not self._auto or self._advancing or not self._is_idle():
            return  # the provider calls idle() when its last handler returns
        loop = asyncio.get_running_loop()
        # Everything that was ready must run first: a task a timer just woke, a flow's next step about to start.
        ready = getattr(loop, "_ready", None)
        if (ready if ready is not None else self._bounces < _BOUNCES) and self._next() is not None:
            self._bounces += 1
            self._check = loop.call_soon(self._maybe_advance)
            return
        timer = self._next()
        if timer is None:
            return
        self._fire(timer.when)
        self._poke()  # look again once what the timer started has run

    async def _settle(self) -> None:
        """Returns once every attached provider is idle and the loop has run everything that was ready."""
        loop = asyncio.get_running_loop()
        bounces = 0
        while True:
            await asyncio.sleep(0)
            if not self._is_idle():
                self._became_idle = event = asyncio.Event()
                if not self._is_idle():
                    await event.wait()
                self._became_idle = None
                bounces = 0
                continue
            ready = getattr(loop, "_ready", None)
            if ready if ready is not None else bounces < _BOUNCES:
                bounces += 1
                continue
            return
