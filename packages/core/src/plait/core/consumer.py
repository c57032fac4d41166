"""Consumers: the code that implements a workflow's steps and callbacks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from plait.core.context import StepContext, WorkflowContext
from plait.core.errors import DefinitionError, WorkflowError
from plait.core.workflow import WorkflowDefinition

__all__ = ["IWorkflowConsumer", "StepHandler", "check_consumer"]

D = TypeVar("D", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class StepHandler(Generic[D]):
    """How to run one step, and optionally how to undo it.

    Attributes:
        execute: returns the step's output model (or a dict that validates against it). For a for-each, it runs
            once per item and sees ``ctx.item`` and ``ctx.index``.
        rollback: undoes a completed step when a later one fails (``ctx.output`` is the step's output); must be
            idempotent, since it can run again after a crash.
        rollback_if_failed: the step is in doubt when it fails: its failure may have had an effect (a timeout
            after the charge went through), so it is rolled back too, first, unless it raised ``NoEffectError``.
    """

    execute: Callable[[StepContext[D]], Awaitable[BaseModel | Mapping[str, object]]]
    rollback: Callable[[StepContext[D]], Awaitable[None]] | None = None
    rollback_if_failed: bool = False


class IWorkflowConsumer(ABC, Generic[D, R]):
    """Implements a workflow: a handler per step, ``on_complete`` and optionally ``on_error``.

    Subclasses set ``self.steps`` (step name -> :class:`StepHandler`) in ``__init__``; their constructor
    arguments are injected by the application's container.
    """

    steps: Mapping[str, StepHandler[D]] = {}

    @abstractmethod
    async def on_complete(self, ctx: WorkflowContext[D]) -> R:
        """Runs once after the last step; returns the flow's result."""

    async def on_error(self, ctx: WorkflowContext[D], error: WorkflowError) -> None:
        """Runs once after a failed flow's rollbacks; an exception here is logged, not raised."""


def check_consumer(definition: WorkflowDefinition[Any, Any], consumer: object) -> frozenset[str]:
    """Checks that ``consumer`` implements every step and for-each of ``definition`` and nothing else.

    Waits, sleeps and sub-workflows take no handler: a handler for one is a mistake worth naming.

    Returns:
        The names of the steps that have a rollback.

    Raises:
        DefinitionError: naming what is missing, unknown, not callable, or given to a node that takes none.
    """
    name = definition.name
    kind = type(consumer).__name__
    if not callable(getattr(consumer, "on_complete", None)):
        raise DefinitionError(f"Consumer {kind} of workflow '{name}' has no on_complete(ctx) method")
    steps = getattr(consumer, "steps", None)
    if not isinstance(steps, Mapping):
        raise DefinitionError(
            f"Consumer {kind} of workflow '{name}': 'steps' must be a mapping of step name to StepHandler"
        )
    handled = [n for n in definition.step_names if definition.step(n).has_handler]
    missing = [s for s in handled if s not in steps]
    unknown = [s for s in steps if s not in definition.step_names]
    handlerless = [s for s in steps if s in definition.step_names and not definition.step(s).has_handler]
    if missing or unknown or handlerless:
        parts = []
        if missing:
            parts.append(f"no handler for step(s) {', '.join(map(repr, missing))}")
        if unknown:
            parts.append(f"handler(s) for unknown step(s) {', '.join(map(repr, unknown))}")
        if handlerless:
            nodes = ", ".join(f"'{s}' (a {definition.step(s).kind})" for s in handlerless)
            parts.append(f"handler(s) for {nodes}, which take none")
        raise DefinitionError(f"Consumer {kind} of workflow '{name}': {'; '.join(parts)}")
    with_rollback = set()
    for step, handler in steps.items():
        if not isinstance(handler, StepHandler):
            raise DefinitionError(
                f"Consumer {kind} of workflow '{name}': step '{step}' must be a StepHandler(execute=...), "
                f"got {type(handler).__name__}"
            )
        if not callable(handler.execute):
            raise DefinitionError(f"Consumer {kind} of workflow '{name}': step '{step}' execute is not callable")
        if handler.rollback is not None:
            if not callable(handler.rollback):
                raise DefinitionError(f"Consumer {kind} of workflow '{name}': step '{step}' rollback is not callable")
            with_rollback.add(step)
        elif handler.rollback_if_failed:
            raise DefinitionError(
                f"Consumer {kind} of workflow '{name}': step '{step}' has rollback_if_failed=True but no rollback"
            )
    return frozenset(with_rollback)
