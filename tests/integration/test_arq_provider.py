"""The arq provider beyond the conformance suite: distribution, crash recovery, arq's job format, quietness.

Several providers in this process stand in for several processes: they share nothing but the Redis.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import pytest
import redis
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job as ArqJob
from pydantic import BaseModel

import plait.providers.arq
from plait.core import (
    ConsumerOptions,
    FlowEvent,
    FlowStatus,
    IWorkflowConsumer,
    NonRetryableError,
    StepContext,
    StepHandler,
    Workflow,
    WorkflowCancelledError,
    WorkflowContext,
    WorkflowNotRegisteredError,
    WorkflowProvider,
    WorkflowStepError,
    WorkflowTimeoutError,
)
from plait.core.engine import Cancel, Engine, RunOnError, event_fields
from plait.providers.arq import ArqSettings, ArqWorkflowProvider
from plait.providers.arq._keys import Job, Keys, decode_state, dumps, loads
from plait.providers.arq._store import Claimed, Rejected, Store, script
from tests.garbage import plait_cycles


class Data(BaseModel):
    key: str
    sleep: float = 0.0


class Out(BaseModel):
    step: str
    seen: list[str]


class Result(BaseModel):
    key: str
    steps: list[str]


LINE = Workflow.define(name="it-line", data=Data, result=Result).steps(
    lambda s: s.sequential(s.step("a", Out), s.step("b", Out))
)
FORK = Workflow.define(name="it-fork", data=Data, result=Result).steps(
    lambda s: s.parallel(s.step("b", Out), s.step("c", Out))
)


@dataclass
class Call:
    kind: str
    step: str | None
    provider: str
    outcome: str = "running"


class Recorder(IWorkflowConsumer[Data, Result]):
    """Records its calls; steps sleep ``data.sleep`` seconds."""

    def __init__(self, names: tuple[str, ...], calls: list[Call] | None = None) -> None:
        self.calls: list[Call] = [] if calls is None else calls
        self.steps = {name: StepHandler(execute=self.run) for name in names}

    async def run(self, ctx: StepContext[Data]) -> Out:
        call = Call("step", ctx.step_name, ctx.provider_id)
        self.calls.append(call)
        try:
            await asyncio.sleep(ctx.data.sleep)
        except asyncio.CancelledError:
            call.outcome = "cancelled"
            raise
        call.outcome = "ok"
        return Out(step=ctx.step_name, seen=sorted(ctx.results))

    async def on_complete(self, ctx: WorkflowContext[Data]) -> Result:
        self.calls.append(Call("complete", None, ctx.provider_id, "ok"))
        return Result(key=ctx.data.key, steps=list(ctx.results))

    async def on_error(self, ctx: WorkflowContext[Data], error: Exception) -> None:
        self.calls.append(Call("on_error", None, ctx.provider_id, type(error).__name__))

    def of(self, kind: str) -> list[Call]:
        return [c for c in self.calls if c.kind == kind]


@asynccontextmanager
async def started(provider: ArqWorkflowProvider) -> AsyncIterator[ArqWorkflowProvider]:
    await provider.start()
    try:
        yield provider
    finally:
        await provider.stop()


@asynccontextmanager
async def arq_pool(url: str) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(url))
    try:
        yield pool
    finally:
        await pool.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- the package's surface --


def test_the_package_exports_the_provider_and_its_settings_only() -> None:
    assert sorted(plait.providers.arq.__all__) == ["ArqSettings", "ArqWorkflowProvider"]
    assert plait.providers.arq.__doc__
    for name in plait.providers.arq.__all__:
        assert getattr(plait.providers.arq, name).__doc__


def test_the_lua_scripts_are_package_data_reading_named_keys_and_arguments() -> None:
    folder = resources.files("plait.providers.arq").joinpath("lua")
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".lua"))
    assert names == [
        "claim.lua",
        "commit.lua",
        "create.lua",
        "fail_unreadable.lua",
        "heartbeat.lua",
        "reconcile.lua",
        "release.lua",
        "timers.lua",
        "trim.lua",
    ]
    named = re.compile(r"\s*local \w+ = (tonumber\()?(KEYS|ARGV)\[[\w +-]+\]\)?$")
    for name in names:
        source = folder.joinpath(name).read_text()
        assert script(name.removesuffix(".lua")) == source
        for line in source.splitlines():
            code = line.split("--")[0].rstrip()
            if re.search(r"(KEYS|ARGV)\[", code):
                assert named.match(code), f"{name}: read KEYS and ARGV into named locals: {line!r}"
        # Key names are Python's: a script gets them, or prefixes of them, and never spells one out.
        for fragment in (":wake", ".steps", ":flow:", ":leases", ":lease", "arq:job:", "'{'", "'}'"):
            assert fragment not in source, f"{name} spells out part of a key name: {fragment!r}"


def test_the_provider_is_a_workflow_provider() -> None:
    assert isinstance(ArqWorkflowProvider("redis://127.0.0.1:1"), WorkflowProvider)


def test_settings_come_from_a_url() -> None:
    settings = ArqSettings.from_url("rediss://user:p%40ss@cache.example:6380/2")
    assert (settings.host, settings.port, settings.database) == ("cache.example", 6380, 2)
    assert (settings.username, settings.password, settings.ssl) == ("user", "p@ss", True)
    assert "p@ss" not in repr(settings)
    assert ArqSettings.from_url("redis://localhost?db=3").database == 3
    assert ArqSettings.from_url("unix:///run/redis.sock").unix_socket_path == "/run/redis.sock"
    with pytest.raises(ValueError, match="Redis URL"):
        ArqSettings.from_url("http://localhost")
    redis_settings = settings.redis_settings()
    assert (redis_settings.host, redis_settings.ssl, redis_settings.password) == ("cache.example", True, "p@ss")


def test_password_and_tls_options_override_the_url() -> None:
    provider = ArqWorkflowProvider("redis://h:1/0", password="secret", ssl=True, ssl_ca_certs="/ca.pem")
    assert (provider.settings.password, provider.settings.ssl, provider.settings.ssl_ca_certs) == (
        "secret",
        True,
        "/ca.pem",
    )


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("stall_interval", 0, "stall_interval must be a number of seconds greater than 0; got 0"),
        ("stall_interval", None, "stall_interval must be a number of seconds greater than 0; got None"),
        ("retention", 0, "retention must be a number of seconds greater than 0; got 0"),
        ("retention", -1.0, "retention must be a number of seconds greater than 0; got -1.0"),
        ("retention", float("nan"), "retention must be a number of seconds greater than 0; got nan"),
        ("stop_grace", -0.5, "stop_grace must be a number of seconds 0 or more; got -0.5"),
        ("stop_grace", "10", "stop_grace must be a number of seconds 0 or more; got '10'"),
    ],
)
def test_durations_that_make_no_sense_are_refused(option: str, value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        ArqWorkflowProvider("redis://h:1/0", **{option: value})  # type: ignore[arg-type]
    assert str(caught.value) == message
    ArqWorkflowProvider("redis://h:1/0", stop_grace=0)  # no grace at all is a choice


# -- distribution --


async def test_a_process_without_consumers_starts_flows_that_a_worker_runs(redis_url: str) -> None:
    consumer = Recorder(("a", "b"))
    emitter = ArqWorkflowProvider(redis_url, provider_id="emitter")
    emitter.register(LINE)
    worker = ArqWorkflowProvider(redis_url, provider_id="worker")
    worker.register(LINE, consumer)
    async with started(emitter):
        handle = await emitter.execute(LINE, Data(key="k"))
        await asyncio.sleep(0.1)
        assert await handle.status() == FlowStatus.PENDING  # nobody runs it yet
        async with started(worker):
            result = await handle.result(timeout=5)
        attached = await emitter.get_handle(handle.id)
        assert await attached.result(timeout=1) == result == Result(key="k", steps=["a", "b"])
        state = await emitter.get_state(handle.id)
        assert state.results["b"] == {"step": "b", "seen": ["a"]}
    assert {c.provider for c in consumer.calls} == {"worker"}


async def test_a_consumer_registered_after_start_runs(redis_url: str) -> None:
    consumer = Recorder(("a", "b"))
    async with started(ArqWorkflowProvider(redis_url)) as provider:
        provider.register(LINE, consumer)
        handle = await provider.execute(LINE, Data(key="k"))
        assert (await handle.result(timeout=5)).steps == ["a", "b"]


async def test_a_worker_leaves_no_reference_cycles_behind_a_flow(redis_url: str) -> None:
    # A flow whose objects referred to each other stayed in memory until a full pass of the garbage collector,
    # which then walked all of them: work taken from the steps.
    provider = ArqWorkflowProvider(redis_url)
    provider.register(FORK, Recorder(("b", "c")))
    async with started(provider):
        await (await provider.execute(FORK, Data(key="warm"))).result(timeout=5)
        with plait_cycles() as cycles:
            for n in range(3):
                await (await provider.execute(FORK, Data(key=str(n)))).result(timeout=5)
    assert cycles == []


async def test_an_emitter_executes_a_definition_it_never_registered(redis_url: str) -> None:
    consumer = Recorder(("a", "b"))
    worker = ArqWorkflowProvider(redis_url)
    worker.register(LINE, consumer)
    async with started(ArqWorkflowProvider(redis_url)) as emitter, started(worker):
        handle = await emitter.execute(LINE, Data(key="k"))
        assert (await handle.result(timeout=5)).steps == ["a", "b"]
        again = await (await emitter.get_handle(handle.id)).result(timeout=5)
        assert isinstance(again, Result)  # typed by the definition it executed
        assert again.steps == ["a", "b"]
        assert (await emitter.describe(handle.id)).steps[0].name == "a"


async def test_an_emitter_refuses_another_definition_under_a_name_it_knows(redis_url: str) -> None:
    other = Workflow.define(name=LINE.name, data=Data, result=Result).steps(lambda s: s.sequential(s.step("z", Out)))
    async with started(ArqWorkflowProvider(redis_url)) as emitter:
        await emitter.execute(LINE, Data(key="k"))
        with pytest.raises(WorkflowNotRegisteredError, match="another definition of that name"):
            await emitter.execute(other, Data(key="k"))


async def test_jobs_are_arq_jobs_in_json(redis_url: str, redis_client: redis.Redis) -> None:
    emitter = ArqWorkflowProvider(redis_url)
    emitter.register(LINE)
    async with started(emitter), arq_pool(redis_url) as pool:
        handle = await emitter.execute(LINE, Data(key="k"))
        job_id = Keys("workflow").job_id(Job("start", LINE.name, handle.id))
        assert cast(list[bytes], redis_client.zrange("workflow.it-line", 0, -1)) == [job_id.encode()]
        payload = cast(bytes, redis_client.get(f"arq:job:{job_id}"))
        assert json.loads(payload)["f"] == "plait.start"  # JSON, never pickle
        info = await ArqJob(job_id, pool, _queue_name="workflow.it-line", _deserializer=loads).info()
        assert info is not None
        assert (info.function, list(info.args)) == ("plait.start", [handle.id, "start", "", 0, {}])


async def test_flow_keys_share_a_hash_tag_and_expire_after_the_retention(
    redis_url: str, redis_client: redis.Redis
) -> None:
    provider = ArqWorkflowProvider(redis_url, retention=3600)
    provider.register(LINE, Recorder(("a", "b")))
    async with started(provider):
        handle = await provider.execute(LINE, Data(key="k"))
        await handle.result(timeout=5)
    key = f"workflow:flow:{{{handle.id}}}"
    assert 3590_000 < cast(int, redis_client.pttl(key)) <= 3600_000
    assert Keys("workflow").job_id(Job("step", LINE.name, handle.id, "a", 1)).startswith(f"workflow:{{{handle.id}}}")


# -- crashes and duplicates --


def line_worker(url: str, consumer: Recorder) -> ArqWorkflowProvider:
    """A provider that runs LINE flows with ``consumer`` and a short stall interval (0.5 s)."""
    worker = ArqWorkflowProvider(url, stall_interval=0.5)
    worker.register(LINE, consumer)
    return worker


def line_emitter_and_worker(url: str, consumer: Recorder) -> tuple[ArqWorkflowProvider, ArqWorkflowProvider]:
    """A provider that only starts LINE flows, and :func:`line_worker`."""
    emitter = ArqWorkflowProvider(url)
    emitter.register(LINE)
    return emitter, line_worker(url, consumer)


async def test_a_job_whose_worker_died_runs_again_after_the_stall_interval(redis_url: str) -> None:
    consumer = Recorder(("a", "b"))
    emitter, worker = line_emitter_and_worker(redis_url, consumer)
    async with started(emitter), arq_pool(redis_url) as pool:
        handle = await emitter.execute(LINE, Data(key="k"))
        # A worker claims the start job and dies at once: no heartbeat, no commit.
        dead = Store(pool, Keys("workflow"), retention=3600, lease=0.5, owner="dead")
        claimed, _, _ = await dead.claim(LINE.name, 10)
        assert [c.job.kind for c in claimed] == ["start"]
        began = time.monotonic()
        async with started(worker):
            result = await handle.result(timeout=5)
        assert time.monotonic() - began < 0.5 + 0.25 + 1.0
    assert result.steps == ["a", "b"]
    assert [c.step for c in consumer.of("step")] == ["a", "b"]


async def test_a_stale_copy_of_a_finished_job_changes_nothing(redis_url: str, redis_client: redis.Redis) -> None:
    consumer = Recorder(("a", "b"))
    provider = ArqWorkflowProvider(redis_url)
    provider.register(LINE, consumer)
    async with started(provider):
        handle = await provider.execute(LINE, Data(key="k"))
        await handle.result(timeout=5)
        version = redis_client.hget(f"workflow:flow:{{{handle.id}}}", "v")
        # Deliver step a's job a second time, as an at-least-once transport may.
        job = Job("step", LINE.name, handle.id, "a", 1)
        job_id = Keys("workflow").job_id(job)
        redis_client.set(f"arq:job:{job_id}", job.payload(0))
        redis_client.zadd("workflow.it-line.steps", {job_id: 0})
        redis_client.lpush("workflow.it-line:wake", 1)
        await eventually(lambda: asyncio.sleep(0, result=not redis_client.exists(f"arq:job:{job_id}")))
        assert redis_client.hget(f"workflow:flow:{{{handle.id}}}", "v") == version
        assert await handle.status() == FlowStatus.COMPLETED
    assert [c.step for c in consumer.of("step")] == ["a", "b"]
    assert len(consumer.of("complete")) == 1


async def test_stop_hands_an_unfinished_step_to_another_worker(redis_url: str) -> None:
    calls: list[Call] = []
    first = ArqWorkflowProvider(redis_url, provider_id="first", stop_grace=0.1)
    first.register(LINE, Recorder(("a", "b"), calls))
    second = ArqWorkflowProvider(redis_url, provider_id="second")
    second.register(LINE, Recorder(("a", "b"), calls))
    async with started(first):
        handle = await first.execute(LINE, Data(key="k", sleep=0.5))
        await eventually(lambda: asyncio.sleep(0, result=bool(calls)))
    async with started(second):
        result = await second.get_handle(handle.id)
        assert await result.result(timeout=5) == Result(key="k", steps=["a", "b"])
    assert [(c.step, c.provider, c.outcome) for c in calls if c.kind == "step"] == [
        ("a", "first", "cancelled"),
        ("a", "second", "ok"),
        ("b", "second", "ok"),
    ]


# -- timeouts and cancellation across providers --


async def test_the_reconciler_times_out_a_flow_whose_starter_died(redis_url: str) -> None:
    consumer = Recorder(("a", "b"))
    emitter = ArqWorkflowProvider(redis_url)
    emitter.register(LINE)
    worker = ArqWorkflowProvider(redis_url, stall_interval=2.0)
    worker.register(LINE, consumer)
    async with started(emitter), arq_pool(redis_url) as pool:
        handle = await emitter.execute(LINE, Data(key="k"), timeout=0.2)
        await Store(pool, Keys("workflow"), retention=3600, lease=2.0, owner="dead").claim(LINE.name, 10)  # and dies
        async with started(worker):
            with pytest.raises(WorkflowTimeoutError):
                await handle.result(timeout=3)
    assert [(c.kind, c.outcome) for c in consumer.calls] == [("on_error", "WorkflowTimeoutError")]


async def test_a_timeout_cancels_a_step_running_in_another_worker(redis_url: str) -> None:
    calls: list[Call] = []
    options = ConsumerOptions(concurrency=1)  # the starter keeps its only slot: the sibling goes elsewhere
    one = ArqWorkflowProvider(redis_url, provider_id="one")
    one.register(FORK, Recorder(("b", "c"), calls), options)
    two = ArqWorkflowProvider(redis_url, provider_id="two")
    two.register(FORK, Recorder(("b", "c"), calls), options)
    async with started(one), started(two):
        handle = await one.execute(FORK, Data(key="k", sleep=5.0), timeout=0.5)
        began = time.monotonic()
        with pytest.raises(WorkflowTimeoutError):
            await handle.result(timeout=3)
        assert time.monotonic() - began < 1.5
        await eventually(lambda: asyncio.sleep(0, result=all(c.outcome != "running" for c in calls)))
    steps = [c for c in calls if c.kind == "step"]
    assert {c.provider for c in steps} == {"one", "two"}
    assert {c.outcome for c in steps} == {"cancelled"}


# -- new flows handed to idle workers --


def start_job_id(flow_id: str) -> str:
    return Keys("workflow").job_id(Job("start", LINE.name, flow_id))


@asynccontextmanager
async def line_emitter_and_store(
    url: str, owner: str, lease: float = 2.0
) -> AsyncIterator[tuple[ArqWorkflowProvider, Store]]:
    """A started provider that only starts LINE flows, and a store standing in for worker ``owner``."""
    emitter = ArqWorkflowProvider(url)
    emitter.register(LINE)
    async with started(emitter), arq_pool(url) as pool:
        yield emitter, Store(pool, Keys("workflow"), retention=3600, lease=lease, owner=owner)


async def test_a_new_flow_is_handed_with_its_state_to_a_worker_waiting_idle(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with line_emitter_and_store(redis_url, "idle") as (emitter, idle):
        assert await idle.claim(LINE.name, 2, idle_for=5.0) == ([], [], None)  # nothing due: two slots wait
        began = time.time()
        first, second, third = [await emitter.execute(LINE, Data(key=key)) for key in ("1", "2", "3")]
        # The first two went straight to the idle worker, leased to it; the third found no slot and is queued.
        assert redis_client.zrange("workflow.it-line", 0, -1) == [start_job_id(third.id).encode()]
        assert redis_client.zcard("workflow.it-line:idle") == 0
        handed = await idle.wait_for_work(LINE.name, 1.0)
        assert isinstance(handed, Claimed)
        assert (handed.job.kind, handed.job.flow_id, handed.job_id) == ("start", first.id, start_job_id(first.id))
        assert (handed.state, handed.version) == (redis_client.hget(f"workflow:flow:{{{first.id}}}", "s"), b"1")
        # The lease ends 2 s after the flow was stored, in whole milliseconds (floored).
        assert handed.lease_end is not None and began + 2.0 - 0.001 <= handed.lease_end <= time.time() + 2.0
        record = cast(bytes, redis_client.hget("workflow:lease-info", handed.job_id))
        # The record create.lua writes for the worker it chose is the one the Python side writes for its own leases.
        assert json.loads(record) == json.loads(Keys("workflow").lease_record("workflow.it-line", LINE.name, "idle"))
        # A claim takes what is left in the inbox first (leased already), then the queue.
        claimed, _, _ = await idle.claim(LINE.name, 5, idle_for=5.0)
        assert [(c.job.flow_id, c.lease_end is None) for c in claimed] == [(second.id, False), (third.id, True)]
        # Three slots were left: the claim registered them.
        assert redis_client.zrange("workflow.it-line:idle", 0, -1, withscores=True) == [(b"2000:idle", 3.0)]
        # Stopping withdraws the registration and returns what was handed meanwhile.
        fourth = await emitter.execute(LINE, Data(key="4"))
        [left] = await idle.leave(LINE.name)
        assert isinstance(left, Claimed) and left.job.flow_id == fourth.id
        assert redis_client.zcard("workflow.it-line:idle") == redis_client.zcard("workflow.it-line:idle-until") == 0
        assert not redis_client.exists("workflow.it-line:inbox:idle")
        fifth = await emitter.execute(LINE, Data(key="5"))
        assert redis_client.zrange("workflow.it-line", 0, -1) == [start_job_id(fifth.id).encode()]


async def test_a_registration_that_ran_out_is_never_handed_a_flow(redis_url: str, redis_client: redis.Redis) -> None:
    async with line_emitter_and_store(redis_url, "gone") as (emitter, idle):
        await idle.claim(LINE.name, 2, idle_for=0.05)
        await asyncio.sleep(0.1)
        handle = await emitter.execute(LINE, Data(key="k"))
        assert redis_client.zrange("workflow.it-line", 0, -1) == [start_job_id(handle.id).encode()]
        assert redis_client.lrange("workflow.it-line:wake", 0, -1) == [b"1"]
        assert redis_client.zcard("workflow.it-line:idle") == redis_client.zcard("workflow.it-line:idle-until") == 0


async def test_a_new_flow_waits_its_turn_behind_due_jobs_even_with_a_worker_idle(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with line_emitter_and_store(redis_url, "idle") as (emitter, idle):
        await idle.claim(LINE.name, 10, idle_for=5.0)
        # A job fell due after the claim looked (a clock a little behind, say): steps go first, then flows in order.
        for queue in ("workflow.it-line.steps", "workflow.it-line"):
            redis_client.zadd(queue, {"ahead": 0})
            handle = await emitter.execute(LINE, Data(key=queue))
            assert redis_client.zscore("workflow.it-line", start_job_id(handle.id)) is not None  # queued, not handed
            redis_client.delete("workflow.it-line.steps", "workflow.it-line")
        handle = await emitter.execute(LINE, Data(key="now"))
        assert redis_client.zcard("workflow.it-line") == 0
        handed = await idle.wait_for_work(LINE.name, 1.0)
        assert isinstance(handed, Claimed) and handed.job.flow_id == handle.id


async def test_leaving_ends_a_wait_still_blocked_in_redis(redis_url: str, redis_client: redis.Redis) -> None:
    async with arq_pool(redis_url) as pool:
        idle = Store(pool, Keys("workflow"), retention=3600, lease=2.0, owner="idle")
        await idle.claim(LINE.name, 1, idle_for=5.0)

        def blocked() -> int:
            return int(cast(dict[str, Any], redis_client.info("clients"))["blocked_clients"])

        waiting = asyncio.create_task(idle.wait_for_work(LINE.name, 5.0))
        await eventually(lambda: asyncio.sleep(0, result=blocked() == 1))
        waiting.cancel()  # as a stopping worker cancels its loop: the command itself still blocks in Redis
        assert await idle.leave(LINE.name) == []
        assert blocked() == 0
        redis_client.lpush("workflow.it-line:wake", "1")
        assert redis_client.llen("workflow.it-line:wake") == 1  # nobody took it


async def test_a_garbage_inbox_entry_is_rejected_not_run(redis_url: str, redis_client: redis.Redis) -> None:
    async with arq_pool(redis_url) as pool:
        idle = Store(pool, Keys("workflow"), retention=3600, lease=2.0, owner="idle")
        redis_client.rpush("workflow.it-line:inbox:idle", b"no newline here", b"1\nworkflow:{f}:step:a:1\n{}\n{}")
        first, second = [await idle.wait_for_work(LINE.name, 1.0) for _ in range(2)]
        assert isinstance(first, Rejected) and (first.reason, first.leased) == ("not an inbox entry", False)
        assert isinstance(second, Rejected) and second.leased
        assert second.job_id == b"workflow:{f}:step:a:1"


async def test_a_new_flow_handed_to_a_worker_that_died_runs_elsewhere(
    redis_url: str, redis_client: redis.Redis
) -> None:
    consumer = Recorder(("a", "b"))
    worker = line_worker(redis_url, consumer)
    async with line_emitter_and_store(redis_url, "dead", lease=0.5) as (emitter, dead):
        # A worker registers as idle and dies: the flow is leased to it, and nobody renews the lease.
        await dead.claim(LINE.name, 10, idle_for=5)
        handle = await emitter.execute(LINE, Data(key="k"))
        record = cast(bytes, redis_client.hget("workflow:lease-info", start_job_id(handle.id)))
        assert json.loads(record)[2] == "dead"
        began = time.monotonic()
        async with started(worker):
            result = await handle.result(timeout=5)
        assert time.monotonic() - began < 0.5 + 0.25 + 1.0
    assert result.steps == ["a", "b"]
    assert [c.step for c in consumer.of("step")] == ["a", "b"]


async def test_a_start_job_taken_from_the_inbox_after_its_lease_ran_out_is_left_to_the_reconciler(
    redis_url: str, redis_client: redis.Redis
) -> None:
    consumer = Recorder(("a", "b"))
    worker = line_worker(redis_url, consumer)
    async with line_emitter_and_store(redis_url, "slow", lease=0.05) as (emitter, slow):
        await slow.claim(LINE.name, 1, idle_for=5)
        handle = await emitter.execute(LINE, Data(key="k"))
        await asyncio.sleep(0.1)
        late = await slow.wait_for_work(LINE.name, 1.0)  # an event loop held up past the lease, say
        assert isinstance(late, Claimed)
        async with started(worker):
            internal = worker._worker
            assert internal is not None
            assert await internal._take(internal.runtimes[LINE.name], [late], 0.0) == []
            assert late.job_id not in internal.leases.owned
            assert (await handle.result(timeout=5)).steps == ["a", "b"]  # handed back by the reconciler
    assert len(consumer.of("step")) == 2


async def test_a_stopping_worker_hands_back_the_new_flows_it_was_handed(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = Recorder(("a", "b"))
    emitter = ArqWorkflowProvider(redis_url)
    emitter.register(LINE)
    first = ArqWorkflowProvider(redis_url, provider_id="first")
    first.register(LINE, Recorder(("a", "b")))
    second = ArqWorkflowProvider(redis_url, provider_id="second")
    second.register(LINE, consumer)

    async def deaf(self: Store, workflow: str, timeout: float) -> None:
        await asyncio.sleep(timeout)  # registered as idle, but never looks at its inbox

    async with started(emitter):
        with monkeypatch.context() as patch:
            patch.setattr(Store, "wait_for_work", deaf)
            async with started(first):
                await eventually(lambda: asyncio.sleep(0, result=redis_client.zcard("workflow.it-line:idle") == 1))
                handle = await emitter.execute(LINE, Data(key="k"))
                assert redis_client.zcard("workflow.it-line") == 0  # handed, not queued
        # first stopped: the start job is back in the queue, no longer leased, and first is no longer registered.
        assert redis_client.zrange("workflow.it-line", 0, -1) == [start_job_id(handle.id).encode()]
        assert not redis_client.hexists("workflow:lease-info", start_job_id(handle.id))
        assert redis_client.zcard("workflow.it-line:idle") == 0
        async with started(second):
            assert (await handle.result(timeout=5)).steps == ["a", "b"]
    assert len(consumer.of("step")) == 2


# -- the closing handler rides with the last commit --


def flow_version(redis_client: redis.Redis, flow_id: str) -> int:
    """How many times the flow's state was written (its version)."""
    return int(cast(bytes, redis_client.hget(f"workflow:flow:{{{flow_id}}}", "v")))


