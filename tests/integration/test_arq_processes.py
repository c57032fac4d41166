"""Control flow and run control across processes: flows run in ``plait worker`` processes, this process starts,
steers and watches them (an emitter: it registers the definitions without consumers).

Each test proves one thing happens across a process boundary: a cancellation reaching a handler in a worker, a
signal sent from here, a durable sleep outliving the only worker, a child flow run by another worker than its
parent (and cancelled with it), a subscription to a flow this process did not start, and one trace from a span of
this process through the handler spans of a worker. Handlers record what they did, and in which process, in Redis
(see ``apps/control.py``).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio
import redis
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from plait.core import (
    FlowEvent,
    FlowStatus,
    ProgressReported,
    RemoteError,
    WorkflowCancelledError,
    WorkflowDefinition,
    WorkflowStepError,
    telemetry,
)
from plait.providers.arq import ArqWorkflowProvider
from tests.integration.apps.control import (
    APPROVAL,
    APPROVAL_QUICK,
    CANCEL,
    DEFINITIONS,
    FANOUT,
    NAP,
    PARENT,
    TRACED,
    Approval,
    Done,
    Ticket,
    gate_key,
    record_key,
)
from tests.integration.conftest import Workers

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.apps.control:create_app"
STALL = 1.0
WITHIN = 15.0  # seconds any wait of these tests may take before it fails: generous, for a loaded machine


@pytest_asyncio.fixture
async def emitter(redis_url: str) -> AsyncIterator[ArqWorkflowProvider]:
    """A provider of this process that knows every definition but runs no step."""
    provider = ArqWorkflowProvider(redis_url)
    for definition in DEFINITIONS:
        provider.register(definition)
    await provider.start()
    yield provider
    await provider.stop()


def recorded(client: redis.Redis, flow_id: str) -> dict[str, str]:
    """What the handlers of flow ``flow_id`` recorded (see ``apps/control.py``)."""
    raw = cast(dict[bytes, bytes], client.hgetall(record_key(flow_id)))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def until_recorded(client: redis.Redis, flow_id: str, what: str, times: int = 1) -> dict[str, str]:
    """Waits until the handlers of flow ``flow_id`` recorded ``what`` (``times`` times)."""
    deadline = time.monotonic() + WITHIN
    while int((found := recorded(client, flow_id)).get(what, 0)) < times:
        assert time.monotonic() < deadline, f"flow {flow_id} never recorded {what!r} {times} time(s): {found}"
        await asyncio.sleep(0.02)
    return found


async def until_no_leases(client: redis.Redis) -> None:
    """Waits until no job is leased: a cancelled handler's job is let go as its task unwinds, which may be after
    its flow ended. A lease a live worker keeps renewing fails this."""
    deadline = time.monotonic() + WITHIN
    while client.zcard("workflow:leases"):
        assert time.monotonic() < deadline, f"jobs stay leased: {client.hgetall('workflow:lease-info')}"
        await asyncio.sleep(0.05)


async def ready_worker(workers: Workers, stall: float = STALL) -> subprocess.Popen[bytes]:
    """A ``plait worker`` of the control app, once it takes jobs."""
    worker = workers.start(APP, stall=stall)
    await workers.ready(worker)
    return worker


async def until_status(provider: ArqWorkflowProvider, flow_id: str, status: FlowStatus) -> None:
    deadline = time.monotonic() + WITHIN
    while (found := await provider.get_status(flow_id)) != status:
        assert time.monotonic() < deadline, f"flow {flow_id} is {found}, never {status}"
        await asyncio.sleep(0.02)


async def stopped(*processes: subprocess.Popen[bytes]) -> None:
    """Stops workers with SIGTERM and checks they exit cleanly."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        assert await asyncio.to_thread(process.wait, 15) == 0


# -- cancel --


