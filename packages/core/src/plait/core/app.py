"""The application builder: services, workflows, consumers and controllers wired into one Starlette app.

``Plait.create()`` returns an :class:`Application` whose chainable methods only record what to build. ``start()``
checks and builds the whole dependency graph (so a missing dependency or a cycle stops the start, naming the
chain), registers every workflow with the provider and starts it. The same ``start()``/``stop()`` pair serves an
HTTP server (through the Starlette lifespan) and a worker process without HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from dependency_injector import containers
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from plait.core.api import Authorize, WorkflowsApi
from plait.core.consumer import IWorkflowConsumer
from plait.core.container import Dependency, ServiceGraph
from plait.core.errors import DefinitionError, PlaitError, ProviderNotStartedError
from plait.core.executor import CorrelatedExecutor
from plait.core.loops import LoopChoice, run
from plait.core.options import ConsumerOptions
from plait.core.provider import EventHook, WorkflowExecutor, WorkflowProvider
from plait.core.routing import (
    MAX_BODY_SIZE,
    PlaitMiddleware,
    RouteBuilder,
    RouteSpec,
    build_routes,
    exception_handlers,
)
from plait.core.workflow import WorkflowDefinition

__all__ = ["AppContext", "Application", "Plait", "WorkflowRegistration"]

D = TypeVar("D", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)
T = TypeVar("T")

_INSTALL_HINT = (
    "No workflow provider is set and the default one is not installed: pip install plait-providers-inprocess, "
    "or pass a provider with .workflow_provider(...)"
)


class Plait:
    """Entry point: ``Plait.create()`` starts an application builder."""

    @staticmethod
    def create(
        container: containers.Container | type[containers.DeclarativeContainer] | None = None,
        *,
        max_body_size: int = MAX_BODY_SIZE,
    ) -> Application:
        """Returns a new, empty :class:`Application`.

        Args:
            container: your own dependency-injector container (an instance, or a declarative container class to
                instantiate). Its providers can be given as dependencies, a class it provides can be named as a
                dependency without registering it again, and its resources are initialised at ``start()`` and
                shut down at ``stop()``.
            max_body_size: the most bytes a request handler's ``ctx.body()`` reads (1 MiB by default); a larger
                body is answered with a 413.
        """
        if isinstance(container, type):
            container = container()
        return Application(container, max_body_size=max_body_size)


@dataclass(slots=True)
class _Workflow:
    definition: WorkflowDefinition[Any, Any]
    consumer: str | None = None  # component key of its consumer; None for a workflow only started from here
    options: ConsumerOptions | None = None


class AppContext:
    """The application's services outside requests: the executor, the provider, built singletons."""

    __slots__ = ("_app", "workflows")

    def __init__(self, app: Application) -> None:
        self._app = app
        self.workflows: WorkflowExecutor = app._executor
        """The executor for code outside requests (jobs, scripts, tests); works once the app has started.

        It is the executor request handlers get, unbound: flows it starts during a request carry that request's
        correlation id.
        """

    @property
    def provider(self) -> WorkflowProvider:
        """The workflow provider the application runs (the in-process one unless another was set).

        Raises:
            PlaitError: no provider was set and the application has not started (so the default is not chosen).
        """
        provider = self._app._provider
        if provider is None:
            raise PlaitError("The application has no workflow provider yet: await app.start() first")
        return provider

    def resolve(self, cls: type[T]) -> T:
        """Returns the singleton of a service registered with ``.provider(cls, ...)``, once the app has started.

        Raises:
            PlaitError: ``cls`` is not registered, or the application has not been built yet.
        """
        return self._app._graph.get(cls)


