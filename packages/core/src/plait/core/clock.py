"""Time as a provider sees it: now, timers, and sleeping; real by default, virtual in tests.

The in-process provider reads the time and arms its timers (sleeps, signal timeouts, retry backoff, flow
deadlines) through a :class:`Clock`, so that a test can give it ``plait.testing.VirtualClock``, which jumps to the
next timer whenever every flow is idle, and a 48-hour timeout takes milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "SystemClock", "Timer"]


class Timer(Protocol):
    """A timer a clock armed; ``cancel()`` disarms it."""

    def cancel(self) -> None:
        """Disarms the timer (a no-op once it fired)."""
        ...


class Clock(Protocol):
    """What a provider needs of time."""

    def time(self) -> float:
        """Now, in seconds since the epoch."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Calls ``callback`` (on the event loop) after ``delay`` seconds."""
        ...

    async def sleep(self, delay: float) -> None:
        """Waits ``delay`` seconds."""
        ...

    def attach(self, is_idle: Callable[[], bool]) -> None:
        """Tells the clock how to ask its provider whether every flow is idle (no handler running)."""
        ...

    def idle(self) -> None:
        """The provider just became idle: a virtual clock may move on to its next timer."""
        ...


class SystemClock:
    """The real clock: wall time from :func:`time.time`, timers and sleeps on the running event loop."""

    def time(self) -> float:
        """Now, in seconds since the epoch."""
        return time.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Calls ``callback`` on the running event loop after ``delay`` seconds."""
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)

    async def sleep(self, delay: float) -> None:
        """Waits ``delay`` seconds."""
        await asyncio.sleep(delay)

    def attach(self, is_idle: Callable[[], bool]) -> None:
        """Real time needs no idea of idleness."""

    def idle(self) -> None:
        """Real time goes on regardless."""

    def __repr__(self) -> str:
        return "SystemClock()"
