"""Step and workflow contexts, and the mock contexts plait.testing builds for handler unit tests."""

from __future__ import annotations

import logging
import re
from typing import Any, assert_type

import pytest
from pydantic import BaseModel

from plait.core import StepContext, WorkflowContext
from plait.testing import create_mock_step_context, create_mock_workflow_context


class Order(BaseModel):
    order_id: str


class Charged(BaseModel):
    charge_id: str


class Other(BaseModel):
    x: int = 0


def test_a_step_context_carries_the_flow_step_and_attempt() -> None:
    meta = {"correlation_id": "req-7", "trace_id": "t-1"}
    ctx = StepContext(
        flow_id="flow-1",
        workflow="wf",
        data=Order(order_id="o-1"),
        results={"charge": Charged(charge_id="ch-1")},
        meta=meta,
        provider_id="p-1",
        step_name="ship",
        attempt=2,
    )
    assert (ctx.flow_id, ctx.workflow, ctx.step_name, ctx.attempt, ctx.provider_id) == (
        "flow-1",
        "wf",
        "ship",
        2,
        "p-1",
    )
    assert ctx.correlation_id == "req-7"
    assert "flow-1" in repr(ctx)


def test_results_and_meta_are_read_only() -> None:
    ctx = create_mock_step_context(Order(order_id="o"), {"charge": Charged(charge_id="c")}, meta={"k": "v"})
    with pytest.raises(TypeError):
        ctx.results["x"] = Other()  # type: ignore[index]
    with pytest.raises(TypeError):
        ctx.meta["k"] = "w"  # type: ignore[index]


def test_correlation_id_falls_back_to_the_flow_id() -> None:
    ctx = create_mock_workflow_context(Order(order_id="o"), flow_id="flow-9")
    assert ctx.correlation_id == "flow-9"
    assert (
        create_mock_workflow_context(Order(order_id="o"), meta={"correlation_id": ""}, flow_id="f").correlation_id
        == "f"
    )


def test_result_returns_a_typed_result_or_explains() -> None:
    ctx = create_mock_workflow_context(Order(order_id="o"), {"charge": Charged(charge_id="ch-1")})
    charged = ctx.result("charge", Charged)
    assert_type(charged, Charged)
    assert charged.charge_id == "ch-1"
    with pytest.raises(KeyError):
        ctx.result("ship", Charged)
    with pytest.raises(TypeError, match="is a Charged, not a Other"):
        ctx.result("charge", Other)


def test_the_logger_is_bound_to_the_flow(caplog: pytest.LogCaptureFixture) -> None:
    ctx = create_mock_step_context(
        Order(order_id="o"), flow_id="flow-1", workflow="wf", step_name="ship", meta={"correlation_id": "req-1"}
    )
    with caplog.at_level(logging.INFO, logger="plait.workflow"):
        ctx.log.info("shipping %s", "o", extra={"parcel": 3})
        create_mock_workflow_context(Order(order_id="o"), flow_id="flow-1", workflow="wf").log.info("done")
    step_record, flow_record = caplog.records
    assert step_record.getMessage() == "[wf.ship flow-1] shipping o"
    fields: dict[str, Any] = vars(step_record)
    assert {k: fields[k] for k in ("flow_id", "workflow", "step", "correlation_id", "provider_id", "parcel")} == {
        "flow_id": "flow-1",
        "workflow": "wf",
        "step": "ship",
        "correlation_id": "req-1",
        "provider_id": "test",
        "parcel": 3,
    }
    assert flow_record.getMessage() == "[wf flow-1] done"
    assert ctx.log is ctx.log  # built once


def test_mock_step_context_defaults() -> None:
    ctx = create_mock_step_context(Order(order_id="o-1"))
    assert_type(ctx, StepContext[Order])
    assert isinstance(ctx, StepContext)
    assert re.fullmatch(r"flow-test-[0-9a-f]{12}", ctx.flow_id)
    assert (ctx.workflow, ctx.step_name, ctx.attempt, ctx.provider_id) == ("test-workflow", "test-step", 1, "test")
    assert ctx.data == Order(order_id="o-1")
    assert dict(ctx.results) == {} and dict(ctx.meta) == {}
    assert create_mock_step_context(Order(order_id="o-1")).flow_id != ctx.flow_id


def test_mock_step_context_takes_everything_a_provider_would_give() -> None:
    ctx = create_mock_step_context(
        Order(order_id="o-1"),
        {"charge": Charged(charge_id="ch")},
        flow_id="flow-x",
        workflow="process-order",
        step_name="ship",
        attempt=3,
        meta={"correlation_id": "req-1"},
        provider_id="p",
    )
    assert (ctx.flow_id, ctx.workflow, ctx.step_name, ctx.attempt, ctx.provider_id) == (
        "flow-x",
        "process-order",
        "ship",
        3,
        "p",
    )
    assert ctx.result("charge", Charged).charge_id == "ch"
    assert ctx.correlation_id == "req-1"


def test_mock_workflow_context_has_no_step() -> None:
    ctx = create_mock_workflow_context(Order(order_id="o-1"), {"charge": Charged(charge_id="ch")}, workflow="wf")
    assert_type(ctx, WorkflowContext[Order])
    assert not isinstance(ctx, StepContext)
    assert ctx.step_name is None
    assert ctx.workflow == "wf"
    assert ctx.flow_id.startswith("flow-test-")


async def test_mock_contexts_drive_real_handlers() -> None:
    async def charge(ctx: StepContext[Order]) -> Charged:
        return Charged(charge_id=f"ch-{ctx.data.order_id}-{ctx.attempt}")

    assert await charge(create_mock_step_context(Order(order_id="o"), attempt=2)) == Charged(charge_id="ch-o-2")


def test_mock_contexts_reject_what_a_provider_never_passes() -> None:
    with pytest.raises(TypeError, match="data must be a pydantic model instance, got dict"):
        create_mock_step_context({"order_id": "o"})  # type: ignore[type-var]
    with pytest.raises(TypeError, match=r"results\['charge'\] must be a pydantic model instance"):
        create_mock_workflow_context(Order(order_id="o"), {"charge": {"charge_id": "c"}})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="attempt is 1-based"):
        create_mock_step_context(Order(order_id="o"), attempt=0)