class WorkflowRegistration(Generic[D, R]):
    """A workflow just registered with ``.workflow(definition)``: give it a consumer, or carry on building.

    Without ``.consumer(...)`` the workflow can still be executed from this application; its flows run wherever a
    consumer for it is registered (another process, with a distributed provider).
    """

    __slots__ = ("_app", "_definition")

    def __init__(self, app: Application, definition: WorkflowDefinition[D, R]) -> None:
        self._app = app
        self._definition = definition

    def consumer(
        self,
        cls: type[IWorkflowConsumer[D, R]],
        deps: Sequence[Dependency] = (),
        options: ConsumerOptions | None = None,
    ) -> Application:
        """Runs this workflow's flows in this application with a ``cls`` built from ``deps``.

        Args:
            cls: the consumer class; its constructor takes ``deps``, in order.
            deps: classes registered with ``.provider()`` (or provided by your container), or providers of
                your container.
            options: retries, backoff, timeouts and concurrency; ``None`` for the provider's defaults.

        Raises:
            DefinitionError: the workflow already has a consumer, or ``options`` is not a ``ConsumerOptions``.
        """
        return self._app._add_consumer(self._definition, cls, deps, options)

    def provider(self, cls: type[object], deps: Sequence[Dependency] = ()) -> Application:
        """Leaves this workflow without a consumer here and registers a service: see :meth:`Application.provider`."""
        return self._app.provider(cls, deps)

    def workflow(self, definition: WorkflowDefinition[D, R]) -> WorkflowRegistration[D, R]:
        """Leaves this workflow without a consumer here and registers another: see :meth:`Application.workflow`."""
        return self._app.workflow(definition)

    def controller(self, path: str, cls: type[object], deps: Sequence[Dependency] = ()) -> Application:
        """Leaves this workflow without a consumer here and adds a controller: see :meth:`Application.controller`."""
        return self._app.controller(path, cls, deps)

    def workflow_provider(self, provider: WorkflowProvider) -> Application:
        """Leaves this workflow without a consumer here and sets the provider: see
        :meth:`Application.workflow_provider`."""
        return self._app.workflow_provider(provider)

    def on_event(self, hook: EventHook) -> Application:
        """Leaves this workflow without a consumer here and adds an event hook: see :meth:`Application.on_event`."""
        return self._app.on_event(hook)