async def test_cancel_reaches_a_step_running_in_a_worker_process_and_rolls_the_flow_back_there(
    redis_client: redis.Redis, workers: Workers, emitter: ArqWorkflowProvider
) -> None:
    worker = await ready_worker(workers)
    handle = await emitter.execute(CANCEL, Ticket(ticket="t-1", block_in="hold"))
    await until_recorded(redis_client, handle.id, "hold.started")

    asked = time.time()
    status = await emitter.cancel(handle.id, reason="the customer changed their mind")
    assert not status.is_terminal  # the rollback runs in the worker, after this request
    with pytest.raises(WorkflowCancelledError) as caught:
        await handle.result(timeout=WITHIN)
    assert caught.value.reason == "the customer changed their mind"
    assert await handle.status() == FlowStatus.CANCELLED

    # The handler's task in the worker got the CancelledError, within about a second of the request. (It records
    # that as it unwinds, which the flow's end does not wait for.)
    done = await until_recorded(redis_client, handle.id, "hold.cancelled")
    assert done["hold.cancelled"] == "1"
    assert int(done["hold.cancelled.pid"]) == worker.pid
    assert float(done["hold.cancelled.at"]) - asked < 2.0
    assert "hold" not in done  # it never returned
    # The completed step was rolled back, in the worker; the one cut short was not; on_error ran once.
    assert done["reserve.rolled_back"] == "1"
    assert int(done["reserve.rolled_back.pid"]) == worker.pid
    assert "hold.rolled_back" not in done
    assert "release" not in done
    assert done["on_error"] == "1"
    assert (done["on_error.error"], done["on_error.reason"]) == (
        "WorkflowCancelledError",
        "the customer changed their mind",
    )
    info = await emitter.describe(handle.id)
    assert [(s.name, s.status) for s in info.steps] == [
        ("reserve", "compensated"),
        ("hold", "cancelled"),
        ("release", "pending"),
    ]
    await until_no_leases(redis_client)
    await stopped(worker)


@pytest.mark.parametrize(("definition", "step", "handlers"), [(CANCEL, "hold", 1), (FANOUT, "pack", 3)])
async def test_a_cancel_published_while_the_workers_pubsub_reconnects_still_stops_its_handlers(
    redis_client: redis.Redis,
    workers: Workers,
    emitter: ArqWorkflowProvider,
    definition: WorkflowDefinition[Ticket, Done],
    step: str,
    handlers: int,
) -> None:
    # Pub/sub delivers at most once: a worker whose connection dropped misses what is published meanwhile, and
    # must look for itself, once back, whether the jobs it runs were cancelled (a step's, or a for-each item's).
    # The worker is paused while its connection is cut and the cancellation published, so it cannot be back in
    # time to hear it, however slow this process is; its leases (5 s) outlast the pause, so no lost lease stops
    # the handlers either.
    worker = await ready_worker(workers, stall=5.0)
    handle = await emitter.execute(definition, Ticket(ticket="t-1", block_in=step))
    await until_recorded(redis_client, handle.id, f"{step}.started", times=handlers)

    worker.send_signal(signal.SIGSTOP)
    try:
        redis_client.client_kill_filter(_type="pubsub")
        await emitter.cancel(handle.id, reason="missed")
        subscribers = cast(list[tuple[bytes, int]], redis_client.pubsub_numsub("workflow:cancel"))
        assert subscribers == [(b"workflow:cancel", 0)]
    finally:
        worker.send_signal(signal.SIGCONT)
    with pytest.raises(WorkflowCancelledError):
        await handle.result(timeout=WITHIN)
    done = await until_recorded(redis_client, handle.id, f"{step}.cancelled", times=handlers)
    assert int(done[f"{step}.cancelled.pid"]) == worker.pid
    assert step not in done
    assert "Lost the lease" not in workers.log(worker)
    await until_no_leases(redis_client)
    await stopped(worker)


# -- signals --


async def test_a_signal_sent_from_this_process_lets_the_flow_in_the_worker_go_on_with_its_payload(
    redis_client: redis.Redis, workers: Workers, emitter: ArqWorkflowProvider
) -> None:
    worker = await ready_worker(workers)
    handle = await emitter.execute(APPROVAL, Ticket(ticket="t-1"))
    await until_status(emitter, handle.id, FlowStatus.WAITING)
    assert redis_client.zcard("workflow:leases") == 0  # waiting holds no job

    await emitter.signal(handle.id, "approval", Approval(approver="ada"))
    result = await handle.result(timeout=WITHIN)
    assert result.approver == "ada"  # the next step saw the payload, in the worker
    assert result.pid == worker.pid
    done = recorded(redis_client, handle.id)
    assert (done["request"], done["apply"]) == ("1", "1")
    assert "on_error" not in done
    info = await emitter.describe(handle.id)
    assert info.signals == {"approval": {"approver": "ada"}}
    await stopped(worker)


