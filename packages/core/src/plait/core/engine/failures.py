"""A flow's error, rebuilt from its recorded state; and matching the exception objects a process still holds.

A flow's error lives in its state as plain data, so any process can rebuild it. Where the failure happened in the
process asking, the cause is the very exception object the handler raised (the in-process provider keeps them;
a distributed worker remembers the recent ones), else a :class:`~plait.core.errors.RemoteError` carrying the
type name, message and traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from plait.core.engine.records import ErrorRecord, FlowState
from plait.core.errors import (
    RemoteError,
    WorkflowCancelledError,
    WorkflowCompensatedError,
    WorkflowCompletionError,
    WorkflowError,
    WorkflowRollbackError,
    WorkflowStepError,
    WorkflowTimeoutError,
)

__all__ = ["ExceptionKey", "build_error", "error_text", "matching_exceptions"]

ExceptionKey = tuple[str, str | None, int | None]
"""Which handler raised: ``("step", name, index)``, ``("rollback", name, index)`` or ``("complete", None, None)``."""


def build_error(state: FlowState, exceptions: Mapping[ExceptionKey, BaseException] | None = None) -> WorkflowError:
    """Rebuilds the error of a failing or failed (or cancelled, or compensated) flow from its state.

    Args:
        state: a flow whose ``error`` is set.
        exceptions: the original exception objects where they are at hand; the others become
            :class:`RemoteError` from the recorded type name, message and traceback.
    """
    found = exceptions or {}
    primary = state.error
    if primary is None:
        raise ValueError(f"Flow '{state.flow_id}' has no error")
    flow_id = state.flow_id
    error: WorkflowError
    kind = primary["kind"]
    if kind == "step":
        step = primary.get("step") or ""
        index = primary.get("index")
        cause = found.get(("step", step, index)) or _remote(primary)
        error = WorkflowStepError(step, cause, flow_id=flow_id, index=index)
    elif kind == "complete":
        error = WorkflowCompletionError(found.get(("complete", None, None)) or _remote(primary), flow_id=flow_id)
    elif kind == "timeout":
        error = WorkflowTimeoutError(primary.get("timeout") or 0.0, flow_id=flow_id)
    elif kind == "unrunnable":
        error = WorkflowError(f"Flow '{flow_id}' cannot run: {primary.get('message', '')}", flow_id=flow_id)
    elif kind == "compensated":
        error = WorkflowCompensatedError(primary.get("reason") or "compensated", flow_id=flow_id)
    else:
        error = WorkflowCancelledError(primary.get("reason") or "cancelled", flow_id=flow_id)
    if not state.rollback_errors:
        return error
    rollback_errors = [
        WorkflowStepError(
            r["step"],
            found.get(("rollback", r["step"], r.get("index"))) or _remote(r),
            flow_id=flow_id,
            rollback=True,
            index=r.get("index"),
        )
        for r in state.rollback_errors
    ]
    return WorkflowRollbackError(error, rollback_errors, flow_id=flow_id)


def matching_exceptions(
    state: FlowState, remembered: Mapping[ExceptionKey, tuple[BaseException, Mapping[str, Any]]]
) -> dict[ExceptionKey, BaseException]:
    """The remembered exceptions (each with the record made of it) that are the very ones ``state`` records.

    A process that ran some of a flow's handlers remembers what they raised; an entry stands in for a recorded
    failure only if its type and message match, so a stale attempt's exception never does.
    """
    if not remembered:
        return {}
    recorded: dict[ExceptionKey, Mapping[str, Any]] = {}
    error = state.error
    if error is not None and error.get("kind") == "step":
        recorded["step", error.get("step"), error.get("index")] = error
    elif error is not None and error.get("kind") == "complete":
        recorded["complete", None, None] = error
    for failure in state.rollback_errors:
        recorded["rollback", failure["step"], failure.get("index")] = failure
    found: dict[ExceptionKey, BaseException] = {}
    for key, (exception, record) in remembered.items():
        seen = recorded.get(key)
        if seen is not None and (seen.get("type"), seen.get("message")) == (record["type"], record["message"]):
            found[key] = exception
    return found


def error_text(error: ErrorRecord | Mapping[str, Any] | None) -> str | None:
    """An error record as ``"Type: message"`` (or just the type when there is no message)."""
    if not error:
        return None
    return f"{error['type']}: {error['message']}" if error.get("message") else str(error["type"])


def _remote(record: Mapping[str, Any]) -> RemoteError:
    return RemoteError(record.get("type", ""), record.get("message", ""), record.get("traceback", ""))
