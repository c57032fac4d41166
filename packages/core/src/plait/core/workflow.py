"""Workflow definitions: what has to happen, in which order, with which typed data.

A definition is shared code: the process that starts a flow and the processes that run its steps import the same
object. It is frozen and checked when it is built, so a malformed workflow fails at import time.

A definition is a list of groups that run one after another (each a barrier: a group starts when the one before
has settled). A group holds nodes: steps (a handler in the consumer), signal waits, durable sleeps, for-each
fan-outs and sub-workflows. In a ``sequential`` group its nodes run one after another, in a ``parallel`` group all
at once, and in a ``dag`` group each node starts when the nodes named in its ``after`` have settled.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from plait.core.errors import DefinitionError
from plait.core.validation import is_seconds

if TYPE_CHECKING:
    from plait.core.context import WorkflowContext

__all__ = [
    "MAX_NESTING",
    "GroupKind",
    "NodeKind",
    "Step",
    "StepBuilder",
    "StepGroup",
    "Workflow",
    "WorkflowDefinition",
]

D = TypeVar("D", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

NodeKind = Literal["step", "wait_for", "sleep", "for_each", "sub_workflow"]
"""What a node of a workflow is: a step, a signal wait, a durable sleep, a for-each fan-out or a sub-workflow."""

GroupKind = Literal["sequential", "parallel", "dag"]
"""How the nodes of a group run: one after another, all at once, or each after the nodes it names."""

MAX_NESTING = 20
"""How deeply sub-workflows may nest (a workflow with a sub-workflow has depth 2)."""

Predicate = Callable[["WorkflowContext[Any]"], bool]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_GROUP_KINDS = ("sequential", "parallel", "dag")
_HANDLED: tuple[NodeKind, ...] = ("step", "for_each")


@dataclass(frozen=True, slots=True)
class Step:
    """One node of a workflow; built by the builder's methods (``s.step``, ``s.wait_for``, ``s.sleep``, ...).

    Attributes:
        name: the node's name, unique in its workflow; results are keyed by it.
        output: the model of the node's result: a step's output, a signal's payload, one for-each item's output,
            a sub-workflow's result. ``None`` for a sleep, which has no result.
        kind: what the node is.
        when: a predicate over the flow's context; false skips the node (no handler, no rollback, no result).
        after: in a ``dag`` group, the earlier nodes of the group this one waits for.
        timeout: a ``wait_for``'s seconds to wait for its signal; ``None`` waits forever.
        seconds: a ``sleep``'s duration.
        until: a ``sleep``'s wake-up time, computed from the flow's context (an aware ``datetime``).
        items: a ``for_each``'s items, computed from the flow's context (JSON values or models).
        concurrency: how many items of a ``for_each`` run at once.
        workflow: a ``sub_workflow``'s definition.
        data: a ``sub_workflow``'s data, computed from the flow's context.
    """

    name: str
    output: type[BaseModel] | None
    kind: NodeKind = "step"
    when: Predicate | None = field(default=None, compare=False)
    after: tuple[str, ...] = ()
    timeout: float | None = None
    seconds: float | None = None
    until: Callable[[WorkflowContext[Any]], datetime] | None = field(default=None, compare=False)
    items: Callable[[WorkflowContext[Any]], Iterable[Any]] | None = field(default=None, compare=False)
    concurrency: int | None = None
    workflow: WorkflowDefinition[Any, Any] | None = None
    data: Callable[[WorkflowContext[Any]], BaseModel | Mapping[str, Any]] | None = field(default=None, compare=False)

    @property
    def has_handler(self) -> bool:
        """Whether the consumer implements this node (steps and for-each items do; the other kinds run alone)."""
        return self.kind in _HANDLED


@dataclass(frozen=True, slots=True)
class StepGroup:
    """Nodes that run one after another (``sequential``), concurrently (``parallel``) or by their edges (``dag``).

    Attributes:
        kind: how the nodes run.
        steps: the nodes, in definition order.
        when: a predicate over the flow's context; false skips every node of the group.
    """

    kind: GroupKind
    steps: tuple[Step, ...]
    when: Predicate | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class StepBuilder(Generic[D]):
    """Builds the groups of a definition: ``s.sequential(s.step(...)).parallel(...)``.

    Each call returns a new builder, so a partially built chain can be reused safely.
    """

    groups: tuple[StepGroup, ...] = ()

    def step(
        self,
        name: str,
        output: type[BaseModel],
        *,
        when: Callable[[WorkflowContext[D]], bool] | None = None,
        after: Iterable[str] = (),
    ) -> Step:
        """Declares a step named ``name`` whose handler returns an ``output`` model.

        Args:
            when: run it only if this predicate over the flow's context is true; otherwise it is skipped.
            after: in a ``dag`` group, the earlier nodes of the group it waits for.
        """
        return Step(name, output, "step", when=_any_ctx(when), after=_names(after))

    def wait_for(
        self,
        name: str,
        payload: type[BaseModel],
        *,
        timeout: float | None = None,
        when: Callable[[WorkflowContext[D]], bool] | None = None,
        after: Iterable[str] = (),
    ) -> Step:
        """Declares a wait for the signal ``name``: it completes with the signal's ``payload`` model.

        Send it with ``await executor.signal(flow_id, name, payload)``; a signal sent before the flow gets here is
        kept and used here. With ``timeout`` (seconds) and no signal by then, the node fails and the flow rolls
        back. It has no handler.
        """
        return Step(name, payload, "wait_for", when=_any_ctx(when), after=_names(after), timeout=timeout)

    def sleep(
        self,
        name: str,
        *,
        seconds: float | None = None,
        until: Callable[[WorkflowContext[D]], datetime] | None = None,
        when: Callable[[WorkflowContext[D]], bool] | None = None,
        after: Iterable[str] = (),
    ) -> Step:
        """Declares a durable sleep of ``seconds``, or until the aware ``datetime`` that ``until(ctx)`` returns.

        A sleeping flow holds no worker; on a durable provider the wake-up survives restarts. It has no handler
        and no result.
        """
        return Step(
            name, None, "sleep", when=_any_ctx(when), after=_names(after), seconds=seconds, until=_any_ctx(until)
        )

    def for_each(
        self,
        name: str,
        output: type[BaseModel],
        *,
        items: Callable[[WorkflowContext[D]], Iterable[Any]],
        concurrency: int | None = None,
        when: Callable[[WorkflowContext[D]], bool] | None = None,
        after: Iterable[str] = (),
    ) -> Step:
        """Declares a fan-out: the consumer's handler ``name`` runs once per item of ``items(ctx)``.

        Items (JSON values or models) are computed once and recorded; the handler sees ``ctx.item`` and
        ``ctx.index``, and each item has its own attempts. The node's result is the list of the items' ``output``
        models, in item order. ``concurrency`` bounds how many items run at once (``None``: up to 100).
        """
        return Step(
            name,
            output,
            "for_each",
            when=_any_ctx(when),
            after=_names(after),
            items=_any_ctx(items),
            concurrency=concurrency,
        )

    def sub_workflow(
        self,
        name: str,
        workflow: WorkflowDefinition[Any, Any],
        *,
        data: Callable[[WorkflowContext[D]], BaseModel | Mapping[str, Any]],
        when: Callable[[WorkflowContext[D]], bool] | None = None,
        after: Iterable[str] = (),
    ) -> Step:
        """Declares a child flow of ``workflow`` with the data ``data(ctx)`` builds; it completes with the child's
        result.

        The child is a flow of its own (a deterministic id, its parent's id in its info), run wherever its
        consumer is registered. If the parent rolls back after the child completed, the child is compensated.
        """
        output = workflow.result if isinstance(workflow, WorkflowDefinition) else None
        return Step(
            name,
            output,
            "sub_workflow",
            when=_any_ctx(when),
            after=_names(after),
            workflow=workflow,
            data=_any_ctx(data),
        )

    def sequential(self, *steps: Step, when: Callable[[WorkflowContext[D]], bool] | None = None) -> StepBuilder[D]:
        """Appends a group whose nodes run one after another, in the given order."""
        return StepBuilder((*self.groups, StepGroup("sequential", steps, _any_ctx(when))))

    def parallel(self, *steps: Step, when: Callable[[WorkflowContext[D]], bool] | None = None) -> StepBuilder[D]:
        """Appends a group whose nodes run concurrently; the next group waits for all of them."""
        return StepBuilder((*self.groups, StepGroup("parallel", steps, _any_ctx(when))))

    def dag(self, *steps: Step, when: Callable[[WorkflowContext[D]], bool] | None = None) -> StepBuilder[D]:
        """Appends a group whose nodes start as soon as the earlier nodes named in their ``after`` have settled
        (completed or skipped); nodes without ``after`` start with the group."""
        return StepBuilder((*self.groups, StepGroup("dag", steps, _any_ctx(when))))


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
            self._check_group(group)
        if self.depth > MAX_NESTING:
            raise DefinitionError(
                f"Workflow '{self.name}' nests sub-workflows {self.depth} deep; at most {MAX_NESTING} are allowed"
            )

    def _check_group(self, group: object) -> None:
        if not isinstance(group, StepGroup):
            raise DefinitionError(f"Workflow '{self.name}': not a step group: {group!r}")
        if group.kind not in _GROUP_KINDS:
            raise DefinitionError(f"Workflow '{self.name}': unknown group kind {group.kind!r}")
        if not group.steps:
            raise DefinitionError(f"Workflow '{self.name}': a {group.kind} group has no steps")
        _check_callable(f"Workflow '{self.name}': the 'when' of a {group.kind} group", group.when)
        in_group: list[str] = []
        for step in group.steps:
            if not isinstance(step, Step):
                raise DefinitionError(
                    f"Workflow '{self.name}': groups take nodes made by s.step(), s.wait_for(), s.sleep(), "
                    f"s.for_each() or s.sub_workflow(), got {step!r}"
                )
            self._check_step(step, group, in_group)
            self._order[step.name] = len(self._steps)
            self._steps[step.name] = step
            in_group.append(step.name)

    def _check_step(self, step: Step, group: StepGroup, earlier: list[str]) -> None:
        where = f"Workflow '{self.name}'"
        _check_name(f"{where.lower()} step name", step.name)
        what = f"{where}: {step.kind} '{step.name}'"
        if step.name in self._steps:
            raise DefinitionError(f"{where}: duplicate step name '{step.name}'")
        check = _KIND_CHECKS.get(step.kind)
        if check is None:
            raise DefinitionError(f"{where}: unknown node kind {step.kind!r}")
        check(self, step, what)
        if step.kind == "sleep":
            if step.output is not None:
                raise DefinitionError(f"{what} has no output")
        else:
            _check_model(f"{where.lower()} step '{step.name}' output", step.output)
        _check_callable(f"{what}: 'when'", step.when)
        if step.after and group.kind != "dag":
            raise DefinitionError(f"{what} has after=, which only a dag group takes; this one is {group.kind}")
        for name in step.after:
            if name == step.name:
                raise DefinitionError(f"{what} names itself in after=")
            if name not in earlier:
                reason = "a later node of its group" if any(s.name == name for s in group.steps) else "not in its group"
                raise DefinitionError(
                    f"{what}: after= names '{name}', which is {reason} (name earlier nodes of the same dag group)"
                )
        if len(set(step.after)) != len(step.after):
            raise DefinitionError(f"{what} names a node twice in after=")

    def _check_wait(self, step: Step, what: str) -> None:
        _check_seconds(f"{what}: timeout", step.timeout, allow_zero=False)

    def _check_sleep(self, step: Step, what: str) -> None:
        if (step.seconds is None) == (step.until is None):
            raise DefinitionError(f"{what} takes exactly one of seconds= and until=")
        _check_seconds(f"{what}: seconds", step.seconds, allow_zero=True)
        _check_callable(f"{what}: until", step.until)

    def _check_for_each(self, step: Step, what: str) -> None:
        if step.items is None or not callable(step.items):
            raise DefinitionError(f"{what} needs items=, a function of the flow's context returning the items")
        concurrency = step.concurrency
        if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)):
            raise DefinitionError(f"{what}: concurrency must be an int >= 1 or None, got {concurrency!r}")
        if concurrency is not None and concurrency < 1:
            raise DefinitionError(f"{what}: concurrency must be an int >= 1 or None, got {concurrency!r}")

    def _check_sub_workflow(self, step: Step, what: str) -> None:
        child = step.workflow
        if not isinstance(child, WorkflowDefinition):
            raise DefinitionError(f"{what} takes a definition from Workflow.define(), got {child!r}")
        if step.data is None or not callable(step.data):
            raise DefinitionError(f"{what} needs data=, a function of the flow's context returning the child's data")
        if child.name == self.name or self.name in child.descendants:
            raise DefinitionError(f"{what}: workflow '{self.name}' cannot contain itself")

    def steps(self, build: Callable[[StepBuilder[D]], StepBuilder[D]]) -> WorkflowDefinition[D, R]:
        """Returns a new definition with the groups that ``build`` declares.

        Raises:
            DefinitionError: the nodes are malformed (duplicate or bad names, empty groups, non-models, bad
                ``after`` edges, a workflow containing itself, ...).
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
        """Every node's name, in definition order."""
        return tuple(self._steps)

    @property
    def signals(self) -> dict[str, type[BaseModel]]:
        """The signals the workflow waits for (its ``wait_for`` nodes): name -> payload model."""
        return {s.name: s.output for s in self._steps.values() if s.kind == "wait_for" and s.output is not None}

    @property
    def descendants(self) -> frozenset[str]:
        """The names of every workflow nested in this one through sub-workflows, at any depth."""
        names: set[str] = set()
        for step in self._steps.values():
            if step.workflow is not None:
                names.add(step.workflow.name)
                names |= step.workflow.descendants
        return frozenset(names)

    @property
    def depth(self) -> int:
        """1 for a workflow without sub-workflows, else one more than its deepest sub-workflow."""
        children = [s.workflow.depth for s in self._steps.values() if s.workflow is not None]
        return 1 + max(children, default=0)

    def step(self, name: str) -> Step:
        """Returns the node called ``name``."""
        try:
            return self._steps[name]
        except KeyError:
            raise DefinitionError(f"Workflow '{self.name}' has no step '{name}'") from None

    def step_index(self, name: str) -> int:
        """Returns the position of node ``name`` in definition order."""
        return self._order[name]

    def to_mermaid(self, *, rollbacks: Collection[str] | None = None) -> str:
        """Returns a Mermaid flowchart of the workflow: its groups in order, its nodes and the rollback path.

        Each group is a subgraph, joined to the next by a solid edge (a group starts when the one before has
        settled); a sequential group chains its nodes and a dag group draws its ``after`` edges. Node shapes tell
        the kinds apart: a rectangle for a step, a hexagon for a signal wait, a stadium for a sleep, a
        double-edged box for a for-each and a slanted box for a sub-workflow; a node or group with a ``when``
        condition has a dashed border and a ``?``. Dashed edges labelled ``undo`` run backwards through the
        nodes that can be rolled back, in the order their rollbacks run after a failure.

        Args:
            rollbacks: the names of the nodes that have a rollback (the consumer knows them, the definition does
                not). ``None`` draws the compensation path through every step, for-each and sub-workflow.
        """
        return _mermaid(self, rollbacks)

    def __repr__(self) -> str:
        return f"WorkflowDefinition(name={self.name!r}, steps={list(self._steps)!r})"


_KIND_CHECKS: dict[str, Callable[[WorkflowDefinition[Any, Any], Step, str], None]] = {
    "step": lambda definition, step, what: None,
    "wait_for": WorkflowDefinition._check_wait,
    "sleep": WorkflowDefinition._check_sleep,
    "for_each": WorkflowDefinition._check_for_each,
    "sub_workflow": WorkflowDefinition._check_sub_workflow,
}


_MERMAID_SHAPES: dict[str, tuple[str, str]] = {
    "step": ("[", "]"),
    "wait_for": ("{{", "}}"),
    "sleep": ("([", "])"),
    "for_each": ("[[", "]]"),
    "sub_workflow": ("[/", "/]"),
}


def _mermaid(definition: WorkflowDefinition[Any, Any], rollbacks: Collection[str] | None) -> str:
    # Mermaid ids are positional (n0, g0): a node called "end" or "graph" would otherwise break the chart.
    ids = {name: f"n{i}" for i, name in enumerate(definition.step_names)}
    lines = ["flowchart TD"]
    forward: list[str] = []  # group to group, then along the edges inside groups
    edges: list[str] = []
    conditional: list[str] = []
    for g, group in enumerate(definition.step_groups):
        title = group.kind + (" ?" if group.when is not None else "")
        lines.append(f'    subgraph g{g}["{title}"]')
        for step in group.steps:
            open_, close = _MERMAID_SHAPES[step.kind]
            lines.append(f'        {ids[step.name]}{open_}"{_mermaid_label(step)}"{close}')
            if step.when is not None or group.when is not None:
                conditional.append(ids[step.name])
        lines.append("    end")
        if group.kind == "sequential":
            edges += [f"    {ids[a.name]} --> {ids[b.name]}" for a, b in itertools.pairwise(group.steps)]
        elif group.kind == "dag":
            edges += [f"    {ids[before]} --> {ids[step.name]}" for step in group.steps for before in step.after]
        if g:
            forward.append(f"    g{g - 1} --> g{g}")
    undoable = [
        name
        for name in definition.step_names
        if (rollbacks is None and definition.step(name).kind in ("step", "for_each", "sub_workflow"))
        or (rollbacks is not None and name in rollbacks)
    ]
    path = list(reversed(undoable))
    edges += [f"    {ids[a]} -.->|undo| {ids[b]}" for a, b in itertools.pairwise(path)]
    lines += forward + edges
    lines.append("    classDef conditional stroke-dasharray: 5 3")
    if conditional:
        lines.append(f"    class {','.join(conditional)} conditional")
    return "\n".join(lines) + "\n"


def _mermaid_label(step: Step) -> str:
    name = step.name + (" ?" if step.when is not None else "")
    if step.kind == "wait_for":
        detail = "wait for signal" + ("" if step.timeout is None else f", timeout {step.timeout:g}s")
    elif step.kind == "sleep":
        detail = "sleep " + (f"{step.seconds:g}s" if step.seconds is not None else "until a time")
    elif step.kind == "for_each":
        detail = "for each item"
    elif step.kind == "sub_workflow":
        detail = "sub-workflow " + (step.workflow.name if step.workflow is not None else "")
    else:
        return name
    return f"{name}<br/>{detail}"


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


def _any_ctx(fn: Any) -> Any:
    # The builder types callables by the workflow's data model; a node stores them for any context.
    return fn


def _names(after: Iterable[str]) -> tuple[str, ...]:
    if isinstance(after, str):
        return (after,)  # after="a" is a common slip for after=("a",)
    names = tuple(after)
    for name in names:
        if not isinstance(name, str):
            raise DefinitionError(f"after= takes node names, got {name!r}")
    return names


def _check_name(what: str, name: object) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DefinitionError(
            f"Invalid {what} {name!r}: use 1-128 letters, digits, '_' or '-', starting with a letter or digit"
        )


def _check_model(what: str, model: object) -> None:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise DefinitionError(f"The {what} must be a pydantic BaseModel subclass, got {model!r}")


def _check_callable(what: str, fn: object) -> None:
    if fn is not None and not callable(fn):
        raise DefinitionError(f"{what} must be a function of the flow's context, got {fn!r}")


def _check_seconds(what: str, value: object, *, allow_zero: bool) -> None:
    if value is not None and not is_seconds(value, allow_zero=allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise DefinitionError(f"{what} must be a number of seconds {bound}, got {value!r}")
