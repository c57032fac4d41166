"""Which event loop a process Plait starts runs on: uvloop's when it is installed, else asyncio's.

``Application.listen()`` and ``plait worker`` start their own event loop. Most of what a busy Plait process does
itself is the event loop's work (waking tasks, writing and reading connections), and uvloop's does it in fewer
instructions, so they take it when it is there (uvicorn's own default does the same). ``plait-providers-arq``
installs it; ``plait-core`` alone does not need it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

__all__ = ["LoopChoice", "loop_factory", "run"]

T = TypeVar("T")

LoopChoice = Literal["auto", "uvloop", "asyncio"]
"""``auto``: uvloop's when it is installed, else asyncio's; ``uvloop``: uvloop's or an error; ``asyncio``: asyncio's."""


def loop_factory(choice: LoopChoice = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the event loop ``choice`` asks for (``None``: asyncio's own).

    Raises:
        ValueError: ``uvloop`` was asked for and is not installed, or ``choice`` is none of the three.
    """
    if choice not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"The event loop must be 'auto', 'uvloop' or 'asyncio', got {choice!r}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError("uvloop is not installed (pip install uvloop)") from None
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: LoopChoice = "auto") -> T:
    """Runs ``main`` to its end on a new event loop of ``choice`` (as ``asyncio.run`` does on asyncio's)."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)