class Application:
    """A Plait application: build it with the chainable methods, then run it.

    Run it with ``listen()`` (uvicorn), as ASGI with ``asgi()`` (its lifespan starts and stops the application),
    or without HTTP with ``await start()`` / ``await stop()`` (a worker process, a script, a test).
    """

    def __init__(self, container: containers.Container | None = None, *, max_body_size: int = MAX_BODY_SIZE) -> None:
        if isinstance(max_body_size, bool) or not isinstance(max_body_size, int) or max_body_size < 1:
            raise PlaitError(f"max_body_size must be a positive int of bytes, got {max_body_size!r}")
        self.max_body_size = max_body_size
        self._executor = CorrelatedExecutor(self._running_provider)
        self._graph = ServiceGraph(container, instances={WorkflowExecutor: self._executor})
        self._user_container = container
        self._provider: WorkflowProvider | None = None
        self._workflows: dict[str, _Workflow] = {}
        self._controllers: list[tuple[str, str]] = []  # (component key, path)
        self._hooks: list[EventHook] = []
        self._routes: list[RouteSpec] = []
        self._asgi: Starlette | None = None
        self._apis: list[WorkflowsApi] = []
        self._lock = asyncio.Lock()
        self._built = False
        self._broken: BaseException | None = None
        self._started = False
        self._resources_up = False
        self.context = AppContext(self)
        """The executor, provider and services for code outside requests."""

    # -- building --

    def provider(self, cls: type[object], deps: Sequence[Dependency] = ()) -> Application:
        """Registers a singleton service: ``cls(*deps)``, built once at ``start()``.

        Args:
            cls: the service class.
            deps: its constructor arguments, in order: classes registered with ``.provider()`` (in any order of
                registration), classes your container provides, providers of your container, or
                ``WorkflowExecutor`` for the application's executor.

        Raises:
            PlaitError: ``cls`` is registered already or a dependency is neither a class nor a provider.
        """
        self._check_open("a provider")
        self._graph.add_service(cls, deps)
        return self

    def workflow_provider(self, provider: WorkflowProvider) -> Application:
        """Sets the workflow provider; without one, ``start()`` uses the in-process provider."""
        self._check_open("a workflow provider")
        if not isinstance(provider, WorkflowProvider):
            raise PlaitError(f"workflow_provider() takes a WorkflowProvider, got {type(provider).__name__}")
        self._provider = provider
        return self

    def workflow(self, definition: WorkflowDefinition[D, R]) -> WorkflowRegistration[D, R]:
        """Registers a workflow definition; chain ``.consumer(...)`` to run its flows here.

        Raises:
            DefinitionError: ``definition`` is not a workflow definition, or its name is registered already.
        """
        self._check_open("a workflow")
        if not isinstance(definition, WorkflowDefinition):
            raise DefinitionError(f"workflow() takes a definition from Workflow.define(), got {definition!r}")
        if definition.name in self._workflows:
            raise DefinitionError(f"Workflow '{definition.name}' is registered twice")
        self._workflows[definition.name] = _Workflow(definition)
        return WorkflowRegistration(self, definition)

    def on_event(self, hook: EventHook) -> Application:
        """Calls ``async hook(event)`` for every event of every flow this process records (a step started, a
        rollback failed, a flow completed, ...), in order; a hook that raises is logged and never fails a flow.

        For metrics, audit logs, notifications. Hooks run in this process only, at least once per event across
        crashes (a durable provider may call one again after a worker dies); each event carries its flow id and
        its sequence number, so a hook can drop what it saw already.
        """
        self._check_open("an event hook")
        if not callable(hook):
            raise PlaitError(f"on_event() takes an async function of a FlowEvent, got {hook!r}")
        self._hooks.append(hook)
        return self

    def controller(self, path: str, cls: type[object], deps: Sequence[Dependency] = ()) -> Application:
        """Adds a controller: ``cls(*deps)`` whose ``configure(self, r: RouteBuilder)`` declares routes under
        ``path`` (``"/orders"``), each handled by ``async def handler(self, ctx: RequestContext) -> Response``.

        Raises:
            PlaitError: ``cls`` has no ``configure`` method or a dependency is neither a class nor a provider.
        """
        self._check_open("a controller")
        if not isinstance(path, str):
            raise PlaitError(f"controller() takes a path string first, got {path!r}")
        if not callable(getattr(cls, "configure", None)):
            raise PlaitError(
                f"Controller {getattr(cls, '__name__', cls)!r} has no configure(self, r: RouteBuilder) method"
            )
        key = f"controller:{len(self._controllers)}"
        self._graph.add_component(key, cls, deps, f"controller at '{path}'")
        self._controllers.append((key, path))
        return self

    def _add_consumer(
        self,
        definition: WorkflowDefinition[D, R],
        cls: type[IWorkflowConsumer[D, R]],
        deps: Sequence[Dependency],
        options: ConsumerOptions | None,
    ) -> Application:
        self._check_open("a consumer")
        workflow = self._workflows[definition.name]
        if workflow.consumer is not None:
            raise DefinitionError(f"Workflow '{definition.name}' already has a consumer")
        if options is not None and not isinstance(options, ConsumerOptions):
            raise DefinitionError(
                f"Options of workflow '{definition.name}' must be ConsumerOptions, got {type(options).__name__}"
            )
        key = f"consumer:{definition.name}"
        self._graph.add_component(key, cls, deps, f"consumer of workflow '{definition.name}'")
        workflow.consumer = key
        workflow.options = options
        return self

    def _check_open(self, what: str) -> None:
        if self._built:
            raise PlaitError(f"Cannot add {what} after the application has started")

    # -- running --

    @property
    def started(self) -> bool:
        """True between a successful ``start()`` and ``stop()``."""
        return self._started

    async def start(self) -> None:
        """Builds everything (first time only), registers the workflows and starts the provider; idempotent.

        Raises:
            PlaitError: a wiring error: a missing dependency (naming it and who needs it), a cycle (naming it),
                a constructor that does not take its dependencies, a controller route declared twice; or the
                in-process provider is needed and not installed.
            DefinitionError: a consumer does not implement its workflow's steps.
        """
        async with self._lock:
            if self._started:
                return
            if self._broken is not None:
                raise PlaitError(
                    "This application failed to start and cannot be started again; build a new one"
                ) from self._broken
            await self._init_resources()
            try:
                if not self._built:
                    self._build(await self._build_graph())
                assert self._provider is not None
                await self._provider.start()
            except BaseException:
                await self._shutdown_resources()
                raise
            self._started = True

    async def stop(self) -> None:
        """Stops the provider (running flows finish within its grace period) and shuts down your container's
        resources; idempotent and safe before ``start()``."""
        async with self._lock:
            if not self._started:
                return
            self._started = False
            try:
                assert self._provider is not None
                await self._provider.stop()
            finally:
                await self._shutdown_resources()

    async def _build_graph(self) -> WorkflowProvider:
        try:
            provider = self._provider or _default_provider()
            await self._graph.build()
        except BaseException as error:
            self._broken = error
            raise
        return provider

    def _build(self, provider: WorkflowProvider) -> None:
        try:
            self._routes = self._collect_routes()
            for workflow in self._workflows.values():
                consumer = None if workflow.consumer is None else self._graph.component(workflow.consumer)
                # The component was registered by consumer(), typed as a consumer of this very definition.
                typed = cast("IWorkflowConsumer[Any, Any] | None", consumer)
                provider.register(workflow.definition, typed, workflow.options)
            for hook in self._hooks:
                provider.on_event(hook)
        except BaseException as error:
            self._broken = error
            raise
        self._provider = provider
        self._built = True
        if self._asgi is not None:
            self._asgi.router.routes.extend(self._starlette_routes())

    def _collect_routes(self) -> list[RouteSpec]:
        routes: list[RouteSpec] = []
        owners: dict[tuple[str, str], tuple[str, RouteSpec]] = {}
        for key, path in self._controllers:
            controller = self._graph.component(key)
            builder = RouteBuilder(path)
            controller.configure(builder)  # type: ignore[attr-defined]  # controller() checked it exists
            name = type(controller).__name__
            for route in builder.routes:
                if route.key in owners:
                    owner, first = owners[route.key]
                    raise PlaitError(
                        f"Route {first.method} {first.path} of {owner} and {route.method} {route.path} of {name} "
                        f"match the same requests"
                    )
                owners[route.key] = (name, route)
                routes.append(route)
        return routes

    def _starlette_routes(self) -> list[BaseRoute]:
        return list(build_routes(self._routes, self._executor, self.max_body_size))

    def _running_provider(self) -> WorkflowProvider:
        # Before the first start the provider has no registrations yet, so refuse here. After that, the provider
        # alone decides (it refuses new flows once stopped, but may still answer for the flows it knows).
        if not self._built or self._provider is None:
            raise ProviderNotStartedError("The Plait application is not started: await app.start() first")
        return self._provider

    async def _init_resources(self) -> None:
        if self._user_container is not None and not self._resources_up:
            await _maybe_await(self._user_container.init_resources())
            self._resources_up = True

    async def _shutdown_resources(self) -> None:
        if self._user_container is not None and self._resources_up:
            self._resources_up = False
            await _maybe_await(self._user_container.shutdown_resources())

    # -- serving --

    def asgi(self) -> Starlette:
        """Returns the application as a Starlette app (the same one each time); its lifespan starts and stops it.

        Requests that arrive while the application is not started get a 503 JSON response.
        """
        if self._asgi is None:
            self._asgi = Starlette(
                routes=self._starlette_routes(),
                middleware=[Middleware(PlaitMiddleware, is_started=lambda: self._started)],
                exception_handlers=exception_handlers(),
                lifespan=self.lifespan,
            )
            self._asgi.router.routes[:0] = [api.route() for api in self._apis]
        return self._asgi

    @contextlib.asynccontextmanager
    async def lifespan(self, host: object = None) -> AsyncIterator[None]:
        """Starts the application, yields while it serves, then stops it: a lifespan for any ASGI application.

        ``app.asgi()`` uses it. An application of your own that mounts ``workflows_api()`` (or ``asgi()``) runs
        Plait with it: ``FastAPI(lifespan=app.lifespan)``, ``Starlette(lifespan=app.lifespan)``, or
        ``async with app.lifespan(): ...`` inside a lifespan of your own.

        Args:
            host: the ASGI application whose lifespan this is (unused: Starlette passes it).
        """
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    def workflows_api(
        self, prefix: str = "/workflows", *, authorize: Authorize | None = None, ui: bool = True
    ) -> WorkflowsApi:
        """Serves the HTTP API over this application's workflows under ``prefix`` in ``asgi()``, and returns it.

        The API starts flows (``POST {prefix}/{workflow}``), lists, describes and streams them, signals, cancels,
        compensates and retries them, and describes itself (``GET {prefix}/openapi.json``); with ``ui``, it
        serves the run inspector page at ``{prefix}/ui``. The returned API is an ASGI application that mounts
        into any Starlette or FastAPI application too (run Plait's start and stop with :meth:`lifespan` there).

        Args:
            prefix: where to serve it, like ``/workflows``.
            authorize: ``authorize(request, action, workflow) -> bool`` (sync or async), asked before every
                change (``action`` is ``start``, ``signal``, ``cancel``, ``compensate``, ``retry`` or
                ``retry_compensation``); only ``True`` allows. Without it the API is read-only: changes get a 403.
            ui: whether to serve the inspector page.

        Raises:
            PlaitError: ``prefix`` is not a path below the root, or another API is served there already.
        """
        api = WorkflowsApi(
            self._executor,
            self._registered_workflows,
            is_started=lambda: self._started,
            prefix=prefix,
            authorize=authorize,
            ui=ui,
            max_body_size=self.max_body_size,
        )
        if any(other.prefix == api.prefix for other in self._apis):
            raise PlaitError(f"A workflows API is served at '{api.prefix}' already")
        self._apis.append(api)
        if self._asgi is not None:
            self._asgi.router.routes.insert(0, api.route())
        return api

    def _registered_workflows(self) -> dict[str, tuple[WorkflowDefinition[Any, Any], object | None]]:
        # Consumers exist once the application is built; before that the API knows the definitions only.
        return {
            name: (w.definition, self._graph.component(w.consumer) if self._built and w.consumer else None)
            for name, w in self._workflows.items()
        }

    async def serve(self, port: int = 8000, host: str = "127.0.0.1", *, log_level: str = "info") -> None:
        """Starts the application, serves it with uvicorn until interrupted, then stops it.

        The application starts before the socket opens, so a wiring error raises here rather than being logged
        by the server.
        """
        import uvicorn  # only a server needs it

        await self.start()
        try:
            config = uvicorn.Config(self.asgi(), host=host, port=port, lifespan="on", log_level=log_level)
            await uvicorn.Server(config).serve()
        finally:
            await self.stop()

    def listen(self, port: int = 8000, host: str = "127.0.0.1", *, loop: LoopChoice = "auto") -> None:
        """Serves the application with uvicorn on ``host:port`` until interrupted (Ctrl-C); blocks.

        Args:
            loop: the event loop: ``auto`` (uvloop's when it is installed, as uvicorn itself chooses), ``uvloop``
                or ``asyncio`` (see :mod:`plait.core.loops`).
        """
        with contextlib.suppress(KeyboardInterrupt):
            run(self.serve(port=port, host=host), loop)

    def __repr__(self) -> str:
        state = "started" if self._started else "stopped"
        return f"Application({state}, workflows={list(self._workflows)!r})"


def _default_provider() -> WorkflowProvider:
    try:
        from plait.providers.inprocess import InProcessWorkflowProvider
    except ImportError as error:
        raise PlaitError(_INSTALL_HINT) from error
    return InProcessWorkflowProvider()


async def _maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value
