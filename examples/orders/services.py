"""In-memory stand-ins for the services an order touches: inventory, payments, shipments, notifications, orders.

They behave like the real ones where it matters to a saga: stock is reserved per order and released on request,
charges are idempotent per key and refunds per charge, shipments can be cancelled, and every undo can be called
twice without doing anything twice (a rollback may run again after a crash).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from examples.orders.models import Address, OrderItem


def money(cents: int) -> str:
    """``14300`` -> ``$143.00``."""
    return f"${cents / 100:,.2f}"


async def _io() -> None:
    # Each call stands for a network round trip: yield to the event loop as a real client would.
    await asyncio.sleep(0)


# --- inventory -----------------------------------------------------------------------------------------------


class UnknownProductError(LookupError):
    """An order names a SKU that is not in the catalogue."""


class OutOfStockError(Exception):
    """Not enough unreserved stock for an order."""


@dataclass
class Product:
    sku: str
    name: str
    price_cents: int
    on_hand: int


@dataclass
class Reservation:
    id: str
    order_id: str
    lines: dict[str, int]
    status: Literal["active", "released"] = "active"


class InventoryService:
    """Stock levels and reservations; a reservation holds stock for an order until it is released."""

    def __init__(self) -> None:
        self.products: dict[str, Product] = {
            p.sku: p
            for p in (
                Product("KB-87", "mechanical keyboard", 12900, 10),
                Product("MS-02", "wireless mouse", 3900, 25),
                Product("CBL-C", "USB-C cable", 700, 100),
                Product("MON-27", "27-inch monitor", 32900, 3),
            )
        }
        self.reservations: dict[str, Reservation] = {}
        self._ids = itertools.count(1)

    def price(self, items: Iterable[OrderItem]) -> int:
        """The total of ``items`` in cents; raises :class:`UnknownProductError` for a SKU not sold here."""
        total = 0
        for item in items:
            product = self.products.get(item.sku)
            if product is None:
                raise UnknownProductError(f"unknown SKU {item.sku!r}")
            total += product.price_cents * item.quantity
        return total

    def reserved(self, sku: str) -> int:
        return sum(r.lines.get(sku, 0) for r in self.reservations.values() if r.status == "active")

    def available(self, sku: str) -> int:
        return self.products[sku].on_hand - self.reserved(sku)

    async def reserve(self, order_id: str, items: Iterable[OrderItem]) -> Reservation:
        """Reserves stock for an order; calling it again for the same order returns the same reservation."""
        await _io()
        for reservation in self.reservations.values():
            if reservation.order_id == order_id and reservation.status == "active":
                return reservation
        lines: dict[str, int] = {}
        for item in items:
            lines[item.sku] = lines.get(item.sku, 0) + item.quantity
        short = [sku for sku, quantity in lines.items() if sku not in self.products or self.available(sku) < quantity]
        if short:
            raise OutOfStockError(f"not enough stock for {', '.join(short)}")
        reservation = Reservation(f"res_{next(self._ids):04d}", order_id, lines)
        self.reservations[reservation.id] = reservation
        return reservation

    async def release(self, reservation_id: str) -> bool:
        """Releases a reservation; returns False if it was released already (idempotent)."""
        await _io()
        reservation = self.reservations[reservation_id]
        if reservation.status == "released":
            return False
        reservation.status = "released"
        return True


# --- payments ------------------------------------------------------------------------------------------------


class RefundUnavailableError(Exception):
    """The processor's refund service is down; a refund can be tried again later."""


