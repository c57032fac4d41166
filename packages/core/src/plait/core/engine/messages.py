"""What goes into the engine (events: what happened) and what comes out (actions: what to do next).

Events and actions are slotted dataclasses, treated as immutable but not frozen: a frozen dataclass pays an
``object.__setattr__`` per field to build, and a flow builds many of them.

A handler's outcome names the node (``step``) and, for a for-each item, its ``index``; ``attempt`` is 1-based.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from plait.core.engine.records import JSON, ErrorRecord, ParentRef
from plait.core.handle import FlowStatus

__all__ = [
    "Action",
    "Cancel",
    "CancelChild",
    "CancelRunning",
    "ChildSettled",
    "Compensate",
    "CompensateChild",
    "CompleteRaised",
    "CompleteReturned",
    "ErrorHandled",
    "Evaluate",
    "Evaluated",
    "Event",
    "Finish",
    "NotifyParent",
    "Progress",
    "RetryCompensation",
    "RollbackRaised",
    "RollbackReturned",
    "RunComplete",
    "RunOnError",
    "RunRollback",
    "RunStep",
    "Signal",
    "StartChild",
    "StepRaised",
    "StepReturned",
    "Tick",
    "Unrunnable",
]

# --- events: outcomes of handlers --------------------------------------------------------------------------


@dataclass(slots=True)
class StepReturned:
    """Attempt ``attempt`` of ``step`` (of item ``index``) returned a valid output (``output`` is its JSON)."""

    step: str
    attempt: int
    output: JSON
    model: object = field(default=None, compare=False, repr=False)
    """The validated output model, for providers that keep it in memory."""
    index: int | None = None


@dataclass(slots=True)
class StepRaised:
    """Attempt ``attempt`` of ``step`` (of item ``index``) raised, timed out, or returned an invalid output.

    ``retryable`` is false for a ``NonRetryableError`` and an invalid output; ``no_effect`` says the attempt
    changed nothing (``NoEffectError``), so an in-doubt step needs no rollback.
    """

    step: str
    attempt: int
    error: ErrorRecord
    retryable: bool = True
    exception: BaseException | None = field(default=None, compare=False, repr=False)
    index: int | None = None
    no_effect: bool = False


@dataclass(slots=True)
class RollbackReturned:
    """Attempt ``attempt`` of ``step``'s rollback (of item ``index``) returned."""

    step: str
    attempt: int
    index: int | None = None


@dataclass(slots=True)
class RollbackRaised:
    """Attempt ``attempt`` of ``step``'s rollback (of item ``index``) raised or timed out."""

    step: str
    attempt: int
    error: ErrorRecord
    exception: BaseException | None = field(default=None, compare=False, repr=False)
    index: int | None = None


@dataclass(slots=True)
class CompleteReturned:
    """``on_complete`` returned a valid result (``result`` is its JSON form)."""

    result: JSON
    model: object = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class CompleteRaised:
    """``on_complete`` raised or returned an invalid result."""

    error: ErrorRecord
    exception: BaseException | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class ErrorHandled:
    """``on_error`` has run (whether it returned or raised: that is only logged)."""


@dataclass(slots=True)
class Evaluated:
    """The callables of evaluation ``eval_id`` ran: each target's value (JSON) or error.

    Targets are ``"<what>:<node>"`` (``when``, ``items``, ``data``, ``until``) or ``"group:<index>"``.
    """

    eval_id: int
    values: dict[str, JSON]
    errors: dict[str, ErrorRecord] = field(default_factory=dict)


@dataclass(slots=True)
class ChildSettled:
    """Child flow ``child`` of node ``step`` ended with ``status``: its ``result`` (JSON) if it completed, else
    its ``error`` message; ``rollback_failed`` when some of its rollbacks failed for good."""

    step: str
    child: str
    status: str
    result: JSON = None
    error: str | None = None
    rollback_failed: bool = False


@dataclass(slots=True)
class Unrunnable:
    """The flow's recorded data or results no longer validate against its models: no handler can run."""

    error: ErrorRecord


# --- events: time and operations ---------------------------------------------------------------------------


