"""The README's first command, ``python examples/quickstart.py``, run the way a user runs it."""

from __future__ import annotations

import asyncio
import io
import signal
import sys
from pathlib import Path

import httpx
import pytest

from examples import quickstart
from plait.core import PlaitError

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "quickstart.py"


def test_arguments() -> None:
    defaults = quickstart.parse_args([])
    assert (defaults.serve, defaults.host, defaults.port, defaults.provider) == (False, "127.0.0.1", 8001, "inprocess")
    serving = quickstart.parse_args(["--serve", "--port", "9001", "--host", "0.0.0.0"])
    assert (serving.serve, serving.port, serving.host) == (True, 9001, "0.0.0.0")
    with pytest.raises(SystemExit):
        quickstart.parse_args(["--provider", "kafka"])


def test_the_arq_provider_is_imported_only_when_asked_and_its_absence_explained(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert quickstart.make_provider(quickstart.parse_args([])) is None
    monkeypatch.setitem(sys.modules, "plait.providers.arq", None)
    with pytest.raises(PlaitError, match="pip install plait-providers-arq"):
        quickstart.make_provider(quickstart.parse_args(["--provider", "arq"]))


async def test_main_prints_the_orders_and_returns_0() -> None:
    out = io.StringIO()
    assert await quickstart.main(quickstart.parse_args([]), out) == 0
    text = out.getvalue()
    assert text.startswith("Plait order service on the in-process provider\n")
    assert text.count("-> completed") == 2
    assert text.count("-> failed") == 3
    assert text.count("-> cancelled") == 1
    assert "-> waiting" not in text  # only --serve leaves an order waiting
    assert "Serving" not in text


async def run_script(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        *args,
        cwd=str(ROOT.parent),  # anywhere: the script finds its package by itself
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_the_script_runs_the_demo_and_exits_0() -> None:
    process = await run_script()
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=45)
    assert process.returncode == 0, stderr.decode()
    text = stdout.decode()
    assert "compensated: validate\n" in text
    assert "compensated: charge, validate\n" in text
    assert "released reservation" in text
    assert "Traceback" not in stderr.decode()


async def test_serve_keeps_serving_the_demos_orders_until_interrupted(unused_port: int) -> None:
    port = unused_port
    process = await run_script("--serve", "--port", str(port))
    try:
        assert process.stdout is not None
        lines: list[str] = []
        while not any("curl -s -X POST" in line and "/cancel" in line for line in lines):
            line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
            assert line, "the script ended before serving: " + "".join(lines)
            lines.append(line.decode())
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(100):  # the server may still be binding its socket
                try:
                    response = await client.get("/orders", headers={"x-correlation-id": "from-curl"})
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the server never answered")
            inspector = await client.get("/workflows/ui")
            waiting = next(line for line in lines if "/events" in line).split("/flows/")[1].split("/")[0]
            approved = await client.post(f"/orders/{waiting}/approval", json={"approved": True, "manager": "you"})
        assert response.headers["x-correlation-id"] == "from-curl"
        statuses = [order["status"] for order in response.json()]
        assert statuses == ["completed", "failed", "failed", "completed", "cancelled", "failed", "waiting"]
        assert any(line.strip() == f"The run inspector: http://127.0.0.1:{port}/workflows/ui" for line in lines)
        assert inspector.status_code == 200
        assert "text/html" in inspector.headers["content-type"]
        assert approved.status_code == 202, approved.text
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.wait(), timeout=15)
        assert process.returncode == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_script_runs_the_demo_on_the_arq_provider(redis_url: str) -> None:
    process = await run_script("--provider", "arq", "--redis-url", redis_url)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=45)
    assert process.returncode == 0, stderr.decode()
    text = stdout.decode()
    assert text.startswith("Plait order service on the arq provider\n")
    assert text.count("-> completed") == 2  # the first order and the approved one
    assert "compensated: charge, validate\n" in text
