"""Objects for ``plait worker``'s loader: something to run, factories of it, and things it refuses."""

from __future__ import annotations


class Runnable:
    """Anything with ``async start()`` and ``async stop()``."""

    def __init__(self) -> None:
        self.running = False

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False


runnable = Runnable()


def factory() -> Runnable:
    return Runnable()


async def async_factory() -> Runnable:
    return Runnable()


def wrong_factory() -> int:
    return 42


class Namespace:
    nested = Runnable()


not_runnable = 42