class Closing(Recorder):
    """A :class:`Recorder` whose ``on_complete`` reports progress, then runs ``during`` (if set), then, with
    ``wait``, waits for ``release``. Step "b" raises when the flow's key is "fail"."""

    def __init__(self, *, wait: bool = False, during: Callable[[str], None] | None = None) -> None:
        super().__init__(("a", "b"))
        self.wait = wait
        self.during = during
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = False

    async def run(self, ctx: StepContext[Data]) -> Out:
        if ctx.step_name == "b" and ctx.data.key == "fail":
            raise NonRetryableError("b fails")
        return await super().run(ctx)

    async def on_complete(self, ctx: WorkflowContext[Data]) -> Result:
        await ctx.progress(0.5, "closing")
        if self.during is not None:
            self.during(ctx.flow_id)
        if self.wait:
            self.waiting.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
            await ctx.progress(1.0, "closed")
        return await super().on_complete(ctx)


@pytest.mark.parametrize(
    ("wait", "key", "versions"),
    [
        # created 1, started 2, a 3, then b with on_complete (or on_error) and the end: 4
        (False, "k", 4),
        (False, "fail", 4),
        # on_complete waits: b alone 4, then the progress it reported before it waited 5, and after 6, its end 7
        (True, "k", 7),
    ],
    ids=["on_complete returns at once", "on_error returns at once", "on_complete waits"],
)
async def test_a_closing_handler_shares_the_last_commit_only_when_it_returns_without_waiting(
    redis_url: str, redis_client: redis.Redis, wait: bool, key: str, versions: int
) -> None:
    consumer = Closing(wait=wait)
    worker = line_worker(redis_url, consumer)
    async with started(worker):
        handle = await worker.execute(LINE, Data(key=key))
        if wait:
            await asyncio.wait_for(consumer.waiting.wait(), 5)
            # What came before it is committed while it waits, as if it had not started.
            await eventually(lambda: asyncio.sleep(0, result=flow_version(redis_client, handle.id) >= 5))
            state = await worker.get_status(handle.id)
            assert state == FlowStatus.RUNNING
            consumer.release.set()
        if key == "fail":
            with pytest.raises(WorkflowStepError):
                await handle.result(timeout=5)
        else:
            assert await handle.result(timeout=5) == Result(key=key, steps=["a", "b"])
        events = [event async for event in worker.subscribe(handle.id)]
    assert flow_version(redis_client, handle.id) == versions
    kinds = [event.type for event in events]
    if key == "fail":
        assert kinds[-2:] == ["step_failed", "flow_failed"]
        assert [c.kind for c in consumer.calls] == ["step", "on_error"]
    else:
        progress = ["progress", "progress"] if wait else ["progress"]
        assert kinds[-2 - len(progress) :] == ["step_completed", *progress, "flow_completed"]
        assert [c.kind for c in consumer.calls] == ["step", "step", "complete"]


