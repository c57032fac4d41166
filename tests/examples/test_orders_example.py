"""The example order service runs end to end: the demo's three orders, the API's edge cases, the monitor workflow."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from examples.orders.app import create_app, create_arq_app
from examples.orders.demo import SCENARIOS, run_demo
from examples.orders.monitors import CheckScheduler, MonitorRepository
from examples.orders.services import InventoryService, NotificationService, PaymentService, ShipmentService
from examples.orders.workflows import ProcessOrder
from plait.core import Application, WorkflowError
from plait.providers.inprocess import InProcessWorkflowProvider


@pytest.fixture
async def app() -> AsyncIterator[Application]:
    application = create_app()
    await application.start()
    yield application
    await application.stop()


@pytest.fixture
async def client(app: Application) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.asgi()), base_url="http://shop") as client:
        yield client


def order(**changes: object) -> dict[str, Any]:
    """The demo's first order (which completes), with ``changes``."""
    body = SCENARIOS[0].order.model_dump()
    body.update(changes)
    return body


async def wait_for(app: Application, flow_id: str) -> None:
    with contextlib.suppress(WorkflowError):
        await (await app.context.workflows.get_handle(flow_id)).result(timeout=10)


async def place(client: httpx.AsyncClient, app: Application, body: dict[str, Any]) -> dict[str, Any]:
    """Places an order, waits for its flow to end and returns ``GET /orders/{flow_id}``."""
    placed = await client.post("/orders", json=body)
    assert placed.status_code == 202, placed.text
    flow_id = placed.json()["flow_id"]
    assert placed.headers["location"] == f"/orders/{flow_id}"
    await wait_for(app, flow_id)
    shown = await client.get(f"/orders/{flow_id}")
    assert shown.status_code == 200
    result: dict[str, Any] = shown.json()
    return result


def steps(shown: dict[str, Any], outcome: str) -> list[str]:
    return [event["step"] for event in shown["history"] if event["outcome"] == outcome]


def test_process_order_is_three_steps_then_two_in_parallel() -> None:
    groups = [(group.kind, [step.name for step in group.steps]) for group in ProcessOrder.step_groups]
    assert groups == [
        ("sequential", ["validate"]),
        ("sequential", ["approval"]),
        ("sequential", ["reject"]),
        ("sequential", ["charge"]),
        ("sequential", ["fulfill"]),
        ("parallel", ["send_email", "send_sms"]),
    ]


async def test_the_demo_completes_one_order_and_rolls_back_the_two_that_fail(app: Application) -> None:
    out = io.StringIO()
    completed, declined, undeliverable, *_ = await run_demo(app, out)
    inventory = app.context.resolve(InventoryService)
    payments = app.context.resolve(PaymentService)
    shipments = app.context.resolve(ShipmentService)

    assert completed["status"] == "completed"
    done = steps(completed, "done")
    assert done[:3] == ["validate", "charge", "fulfill"]
    assert sorted(done[3:]) == ["send_email", "send_sms"]  # a parallel group: either may finish first
    assert completed["result"]["charge_id"] == "ch_0001"
    assert completed["result"]["tracking_number"] == next(iter(shipments.shipments.values())).tracking_number
    assert "error" not in completed

    # The card is declined: a NonRetryableError, so once only although the consumer allows two attempts, and the
    # stock it held is released.
    assert declined["status"] == "failed"
    assert declined["error"]["step"] == "charge"
    assert declined["error"]["message"] == "Step 'charge' failed: card_declined: Your card was declined."
    assert declined["compensated"] == ["validate"]
    assert steps(declined, "failed") == ["charge"]
    assert [code for _, code in payments.declined] == ["card_declined"]
    assert inventory.reservations["res_0002"].status == "released"  # Grace's monitor

    # The carrier refuses the parcel: the charge is refunded, then the stock released, in reverse order.
    assert undeliverable["status"] == "failed"
    assert undeliverable["error"]["step"] == "fulfill"
    assert undeliverable["compensated"] == ["charge", "validate"]
    refunded = payments.charges["ch_0002"]
    assert (refunded.status, refunded.refund_id) == ("refunded", "re_0001")
    assert inventory.reserved("MS-02") == 0

    # Afterwards only the completed orders (the first, and the approved one) hold stock, money and a shipment.
    assert inventory.reserved("KB-87") == 1
    assert inventory.reserved("MON-27") == 2
    assert [c.status for c in payments.charges.values()] == ["succeeded", "refunded", "succeeded", "refunded"]
    assert [s.status for s in shipments.shipments.values()] == ["created", "created"]
    outbox = app.context.resolve(NotificationService).outbox
    # Two confirmations (email and text each), and one email for each of the four orders that failed.
    assert sorted(m.channel for m in outbox) == ["email"] * 6 + ["sms"] * 2

    text = out.getvalue()
    assert "1. Ada buys a keyboard" in text
    assert "compensated: validate\n" in text
    assert "compensated: charge, validate\n" in text
    assert "charge       undone  refunded ch_0002 as re_0001" in text
    assert "validate     undone  released reservation res_0002" in text
    assert "ch_0002 $39.00 refunded (re_0001)" in text


