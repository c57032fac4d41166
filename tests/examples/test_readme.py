"""The README's quickstart code runs as written: a workflow, its consumer, the app and a request through it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from plait.core import Application, FlowStatus

README = Path(__file__).resolve().parents[2] / "README.md"


def quickstart_namespace() -> dict[str, Any]:
    """Executes the README's first two Python blocks (definition + consumer, then the app) as an imported module.

    ``app.listen()`` sits under ``if __name__ == "__main__":``, so importing the module (a test, a worker, an ASGI
    server) does not start serving.
    """
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    source = "from __future__ import annotations\n" + blocks[0] + blocks[1]
    assert 'if __name__ == "__main__":\n    app.listen(8000)' in source
    namespace: dict[str, Any] = {"__name__": "readme_quickstart"}
    exec(compile(source, str(README), "exec"), namespace)
    return namespace


async def test_readme_quickstart_serves_orders_through_the_app() -> None:
    ns = quickstart_namespace()
    app: Application = ns["app"]
    await app.start()
    try:
        transport = httpx.ASGITransport(app=app.asgi())
        async with httpx.AsyncClient(transport=transport, base_url="http://readme") as client:
            response = await client.post(
                "/orders", json={"order_id": "o-1", "amount": 12.5}, headers={"x-correlation-id": "corr-1"}
            )
            assert response.status_code == 202, response.text
            assert response.headers["x-correlation-id"] == "corr-1"
            flow_id = response.json()["flow_id"]
            handle = await app.context.workflows.get_handle(flow_id)
            result = await handle.result(timeout=5)
            assert result.model_dump() == {"charge_id": "ch-o-1", "tracking": "track-o-1"}
            status = await client.get(f"/orders/{flow_id}")
            assert status.json() == {"status": FlowStatus.COMPLETED.value}

            bad = await client.post("/orders", json={"order_id": "o-2"})
            assert bad.status_code == 422
            assert "amount" in bad.text
            assert (await client.get("/orders/flow-unknown")).status_code == 404
    finally:
        await app.stop()


async def test_readme_testing_snippet_runs_against_the_quickstart() -> None:
    ns = quickstart_namespace()
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    testing = next(block for block in blocks if "create_mock_step_context" in block)
    exec(compile(testing, str(README), "exec"), ns)
    await ns["test_charge_returns_the_charge_id"]()
    await ns["test_place_order"]()
    assert not ns["app"].started  # run_app stopped it