@dataclass(slots=True)
class Tick:
    """Time has passed: fire whatever is due by now (the flow's deadline, sleeps, signal timeouts)."""


@dataclass(slots=True)
class Signal:
    """Signal ``name`` arrived with ``payload`` (its validated JSON form)."""

    name: str
    payload: JSON


@dataclass(slots=True)
class Cancel:
    """Somebody cancelled the flow (``reason`` says who or why)."""

    reason: str


@dataclass(slots=True)
class Compensate:
    """Undo a completed flow: roll back its completed steps (``reason`` says why)."""

    reason: str


@dataclass(slots=True)
class RetryCompensation:
    """Run again the rollbacks that failed for good."""


@dataclass(slots=True)
class Progress:
    """A handler of ``step`` (item ``index``) reported progress."""

    step: str | None
    fraction: float
    message: str | None = None
    index: int | None = None


Event = (
    StepReturned
    | StepRaised
    | RollbackReturned
    | RollbackRaised
    | CompleteReturned
    | CompleteRaised
    | ErrorHandled
    | Evaluated
    | ChildSettled
    | Unrunnable
    | Tick
    | Signal
    | Cancel
    | Compensate
    | RetryCompensation
    | Progress
)

# --- actions ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RunStep:
    """Run attempt ``attempt`` of ``step`` (of item ``index``, for a for-each) after ``delay`` seconds."""

    step: str
    attempt: int
    delay: float = 0.0
    index: int | None = None


@dataclass(slots=True)
class RunRollback:
    """Run attempt ``attempt`` of ``step``'s rollback (of item ``index``) after ``delay`` seconds."""

    step: str
    attempt: int
    delay: float = 0.0
    index: int | None = None


@dataclass(slots=True)
class RunComplete:
    """Call the consumer's ``on_complete``."""


@dataclass(slots=True)
class RunOnError:
    """Call the consumer's ``on_error`` with ``build_error`` of the state."""


@dataclass(slots=True)
class Evaluate:
    """Run the definition's callables for ``targets`` (``(what, node)`` pairs, see :class:`Evaluated`) and hand
    back an ``Evaluated(eval_id, ...)``."""

    eval_id: int
    targets: tuple[tuple[str, str], ...]


@dataclass(slots=True)
class StartChild:
    """Create child flow ``child`` of ``workflow`` with ``data`` (JSON) for node ``step``, linked to this flow;
    its end comes back as a ``ChildSettled``."""

    step: str
    workflow: str
    child: str
    data: JSON


@dataclass(slots=True)
class CancelChild:
    """Cancel child flow ``child`` of ``workflow`` (it rolls itself back)."""

    workflow: str
    child: str
    reason: str


@dataclass(slots=True)
class CompensateChild:
    """Undo completed child flow ``child`` (of ``workflow``) of node ``step`` (``retry``: run its failed rollbacks
    again); its end comes back as a ``ChildSettled`` with status ``compensated``."""

    step: str
    workflow: str
    child: str
    reason: str
    retry: bool = False


@dataclass(slots=True)
class NotifyParent:
    """This flow (a child) ended with ``status``: tell ``parent`` with a ``ChildSettled``."""

    parent: ParentRef
    settled: ChildSettled


@dataclass(slots=True)
class CancelRunning:
    """Stop running handlers (or scheduled retries); their late events will be ignored.

    Attributes:
        steps: ``(step, attempt)`` of each step attempt to stop.
        items: ``(step, index, attempt)`` of each for-each item attempt to stop.
        fan_outs: for-each nodes all of whose running items to stop.
        complete: stop ``on_complete``.
        evals: evaluations to stop.
    """

    steps: tuple[tuple[str, int], ...] = ()
    items: tuple[tuple[str, int, int], ...] = ()
    fan_outs: tuple[str, ...] = ()
    complete: bool = False
    evals: tuple[int, ...] = ()


@dataclass(slots=True)
class Finish:
    """The flow has reached its terminal ``status``: wake whoever waits for it."""

    status: FlowStatus


Action = (
    RunStep
    | RunRollback
    | RunComplete
    | RunOnError
    | Evaluate
    | StartChild
    | CancelChild
    | CompensateChild
    | NotifyParent
    | CancelRunning
    | Finish
)
