"""Controllers and request handlers: routes declared by ``configure(r: RouteBuilder)``, handlers given a
:class:`RequestContext`.

Each request gets a correlation id: its ``x-correlation-id`` header, else its ``x-request-id``, else a new one. It
is echoed in the response's ``x-correlation-id`` header, bound to ``ctx.workflows`` (so every flow the handler
starts carries it as ``meta["correlation_id"]``, which steps see as ``ctx.correlation_id``) and set for the
request's duration in :data:`plait.core.executor.current_correlation_id`, which executors injected into services
read.

Errors a handler lets through become JSON responses ``{"error": <code>, "message": ..., ...}``: a body that is not
JSON or does not validate (``ctx.body``) and data ``execute()`` rejects are 422 with ``fields`` naming each invalid
field, a body sent without a JSON content type is 415 (a cross-site form cannot send one), a body over the size
limit is 413, an unknown flow id is 404, a provider that is not running or cannot reach its store is 503;
anything else is Starlette's 500.
"""

from __future__ import annotations

import inspect
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, TypeVar

import pydantic_core
from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers, MutableHeaders, QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plait.core.errors import (
    CorruptFlowError,
    FlowConflictError,
    FlowNotFoundError,
    FlowStateError,
    PayloadTooLargeError,
    PlaitError,
    ProviderNotStartedError,
    ProviderUnavailableError,
    SignalError,
    WorkflowNotRegisteredError,
    WorkflowValidationError,
)
from plait.core.executor import CorrelatedExecutor, current_correlation_id
from plait.core.provider import WorkflowExecutor

__all__ = ["Handler", "RequestContext", "RouteBuilder", "error_response"]

M = TypeVar("M", bound=BaseModel)

Handler: TypeAlias = "Callable[[RequestContext], Awaitable[Response]]"
"""A request handler: ``async def handler(self, ctx: RequestContext) -> Response`` (bound to its controller)."""

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]

CORRELATION_HEADER = "x-correlation-id"
REQUEST_ID_HEADER = "x-request-id"
_SCOPE_KEY = "plait.correlation_id"
_MAX_ID_LENGTH = 200
MAX_BODY_SIZE = 1024 * 1024
"""The default limit of a request body read by ``ctx.body()``: 1 MiB."""
_PARAM = re.compile(r"{[^}:]*(:[^}]*)?}")

_log = logging.getLogger("plait.app")


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One declared route: its method, its full path (controller prefix included) and its handler."""

    method: Method
    path: str
    handler: Handler

    @property
    def key(self) -> tuple[str, str]:
        """Method and path with parameter names left out: ``/{id}`` and ``/{order_id}`` match the same requests."""
        return self.method, _PARAM.sub(lambda m: "{" + (m.group(1) or "") + "}", self.path)


class RouteBuilder:
    """What a controller's ``configure(r)`` declares its routes on.

    Paths use Starlette's syntax (``/{flow_id}``, ``/{n:int}``) and are relative to the controller's path:
    under ``.controller("/orders", ...)``, ``r.post("/", h)`` serves ``POST /orders`` and
    ``r.get("/{flow_id}", h)`` serves ``GET /orders/{flow_id}``.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self._routes: list[RouteSpec] = []

    def get(self, path: str, handler: Handler) -> RouteBuilder:
        """Serves ``GET`` (and ``HEAD``) requests to ``path`` with ``handler``."""
        return self._add("GET", path, handler)

    def post(self, path: str, handler: Handler) -> RouteBuilder:
        """Serves ``POST`` requests to ``path`` with ``handler``."""
        return self._add("POST", path, handler)

    def put(self, path: str, handler: Handler) -> RouteBuilder:
        """Serves ``PUT`` requests to ``path`` with ``handler``."""
        return self._add("PUT", path, handler)

    def patch(self, path: str, handler: Handler) -> RouteBuilder:
        """Serves ``PATCH`` requests to ``path`` with ``handler``."""
        return self._add("PATCH", path, handler)

    def delete(self, path: str, handler: Handler) -> RouteBuilder:
        """Serves ``DELETE`` requests to ``path`` with ``handler``."""
        return self._add("DELETE", path, handler)

    @property
    def routes(self) -> tuple[RouteSpec, ...]:
        """The routes declared so far, in order."""
        return tuple(self._routes)

    def _add(self, method: Method, path: str, handler: Handler) -> RouteBuilder:
        if not isinstance(path, str):
            raise PlaitError(f"Route path must be a string, got {path!r}")
        full = join_path(self.prefix, path)
        if not _is_async(handler):
            raise PlaitError(
                f"Handler of {method} {full} must be an async function taking a RequestContext, got {handler!r}"
            )
        route = RouteSpec(method, full, handler)
        for other in self._routes:
            if other.key == route.key:
                raise PlaitError(f"Route {method} {full} is declared twice" + _as(other, route))
        self._routes.append(route)
        return self