async def test_a_closing_handler_run_before_a_lost_race_counts_once_the_flow_still_asks_for_it(
    redis_url: str, redis_client: redis.Redis
) -> None:
    def another_process_commits(flow_id: str) -> None:  # the same state, one version on
        redis_client.hincrby(f"workflow:flow:{{{flow_id}}}", "v", 1)

    consumer = Closing(during=another_process_commits)
    worker = line_worker(redis_url, consumer)
    async with started(worker):
        handle = await worker.execute(LINE, Data(key="k"))
        assert await handle.result(timeout=5) == Result(key="k", steps=["a", "b"])
    assert flow_version(redis_client, handle.id) == 5
    assert len(consumer.of("complete")) == 1


@pytest.mark.parametrize("wait", [False, True], ids=["returns at once", "waits"])
async def test_a_closing_handler_run_before_a_lost_race_is_dropped_once_the_flow_moved_on(
    redis_url: str, redis_client: redis.Redis, wait: bool
) -> None:
    def another_process_cancels(flow_id: str) -> None:  # before b's outcome reached Redis
        key = f"workflow:flow:{{{flow_id}}}"
        state = decode_state(flow_id, cast(bytes, redis_client.hget(key, "s")))
        actions = Engine(LINE).handle(state, Cancel("by another process"), time.time())
        assert actions[-1] == RunOnError()
        redis_client.hset(key, mapping={"s": dumps(state.to_dict())})
        redis_client.hincrby(key, "v", 1)
        job = Job("on_error", LINE.name, flow_id)
        job_id = Keys("workflow").job_id(job)
        redis_client.set(f"arq:job:{job_id}", job.payload(0))
        redis_client.zadd("workflow.it-line", {job_id: 0})
        redis_client.lpush("workflow.it-line:wake", 1)

    consumer = Closing(during=another_process_cancels, wait=wait)
    worker = line_worker(redis_url, consumer)
    async with started(worker):
        handle = await worker.execute(LINE, Data(key="k"))
        with pytest.raises(WorkflowCancelledError):
            await handle.result(timeout=5)
        events = [event async for event in worker.subscribe(handle.id)]
    # One that waits is cancelled once its flow is known to have moved on: it never gets to return.
    closed = [] if wait else ["complete"]
    assert [c.kind for c in consumer.calls] == ["step", "step", *closed, "on_error"]
    assert consumer.cancelled == wait
    kinds = [event.type for event in events]
    assert "progress" not in kinds and kinds[-1] == "flow_cancelled"


