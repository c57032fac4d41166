"""Errors: one base class, messages users can read, and the attributes the public API promises."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from plait import core
from plait.core import (
    DefinitionError,
    FlowConflictError,
    FlowNotFoundError,
    PlaitError,
    ProviderNotStartedError,
    RemoteError,
    WorkflowCancelledError,
    WorkflowCompensatedError,
    WorkflowCompletionError,
    WorkflowError,
    WorkflowNotRegisteredError,
    WorkflowRollbackError,
    WorkflowStepError,
    WorkflowTimeoutError,
    WorkflowValidationError,
)


def test_every_error_is_a_plait_error_and_flow_failures_are_workflow_errors() -> None:
    errors = [getattr(core, name) for name in core.__all__ if name.endswith("Error")]
    assert WorkflowStepError in errors and RemoteError in errors
    assert all(issubclass(e, PlaitError) for e in errors)
    flow_failures = {e for e in errors if issubclass(e, WorkflowError)}
    assert flow_failures == {
        WorkflowError,
        WorkflowStepError,
        WorkflowRollbackError,
        WorkflowTimeoutError,
        WorkflowCompletionError,
        WorkflowCancelledError,
        WorkflowCompensatedError,
    }


def test_step_error_names_the_step_and_keeps_the_cause() -> None:
    cause = ValueError("card declined")
    error = WorkflowStepError("charge", cause, flow_id="flow-1")
    assert str(error) == "Step 'charge' failed: card declined"
    assert (error.step_name, error.cause, error.flow_id, error.rollback) == ("charge", cause, "flow-1", False)
    assert error.__cause__ is cause
    rollback = WorkflowStepError("charge", cause, rollback=True)
    assert str(rollback) == "Rollback of step 'charge' failed: card declined"


@pytest.mark.parametrize(
    ("cause", "text"),
    [
        (RuntimeError(), "RuntimeError"),
        (TimeoutError(), "timed out"),
        (TimeoutError("Step 'a' timed out after 2s"), "Step 'a' timed out after 2s"),
        (RemoteError("billing.Declined", "no funds"), "billing.Declined: no funds"),
        (RemoteError("billing.Declined", ""), "billing.Declined"),
    ],
)
def test_causes_without_a_message_still_say_something(cause: BaseException, text: str) -> None:
    assert str(WorkflowStepError("a", cause)) == f"Step 'a' failed: {text}"


def test_remote_error_carries_type_message_and_traceback() -> None:
    error = RemoteError("app.Boom", "bad", "Traceback (most recent call last): ...")
    assert (error.type_name, error.message, error.traceback) == (
        "app.Boom",
        "bad",
        "Traceback (most recent call last): ...",
    )
    assert str(error) == "app.Boom: bad"
    assert RemoteError("app.Boom", "bad").traceback == ""


def test_rollback_error_lists_the_primary_and_rollback_errors() -> None:
    primary = WorkflowStepError("ship", RuntimeError("lost"), flow_id="flow-1")
    undo = [
        WorkflowStepError("charge", RuntimeError("no refund"), flow_id="flow-1", rollback=True),
        WorkflowStepError("reserve", RuntimeError("gone"), flow_id="flow-1", rollback=True),
    ]
    error = WorkflowRollbackError(primary, undo, flow_id="flow-1")
    assert error.primary_error is primary
    assert error.rollback_errors == undo
    assert error.__cause__ is primary
    assert str(error) == "Step 'ship' failed: lost; then rollback failed for 'charge', 'reserve'"


def test_timeout_completion_and_cancellation_messages() -> None:
    timeout = WorkflowTimeoutError(1.5, flow_id="flow-1")
    assert (timeout.timeout, timeout.flow_id) == (1.5, "flow-1")
    assert "timed out" in str(timeout) and "1.5s" in str(timeout)
    cause = KeyError("x")
    completion = WorkflowCompletionError(cause)
    assert completion.cause is cause and completion.__cause__ is cause
    assert str(completion) == "on_complete failed: 'x'"
    cancelled = WorkflowCancelledError("provider stopped")
    assert cancelled.reason == "provider stopped"
    assert str(cancelled) == "Workflow cancelled: provider stopped"


class Data(BaseModel):
    n: int


def test_validation_error_wraps_pydantic_and_lists_problems() -> None:
    with pytest.raises(ValidationError) as caught:
        Data.model_validate({"n": "x"})
    error = WorkflowValidationError("wf", caught.value)
    assert error.workflow == "wf"
    assert error.cause is caught.value
    assert [e["loc"] for e in error.errors] == [("n",)]
    assert str(error).startswith("Invalid data for workflow 'wf': ")
    assert WorkflowValidationError("wf", ValueError("plain")).errors == []


def test_lookup_and_wiring_errors() -> None:
    missing = FlowNotFoundError("flow-9")
    assert (missing.flow_id, str(missing)) == ("flow-9", "Flow 'flow-9' not found")
    conflict = FlowConflictError("flow-9", "with different data")
    assert (conflict.flow_id, str(conflict)) == ("flow-9", "Flow 'flow-9' already exists with different data")
    unregistered = WorkflowNotRegisteredError("wf", "register it with a consumer")
    assert unregistered.workflow == "wf"
    assert str(unregistered) == "Workflow 'wf' is not registered with this provider: register it with a consumer"
    assert str(WorkflowNotRegisteredError("wf")) == "Workflow 'wf' is not registered with this provider"
    assert isinstance(ProviderNotStartedError("x"), PlaitError)
    assert isinstance(DefinitionError("x"), PlaitError)