async def test_each_demo_flow_carries_its_requests_correlation_id(app: Application) -> None:
    shown = await run_demo(app, io.StringIO())
    provider = app.context.provider
    assert isinstance(provider, InProcessWorkflowProvider)
    correlation_ids = [provider.get_state(s["flow_id"]).meta["correlation_id"] for s in shown]
    assert correlation_ids == [f"demo-order-{n}" for n in range(1, 7)]


async def test_an_order_with_invalid_fields_is_a_422_naming_them(client: httpx.AsyncClient) -> None:
    body = order(items=[{"sku": "KB-87", "quantity": 0}])
    body["ship_to"]["country"] = "Britain"
    response = await client.post("/orders", json=body)
    assert response.status_code == 422
    assert [f["field"] for f in response.json()["fields"]] == ["items.0.quantity", "ship_to.country"]


async def test_an_unknown_sku_is_a_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/orders", json=order(items=[{"sku": "NOPE", "quantity": 1}]))
    assert response.status_code == 422
    assert response.json() == {"error": "unknown_sku", "message": "unknown SKU 'NOPE'"}


async def test_out_of_stock_fails_at_validate_with_nothing_to_undo(app: Application, client: httpx.AsyncClient) -> None:
    shown = await place(client, app, order(items=[{"sku": "MON-27", "quantity": 4}]))
    assert shown["status"] == "failed"
    assert shown["error"]["step"] == "validate"
    assert "not enough stock for MON-27" in shown["error"]["message"]
    assert shown["compensated"] == []
    assert app.context.resolve(PaymentService).charges == {}