async def test_a_worker_that_stops_while_its_closing_handler_waits_hands_the_handler_to_another(
    redis_url: str,
) -> None:
    closing = Closing(wait=True)
    first = ArqWorkflowProvider(redis_url, provider_id="first", stop_grace=0.1)
    first.register(LINE, closing)
    other = Recorder(("a", "b"))
    second = ArqWorkflowProvider(redis_url, provider_id="second")
    second.register(LINE, other)
    async with started(first):
        handle = await first.execute(LINE, Data(key="k"))
        await asyncio.wait_for(closing.waiting.wait(), 5)
    assert closing.cancelled
    async with started(second):
        result = await (await second.get_handle(handle.id)).result(timeout=5)
    assert result == Result(key="k", steps=["a", "b"])
    assert [(c.kind, c.provider) for c in closing.calls] == [("step", "first"), ("step", "first")]
    assert [(c.kind, c.provider) for c in other.calls] == [("complete", "second")]


# -- quiet when idle --


async def test_an_idle_worker_is_quiet(redis_url: str, redis_client: redis.Redis) -> None:
    provider = ArqWorkflowProvider(redis_url, stall_interval=1.0)
    provider.register(LINE, Recorder(("a", "b")))
    provider.register(FORK, Recorder(("b", "c")))

    def calls() -> int:
        stats = cast(dict[str, dict[str, Any]], redis_client.info("commandstats"))
        return sum(int(v["calls"]) for v in stats.values())

    async with started(provider):
        await (await provider.execute(LINE, Data(key="k"))).result(timeout=5)
        await asyncio.sleep(0.5)
        before = calls()
        await asyncio.sleep(3.0)
        per_second = (calls() - before - 1) / 3.0
    assert per_second <= 20, per_second


