"""State that cannot be read or run: failed once by the worker that finds it, never retried; reads name the flow.

A flow's stored state is damaged straight in Redis (as a bad migration, a hand edit or a bug could); a worker
claims its next job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import pytest
import redis
from pydantic import BaseModel

from plait.core import (
    CorruptFlowError,
    FlowStatus,
    IWorkflowConsumer,
    StepContext,
    StepHandler,
    Workflow,
    WorkflowError,
)
from plait.providers.arq import ArqWorkflowProvider
from plait.providers.arq._keys import Keys
from tests.integration.test_arq_provider import LINE, Data, Out, Recorder, Result

KEYS = Keys("workflow")
STALL = 0.5


@asynccontextmanager
async def started(provider: ArqWorkflowProvider) -> AsyncIterator[ArqWorkflowProvider]:
    await provider.start()
    try:
        yield provider
    finally:
        await provider.stop()


def damage(client: redis.Redis, flow_id: str, **fields: bytes) -> None:
    client.hset(KEYS.flow(flow_id), mapping=fields)


def stored(client: redis.Redis, flow_id: str, field: str) -> bytes | None:
    return cast(bytes | None, client.hget(KEYS.flow(flow_id), field))


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"s": b'{"flow_id": "x", "workfl'}, "not JSON"),
        ({"s": b"\xff\xfe not even text"}, "not JSON"),
        ({"s": b"[1, 2, 3]"}, "a JSON list, not an object"),
        ({"s": b'{"workflow": "it-line"}'}, "not a flow state"),
        ({"v": b"seven"}, "its version b'seven' is not a number"),
    ],
)
async def test_a_flow_whose_state_cannot_be_read_is_failed_once_and_its_bytes_are_kept(
    redis_url: str,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    fields: dict[str, bytes],
    reason: str,
) -> None:
    consumer = Recorder(("a", "b"))
    emitter = ArqWorkflowProvider(redis_url)
    emitter.register(LINE)
    worker = ArqWorkflowProvider(redis_url, stall_interval=STALL)
    worker.register(LINE, consumer)
    caplog.set_level(logging.WARNING, "plait.providers.arq")
    async with started(emitter):
        handle = await emitter.execute(LINE, Data(key="k"))
        # A caller already waits (it read the flow while it was fine): the end the worker announces wakes it.
        waiter = asyncio.create_task(handle.result(timeout=5))
        await asyncio.sleep(0.3)
        original = stored(redis_client, handle.id, "s")
        damage(redis_client, handle.id, **fields)
        unreadable = fields.get("s", original)
        async with started(worker):
            with pytest.raises(WorkflowError) as caught:
                await waiter
            # Never retried: several stall intervals later, it was failed once and nothing more happened.
            await asyncio.sleep(STALL * 4)
        assert str(caught.value).startswith(f"Flow '{handle.id}' cannot run: its stored state cannot be read (")
        assert reason in str(caught.value)
        assert caught.value.flow_id == handle.id
        assert await emitter.get_status(handle.id) == FlowStatus.FAILED
        state = await emitter.get_state(handle.id)
        assert state.error is not None
        assert (state.error["kind"], state.error["type"]) == ("unrunnable", "plait.core.errors.CorruptFlowError")
        assert (await emitter.describe(handle.id)).status == FlowStatus.FAILED
    assert stored(redis_client, handle.id, "unreadable") == unreadable
    assert consumer.calls == []
    failed = [r for r in caplog.records if "has unreadable state" in r.getMessage()]
    assert len(failed) == 1
    assert failed[0].levelno == logging.ERROR and failed[0].exc_info is None
    assert handle.id in failed[0].getMessage()
    assert not [r for r in caplog.records if "Internal error" in r.getMessage()]
    assert redis_client.zcard("workflow:leases") == redis_client.zcard(KEYS.queue(LINE.name)) == 0


async def test_a_flow_whose_state_holds_the_wrong_shapes_is_failed_once(
    redis_url: str, redis_client: redis.Redis
) -> None:
    consumer = Recorder(("a", "b"))
    emitter = ArqWorkflowProvider(redis_url)
    emitter.register(LINE)
    worker = ArqWorkflowProvider(redis_url, stall_interval=STALL)
    worker.register(LINE, consumer)
    async with started(emitter):
        handle = await emitter.execute(LINE, Data(key="k"))
        waiter = asyncio.create_task(handle.result(timeout=5))
        await asyncio.sleep(0.3)
        raw = stored(redis_client, handle.id, "s")
        assert raw is not None
        damage(redis_client, handle.id, s=raw.replace(b'"signals":{}', b'"signals":[]'))
        async with started(worker):
            with pytest.raises(WorkflowError, match="its field 'signals' holds a list"):
                await waiter
    assert consumer.calls == []


async def test_reads_of_a_flow_whose_state_cannot_be_read_raise_an_error_naming_it(
    redis_url: str, redis_client: redis.Redis
) -> None:
    emitter = ArqWorkflowProvider(redis_url)
    emitter.register(LINE)
    async with started(emitter):
        handle = await emitter.execute(LINE, Data(key="k"))
        damage(redis_client, handle.id, s=b"{garbage")  # no worker runs LINE here: it stays unreadable
        for read in (emitter.get_state, emitter.describe):
            with pytest.raises(CorruptFlowError, match=f"Flow '{handle.id}' has unreadable state: not JSON") as caught:
                await read(handle.id)
            assert caught.value.flow_id == handle.id
        with pytest.raises(CorruptFlowError, match=handle.id):
            await handle.result(timeout=1)
        with pytest.raises(CorruptFlowError, match=handle.id):
            await emitter.execute(LINE, Data(key="k"), id=handle.id)
        damage(redis_client, handle.id, st=b"half-done")
        for status_read in (emitter.get_status, emitter.get_handle):
            with pytest.raises(CorruptFlowError, match=f"Flow '{handle.id}' has unreadable state: its status"):
                await status_read(handle.id)


# -- data that no longer validates --


class StricterData(BaseModel):
    key: str
    region: str  # added after flows were started without it


class StricterLine(IWorkflowConsumer[StricterData, Result]):
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.steps = {name: StepHandler(execute=self.run) for name in ("a", "b")}

    async def run(self, ctx: StepContext[StricterData]) -> BaseModel:
        self.calls.append(ctx.step_name)
        raise AssertionError("unreachable: the data does not validate")

    async def on_complete(self, ctx: object) -> Result:
        raise AssertionError("unreachable")


STRICTER_LINE = Workflow.define(name=LINE.name, data=StricterData, result=Result).steps(
    lambda s: s.sequential(s.step("a", Out), s.step("b", Out))
)


async def test_a_flow_whose_data_no_longer_validates_fails_once_naming_the_flow(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    emitter = ArqWorkflowProvider(redis_url)
    emitter.register(LINE)
    consumer = StricterLine()
    worker = ArqWorkflowProvider(redis_url, stall_interval=STALL)
    worker.register(STRICTER_LINE, consumer)
    caplog.set_level(logging.WARNING, "plait.providers.arq")
    async with started(emitter), started(worker):
        handle = await emitter.execute(LINE, Data(key="k"))
        began = time.monotonic()
        with pytest.raises(WorkflowError) as caught:
            await handle.result(timeout=5)
        assert time.monotonic() - began < STALL  # at once, not after a stall interval
        await asyncio.sleep(STALL * 3)
        assert await handle.status() == FlowStatus.FAILED
    assert str(caught.value).startswith(f"Flow '{handle.id}' cannot run: its recorded data or results no longer")
    assert "region" in str(caught.value)
    assert consumer.calls == []
    assert not [r for r in caplog.records if "Internal error" in r.getMessage()]
    ended = [r for r in caplog.records if "ended failed" in r.getMessage()]
    assert len(ended) == 1
