"""The application's dependency graph: services, consumers and controllers, built by dependency-injector.

The builder records *what* needs *what*; :meth:`ServiceGraph.check` proves the graph is complete and acyclic
(and that each constructor accepts the dependencies it was given) before anything is built, so a wiring mistake
stops the application at start-up with the chain that needs the missing piece, not at the first request that
happens to reach it. :meth:`ServiceGraph.build` then turns every entry into a ``di.Singleton`` of one
dependency-injector container and instantiates them all, dependencies first.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

from dependency_injector import containers
from dependency_injector import providers as di

from plait.core.errors import PlaitError

__all__ = ["Dependency", "ServiceGraph"]

T = TypeVar("T")

Dependency: TypeAlias = "type[object] | di.Provider[Any]"
"""A constructor argument: a class registered with ``.provider()``, or a provider of the user's own container."""


@dataclass(frozen=True, slots=True)
class _Entry:
    cls: type[object]
    deps: tuple[Dependency, ...]
    role: str  # "" for a service; "consumer of workflow 'x'", "controller at '/orders'" otherwise

    @property
    def label(self) -> str:
        return f"{self.cls.__name__} ({self.role})" if self.role else self.cls.__name__


class ServiceGraph:
    """Registered services (injectable singletons) and components (consumers, controllers: built, never injected).

    Args:
        container: the user's dependency-injector container; its providers may be dependencies, and a class
            that is not registered here is looked up among its providers.
        instances: objects injectable by class without being built (the application's executor).
    """

    def __init__(
        self,
        container: containers.Container | None = None,
        instances: Mapping[type[object], object] | None = None,
    ) -> None:
        self.user_container = container
        self.container = containers.DynamicContainer()
        self._instances = dict(instances or {})
        self._services: dict[type[object], _Entry] = {}
        self._components: dict[str, _Entry] = {}
        self._built: dict[int, object] = {}  # id(entry) -> instance
        self._resolved: dict[type[object], di.Provider[Any]] = {}

    # -- registration --

    def add_service(self, cls: type[object], deps: Sequence[Dependency]) -> None:
        """Registers ``cls`` as a singleton service built with ``deps``.

        Raises:
            PlaitError: ``cls`` is not a class, is registered already, or a dependency is neither a class nor a
                dependency-injector provider.
        """
        _check_class(cls, "provider()")
        if cls in self._services or cls in self._instances:
            raise PlaitError(f"{cls.__name__} is registered twice with .provider()")
        self._services[cls] = _Entry(cls, _check_deps(cls, deps), "")

    def add_component(self, key: str, cls: type[object], deps: Sequence[Dependency], role: str) -> None:
        """Registers a consumer or controller under ``key``; it is built with the services but not injectable."""
        _check_class(cls, role)
        self._components[key] = _Entry(cls, _check_deps(cls, deps), role)

    # -- checking --

    def check(self) -> None:
        """Checks every dependency of every entry, before anything is built.

        Raises:
            PlaitError: a dependency is missing (naming it, who needs it and the chain from the root), the
                graph has a cycle (naming it), or a constructor does not accept its dependencies.
        """
        done: set[type[object]] = set()
        for entry in self._components.values():
            self._visit_entry(entry, [], done)
        for cls in self._services:
            self._visit(cls, [], done)

    def _visit_entry(self, entry: _Entry, path: list[_Entry], done: set[type[object]]) -> None:
        self._check_entry(entry)
        path.append(entry)
        for dep in entry.deps:
            if isinstance(dep, type):
                self._visit(dep, path, done)
        path.pop()

    def _visit(self, cls: type[object], path: list[_Entry], done: set[type[object]]) -> None:
        if cls in done or cls in self._instances:
            return
        entry = self._services.get(cls)
        if entry is None:
            if self._from_user_container(cls, path[-1]) is not None:
                done.add(cls)
                return
            raise PlaitError(_missing_message(cls, path, self._components.values()))
        services_on_path = [p.cls for p in path if not p.role]
        if cls in services_on_path:
            cycle = [*services_on_path[services_on_path.index(cls) :], cls]
            raise PlaitError(f"Dependency cycle: {' -> '.join(c.__name__ for c in cycle)}")
        self._visit_entry(entry, path, done)
        done.add(cls)

    def _check_entry(self, entry: _Entry) -> None:
        try:
            signature = inspect.signature(entry.cls)
        except (TypeError, ValueError):  # some builtins and C classes have none: let the call decide
            return
        try:
            bound = signature.bind(*entry.deps)
        except TypeError as error:
            given = ", ".join(_dep_name(d) for d in entry.deps)
            wanted = signature.replace(return_annotation=inspect.Signature.empty)
            raise PlaitError(
                f"{entry.label} cannot be built from its dependencies [{given}]: {entry.cls.__name__}{wanted} ({error})"
            ) from None
        hints = _init_hints(entry.cls)
        for name, dep in bound.arguments.items():
            expected = hints.get(name)
            if (
                isinstance(dep, type)
                and isinstance(expected, type)
                and typing.get_origin(expected) is None
                and not getattr(expected, "_is_protocol", False)
                and not issubclass(dep, expected)
            ):
                raise PlaitError(
                    f"{entry.label}: parameter '{name}' expects {expected.__name__}, but the dependency given "
                    f"for it is {dep.__name__} (are the dependencies in the constructor's order?)"
                )

    def _from_user_container(self, cls: type[object], needed_by: _Entry) -> di.Provider[Any] | None:
        """The one provider of the user's container that builds ``cls``, if any."""
        if cls in self._resolved:
            return self._resolved[cls]
        if self.user_container is None:
            return None
        found = [
            (name, provider)
            for name, provider in self.user_container.providers.items()
            # A di.Object "provides" its value: one holding the class itself would inject the class, not an instance.
            if not isinstance(provider, di.Object)
            and (getattr(provider, "cls", None) is cls or getattr(provider, "provides", None) is cls)
        ]
        if len(found) > 1:
            names = ", ".join(name for name, _ in found)
            raise PlaitError(
                f"{needed_by.label} needs {cls.__name__}, which several providers of your container build "
                f"({names}): pass the one you mean in deps"
            )
        if not found:
            return None
        self._resolved[cls] = found[0][1]
        return found[0][1]

    # -- building --

    async def build(self) -> None:
        """Checks the graph, then builds every service and component, dependencies first.

        Raises:
            PlaitError: see :meth:`check`.
            Exception: whatever a constructor raises, with a note naming what was being built.
        """
        self.check()
        self.container = containers.DynamicContainer()
        self._built.clear()
        providers: dict[int, di.Provider[Any]] = {}
        names: set[str] = set()
        ordered = self._ordered()
        for entry in ordered:
            args = [self._provider_for(dep, providers) for dep in entry.deps]
            provider: di.Provider[Any] = di.Singleton(entry.cls, *args)
            providers[id(entry)] = provider
            self.container.set_provider(_unique(entry.cls.__name__, names), provider)
        for entry in ordered:
            try:
                instance = providers[id(entry)]()
                if inspect.isawaitable(instance):
                    instance = await instance
            except Exception as error:
                error.add_note(f"(raised while Plait was building {entry.label})")
                raise
            self._built[id(entry)] = instance

    def _provider_for(self, dep: Dependency, built: dict[int, di.Provider[Any]]) -> di.Provider[Any]:
        if not isinstance(dep, type):
            return self._own(dep)
        if dep in self._instances:
            return di.Object(self._instances[dep])
        entry = self._services.get(dep)
        if entry is not None:
            return built[id(entry)]
        return self._resolved[dep]

    def _own(self, provider: di.Provider[Any]) -> di.Provider[Any]:
        """The user container's instance copy of a provider declared on its class, so it is shared, not doubled."""
        container = self.user_container
        if container is None or any(p is provider for p in container.providers.values()):
            return provider
        declared = getattr(container, "declarative_parent", None)
        if declared is not None:
            for name, candidate in declared.providers.items():
                if candidate is provider and name in container.providers:
                    return container.providers[name]
        return provider

    def _ordered(self) -> list[_Entry]:
        """Services in dependency order (the graph is checked, so acyclic), then components."""
        order: list[_Entry] = []
        seen: set[type[object]] = set()

        def visit(cls: type[object]) -> None:
            entry = self._services.get(cls)
            if entry is None or cls in seen:
                return
            seen.add(cls)
            for dep in entry.deps:
                if isinstance(dep, type):
                    visit(dep)
            order.append(entry)

        for cls in self._services:
            visit(cls)
        order.extend(self._components.values())
        return order

    # -- access --

    def get(self, cls: type[T]) -> T:
        """The built singleton of service ``cls``.

        Raises:
            PlaitError: ``cls`` is not a registered service, or the graph is not built yet.
        """
        if cls in self._instances:
            return typing.cast(T, self._instances[cls])
        entry = self._services.get(cls)
        if entry is None:
            raise PlaitError(f"{cls.__name__} is not registered with .provider()")
        if id(entry) not in self._built:
            raise PlaitError(f"{cls.__name__} is not built yet: await app.start() first")
        return typing.cast(T, self._built[id(entry)])

    def component(self, key: str) -> object:
        """The built consumer or controller registered under ``key``."""
        return self._built[id(self._components[key])]


