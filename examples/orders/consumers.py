"""The process-order consumer: how each step is done, and undone when a later one fails."""

from __future__ import annotations

from datetime import UTC, datetime

from examples.orders.models import (
    Approval,
    Charged,
    EmailSent,
    Fulfilled,
    OrderData,
    OrderResult,
    Rejected,
    Reserved,
    SmsSent,
)
from examples.orders.services import (
    InventoryService,
    NotificationService,
    OrderRepository,
    PaymentDeclinedError,
    PaymentService,
    ShipmentService,
    money,
)
from plait.core import (
    Backoff,
    ConsumerOptions,
    IWorkflowConsumer,
    NonRetryableError,
    StepContext,
    StepHandler,
    WorkflowContext,
    WorkflowError,
    WorkflowRollbackError,
)

ORDER_OPTIONS = ConsumerOptions(attempts=2, backoff=Backoff.exponential(0.05, max_delay=1.0), step_timeout=10.0)
"""Each step gets a second try after a short pause, for failures that may pass (a timeout, a busy service); the
charge's idempotency key makes a second try safe. A declined card would only be declined again, so ``charge``
raises :class:`CardDeclinedError` for it, which skips the second try."""


class CardDeclinedError(NonRetryableError):
    """The card was declined: the charge fails at once, without its remaining attempts, and the order rolls back."""


class OrderRejectedError(NonRetryableError):
    """A manager rejected the order: no retry would change that."""


