"""The workflows API as one ASGI application: its routes, its 404s and 405s as JSON, and Plait's middleware.

The same object serves under the Plait application's own ``asgi()`` (``app.workflows_api()`` mounts it there) and
mounts into any other Starlette or FastAPI application.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from plait.core.api.catalog import Catalog, Registered
from plait.core.api.control import Control
from plait.core.api.flows import EventsEndpoint, Reads
from plait.core.api.problems import guarded, problem
from plait.core.api.security import Authorize, Guard
from plait.core.api.services import Services
from plait.core.api.ui import Inspector
from plait.core.errors import PlaitError
from plait.core.executor import CorrelatedExecutor
from plait.core.routing import MAX_BODY_SIZE, PlaitMiddleware

__all__ = ["WorkflowsApi"]


class WorkflowsApi:
    """The HTTP API over an application's workflows, and its run inspector page; an ASGI application.

    Made by ``app.workflows_api(prefix, authorize=..., ui=...)``, which also serves it under ``prefix`` in
    ``app.asgi()``. To serve it from another Starlette or FastAPI application instead, mount it there, and run
    the Plait application's start and stop in that application's lifespan::

        host = FastAPI(lifespan=app.lifespan)
        host.mount("/workflows", app.workflows_api())

    Until the Plait application has started, every request gets a 503.

    Attributes:
        prefix: where ``app.asgi()`` serves it (``/workflows``).
    """

    def __init__(
        self,
        executor: CorrelatedExecutor,
        registered: Registered,
        *,
        is_started: Callable[[], bool],
        prefix: str = "/workflows",
        authorize: Authorize | None = None,
        ui: bool = True,
        max_body_size: int = MAX_BODY_SIZE,
    ) -> None:
        if not isinstance(prefix, str) or not prefix.startswith("/") or prefix.rstrip("/") == "":
            raise PlaitError(
                f"The workflows API prefix must be a path below the root, like '/workflows'; got {prefix!r}"
            )
        self.prefix = prefix.rstrip("/")
        services = Services(executor, Catalog(registered), Guard(authorize), max_body_size)
        self._app = PlaitMiddleware(
            Starlette(routes=_routes(services, ui), exception_handlers={HTTPException: _http_error}), is_started
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    def route(self) -> Mount:
        """A Starlette route serving the API under its prefix: ``Starlette(routes=[api.route(), ...])``."""
        return Mount(self.prefix, app=self)

    def __repr__(self) -> str:
        return f"WorkflowsApi(prefix={self.prefix!r})"


def _routes(services: Services, ui: bool) -> list[BaseRoute]:
    reads = Reads(services)
    control = Control(services)
    flow = "/flows/{flow_id:path}"  # flow ids may hold '/': the routes with a suffix come first
    routes: list[BaseRoute] = [
        Route("/workflows", guarded(reads.workflows), methods=["GET"]),
        Route("/permissions", guarded(reads.permissions), methods=["GET"]),
        Route("/openapi.json", guarded(reads.openapi), methods=["GET"]),
        Route("/flows", guarded(reads.list_flows), methods=["GET"]),
        Route(f"{flow}/result", guarded(reads.result), methods=["GET"]),
        Route(f"{flow}/events", EventsEndpoint(services), methods=["GET"]),
        Route(f"{flow}/signals/{{name}}", guarded(control.signal), methods=["POST"]),
        Route(f"{flow}/cancel", guarded(control.cancel), methods=["POST"]),
        Route(f"{flow}/compensate", guarded(control.compensate), methods=["POST"]),
        Route(f"{flow}/retry", guarded(control.retry), methods=["POST"]),
        Route(f"{flow}/retry-compensation", guarded(control.retry_compensation), methods=["POST"]),
        Route(flow, guarded(reads.describe), methods=["GET"]),
        Route("/{workflow}", guarded(control.start), methods=["POST"]),
    ]
    if ui:
        inspector = Inspector()
        routes += [
            Route("/", _to_inspector, methods=["GET"]),
            Route("/ui", inspector.page, methods=["GET"]),
            Route("/ui/{asset}", inspector.asset, methods=["GET"]),
        ]
    return routes


async def _to_inspector(request: Request) -> Response:
    return RedirectResponse(f"{request.scope.get('root_path', '')}/ui", status_code=307)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    if error.status_code == 405:
        return problem(405, "method_not_allowed", f"{request.method} is not allowed here")
    return problem(error.status_code, "not_found", f"No route {request.method} {request.url.path}")
