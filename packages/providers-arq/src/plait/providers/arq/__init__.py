"""Plait's distributed workflow provider: flow state in Redis, steps as arq-format jobs, JSON only.

The process that starts flows needs only the definitions; processes that registered consumers run the steps
(``plait worker module:app`` runs an application's consumers without an HTTP server)::

    from plait.providers.arq import ArqWorkflowProvider

    provider = ArqWorkflowProvider("redis://localhost:6379", stall_interval=5.0)
    provider.register(ProcessOrder, ProcessOrderWorkflow(payments))    # or register(ProcessOrder) to only start
    await provider.start()
    handle = await provider.execute(ProcessOrder, {"order_id": "o-1"})
    result = await handle.result()     # woken through Redis pub/sub, from any process
    await provider.stop()
"""

from plait.providers.arq.provider import ArqWorkflowProvider
from plait.providers.arq.settings import ArqSettings

__all__ = ["ArqSettings", "ArqWorkflowProvider"]
