"""The order API: place an order (202 and a flow id), look at what became of it, approve a large one, cancel one,
and finish the refunds that failed."""

from __future__ import annotations

import hashlib
import uuid

from starlette.responses import Response

from examples.orders.models import Approval, OrderData, PlaceOrder
from examples.orders.services import InventoryService, OrderRecord, OrderRepository, UnknownProductError
from examples.orders.workflows import ProcessOrder
from plait.core import (
    FlowConflictError,
    FlowInfo,
    FlowStateError,
    FlowStatus,
    RequestContext,
    RouteBuilder,
    SignalError,
    WorkflowError,
    WorkflowRollbackError,
    WorkflowStepError,
)

CANCEL_REASON = "cancelled by the customer"


class OrderController:
    """Orders: place, list, show; approve (a manager), cancel (the customer), retry failed refunds (an operator)."""

    def __init__(self, inventory: InventoryService, orders: OrderRepository) -> None:
        self.inventory = inventory
        self.orders = orders

    def configure(self, r: RouteBuilder) -> None:
        r.post("/", self.place)
        r.get("/", self.list_orders)
        r.get("/approvals", self.approvals)  # before /{flow_id}, which would match it too
        r.get("/failed-refunds", self.failed_refunds)
        r.get("/{flow_id}", self.show)
        r.post("/{flow_id}/approval", self.approve)
        r.post("/{flow_id}/cancel", self.cancel)
        r.post("/{flow_id}/retry-refund", self.retry_refund)

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
        body["actions"] = _actions(ctx.request.url.path.rstrip("/"), info)
        return ctx.json(body)

    async def approve(self, ctx: RequestContext) -> Response:
        """A manager's decision on an order waiting for approval: ``{"approved": true, "manager": "..."}``.

        A decision sent before the order reaches its approval step is kept for it; the same decision twice is
        accepted, a different one is a 409, and so is a decision for an order that needs none or has ended.
        """
        flow_id: str = ctx.params["flow_id"]
        decision = await ctx.body(Approval)
        info = await ctx.workflows.describe(flow_id)
        if info.step("approval").status == "skipped":
            return ctx.json({"error": "no_approval_needed", "message": "This order needs no approval"}, status=409)
        try:
            await ctx.workflows.signal(flow_id, "approval", decision)
        except SignalError as error:
            return ctx.json({"error": "approval_refused", "message": str(error)}, status=409)
        return ctx.json({"flow_id": flow_id, "status": await ctx.workflows.get_status(flow_id)}, status=202)

    async def cancel(self, ctx: RequestContext) -> Response:
        """The customer cancels: an order still in progress is cancelled, a completed one is undone (refunded,
        its shipment cancelled, its stock released). Either way, what was done is rolled back in reverse order."""
        flow_id: str = ctx.params["flow_id"]
        status = await ctx.workflows.get_status(flow_id)
        if status == FlowStatus.COMPLETED:
            status = await ctx.workflows.compensate(flow_id, CANCEL_REASON)
        elif status.is_terminal:
            message = f"The order has already ended ({status})"
            return ctx.json({"error": "order_ended", "message": message, "status": status}, status=409)
        else:
            status = await ctx.workflows.cancel(flow_id, CANCEL_REASON)
        return ctx.json({"flow_id": flow_id, "status": status}, status=202)

    async def approvals(self, ctx: RequestContext) -> Response:
        """Orders waiting for a manager's approval, newest first."""
        page = await ctx.workflows.list_flows(workflow=ProcessOrder.name, status=FlowStatus.WAITING)
        waiting = []
        for summary in page.items:
            info = await ctx.workflows.describe(summary.flow_id)
            if info.step("approval").status == "waiting":
                record = self.orders.by_flow(summary.flow_id)
                waiting.append(
                    {
                        "flow_id": summary.flow_id,
                        "order_id": record.order_id if record else None,
                        "total_cents": record.total_cents if record else None,
                        "waiting_since": summary.created_at,
                        "decide_by": info.step("approval").wake_at,
                    }
                )
        return ctx.json(waiting)

    async def failed_refunds(self, ctx: RequestContext) -> Response:
        """Orders that ended with a rollback that failed for good (a refund during an outage, say), newest first:
        what an operator retries once the service is back."""
        failed: list[tuple[float, dict[str, object]]] = []
        for status in (FlowStatus.FAILED, FlowStatus.CANCELLED, FlowStatus.COMPENSATED):
            page = await ctx.workflows.list_flows(workflow=ProcessOrder.name, status=status)
            for summary in page.items:
                info = await ctx.workflows.describe(summary.flow_id)
                stuck = [step for step in info.steps if step.status == "compensation_failed"]
                if stuck:
                    record = self.orders.by_flow(summary.flow_id)
                    order: dict[str, object] = {
                        "flow_id": summary.flow_id,
                        "order_id": record.order_id if record else None,
                        "status": info.status,
                        "failed_rollbacks": [{"step": s.name, "error": s.rollback_error} for s in stuck],
                    }
                    failed.append((summary.created_at, order))
        failed.sort(key=lambda entry: -entry[0])
        return ctx.json([order for _, order in failed])

    async def retry_refund(self, ctx: RequestContext) -> Response:
        """Runs an order's failed rollbacks again (the refund service is back); a 409 when none failed."""
        flow_id: str = ctx.params["flow_id"]
        try:
            status = await ctx.workflows.retry_compensation(flow_id)
        except FlowStateError as error:
            return ctx.json({"error": "nothing_to_retry", "message": str(error)}, status=409)
        return ctx.json({"flow_id": flow_id, "status": status}, status=202)


def describe_error(error: WorkflowError) -> dict[str, object]:
    """A flow's error as JSON: what failed first, and which rollbacks failed too (if any)."""
    primary = error.primary_error if isinstance(error, WorkflowRollbackError) else error
    described: dict[str, object] = {"type": type(primary).__name__, "message": str(primary)}
    if isinstance(primary, WorkflowStepError):
        described["step"] = primary.step_name
    if isinstance(error, WorkflowRollbackError):
        described["rollback_failures"] = [{"step": e.step_name, "message": str(e)} for e in error.rollback_errors]
    return described


def _actions(path: str, info: FlowInfo) -> dict[str, str]:
    """What can be done to the order now, as the requests that do it."""
    actions: dict[str, str] = {}
    if not info.status.is_terminal and info.step("approval").status in ("pending", "waiting"):
        actions["approve"] = f"POST {path}/approval"
    if info.status in (FlowStatus.PENDING, FlowStatus.RUNNING, FlowStatus.WAITING, FlowStatus.COMPLETED):
        actions["cancel"] = f"POST {path}/cancel"
    if info.status.is_terminal and any(step.status == "compensation_failed" for step in info.steps):
        actions["retry_refund"] = f"POST {path}/retry-refund"
    return actions


def _history(record: OrderRecord | None) -> list[dict[str, str]]:
    if record is None:
        return []
    return [{"step": e.step, "outcome": e.outcome, "detail": e.detail, "at": e.at.isoformat()} for e in record.events]


def _order_id(customer_id: str, idempotency_key: str | None) -> str:
    if idempotency_key is None:
        return f"ord_{uuid.uuid4().hex[:16]}"
    return "ord_" + hashlib.sha256(f"{customer_id}\n{idempotency_key}".encode()).hexdigest()[:16]
