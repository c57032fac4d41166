"""Who may change what: the ``authorize(request, action, workflow)`` callback that guards every mutation.

Without one, the API is read-only: it lists and describes flows, streams their events and serves the inspector,
and answers every mutation with a 403. Reads are not guarded here: protect the mount point with your
application's own authentication when flows' results, errors or signals are not for everyone who can reach it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Literal, TypeAlias, get_args

from starlette.requests import Request

from plait.core.api.problems import ApiError

__all__ = ["ACTIONS", "Action", "Authorize", "Guard"]

Action = Literal["start", "signal", "cancel", "compensate", "retry", "retry_compensation"]
"""What a mutation does: start a flow, signal it, cancel it, undo it, start it again, finish its rollbacks."""

ACTIONS: tuple[Action, ...] = get_args(Action)

Authorize: TypeAlias = Callable[[Request, Action, str], bool | Awaitable[bool]]
"""``authorize(request, action, workflow)``: whether this request may do ``action`` to a flow of ``workflow``
(sync or async). Only ``True`` allows; anything else answers 403."""


class Guard:
    """Applies an ``authorize`` callback (none: read-only)."""

    def __init__(self, authorize: Authorize | None) -> None:
        if authorize is not None and not callable(authorize):
            raise TypeError(f"authorize must be a function (request, action, workflow) -> bool, got {authorize!r}")
        self._authorize = authorize

    @property
    def read_only(self) -> bool:
        """Whether the API refuses every mutation (no ``authorize`` was given)."""
        return self._authorize is None

    async def allows(self, request: Request, action: Action, workflow: str) -> bool:
        """Whether ``authorize`` allows ``action`` on ``workflow`` for ``request``."""
        if self._authorize is None:
            return False
        verdict = self._authorize(request, action, workflow)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return verdict is True

    def check_writable(self) -> None:
        """Refuses at once when the API is read-only, before anything is looked up.

        Raises:
            ApiError: 403 ``read_only``.
        """
        if self._authorize is None:
            raise ApiError(
                403,
                "read_only",
                "This workflows API is read-only: pass authorize= to workflows_api() to allow changes",
            )

    async def require(self, request: Request, action: Action, workflow: str) -> None:
        """Refuses unless ``authorize`` allows ``action`` on ``workflow``.

        Raises:
            ApiError: 403 ``read_only`` without ``authorize``, 403 ``forbidden`` when it says no.
        """
        self.check_writable()
        if not await self.allows(request, action, workflow):
            raise ApiError(
                403,
                "forbidden",
                f"Not allowed to {action.replace('_', ' ')} flows of workflow '{workflow}'",
                action=action,
                workflow=workflow,
            )
