"""Workflow definitions: what has to happen, in which order, with which typed data.

A definition is shared code: the process that starts a flow and the processes that run its steps import the same
object. It is frozen and checked when it is built, so a malformed workflow fails at import time.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel

from plait.core.errors import DefinitionError

__all__ = ["Step", "StepBuilder", "StepGroup", "Workflow", "WorkflowDefinition"]

D = TypeVar("D", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a workflow: its name and the pydantic model its handler returns."""

    name: str
    output: type[BaseModel]


@dataclass(frozen=True, slots=True)
class StepGroup:
    """Steps that run one after another (``sequential``) or concurrently (``parallel``)."""

    kind: Literal["sequential", "parallel"]
    steps: tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class StepBuilder:
    """Builds the step groups of a definition: ``s.sequential(s.step(...)).parallel(...)``.

    Each call returns a new builder, so a partially built chain can be reused safely.
    """

    groups: tuple[StepGroup, ...] = ()

    def step(self, name: str, output: type[BaseModel]) -> Step:
        """Declares a step named ``name`` whose handler returns an ``output`` model."""
        return Step(name, output)

    def sequential(self, *steps: Step) -> StepBuilder:
        """Appends a group whose steps run one after another, in the given order."""
        return StepBuilder((*self.groups, StepGroup("sequential", steps)))

    def parallel(self, *steps: Step) -> StepBuilder:
        """Appends a group whose steps run concurrently; the next group waits for all of them."""
        return StepBuilder((*self.groups, StepGroup("parallel", steps)))


@dataclass(frozen=True, slots=True, eq=False)
class WorkflowDefinition(Generic[D, R]):
    """A checked, immutable workflow definition.

    Attributes:
        name: the workflow's name, unique within an application.
        data: the pydantic model of the flow's input.
        result: the pydantic model ``on_complete`` returns.
        step_groups: the groups, in execution order.
    """

    name: str
    data: type[D]
    result: type[R]
    step_groups: tuple[StepGroup, ...] = ()
    _steps: dict[str, Step] = field(default_factory=dict, repr=False)
    _order: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        _check_name("workflow name", self.name)
        _check_model(f"workflow '{self.name}' data", self.data)
        _check_model(f"workflow '{self.name}' result", self.result)
        for group in self.step_groups:
            if group.kind not in ("sequential", "parallel"):
                raise DefinitionError(f"Workflow '{self.name}': unknown group kind {group.kind!r}")
            if not group.steps:
                raise DefinitionError(f"Workflow '{self.name}': a {group.kind} group has no steps")
            for step in group.steps:
                if not isinstance(step, Step):
                    raise DefinitionError(
                        f"Workflow '{self.name}': groups take steps made by s.step(name, Output), got {step!r}"
                    )
                _check_name(f"workflow '{self.name}' step name", step.name)
                if step.name in self._steps:
                    raise DefinitionError(f"Workflow '{self.name}': duplicate step name '{step.name}'")
                _check_model(f"workflow '{self.name}' step '{step.name}' output", step.output)
                self._order[step.name] = len(self._steps)
                self._steps[step.name] = step

    def steps(self, build: Callable[[StepBuilder], StepBuilder]) -> WorkflowDefinition[D, R]:
        """Returns a new definition with the step groups that ``build`` declares.

        Raises:
            DefinitionError: the steps are malformed (duplicate or bad names, empty groups, non-models).
        """
        if self.step_groups:
            raise DefinitionError(f"Workflow '{self.name}' already has steps")
        builder = build(StepBuilder())
        if not isinstance(builder, StepBuilder):
            raise DefinitionError(
                f"Workflow '{self.name}': .steps() takes a function that returns the builder it was given, "
                f"got {type(builder).__name__}"
            )
        if not builder.groups:
            raise DefinitionError(f"Workflow '{self.name}': .steps() declared no steps")
        return WorkflowDefinition(self.name, self.data, self.result, builder.groups)

    @property
    def step_names(self) -> tuple[str, ...]:
        """Every step name, in definition order."""
        return tuple(self._steps)

    def step(self, name: str) -> Step:
        """Returns the step called ``name``."""
        try:
            return self._steps[name]
        except KeyError:
            raise DefinitionError(f"Workflow '{self.name}' has no step '{name}'") from None

    def step_index(self, name: str) -> int:
        """Returns the position of step ``name`` in definition order."""
        return self._order[name]

    def __repr__(self) -> str:
        return f"WorkflowDefinition(name={self.name!r}, steps={list(self._steps)!r})"


class Workflow:
    """Entry point for defining workflows: ``Workflow.define(name=..., data=..., result=...)``."""

    @staticmethod
    def define(*, name: str, data: type[D], result: type[R]) -> WorkflowDefinition[D, R]:
        """Defines a workflow; chain ``.steps(...)`` to give it steps.

        Args:
            name: unique workflow name (letters, digits, ``_`` and ``-``; at most 128 characters).
            data: pydantic model of the input.
            result: pydantic model of the value ``on_complete`` returns.

        Raises:
            DefinitionError: a name or model is malformed.
        """
        return WorkflowDefinition(name, data, result)


def _check_name(what: str, name: object) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DefinitionError(
            f"Invalid {what} {name!r}: use 1-128 letters, digits, '_' or '-', starting with a letter or digit"
        )


def _check_model(what: str, model: object) -> None:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise DefinitionError(f"The {what} must be a pydantic BaseModel subclass, got {model!r}")
