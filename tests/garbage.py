"""Finding reference cycles: objects that only the garbage collector can free, whose full passes then walk them."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def plait_cycles() -> Iterator[list[str]]:
    """Yields a list that, once the block has run, names the types of Plait's objects the block left in
    reference cycles (empty when every one of them was freed by reference counting)."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    found: list[str] = []
    try:
        yield found
        gc.collect()
        found += sorted({type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("plait.")})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
