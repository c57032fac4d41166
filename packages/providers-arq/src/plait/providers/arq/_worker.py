"""Running a process's consumers: claim jobs, run them through the core runner, commit what the engine decides.

One loop per workflow claims due jobs (up to the workflow's concurrency) and blocks on the workflow's wake-up
list when there are none. Each claimed job runs in a task; when the engine answers with a job that can start at
once, the same task runs it too, leased to this process in the same commit (a sequential flow costs one commit
per step and no queue round trip). The others go to the queues, where any worker picks them up.

Leases: a claimed job is leased until now + ``stall_interval``; a heartbeat extends every lease this process holds
three times per interval. A reconciler (any worker, one at a time through a short lock) hands jobs whose lease
ran out back to their queue and fires the timeouts of flows past their deadline; the process that starts a flow
also arms a local timer for its deadline, so timeouts are on time while the reconciler covers crashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.exceptions import RedisError

from plait.core.engine import (
    Action,
    CancelRunning,
    CompleteFailed,
    Engine,
    Event,
    Finish,
    FlowState,
    RollbackFailed,
    RunRollback,
    RunStep,
    StepFailed,
    TimedOut,
    build_error,
)
from plait.core.handle import FlowStatus
from plait.core.runner import FlowView, Runner, resolve_timeout
from plait.providers.arq._keys import Job, Keys, dumps, loads
from plait.providers.arq._notify import Notifier
from plait.providers.arq._store import Claimed, Conflict, Enqueue, Store

__all__ = ["Exceptions", "Worker", "WorkflowRuntime"]

T = TypeVar("T")

_log = logging.getLogger("plait.providers.arq")

_IDLE_WAIT = 10.0  # seconds an idle workflow loop blocks on its wake-up list before it looks again
_REDIS_ERRORS = (RedisError, OSError)


class Exceptions:
    """The exception objects of failures that happened in this process, for the flows' errors.

    A flow's error is rebuilt from its state; where the failure happened in this process, its cause is the very
    exception object (as in-process), else a ``RemoteError``. An entry is used only if it matches what the state
    recorded (type and message), so a stale attempt's exception never stands in for a later one.
    """

    __slots__ = ("_flows", "_limit")

    def __init__(self, limit: int = 512) -> None:
        self._flows: OrderedDict[str, dict[tuple[str, str | None], tuple[BaseException, Mapping[str, Any]]]] = (
            OrderedDict()
        )
        self._limit = limit

    def record(
        self, flow_id: str, key: tuple[str, str | None], error: BaseException, record: Mapping[str, Any]
    ) -> None:
        """Remembers ``error`` (recorded as ``record``) for flow ``flow_id``."""
        flows = self._flows
        entry = flows.get(flow_id)
        if entry is None:
            entry = flows[flow_id] = {}
            if len(flows) > self._limit:
                flows.popitem(last=False)
        else:
            flows.move_to_end(flow_id)
        entry[key] = (error, record)

    def matching(self, state: FlowState) -> dict[tuple[str, str | None], BaseException]:
        """The remembered exceptions that are the ones ``state`` records."""
        entry = self._flows.get(state.flow_id)
        if not entry:
            return {}
        recorded: dict[tuple[str, str | None], Mapping[str, Any]] = {}
        if state.error is not None and state.error.get("kind") in ("step", "complete"):
            kind = state.error["kind"]
            recorded[kind, state.error["step"] if kind == "step" else None] = state.error
        for failure in state.rollback_errors:
            recorded["rollback", failure["step"]] = failure
        found: dict[tuple[str, str | None], BaseException] = {}
        for key, (error, record) in entry.items():
            seen = recorded.get(key)
            if seen is not None and (seen.get("type"), seen.get("message")) == (record["type"], record["message"]):
                found[key] = error
        return found


@dataclass(eq=False, slots=True)
class WorkflowRuntime:
    """One workflow whose consumer runs in this process."""

    runner: Runner[Any, Any]
    capacity: int
    busy: int = 0
    freed: asyncio.Event = field(default_factory=asyncio.Event)
    loop: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        """The workflow's name."""
        return self.runner.definition.name

    @property
    def engine(self) -> Engine:
        """The workflow's engine."""
        return self.runner.engine


@dataclass(eq=False, slots=True)
class _Flow:
    """A flow's state as this worker last read or wrote it: its version and its exact JSON."""

    state: FlowState
    version: str
    raw: bytes

    @classmethod
    def parse(cls, raw: bytes, version: str) -> _Flow:
        return cls(FlowState.from_dict(loads(raw)), version, raw)