def _as(first: RouteSpec, second: RouteSpec) -> str:
    return "" if first.path == second.path else f" (as {first.path})"


def _is_async(handler: object) -> bool:
    call = type(handler).__call__ if callable(handler) and not inspect.isroutine(handler) else None
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)


def join_path(prefix: str, path: str) -> str:
    """``/orders`` + ``/{id}`` -> ``/orders/{id}``; an empty or ``/`` path is the prefix itself."""
    parts = [p.strip("/") for p in (prefix, path)]
    return "/" + "/".join(p for p in parts if p)


class RequestContext:
    """What a request handler gets: the request, its parameters and body, and the workflow executor.

    Attributes:
        request: the Starlette request.
        workflows: the application's executor, bound to this request's correlation id.
        correlation_id: this request's correlation id (also echoed in the ``x-correlation-id`` response header).
        max_body_size: the most bytes ``body()`` reads (``Plait.create(max_body_size=...)``).
    """

    __slots__ = ("correlation_id", "max_body_size", "request", "workflows")

    def __init__(
        self, request: Request, workflows: WorkflowExecutor, correlation_id: str, max_body_size: int = MAX_BODY_SIZE
    ) -> None:
        self.request = request
        self.workflows = workflows
        self.correlation_id = correlation_id
        self.max_body_size = max_body_size

    @property
    def params(self) -> Mapping[str, Any]:
        """Path parameters, converted per the route's syntax (``{id}`` is a ``str``, ``{n:int}`` an ``int``)."""
        return self.request.path_params

    @property
    def query(self) -> QueryParams:
        """Query-string parameters (a multi-dict of strings)."""
        return self.request.query_params

    async def body(self, model: type[M]) -> M:
        """Parses the JSON body into ``model``.

        The request must say its body is JSON (``Content-Type: application/json``, or another ``+json`` type):
        a cross-site form post cannot, so a browser cannot be tricked into starting a flow.

        Raises:
            HTTPException: a subclass that the application turns into a JSON response: 415 without a JSON
                content type, 413 for a body over ``max_body_size``, 422 naming each invalid field (or saying the
                body is not JSON).
        """
        raw = await read_json_body(self.request, self.max_body_size)
        try:
            return model.model_validate_json(raw)
        except ValidationError as error:
            raise InvalidBodyError(model, error) from None

    def json(self, data: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        """A JSON response; pydantic models, dates, enums and the like anywhere in ``data`` are serialized."""
        return Response(pydantic_core.to_json(data), status_code=status, headers=headers, media_type="application/json")

    def __repr__(self) -> str:
        return f"RequestContext({self.request.method} {self.request.url.path}, correlation_id={self.correlation_id!r})"


def is_json_content_type(value: str) -> bool:
    """Whether a ``Content-Type`` header value names JSON (``application/json`` or ``application/<x>+json``)."""
    media = value.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_json_body(request: Request, limit: int) -> bytes:
    """Reads a request's body, refusing one that is not declared JSON (415) or is longer than ``limit`` (413)."""
    if not is_json_content_type(request.headers.get("content-type", "")):
        raise RequestBodyError(
            415, "unsupported_media_type", "The request body must be JSON: send Content-Type: application/json"
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # later request.body() calls read it from here, as Starlette does itself
    return body


def _too_large(limit: int) -> RequestBodyError:
    return RequestBodyError(413, "body_too_large", f"The request body is larger than the limit of {limit:,} bytes")


class RequestBodyError(HTTPException):
    """A request body refused before parsing: not declared JSON (415) or too large (413)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.code = code
        super().__init__(status, message)


class InvalidBodyError(HTTPException):
    """The request body is not JSON, or does not validate against the handler's model (a 422 response)."""

    def __init__(self, model: type[BaseModel], error: ValidationError) -> None:
        self.fields = field_errors(error.errors(include_url=False, include_context=False, include_input=False))
        self.not_json = any(f["type"] == "json_invalid" for f in self.fields)
        if self.not_json:
            reason = self.fields[0]["message"].removeprefix("Invalid JSON: ")
            message = f"The request body is not valid JSON: {reason}"
            self.fields = []
        else:
            names = ", ".join(f["field"] for f in self.fields)
            message = f"The request body does not match {model.__name__}: invalid {names}"
        super().__init__(422, message)


def field_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Pydantic's errors as ``{"field": "items.0.quantity", "message": ..., "type": ...}``."""
    return [
        {
            "field": ".".join(str(part) for part in e.get("loc", ())) or "(body)",
            "message": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in errors
    ]


def build_routes(
    specs: Sequence[RouteSpec], executor: CorrelatedExecutor, max_body_size: int = MAX_BODY_SIZE
) -> list[Route]:
    """Starlette routes that call each handler with a :class:`RequestContext`."""
    return [Route(spec.path, _endpoint(spec, executor, max_body_size), methods=[spec.method]) for spec in specs]


def request_correlation_id(request: Request) -> str:
    """The correlation id the middleware gave ``request`` (a new one outside the middleware)."""
    return request.scope.get(_SCOPE_KEY) or current_correlation_id.get() or new_correlation_id()


def _endpoint(
    spec: RouteSpec, executor: CorrelatedExecutor, max_body_size: int
) -> Callable[[Request], Awaitable[Response]]:
    handler = spec.handler

    async def endpoint(request: Request) -> Response:
        correlation_id = request_correlation_id(request)
        ctx = RequestContext(request, executor.bind(correlation_id), correlation_id, max_body_size)
        response = await handler(ctx)
        if not isinstance(response, Response):
            raise TypeError(
                f"Handler of {spec.method} {spec.path} returned {type(response).__name__}, not a Response: "
                f"return ctx.json(...) or a starlette Response"
            )
        return response

    endpoint.__name__ = getattr(handler, "__name__", "endpoint")
    return endpoint


def new_correlation_id() -> str:
    """A fresh correlation id (32 hex digits)."""
    return uuid.uuid4().hex


def correlation_id_from(headers: Headers) -> str:
    """The request's ``x-correlation-id``, else its ``x-request-id``, else a new id.

    A header value that is empty, too long or not printable is ignored rather than copied into logs and flows.
    """
    for name in (CORRELATION_HEADER, REQUEST_ID_HEADER):
        value = headers.get(name, "").strip()
        if value and len(value) <= _MAX_ID_LENGTH and value.isprintable():
            return value
    return new_correlation_id()


class PlaitMiddleware:
    """Gives each HTTP request its correlation id and answers 503 while the application is not started."""

    def __init__(self, app: ASGIApp, is_started: Callable[[], bool]) -> None:
        self.app = app
        self.is_started = is_started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        correlation_id = correlation_id_from(Headers(scope=scope))
        scope[_SCOPE_KEY] = correlation_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if CORRELATION_HEADER not in headers:
                    headers.append(CORRELATION_HEADER, correlation_id)
            await send(message)

        if not self.is_started():
            response = _error(
                503,
                "not_started",
                "The Plait application is not started: serve it with its lifespan (uvicorn, "
                "`with TestClient(app.asgi())`) or await app.start() first",
            )
            await response(scope, receive, send_with_id)
            return
        token = current_correlation_id.set(correlation_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_correlation_id.reset(token)


def exception_handlers() -> dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]]:
    """JSON responses for the errors a handler lets through (see :func:`error_response`)."""
    return {kind: _respond for kind in (InvalidBodyError, RequestBodyError, *_PLAIT_ERRORS)}


_PLAIT_ERRORS: tuple[type[PlaitError], ...] = (
    WorkflowValidationError,
    PayloadTooLargeError,
    FlowNotFoundError,
    WorkflowNotRegisteredError,
    FlowConflictError,
    FlowStateError,
    SignalError,
    ProviderNotStartedError,
    ProviderUnavailableError,
    CorruptFlowError,
)


def error_response(error: Exception) -> JSONResponse | None:
    """The JSON response for an error Plait raises while handling a request, or ``None`` for any other error.

    Bad bodies and data are 422 (413 too large, 415 not JSON), unknown flows and workflows 404, conflicts with a
    flow's id or status and refused signals 409, a provider not running or unreachable 503, and a flow whose
    stored state cannot be read 500 (with a message naming it). The HTTP API and controllers answer the same.
    """
    match error:
        case InvalidBodyError():
            return _error(422, "invalid_json" if error.not_json else "invalid_body", error.detail, fields=error.fields)
        case RequestBodyError():
            return _error(error.status_code, error.code, error.detail)
        case WorkflowValidationError():
            return _error(422, "invalid_workflow_data", str(error), fields=field_errors(error.errors))
        case PayloadTooLargeError():
            return _error(413, "payload_too_large", str(error), size=error.size, limit=error.limit)
        case FlowNotFoundError():
            return _error(404, "flow_not_found", str(error), flow_id=error.flow_id)
        case WorkflowNotRegisteredError():
            return _error(404, "workflow_not_registered", str(error), workflow=error.workflow)
        case FlowConflictError():
            return _error(409, "flow_conflict", str(error), flow_id=error.flow_id)
        case FlowStateError():
            return _error(409, "flow_state", str(error), flow_id=error.flow_id, status=str(error.status))
        case SignalError():
            return _error(409, "signal_refused", str(error))
        case ProviderNotStartedError():
            return _error(503, "not_started", str(error))
        case ProviderUnavailableError():
            return _error(503, "unavailable", str(error))
        case CorruptFlowError():
            return _error(500, "corrupt_flow", str(error), flow_id=error.flow_id)
    return None


async def _respond(request: Request, error: Exception) -> Response:
    if isinstance(error, ProviderNotStartedError | ProviderUnavailableError | CorruptFlowError):
        _log.error("%s while handling %s %s", error, request.method, request.url.path)
    response = error_response(error)
    assert response is not None  # the handlers are registered for these errors only
    return response


def _error(http_status: int, code: str, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=http_status)
