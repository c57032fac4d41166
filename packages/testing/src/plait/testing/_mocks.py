"""Real step and workflow contexts for unit-testing handlers without a provider."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import TypeVar

from pydantic import BaseModel

from plait.core import StepContext, WorkflowContext

__all__ = ["create_mock_step_context", "create_mock_workflow_context"]

D = TypeVar("D", bound=BaseModel)


def create_mock_step_context(
    data: D,
    results: Mapping[str, BaseModel] | None = None,
    *,
    flow_id: str | None = None,
    workflow: str = "test-workflow",
    step_name: str = "test-step",
    attempt: int = 1,
    meta: Mapping[str, str] | None = None,
    provider_id: str = "test",
) -> StepContext[D]:
    """Builds the :class:`StepContext` a provider would pass to a step's ``execute`` or ``rollback``.

    Args:
        data: the flow's input model.
        results: step name -> output model of the steps this one may see.
        flow_id: the flow's id; a fresh ``flow-test-...`` id by default.
        workflow: the workflow's name.
        step_name: the step being run.
        attempt: the 1-based attempt number.
        meta: propagated metadata, e.g. ``{"correlation_id": "req-1"}``.
        provider_id: the provider id shown in the context and its logger.

    Raises:
        TypeError: ``data`` or a result is not a pydantic model instance.
        ValueError: ``attempt`` is below 1.
    """
    _check(data, results)
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt!r}")
    return StepContext(
        flow_id=flow_id or _flow_id(),
        workflow=workflow,
        data=data,
        results=dict(results or {}),
        meta=dict(meta or {}),
        provider_id=provider_id,
        step_name=step_name,
        attempt=attempt,
    )


def create_mock_workflow_context(
    data: D,
    results: Mapping[str, BaseModel] | None = None,
    *,
    flow_id: str | None = None,
    workflow: str = "test-workflow",
    meta: Mapping[str, str] | None = None,
    provider_id: str = "test",
) -> WorkflowContext[D]:
    """Builds the :class:`WorkflowContext` a provider would pass to ``on_complete`` or ``on_error``.

    Args:
        data: the flow's input model.
        results: step name -> output model of every completed step.
        flow_id: the flow's id; a fresh ``flow-test-...`` id by default.
        workflow: the workflow's name.
        meta: propagated metadata, e.g. ``{"correlation_id": "req-1"}``.
        provider_id: the provider id shown in the context and its logger.

    Raises:
        TypeError: ``data`` or a result is not a pydantic model instance.
    """
    _check(data, results)
    return WorkflowContext(
        flow_id=flow_id or _flow_id(),
        workflow=workflow,
        data=data,
        results=dict(results or {}),
        meta=dict(meta or {}),
        provider_id=provider_id,
    )


def _flow_id() -> str:
    return f"flow-test-{uuid.uuid4().hex[:12]}"


def _check(data: object, results: Mapping[str, object] | None) -> None:
    # Handlers get validated models from a provider; a dict here would hide bugs that only show up in production.
    if not isinstance(data, BaseModel):
        raise TypeError(f"data must be a pydantic model instance, got {type(data).__name__}")
    for name, value in (results or {}).items():
        if not isinstance(value, BaseModel):
            raise TypeError(f"results[{name!r}] must be a pydantic model instance, got {type(value).__name__}")
