"""What lands in the queues is not trusted: malformed jobs, jobs naming another workflow's flow, crafted ids.

Jobs are written straight into Redis, as anyone who can write to it could; a real ``plait worker`` claims them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import pytest
import redis

from plait.core import FlowStatus
from plait.providers.arq import ArqSettings, ArqWorkflowProvider
from plait.providers.arq._keys import Job, Keys
from plait.providers.arq._store import Change, Store
from tests.integration.apps.orders import ORDER, Order
from tests.integration.conftest import Workers
from tests.integration.test_arq_provider import FORK, LINE, Data, Recorder

KEYS = Keys("workflow")
STEPS_QUEUE = "workflow.it-order.steps"
FLOW_QUEUE = "workflow.it-order"


@asynccontextmanager
async def started(provider: ArqWorkflowProvider) -> AsyncIterator[ArqWorkflowProvider]:
    await provider.start()
    try:
        yield provider
    finally:
        await provider.stop()


def put(client: redis.Redis, queue: str, job_id: str, payload: bytes) -> None:
    """Queues a job as arq would, due now."""
    client.set(f"arq:job:{job_id}", payload)
    client.zadd(queue, {job_id: 0})


def arq_job(function: str, args: list[object], **extra: object) -> bytes:
    job: dict[str, object] = {"f": function, "a": args, "k": {}, "t": 1, "et": int(time.time() * 1000)}
    job.update(extra)
    return json.dumps(job).encode()


def without(payload: bytes, field: str) -> bytes:
    job = json.loads(payload)
    del job[field]
    return json.dumps(job).encode()


async def test_malformed_jobs_are_dropped_with_a_line_each_and_the_rest_of_the_claim_runs(
    redis_url: str, redis_client: redis.Redis, workers: Workers
) -> None:
    emitter = ArqWorkflowProvider(redis_url)
    emitter.register(ORDER)
    async with started(emitter):
        # Good flows and garbage wait in the same queues, so that one claim takes both.
        good = [await emitter.execute(ORDER, Order(order_id=f"o-{i}")) for i in range(3)]
        flow_id = good[0].id
        nested = b'{"f":"plait.step","a":' + b"[" * 2000 + b"]" * 2000 + b"}"
        bad = {
            "bad:too-few-args": arq_job("plait.step", [flow_id]),
            "bad:unknown-function": arq_job("os.system", ["echo pwned", "step", "x", 1]),
            "bad:no-enqueue-time": without(arq_job("plait.step", [flow_id, "step", "validate", 1, {}]), "et"),
            "bad:not-json": b"{not json",
            "bad:too-deep-for-cjson": nested,
            "bad:id-for-another-job": arq_job("plait.step", [flow_id, "step", "validate", 1, {}]),
            "bad:forged\nERROR forged line": arq_job("plait.step", [flow_id]),
        }
        for job_id, payload in bad.items():
            put(redis_client, STEPS_QUEUE, job_id, payload)
        # A long stall interval: a good job left leased to nobody would take 30 s to run.
        worker = workers.start(stall=30.0)
        await workers.ready(worker)
        results = await asyncio.gather(*(h.result(timeout=10) for h in good))
        assert [r.order_id for r in results] == ["o-0", "o-1", "o-2"]
        # The claim loop is still alive: a flow started now runs too.
        after = await emitter.execute(ORDER, Order(order_id="after"))
        assert (await after.result(timeout=10)).order_id == "after"

    log = workers.log(worker)
    reasons = {
        "bad:too-few-args": "takes 5 arguments",
        "bad:unknown-function": "unknown function 'os.system'",
        "bad:no-enqueue-time": "no enqueue time",
        "bad:not-json": "not JSON",
        "bad:too-deep-for-cjson": "not JSON",
        "bad:id-for-another-job": "its id does not match its content",
        "bad:forged\\nERROR forged line": "takes 5 arguments",
    }
    for job_id, reason in reasons.items():
        lines = [line for line in log.splitlines() if f"Dropped job '{job_id}'" in line]
        assert len(lines) == 1, (job_id, log)
        assert reason in lines[0], lines[0]
    assert not any(line.startswith("ERROR forged line") for line in log.splitlines())
    assert "Traceback" not in log
    # Dropped for good: nothing of them is left, nothing is leased.
    for job_id in bad:
        assert not redis_client.exists(f"arq:job:{job_id}")
    assert (
        redis_client.zcard(STEPS_QUEUE) == redis_client.zcard(FLOW_QUEUE) == redis_client.zcard("workflow:leases") == 0
    )


async def test_a_job_naming_a_flow_of_another_workflow_is_dropped_not_run(
    redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    line_consumer, fork_consumer = Recorder(("a", "b")), Recorder(("b", "c"))
    emitter = ArqWorkflowProvider(redis_url)
    emitter.register(FORK)
    line_worker = ArqWorkflowProvider(redis_url, provider_id="line-worker")
    line_worker.register(LINE, line_consumer)
    fork_worker = ArqWorkflowProvider(redis_url, provider_id="fork-worker")
    fork_worker.register(FORK, fork_consumer)
    async with started(emitter):
        handle = await emitter.execute(FORK, Data(key="k"))
        # The start job of a FORK flow, also queued on LINE's queue (the same job id and payload).
        start = Job("start", LINE.name, handle.id)
        job_id = KEYS.job_id(start)
        redis_client.zadd(KEYS.queue(LINE.name), {job_id: 0})
        caplog.set_level(logging.WARNING, "plait.providers.arq")
        async with started(line_worker):
            deadline = time.monotonic() + 5
            while redis_client.zcard(KEYS.queue(LINE.name)):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
        assert line_consumer.calls == []
        assert await handle.status() == FlowStatus.PENDING
        dropped = [r.getMessage() for r in caplog.records if "Dropped job" in r.getMessage()]
        assert dropped == [
            f"Dropped job '{job_id}' from the queues of 'it-line': it names flow '{handle.id}' of workflow "
            "'it-fork', not of 'it-line'"
        ]
        # The flow's own start job is intact: its workflow's worker runs it.
        async with started(fork_worker):
            assert (await handle.result(timeout=5)).key == "k"
        assert {c.provider for c in fork_consumer.calls} == {"fork-worker"}


# -- lists of ids --


async def test_a_cancelled_id_holding_a_newline_names_one_job_on_the_channel_and_in_redis(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # Job ids are made of flow ids. execute() refuses a flow id with a newline, but the transport must not
    # depend on it: here a commit cancels one id crafted to also read, line by line, as a running step's job.
    consumer = Recorder(("a", "b"))
    worker = ArqWorkflowProvider(redis_url)
    worker.register(LINE, consumer)
    emitter = ArqWorkflowProvider(redis_url)
    emitter.register(FORK)
    pubsub = redis_client.pubsub()  # type: ignore[no-untyped-call]  # unannotated in redis-py
    pubsub.subscribe("workflow:cancel")
    async with started(worker), started(emitter):
        victim = await worker.execute(LINE, Data(key="victim", sleep=1.0))
        victim_job = KEYS.job_id(Job("step", LINE.name, victim.id, "a", 1))
        deadline = time.monotonic() + 5
        while not consumer.calls:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        other = await emitter.execute(FORK, Data(key="other"))  # a flow to commit on; nobody runs it
        version, state = cast(list[bytes | None], redis_client.hmget(KEYS.flow(other.id), ["v", "s"]))
        assert version is not None and state is not None
        crafted = f"x\n{victim_job}\n"
        redis = ArqSettings.from_url(redis_url).client()
        try:
            store = Store(redis, KEYS, retention=60, lease=5.0, owner="someone")
            message = json.dumps({"jobs": [crafted], "fan_outs": []}).encode()
            conflict = await store.commit(
                other.id, FORK.name, version.decode(), state, "pending", change=Change(), cancelled=message
            )
        finally:
            await redis.aclose()
        assert conflict is None
        assert (await victim.result(timeout=5)).steps == ["a", "b"]
        assert redis_client.exists(f"arq:job:{victim_job}") == 0  # finished normally, by its own commit
    assert [(c.step, c.outcome) for c in consumer.of("step")] == [("a", "ok"), ("b", "ok")]
    messages: list[bytes] = []
    deadline = time.monotonic() + 2
    while not messages and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == "message":
            messages.append(message["data"])
    pubsub.close()
    assert [json.loads(m) for m in messages] == [{"jobs": [crafted], "fan_outs": []}]


async def test_a_cancel_message_that_is_not_a_json_object_cancels_nothing(
    redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = Recorder(("a", "b"))
    worker = ArqWorkflowProvider(redis_url)
    worker.register(LINE, consumer)
    async with started(worker):
        handle = await worker.execute(LINE, Data(key="k", sleep=0.5))
        running = KEYS.job_id(Job("step", LINE.name, handle.id, "a", 1))
        deadline = time.monotonic() + 5
        while not consumer.calls:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        caplog.set_level(logging.WARNING, "plait.providers.arq")
        redis_client.publish("workflow:cancel", f"x\n{running}")  # one id per line, as the channel once carried
        assert (await handle.result(timeout=5)).steps == ["a", "b"]
    assert [c.outcome for c in consumer.of("step")] == ["ok", "ok"]
    assert any("not a JSON object of jobs and fan-outs" in r.getMessage() for r in caplog.records)
