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
  and an idle worker sends about 3 commands a second, its reconciler's scan included (see BENCHMARKS.md for
  both measured against raw arq). An arq ``Worker`` pointed at these queues would see jobs it can decode but
  functions it does not know; the format is arq's so that arq's tools can inspect them. Swapping arq out means
  rewriting :mod:`~plait.providers.arq._keys` (the job format) and the queue parts of
  :mod:`~plait.providers.arq._store`.
* **One commit per event.** A worker runs a job through the core ``Runner``, hands the event to ``Engine.handle``
  and commits the outcome with one Lua compare-and-set on the flow's version (see ``_store``): new state, jobs
  to enqueue, job finished, cancellations, end-of-flow announcement. Job ids are deterministic
  (``<prefix>:{<flow>}:step:<name>:<attempt>``), so a job is created once and a duplicate event changes nothing.
  When the engine answers with a job that can start now, the same worker keeps it (leased in that commit), so a
  sequential flow costs one commit per step; parallel siblings go through the queue to any worker.
* **Crashes.** Plait runs retries, backoff and timeouts itself (never raising into arq). A claimed job carries
  a lease of ``stall_interval`` seconds, renewed by a heartbeat; any worker's reconciler (one at a time, through
  a short Redis lock) hands jobs whose lease ran out back to their queue, and fires flow timeouts from a
  deadline index (the starting worker also arms a local timer, so timeouts are on time). A crash costs no
  attempt; a handler may run again after a crash (at least once), a completion is recorded once.
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
from collections.abc import Awaitable, Mapping
from dataclasses import replace
from typing import Any, ClassVar, Generic, TypeVar

from arq.connections import ArqRedis
from pydantic import BaseModel

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
    WorkflowDefinition,
    WorkflowNotRegisteredError,
)
from plait.core.engine import Engine, FlowState, build_error
from plait.core.runner import (
    check_flow_id,
    check_same_flow,
    check_timeout,
    new_flow_id,
    prepare_registration,
    validate_data,
)
from plait.core.validation import MAX_PAYLOAD_SIZE, check_max_payload_size
from plait.providers.arq._keys import Job, Keys, decode_state, dumps, shorten
from plait.providers.arq._notify import Notifier
from plait.providers.arq._store import UNAVAILABLE, Store
from plait.providers.arq._worker import Exceptions, Worker, WorkflowRuntime
from plait.providers.arq.settings import ArqSettings

__all__ = ["ArqFlowHandle", "ArqWorkflowProvider"]

