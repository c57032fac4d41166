"""Errors as JSON: every refusal of the API is ``{"error": <code>, "message": ..., ...}`` with its status code.

Anything unexpected is logged with its traceback and answered with a bare 500, so no stack trace ever reaches a
client.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import pydantic_core
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from plait.core.errors import (
    CorruptFlowError,
    FlowConflictError,
    FlowNotFoundError,
    FlowStateError,
    PayloadTooLargeError,
    ProviderNotStartedError,
    ProviderUnavailableError,
    SignalError,
    WorkflowNotRegisteredError,
    WorkflowValidationError,
)
from plait.core.routing import InvalidBodyError, RequestBodyError, field_errors

__all__ = ["ApiError", "Endpoint", "guarded", "problem"]

Endpoint = Callable[[Request], Awaitable[Response]]

_log = logging.getLogger("plait.api")


class ApiError(Exception):
    """A refusal the API answers as JSON: an HTTP status, an ``error`` code, a message and extra fields."""

    def __init__(self, http_status: int, code: str, message: str, **extra: object) -> None:
        self.http_status = http_status
        self.code = code
        self.message = message
        self.extra = extra
        super().__init__(message)


def problem(http_status: int, code: str, message: str, **extra: object) -> JSONResponse:
    """The JSON response of a refusal; ``extra`` fields may be pydantic models, enums or dates."""
    body = pydantic_core.to_jsonable_python({"error": code, "message": message, **extra})
    return JSONResponse(body, status_code=http_status)


def to_response(error: Exception) -> JSONResponse:
    """The JSON response for an exception an endpoint raised (500 for anything unexpected)."""
    match error:
        case ApiError():
            return problem(error.http_status, error.code, error.message, **error.extra)
        case InvalidBodyError():
            return problem(422, "invalid_json" if error.not_json else "invalid_body", error.detail, fields=error.fields)
        case RequestBodyError():
            return problem(error.status_code, error.code, error.detail)
        case WorkflowValidationError():
            return problem(422, "invalid_workflow_data", str(error), fields=field_errors(error.errors))
        case PayloadTooLargeError():
            return problem(413, "payload_too_large", str(error), size=error.size, limit=error.limit)
        case FlowNotFoundError():
            return problem(404, "flow_not_found", str(error), flow_id=error.flow_id)
        case WorkflowNotRegisteredError():
            return problem(404, "workflow_not_registered", str(error), workflow=error.workflow)
        case FlowConflictError():
            return problem(409, "flow_conflict", str(error), flow_id=error.flow_id)
        case FlowStateError():
            return problem(409, "flow_state", str(error), flow_id=error.flow_id, status=error.status)
        case SignalError():
            return problem(409, "signal_refused", str(error))
        case ProviderNotStartedError():
            return problem(503, "not_started", str(error))
        case ProviderUnavailableError():
            return problem(503, "unavailable", str(error))
        case CorruptFlowError():
            _log.error("%s", error)
            return problem(500, "corrupt_flow", str(error), flow_id=error.flow_id)
        case ValueError():  # the executor's word for a bad flow id or list argument
            return problem(400, "bad_request", str(error))
    return problem(500, "internal_error", "The server could not handle this request; the error is in its log")


def guarded(endpoint: Endpoint) -> Endpoint:
    """Wraps an endpoint so that whatever it raises becomes a JSON response (and an unexpected error a log)."""

    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as error:
            response = to_response(error)
            if response.status_code == 500 and not isinstance(error, CorruptFlowError):
                _log.exception("Unexpected error in %s %s", request.method, request.url.path)
            return response

    return wrapper
