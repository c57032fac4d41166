"""What the API's endpoints share: the executor, the workflows, the authorization guard and the body limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request

from plait.core.api.catalog import Catalog, CatalogEntry
from plait.core.api.problems import ApiError
from plait.core.api.security import Guard
from plait.core.executor import CorrelatedExecutor
from plait.core.routing import InvalidBodyError, read_json_body, request_correlation_id

__all__ = ["Services"]


@dataclass(frozen=True, slots=True)
class Services:
    """The API's collaborators.

    Attributes:
        executor: the application's executor; each request gets it bound to its correlation id.
        catalog: the workflows the API knows.
        guard: who may change what.
        max_body_size: the most bytes of a request body.
    """

    executor: CorrelatedExecutor
    catalog: Catalog
    guard: Guard
    max_body_size: int

    def workflows(self, request: Request) -> CorrelatedExecutor:
        """The executor bound to ``request``'s correlation id, so flows it starts carry that id."""
        return self.executor.bind(request_correlation_id(request))

    def workflow(self, name: str) -> CatalogEntry:
        """The registered workflow ``name``.

        Raises:
            ApiError: 404 ``workflow_not_found``.
        """
        entry = self.catalog.get(name)
        if entry is None or not entry.registered:
            raise ApiError(404, "workflow_not_found", f"No workflow '{name}' is registered here", workflow=name)
        return entry

    async def body(self, request: Request, model: type[BaseModel], *, optional: bool = False) -> Any:
        """The request's JSON body validated by ``model``; with ``optional``, an empty body is ``model()``.

        Raises:
            RequestBodyError: 415 without a JSON content type, 413 over ``max_body_size``.
            InvalidBodyError: 422, not JSON or not a valid ``model``.
        """
        raw = await read_json_body(request, self.max_body_size)
        if optional and not raw.strip():
            raw = b"{}"
        try:
            return model.model_validate_json(raw)
        except ValidationError as error:
            raise InvalidBodyError(model, error) from None

    async def json_object(self, request: Request) -> dict[str, Any]:
        """The request's JSON body, which must be an object (for a payload whose model only a worker knows).

        Raises:
            RequestBodyError: 415 without a JSON content type, 413 over ``max_body_size``.
            InvalidBodyError: 422, not a JSON object.
        """
        raw = await read_json_body(request, self.max_body_size)
        try:
            return _OBJECT.validate_json(raw)
        except ValidationError as error:
            raise InvalidBodyError(_JsonObject, error) from None


class _JsonObject(BaseModel):
    """A JSON object (named in messages about a body that is not one)."""


_OBJECT: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])
