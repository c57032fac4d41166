"""A handler's traceback as text, as ``traceback.format_exception`` writes it, but without the carets.

Every failed attempt records its traceback, so that another process can show it. The standard library's own
formatting finds each frame's exact position by walking its code object's positions, and marks the failing
expression with carets by parsing the line with :mod:`ast`: 165 µs for a three-frame traceback, more than the rest
of a failing step. Without carets the text is the same (file, line, function and source line of each frame,
repeated frames folded, the chain of causes and contexts) for about a twentieth of that. Exception groups, rare,
are still written by the standard library.
"""

from __future__ import annotations

import linecache
import traceback
from types import TracebackType

__all__ = ["traceback_text"]

_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"
_RECURSIVE_CUTOFF = 3  # frames repeated more than this are folded into one line, as the standard library does


def traceback_text(error: BaseException) -> str:
    """``error``'s traceback and those of its causes and contexts, oldest first, without carets."""
    chain: list[tuple[BaseException, str]] = []  # each exception, and what leads from it to the one after
    seen: set[int] = set()
    current: BaseException | None = error
    link = ""
    while current is not None and id(current) not in seen:
        if isinstance(current, BaseExceptionGroup):
            return "".join(traceback.format_exception(error))
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, _CONTEXT
        else:
            current = None
    out: list[str] = []
    for index in range(len(chain) - 1, -1, -1):
        exc = chain[index][0]
        if exc.__traceback__ is not None:
            out.append("Traceback (most recent call last):\n")
            _frames(exc.__traceback__, out)
        out += traceback.format_exception_only(type(exc), exc)
        if index:
            out.append(chain[index][1])
    return "".join(out)


def _frames(tb: TracebackType | None, out: list[str]) -> None:
    last: tuple[str, int | None, str] | None = None
    count = 0
    while tb is not None:
        frame = tb.tb_frame
        code = frame.f_code
        where = (code.co_filename, tb.tb_lineno, code.co_name)
        tb = tb.tb_next
        if where != last:
            _repeated(count, out)
            last, count = where, 0
        count += 1
        if count > _RECURSIVE_CUTOFF:
            continue
        filename, lineno, name = where
        out.append(f'  File "{filename}", line {lineno}, in {name}\n')
        linecache.lazycache(filename, frame.f_globals)
        line = linecache.getline(filename, lineno).strip() if lineno is not None else ""
        if line:
            out.append(f"    {line}\n")
    _repeated(count, out)


def _repeated(count: int, out: list[str]) -> None:
    if count > _RECURSIVE_CUTOFF:
        more = count - _RECURSIVE_CUTOFF
        out.append(f"  [Previous line repeated {more} more time{'s' if more > 1 else ''}]\n")
