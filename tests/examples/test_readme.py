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


def curl_session() -> list[str]:
    """The README's curl session: each command as one line, in order."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    session = next(block for block in blocks if "idempotency-key: order-1001" in block)
    commands: list[str] = []
    current: list[str] | None = None
    for line in session.splitlines():
        if line.startswith("curl"):
            current = [line]
            commands.append("")
        elif current is not None and line.startswith(" "):
            current.append(line)  # a continuation: after a backslash, or inside the quoted JSON body
        else:
            current = None
            continue
        commands[-1] = " ".join(part.strip().removesuffix("\\").strip() for part in current)
    return commands


async def test_the_readme_curl_session_runs_against_the_example_service(unused_port: int) -> None:
    import asyncio
    import json
    import shutil
    import signal
    import sys

    import pytest

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    start, watch, approve, result, cancel = curl_session()
    assert (start.count("-d '"), watch.split()[:2]) == (1, ["curl", "-N"])
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(README.parent / "examples" / "quickstart.py"),
        "--serve",
        "--port",
        str(unused_port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )

    async def sh(command: str) -> str:
        command = command.replace("127.0.0.1:8001", f"127.0.0.1:{unused_port}")
        shell = await asyncio.create_subprocess_shell(command, stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(shell.communicate(), 20)
        assert shell.returncode == 0, command
        return out.decode()

    try:
        assert process.stdout is not None
        while "/cancel" not in (await asyncio.wait_for(process.stdout.readline(), 30)).decode():
            pass
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{unused_port}") as client:
            for _ in range(200):  # the server may still be binding its socket
                try:
                    await client.get("/orders")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
        assert json.loads(await sh(start)) == {"flow_id": "order-1001"}
        watching = asyncio.create_task(sh(watch))
        await asyncio.sleep(0.3)
        assert not watching.done()  # the flow waits for its approval, and the stream with it
        approved = json.loads(await sh(approve))
        assert approved["flow_id"] == "order-1001"
        events = await asyncio.wait_for(watching, 10)  # ends by itself once the flow has
        assert '"type":"flow_waiting"' in events and '"type":"flow_completed"' in events
        assert events.rstrip().endswith('event: end\ndata: {"flow_id":"order-1001"}')
        done = json.loads(await sh(result))
        assert (done["status"], done["result"]["order_id"]) == ("completed", "ord_1001")
        assert json.loads(await sh(cancel))["status"] == "completed"  # an ended flow is left as it is
        # On a flow that still waits, the same cancel rolls it back.
        assert json.loads(await sh(start.replace("order-1001", "order-1002")))["flow_id"] == "order-1002"
        await asyncio.sleep(0.2)
        cancelled = json.loads(await sh(cancel.replace("order-1001", "order-1002")))
        assert cancelled["flow_id"] == "order-1002"
        final = json.loads(await sh(result.replace("order-1001", "order-1002")))
        assert (final["error"], final["message"]) == ("flow_cancelled", "Workflow cancelled: customer called")
    finally:
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.wait(), 15)
