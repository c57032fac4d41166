"""A definition compiled for the engine: every group as a small DAG, and what each node may see.

Every group kind is a DAG inside its barrier: ``sequential(a, b, c)`` is ``a -> b -> c``, ``parallel(a, b)`` has
no edges, and ``dag(...)`` has the edges its nodes' ``after`` declare. A node sees the results of every node of the
earlier groups and of its ancestors in its own group; definition order is a topological order, and the rollback
order is its reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plait.core.workflow import NodeKind, Step, WorkflowDefinition

__all__ = ["DEFAULT_FOR_EACH_CONCURRENCY", "Graph", "Node"]

DEFAULT_FOR_EACH_CONCURRENCY = 100
"""How many items of a for-each run at once when its ``concurrency`` is ``None``."""


@dataclass(frozen=True, slots=True)
class Node:
    """One node of a compiled definition.

    Attributes:
        name: its name.
        kind: what it is.
        group: the index of its group.
        position: its index in definition order.
        preds: the nodes of its group it waits for.
        succs: the nodes of its group that wait for it.
        visible: the nodes whose results it sees, in definition order.
        step: the node as defined.
    """

    name: str
    kind: NodeKind
    group: int
    position: int
    preds: tuple[str, ...]
    succs: tuple[str, ...]
    visible: tuple[str, ...]
    step: Step

    @property
    def concurrency(self) -> int:
        """How many items of a for-each run at once."""
        return self.step.concurrency or DEFAULT_FOR_EACH_CONCURRENCY


class Graph:
    """The compiled form of a definition.

    Attributes:
        groups: each group's node names, in definition order.
        roots: each group's nodes that wait for nothing.
        nodes: every node by name.
        order: every node name in definition order.
        may_wait: per group, whether it has a node that can wait (a ``wait_for`` or a ``sleep``).
        conditional: per group, whether the group has a ``when``.
    """

    __slots__ = ("conditional", "groups", "may_wait", "nodes", "order", "roots")

    def __init__(self, definition: WorkflowDefinition[Any, Any]) -> None:
        groups: list[tuple[str, ...]] = []
        roots: list[tuple[str, ...]] = []
        nodes: dict[str, Node] = {}
        seen: list[str] = []  # every node of the earlier groups
        position = 0
        for index, group in enumerate(definition.step_groups):
            names = tuple(step.name for step in group.steps)
            preds: dict[str, tuple[str, ...]] = {}
            for i, step in enumerate(group.steps):
                if group.kind == "sequential":
                    preds[step.name] = (names[i - 1],) if i else ()
                elif group.kind == "parallel":
                    preds[step.name] = ()
                else:
                    preds[step.name] = step.after
            ancestors: dict[str, set[str]] = {}
            for name in names:
                found = set(preds[name])
                for pred in preds[name]:
                    found |= ancestors[pred]
                ancestors[name] = found
            for step in group.steps:
                name = step.name
                nodes[name] = Node(
                    name=name,
                    kind=step.kind,
                    group=index,
                    position=position,
                    preds=preds[name],
                    succs=tuple(n for n in names if name in preds[n]),
                    visible=(*seen, *(n for n in names if n in ancestors[name])),
                    step=step,
                )
                position += 1
            groups.append(names)
            roots.append(tuple(n for n in names if not preds[n]))
            seen.extend(names)
        self.groups = tuple(groups)
        self.roots = tuple(roots)
        self.nodes = nodes
        self.order = tuple(nodes)
        self.may_wait = tuple(
            any(step.kind in ("wait_for", "sleep") for step in group.steps) for group in definition.step_groups
        )
        self.conditional = tuple(group.when is not None for group in definition.step_groups)