def _check_class(cls: object, what: str) -> None:
    if not isinstance(cls, type):
        raise PlaitError(f"{what} takes a class, got {cls!r}")


def _check_deps(cls: type[object], deps: object) -> tuple[Dependency, ...]:
    if isinstance(deps, (str, bytes)) or not isinstance(deps, Sequence):
        raise PlaitError(f"Dependencies of {cls.__name__} must be a list of classes or providers, got {deps!r}")
    checked: list[Dependency] = []
    for dep in deps:
        if not isinstance(dep, (type, di.Provider)):
            raise PlaitError(
                f"Dependency {dep!r} of {cls.__name__} is neither a class registered with .provider() nor a "
                f"dependency-injector provider"
            )
        checked.append(dep)
    return tuple(checked)


def _missing_message(cls: type[object], path: list[_Entry], components: Iterable[_Entry]) -> str:
    chain = " -> ".join([*(e.label if i == 0 else e.cls.__name__ for i, e in enumerate(path)), cls.__name__])
    hint = f"register it with .provider({cls.__name__}, [...]) or pass a provider of your container in deps"
    for component in components:
        if component.cls is cls:
            hint = f"it is registered as a {component.role.split(' ')[0]}, which is not injectable; {hint}"
            break
    return f"{path[-1].cls.__name__} needs {cls.__name__}, which is not registered ({chain}): {hint}"


def _dep_name(dep: Dependency) -> str:
    return dep.__name__ if isinstance(dep, type) else type(dep).__name__


def _init_hints(cls: type[object]) -> dict[str, object]:
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable forward references: skip the type check, the arity check still ran
        return {}


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate)
    return candidate