async def test_an_idempotency_key_makes_a_retried_request_return_the_first_flow(
    app: Application, client: httpx.AsyncClient
) -> None:
    headers = {"idempotency-key": "checkout-42"}
    first = await client.post("/orders", json=order(), headers=headers)
    again = await client.post("/orders", json=order(), headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    await wait_for(app, first.json()["flow_id"])
    assert len(app.context.resolve(PaymentService).charges) == 1
    reused = await client.post("/orders", json=order(items=[{"sku": "CBL-C", "quantity": 1}]), headers=headers)
    assert reused.status_code == 409
    assert reused.json()["error"] == "idempotency_key_reused"


async def test_the_order_list_and_unknown_flows(app: Application, client: httpx.AsyncClient) -> None:
    shown = await place(client, app, order())
    listed = (await client.get("/orders")).json()
    assert listed == [{"order_id": shown["order_id"], "flow_id": shown["flow_id"], "status": "completed"}]
    missing = await client.get("/orders/flow-unknown")
    assert missing.status_code == 404
    assert missing.json()["error"] == "flow_not_found"


async def test_rollbacks_of_the_services_can_run_twice(app: Application) -> None:
    # A rollback may run again after a crash: undoing twice must not undo twice.
    inventory = app.context.resolve(InventoryService)
    payments = app.context.resolve(PaymentService)
    shipments = app.context.resolve(ShipmentService)
    items = SCENARIOS[0].order.items
    reservation = await inventory.reserve("ord_x", items)
    assert await inventory.reserve("ord_x", items) is reservation
    assert await inventory.release(reservation.id) is True
    assert await inventory.release(reservation.id) is False
    charge = await payments.charge("cus_x", 700, "pm_card_visa", idempotency_key="k")
    assert await payments.charge("cus_x", 700, "pm_card_visa", idempotency_key="k") is charge
    assert await payments.refund(charge.id) == await payments.refund(charge.id)
    shipment = await shipments.create_shipment("ord_x", items, SCENARIOS[0].order.ship_to)
    assert await shipments.cancel_shipment(shipment.id) is True
    assert await shipments.cancel_shipment(shipment.id) is False


MONITOR = {
    "account_id": "acc_1",
    "project_id": "prj_1",
    "name": "Homepage",
    "url": "https://example.com",
    "interval_seconds": 60,
    "regions": ["us-east-1", "eu-west-1"],
}


async def setup_monitor(app: Application, client: httpx.AsyncClient, **changes: object) -> dict[str, Any]:
    created = await client.post("/monitors", json={**MONITOR, **changes})
    assert created.status_code == 202, created.text
    await wait_for(app, created.json()["flow_id"])
    shown: dict[str, Any] = (await client.get(f"/monitors/{created.json()['flow_id']}")).json()
    return shown


async def test_a_monitor_is_set_up(app: Application, client: httpx.AsyncClient) -> None:
    shown = await setup_monitor(app, client)
    assert shown["status"] == "completed"
    assert shown["result"]["status"] == "up"
    monitor_id = shown["result"]["monitor_id"]
    assert monitor_id in app.context.resolve(MonitorRepository).monitors
    assert app.context.resolve(CheckScheduler).schedules[monitor_id] == (60, ["us-east-1", "eu-west-1"])


async def test_a_monitor_in_an_unknown_region_deletes_the_record_it_created(
    app: Application, client: httpx.AsyncClient
) -> None:
    shown = await setup_monitor(app, client, regions=["us-east-1", "mars-1"])
    assert shown["status"] == "failed"
    assert shown["error"] == "Step 'schedule_checks' failed: no check runners in mars-1"
    assert app.context.resolve(MonitorRepository).monitors == {}  # create_record was rolled back


async def test_a_monitor_of_a_failing_url_creates_nothing(app: Application, client: httpx.AsyncClient) -> None:
    shown = await setup_monitor(app, client, url="https://down.example.com")
    assert shown["error"] == "Step 'validate_url' failed: URL returned 503: server error"
    assert app.context.resolve(MonitorRepository).monitors == {}


async def test_the_arq_factory_builds_the_service_on_the_redis_it_is_given(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plait.providers.arq import ArqWorkflowProvider

    monkeypatch.setenv("PLAIT_REDIS_URL", redis_url)
    app = create_arq_app()
    await app.start()
    try:
        provider = app.context.provider
        assert isinstance(provider, ArqWorkflowProvider)
        shown = await run_demo(app, io.StringIO(), local_services=False)
        # The refund outage is played on this process's payment service only, so it is left out with workers.
        assert [body["status"] for body in shown] == ["completed", "failed", "failed", "completed", "cancelled"]
        assert shown[2]["compensated"] == ["charge", "validate"]
        assert shown[2]["steps"]["fulfill"] == "failed"
    finally:
        await app.stop()


async def test_the_demo_approves_one_large_order_and_cancels_another(app: Application) -> None:
    out = io.StringIO()
    *_, approved, cancelled, outage = await run_demo(app, out)
    assert approved["status"] == "completed"
    assert approved["steps"]["approval"] == "completed"
    assert approved["steps"]["reject"] == "skipped"
    assert cancelled["status"] == "cancelled"
    assert cancelled["error"]["message"] == "Workflow cancelled: cancelled by the customer"
    assert cancelled["compensated"] == ["validate"]
    assert app.context.resolve(InventoryService).reserved("KB-87") == 1  # only the first order's keyboard
    assert outage["status"] == "failed"
    # In the order they were undone: the refund came last, retried by hand.
    assert outage["compensated"] == ["validate", "charge"]
    assert steps(outage, "rolled back") == ["validate", "charge"]
    text = out.getvalue()
    assert "GET /orders/failed-refunds -> ['" + outage["order_id"] + "']" in text
    assert "GET /orders/failed-refunds -> []" in text


async def until(app: Application, flow_id: str, step: str, status: str) -> None:
    async with asyncio.timeout(10):
        while (await app.context.workflows.describe(flow_id)).step(step).status != status:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


LARGE = {"items": [{"sku": "KB-87", "quantity": 4}]}  # $516: above the approval threshold


async def test_a_small_order_skips_the_approval(app: Application, client: httpx.AsyncClient) -> None:
    shown = await place(client, app, order())
    assert shown["steps"]["approval"] == shown["steps"]["reject"] == "skipped"
    assert shown["actions"] == {"cancel": f"POST /orders/{shown['flow_id']}/cancel"}  # completed: cancel undoes it


async def test_a_large_order_waits_for_approval_and_shows_what_can_be_done(
    app: Application, client: httpx.AsyncClient
) -> None:
    flow_id = (await client.post("/orders", json=order(**LARGE))).json()["flow_id"]
    await until(app, flow_id, "approval", "waiting")
    shown = (await client.get(f"/orders/{flow_id}")).json()
    assert shown["status"] == "waiting"
    assert set(shown["actions"]) == {"approve", "cancel"}
    waiting = (await client.get("/orders/approvals")).json()
    assert [w["flow_id"] for w in waiting] == [flow_id]
    assert waiting[0]["total_cents"] == 51600
    assert app.context.resolve(PaymentService).charges == {}  # nothing is charged before the approval


async def test_a_rejected_order_fails_at_reject_and_releases_its_stock(
    app: Application, client: httpx.AsyncClient
) -> None:
    flow_id = (await client.post("/orders", json=order(**LARGE))).json()["flow_id"]
    await until(app, flow_id, "approval", "waiting")
    decision = {"approved": False, "manager": "Mo", "note": "too many keyboards"}
    answer = await client.post(f"/orders/{flow_id}/approval", json=decision)
    assert answer.status_code == 202, answer.text
    await wait_for(app, flow_id)
    shown = (await client.get(f"/orders/{flow_id}")).json()
    assert shown["status"] == "failed"
    assert shown["error"]["step"] == "reject"
    assert shown["error"]["message"] == "Step 'reject' failed: rejected by Mo: too many keyboards"
    assert shown["compensated"] == ["validate"]
    assert steps(shown, "failed") == ["reject"]  # not retried: a rejection is final
    assert app.context.resolve(InventoryService).reserved("KB-87") == 0
    again = await client.post(f"/orders/{flow_id}/approval", json={**decision, "approved": True})
    assert again.status_code == 409
    assert again.json()["error"] == "approval_refused"


async def test_approval_errors(app: Application, client: httpx.AsyncClient) -> None:
    small = await place(client, app, order())
    answer = await client.post(f"/orders/{small['flow_id']}/approval", json={"approved": True, "manager": "Mo"})
    assert (answer.status_code, answer.json()["error"]) == (409, "no_approval_needed")
    bad = await client.post(f"/orders/{small['flow_id']}/approval", json={"approved": "maybe"})
    assert bad.status_code == 422
    missing = await client.post("/orders/flow-nope/approval", json={"approved": True, "manager": "Mo"})
    assert missing.status_code == 404


async def test_cancelling_a_completed_order_undoes_it(app: Application, client: httpx.AsyncClient) -> None:
    shown = await place(client, app, order())
    answer = await client.post(f"/orders/{shown['flow_id']}/cancel")
    assert answer.status_code == 202
    await until(app, shown["flow_id"], "validate", "compensated")
    after = (await client.get(f"/orders/{shown['flow_id']}")).json()
    assert after["status"] == "compensated"
    assert after["compensated"] == ["fulfill", "charge", "validate"]
    assert app.context.resolve(PaymentService).charges["ch_0001"].status == "refunded"
    assert [s.status for s in app.context.resolve(ShipmentService).shipments.values()] == ["cancelled"]
    ended = await client.post(f"/orders/{shown['flow_id']}/cancel")
    assert (ended.status_code, ended.json()["error"]) == (409, "order_ended")


async def test_a_failed_refund_is_listed_until_an_operator_retries_it(
    app: Application, client: httpx.AsyncClient
) -> None:
    payments = app.context.resolve(PaymentService)
    payments.refunds_available = False
    body = order()
    body["ship_to"]["country"] = "AQ"
    shown = await place(client, app, body)
    assert shown["status"] == "failed"
    assert "retry_refund" in shown["actions"]
    listed = (await client.get("/orders/failed-refunds")).json()
    assert listed == [
        {
            "flow_id": shown["flow_id"],
            "order_id": shown["order_id"],
            "status": "failed",
            "failed_rollbacks": [
                {
                    "step": "charge",
                    "error": "examples.orders.services.RefundUnavailableError: the refund service is unavailable",
                }
            ],
        }
    ]
    still_down = await client.post(f"/orders/{shown['flow_id']}/retry-refund")
    assert still_down.status_code == 202
    await until(app, shown["flow_id"], "charge", "compensation_failed")
    payments.refunds_available = True
    answer = await client.post(f"/orders/{shown['flow_id']}/retry-refund")
    assert answer.status_code == 202
    await until(app, shown["flow_id"], "charge", "compensated")
    assert (await client.get("/orders/failed-refunds")).json() == []
    assert payments.charges["ch_0001"].status == "refunded"
    nothing = await client.post(f"/orders/{shown['flow_id']}/retry-refund")
    assert (nothing.status_code, nothing.json()["error"]) == (409, "nothing_to_retry")
