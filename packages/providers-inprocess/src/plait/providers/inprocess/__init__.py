"""Plait's in-process workflow provider: flows run as asyncio tasks in the current event loop.

For tests and single-process applications; flow state lives in memory::

    from plait.providers.inprocess import InProcessWorkflowProvider

    provider = InProcessWorkflowProvider()
    provider.register(ProcessOrder, ProcessOrderWorkflow(payments))
    await provider.start()
    handle = await provider.execute(ProcessOrder, {"order_id": "o-1"})
    result = await handle.result()
    await provider.stop()
"""

from plait.providers.inprocess.provider import InProcessWorkflowProvider

__all__ = ["InProcessWorkflowProvider"]
