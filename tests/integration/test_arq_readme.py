"""The README's idempotency-key example runs as written, on the arq provider, against a payments API (mocked with
httpx) that deduplicates on the key: a charge whose response was lost is retried and charged once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from plait.core import ConsumerOptions
from plait.providers.arq import ArqWorkflowProvider
from tests.examples.test_readme import quickstart_source

README = Path(__file__).resolve().parents[2] / "README.md"


def idempotency_example() -> dict[str, Any]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (block,) = [b for b in blocks if "Idempotency-Key" in b]
    namespace: dict[str, Any] = {"__name__": "readme_quickstart"}
    exec(compile("from __future__ import annotations\n" + quickstart_source(), str(README), "exec"), namespace)
    exec(compile(block, str(README), "exec"), namespace)
    return namespace


class PaymentsServer:
    """Charges once per Idempotency-Key; the first response is lost on the way back (a timeout)."""

    def __init__(self) -> None:
        self.charges: dict[str, str] = {}
        self.keys: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        key = request.headers["Idempotency-Key"]
        self.keys.append(key)
        if key not in self.charges:
            self.charges[key] = f"ch-{len(self.charges) + 1}"
            raise httpx.ReadTimeout("the charge went through, its response did not", request=request)
        return httpx.Response(200, json={"id": self.charges[key]})


async def test_a_retried_charge_with_the_idempotency_key_is_charged_once(redis_url: str) -> None:
    ns = idempotency_example()
    server = PaymentsServer()
    http = httpx.AsyncClient(transport=httpx.MockTransport(server.handle), base_url="https://payments.example")
    provider = ArqWorkflowProvider(redis_url)
    provider.register(
        ns["ProcessOrder"], ns["ProcessOrderWorkflow"](ns["PaymentsAPI"](http)), ConsumerOptions(attempts=2)
    )
    await provider.start()
    try:
        handle = await provider.execute(ns["ProcessOrder"], ns["OrderData"](order_id="o-1", amount=5.0))
        result = await handle.result(timeout=10)
    finally:
        await provider.stop()
        await http.aclose()
    assert result.charge_id == "ch-1"
    assert len(server.keys) == 2 and len(set(server.keys)) == 1  # two requests, one key
    assert len(server.charges) == 1