class ProcessOrderWorkflow(IWorkflowConsumer[OrderData, OrderResult]):
    """Reserves stock, waits for a manager above $500, charges the card, books the shipment, then emails and texts
    the customer.

    Every step that changes something has a rollback, and every rollback is idempotent. Each outcome is added to
    the order's history, which ``GET /orders/{flow_id}`` shows.
    """

    def __init__(
        self,
        inventory: InventoryService,
        payments: PaymentService,
        shipments: ShipmentService,
        notifications: NotificationService,
        orders: OrderRepository,
    ) -> None:
        self.inventory = inventory
        self.payments = payments
        self.shipments = shipments
        self.notifications = notifications
        self.orders = orders
        self.steps = {
            "validate": StepHandler(execute=self.validate, rollback=self.release_stock),
            "reject": StepHandler(execute=self.reject),
            "charge": StepHandler(execute=self.charge, rollback=self.refund),
            "fulfill": StepHandler(execute=self.fulfill, rollback=self.cancel_shipment),
            "send_email": StepHandler(execute=self.send_email),  # no rollback: an email cannot be unsent
            "send_sms": StepHandler(execute=self.send_sms),
        }

    async def validate(self, ctx: StepContext[OrderData]) -> Reserved:
        order = ctx.data
        try:
            if self.inventory.price(order.items) != order.total_cents:
                raise ValueError("the order's total does not match the catalogue prices")
            reservation = await self.inventory.reserve(order.order_id, order.items)
        except Exception as error:
            self._failed(ctx, error)
            raise
        lines = ", ".join(f"{quantity} x {sku}" for sku, quantity in reservation.lines.items())
        self._done(ctx, f"reserved {lines} as {reservation.id}")
        return Reserved(reservation_id=reservation.id)

    async def release_stock(self, ctx: StepContext[OrderData]) -> None:
        reservation_id = ctx.result("validate", Reserved).reservation_id
        await self.inventory.release(reservation_id)
        self._undone(ctx, f"released reservation {reservation_id}")

    async def reject(self, ctx: StepContext[OrderData]) -> Rejected:
        """Runs only for an order a manager turned down: fails it at once, so its stock is released."""
        approval = ctx.result("approval", Approval)
        reason = f"rejected by {approval.manager}" + (f": {approval.note}" if approval.note else "")
        self.orders.record(ctx.data.order_id, "reject", "failed", reason)
        raise OrderRejectedError(reason)

    async def charge(self, ctx: StepContext[OrderData]) -> Charged:
        order = ctx.data
        ctx.log.info("Charging %s to %s", money(order.total_cents), order.customer_id)
        try:
            charge = await self.payments.charge(
                order.customer_id, order.total_cents, order.payment_method, idempotency_key=f"{order.order_id}-charge"
            )
        except PaymentDeclinedError as error:
            self._failed(ctx, error)
            raise CardDeclinedError(str(error)) from error  # the same card would be declined again: no retry
        except Exception as error:
            self._failed(ctx, error)
            raise
        self._done(ctx, f"charged {money(charge.amount_cents)} as {charge.id}")
        return Charged(charge_id=charge.id, receipt_url=charge.receipt_url)

    async def refund(self, ctx: StepContext[OrderData]) -> None:
        charge_id = ctx.result("charge", Charged).charge_id
        try:
            refund_id = await self.payments.refund(charge_id)
        except Exception as error:  # the flow records it as a failed rollback; an operator can retry it later
            self.orders.record(ctx.data.order_id, "charge", "failed", f"refund of {charge_id}: {error}")
            raise
        self._undone(ctx, f"refunded {charge_id} as {refund_id}")

    async def fulfill(self, ctx: StepContext[OrderData]) -> Fulfilled:
        order = ctx.data
        try:
            shipment = await self.shipments.create_shipment(order.order_id, order.items, order.ship_to)
        except Exception as error:
            self._failed(ctx, error)
            raise
        self._done(ctx, f"booked {shipment.id} to {shipment.country}, tracking {shipment.tracking_number}")
        return Fulfilled(
            shipment_id=shipment.id,
            tracking_number=shipment.tracking_number,
            estimated_delivery=shipment.estimated_delivery,
        )

    async def cancel_shipment(self, ctx: StepContext[OrderData]) -> None:
        shipment_id = ctx.result("fulfill", Fulfilled).shipment_id
        await self.shipments.cancel_shipment(shipment_id)
        self._undone(ctx, f"cancelled shipment {shipment_id}")

    async def send_email(self, ctx: StepContext[OrderData]) -> EmailSent:
        tracking = ctx.result("fulfill", Fulfilled).tracking_number
        message_id = await self.notifications.send_email(
            ctx.data.email, f"Order {ctx.data.order_id} is on its way", f"Track it with {tracking}."
        )
        self._done(ctx, f"confirmation emailed to {ctx.data.email}")
        return EmailSent(message_id=message_id)

    async def send_sms(self, ctx: StepContext[OrderData]) -> SmsSent:
        tracking = ctx.result("fulfill", Fulfilled).tracking_number
        message_id = await self.notifications.send_sms(ctx.data.phone, f"Your order shipped! Tracking: {tracking}")
        self._done(ctx, f"text sent to {ctx.data.phone}")
        return SmsSent(message_id=message_id)

    async def on_complete(self, ctx: WorkflowContext[OrderData]) -> OrderResult:
        fulfilled = ctx.result("fulfill", Fulfilled)
        ctx.log.info("Order %s complete", ctx.data.order_id)
        return OrderResult(
            order_id=ctx.data.order_id,
            charge_id=ctx.result("charge", Charged).charge_id,
            tracking_number=fulfilled.tracking_number,
            estimated_delivery=fulfilled.estimated_delivery,
            processed_at=datetime.now(UTC),
        )

    async def on_error(self, ctx: WorkflowContext[OrderData], error: WorkflowError) -> None:
        ctx.log.warning("Order %s failed: %s", ctx.data.order_id, error)
        if isinstance(error, WorkflowRollbackError):  # something could not be undone: a person has to look
            ctx.log.error("Order %s needs manual attention: %s", ctx.data.order_id, error.rollback_errors)
            body = "Something went wrong on our side; our support team will contact you."
        else:
            body = "You have not been charged for it. Reply to this email if you need help."
        await self.notifications.send_email(ctx.data.email, f"Order {ctx.data.order_id} could not be completed", body)
        self.orders.record(ctx.data.order_id, "on_error", "done", f"told {ctx.data.email} the order failed")

    # -- history --

    def _done(self, ctx: StepContext[OrderData], detail: str) -> None:
        self.orders.record(ctx.data.order_id, ctx.step_name, "done", detail)

    def _failed(self, ctx: StepContext[OrderData], error: Exception) -> None:
        self.orders.record(ctx.data.order_id, ctx.step_name, "failed", f"attempt {ctx.attempt}: {error}")

    def _undone(self, ctx: StepContext[OrderData], detail: str) -> None:
        self.orders.record(ctx.data.order_id, ctx.step_name, "rolled back", detail)