class PaymentDeclinedError(Exception):
    """The card issuer declined the charge."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


@dataclass
class Charge:
    id: str
    customer_id: str
    amount_cents: int
    idempotency_key: str
    status: Literal["succeeded", "refunded"] = "succeeded"
    refund_id: str | None = None

    @property
    def receipt_url(self) -> str:
        return f"https://payments.example.com/receipts/{self.id}"


class PaymentService:
    """Charges and refunds in the style of a card processor: idempotent charges per key, idempotent refunds.

    Payment method tokens follow Stripe's test cards: ``pm_card_visa`` succeeds, ``pm_card_chargeDeclined``
    is declined.
    """

    DECLINES = {
        "pm_card_chargeDeclined": ("card_declined", "Your card was declined."),
        "pm_card_chargeDeclinedInsufficientFunds": ("insufficient_funds", "Your card has insufficient funds."),
    }

    def __init__(self) -> None:
        self.charges: dict[str, Charge] = {}
        self.refunds_available = True
        """Set it to False to play an outage of the refund service: refunds fail until it is back."""
        self.declined: list[tuple[str, str]] = []  # (idempotency key, decline code) per attempt
        self._by_key: dict[str, Charge] = {}
        self._ids = itertools.count(1)
        self._refund_ids = itertools.count(1)

    async def charge(self, customer_id: str, amount_cents: int, payment_method: str, idempotency_key: str) -> Charge:
        """Charges a customer once per ``idempotency_key``; a retry with the same key returns the first charge."""
        await _io()
        existing = self._by_key.get(idempotency_key)
        if existing is not None:
            return existing
        if payment_method in self.DECLINES:
            code, message = self.DECLINES[payment_method]
            self.declined.append((idempotency_key, code))
            raise PaymentDeclinedError(code, message)
        charge = Charge(f"ch_{next(self._ids):04d}", customer_id, amount_cents, idempotency_key)
        self.charges[charge.id] = charge
        self._by_key[idempotency_key] = charge
        return charge

    async def refund(self, charge_id: str) -> str:
        """Refunds a charge in full and returns the refund id; refunding it again returns the same id."""
        await _io()
        if not self.refunds_available:
            raise RefundUnavailableError("the refund service is unavailable")
        charge = self.charges[charge_id]
        if charge.refund_id is None:
            charge.refund_id = f"re_{next(self._refund_ids):04d}"
            charge.status = "refunded"
        return charge.refund_id


# --- shipments -----------------------------------------------------------------------------------------------


class UndeliverableError(Exception):
    """The carrier will not take a parcel to this address."""


@dataclass
class Shipment:
    id: str
    order_id: str
    tracking_number: str
    country: str
    estimated_delivery: date
    status: Literal["created", "cancelled"] = "created"


class ShipmentService:
    """Creates and cancels shipments with a carrier that serves a fixed list of countries."""

    COUNTRIES = frozenset({"US", "CA", "GB", "IE", "FR", "DE", "NL", "BE", "ES", "IT"})

    def __init__(self) -> None:
        self.shipments: dict[str, Shipment] = {}
        self._ids = itertools.count(1)

    async def create_shipment(self, order_id: str, items: Iterable[OrderItem], address: Address) -> Shipment:
        """Books a shipment for an order (once: booking it again returns the same shipment)."""
        await _io()
        for shipment in self.shipments.values():
            if shipment.order_id == order_id and shipment.status == "created":
                return shipment
        if address.country not in self.COUNTRIES:
            raise UndeliverableError(f"the carrier does not deliver to {address.country}")
        number = next(self._ids)
        tracking = "1Z" + hashlib.sha256(order_id.encode()).hexdigest()[:10].upper()
        eta = datetime.now(UTC).date() + timedelta(days=3)
        shipment = Shipment(f"shp_{number:04d}", order_id, tracking, address.country, eta)
        self.shipments[shipment.id] = shipment
        return shipment

    async def cancel_shipment(self, shipment_id: str) -> bool:
        """Cancels a shipment; returns False if it was cancelled already (idempotent)."""
        await _io()
        shipment = self.shipments[shipment_id]
        if shipment.status == "cancelled":
            return False
        shipment.status = "cancelled"
        return True


# --- notifications -------------------------------------------------------------------------------------------


@dataclass
class Message:
    id: str
    channel: Literal["email", "sms"]
    to: str
    text: str


class NotificationService:
    """An outbox of emails and text messages."""

    def __init__(self) -> None:
        self.outbox: list[Message] = []
        self._ids = itertools.count(1)

    async def send_email(self, to: str, subject: str, body: str) -> str:
        await _io()
        return self._add("email", to, f"{subject}\n\n{body}")

    async def send_sms(self, to: str, text: str) -> str:
        await _io()
        return self._add("sms", to, text)

    def _add(self, channel: Literal["email", "sms"], to: str, text: str) -> str:
        message = Message(f"msg_{next(self._ids):04d}", channel, to, text)
        self.outbox.append(message)
        return message.id


# --- orders --------------------------------------------------------------------------------------------------

Outcome = Literal["done", "failed", "rolled back"]


@dataclass
class OrderEvent:
    step: str
    outcome: Outcome
    detail: str
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class OrderRecord:
    order_id: str
    customer_id: str
    total_cents: int
    flow_id: str | None = None
    events: list[OrderEvent] = field(default_factory=list)

    @property
    def rolled_back(self) -> list[str]:
        """The steps whose effects were undone, in the order they were undone."""
        return [e.step for e in self.events if e.outcome == "rolled back"]


class OrderRepository:
    """Orders as the shop sees them, with the history of what was done (and undone) for each."""

    def __init__(self) -> None:
        self.orders: dict[str, OrderRecord] = {}

    def open(self, order_id: str, customer_id: str, total_cents: int) -> OrderRecord:
        """Creates the record of a new order, or returns the existing one (a retried request)."""
        record = self.orders.get(order_id)
        if record is None:
            record = self.orders[order_id] = OrderRecord(order_id, customer_id, total_cents)
        return record

    def by_flow(self, flow_id: str) -> OrderRecord | None:
        return next((r for r in self.orders.values() if r.flow_id == flow_id), None)

    def record(self, order_id: str, step: str, outcome: Outcome, detail: str) -> None:
        """Adds to an order's history (opening a bare record for an order placed by other means)."""
        record = self.orders.get(order_id) or self.open(order_id, "", 0)
        record.events.append(OrderEvent(step, outcome, detail))
