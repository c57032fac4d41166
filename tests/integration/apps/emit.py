"""An emitter process: starts flows of ``it-order`` with no consumer registered, prints their ids and exits.

``python -m tests.integration.apps.emit <redis url> <prefix> <count> <slow step> <slow seconds>``
"""

from __future__ import annotations

import asyncio
import sys

from plait.providers.arq import ArqWorkflowProvider
from tests.integration.apps.orders import ORDER, Order


async def emit(url: str, prefix: str, count: int, slow_step: str, slow: float) -> list[str]:
    provider = ArqWorkflowProvider(url, queue_prefix=prefix)
    provider.register(ORDER)  # the definition only: this process runs no step
    await provider.start()
    try:
        handles = [
            await provider.execute(ORDER, Order(order_id=f"o-{i}", slow_step=slow_step, slow=slow))
            for i in range(count)
        ]
    finally:
        await provider.stop()
    return [h.id for h in handles]


if __name__ == "__main__":
    url, prefix, count, slow_step, slow = sys.argv[1:6]
    for flow_id in asyncio.run(emit(url, prefix, int(count), slow_step, float(slow))):
        print(flow_id)
