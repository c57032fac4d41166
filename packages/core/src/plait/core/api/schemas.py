"""The bodies the API sends and takes besides the workflows' own models, as pydantic models for its OpenAPI
document; the endpoints build the same shapes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from plait.core.handle import FlowStatus

__all__ = [
    "FieldProblem",
    "FlowAccepted",
    "FlowResult",
    "FlowState",
    "Permissions",
    "Problem",
    "Reason",
    "RetryAccepted",
    "WorkflowGraphs",
]


class FieldProblem(BaseModel):
    """One invalid field of a body."""

    field: str = Field(description="dotted path of the field, e.g. items.0.quantity")
    message: str
    type: str


class Problem(BaseModel):
    """An error: a stable code, a message for people, and details that depend on the code."""

    error: str = Field(description="a code: bad_request, read_only, forbidden, flow_not_found, flow_state, ...")
    message: str
    fields: list[FieldProblem] | None = Field(default=None, description="the invalid fields of a 422")
    flow_id: str | None = None
    status: FlowStatus | None = None
    failure: dict[str, Any] | None = Field(
        default=None, description="a failed flow's error: type, message, step, rollback_failures"
    )


class FlowAccepted(BaseModel):
    """A flow was accepted (or, with an Idempotency-Key that was used before, found)."""

    flow_id: str


class RetryAccepted(BaseModel):
    """A new flow retries an ended one."""

    flow_id: str
    retry_of: str


class FlowState(BaseModel):
    """A flow's status after a request (or while it has not finished)."""

    flow_id: str
    status: FlowStatus


class FlowResult(BaseModel):
    """A completed flow's result (the workflow's result model)."""

    flow_id: str
    status: FlowStatus
    result: dict[str, Any]


class Reason(BaseModel):
    """The optional body of cancel and compensate."""

    reason: str | None = Field(default=None, max_length=1000, description="why; recorded in the flow's error")


class Permissions(BaseModel):
    """What the caller may do, by workflow (what the inspector shows buttons for)."""

    read_only: bool
    workflows: dict[str, list[str]] = Field(description="workflow name -> the actions allowed")


class WorkflowGraphs(BaseModel):
    """Every workflow the API knows, with its graph."""

    workflows: list[dict[str, Any]]
