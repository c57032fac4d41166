"""The arq provider: flow state in Redis, work in arq-format queues, the core engine deciding every step.

Why it looks like this (arq 0.28):

* **arq is the job format, not the loop.** Jobs are arq jobs (``arq:job:<id>`` holding arq's JSON-serialised
  ``{"f", "a", "k", "t", "et"}``, in arq queues: sorted sets named ``<prefix>.<workflow>`` and
  ``<prefix>.<workflow>.steps``, scored by due time in ms), written through arq's own ``serialize_job`` and read
  back as JSON, checked field by field (a job that is not Plait's is dropped, never run); the client is arq's
  ``ArqRedis``, created with JSON ``job_serializer``/``job_deserializer``; nothing is ever unpickled. But Plait
  does not run arq's ``Worker``: its loop polls the queue every ``poll_delay`` (0.5 s by default, so a 4-step
  flow would take 2 s; at 10 ms an idle worker sends about 90 commands a second and a job still waits 5 ms on
  average), it starts a job with four sequential round trips (WATCH, EXISTS, ZSCORE, MULTI/EXEC), fails a job
  for good on any exception, and re-runs a killed job only after its in-progress key expires while spending a
  try. Plait claims due jobs with one Lua script, and an idle workflow loop blocks on a Plait wake-up list
  (``BLPOP <prefix>.<workflow>:wake``, pushed by every enqueue) with a 10 s timeout: a hop costs a round trip,
  and an idle worker sends about 8 commands a second, its reconciler's scan included (see BENCHMARKS.md for
  both measured against raw arq). A worker waiting idle is registered (by the claim that found nothing), and a
  new flow's start job is leased straight to it and pushed, with the flow's state, to its own list, which it
  blocks on too: the flow starts without a claim's round trip. An arq ``Worker`` pointed at these queues would
  see jobs it can decode but functions it does not know; the format is arq's so that arq's tools can inspect
  them. Swapping arq out means rewriting :mod:`~plait.providers.arq._keys` (the job format) and the queue parts
  of :mod:`~plait.providers.arq._store`.
* **One commit per event.** A worker runs a job through the core ``Runner``, hands the event to ``Engine.handle``
  and commits the outcome with one Lua compare-and-set on the flow's version (see ``_store``): new state, jobs
  to enqueue, job finished, cancellations, end-of-flow announcement. Job ids are deterministic
  (``<prefix>:{<flow>}:step:<name>:<attempt>``), so a job is created once and a duplicate event changes nothing.
  When the engine answers with a job that can start now, the same worker keeps it (leased in that commit), so a
  sequential flow costs one commit per step; parallel siblings go through the queue to any worker. The flow's
  closing handler (``on_complete``, ``on_error``) starts before the commit of the outcome that asked for it, and
  its own outcome goes in that commit when it returns without waiting on anything.
* **Crashes.** Plait runs retries, backoff and timeouts itself (never raising into arq). A claimed job carries
  a lease of ``stall_interval`` seconds, renewed by a heartbeat; any worker's reconciler (one at a time, through
  a short Redis lock) hands jobs whose lease ran out back to their queue. A crash costs no attempt; a handler may
  run again after a crash (at least once), a completion is recorded once.
* **Waiting costs nothing.** A flow waiting for a signal or a timer holds no job and no worker: its next wake-up
  (a sleep's end, a signal's timeout, its deadline) is a score in its workflow's timers, which every worker looks
  at about once a second, so it fires even when every worker was down at its time. A signal, a cancellation or
  an undo is a commit like any event, made by whichever process asks; a child flow's end reaches its parent as a
  job created in the child's final commit.
* **Seeing flows.** Each commit appends the flow's events to a capped stream (``subscribe()`` reads it from any
  process) and moves the flow between the listing indexes of its old and new status, so ``list_flows()`` reads
  sorted sets, never the keyspace.
* **Callers wait on pub/sub.** ``result()`` subscribes to ``<prefix>:done:<flow>`` (one pub/sub connection per
  process), then reads the flow; the commit that ends a flow publishes there.
* **Outages.** ``execute()`` and the reads raise ``ProviderUnavailableError`` at once while Redis cannot be
  reached (redis-py is not asked to retry: a request handler answers 503 rather than hang); ``result()`` waits
  through an outage; workers log it once and retry until Redis is back (see ``_worker``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar, overload

from arq.connections import ArqRedis
from pydantic import BaseModel
from redis.exceptions import OutOfMemoryError

from plait.core import (
    ConsumerOptions,
    CorruptFlowError,
    FlowHandle,
    FlowInfo,
    FlowNotFoundError,
    FlowStatus,
    IWorkflowConsumer,
    ProviderNotStartedError,
    ProviderUnavailableError,
    SignalError,
    WorkflowDefinition,
    WorkflowNotRegisteredError,
    telemetry,
)
from plait.core.engine import Cancel, Compensate, Engine, Event, FlowState, RetryCompensation, Signal, build_error
from plait.core.events import FlowEvent, event_from_record, is_last
from plait.core.hooks import Hooks
from plait.core.info import FlowPage, FlowSummary
from plait.core.listing import ListQuery, encode_cursor
from plait.core.provider import EventHook
from plait.core.runner import (
    check_flow_id,
    check_same_flow,
    check_seconds,
    check_timeout,
    new_flow_id,
    prepare_registration,
    validate_data,
)
from plait.core.validation import MAX_PAYLOAD_SIZE, check_max_payload_size, validate
from plait.providers.arq._ends import Ends
from plait.providers.arq._flows import Exceptions
from plait.providers.arq._keys import Job, Keys, decode_state, dumps, loads, shorten
from plait.providers.arq._notify import Notifier
from plait.providers.arq._store import UNAVAILABLE, Store
from plait.providers.arq._worker import Worker, WorkflowRuntime
from plait.providers.arq.settings import ArqSettings

__all__ = ["ArqFlowHandle", "ArqWorkflowProvider"]

D = TypeVar("D", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

_log = logging.getLogger("plait.providers.arq")


def _event_record(flow_id: str, entry_id: str, raw: bytes | None) -> list[Any] | dict[str, Any] | None:
    """The event record of one stream entry (a JSON array; an object if an earlier version wrote it), or ``None``
    (with a log line) for one Plait did not write."""
    try:
        record = loads(raw) if raw is not None else None
        if isinstance(record, list | dict):
            event_from_record(flow_id, "", record)  # checks it holds an event
            return record
    except (ValueError, TypeError, KeyError, RecursionError):
        pass
    _log.warning("Skipped entry %s of flow %s's event stream: not a Plait event", entry_id, shorten(flow_id))
    return None


T = TypeVar("T")

_DAY = 86400.0
_RECHECK = 10.0  # seconds between a waiter's own looks at its flow, in case a pub/sub message was lost
_OUTAGE_RECHECK = 0.5  # seconds between a waiter's looks while Redis cannot be reached


class ArqFlowHandle(FlowHandle[R], Generic[R]):
    """A handle on a flow of an :class:`ArqWorkflowProvider`; valid in any process that can reach the Redis."""

    __slots__ = ("_definition", "_provider")

    def __init__(
        self, flow_id: str, provider: ArqWorkflowProvider, definition: WorkflowDefinition[Any, R] | None
    ) -> None:
        super().__init__(flow_id)
        self._provider = provider
        self._definition = definition

    async def status(self) -> FlowStatus:
        return await self._provider.get_status(self.id)

    async def result(self, timeout: float | None = None) -> R:
        state = await self._provider._wait(self.id, timeout)
        if state.status == FlowStatus.COMPLETED:
            definition = self._definition or self._provider._definition(state.workflow)
            return definition.result.model_validate(state.result)
        raise build_error(state, self._provider._exceptions.matching(state))


_STREAM_POLL = 1.0  # seconds a subscriber blocks on a flow's stream before it looks at the flow's status


class _Wakeup:
    """What wakes a caller of ``result()``: its flow's end announced, or the provider stopping.

    An ``asyncio.Event`` waited on under ``wait_for`` costs a task per wait, on the way from the announcement to
    the caller; this is a future and a timer.
    """

    __slots__ = ("_is_set", "_waiter")

    def __init__(self) -> None:
        self._is_set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._is_set = True
        if self._waiter is not None:
            _release(self._waiter)

    async def wait(self, timeout: float) -> None:
        """Returns once set (at once if it was since the last wait), or after ``timeout`` seconds; then clears."""
        if not self._is_set:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _release, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        self._is_set = False


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Registration:
    __slots__ = ("definition", "engine", "runtime")

    def __init__(
        self, definition: WorkflowDefinition[Any, Any], runtime: WorkflowRuntime | None, engine: Engine | None = None
    ) -> None:
        self.definition = definition
        self.runtime = runtime
        self.engine = runtime.engine if runtime is not None else engine or Engine(definition)


class ArqWorkflowProvider:
    """Runs flows across processes: state in Redis, steps as arq-format jobs, any worker runs any step.

    A process that only starts flows needs no registration (``execute()`` takes the definition); a process that
    registered a consumer runs that workflow's jobs once started (see ``plait worker``). ``result()`` and
    ``get_handle()`` work from any process.

    Args:
        redis_url: a ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL, or :class:`ArqSettings`.
        password: the Redis password, if the URL does not carry it.
        ssl: force TLS on (or off), whatever the URL's scheme says.
        ssl_ca_certs: CA certificates to verify the server with (default: the system's).
        ssl_certfile: client certificate, for mutual TLS.
        ssl_keyfile: client key, for mutual TLS.
        ssl_check_hostname: check that the server's certificate was issued for the URL's host (the default);
            ``False`` only for a server reached through a tunnel you trust.
        queue_prefix: prefix of every key, queue and channel (queues are ``<prefix>.<workflow>[.steps]``).
        default_timeout: seconds a flow may take when neither ``execute()`` nor its registration says;
            ``None`` for no limit.
        stall_interval: seconds after which a job whose worker died (stopped renewing its lease) runs elsewhere;
            a worker that could not renew a lease for that long stops the job's handler.
        step_timeout: seconds one step attempt may take when its registration does not say; ``None`` for none.
        provider_id: shown in contexts and logs; defaults to ``arq-<host>-<pid>``.
        retention: seconds a flow stays queryable after it ends (7 days by default); one that runs or waits is
            kept however long it takes.
        concurrency: jobs of one workflow this process runs at once, unless its registration's
            ``ConsumerOptions.concurrency`` says otherwise (arq's ``max_jobs``, per workflow).
        stop_grace: seconds ``stop()`` lets running jobs finish before handing them back to their queues.
        max_payload_size: the most bytes of JSON a flow's data, a step's output or a signal's payload may take.
        record_events: write each flow's events to its Redis stream, for ``subscribe()`` in any process (the
            default). ``False`` saves that write per event: flows this process runs then have no stream, so
            ``subscribe()`` yields none of their events; hooks still receive them.
    """

    distributed: ClassVar[bool] = True
    """Flows run in any process that registered their consumer: ``plait worker`` runs only such providers."""

    def __init__(
        self,
        redis_url: str | ArqSettings = "redis://localhost:6379",
        *,
        password: str | None = None,
        ssl: bool | None = None,
        ssl_ca_certs: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        ssl_check_hostname: bool | None = None,
        queue_prefix: str = "workflow",
        default_timeout: float | None = None,
        stall_interval: float = 5.0,
        step_timeout: float | None = None,
        provider_id: str | None = None,
        retention: float = 7 * _DAY,
        concurrency: int = 10,
        stop_grace: float = 10.0,
        max_payload_size: int = MAX_PAYLOAD_SIZE,
        record_events: bool = True,
    ) -> None:
        self.max_payload_size = check_max_payload_size(max_payload_size)
        self.record_events = record_events
        settings = redis_url if isinstance(redis_url, ArqSettings) else ArqSettings.from_url(redis_url)
        if password is not None:
            settings = replace(settings, password=password)
        if ssl is not None:
            settings = replace(settings, ssl=ssl)
        if ssl_ca_certs is not None:
            settings = replace(settings, ssl_ca_certs=ssl_ca_certs)
        if ssl_certfile is not None:
            settings = replace(settings, ssl_certfile=ssl_certfile)
        if ssl_keyfile is not None:
            settings = replace(settings, ssl_keyfile=ssl_keyfile)
        if ssl_check_hostname is not None:
            settings = replace(settings, ssl_check_hostname=ssl_check_hostname)
        self.settings = settings
        check_timeout(default_timeout, "default_timeout")
        check_timeout(step_timeout, "step_timeout")
        check_seconds(stall_interval, "stall_interval")
        check_seconds(retention, "retention")
        check_seconds(stop_grace, "stop_grace", allow_zero=True)
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        self.keys = Keys(queue_prefix)
        self.default_timeout = default_timeout
        self.stall_interval = stall_interval
        self.step_timeout = step_timeout
        self.provider_id = provider_id or f"arq-{socket.gethostname()}-{os.getpid()}"
        self.retention = retention
        self.concurrency = concurrency
        self.stop_grace = stop_grace
        self._registrations: dict[str, _Registration] = {}
        self._known: dict[str, _Registration] = {}  # definitions executed here without registering them
        self._exceptions = Exceptions()
        self._hooks = Hooks(self.provider_id)
        self._redis: ArqRedis | None = None
        self._store: Store | None = None
        self._notifier: Notifier | None = None
        self._ends: Ends | None = None
        self._worker: Worker | None = None
        self._waiters: set[_Wakeup] = set()
        self._started = False
        self._lifecycle = asyncio.Lock()

    def __repr__(self) -> str:
        return f"ArqWorkflowProvider({self.settings.address}, queue_prefix={self.keys.prefix!r})"

    # -- lifecycle --

    def register(
        self,
        definition: WorkflowDefinition[D, R],
        consumer: IWorkflowConsumer[D, R] | None = None,
        options: ConsumerOptions | None = None,
    ) -> None:
        """Registers ``definition``, and the consumer that runs its jobs in this process (``None``: start only).

        Raises:
            DefinitionError: the name is registered already, or the consumer does not match the definition.
        """
        runner = prepare_registration(
            definition,
            consumer,
            options,
            registered=self._registrations,
            provider_id=self.provider_id,
            step_timeout=self.step_timeout,
            default_timeout=self.default_timeout,
            max_payload_size=self.max_payload_size,
        )
        runtime = None
        if runner is not None:
            runtime = WorkflowRuntime(runner, runner.options.concurrency or self.concurrency)
        self._registrations[definition.name] = registration = _Registration(definition, runtime)
        self._known.pop(definition.name, None)
        if self._worker is not None:
            if runtime is not None:
                self._worker.add(runtime)
            else:
                self._worker.engines[definition.name] = registration.engine

    def on_event(self, hook: EventHook) -> None:
        """Calls ``hook`` with every event of every flow this process commits, in order, from a task of its own
        (at least once across crashes); a hook that raises is logged and never fails a flow."""
        self._hooks.add(hook)
        if self._started:
            self._hooks.start()

    async def start(self) -> None:
        """Connects to Redis and, if consumers are registered, starts running their jobs; idempotent.

        Tries ``settings.conn_retries`` more times, ``settings.conn_retry_delay`` seconds apart, while Redis
        cannot be reached, logging one WARNING per failed try.

        Raises:
            ProviderUnavailableError: Redis could not be reached (or refused the credentials) on any try.
        """
        async with self._lifecycle:
            if self._started:
                return
            redis = await self._connect()
            try:
                owner = f"{self.provider_id}-{uuid.uuid4().hex[:8]}"
                store = Store(redis, self.keys, retention=self.retention, lease=self.stall_interval, owner=owner)
                notifier = Notifier(redis)
                runtimes = [r.runtime for r in self._registrations.values() if r.runtime is not None]
                worker = Worker(
                    store,
                    notifier,
                    self._exceptions,
                    self._hooks,
                    stall_interval=self.stall_interval,
                    stop_grace=self.stop_grace,
                    retention=self.retention,
                    record_events=self.record_events,
                )
                for runtime in runtimes:
                    worker.add(runtime)
                for registration in (*self._registrations.values(), *self._known.values()):
                    if registration.runtime is None:
                        worker.engines[registration.definition.name] = registration.engine
                self._redis, self._store, self._notifier, self._worker = redis, store, notifier, worker
                self._ends = Ends(notifier, self.keys.ends(owner))
                await worker.start()
            except (*UNAVAILABLE, TimeoutError) as error:  # TimeoutError: the cancel channel's subscription
                await self._close()
                raise self._unavailable(error) from error
            except BaseException:
                await self._close()
                raise
            self._started = True
            self._hooks.start()

    async def _connect(self) -> ArqRedis:
        settings = self.settings
        tries = 1 + max(0, settings.conn_retries)
        for attempt in range(1, tries + 1):
            redis = settings.client()
            try:
                await redis.ping()
            except UNAVAILABLE as error:
                await redis.aclose(close_connection_pool=True)
                if attempt == tries:
                    raise self._unavailable(error) from error
                _log.warning(
                    "Redis at %s cannot be reached (%s); try %d of %d, next in %gs",
                    settings.address,
                    error,
                    attempt,
                    tries,
                    settings.conn_retry_delay,
                )
                await asyncio.sleep(settings.conn_retry_delay)
            else:
                return redis
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def stop(self) -> None:
        """Stops taking work, lets running jobs finish within ``stop_grace`` and hands the rest back.

        Flows are not cancelled: they live in Redis and go on in other workers (or after a restart). A
        ``result()`` still waiting in this process raises ``ProviderNotStartedError``. Idempotent; safe before
        ``start()``.
        """
        async with self._lifecycle:
            if not self._started:
                return
            self._started = False
            try:
                if self._worker is not None:
                    await self._worker.stop()
            finally:
                for waiter in self._waiters:
                    waiter.set()
                await asyncio.sleep(0)
                await self._hooks.stop(self.stop_grace)
                await self._close()

    async def _close(self) -> None:
        notifier, redis = self._notifier, self._redis
        self._worker = self._store = self._notifier = self._redis = self._ends = None
        if notifier is not None:
            await notifier.close()
        if redis is not None:
            await redis.aclose(close_connection_pool=True)

    # -- executor --

    async def execute(
        self,
        definition: WorkflowDefinition[D, R],
        data: D | Mapping[str, Any],
        *,
        id: str | None = None,
        timeout: float | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> ArqFlowHandle[R]:
        """Validates ``data``, stores the flow in Redis and queues its start; returns its handle at once.

        Raises:
            WorkflowValidationError: ``data`` does not match ``definition.data``; nothing was stored.
            PayloadTooLargeError: ``data`` is larger, as JSON, than ``max_payload_size``; nothing was stored.
            TypeError, ValueError: ``id`` is not a str of 1-200 printable characters, or ``timeout`` is not a
                number of seconds greater than 0 (or ``None``).
            WorkflowNotRegisteredError: another definition of that name is registered (or was executed) here.
            FlowConflictError: ``id`` names an existing flow of another workflow or with other data.
            CorruptFlowError: ``id`` names an existing flow whose state cannot be read.
            ProviderUnavailableError: Redis cannot be reached; nothing was stored (or the flow was, if Redis went
                away while answering: run it again with the same ``id`` to be sure).
            ProviderNotStartedError: the provider is not started (or is stopping).
        """
        if id is not None:
            id = check_flow_id(id)
        _, payload = validate_data(definition, data, max_size=self.max_payload_size)
        check_timeout(timeout, "execute(timeout=)")
        store = self._running_store()
        engine = self._engine_for(definition)
        flow_id = new_flow_id() if id is None else id
        meta = telemetry.traced_meta(meta, definition.name, flow_id)
        await self._create(store, engine, flow_id, payload, meta=meta, timeout=timeout)
        return ArqFlowHandle(flow_id, self, definition)

    async def _create(
        self,
        store: Store,
        engine: Engine,
        flow_id: str,
        payload: Any,
        *,
        meta: Mapping[str, str] | None,
        timeout: float | None = None,
        retry_of: str | None = None,
    ) -> None:
        workflow = engine.definition.name
        ends = self._ends
        assert ends is not None  # set with the store
        try:
            channel = await self._reach(ends.ready())
        except TimeoutError as error:  # the channel's subscription was not confirmed
            raise self._unavailable(error) from error
        now = time.time()
        state = engine.new_state(flow_id, payload, meta=meta, timeout=timeout, now=now, retry_of=retry_of)
        start = Job("start", workflow, flow_id)
        followed = ends.follow(flow_id)
        try:
            existing = await self._reach(
                store.create(
                    flow_id, workflow, dumps(state.to_dict()), start, wake_at=state.wake_at, created_at=now,
                    ends=channel,
                )
            )  # fmt: skip
        except BaseException:
            if followed:
                ends.forget(flow_id)
            raise
        if existing is not None:
            if followed:
                ends.forget(flow_id)  # not stored by this call: its end is not announced here
            check_same_flow(decode_state(flow_id, existing), workflow, payload)

    def _engine_for(self, definition: WorkflowDefinition[Any, Any]) -> Engine:
        """The engine of ``definition``: its registration's, or one kept for a definition executed unregistered."""
        name = definition.name
        found = self._found(name)
        if found is not None:
            if found.definition is not definition and found.definition.step_names != definition.step_names:
                raise WorkflowNotRegisteredError(name, "another definition of that name is registered here")
            return found.engine
        registration = self._known[name] = _Registration(definition, None)
        if self._worker is not None:
            self._worker.engines.setdefault(name, registration.engine)
        return registration.engine

    def _found(self, workflow: str) -> _Registration | None:
        """The registration of ``workflow``, or the one kept when its definition was executed unregistered."""
        return self._registrations.get(workflow) or self._known.get(workflow)

    def _engine_of(self, workflow: str, what: str) -> tuple[WorkflowDefinition[Any, Any], Engine]:
        found = self._found(workflow)
        if found is None:
            raise WorkflowNotRegisteredError(workflow, f"register its definition to {what}")
        return found.definition, found.engine

    async def get_status(self, flow_id: str) -> FlowStatus:
        """Returns the status of flow ``flow_id``.

        Raises:
            FlowNotFoundError: unknown or expired.
            CorruptFlowError: its stored status cannot be read.
            ProviderUnavailableError: Redis cannot be reached.
        """
        return (await self._status(flow_id))[0]

    @overload
    async def get_handle(self, flow_id: str) -> ArqFlowHandle[BaseModel]: ...

    @overload
    async def get_handle(self, flow_id: str, definition: WorkflowDefinition[Any, R]) -> ArqFlowHandle[R]: ...

    async def get_handle(
        self, flow_id: str, definition: WorkflowDefinition[Any, Any] | None = None
    ) -> ArqFlowHandle[Any]:
        """Returns a handle on flow ``flow_id``, its result typed by ``definition``, else by the definition
        registered (or executed) here; without either, ``result()`` says what to register.

        Raises:
            FlowNotFoundError: unknown or expired.
            CorruptFlowError: its stored status cannot be read.
            ProviderUnavailableError: Redis cannot be reached.
        """
        _, workflow = await self._status(flow_id)
        if definition is None:
            found = self._found(workflow)
            definition = found.definition if found is not None else None
        return ArqFlowHandle(flow_id, self, definition)

    async def describe(self, flow_id: str) -> FlowInfo:
        """Returns flow ``flow_id``'s status with each step's fate, whichever process ran them.

        Raises:
            FlowNotFoundError: unknown or expired.
            CorruptFlowError: its stored state cannot be read.
            ProviderUnavailableError: Redis cannot be reached.
        """
        state = await self.get_state(flow_id)
        found = self._found(state.workflow)
        return FlowInfo.from_state(state, found.definition if found is not None else None)

    async def get_state(self, flow_id: str) -> FlowState:
        """Returns the recorded state of a flow (step statuses, results, errors) for inspection.

        Raises:
            FlowNotFoundError: unknown or expired.
            CorruptFlowError: its stored state cannot be read.
            ProviderUnavailableError: Redis cannot be reached.
        """
        loaded = await self._reach(self._running_store().load(flow_id))
        if loaded is None:
            raise FlowNotFoundError(flow_id)
        return decode_state(flow_id, loaded[0])

    # -- steering --

    async def signal(self, flow_id: str, name: str, payload: BaseModel | Mapping[str, Any]) -> None:
        """Delivers signal ``name`` with ``payload`` to flow ``flow_id``, committed like any event (a signal sent
        before the flow gets to its wait is kept there).

        Raises:
            FlowNotFoundError: unknown or expired.
            SignalError: the workflow waits for no such signal, the flow has ended, or the signal already came
                with another payload.
            WorkflowValidationError: the payload does not validate; nothing was stored.
            WorkflowNotRegisteredError: the workflow's definition is not known in this process.
            ProviderUnavailableError: Redis cannot be reached.
        """
        _, workflow = await self._status(flow_id)
        definition, engine = self._engine_of(workflow, "send its flows signals")
        model = definition.signals.get(name)
        if model is None:
            declared = ", ".join(f"'{n}'" for n in definition.signals) or "none"
            raise SignalError(f"Workflow '{workflow}' waits for no signal '{name}' (it waits for: {declared})")
        _, value = validate(
            model, payload, workflow=workflow, what=f"payload of signal '{name}'", max_size=self.max_payload_size
        )
        await self._apply(engine, flow_id, Signal(name, value))

    async def cancel(self, flow_id: str, reason: str | None = None) -> FlowStatus:
        """Cancels flow ``flow_id``: its running handlers stop wherever they run, its completed steps roll back,
        ``on_error`` runs and it ends ``cancelled`` (its children too). An ended flow is left as it is.

        Raises:
            FlowNotFoundError: unknown or expired.
            WorkflowNotRegisteredError: the workflow's definition is not known in this process.
            ProviderUnavailableError: Redis cannot be reached.
        """
        status, workflow = await self._status(flow_id)
        if status.is_terminal:
            return status
        _, engine = self._engine_of(workflow, "cancel its flows")
        state = await self._apply(engine, flow_id, Cancel(reason or "cancelled"))
        return state.status

    async def compensate(self, flow_id: str, reason: str | None = None) -> FlowStatus:
        """Undoes completed flow ``flow_id``: its completed steps roll back, and it ends ``compensated``.

        Raises:
            FlowStateError: the flow has not completed.
            FlowNotFoundError: unknown or expired.
            WorkflowNotRegisteredError: the workflow's definition is not known in this process.
            ProviderUnavailableError: Redis cannot be reached.
        """
        _, workflow = await self._status(flow_id)
        _, engine = self._engine_of(workflow, "compensate its flows")
        state = await self._apply(engine, flow_id, Compensate(reason or "compensate() was called"))
        return state.status

    async def retry_compensation(self, flow_id: str) -> FlowStatus:
        """Runs again the rollbacks of ended flow ``flow_id`` that failed for good.

        Raises:
            FlowStateError: none failed.
            FlowNotFoundError: unknown or expired.
            WorkflowNotRegisteredError: the workflow's definition is not known in this process.
            ProviderUnavailableError: Redis cannot be reached.
        """
        _, workflow = await self._status(flow_id)
        _, engine = self._engine_of(workflow, "compensate its flows")
        state = await self._apply(engine, flow_id, RetryCompensation())
        return state.status

    async def retry(self, flow_id: str) -> ArqFlowHandle[BaseModel]:
        """Starts a new flow with the data and metadata of failed, cancelled or compensated flow ``flow_id``.

        Raises:
            FlowStateError: the flow is running, or completed.
            FlowNotFoundError: unknown or expired.
            WorkflowNotRegisteredError: the workflow's definition is not known in this process.
            ProviderUnavailableError: Redis cannot be reached.
        """
        state = await self.get_state(flow_id)
        definition, engine = self._engine_of(state.workflow, "retry its flows")
        engine.check_retry(state)
        new_id = new_flow_id()
        meta = telemetry.traced_meta(state.meta, state.workflow, new_id)
        await self._create(self._running_store(), engine, new_id, state.data, meta=meta, retry_of=flow_id)
        return ArqFlowHandle(new_id, self, definition)

    async def _apply(self, engine: Engine, flow_id: str, event: Event) -> FlowState:
        worker = self._worker
        if not self._started or worker is None:
            raise ProviderNotStartedError("ArqWorkflowProvider is not running: await provider.start() first")
        return await self._reach(worker.apply(engine, flow_id, event))

    # -- watching --

    async def list_flows(
        self,
        *,
        workflow: str | None = None,
        status: FlowStatus | str | None = None,
        parent_id: str | None = None,
        created_after: float | datetime | None = None,
        created_before: float | datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> FlowPage:
        """Lists flows newest first, from indexes kept in the same commits as the flows (see
        ``WorkflowExecutor.list_flows``).

        Raises:
            ValueError: a bad argument or cursor.
            ProviderUnavailableError: Redis cannot be reached.
        """
        query = ListQuery.of(
            workflow=workflow,
            status=status,
            parent_id=parent_id,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            cursor=cursor,
        )
        store = self._running_store()
        keys = self.keys
        if query.parent_id is not None:
            index = keys.index_parent(query.parent_id)
        elif query.workflow is not None and query.status is not None:
            index = keys.index_workflow_status(query.workflow, query.status.value)
        elif query.workflow is not None:
            index = keys.index_workflow(query.workflow)
        elif query.status is not None:
            index = keys.index_status(query.status.value)
        else:
            index = keys.index
        newest = query.after[0] if query.after is not None else None
        if query.created_before is not None:
            newest = query.created_before if newest is None else min(newest, query.created_before)
        items: list[FlowSummary] = []
        offset = 0
        # A page's flows and one more, to know whether a next page exists; after a cursor, the index's first entry
        # is the cursor's own flow (its time is inclusive), so one more again.
        batch = query.limit + (1 if query.after is None else 2)
        while True:
            page = await self._reach(store.index_page(index, newest, query.created_after, batch, offset))
            offset += len(page)
            # Index scores are the exact creation times; the states decide what the index cannot (the cursor's
            # tie on a time, filters beyond the index's own).
            flow_ids = [flow_id for flow_id, _ in page]
            states = await self._reach(store.load_many(flow_ids))
            for flow_id, raw in zip(flow_ids, states, strict=True):
                if raw is None:
                    continue  # expired: the index is swept later
                try:
                    state = decode_state(flow_id, raw)
                except CorruptFlowError:
                    continue
                if not query.follows(state.created_at, flow_id):
                    continue
                parent = state.parent["flow_id"] if state.parent else None
                if not query.admits(state.workflow, state.status.value, parent, state.created_at):
                    continue
                if query.created_before is not None and state.created_at >= query.created_before:
                    continue
                if len(items) == query.limit:
                    last = items[-1]
                    return FlowPage(tuple(items), encode_cursor(last.created_at, last.flow_id))
                items.append(FlowSummary.from_state(state))
            if len(page) < batch:
                return FlowPage(tuple(items))

    async def subscribe(self, flow_id: str) -> AsyncIterator[FlowEvent]:
        """Yields flow ``flow_id``'s events from its first to its last, from any process: the stored ones, then
        the new ones as they are committed.

        Raises:
            FlowNotFoundError: unknown or expired.
            ProviderUnavailableError: Redis cannot be reached.
        """
        store = self._running_store()
        status, workflow = await self._status(flow_id)
        ended = status.is_terminal
        after = "0"
        block: float | None = None  # None: reading what is stored; else following the stream live
        last = False
        while True:
            entries = await self._reach(store.events_after(flow_id, after, block=block))
            for entry_id, raw in entries:
                after = entry_id
                record = _event_record(flow_id, entry_id, raw)
                if record is not None:
                    last = is_last(record)
                    yield event_from_record(flow_id, workflow, record)
            if block is None:
                if entries:
                    continue
                if ended or last:
                    return
                block = _STREAM_POLL  # the flow runs (or was undone after it ended): follow it to its end
            elif last:
                return
            elif not entries and (await self._status(flow_id))[0].is_terminal:
                ended, block = True, None  # read what was committed meanwhile, then stop

    # -- internals --

    def _running_store(self) -> Store:
        if not self._started or self._store is None:
            raise ProviderNotStartedError("ArqWorkflowProvider is not running: await provider.start() first")
        return self._store

    def _unavailable(self, error: BaseException) -> ProviderUnavailableError:
        reason = str(error) or type(error).__name__
        if isinstance(error, OutOfMemoryError):
            return ProviderUnavailableError(f"Redis at {self.settings.address} is full (maxmemory): {reason}")
        return ProviderUnavailableError(f"Redis at {self.settings.address} cannot be reached: {reason}")

    async def _reach(self, request: Awaitable[T]) -> T:
        """Awaits one request to Redis; an outage becomes ``ProviderUnavailableError`` at once."""
        try:
            return await request
        except UNAVAILABLE as error:
            raise self._unavailable(error) from error

    async def _status(self, flow_id: str) -> tuple[FlowStatus, str]:
        found = await self._reach(self._running_store().status(flow_id))
        if found is None:
            raise FlowNotFoundError(flow_id)
        status, workflow = found
        try:
            if status is not None and workflow is not None:
                return FlowStatus(status.decode()), workflow.decode()
        except ValueError:  # UnicodeDecodeError is one too
            pass
        raise CorruptFlowError(flow_id, f"its status {shorten(status)} or workflow {shorten(workflow)} cannot be read")

    def _definition(self, workflow: str) -> WorkflowDefinition[Any, Any]:
        return self._engine_of(workflow, "read its result")[0]

    async def _wait(self, flow_id: str, timeout: float | None) -> FlowState:
        """Waits until the flow ends (woken through pub/sub) and returns its final state; rides through outages.

        Raises:
            FlowNotFoundError: unknown or expired.
            CorruptFlowError: its stored state cannot be read.
            TimeoutError: it did not end within ``timeout`` seconds.
            ProviderNotStartedError: the provider stopped meanwhile.
        """
        store = self._running_store()
        notifier = self._notifier
        assert notifier is not None
        channel = self.keys.done(flow_id)
        woken = _Wakeup()
        announced: list[bytes] = []  # the final state the end was announced with (a small one is)

        def wake(data: bytes) -> None:
            if data[:1] == b"{":
                announced.append(data)
            woken.set()

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        outage = False
        # A flow started here has its end announced on this provider's channel, subscribed before it was stored:
        # no subscription of its own, and no first read, can miss it.
        ends = self._ends
        followed = ends is not None and ends.claim(flow_id, wake)
        subscribed = skip_read = followed  # (its end comes on the provider's channel: nothing of its own to subscribe)
        self._waiters.add(woken)
        try:
            while True:
                if not self._started:
                    raise ProviderNotStartedError(f"The provider stopped while waiting for flow '{flow_id}'")
                wait = _RECHECK
                try:
                    if not subscribed:
                        # Subscribed before the read below: an end announced in between is not missed.
                        await notifier.subscribe(channel, wake)
                        subscribed = True
                    loaded = None if skip_read else await store.load(flow_id)
                except (*UNAVAILABLE, TimeoutError) as error:
                    if not outage:
                        outage = True
                        _log.warning(
                            "Redis cannot be reached (%s); result() of flow %s waits for it", error, shorten(flow_id)
                        )
                    wait = _OUTAGE_RECHECK
                else:
                    if outage:
                        outage = False
                        _log.info("Redis is reachable again: result() of flow %s goes on waiting", shorten(flow_id))
                    if skip_read:
                        skip_read = False
                    elif loaded is None:
                        raise FlowNotFoundError(flow_id)
                    else:
                        state = decode_state(flow_id, loaded[0])
                        if state.status.is_terminal:
                            return state
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise TimeoutError(f"Flow '{flow_id}' did not end within {timeout:g}s")
                    wait = min(wait, remaining)
                await woken.wait(wait)
                if announced:
                    with contextlib.suppress(CorruptFlowError):  # not Plait's message: the next read decides
                        state = decode_state(flow_id, announced.pop())
                        if state.status.is_terminal:
                            return state
        finally:
            self._waiters.discard(woken)
            if followed:
                assert ends is not None
                ends.forget(flow_id)
            elif subscribed:
                await notifier.unsubscribe(channel, wake)
