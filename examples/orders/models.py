"""The order service's data: what a client sends, what the workflow carries, what each step returns.

Amounts are integer cents, so that no float rounding ever reaches a charge or a refund.
"""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field


class OrderItem(BaseModel):
    sku: str = Field(min_length=1, max_length=32)
    quantity: int = Field(gt=0, le=100)


class Address(BaseModel):
    name: str = Field(min_length=1)
    line1: str = Field(min_length=1)
    city: str = Field(min_length=1)
    postal_code: str = Field(min_length=1)
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2 code")


class PlaceOrder(BaseModel):
    """The body of ``POST /orders``."""

    customer_id: str = Field(min_length=1)
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    phone: str = Field(pattern=r"^\+[0-9]{6,15}$")
    items: list[OrderItem] = Field(min_length=1)
    payment_method: str = Field(min_length=1, description="a payment method token, e.g. pm_card_visa")
    ship_to: Address


class OrderData(BaseModel):
    """The process-order workflow's input: the order as placed, with its id and priced total."""

    order_id: str
    customer_id: str
    email: str
    phone: str
    items: list[OrderItem]
    total_cents: int = Field(gt=0)
    payment_method: str
    ship_to: Address


# Step outputs, one model per step.


class Reserved(BaseModel):
    reservation_id: str


class Charged(BaseModel):
    charge_id: str
    receipt_url: str


class Fulfilled(BaseModel):
    shipment_id: str
    tracking_number: str
    estimated_delivery: date


class Approval(BaseModel):
    """A manager's decision on an order above the approval threshold (the ``approval`` signal's payload)."""

    approved: bool
    manager: str = Field(min_length=1, max_length=100)
    note: str | None = Field(default=None, max_length=500)


class Rejected(BaseModel):
    """What the ``reject`` step would return; it never does: a rejected order fails there and rolls back."""

    reason: str


class EmailSent(BaseModel):
    message_id: str


class SmsSent(BaseModel):
    message_id: str


class OrderResult(BaseModel):
    order_id: str
    charge_id: str
    tracking_number: str
    estimated_delivery: date
    processed_at: datetime
