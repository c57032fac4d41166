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
)
from plait.core.routing import error_response

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
    if isinstance(error, ApiError):
        return problem(error.http_status, error.code, error.message, **error.extra)
    response = error_response(error)
    if response is not None:
        if isinstance(error, CorruptFlowError):
            _log.error("%s", error)
        return response
    if isinstance(error, ValueError):  # the executor's word for a bad flow id or list argument
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
