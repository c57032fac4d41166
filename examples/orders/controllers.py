"""The order API: place an order (202 and a flow id), then look at what became of it."""

from __future__ import annotations

import hashlib
import uuid

from starlette.responses import Response

from examples.orders.models import OrderData, PlaceOrder
from examples.orders.services import InventoryService, OrderRecord, OrderRepository, UnknownProductError
from examples.orders.workflows import ProcessOrder
from plait.core import (
    FlowConflictError,
    RequestContext,
    RouteBuilder,
    WorkflowError,
    WorkflowRollbackError,
    WorkflowStepError,
)


class OrderController:
    """``POST /orders``, ``GET /orders`` and ``GET /orders/{flow_id}``."""

    def __init__(self, inventory: InventoryService, orders: OrderRepository) -> None:
        self.inventory = inventory
        self.orders = orders

    def configure(self, r: RouteBuilder) -> None:
        r.post("/", self.place)
        r.get("/", self.list_orders)
        r.get("/{flow_id}", self.show)

    async def place(self, ctx: RequestContext) -> Response:
        """Accepts an order and starts processing it; answers 202 before anything is charged.

        With an ``Idempotency-Key`` header, a retried request returns the flow the first one started.
        """
        order = await ctx.body(PlaceOrder)
        try:
            total = self.inventory.price(order.items)
        except UnknownProductError as error:
            return ctx.json({"error": "unknown_sku", "message": str(error)}, status=422)
        order_id = _order_id(order.customer_id, ctx.request.headers.get("idempotency-key"))
        data = OrderData.model_validate({**order.model_dump(), "order_id": order_id, "total_cents": total})
        record = self.orders.open(order_id, order.customer_id, total)
        try:
            handle = await ctx.workflows.execute(ProcessOrder, data, id=f"flow-{order_id}")
        except FlowConflictError as error:
            return ctx.json({"error": "idempotency_key_reused", "message": str(error)}, status=409)
        record.flow_id = handle.id
        location = f"{ctx.request.url.path.rstrip('/')}/{handle.id}"
        return ctx.json({"order_id": order_id, "flow_id": handle.id}, status=202, headers={"location": location})

    async def list_orders(self, ctx: RequestContext) -> Response:
        return ctx.json(
            [
                {
                    "order_id": record.order_id,
                    "flow_id": record.flow_id,
                    "status": await ctx.workflows.get_status(record.flow_id),
                }
                for record in self.orders.orders.values()
                if record.flow_id is not None
            ]
        )

    async def show(self, ctx: RequestContext) -> Response:
        """The flow's status; once it has ended, its result, or its error and the steps that were compensated.

        An unknown flow id is a 404 (the application maps ``FlowNotFoundError``).
        """
        flow_id: str = ctx.params["flow_id"]
        # The provider's record of each step: right whichever process (or worker) ran the steps.
        info = await ctx.workflows.describe(flow_id)
        record = self.orders.by_flow(flow_id)
        body: dict[str, object] = {
            "flow_id": flow_id,
            "order_id": record.order_id if record else None,
            "status": info.status,
            "steps": {step.name: step.status for step in info.steps},
        }
        if info.status.is_terminal:
            handle = await ctx.workflows.get_handle(flow_id)
            try:
                body["result"] = await handle.result()
            except WorkflowError as error:
                body["error"] = describe_error(error)
                body["compensated"] = list(info.compensated)
        # What this process's services did for the order (steps run by other workers are not in it).
        body["history"] = _history(record)
        return ctx.json(body)


def describe_error(error: WorkflowError) -> dict[str, object]:
    """A flow's error as JSON: what failed first, and which rollbacks failed too (if any)."""
    primary = error.primary_error if isinstance(error, WorkflowRollbackError) else error
    described: dict[str, object] = {"type": type(primary).__name__, "message": str(primary)}
    if isinstance(primary, WorkflowStepError):
        described["step"] = primary.step_name
    if isinstance(error, WorkflowRollbackError):
        described["rollback_failures"] = [{"step": e.step_name, "message": str(e)} for e in error.rollback_errors]
    return described


def _history(record: OrderRecord | None) -> list[dict[str, str]]:
    if record is None:
        return []
    return [{"step": e.step, "outcome": e.outcome, "detail": e.detail, "at": e.at.isoformat()} for e in record.events]


def _order_id(customer_id: str, idempotency_key: str | None) -> str:
    if idempotency_key is None:
        return f"ord_{uuid.uuid4().hex[:16]}"
    return "ord_" + hashlib.sha256(f"{customer_id}\n{idempotency_key}".encode()).hexdigest()[:16]
