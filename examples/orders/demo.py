"""Places orders through the HTTP API and prints what happened to each, step by step.

One completes; one is declined at the charge (its stock reservation is released); one cannot be shipped (its
charge is refunded and its reservation released). Two are large enough to wait for a manager: one is approved,
the other cancelled by its customer while it waits. The last cannot be shipped while the refund service is down:
its refund fails, shows in the failed-refunds list, and an operator retries it once the service is back. Then it
prints the state the services are left in.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import httpx

from examples.orders.models import Address, OrderItem, PlaceOrder
from examples.orders.services import InventoryService, NotificationService, PaymentService, ShipmentService, money
from plait.core import Application, FlowInfo, WorkflowError


@dataclass(frozen=True)
class Scenario:
    title: str
    order: PlaceOrder


def _order(customer: str, items: dict[str, int], payment_method: str, city: str, country: str) -> PlaceOrder:
    name = customer.capitalize()
    return PlaceOrder(
        customer_id=f"cus_{customer}",
        email=f"{customer}@example.com",
        phone="+15550100" + str(len(customer)),
        items=[OrderItem(sku=sku, quantity=quantity) for sku, quantity in items.items()],
        payment_method=payment_method,
        ship_to=Address(name=name, line1="1 Main Street", city=city, postal_code="00001", country=country),
    )


SCENARIOS = (
    Scenario(
        "Ada buys a keyboard and two cables with a card that works",
        _order("ada", {"KB-87": 1, "CBL-C": 2}, "pm_card_visa", "London", "GB"),
    ),
    Scenario(
        "Grace buys a monitor with a card that is declined",
        _order("grace", {"MON-27": 1}, "pm_card_chargeDeclined", "Arlington", "US"),
    ),
    Scenario(
        "Linus buys a mouse to be shipped where the carrier does not go",
        _order("linus", {"MS-02": 1}, "pm_card_visa", "McMurdo Station", "AQ"),
    ),
)

APPROVED = Scenario(
    "Margaret buys two monitors ($658): above $500, so a manager approves it first",
    _order("margaret", {"MON-27": 2}, "pm_card_visa", "Boston", "US"),
)
CANCELLED = Scenario(
    "Alan orders four keyboards ($516), then cancels while it waits for approval",
    _order("alan", {"KB-87": 4}, "pm_card_visa", "Manchester", "GB"),
)
REFUND_OUTAGE = Scenario(
    "Edsger's cable cannot be shipped, and the refund service is down when it is refunded",
    _order("edsger", {"CBL-C": 1}, "pm_card_visa", "South Pole", "AQ"),
)
WAITING = Scenario(
    "Barbara orders five keyboards ($645) and waits for a manager: approve or cancel it yourself",
    _order("barbara", {"KB-87": 5}, "pm_card_visa", "Cambridge", "US"),
)

_MARKS = {"done": "ok", "failed": "FAILED", "rolled back": "undone"}


async def run_demo(
    app: Application, out: TextIO, *, local_services: bool = True, leave_waiting: bool = False
) -> list[dict[str, Any]]:
    """Places every scenario's order on a started ``app`` and prints what happened.

    Args:
        local_services: whether every step runs in this process (the in-process provider), so that this
            process's in-memory services show all that was done; with workers, each has services of its own
            (and the refund outage, which switches this process's payment service off, is left out).
        leave_waiting: place one more large order and leave it waiting for a manager (for ``--serve``).

    Returns:
        The ``GET /orders/{flow_id}`` body of each order, once its flow has ended (or waits, for the last one
        with ``leave_waiting``).
    """
    shown: list[dict[str, Any]] = []
    transport = httpx.ASGITransport(app=app.asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://orders.example") as client:
        demo = _Demo(app, client, out)
        for scenario in SCENARIOS:
            flow_id = await demo.place(scenario)
            await demo.finish(flow_id)
            shown.append(await demo.show(flow_id))

        flow_id = await demo.place(APPROVED)
        await demo.until(flow_id, _waits_for_approval)
        demo.say(
            "   waiting for a manager; POST /orders/{flow_id}/approval", flow_id, {"approved": True, "manager": "Mo"}
        )
        answer = await client.post(f"/orders/{flow_id}/approval", json={"approved": True, "manager": "Mo"})
        demo.say(f"     -> {answer.status_code} {answer.text}")
        await demo.finish(flow_id)
        shown.append(await demo.show(flow_id))

        flow_id = await demo.place(CANCELLED)
        await demo.until(flow_id, _waits_for_approval)
        demo.say("   waiting for a manager; the customer cancels: POST /orders/{flow_id}/cancel", flow_id)
        answer = await client.post(f"/orders/{flow_id}/cancel")
        demo.say(f"     -> {answer.status_code} {answer.text}")
        await demo.finish(flow_id)
        shown.append(await demo.show(flow_id))

        if local_services:
            payments = app.context.resolve(PaymentService)
            payments.refunds_available = False
            flow_id = await demo.place(REFUND_OUTAGE)
            await demo.finish(flow_id)
            listed = (await client.get("/orders/failed-refunds")).json()
            demo.say(f"   GET /orders/failed-refunds -> {[order['order_id'] for order in listed]}")
            payments.refunds_available = True
            demo.say("   the refund service is back; an operator retries: POST /orders/{flow_id}/retry-refund", flow_id)
            answer = await client.post(f"/orders/{flow_id}/retry-refund")
            demo.say(f"     -> {answer.status_code} {answer.text}")
            await demo.until(flow_id, _rollbacks_settled)
            shown.append(await demo.show(flow_id))
            listed = (await client.get("/orders/failed-refunds")).json()
            demo.say(f"   GET /orders/failed-refunds -> {listed}")

        if leave_waiting:
            flow_id = await demo.place(WAITING)
            await demo.until(flow_id, _waits_for_approval)
            shown.append(await demo.show(flow_id))
    _print_state(app, shown, out, local_services)
    return shown


def _waits_for_approval(info: FlowInfo) -> bool:
    return info.step("approval").status == "waiting"


def _rollbacks_settled(info: FlowInfo) -> bool:
    return info.status.is_terminal and not any(step.status == "compensating" for step in info.steps)


class _Demo:
    """Places the demo's orders and prints what becomes of them."""

    def __init__(self, app: Application, client: httpx.AsyncClient, out: TextIO) -> None:
        self.app = app
        self.client = client
        self.out = out
        self.number = 0

    def say(self, text: str, flow_id: str | None = None, body: object = None) -> None:
        if flow_id is not None:
            text = text.replace("{flow_id}", flow_id)
        print(text + ("" if body is None else f" {body}"), file=self.out)

    async def place(self, scenario: Scenario) -> str:
        self.number += 1
        self.say(f"\n{self.number}. {scenario.title}")
        placed = await self.client.post(
            "/orders", json=scenario.order.model_dump(), headers={"x-correlation-id": f"demo-order-{self.number}"}
        )
        self.say(f"   POST /orders -> {placed.status_code} {placed.text}")
        flow_id: str = placed.json()["flow_id"]
        return flow_id

    async def finish(self, flow_id: str) -> None:
        handle = await self.app.context.workflows.get_handle(flow_id)
        with contextlib.suppress(WorkflowError):  # the order's page says what went wrong
            await handle.result(timeout=30)

    async def until(self, flow_id: str, ready: Callable[[FlowInfo], bool], timeout: float = 30) -> None:
        """Waits until the flow's ``describe()`` satisfies ``ready``."""
        async with asyncio.timeout(timeout):
            # The condition is on the flow's recorded state, which describe() reads: polling it is the plain way.
            while not ready(await self.app.context.workflows.describe(flow_id)):  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    async def show(self, flow_id: str) -> dict[str, Any]:
        body: dict[str, Any] = (await self.client.get(f"/orders/{flow_id}")).json()
        _print_order(body, self.out)
        return body


def _print_order(body: dict[str, Any], out: TextIO) -> None:
    print(f"   GET /orders/{body['flow_id']} -> {body['status']}", file=out)
    # The provider's record of every step, whichever process ran it; then what this process's services did.
    steps = [f"{step} {status}" for step, status in body["steps"].items() if status != "skipped"]
    print("     steps:  " + ", ".join(steps), file=out)
    for event in body["history"]:
        print(f"     {event['step']:<12} {_MARKS[event['outcome']]:<7} {event['detail']}", file=out)
    if "result" in body:
        result = body["result"]
        print(
            f"   result: charge {result['charge_id']}, tracking {result['tracking_number']}, "
            f"delivery by {result['estimated_delivery']}",
            file=out,
        )
    if "error" in body:
        compensated = ", ".join(body["compensated"]) or "nothing"
        print(f"   error: {body['error']['message']}", file=out)
        print(f"   compensated: {compensated}", file=out)


def _print_state(app: Application, shown: list[dict[str, Any]], out: TextIO, local_services: bool) -> None:
    print("\nAfterwards", file=out)
    print("   flows:     " + "; ".join(f"{b['order_id']} {b['status']}" for b in shown), file=out)
    if not local_services:
        print("   (steps may have run in other worker processes, whose in-memory services are their own)", file=out)
        return
    inventory = app.context.resolve(InventoryService)
    payments = app.context.resolve(PaymentService)
    shipments = app.context.resolve(ShipmentService)
    notifications = app.context.resolve(NotificationService)
    touched = sorted({sku for r in inventory.reservations.values() for sku in r.lines})
    stock = [f"{sku} {inventory.available(sku)}/{inventory.reserved(sku)}" for sku in touched]
    print("   stock:     " + "; ".join(stock) + " (available/reserved)", file=out)
    reservations = [f"{r.id} {r.status}" for r in inventory.reservations.values()]
    print("   holds:     " + "; ".join(reservations), file=out)
    charges = [
        f"{c.id} {money(c.amount_cents)} {c.status}" + (f" ({c.refund_id})" if c.refund_id else "")
        for c in payments.charges.values()
    ]
    print("   payments:  " + "; ".join(charges) + f"; {len(payments.declined)} declined attempt(s)", file=out)
    print("   shipments: " + "; ".join(f"{s.id} {s.status}" for s in shipments.shipments.values()), file=out)
    emails = sum(1 for m in notifications.outbox if m.channel == "email")
    texts = len(notifications.outbox) - emails
    print(f"   outbox:    {emails} email(s), {texts} text message(s)", file=out)