async def test_without_recorded_events_a_flow_has_no_stream_but_hooks_see_every_event(
    redis_url: str, redis_client: redis.Redis
) -> None:
    seen: list[str] = []

    async def hook(event: FlowEvent) -> None:
        seen.append(event.type)

    worker = ArqWorkflowProvider(redis_url, record_events=False)
    worker.register(LINE, Recorder(("a", "b")))
    worker.on_event(hook)
    async with started(worker):
        handle = await worker.execute(LINE, Data(key="k"))
        await handle.result(timeout=5)
        assert [event async for event in worker.subscribe(handle.id)] == []
    assert redis_client.exists(Keys("workflow").events(handle.id)) == 0
    assert seen[0] == "flow_started" and seen[-1] == "flow_completed"
    assert seen.count("step_completed") == 2


@asynccontextmanager
async def ended_line_flow(redis_url: str) -> AsyncIterator[tuple[ArqWorkflowProvider, str, str]]:
    """A started provider, one of its flows that has ended, and the key of that flow's event stream."""
    worker = ArqWorkflowProvider(redis_url)
    worker.register(LINE, Recorder(("a", "b")))
    async with started(worker):
        handle = await worker.execute(LINE, Data(key="k"))
        await handle.result(timeout=5)
        yield worker, handle.id, Keys("workflow").events(handle.id)


