"""Plait's errors: one base class, one subclass per thing that can go wrong.

A flow's failure is always a :class:`WorkflowError`; everything a user can get wrong before a flow exists
(definitions, data, wiring) has its own class so that callers can tell the two apart.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CorruptFlowError",
    "DefinitionError",
    "FlowConflictError",
    "FlowNotFoundError",
    "FlowStateError",
    "NoEffectError",
    "NonRetryableError",
    "PayloadTooLargeError",
    "PlaitError",
    "ProviderNotStartedError",
    "ProviderUnavailableError",
    "RemoteError",
    "SignalError",
    "WorkflowCancelledError",
    "WorkflowCompensatedError",
    "WorkflowCompletionError",
    "WorkflowError",
    "WorkflowNotRegisteredError",
    "WorkflowRollbackError",
    "WorkflowStepError",
    "WorkflowTimeoutError",
    "WorkflowValidationError",
]


class PlaitError(Exception):
    """Base class of every error Plait raises."""


class DefinitionError(PlaitError):
    """A workflow definition, consumer or registration is malformed."""


class WorkflowValidationError(PlaitError):
    """The data given to ``execute()`` (or a signal's payload) does not match its model.

    Nothing was persisted or enqueued. ``errors`` is pydantic's list of problems (empty when the data could not
    be read at all, for instance because it nests too deeply).
    """

    def __init__(self, workflow: str, cause: Exception, *, what: str = "data") -> None:
        self.workflow = workflow
        self.cause = cause
        errors = getattr(cause, "errors", None)
        self.errors: list[dict[str, object]] = list(errors()) if callable(errors) else []
        super().__init__(f"Invalid {what} for workflow '{workflow}': {cause}")


class WorkflowNotRegisteredError(PlaitError):
    """No consumer (or definition) is registered for a workflow in this process."""

    def __init__(self, workflow: str, detail: str = "") -> None:
        self.workflow = workflow
        message = f"Workflow '{workflow}' is not registered with this provider"
        super().__init__(f"{message}: {detail}" if detail else message)


class FlowNotFoundError(PlaitError):
    """No flow with this id exists (or its retention has expired)."""

    def __init__(self, flow_id: str) -> None:
        self.flow_id = flow_id
        super().__init__(f"Flow '{flow_id}' not found")


class FlowConflictError(PlaitError):
    """``execute(id=...)`` named an existing flow of another workflow or with other data."""

    def __init__(self, flow_id: str, reason: str) -> None:
        self.flow_id = flow_id
        super().__init__(f"Flow '{flow_id}' already exists {reason}")


class ProviderNotStartedError(PlaitError):
    """The provider is not running: call ``await provider.start()`` first (or it was stopped)."""


class ProviderUnavailableError(PlaitError):
    """The provider's backing store (Redis, say) cannot be reached right now; nothing was changed.

    Raised quickly by ``execute()`` and reads during an outage, so that a request handler can answer 503 rather
    than hang. Waiting callers (``result()``) ride through outages instead.
    """


class FlowStateError(PlaitError):
    """The flow's status does not allow the operation (compensating a flow that has not completed, say).

    Attributes:
        flow_id: the flow.
        status: its status when the operation was refused.
    """

    def __init__(self, flow_id: str, status: str, message: str) -> None:
        self.flow_id = flow_id
        self.status = status
        super().__init__(f"Flow '{flow_id}' is {status}: {message}")


class CorruptFlowError(PlaitError):
    """A flow's stored state cannot be read (it was damaged, or written by an incompatible version).

    Such a flow is failed once by the worker that finds it (its reads then show it failed, with this error as its
    cause); reads before that raise this error, naming the flow.
    """

    def __init__(self, flow_id: str, reason: str) -> None:
        self.flow_id = flow_id
        self.reason = reason
        super().__init__(f"Flow '{flow_id}' has unreadable state: {reason}")


class SignalError(PlaitError):
    """A signal cannot be delivered: the workflow declares no such signal, the flow has ended, or a signal of
    that name already arrived with another payload."""


class PayloadTooLargeError(PlaitError):
    """Data, an output or a signal payload is larger, as JSON, than the provider's ``max_payload_size``."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"{what} is {size:,} bytes of JSON, above the limit of {limit:,} bytes (max_payload_size)")


class NonRetryableError(PlaitError):
    """Raise it (or a subclass) from a step to fail that step at once, without its remaining attempts.

    For failures that the same input will always meet again: a declined card, a rejected address. The flow then
    rolls back as for any failed step; the error's cause is this exception.
    """


