"""Real step and workflow contexts for unit-testing handlers without a provider, recording their progress."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Literal, NamedTuple, TypeVar

import pydantic_core
from pydantic import BaseModel

from plait.core import StepContext, WorkflowContext
from plait.core.context import Reporter

__all__ = ["ProgressCall", "create_mock_step_context", "create_mock_workflow_context"]

D = TypeVar("D", bound=BaseModel)


class ProgressCall(NamedTuple):
    """One ``await ctx.progress(fraction, message)`` a handler made."""

    fraction: float
    message: str | None = None


def create_mock_step_context(
    data: D,
    results: Mapping[str, BaseModel | list[BaseModel]] | None = None,
    *,
    flow_id: str | None = None,
    workflow: str = "test-workflow",
    step_name: str = "test-step",
    attempt: int = 1,
    meta: Mapping[str, str] | None = None,
    provider_id: str = "test",
    kind: Literal["step", "rollback"] = "step",
    item: object = None,
    index: int | None = None,
    output: BaseModel | None = None,
    progress: list[ProgressCall] | None = None,
) -> StepContext[D]:
    """Builds the :class:`StepContext` a provider would pass to a step's ``execute`` or ``rollback``.

    The context is a real one: ``ctx.idempotency_key`` is derived as a provider derives it (from the flow id,
    ``kind``, the step and the item index), and ``await ctx.progress(...)`` checks its arguments as a provider's
    does, and is appended to ``progress`` when given. For a for-each item, pass ``item`` and ``index``::

        progress: list[ProgressCall] = []
        ctx = create_mock_step_context(
            Signup(email="a@b.c"), step_name="invite", item="ada@b.c", index=0, progress=progress
        )
        assert (await consumer.invite(ctx)).sent_to == "ada@b.c"
        assert progress == [(1.0, "invited")]

    Args:
        data: the flow's input model.
        results: node name -> result of the nodes this one may see: an output model, or a for-each's list of them.
        flow_id: the flow's id; a fresh ``flow-test-...`` id by default.
        workflow: the workflow's name.
        step_name: the step being run (or rolled back).
        attempt: the 1-based attempt number.
        meta: propagated metadata, e.g. ``{"correlation_id": "req-1"}``.
        provider_id: the provider id shown in the context and its logger.
        kind: ``"step"`` for ``execute``, ``"rollback"`` for ``rollback`` (the idempotency keys differ).
        item: a for-each item, turned into JSON as a provider records it (a model item arrives as a dict).
        index: a for-each item's 0-based index.
        output: in a rollback, the output of the step (or item) being rolled back; ``None`` when rolling back a
            step that failed (``rollback_if_failed``).
        progress: a list each ``await ctx.progress(fraction, message)`` appends a :class:`ProgressCall` to.

    Raises:
        TypeError: ``data``, a result or ``output`` is not a pydantic model instance.
        ValueError: ``attempt`` is below 1, ``index`` is negative, or ``kind`` is neither ``"step"`` nor
            ``"rollback"``.
    """
    _check(data, results)
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt!r}")
    if kind not in ("step", "rollback"):
        raise ValueError(f"kind is 'step' or 'rollback', got {kind!r}")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
        raise ValueError(f"index is a for-each item's 0-based index, got {index!r}")
    if output is not None and not isinstance(output, BaseModel):
        raise TypeError(f"output must be a pydantic model instance, got {type(output).__name__}")
    return StepContext(
        flow_id=flow_id or _flow_id(),
        workflow=workflow,
        data=data,
        results=dict(results or {}),
        meta=dict(meta or {}),
        provider_id=provider_id,
        step_name=step_name,
        attempt=attempt,
        kind=kind,
        # A provider records a for-each's items as JSON and hands each handler its recorded value.
        item=None if item is None else pydantic_core.to_jsonable_python(item),
        index=index,
        output=output,
        reporter=_recorder(progress),
    )


def create_mock_workflow_context(
    data: D,
    results: Mapping[str, BaseModel | list[BaseModel]] | None = None,
    *,
    flow_id: str | None = None,
    workflow: str = "test-workflow",
    meta: Mapping[str, str] | None = None,
    provider_id: str = "test",
    kind: Literal["on_complete", "on_error"] = "on_complete",
    progress: list[ProgressCall] | None = None,
) -> WorkflowContext[D]:
    """Builds the :class:`WorkflowContext` a provider would pass to ``on_complete`` or ``on_error``.

    ``await ctx.progress(...)`` checks its arguments as a provider's does, and is appended to ``progress`` when
    given.

    Args:
        data: the flow's input model.
        results: node name -> result of every completed node: an output model, or a for-each's list of them.
        flow_id: the flow's id; a fresh ``flow-test-...`` id by default.
        workflow: the workflow's name.
        meta: propagated metadata, e.g. ``{"correlation_id": "req-1"}``.
        provider_id: the provider id shown in the context and its logger.
        kind: ``"on_complete"`` or ``"on_error"``: which callback runs (its idempotency key depends on it).
        progress: a list each ``await ctx.progress(fraction, message)`` appends a :class:`ProgressCall` to.

    Raises:
        TypeError: ``data`` or a result is not a pydantic model instance.
        ValueError: ``kind`` is neither ``"on_complete"`` nor ``"on_error"``.
    """
    _check(data, results)
    if kind not in ("on_complete", "on_error"):
        raise ValueError(f"kind is 'on_complete' or 'on_error', got {kind!r}")
    return WorkflowContext(
        flow_id=flow_id or _flow_id(),
        workflow=workflow,
        data=data,
        results=dict(results or {}),
        meta=dict(meta or {}),
        provider_id=provider_id,
        kind=kind,
        reporter=_recorder(progress),
    )


def _recorder(progress: list[ProgressCall] | None) -> Reporter | None:
    if progress is None:
        return None
    if not isinstance(progress, list):
        raise TypeError(f"progress must be a list to append ProgressCall tuples to, got {type(progress).__name__}")

    async def record(step: str | None, index: int | None, fraction: float, message: str | None) -> None:
        progress.append(ProgressCall(fraction, message))

    return record


def _flow_id() -> str:
    return f"flow-test-{uuid.uuid4().hex[:12]}"


def _check(data: object, results: Mapping[str, object] | None) -> None:
    # Handlers get validated models from a provider; a dict here would hide bugs that only show up in production.
    if not isinstance(data, BaseModel):
        raise TypeError(f"data must be a pydantic model instance, got {type(data).__name__}")
    for name, value in (results or {}).items():
        if isinstance(value, list) and all(isinstance(v, BaseModel) for v in value):
            continue  # a for-each's result: its items' outputs
        if not isinstance(value, BaseModel):
            raise TypeError(
                f"results[{name!r}] must be a pydantic model instance (or a list of them), got {type(value).__name__}"
            )
