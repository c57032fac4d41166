"""The workflows an API serves: their definitions, the nodes that can be rolled back, their graphs as JSON."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from plait.core.workflow import Step, WorkflowDefinition

__all__ = ["Catalog", "CatalogEntry", "Registered"]

Registered = Callable[[], Mapping[str, tuple[WorkflowDefinition[Any, Any], object | None]]]
"""Returns the application's workflows as it knows them now: name -> (definition, its consumer or ``None``)."""


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One workflow the API knows.

    Attributes:
        definition: the definition.
        rollbacks: the nodes with a rollback, when this application runs the consumer (``None`` otherwise: the
            flows run elsewhere and only their workers know).
        registered: whether the application registered it (``False`` for a sub-workflow's definition reached
            only through its parent).
    """

    definition: WorkflowDefinition[Any, Any]
    rollbacks: frozenset[str] | None
    registered: bool


class Catalog:
    """The registered workflows and every workflow nested in them through sub-workflows, by name."""

    def __init__(self, registered: Registered) -> None:
        self._registered = registered

    def entries(self) -> dict[str, CatalogEntry]:
        """Every workflow by name: the registered ones first, in registration order, then nested ones."""
        found: dict[str, CatalogEntry] = {}
        nested: list[WorkflowDefinition[Any, Any]] = []
        for name, (definition, consumer) in self._registered().items():
            found[name] = CatalogEntry(definition, _rollbacks(consumer), True)
            nested += _children(definition)
        while nested:
            child = nested.pop(0)
            if child.name not in found:
                found[child.name] = CatalogEntry(child, None, False)
                nested += _children(child)
        return found

    def get(self, name: str) -> CatalogEntry | None:
        """The workflow called ``name``, if the API knows it."""
        return self.entries().get(name)

    def definition(self, name: str) -> WorkflowDefinition[Any, Any] | None:
        """The definition of workflow ``name``, if the API knows it."""
        entry = self.get(name)
        return None if entry is None else entry.definition


def _children(definition: WorkflowDefinition[Any, Any]) -> list[WorkflowDefinition[Any, Any]]:
    return [
        step.workflow for step in (definition.step(name) for name in definition.step_names) if step.workflow is not None
    ]


def _rollbacks(consumer: object | None) -> frozenset[str] | None:
    steps = getattr(consumer, "steps", None) if consumer is not None else None
    if not isinstance(steps, Mapping):
        return None
    return frozenset(name for name, handler in steps.items() if getattr(handler, "rollback", None) is not None)


def describe_workflow(entry: CatalogEntry) -> dict[str, Any]:
    """A workflow as JSON: its models' names, its groups and nodes (the graph), its signals and its Mermaid chart."""
    definition = entry.definition
    return {
        "name": definition.name,
        "registered": entry.registered,
        "data": definition.data.__name__,
        "result": definition.result.__name__,
        "signals": {name: model.model_json_schema() for name, model in definition.signals.items()},
        "groups": [
            {
                "kind": group.kind,
                "conditional": group.when is not None,
                "nodes": [_node(step, entry.rollbacks) for step in group.steps],
            }
            for group in definition.step_groups
        ],
        "mermaid": definition.to_mermaid(rollbacks=entry.rollbacks),
    }


def _node(step: Step, rollbacks: frozenset[str] | None) -> dict[str, Any]:
    node: dict[str, Any] = {
        "name": step.name,
        "kind": step.kind,
        "output": _model_name(step.output),
        "conditional": step.when is not None,
        "after": list(step.after),
        "rollback": None if rollbacks is None else step.name in rollbacks,
    }
    if step.kind == "wait_for":
        node["timeout"] = step.timeout
    elif step.kind == "sleep":
        node["seconds"] = step.seconds
    elif step.kind == "for_each":
        node["concurrency"] = step.concurrency
    elif step.kind == "sub_workflow" and step.workflow is not None:
        node["workflow"] = step.workflow.name
    if step.kind in ("wait_for", "sleep"):
        node["rollback"] = False  # they have no handler, so nothing to undo
    return node


def _model_name(model: type[BaseModel] | None) -> str | None:
    return None if model is None else model.__name__