async def test_subscribe_skips_a_stream_entry_plait_did_not_write(
    redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async with ended_line_flow(redis_url) as (worker, flow_id, stream):
        redis_client.xadd(stream, {"x": "not an event"})
        redis_client.xadd(stream, {"e": "[1, 2]"})
        events = [event async for event in worker.subscribe(flow_id)]
    assert events[0].type == "flow_started" and events[-1].type == "flow_completed"
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert sum("not a Plait event" in r.getMessage() for r in caplog.records) == 2


async def test_events_are_stored_as_json_arrays_and_streams_written_as_objects_still_read(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with ended_line_flow(redis_url) as (worker, flow_id, stream):
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], redis_client.xrange(stream))
        stored = [json.loads(fields[b"e"]) for _, fields in entries]
        assert stored[0][:2] == ["flow_started", 1] and stored[1][:2] == ["step_started", 2]
        assert stored[1][3:] == ["a", 1]  # its own fields: step, attempt (no item index)
        # A flow's stream as an earlier version wrote it: one JSON object per event.
        redis_client.delete(stream)
        for record in stored:
            redis_client.xadd(stream, {"e": json.dumps(event_fields(record))})
        events = [event async for event in worker.subscribe(flow_id)]
    assert [(event.type, event.seq) for event in events] == [(record[0], record[1]) for record in stored]
    assert events[1].type == "step_started" and events[1].step == "a" and events[1].index is None


