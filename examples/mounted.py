"""The order service's workflows inside an application you already have: here a FastAPI app (Starlette works the
same way) that mounts Plait's workflows API and inspector, and runs Plait's start and stop in its own lifespan.

    uv run uvicorn examples.mounted:host --port 8002     # then open http://127.0.0.1:8002/ops/workflows/ui

FastAPI is not a dependency of Plait: install it with your application (the example and its test use the
workspace's dev dependencies).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, HTTPException

from examples.orders.app import create_app, operators_on_this_machine
from examples.orders.models import OrderData, PlaceOrder
from examples.orders.services import InventoryService, UnknownProductError
from examples.orders.workflows import ProcessOrder

orders = create_app(workflows_api=False)
"""The Plait application: services, workflows and consumers (its own controllers go unused here)."""

workflows_api = orders.workflows_api("/ops/workflows", authorize=operators_on_this_machine)
"""Plait's API over the order workflows: an ASGI app to mount wherever the host wants it."""


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The host's own start-up and shut-down go around Plait's: Plait starts after them and stops before them.
    async with orders.lifespan(app):
        yield


host = FastAPI(title="Shop", lifespan=lifespan)
host.mount(workflows_api.prefix, workflows_api)


@host.get("/health")
async def health() -> dict[str, bool]:
    return {"plait": orders.started}


@host.post("/checkout", status_code=202)
async def checkout(order: PlaceOrder) -> dict[str, str]:
    """A route of the host that starts a flow with Plait's executor; the flow shows in the mounted inspector."""
    inventory = orders.context.resolve(InventoryService)
    try:
        total = inventory.price(order.items)
    except UnknownProductError as error:
        raise HTTPException(422, str(error)) from None
    order_id = f"ord_{uuid.uuid4().hex[:16]}"
    data = OrderData.model_validate({**order.model_dump(), "order_id": order_id, "total_cents": total})
    handle = await orders.context.workflows.execute(ProcessOrder, data, id=f"flow-{order_id}")
    return {"order_id": order_id, "flow_id": handle.id}
