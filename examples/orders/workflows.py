"""The process-order workflow's definition: shared by whoever starts orders and whoever processes them."""

from __future__ import annotations

from examples.orders.models import (
    Charged,
    EmailSent,
    Fulfilled,
    OrderData,
    OrderResult,
    Reserved,
    SmsSent,
)
from plait.core import Workflow

ProcessOrder = Workflow.define(name="process-order", data=OrderData, result=OrderResult).steps(
    lambda s: (
        s.sequential(s.step("validate", Reserved))
        .sequential(s.step("charge", Charged))
        .sequential(s.step("fulfill", Fulfilled))
        .parallel(s.step("send_email", EmailSent), s.step("send_sms", SmsSent))
    )
)
"""validate (reserve the stock) -> charge -> fulfill -> [email || sms]; a failure undoes what was done before it."""
