"""The FastAPI example: Plait's API and inspector mounted in a host app, Plait run by the host's lifespan."""

from __future__ import annotations

from examples import mounted
from examples.orders.demo import SCENARIOS
from tests.unit.test_api_mount import served


async def test_the_host_starts_flows_that_the_mounted_api_shows() -> None:
    order = SCENARIOS[0].order.model_dump(mode="json")
    async with served(mounted.host) as client:
        assert (await client.get("/health")).json() == {"plait": True}
        placed = await client.post("/checkout", json=order)
        assert placed.status_code == 202, placed.text
        flow_id = placed.json()["flow_id"]
        result = await client.get(f"/ops/workflows/flows/{flow_id}/result?wait=10")
        assert (result.status_code, result.json()["status"]) == (200, "completed")
        listed = (await client.get("/ops/workflows/flows")).json()["items"]
        assert [flow["flow_id"] for flow in listed] == [flow_id]
        assert (await client.get("/ops/workflows/permissions")).json()["read_only"] is False
        page = await client.get("/ops/workflows/ui")
        assert '<meta name="plait-api" content="/ops/workflows">' in page.text
        assert "/checkout" in (await client.get("/openapi.json")).json()["paths"]  # the host's document is its own
        unknown = await client.post("/checkout", json={**order, "items": [{"sku": "X", "quantity": 1}]})
        assert unknown.status_code == 422
    assert not mounted.orders.started
    async with served(mounted.host, lifespan=False) as client:
        assert (await client.get("/health")).json() == {"plait": False}
        assert (await client.get("/ops/workflows/flows")).status_code == 503