class Worker:
    """Runs the jobs of the workflows registered with a consumer in this process.

    Args:
        store: Redis operations.
        notifier: pub/sub, for cancellations.
        exceptions: where failures of this process are remembered.
        owner: this process's id in locks and logs.
        default_timeout: the provider's flow timeout when neither ``execute()`` nor the registration sets one.
        stall_interval: seconds after which a job whose worker stopped renewing its lease runs elsewhere.
        stop_grace: seconds ``stop()`` lets running jobs finish before it hands them back.
    """

    def __init__(
        self,
        store: Store,
        notifier: Notifier,
        exceptions: Exceptions,
        *,
        owner: str,
        default_timeout: float | None,
        stall_interval: float,
        stop_grace: float,
    ) -> None:
        self.store = store
        self.keys: Keys = store.keys
        self.notifier = notifier
        self.exceptions = exceptions
        self.owner = owner
        self.default_timeout = default_timeout
        self.stall_interval = stall_interval
        self.stop_grace = stop_grace
        # A stalled job runs again within stall_interval + reconcile_interval; scanning more often than that
        # buys little, since the local timers already fire timeouts on time.
        self.reconcile_interval = min(5.0, max(0.1, stall_interval / 2))
        self.runtimes: dict[str, WorkflowRuntime] = {}
        self._owned: dict[str, Job] = {}  # jobs whose lease this process holds
        self._running: dict[str, asyncio.Task[None]] = {}  # job id -> the task running it right now
        self._cancelled: set[str] = set()  # job ids the engine cancelled while they ran here
        self._chains: set[asyncio.Task[None]] = set()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._services: list[asyncio.Task[None]] = []
        self._started = False
        self._stopping = False

    # -- lifecycle --

    def add(self, runtime: WorkflowRuntime) -> None:
        """Adds a workflow; it runs from :meth:`start`, or at once if the worker runs already."""
        self.runtimes[runtime.name] = runtime
        if self._started and not self._stopping:
            self._background_task(self._activate())

    async def start(self) -> None:
        """Starts running the workflows added so far (and those added later); a worker without any stays idle."""
        self._started = True
        self._stopping = False
        if self.runtimes:
            await self._activate()

    async def _activate(self) -> None:
        """Subscribes to cancellations, then starts the workflow loops, the heartbeat and the reconciler."""
        if not self._services:
            self._services = [
                asyncio.create_task(self._heartbeat(), name="plait-arq-heartbeat"),
                asyncio.create_task(self._reconciler(), name="plait-arq-reconciler"),
            ]
            await self.notifier.subscribe(self.keys.cancel, self._on_cancel)
        if self._stopping:
            return
        for runtime in self.runtimes.values():
            if runtime.loop is None:
                runtime.loop = asyncio.create_task(self._loop(runtime), name=f"plait-arq-{runtime.name}")

    async def stop(self) -> None:
        """Stops claiming, lets running jobs finish within the grace period, then hands the rest back."""
        if not self._started:
            return
        self._stopping = True
        loops = [r.loop for r in self.runtimes.values() if r.loop is not None]
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for runtime in self.runtimes.values():
            runtime.loop = None
        if self._chains:
            await asyncio.wait(set(self._chains), timeout=self.stop_grace)
        chains = set(self._chains)
        for task in chains:
            task.cancel()
        await asyncio.gather(*chains, return_exceptions=True)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        background = set(self._background)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        # Commits and claims run shielded: let them land, so that what this process owns is known exactly.
        await asyncio.gather(*set(self._inflight), return_exceptions=True)
        if self._owned:
            _log.info("Handing %d unfinished job(s) back to their queues", len(self._owned))
            try:
                await self.store.release(dict(self._owned), hand_back=True)
            except _REDIS_ERRORS:
                _log.exception("Could not hand jobs back; they run again once their leases expire")
            self._owned.clear()
        for task in self._services:
            task.cancel()
        await asyncio.gather(*self._services, return_exceptions=True)
        self._services = []
        await self.notifier.unsubscribe(self.keys.cancel, self._on_cancel)
        self._started = False

    # -- claiming --

    async def _loop(self, runtime: WorkflowRuntime) -> None:
        store = self.store
        while True:
            free = runtime.capacity - runtime.busy
            if free <= 0:
                runtime.freed.clear()
                await runtime.freed.wait()
                continue
            try:
                claimed, due = await self._guarded(self._claim(runtime, free))
            except _REDIS_ERRORS as error:
                _log.warning("Claiming jobs of '%s' failed (%s); retrying", runtime.name, error)
                await asyncio.sleep(1.0)
                continue
            for each in claimed:
                self._spawn(runtime, each)
            if len(claimed) == free:
                continue  # there may be more: claim again once a slot is free
            wait = _IDLE_WAIT if due is None else min(_IDLE_WAIT, due - time.time())
            if wait <= 0.001:
                continue
            try:
                await store.wait_for_work(runtime.name, wait)
            except _REDIS_ERRORS as error:
                _log.warning("Waiting for jobs of '%s' failed (%s); retrying", runtime.name, error)
                await asyncio.sleep(1.0)

    async def _claim(self, runtime: WorkflowRuntime, limit: int) -> tuple[list[Claimed], float | None]:
        claimed, due = await self.store.claim(runtime.name, limit)
        for each in claimed:
            self._owned[each.job_id] = each.job
        return claimed, due

    def _spawn(self, runtime: WorkflowRuntime, claimed: Claimed) -> None:
        runtime.busy += 1
        task = asyncio.create_task(self._chain(runtime, claimed), name=f"plait-arq-job-{claimed.job_id}")
        self._chains.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._chains.discard(finished)
            runtime.busy -= 1
            runtime.freed.set()

        task.add_done_callback(done)

    # -- running jobs --

    async def _chain(self, runtime: WorkflowRuntime, claimed: Claimed) -> None:
        """Runs a claimed job, then each job the engine lets this task continue with."""
        job_id, job = claimed.job_id, claimed.job
        if claimed.state is None or claimed.version is None:
            await self._drop(job_id, job)
            return
        flow = _Flow.parse(claimed.state, claimed.version)
        view = runtime.runner.view(flow.state)
        current = asyncio.current_task()
        assert current is not None
        while True:
            self._running[job_id] = current
            try:
                following = await self._run(runtime, flow, view, job_id, job)
            except asyncio.CancelledError:
                if job_id not in self._cancelled:
                    raise  # the worker is stopping: stop() hands the job back
                current.uncancel()
                await self._drop(job_id, job)
                return
            except Exception:
                _log.exception("Internal error running job %s; handing it back", job_id)
                await self._give_up(job_id, job)
                return
            finally:
                self._running.pop(job_id, None)
                if job_id in self._cancelled:
                    self._cancelled.discard(job_id)
                    if current.cancelling():
                        current.uncancel()  # a handler swallowed the cancellation and finished anyway
            if following is None:
                return
            job, job_id = following, self.keys.job_id(following)

    async def _run(
        self, runtime: WorkflowRuntime, flow: _Flow, view: FlowView[Any], job_id: str, job: Job
    ) -> Job | None:
        engine = runtime.engine
        current = engine.startable(flow.state) if job.kind == "start" else engine.expects(flow.state, job.action())
        if not current:
            await self._drop(job_id, job)
            return None
        event: Event | None = None
        if job.kind != "start":
            event = await self._perform(runtime, view, job)
        return await self._advance(runtime, flow, view, event, finished=(job_id, job))

    async def _perform(self, runtime: WorkflowRuntime, view: FlowView[Any], job: Job) -> Event:
        runner = runtime.runner
        flow_id = view.state.flow_id
        if job.kind == "step":
            step_event = await runner.run_step(view, job.step, job.attempt)
            if isinstance(step_event, StepFailed) and step_event.exception is not None:
                self.exceptions.record(flow_id, ("step", job.step), step_event.exception, step_event.error)
            return step_event
        if job.kind == "rollback":
            rollback_event = await runner.run_rollback(view, job.step, job.attempt)
            if isinstance(rollback_event, RollbackFailed) and rollback_event.exception is not None:
                self.exceptions.record(flow_id, ("rollback", job.step), rollback_event.exception, rollback_event.error)
            return rollback_event
        if job.kind == "complete":
            complete_event = await runner.run_complete(view)
            if isinstance(complete_event, CompleteFailed) and complete_event.exception is not None:
                self.exceptions.record(flow_id, ("complete", None), complete_event.exception, complete_event.error)
            return complete_event
        view.exceptions = self.exceptions.matching(view.state)
        return await runner.run_on_error(view)

    async def _advance(
        self,
        runtime: WorkflowRuntime,
        flow: _Flow,
        view: FlowView[Any],
        event: Event | None,
        *,
        finished: tuple[str, Job] | None,
        timed_out: bool = False,
    ) -> Job | None:
        """Applies ``event`` (``None``: start the flow) and commits; retries on a lost race.

        Returns:
            The job this task should run next, already leased to this process, or ``None``.
        """
        engine = runtime.engine
        finished_id = finished[0] if finished is not None else None
        while True:
            state = flow.state
            if event is None:
                state, actions = self._start(runtime, state)
            else:
                actions = engine.handle(state, event)
            if any(isinstance(action, Finish) for action in actions):
                state.finished_at = time.time()
            raw = dumps(state.to_dict())
            if raw == flow.raw:
                # The event changed nothing (a duplicate, or the flow moved on): just let the job go.
                if finished is not None:
                    await self._drop(*finished)
                if timed_out:
                    await self.store.forget_deadline(runtime.name, state.flow_id)
                return None
            plan = self._plan(runtime, state, actions, allow_local=finished is not None and not self._stopping)
            started_deadline = state.deadline if event is None else None
            conflict = await self._commit(
                runtime, flow.version, state, raw, plan, finished_id, started_deadline, timed_out or plan.done
            )
            if conflict is None:
                flow.state, flow.raw, flow.version = state, raw, str(int(flow.version) + 1)
                view.state = state
                self._after_commit(runtime, state, plan, started_deadline)
                return plan.local
            if conflict.state is None or conflict.version is None:
                _log.warning("Flow %s disappeared (expired or deleted); dropping its job", state.flow_id)
                if finished is not None:
                    await self._drop(*finished)
                return None
            fresh = _Flow.parse(conflict.state, conflict.version)
            flow.state, flow.raw, flow.version = fresh.state, fresh.raw, fresh.version
            view.state = fresh.state

    def _start(self, runtime: WorkflowRuntime, state: FlowState) -> tuple[FlowState, list[Action]]:
        # execute() may have given no timeout: then the registration's, else this provider's default applies.
        default_timeout = resolve_timeout(runtime.runner.options.timeout, self.default_timeout)
        return state, runtime.engine.start(state, default_timeout=default_timeout)

    def _plan(self, runtime: WorkflowRuntime, state: FlowState, actions: list[Action], *, allow_local: bool) -> _Plan:
        plan = _Plan()
        keys = self.keys
        for action in actions:
            if isinstance(action, Finish):
                plan.done = True
            elif isinstance(action, CancelRunning):
                for step in action.steps:
                    attempt = int(state.steps[step]["attempt"])
                    plan.cancelled.append(keys.job_id(Job("step", runtime.name, state.flow_id, step, attempt)))
                if action.complete:
                    plan.cancelled.append(keys.job_id(Job("complete", runtime.name, state.flow_id)))
            else:
                job = Job.for_action(runtime.name, state.flow_id, action)
                delay = action.delay if isinstance(action, (RunStep, RunRollback)) else 0.0
                if allow_local and plan.local is None and delay <= 0:
                    plan.local = job
                    plan.jobs.append(Enqueue(job, local=True))
                else:
                    plan.jobs.append(Enqueue(job, delay))
        return plan

    async def _commit(
        self,
        runtime: WorkflowRuntime,
        version: str,
        state: FlowState,
        raw: bytes,
        plan: _Plan,
        finished_id: str | None,
        deadline: float | None,
        forget_deadline: bool,
    ) -> Conflict | None:
        async def commit() -> Conflict | None:
            conflict = await self.store.commit(
                state.flow_id,
                runtime.name,
                version,
                raw,
                state.status.value,
                finished=finished_id,
                deadline=deadline,
                forget_deadline=forget_deadline,
                done=plan.done,
                cancelled=plan.cancelled,
                jobs=plan.jobs,
            )
            if conflict is None:
                if finished_id is not None:
                    self._owned.pop(finished_id, None)
                if plan.local is not None:
                    self._owned[self.keys.job_id(plan.local)] = plan.local
            return conflict

        delay = 0.2
        while True:
            try:
                return await self._guarded(commit())
            except _REDIS_ERRORS as error:
                if delay > self.stall_interval:
                    raise
                _log.warning("Committing flow %s failed (%s); retrying", state.flow_id, error)
                await asyncio.sleep(delay)
                delay *= 2

    def _after_commit(self, runtime: WorkflowRuntime, state: FlowState, plan: _Plan, deadline: float | None) -> None:
        current = asyncio.current_task()
        for job_id in plan.cancelled:
            task = self._running.get(job_id)
            if task is not None and task is not current and job_id not in self._cancelled:
                self._cancelled.add(job_id)
                task.cancel()
        flow_id = state.flow_id
        if plan.done:
            timer = self._timers.pop(flow_id, None)
            if timer is not None:
                timer.cancel()
            if state.status != FlowStatus.COMPLETED:
                error = build_error(state, self.exceptions.matching(state))
                _log.warning("Flow %s of workflow '%s' ended %s: %s", flow_id, state.workflow, state.status, error)
        elif deadline is not None and flow_id not in self._timers:
            delay = max(0.0, deadline - time.time())
            self._timers[flow_id] = asyncio.get_running_loop().call_later(delay, self._timer_fired, runtime, flow_id)

    # -- timeouts --

    def _timer_fired(self, runtime: WorkflowRuntime, flow_id: str) -> None:
        self._timers.pop(flow_id, None)
        self._background_task(self._time_out(runtime, flow_id))

    def _background_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _time_out(self, runtime: WorkflowRuntime, flow_id: str) -> None:
        """Hands ``TimedOut`` to the engine for a flow whose deadline has passed."""
        try:
            loaded = await self.store.load(flow_id)
            if loaded is None:
                await self.store.forget_deadline(runtime.name, flow_id)
                return
            flow = _Flow.parse(*loaded)
            state = flow.state
            if state.deadline is not None and state.deadline > time.time() + 0.001 and not state.status.is_terminal:
                # Not yet due (a deadline moved by the start): look again then.
                self._timers[flow_id] = asyncio.get_running_loop().call_later(
                    state.deadline - time.time(), self._timer_fired, runtime, flow_id
                )
                return
            view = runtime.runner.view(state)
            await self._advance(runtime, flow, view, TimedOut(), finished=None, timed_out=True)
        except _REDIS_ERRORS as error:
            _log.warning("Timing out flow %s failed (%s); the reconciler tries again", flow_id, error)
        except Exception:
            _log.exception("Internal error timing out flow %s", flow_id)

    # -- leases --

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.stall_interval / 3)
            if not self._owned:
                continue
            try:
                await self.store.heartbeat(list(self._owned))
            except _REDIS_ERRORS as error:
                _log.warning("Heartbeat failed (%s); leases may run out", error)

    async def _reconciler(self) -> None:
        while True:
            await asyncio.sleep(self.reconcile_interval)
            names = [name for name, runtime in self.runtimes.items()]
            try:
                requeued, overdue = await self.store.reconcile(names, self.owner, self.reconcile_interval)
            except _REDIS_ERRORS as error:
                _log.warning("Reconciler scan failed (%s)", error)
                continue
            if requeued:
                _log.warning("Handed %d stalled job(s) back to their queues", requeued)
            for name, flow_ids in overdue.items():
                runtime = self.runtimes.get(name)
                if runtime is None:
                    continue
                for flow_id in flow_ids:
                    self._background_task(self._time_out(runtime, flow_id))

    async def _drop(self, job_id: str, job: Job) -> None:
        """Ends the lease of a job that is not needed any more, and deletes it."""

        async def drop() -> None:
            await self.store.release({job_id: job}, hand_back=False)
            self._owned.pop(job_id, None)

        try:
            await self._guarded(drop())
        except _REDIS_ERRORS as error:
            _log.warning("Releasing job %s failed (%s); its lease runs out instead", job_id, error)
            self._owned.pop(job_id, None)

    async def _give_up(self, job_id: str, job: Job) -> None:
        self._owned.pop(job_id, None)  # no more heartbeats: if the hand-back fails, the lease runs out
        with contextlib.suppress(*_REDIS_ERRORS):
            # Later, not now: a job that trips a bug would otherwise spin through the workers.
            await self.store.release({job_id: job}, hand_back=True, delay=self.stall_interval)

    def _on_cancel(self, data: bytes) -> None:
        for job_id in data.decode().split("\n"):
            task = self._running.get(job_id)
            if task is not None and job_id not in self._cancelled:
                self._cancelled.add(job_id)
                task.cancel()

    async def _guarded(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs ``coro`` to its end even if the caller is cancelled: a lease must never be half-known."""
        task = asyncio.create_task(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)


@dataclass(eq=False, slots=True)
class _Plan:
    """What one commit does besides writing the state."""

    jobs: list[Enqueue] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    local: Job | None = None
    done: bool = False
