"""Places three orders through the HTTP API and prints what happened to each, step by step.

One completes; one is declined at the charge (its stock reservation is released); one cannot be shipped (its
charge is refunded and its reservation released). Then it prints the state the services are left in.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, TextIO

import httpx

from examples.orders.models import Address, OrderItem, PlaceOrder
from examples.orders.services import InventoryService, NotificationService, PaymentService, ShipmentService, money
from plait.core import Application, WorkflowError


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

_MARKS = {"done": "ok", "failed": "FAILED", "rolled back": "undone"}


async def run_demo(app: Application, out: TextIO, *, local_services: bool = True) -> list[dict[str, Any]]:
    """Places every scenario's order on a started ``app`` and prints what happened.

    Args:
        local_services: whether every step runs in this process (the in-process provider), so that this
            process's in-memory services show all that was done; with workers, each has services of its own.

    Returns:
        The ``GET /orders/{flow_id}`` body of each order, once its flow has ended.
    """
    shown: list[dict[str, Any]] = []
    transport = httpx.ASGITransport(app=app.asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://orders.example") as client:
        for number, scenario in enumerate(SCENARIOS, 1):
            print(f"\n{number}. {scenario.title}", file=out)
            placed = await client.post(
                "/orders", json=scenario.order.model_dump(), headers={"x-correlation-id": f"demo-order-{number}"}
            )
            flow_id = placed.json()["flow_id"]
            print(f"   POST /orders -> {placed.status_code} {placed.text}", file=out)
            handle = await app.context.workflows.get_handle(flow_id)
            with contextlib.suppress(WorkflowError):  # the order's page says what went wrong
                await handle.result(timeout=30)
            body = (await client.get(f"/orders/{flow_id}")).json()
            shown.append(body)
            _print_order(body, out)
    _print_state(app, shown, out, local_services)
    return shown


def _print_order(body: dict[str, Any], out: TextIO) -> None:
    print(f"   GET /orders/{body['flow_id']} -> {body['status']}", file=out)
    # The provider's record of every step, whichever process ran it; then what this process's services did.
    print("     steps:  " + ", ".join(f"{step} {status}" for step, status in body["steps"].items()), file=out)
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