D = TypeVar("D", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

_log = logging.getLogger("plait.providers.arq")

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


class _Registration:
    __slots__ = ("definition", "engine", "runtime")

    def __init__(self, definition: WorkflowDefinition[Any, Any], runtime: WorkflowRuntime | None) -> None:
        self.definition = definition
        self.runtime = runtime
        self.engine = runtime.engine if runtime is not None else Engine(definition)


class ArqWorkflowProvider:
    """Runs flows across processes: state in Redis, steps as arq-format jobs, any worker runs any step.

    A process that only starts flows registers definitions without consumers; a process that registered a
    consumer runs that workflow's jobs once started (see ``plait worker``). ``result()`` and ``get_handle()``
    work from any process.

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
        retention: seconds a flow stays queryable after its last change (7 days by default).
        concurrency: jobs of one workflow this process runs at once, unless its registration's
            ``ConsumerOptions.concurrency`` says otherwise (arq's ``max_jobs``, per workflow).
        stop_grace: seconds ``stop()`` lets running jobs finish before handing them back to their queues.
        max_payload_size: the most bytes of JSON a flow's data, a step's output or a signal's payload may take.
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
    ) -> None:
        self.max_payload_size = check_max_payload_size(max_payload_size)
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
        if stall_interval is None:
            raise ValueError("stall_interval must be a number of seconds greater than 0")
        check_timeout(stall_interval, "stall_interval")
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
        self._exceptions = Exceptions()
        self._redis: ArqRedis | None = None
        self._store: Store | None = None
        self._notifier: Notifier | None = None
        self._worker: Worker | None = None
        self._waiters: set[asyncio.Event] = set()
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
            max_payload_size=self.max_payload_size,
        )
        runtime = None
        if runner is not None:
            runtime = WorkflowRuntime(runner, runner.options.concurrency or self.concurrency)
        self._registrations[definition.name] = _Registration(definition, runtime)
        if runtime is not None and self._worker is not None:
            self._worker.add(runtime)

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
                    default_timeout=self.default_timeout,
                    stall_interval=self.stall_interval,
                    stop_grace=self.stop_grace,
                )
                for runtime in runtimes:
                    worker.add(runtime)
                self._redis, self._store, self._notifier, self._worker = redis, store, notifier, worker
                await worker.start()
            except (*UNAVAILABLE, TimeoutError) as error:  # TimeoutError: the cancel channel's subscription
                await self._close()
                raise self._unavailable(error) from error
            except BaseException:
                await self._close()
                raise
            self._started = True

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
                await self._close()

    async def _close(self) -> None:
        notifier, redis = self._notifier, self._redis
        self._worker = self._store = self._notifier = self._redis = None
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
            WorkflowNotRegisteredError: the definition is not registered here (a consumer is not needed).
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
        registration = self._registrations.get(definition.name)
        if registration is None:
            raise WorkflowNotRegisteredError(definition.name, "register the definition (a consumer is optional)")
        flow_id = new_flow_id() if id is None else id
        state = registration.engine.new_state(flow_id, payload, meta=meta, timeout=timeout, now=time.time())
        start = Job("start", definition.name, flow_id)
        existing = await self._reach(
            store.create(flow_id, definition.name, dumps(state.to_dict()), start, state.deadline)
        )
        if existing is not None:
            check_same_flow(decode_state(flow_id, existing), definition.name, payload)
        return ArqFlowHandle(flow_id, self, definition)

    async def get_status(self, flow_id: str) -> FlowStatus:
        """Returns the status of flow ``flow_id``.

        Raises:
            FlowNotFoundError: unknown or expired.
            CorruptFlowError: its stored status cannot be read.
            ProviderUnavailableError: Redis cannot be reached.
        """
        return (await self._status(flow_id))[0]

    async def get_handle(self, flow_id: str) -> ArqFlowHandle[BaseModel]:
        """Returns a handle on flow ``flow_id`` (of any workflow registered here, with or without a consumer).

        Raises:
            FlowNotFoundError: unknown or expired.
            CorruptFlowError: its stored status cannot be read.
            ProviderUnavailableError: Redis cannot be reached.
        """
        _, workflow = await self._status(flow_id)
        registration = self._registrations.get(workflow)
        return ArqFlowHandle(flow_id, self, registration.definition if registration is not None else None)

    async def describe(self, flow_id: str) -> FlowInfo:
        """Returns flow ``flow_id``'s status with each step's fate, whichever process ran them.

        Raises:
            FlowNotFoundError: unknown or expired.
            CorruptFlowError: its stored state cannot be read.
            ProviderUnavailableError: Redis cannot be reached.
        """
        state = await self.get_state(flow_id)
        registration = self._registrations.get(state.workflow)
        return FlowInfo.from_state(state, registration.definition if registration is not None else None)

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

    # -- internals --

    def _running_store(self) -> Store:
        if not self._started or self._store is None:
            raise ProviderNotStartedError("ArqWorkflowProvider is not running: await provider.start() first")
        return self._store

    def _unavailable(self, error: BaseException) -> ProviderUnavailableError:
        reason = str(error) or type(error).__name__
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
        registration = self._registrations.get(workflow)
        if registration is None:
            raise WorkflowNotRegisteredError(workflow, "register its definition to read its result")
        return registration.definition

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
        woken = asyncio.Event()

        def wake(_: bytes) -> None:
            woken.set()

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        subscribed = outage = False
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
                    loaded = await store.load(flow_id)
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
                    if loaded is None:
                        raise FlowNotFoundError(flow_id)
                    state = decode_state(flow_id, loaded[0])
                    if state.status.is_terminal:
                        return state
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise TimeoutError(f"Flow '{flow_id}' did not end within {timeout:g}s")
                    wait = min(wait, remaining)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), wait)
                woken.clear()
        finally:
            self._waiters.discard(woken)
            if subscribed:
                await notifier.unsubscribe(channel, wake)
