"""A griffe extension for the API reference: turns the reST markup of Plait's docstrings into Markdown.

Docstrings name other objects the Sphinx way (``:class:`StepHandler```, ``:meth:`~Engine.handle```) and end a
paragraph with ``::`` before an indented example; mkdocstrings renders Markdown, where both would show verbatim.
Roles become code spans (with ``~``, only the last part of the name), and a trailing ``::`` a single colon. An
argument line that documents several parameters at once (``a, b: what they are``) becomes one line per parameter,
which is what the Google style's parser expects.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

__all__ = ["SphinxRoles"]

_ROLE = re.compile(r":(?:class|meth|func|mod|data|attr|exc|obj):`(~?)([^`]+)`")
_LITERAL = re.compile(r"::$", re.MULTILINE)
_SHARED_ARGS = re.compile(r"^(?P<indent>[ ]+)(?P<names>\w+(?:, \w+)+): (?P<text>.*)$", re.MULTILINE)


def _markdown(text: str) -> str:
    def code(match: re.Match[str]) -> str:
        short, target = match.groups()
        return f"`{target.rsplit('.', 1)[-1] if short else target}`"

    def one_per_line(match: re.Match[str]) -> str:
        indent, text = match["indent"], match["text"]
        return "\n".join(f"{indent}{name}: {text}" for name in match["names"].split(", "))

    return _SHARED_ARGS.sub(one_per_line, _LITERAL.sub(":", _ROLE.sub(code, text)))


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrites ``obj``'s docstring, if it has one."""
        if obj.docstring is not None:
            obj.docstring.value = _markdown(obj.docstring.value)
