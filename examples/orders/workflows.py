"""The process-order workflow's definition: shared by whoever starts orders and whoever processes them."""

from __future__ import annotations

from typing import Any

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
from plait.core import Workflow, WorkflowContext

APPROVAL_THRESHOLD_CENTS = 50_000
"""Orders above $500 wait for a manager's approval before the card is charged."""

APPROVAL_TIMEOUT = 24 * 3600.0
"""A day without a decision fails the order (its stock is released)."""


def needs_approval(ctx: WorkflowContext[Any]) -> bool:
    """Whether the order is large enough to need a manager's approval."""
    order: OrderData = ctx.data
    return order.total_cents > APPROVAL_THRESHOLD_CENTS


def was_rejected(ctx: WorkflowContext[Any]) -> bool:
    """Whether a manager turned the order down (false for an order that needed no approval)."""
    return "approval" in ctx.results and not ctx.result("approval", Approval).approved


ProcessOrder = Workflow.define(name="process-order", data=OrderData, result=OrderResult).steps(
    lambda s: (
        s.sequential(s.step("validate", Reserved))
        .sequential(s.wait_for("approval", Approval, timeout=APPROVAL_TIMEOUT), when=needs_approval)
        .sequential(s.step("reject", Rejected), when=was_rejected)
        .sequential(s.step("charge", Charged))
        .sequential(s.step("fulfill", Fulfilled))
        .parallel(s.step("send_email", EmailSent), s.step("send_sms", SmsSent))
    )
)
"""validate (reserve the stock) -> [above $500: wait for a manager's approval -> if rejected: stop] -> charge ->
fulfill -> [email || sms]; a failure undoes what was done before it."""
