"""What a step handler, rollback or callback is given: the flow's data, earlier results, a bound logger."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, MutableMapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

__all__ = ["StepContext", "WorkflowContext", "idempotency_key"]

D_co = TypeVar("D_co", bound=BaseModel, covariant=True)
M = TypeVar("M", bound=BaseModel)

_logger = logging.getLogger("plait.workflow")


class _FlowLogger(logging.LoggerAdapter[logging.Logger]):
    """Adds the flow's identity to every record, both as ``extra`` fields and as a readable prefix."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        where = extra["workflow"] if extra.get("step") is None else f"{extra['workflow']}.{extra['step']}"
        return f"[{where} {extra['flow_id']}] {msg}", kwargs


class WorkflowContext(Generic[D_co]):
    """What ``on_complete``, ``on_error`` see: the flow's identity, data and every completed result.

    Attributes:
        flow_id: the flow's id.
        workflow: the workflow's name.
        data: the validated input model.
        results: read-only mapping of step name to that step's validated output model.
        meta: propagated metadata (correlation and trace ids).
        correlation_id: ``meta["correlation_id"]``, else the flow id.
        provider_id: which provider instance runs this code.
        kind: what runs: ``"step"``, ``"rollback"``, ``"on_complete"`` or ``"on_error"``.
    """

    __slots__ = ("_log", "correlation_id", "data", "flow_id", "kind", "meta", "provider_id", "results", "workflow")

    def __init__(
        self,
        *,
        flow_id: str,
        workflow: str,
        data: D_co,
        results: Mapping[str, BaseModel],
        meta: Mapping[str, str],
        provider_id: str,
        kind: str = "on_complete",
    ) -> None:
        self.flow_id = flow_id
        self.kind = kind
        self.workflow = workflow
        self.data = data
        # Read-only views, not copies: providers hand over a fresh results dict and never mutate meta.
        self.results: Mapping[str, BaseModel] = MappingProxyType(results)
        self.meta: Mapping[str, str] = MappingProxyType(meta)
        self.correlation_id: str = meta.get("correlation_id") or flow_id
        self.provider_id = provider_id
        self._log: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def step_name(self) -> str | None:
        """``None`` here; the step's name in a :class:`StepContext`."""
        return None

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger bound to flow id, workflow, step, correlation id and provider id."""
        if self._log is None:
            self._log = _FlowLogger(
                _logger,
                {
                    "flow_id": self.flow_id,
                    "workflow": self.workflow,
                    "step": self.step_name,
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
        return idempotency_key(self.flow_id, self.kind, self.step_name)

    def result(self, step: str, model: type[M]) -> M:
        """Returns step ``step``'s result typed as ``model``.

        Raises:
            KeyError: that step has not completed (or is not visible from here).
            TypeError: its result is not a ``model``.
        """
        value = self.results[step]
        if not isinstance(value, model):
            raise TypeError(f"Result of step '{step}' is a {type(value).__name__}, not a {model.__name__}")
        return value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(flow_id={self.flow_id!r}, workflow={self.workflow!r})"


class StepContext(WorkflowContext[D_co]):
    """What a step's ``execute`` and ``rollback`` see: a :class:`WorkflowContext` plus the step and attempt.

    Attributes:
        step_name: the step being run (or rolled back).
        attempt: 1 for the first try, then 2, 3, ...
    """

    __slots__ = ("_step_name", "attempt")

    def __init__(
        self,
        *,
        flow_id: str,
        workflow: str,
        data: D_co,
        results: Mapping[str, BaseModel],
        meta: Mapping[str, str],
        provider_id: str,
        step_name: str,
        attempt: int,
        kind: str = "step",
    ) -> None:
        super().__init__(
            flow_id=flow_id,
            workflow=workflow,
            data=data,
            results=results,
            meta=meta,
            provider_id=provider_id,
            kind=kind,
        )
        self._step_name = step_name
        self.attempt = attempt

    @property
    def step_name(self) -> str:
        """The step being run (or rolled back)."""
        return self._step_name


def idempotency_key(flow_id: str, kind: str, step: str | None, index: int | None = None) -> str:
    """The idempotency key of one handler of one flow (see :attr:`WorkflowContext.idempotency_key`)."""
    # A JSON array, not a joined string: no flow id can be crafted to collide with another flow's keys.
    identity = json.dumps([flow_id, kind, step, index], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(identity.encode()).hexdigest()[:32]