async def test_listing_indexes_forget_flows_once_their_retention_expired(
    redis_url: str, redis_client: redis.Redis
) -> None:
    class Parent(IWorkflowConsumer[Data, Result]):
        steps: dict[str, StepHandler[Data]] = {}

        async def on_complete(self, ctx: WorkflowContext[Data]) -> Result:
            return Result(key=ctx.data.key, steps=ctx.results["kid"].steps)

    parent = Workflow.define(name="it-parent", data=Data, result=Result).steps(
        lambda s: s.sequential(s.sub_workflow("kid", LINE, data=lambda ctx: ctx.data))
    )
    keys = Keys("workflow")
    worker = ArqWorkflowProvider(redis_url, retention=1.0, stall_interval=0.4)
    worker.register(LINE, Recorder(("a", "b")))
    worker.register(parent, Parent())
    async with started(worker):
        handle = await worker.execute(parent, Data(key="k"))
        await handle.result(timeout=5)
        child = f"{handle.id}.kid"
        assert [s.flow_id for s in (await worker.list_flows()).items] == [child, handle.id]
        assert [s.flow_id for s in (await worker.list_flows(parent_id=handle.id)).items] == [child]
        indexes = [
            keys.index,
            keys.index_workflow(LINE.name),
            *keys.status_indexes(LINE.name, "completed"),
            keys.index_workflow(parent.name),
            *keys.status_indexes(parent.name, "completed"),
            keys.index_parent(handle.id),
            keys.expiring,
        ]
        deadline = time.monotonic() + 5
        while any(redis_client.zcard(index) for index in indexes):
            assert time.monotonic() < deadline, "the indexes were not trimmed"
            await asyncio.sleep(0.1)
        assert redis_client.exists(keys.flow(handle.id)) == 0
        assert (await worker.list_flows()).items == ()