async def test_a_signal_sent_while_the_worker_runs_the_step_before_the_wait_is_kept_for_it(
    redis_client: redis.Redis, workers: Workers, emitter: ArqWorkflowProvider
) -> None:
    # This process commits the signal while the worker holds the flow's state from before it: the worker's
    # commit of the step loses the race on the flow's version, and must keep the signal when it tries again.
    worker = await ready_worker(workers)
    handle = await emitter.execute(APPROVAL, Ticket(ticket="t-1", gate_in="request"))
    await until_recorded(redis_client, handle.id, "request.started")
    await emitter.signal(handle.id, "approval", {"approver": "bob"})
    redis_client.lpush(gate_key(handle.id), "open")
    result = await handle.result(timeout=WITHIN)
    assert (result.approver, result.pid) == ("bob", worker.pid)
    done = recorded(redis_client, handle.id)
    assert (done["request"], done["apply"]) == ("1", "1")
    await stopped(worker)


async def test_cancelling_a_flow_that_waits_for_a_signal_rolls_it_back_in_the_worker(
    redis_client: redis.Redis, workers: Workers, emitter: ArqWorkflowProvider
) -> None:
    # A waiting flow holds no job: this process's commit queues the rollback, and a worker runs it.
    worker = await ready_worker(workers)
    handle = await emitter.execute(APPROVAL, Ticket(ticket="t-1"))
    await until_status(emitter, handle.id, FlowStatus.WAITING)
    await emitter.cancel(handle.id, reason="nobody will approve it")
    with pytest.raises(WorkflowCancelledError) as caught:
        await handle.result(timeout=WITHIN)
    assert caught.value.reason == "nobody will approve it"
    done = recorded(redis_client, handle.id)
    assert done["request.rolled_back"] == "1"
    assert int(done["request.rolled_back.pid"]) == worker.pid
    assert (done["on_error"], int(done["on_error.pid"])) == ("1", worker.pid)
    assert "apply" not in done
    await stopped(worker)


async def test_a_signals_timeout_fires_in_the_worker_and_rolls_the_flow_back_there(
    redis_client: redis.Redis, workers: Workers, emitter: ArqWorkflowProvider
) -> None:
    worker = await ready_worker(workers)
    handle = await emitter.execute(APPROVAL_QUICK, Ticket(ticket="t-1"))
    await until_status(emitter, handle.id, FlowStatus.WAITING)
    with pytest.raises(WorkflowStepError) as caught:
        await handle.result(timeout=WITHIN)
    assert caught.value.step_name == "approval"
    assert isinstance(caught.value.cause, RemoteError)
    assert caught.value.cause.type_name == "TimeoutError"
    assert "no signal 'approval' arrived within 1s" in caught.value.cause.message
    done = recorded(redis_client, handle.id)
    assert done["request.rolled_back"] == "1"
    assert int(done["request.rolled_back.pid"]) == worker.pid
    assert "apply" not in done
    assert (done["on_error"], done["on_error.error"]) == ("1", "WorkflowStepError")
    await stopped(worker)


# -- durable sleep --


async def test_a_durable_sleep_outlives_its_only_worker_and_wakes_in_the_next_one(
    redis_client: redis.Redis, workers: Workers, emitter: ArqWorkflowProvider
) -> None:
    first = await ready_worker(workers)
    handle = await emitter.execute(NAP, Ticket(ticket="t-1"))
    await until_status(emitter, handle.id, FlowStatus.WAITING)
    assert redis_client.zcard("workflow:leases") == 0  # sleeping holds no job
    wake_at = (await emitter.describe(handle.id)).step("pause").wake_at
    assert wake_at is not None

    first.send_signal(signal.SIGKILL)
    await asyncio.to_thread(first.wait)
    await asyncio.sleep(max(0.0, wake_at - time.time()) + 0.5)
    assert await handle.status() == FlowStatus.WAITING  # no worker: nothing woke it

    successor = await ready_worker(workers)
    ready_at = time.time()
    result = await handle.result(timeout=WITHIN)
    assert result.before.pid == first.pid
    assert result.after.pid == successor.pid
    assert result.after.at >= wake_at
    assert result.after.at - ready_at < 2.0  # the successor's timers fired the overdue wake-up at once
    done = recorded(redis_client, handle.id)
    assert (done["before"], done["after"]) == ("1", "1")  # nothing ran twice
    await stopped(successor)


