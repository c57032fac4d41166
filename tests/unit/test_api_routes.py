"""Every route of the workflows API through an ASGI client: what it answers, and each way it refuses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.requests import Request

from plait.core import Application, FlowStatus
from plait.core.api import Action
from tests.unit.test_api_app import (
    JSON,
    Ledger,
    MakeClient,
    allow_all,
    clients,
    ended_flow,
    until,
    waiting_flow,
)

Operator = tuple[Application, httpx.AsyncClient]


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    async with clients() as make:
        yield make


@pytest.fixture
async def operator(make_client: MakeClient) -> Operator:
    """A started application whose API allows everything, and its client."""
    return await make_client(allow_all)


@pytest.fixture
def client(operator: Operator) -> httpx.AsyncClient:
    return operator[1]


# --- start ---------------------------------------------------------------------------------------------------


async def test_start_answers_202_with_the_flow_id_and_its_location(operator: Operator) -> None:
    app, client = operator
    response = await client.post("/workflows/quick", json={"amount": 5}, headers={"x-correlation-id": "c-1"})
    assert response.status_code == 202
    flow_id = response.json()["flow_id"]
    assert response.json() == {"flow_id": flow_id}
    assert response.headers["location"] == f"/workflows/flows/{flow_id}"
    assert response.headers["x-correlation-id"] == "c-1"
    info = await until(app, flow_id, lambda info: info.status == FlowStatus.COMPLETED)
    assert info.meta == {"correlation_id": "c-1"}


async def test_an_idempotency_key_is_the_flow_id(operator: Operator) -> None:
    _, client = operator
    first = await client.post("/workflows/quick", json={"amount": 5}, headers={"idempotency-key": "order-7"})
    again = await client.post("/workflows/quick", json={"amount": 5}, headers={"idempotency-key": "order-7"})
    assert first.json() == again.json() == {"flow_id": "order-7"}
    other = await client.post("/workflows/quick", json={"amount": 6}, headers={"idempotency-key": "order-7"})
    assert (other.status_code, other.json()["error"], other.json()["flow_id"]) == (409, "flow_conflict", "order-7")
    too_long = await client.post("/workflows/quick", json={"amount": 5}, headers={"idempotency-key": "k" * 201})
    assert (too_long.status_code, too_long.json()["error"]) == (400, "bad_request")


async def test_start_refuses_bad_bodies(operator: Operator) -> None:
    _, client = operator
    invalid = await client.post("/workflows/quick", json={"amount": 0, "extra": 1})
    assert invalid.status_code == 422
    assert invalid.json()["error"] == "invalid_body"
    assert [f["field"] for f in invalid.json()["fields"]] == ["amount"]
    not_json = await client.post("/workflows/quick", content=b"{amount", headers=JSON)
    assert (not_json.status_code, not_json.json()["error"]) == (422, "invalid_json")
    form = await client.post("/workflows/quick", data={"amount": "5"})
    assert (form.status_code, form.json()["error"]) == (415, "unsupported_media_type")
    unknown = await client.post("/workflows/nope", json={"amount": 5})
    assert (unknown.status_code, unknown.json()["error"]) == (404, "workflow_not_found")
    elsewhere = await client.post("/workflows/export", json={"rows": [1]})
    assert (elsewhere.status_code, elsewhere.json()["error"]) == (404, "workflow_not_registered")  # in-process


async def test_a_body_over_the_limit_is_a_413(make_client: MakeClient) -> None:
    _, client = await make_client(allow_all, max_body_size=64)
    response = await client.post("/workflows/quick", json={"amount": 5, "fail_at": "x" * 100})
    assert (response.status_code, response.json()["error"]) == (413, "body_too_large")


async def test_without_authorize_every_mutation_is_a_403_and_reads_work(make_client: MakeClient) -> None:
    _, operator_client = await make_client(allow_all)
    flow_id = (await operator_client.post("/workflows/quick", json={"amount": 5})).json()["flow_id"]
    _, client = await make_client()
    for path in (
        "/workflows/quick",
        "/workflows/flows/any/cancel",
        "/workflows/flows/any/compensate",
        "/workflows/flows/any/retry",
        "/workflows/flows/any/retry-compensation",
        "/workflows/flows/any/signals/decision",
    ):
        response = await client.post(path, json={"amount": 5})
        assert response.status_code == 403, path
        assert response.json()["error"] == "read_only"
        assert "authorize=" in response.json()["message"]
    assert (await client.get("/workflows/flows")).status_code == 200
    assert (await operator_client.get(f"/workflows/flows/{flow_id}")).status_code == 200


async def test_authorize_is_asked_with_the_request_the_action_and_the_workflow(
    make_client: MakeClient, operator: Operator
) -> None:
    asked: list[tuple[str, Action, str]] = []

    async def only_starts(request: Request, action: Action, workflow: str) -> bool:
        asked.append((request.headers.get("x-user", ""), action, workflow))
        return action == "start"

    app, client = await make_client(only_starts)
    started = await client.post("/workflows/approve", json={"amount": 50}, headers={"x-user": "ann"})
    assert started.status_code == 202
    flow_id = started.json()["flow_id"]
    await until(app, flow_id, lambda info: info.step("decision").status == "waiting")
    refused = await client.post(f"/workflows/flows/{flow_id}/cancel", json={}, headers={"x-user": "bob"})
    assert refused.status_code == 403
    assert refused.json() == {
        "error": "forbidden",
        "message": "Not allowed to cancel flows of workflow 'approve'",
        "action": "cancel",
        "workflow": "approve",
    }
    assert asked == [("ann", "start", "approve"), ("bob", "cancel", "approve")]
    assert (await app.context.workflows.get_status(flow_id)) == FlowStatus.WAITING

    def says_yes_but_not_true(request: Request, action: Action, workflow: str) -> bool:
        return "yes"  # type: ignore[return-value]  # only True allows

    _, sloppy = await make_client(says_yes_but_not_true)
    assert (await sloppy.post("/workflows/quick", json={"amount": 5})).status_code == 403


async def test_an_authorize_that_raises_is_a_500_without_a_trace(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: Request, action: Action, workflow: str) -> bool:
        raise RuntimeError("secret detail")

    _, client = await make_client(broken)
    response = await client.post("/workflows/quick", json={"amount": 5})
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal_error",
        "message": "The server could not handle this request; the error is in its log",
    }
    assert "secret detail" in caplog.text  # logged, with its traceback, for the operator


# --- reads ---------------------------------------------------------------------------------------------------


async def test_list_flows_filters_and_pages(operator: Operator) -> None:
    app, client = operator
    quick = [await ended_flow(client, app) for _ in range(3)]
    waiting = await waiting_flow(client, app)
    everything = (await client.get("/workflows/flows")).json()
    assert [f["flow_id"] for f in everything["items"]] == [waiting, *reversed(quick)]
    assert everything["next_cursor"] is None
    assert everything["items"][0]["status"] == "waiting" and everything["items"][0]["workflow"] == "approve"
    only_quick = (await client.get("/workflows/flows", params={"workflow": "quick", "limit": 2})).json()
    assert [f["flow_id"] for f in only_quick["items"]] == [quick[2], quick[1]]
    rest = (
        await client.get("/workflows/flows", params={"workflow": "quick", "cursor": only_quick["next_cursor"]})
    ).json()
    assert [f["flow_id"] for f in rest["items"]] == [quick[0]]
    waiting_only = (await client.get("/workflows/flows?status=waiting")).json()
    assert [f["flow_id"] for f in waiting_only["items"]] == [waiting]
    assert (await client.get("/workflows/flows?parent_id=nobody")).json() == {"items": [], "next_cursor": None}
    created = everything["items"][0]["created_at"]
    newest = (await client.get("/workflows/flows", params={"created_after": created})).json()
    assert [f["flow_id"] for f in newest["items"]] == [waiting]
    for query in ("status=sleepy", "limit=0", "limit=x", "limit=1001", "cursor=nonsense", "created_after=soon"):
        response = await client.get(f"/workflows/flows?{query}")
        assert (response.status_code, response.json()["error"]) == (400, "bad_request"), query


async def test_describe_shows_each_node_and_the_rollback_order(operator: Operator) -> None:
    app, client = operator
    flow_id = await waiting_flow(client, app)
    await client.post(f"/workflows/flows/{flow_id}/signals/decision", json={"approved": True})
    await until(app, flow_id, lambda info: info.status.is_terminal)
    assert (await client.post(f"/workflows/flows/{flow_id}/compensate", json={})).status_code == 202
    await until(app, flow_id, lambda info: info.status == FlowStatus.COMPENSATED)
    body = (await client.get(f"/workflows/flows/{flow_id}")).json()
    assert body["status"] == "compensated"
    assert body["compensated"] == ["charge", "reserve"]
    steps = {s["name"]: s for s in body["steps"]}
    assert steps["decision"]["kind"] == "wait_for"
    assert steps["decision"]["signal"] == {"approved": True, "by": "mo"}
    assert steps["notify"]["status"] == "completed"
    assert steps["reserve"] == {
        "name": "reserve",
        "status": "compensated",
        "kind": "step",
        "attempts": 1,
        "error": None,
        "rollback_error": None,
        "items_done": None,
        "items_total": None,
        "child_id": None,
        "signal": None,
        "wake_at": None,
        "has_rollback": True,
        "in_doubt": False,
    }
    missing = await client.get("/workflows/flows/flow-nope")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": "flow_not_found",
        "message": "Flow 'flow-nope' not found",
        "flow_id": "flow-nope",
    }


async def test_flow_ids_with_slashes_reach_every_route(operator: Operator) -> None:
    app, client = operator
    response = await client.post("/workflows/approve", json={"amount": 50}, headers={"idempotency-key": "shop/42/a"})
    flow_id = response.json()["flow_id"]
    assert flow_id == "shop/42/a"
    await until(app, flow_id, lambda info: info.step("decision").status == "waiting")
    assert (await client.get("/workflows/flows/shop%2F42%2Fa")).json()["flow_id"] == flow_id
    signal = await client.post("/workflows/flows/shop/42/a/signals/decision", json={"approved": True})
    assert signal.status_code == 202, signal.text
    result = await client.get("/workflows/flows/shop/42/a/result?wait=5")
    assert result.json()["result"] == {"total": 50}


async def test_result_is_200_409_or_202(operator: Operator) -> None:
    app, client = operator
    done = await ended_flow(client, app)
    ok = await client.get(f"/workflows/flows/{done}/result")
    assert ok.status_code == 200
    assert ok.json() == {"flow_id": done, "status": "completed", "result": {"total": 5}}

    failed = await ended_flow(client, app, fail_at="charge")
    refused = await client.get(f"/workflows/flows/{failed}/result")
    assert refused.status_code == 409
    assert refused.json() == {
        "error": "flow_failed",
        "message": "Step 'charge' failed: charge broke",
        "flow_id": failed,
        "status": "failed",
        "failure": {"type": "WorkflowStepError", "message": "Step 'charge' failed: charge broke", "step": "charge"},
    }

    waiting = await waiting_flow(client, app)
    assert (await client.get(f"/workflows/flows/{waiting}/result")).json() == {"flow_id": waiting, "status": "waiting"}
    still = await client.get(f"/workflows/flows/{waiting}/result?wait=0.05")
    assert (still.status_code, still.json()["status"]) == (202, "waiting")
    for wait in ("-1", "61", "soon", "nan"):
        bad = await client.get(f"/workflows/flows/{waiting}/result?wait={wait}")
        assert (bad.status_code, bad.json()["error"]) == (400, "bad_request"), wait
    await client.post(f"/workflows/flows/{waiting}/cancel", json={"reason": "changed my mind"})
    cancelled = await client.get(f"/workflows/flows/{waiting}/result?wait=5")
    assert cancelled.status_code == 409
    assert cancelled.json()["error"] == "flow_cancelled"
    assert cancelled.json()["message"] == "Workflow cancelled: changed my mind"
    assert (await client.get("/workflows/flows/flow-nope/result")).status_code == 404


async def test_result_waits_for_a_flow_that_ends_meanwhile(operator: Operator) -> None:
    app, client = operator
    waiting = await waiting_flow(client, app)

    async def approve_soon() -> None:
        await client.post(f"/workflows/flows/{waiting}/signals/decision", json={"approved": True})

    async with asyncio.TaskGroup() as group:
        result = group.create_task(client.get(f"/workflows/flows/{waiting}/result?wait=10"))
        await asyncio.sleep(0.05)
        group.create_task(approve_soon())
    assert (result.result().status_code, result.result().json()["result"]) == (200, {"total": 50})


# --- signals and run control ---------------------------------------------------------------------------------


async def test_signal_delivers_a_validated_payload(operator: Operator) -> None:
    app, client = operator
    flow_id = await waiting_flow(client, app)
    bad = await client.post(f"/workflows/flows/{flow_id}/signals/decision", json={"approved": "perhaps"})
    assert (bad.status_code, bad.json()["fields"][0]["field"]) == (422, "approved")
    unknown = await client.post(f"/workflows/flows/{flow_id}/signals/approval", json={"approved": True})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "unknown_signal" and unknown.json()["signals"] == ["decision"]
    not_json = await client.post(f"/workflows/flows/{flow_id}/signals/decision", content=b"approved=1")
    assert not_json.status_code == 415
    sent = await client.post(f"/workflows/flows/{flow_id}/signals/decision", json={"approved": True})
    assert sent.status_code == 202
    assert sent.json()["flow_id"] == flow_id
    same = await client.post(f"/workflows/flows/{flow_id}/signals/decision", json={"approved": True})
    assert same.status_code == 202  # the same payload again is accepted
    other = await client.post(f"/workflows/flows/{flow_id}/signals/decision", json={"approved": False})
    assert (other.status_code, other.json()["error"]) == (409, "signal_refused")
    await until(app, flow_id, lambda info: info.status == FlowStatus.COMPLETED)
    assert app.context.resolve(Ledger).done == ["reserve", "charge", "notify"]
    assert (
        await client.post("/workflows/flows/flow-nope/signals/decision", json={"approved": True})
    ).status_code == 404


async def test_cancel_and_its_refusals(operator: Operator) -> None:
    app, client = operator
    flow_id = await waiting_flow(client, app)
    no_type = await client.post(f"/workflows/flows/{flow_id}/cancel")
    assert no_type.status_code == 415  # a cross-site form cannot cancel a flow
    bad_reason = await client.post(f"/workflows/flows/{flow_id}/cancel", json={"reason": 5})
    assert bad_reason.status_code == 422
    response = await client.post(f"/workflows/flows/{flow_id}/cancel", content=b"", headers=JSON)
    assert response.status_code == 202
    assert response.json()["flow_id"] == flow_id
    info = await until(app, flow_id, lambda info: info.status.is_terminal)
    assert info.status == FlowStatus.CANCELLED
    assert app.context.resolve(Ledger).undone == ["reserve"]
    again = await client.post(f"/workflows/flows/{flow_id}/cancel", json={})
    assert again.json() == {"flow_id": flow_id, "status": "cancelled"}  # an ended flow is left as it is
    assert (await client.post("/workflows/flows/flow-nope/cancel", json={})).status_code == 404


async def test_compensate_undoes_a_completed_flow_only(operator: Operator) -> None:
    app, client = operator
    done = await ended_flow(client, app)
    response = await client.post(f"/workflows/flows/{done}/compensate", json={"reason": "returned"})
    assert response.status_code == 202
    info = await until(app, done, lambda info: info.status == FlowStatus.COMPENSATED)
    assert info.compensated == ("charge", "reserve")
    waiting = await waiting_flow(client, app)
    refused = await client.post(f"/workflows/flows/{waiting}/compensate", json={})
    assert refused.status_code == 409
    assert refused.json()["error"] == "flow_state" and refused.json()["status"] == "waiting"


async def test_retry_starts_a_new_flow_with_the_same_data(operator: Operator) -> None:
    app, client = operator
    failed = await ended_flow(client, app, fail_at="charge")
    response = await client.post(f"/workflows/flows/{failed}/retry", json={})
    assert response.status_code == 202
    new = response.json()["flow_id"]
    assert response.json() == {"flow_id": new, "retry_of": failed}
    assert response.headers["location"] == f"/workflows/flows/{new}"
    info = await until(app, new, lambda info: info.status.is_terminal)
    assert info.retry_of == failed
    waiting = await waiting_flow(client, app)
    refused = await client.post(f"/workflows/flows/{waiting}/retry", json={})
    assert (refused.status_code, refused.json()["error"]) == (409, "flow_state")


async def test_retry_compensation_finishes_failed_rollbacks(operator: Operator) -> None:
    app, client = operator
    ledger = app.context.resolve(Ledger)
    ledger.rollbacks_broken = True
    failed = await ended_flow(client, app, fail_at="charge")
    info = await until(app, failed, lambda info: info.step("reserve").status == "compensation_failed")
    assert info.step("reserve").rollback_error == "RuntimeError: cannot undo reserve"
    ledger.rollbacks_broken = False
    response = await client.post(f"/workflows/flows/{failed}/retry-compensation", json={})
    assert response.status_code == 202
    await until(app, failed, lambda info: info.step("reserve").status == "compensated")
    assert ledger.undone == ["reserve"]
    nothing = await client.post(f"/workflows/flows/{failed}/retry-compensation", json={})
    assert (nothing.status_code, nothing.json()["error"]) == (409, "flow_state")


# --- the rest ------------------------------------------------------------------------------------------------


async def test_unknown_routes_and_methods_are_json(client: httpx.AsyncClient) -> None:
    missing = await client.get("/workflows/flows/x/y/z/nothing/here/cancel/no")
    assert missing.status_code == 404  # read as the id of a flow that does not exist
    assert (await client.get("/workflows/nothing/here")).json() == {
        "error": "not_found",
        "message": "No route GET /workflows/nothing/here",
    }
    wrong = await client.delete("/workflows/flows")
    assert (wrong.status_code, wrong.json()["error"]) == (405, "method_not_allowed")


async def test_every_request_is_a_503_until_the_application_starts() -> None:
    from tests.unit.test_api_app import build_app

    app, _ = build_app(allow_all)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.asgi()), base_url="http://t") as client:
        response = await client.get("/workflows/flows")
    assert (response.status_code, response.json()["error"]) == (503, "not_started")