async def test_a_listing_page_reads_its_index_once_also_after_a_cursor(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # The index's first entry after a cursor is the cursor's own flow: reading only a page and one more made every
    # cursor page read the index (and its states) a second time to learn whether a next page exists.
    emitter = ArqWorkflowProvider(redis_url)
    async with started(emitter):
        for n in range(7):
            await emitter.execute(LINE, Data(key=str(n)))

        def index_reads() -> int:
            stats = cast(dict[str, dict[str, int]], redis_client.info("commandstats"))
            return stats.get("cmdstat_zrange", {}).get("calls", 0)

        pages = []
        cursor = None
        while True:
            before = index_reads()
            page = await emitter.list_flows(limit=3, cursor=cursor)
            pages.append((len(page.items), index_reads() - before))
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    assert pages == [(3, 1), (3, 1), (1, 1)]


async def test_flows_queued_in_the_same_millisecond_start_in_the_order_they_were_queued(redis_url: str) -> None:
    class Keyed(Recorder):
        def __init__(self) -> None:
            super().__init__(("a", "b"))
            self.keys: list[str] = []

        async def run(self, ctx: StepContext[Data]) -> Out:
            if ctx.step_name == "a":
                self.keys.append(ctx.data.key)
            return await super().run(ctx)

    emitter = ArqWorkflowProvider(redis_url)
    emitter.register(LINE)
    async with started(emitter):  # queued before any worker runs: about three a millisecond
        ids = [(await emitter.execute(LINE, Data(key=f"k{i:02}"))).id for i in range(30)]
    consumer = Keyed()
    worker = ArqWorkflowProvider(redis_url)
    worker.register(LINE, consumer, ConsumerOptions(concurrency=1))  # one flow at a time, in the order claimed
    async with started(worker):
        for flow_id in ids:
            await (await worker.get_handle(flow_id)).result(timeout=10)
    assert consumer.keys == [f"k{i:02}" for i in range(30)]


@pytest.mark.parametrize(("key_size", "reads"), [(10, 1), (100_000, 2)])
async def test_result_takes_a_small_final_state_from_the_announcement_of_the_end(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, key_size: int, reads: int
) -> None:
    # A caller of result() on a flow another process started reads the state once, finds the flow running, and
    # waits: the end is announced with the final state, so it needs no second read, unless the state is too large
    # to announce (over 64 KiB). (For the flows a provider started itself, see test_arq_ends.)
    worker = ArqWorkflowProvider(redis_url)
    worker.register(LINE, Recorder(("a", "b")))
    caller = ArqWorkflowProvider(redis_url)
    caller.register(LINE)
    loads: list[str] = []
    load = Store.load

    async def counted(store: Store, flow_id: str) -> tuple[bytes, bytes | None] | None:
        loads.append(flow_id)
        return await load(store, flow_id)

    async with started(worker), started(caller):
        flow_id = (await worker.execute(LINE, Data(key="k" * key_size, sleep=0.3))).id
        handle = await caller.get_handle(flow_id, LINE)
        monkeypatch.setattr(Store, "load", counted)
        result = await handle.result(timeout=5)
    assert loads == [handle.id] * reads
    assert result.steps == ["a", "b"]
    assert len(result.key) == key_size


async def test_a_flow_that_waits_longer_than_the_retention_is_kept_until_it_ends(
    redis_url: str, redis_client: redis.Redis
) -> None:
    napping = Workflow.define(name="it-napping", data=Data, result=Result).steps(
        lambda s: s.sequential(s.step("a", Out), s.sleep("nap", seconds=2.5), s.step("b", Out))
    )
    keys = Keys("workflow")
    worker = ArqWorkflowProvider(redis_url, retention=1.0, stall_interval=0.4)
    worker.register(napping, Recorder(("a", "b")))
    async with started(worker):
        handle = await worker.execute(napping, Data(key="k"))
        await asyncio.sleep(0.5)
        assert redis_client.pttl(keys.flow(handle.id)) == -1  # no expiry while it has not ended
        assert (await handle.result(timeout=10)).steps == ["a", "b"]
        assert 0 < cast(int, redis_client.pttl(keys.flow(handle.id))) <= 1000  # its retention starts at its end
        assert 0 < cast(int, redis_client.pttl(keys.events(handle.id))) <= 1000


async def test_a_completed_flow_being_undone_is_kept_until_it_ends_again(
    redis_url: str, redis_client: redis.Redis
) -> None:
    keys = Keys("workflow")
    undoing = asyncio.Event()
    release = asyncio.Event()

    async def run(ctx: StepContext[Data]) -> Out:
        return Out(step=ctx.step_name, seen=[])

    async def undo(ctx: StepContext[Data]) -> None:
        undoing.set()
        await release.wait()

    class Undoable(IWorkflowConsumer[Data, Result]):
        steps = {"a": StepHandler(execute=run, rollback=undo), "b": StepHandler(execute=run)}

        async def on_complete(self, ctx: WorkflowContext[Data]) -> Result:
            return Result(key=ctx.data.key, steps=list(ctx.results))

    def kept(flow_id: str) -> tuple[int, int, float | None]:
        flow, events = (cast(int, redis_client.pttl(key)) for key in (keys.flow(flow_id), keys.events(flow_id)))
        member = keys.expiring_member(LINE.name, flow_id, None)
        return flow, events, cast(float | None, redis_client.zscore(keys.expiring, member))

    worker = ArqWorkflowProvider(redis_url)
    worker.register(LINE, Undoable())
    async with started(worker):
        handle = await worker.execute(LINE, Data(key="k"))
        await handle.result(timeout=5)
        ended = kept(handle.id)
        assert ended[0] > 0 and ended[1] > 0 and ended[2] is not None  # retention runs from its end
        await worker.compensate(handle.id)
        await asyncio.wait_for(undoing.wait(), 5)
        assert kept(handle.id) == (-1, -1, None)  # running again: kept, whatever the retention
        release.set()
        for _ in range(500):
            if (await worker.get_status(handle.id)) == FlowStatus.COMPENSATED:
                break
            await asyncio.sleep(0.01)
        again = kept(handle.id)
        assert again[0] > 0 and again[1] > 0 and again[2] is not None  # ended again: its retention starts anew


@pytest.mark.parametrize(
    "text",
    [
        '{"n": 12345678901234567890123, "m": -9223372036854775809, "ok": 1}',  # beyond 64 bits
        '{"id": "order-1234567890123456789"}',  # a long run of digits in a string
        '{"x": NaN, "y": Infinity}',  # what Python's json writes and orjson refuses
        '{"s": "\\ud800"}',  # a lone surrogate
        '{"a": [1, 2.5, null, true, "\\u00e9"], "b": {"c": {}}}',
    ],
)
def test_stored_json_reads_back_as_python_wrote_it(text: str) -> None:
    read = loads(text.encode())
    assert json.dumps(read) == json.dumps(json.loads(text))
    assert [type(v) for v in read.values()] == [type(v) for v in json.loads(text).values()]


async def test_integers_beyond_64_bits_survive_a_flow_on_arq(redis_url: str) -> None:
    class Big(BaseModel):
        n: int

    big = Workflow.define(name="it-big", data=Big, result=Big).steps(lambda s: s.sequential(s.step("double", Big)))

    async def double(ctx: StepContext[Big]) -> Big:
        return Big(n=ctx.data.n * 2)

    class Doubler(IWorkflowConsumer[Big, Big]):
        steps = {"double": StepHandler(execute=double)}

        async def on_complete(self, ctx: WorkflowContext[Big]) -> Big:
            return ctx.result("double", Big)

    worker = ArqWorkflowProvider(redis_url)
    worker.register(big, Doubler())
    async with started(worker):
        handle = await worker.execute(big, Big(n=2**70 + 1))
        assert (await handle.result(timeout=5)).n == 2**71 + 2
        assert (await worker.get_state(handle.id)).data == {"n": 2**70 + 1}