# -- sub-workflows --


async def test_a_child_flow_runs_in_another_worker_than_its_parent(
    redis_client: redis.Redis, workers: Workers, emitter: ArqWorkflowProvider
) -> None:
    parents = workers.start("tests.integration.apps.control:create_parent_app", stall=STALL)
    children = workers.start("tests.integration.apps.control:create_child_app", stall=STALL)
    await workers.ready(parents, children)
    handle = await emitter.execute(PARENT, Ticket(ticket="t-1"))
    result = await handle.result(timeout=WITHIN)
    assert result.tracking == "trk-t-1"
    assert result.child_pid == children.pid
    assert result.prepare_pid == result.finish_pid == parents.pid

    child_id = (await emitter.describe(handle.id)).step("ship").child_id
    assert child_id == f"{handle.id}.ship"
    child = await emitter.describe(child_id)
    assert (child.parent_id, child.status) == (handle.id, FlowStatus.COMPLETED)
    assert [f.flow_id for f in (await emitter.list_flows(parent_id=handle.id)).items] == [child_id]
    await stopped(parents, children)


async def test_cancelling_a_parent_cancels_its_child_running_in_another_worker(
    redis_client: redis.Redis, workers: Workers, emitter: ArqWorkflowProvider
) -> None:
    parents = workers.start("tests.integration.apps.control:create_parent_app", stall=STALL)
    children = workers.start("tests.integration.apps.control:create_child_app", stall=STALL)
    await workers.ready(parents, children)
    handle = await emitter.execute(PARENT, Ticket(ticket="t-1", block_in="pack"))
    child_id = f"{handle.id}.ship"
    await until_recorded(redis_client, child_id, "pack.started")

    asked = time.time()
    await emitter.cancel(handle.id, reason="out of stock")
    with pytest.raises(WorkflowCancelledError) as caught:
        await handle.result(timeout=WITHIN)
    assert caught.value.reason == "out of stock"
    child = await emitter.get_handle(child_id)
    with pytest.raises(WorkflowCancelledError):
        await child.result(timeout=WITHIN)

    in_child = await until_recorded(redis_client, child_id, "pack.cancelled")
    assert int(in_child["pack.cancelled.pid"]) == children.pid  # the child's handler was stopped where it ran
    assert float(in_child["pack.cancelled.at"]) - asked < 5.0
    assert "pack" not in in_child and "pack.rolled_back" not in in_child
    assert in_child["on_error"] == "1"
    assert int(in_child["on_error.pid"]) == children.pid
    in_parent = recorded(redis_client, handle.id)
    assert in_parent["prepare.rolled_back"] == "1"
    assert int(in_parent["prepare.rolled_back.pid"]) == parents.pid
    assert "finish" not in in_parent
    assert (in_parent["on_error"], in_parent["on_error.reason"]) == ("1", "out of stock")
    assert await emitter.get_status(child_id) == FlowStatus.CANCELLED
    await until_no_leases(redis_client)
    await stopped(parents, children)


# -- subscribe --


async def start_progress_elsewhere(redis_url: str, flow_id: str) -> None:
    """Starts a flow of ``xp-progress`` from a process of its own, which exits at once."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.apps.control", redis_url, flow_id, cwd=ROOT
    )
    assert await process.wait() == 0


async def test_a_process_that_did_not_start_a_flow_follows_its_events_live_to_the_end(
    redis_url: str, redis_client: redis.Redis, workers: Workers, emitter: ArqWorkflowProvider
) -> None:
    worker = await ready_worker(workers)
    flow_id = "progress-1"
    await start_progress_elsewhere(redis_url, flow_id)

    events: list[FlowEvent] = []
    opened_after = 0
    async with asyncio.timeout(WITHIN):
        async for event in emitter.subscribe(flow_id):
            events.append(event)
            if isinstance(event, ProgressReported) and event.fraction == 0.5:
                # The handler waits for this process: what follows is committed after we got here, so we got
                # here live.
                assert await emitter.get_status(flow_id) == FlowStatus.RUNNING
                opened_after = len(events)
                redis_client.lpush(gate_key(flow_id), "open")

    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [(e.type, getattr(e, "step", None)) for e in events] == [
        ("flow_started", None),
        ("step_started", "label"),
        ("progress", "label"),
        ("progress", "label"),
        ("step_completed", "label"),
        ("step_started", "ship"),
        ("step_completed", "ship"),
        ("flow_completed", None),
    ]
    assert opened_after == 3
    progress = [(e.fraction, e.message) for e in events if isinstance(e, ProgressReported)]
    assert progress == [(0.5, "half labelled"), (1.0, "all labelled")]
    assert {e.flow_id for e in events} == {flow_id}
    assert {e.workflow for e in events} == {"xp-progress"}
    # A later subscription replays the same events.
    assert [e async for e in emitter.subscribe(flow_id)] == events
    await stopped(worker)


# -- OpenTelemetry --


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """This process's spans, recorded by a tracer provider Plait uses for the test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        telemetry.use_tracer_provider(None)