class NoEffectError(NonRetryableError):
    """Raise it from a step to say the failed attempt changed nothing, so no rollback is needed for it.

    It matters for steps registered with ``StepHandler(..., rollback_if_failed=True)``: such a step is normally
    rolled back even when it fails (its failure may have had an effect); this error skips that rollback. Like any
    :class:`NonRetryableError`, it also fails the step at once.
    """


class RemoteError(PlaitError):
    """An exception raised in another process, carried across as text.

    Attributes:
        type_name: qualified name of the original exception's class.
        message: ``str()`` of the original exception.
        traceback: the formatted traceback from the process where it was raised.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        super().__init__(f"{type_name}: {message}" if message else type_name)


class WorkflowError(PlaitError):
    """A flow ended in failure. ``flow_id`` names it."""

    def __init__(self, message: str, *, flow_id: str = "") -> None:
        self.flow_id = flow_id
        super().__init__(message)


class WorkflowStepError(WorkflowError):
    """A step (or a step's rollback) failed for good.

    ``cause`` is the exception the handler raised: the very object in-process, a :class:`RemoteError` when it
    was raised in another process. ``index`` is the for-each item that failed, if the step is a for-each. A
    ``wait_for`` that timed out, and a sub-workflow whose child failed, raised nothing themselves: their cause is a
    :class:`RemoteError`, whose ``type_name`` is ``TimeoutError`` for the wait, and which carries the child's error
    for the sub-workflow.
    """

    def __init__(
        self,
        step_name: str,
        cause: BaseException,
        *,
        flow_id: str = "",
        rollback: bool = False,
        index: int | None = None,
    ) -> None:
        self.step_name = step_name
        self.cause = cause
        self.rollback = rollback
        self.index = index
        what = "Rollback of step" if rollback else "Step"
        item = "" if index is None else f" (item {index})"
        super().__init__(f"{what} '{step_name}'{item} failed: {_describe(cause)}", flow_id=flow_id)
        self.__cause__ = cause


class WorkflowCompletionError(WorkflowError):
    """``on_complete`` raised or returned a value that does not validate against the ``result`` model."""

    def __init__(self, cause: BaseException, *, flow_id: str = "") -> None:
        self.cause = cause
        super().__init__(f"on_complete failed: {_describe(cause)}", flow_id=flow_id)
        self.__cause__ = cause


class WorkflowTimeoutError(WorkflowError):
    """The flow ran past its ``timeout`` (seconds); its running steps were cancelled and rolled back."""

    def __init__(self, timeout: float, *, flow_id: str = "") -> None:
        self.timeout = timeout
        super().__init__(f"Workflow timed out after {timeout:g}s", flow_id=flow_id)


class WorkflowCancelledError(WorkflowError):
    """The flow was cancelled (``cancel()``, a parent's cancellation, a provider shutting down) and rolled back."""

    def __init__(self, reason: str, *, flow_id: str = "") -> None:
        self.reason = reason
        super().__init__(f"Workflow cancelled: {reason}", flow_id=flow_id)


class WorkflowCompensatedError(WorkflowError):
    """The flow completed and was then undone (``compensate()``, or its parent rolled back): its completed steps
    were rolled back, so its result no longer stands."""

    def __init__(self, reason: str, *, flow_id: str = "") -> None:
        self.reason = reason
        super().__init__(f"Workflow compensated: {reason}", flow_id=flow_id)


class WorkflowRollbackError(WorkflowError):
    """A flow failed and at least one rollback failed too, after its retries.

    Attributes:
        primary_error: the failure that started the rollback.
        rollback_errors: one :class:`WorkflowStepError` (``rollback=True``) per rollback that failed for good.
    """

    def __init__(
        self, primary_error: WorkflowError, rollback_errors: Sequence[WorkflowStepError], *, flow_id: str = ""
    ) -> None:
        self.primary_error = primary_error
        self.rollback_errors = list(rollback_errors)
        names = ", ".join(f"'{e.step_name}'" for e in self.rollback_errors)
        super().__init__(f"{primary_error}; then rollback failed for {names}", flow_id=flow_id)
        self.__cause__ = primary_error


def _describe(error: BaseException) -> str:
    if isinstance(error, RemoteError):
        return str(error)
    text = str(error)
    if isinstance(error, TimeoutError) and not text:
        return "timed out"
    return text or type(error).__name__
