"""What a step handler, rollback, callback or condition is given: the flow's data, earlier results, a bound
logger, an idempotency key, and a way to report progress."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from plait.core import telemetry

__all__ = ["Reporter", "StepContext", "WorkflowContext", "idempotency_key"]

D_co = TypeVar("D_co", bound=BaseModel, covariant=True)
M = TypeVar("M", bound=BaseModel)

Reporter = Callable[["str | None", "int | None", float, "str | None"], Awaitable[None]]
"""Where ``ctx.progress()`` goes, as ``(step, index, fraction, message)``: the provider records it for the flow (or
a test records the calls)."""

_logger = logging.getLogger("plait.workflow")


class _FlowLogger(logging.LoggerAdapter[logging.Logger]):
    """Adds the flow's identity to every record, both as ``extra`` fields and as a readable prefix."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(telemetry.current_ids())
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        where = extra["workflow"] if extra.get("step") is None else f"{extra['workflow']}.{extra['step']}"
        if extra.get("index") is not None:
            where = f"{where}[{extra['index']}]"
        return f"[{where} {extra['flow_id']}] {msg}", kwargs


class WorkflowContext(Generic[D_co]):
    """What ``on_complete``, ``on_error`` and a definition's conditions see: the flow's identity, data and results.

    Attributes:
        flow_id: the flow's id.
        workflow: the workflow's name.
        data: the validated input model.
        results: read-only mapping of node name to its validated result: a step's output model, a signal's
            payload model, a sub-workflow's result model, or a for-each's list of item output models. Skipped
            nodes have no entry.
        meta: propagated metadata (correlation and trace ids).
        correlation_id: ``meta["correlation_id"]``, else the flow id.
        provider_id: which provider instance runs this code.
        kind: what runs: ``"step"``, ``"rollback"``, ``"on_complete"``, ``"on_error"`` or ``"condition"``.
    """

    __slots__ = (
        "_log",
        "_reporter",
        "correlation_id",
        "data",
        "flow_id",
        "kind",
        "meta",
        "provider_id",
        "results",
        "workflow",
    )

    # Not keyword-only: the runner builds one per handler run, and passes the arguments by position, which costs
    # half as much as by keyword.
    def __init__(
        self,
        flow_id: str,
        workflow: str,
        data: D_co,
        results: Mapping[str, Any],
        meta: Mapping[str, str],
        provider_id: str,
        kind: str = "on_complete",
        reporter: Reporter | None = None,
    ) -> None:
        self.flow_id = flow_id
        self.kind = kind
        self.workflow = workflow
        self.data = data
        # Read-only views, not copies: providers hand over a fresh results dict and never mutate meta.
        self.results: Mapping[str, Any] = MappingProxyType(results)
        self.meta: Mapping[str, str] = MappingProxyType(meta)
        self.correlation_id: str = meta.get("correlation_id") or flow_id
        self.provider_id = provider_id
        self._log: logging.LoggerAdapter[logging.Logger] | None = None
        self._reporter = reporter

    @property
    def step_name(self) -> str | None:
        """``None`` here; the step's name in a :class:`StepContext`."""
        return None

    @property
    def index(self) -> int | None:
        """``None`` here; a for-each item's index in a :class:`StepContext`."""
        return None

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger bound to flow id, workflow, step, item index, correlation id and provider id."""
        if self._log is None:
            self._log = _FlowLogger(
                _logger,
                {
                    "flow_id": self.flow_id,
                    "workflow": self.workflow,
                    "step": self.step_name,
                    "index": self.index,
                    "correlation_id": self.correlation_id,
                    "provider_id": self.provider_id,
                },
            )
        return self._log

    @property
    def idempotency_key(self) -> str:
        """A key to hand to external APIs so that a re-run of this handler is deduplicated there.

        It is the same for every attempt of the same handler of the same flow, in every process (a step re-run
        after a crash gets the key its first run had), and differs between handlers: a step's execute and its
        rollback, each step, each for-each item. 32 hex digits.
        """
        return idempotency_key(self.flow_id, self.kind, self.step_name, self.index)

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Reports how far the flow has got: ``fraction`` in [0, 1] and an optional message.

        The latest report shows in ``describe()``, and each one is a ``progress`` event of the flow.

        Raises:
            ValueError: ``fraction`` is not a number from 0 to 1.
        """
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
            raise ValueError(f"progress() takes a fraction from 0 to 1, got {fraction!r}")
        if message is not None and not isinstance(message, str):
            raise ValueError(f"progress() takes a str message, got {type(message).__name__}")
        if self._reporter is not None:
            await self._reporter(self.step_name, self.index, float(fraction), message)

    def result(self, step: str, model: type[M]) -> M:
        """Returns node ``step``'s result typed as ``model``.

        Raises:
            KeyError: that node has not completed (or was skipped, or is not visible from here).
            TypeError: its result is not a ``model``.
        """
        value = self.results[step]
        if not isinstance(value, model):
            raise TypeError(f"Result of step '{step}' is a {type(value).__name__}, not a {model.__name__}")
        return value

    def results_of(self, step: str, model: type[M]) -> list[M]:
        """Returns for-each ``step``'s result, the list of its items' outputs, typed as ``list[model]``.

        Raises:
            KeyError: that node has not completed (or was skipped, or is not visible from here).
            TypeError: its result is not a list of ``model``.
        """
        value = self.results[step]
        if not isinstance(value, list) or not all(isinstance(v, model) for v in value):
            raise TypeError(f"Result of step '{step}' is not a list of {model.__name__}")
        return value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(flow_id={self.flow_id!r}, workflow={self.workflow!r})"


class StepContext(WorkflowContext[D_co]):
    """What a step's ``execute`` and ``rollback`` see: a :class:`WorkflowContext` plus the step and attempt.

    Attributes:
        step_name: the step being run (or rolled back).
        attempt: 1 for the first try, then 2, 3, ...
        item: a for-each's item (its recorded JSON value); ``None`` for other steps.
        index: a for-each item's index; ``None`` for other steps.
        output: in a rollback, the output of the step (or item) being rolled back; ``None`` in ``execute`` and
            when rolling back a step that failed (``rollback_if_failed``).
    """

    __slots__ = ("_index", "_step_name", "attempt", "item", "output")

    def __init__(
        self,
        flow_id: str,
        workflow: str,
        data: D_co,
        results: Mapping[str, Any],
        meta: Mapping[str, str],
        provider_id: str,
        step_name: str,
        attempt: int,
        kind: str = "step",
        item: Any = None,
        index: int | None = None,
        output: BaseModel | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        WorkflowContext.__init__(self, flow_id, workflow, data, results, meta, provider_id, kind, reporter)
        self._step_name = step_name
        self.attempt = attempt
        self.item = item
        self._index = index
        self.output = output

    @property
    def step_name(self) -> str:
        """The step being run (or rolled back)."""
        return self._step_name

    @property
    def index(self) -> int | None:
        """A for-each item's index (``None`` for other steps)."""
        return self._index


def idempotency_key(flow_id: str, kind: str, step: str | None, index: int | None = None) -> str:
    """The idempotency key of one handler of one flow (see :attr:`WorkflowContext.idempotency_key`)."""
    # A JSON array, not a joined string: no flow id can be crafted to collide with another flow's keys.
    identity = json.dumps([flow_id, kind, step, index], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(identity.encode()).hexdigest()[:32]