def only(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def only_exported(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name]
    assert len(found) == 1, (name, [s["name"] for s in spans])
    return found[0]


def read_spans(path: Path) -> list[dict[str, Any]]:
    """The spans a worker wrote to ``path`` so far (whole lines only: one may be being written)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return [json.loads(line) for line in text.split("\n")[:-1]]


async def exported(path: Path, name: str) -> list[dict[str, Any]]:
    """The spans a worker wrote to ``path``, once one named ``name`` is among them."""
    deadline = time.monotonic() + WITHIN
    while True:
        found = read_spans(path)
        if any(span["name"] == name for span in found):
            return found
        assert time.monotonic() < deadline, f"no span {name!r} was exported: {[s['name'] for s in found]}"
        await asyncio.sleep(0.05)


async def test_a_flow_run_by_a_worker_is_one_trace_under_a_span_of_the_process_that_started_it(
    tmp_path: Path, workers: Workers, emitter: ArqWorkflowProvider, spans: InMemorySpanExporter
) -> None:
    path = tmp_path / "spans.jsonl"
    worker = workers.start(
        "tests.integration.apps.control:create_traced_app", stall=STALL, env={"PLAIT_TEST_SPANS": str(path)}
    )
    await workers.ready(worker)
    tracer = telemetry._tracer()
    with tracer.start_as_current_span("request"):
        handle = await emitter.execute(TRACED, Ticket(ticket="t-1"))
    result = await handle.result(timeout=WITHIN)
    assert result.pid == worker.pid

    here = spans.get_finished_spans()
    request, execute = only(here, "request"), only(here, "plait.execute xp-traced")
    assert execute.parent is not None and execute.parent.span_id == request.context.span_id
    assert [s.name for s in here] == ["plait.execute xp-traced", "request"]  # nothing ran here
    trace_id = format(request.context.trace_id, "032x")
    execute_id = format(execute.context.span_id, "016x")

    there = await exported(path, "plait.flow xp-traced")
    assert {s["pid"] for s in there} == {worker.pid}
    assert {s["trace_id"] for s in there} == {trace_id}
    flow = only_exported(there, "plait.flow xp-traced")
    handlers = sorted(
        (s for s in there if s["name"].startswith(("plait.step", "plait.on_complete"))), key=lambda s: s["start_time"]
    )
    assert [s["name"] for s in handlers] == [
        "plait.step xp-traced.reserve",
        "plait.step xp-traced.charge",
        "plait.step xp-traced.charge",
        "plait.on_complete xp-traced",
    ]
    for span in [*handlers, flow]:
        assert span["parent_id"] == execute_id, span
        assert span["attributes"]["plait.flow_id"] == handle.id
    reserve, first, second, _ = handlers
    assert (reserve["attributes"]["plait.attempt"], reserve["attributes"]["plait.outcome"]) == (1, "ok")
    assert (first["attributes"]["plait.attempt"], first["attributes"]["plait.outcome"]) == (1, "error")
    assert first["status"] == "ERROR"
    assert (second["attributes"]["plait.attempt"], second["attributes"]["plait.outcome"]) == (2, "ok")
    # The handler's own span is a child of its attempt's span: the attempt's span was current in the worker.
    assert only_exported(there, "bank.charge")["parent_id"] == second["span_id"]
    assert flow["attributes"]["plait.status"] == "completed"
    await stopped(worker)
