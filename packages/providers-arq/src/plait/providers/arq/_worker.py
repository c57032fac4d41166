"""Running a process's consumers: claim jobs, run them through the core runner, commit what the engine decides.

One loop per workflow claims due jobs (up to the workflow's concurrency) and blocks on the workflow's wake-up
list when there are none. Each claimed job runs in a task; when the engine answers with a job that can start at
once, the same task runs it too, leased to this process in the same commit (a sequential flow costs one commit
per step and no queue round trip). The others go to the queues, where any worker picks them up.

Leases: a claimed job is leased to this process for ``stall_interval`` seconds, renewed by a heartbeat; a job
whose lease this process loses has its handler cancelled at once (see ``_leases``). A reconciler (any worker,
one at a time through a short lock) hands jobs whose lease ran out back to their queue and fires the timeouts of
flows past their deadline; the process that starts a flow also arms a local timer for its deadline, so timeouts
are on time while the reconciler covers crashes.

What must never stop a worker: a job that is not one of Plait's is dropped with a log line naming it and why; a
flow whose state cannot be read is failed once (see ``fail_unreadable.lua``); a handler raising any
``BaseException`` fails its attempt (the core runner), and whatever else escapes a job is logged and the job
handed back; a Redis outage is one WARNING, and every loop retries until Redis is back.
"""

from __future__ import annotations

import asyncio
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
    ErrorRecord,
    Event,
    Finish,
    FlowState,
    RollbackFailed,
    RunRollback,
    RunStep,
    StepFailed,
    TimedOut,
    Unrunnable,
    build_error,
)
from plait.core.errors import CorruptFlowError
from plait.core.handle import FlowStatus
from plait.core.runner import FlowView, Runner, resolve_timeout
from plait.providers.arq._keys import Job, Keys, decode_state, dumps, loads, shorten
from plait.providers.arq._leases import Leases
from plait.providers.arq._notify import Notifier
from plait.providers.arq._store import UNAVAILABLE, Claimed, Conflict, Enqueue, Outage, Store

__all__ = ["Exceptions", "Worker", "WorkflowRuntime"]

T = TypeVar("T")

_log = logging.getLogger("plait.providers.arq")

_IDLE_WAIT = 10.0  # seconds an idle workflow loop blocks on its wake-up list before it looks again
_RETRY = 1.0  # seconds a loop waits before it tries Redis again
_REDIS_ERRORS = (RedisError, OSError)
_CORRUPT = f"{CorruptFlowError.__module__}.{CorruptFlowError.__qualname__}"


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


class _UnreadableState(Exception):
    """A flow's stored state (or its version) cannot be read: the flow is failed once, never retried."""

    def __init__(self, flow_id: str, raw: bytes, reason: str) -> None:
        self.flow_id = flow_id
        self.raw = raw
        self.reason = reason
        super().__init__(f"Flow {shorten(flow_id)} has unreadable state: {reason}")


class _LeaseRanOut(Exception):
    """Redis stayed unreachable until the lease of the job being committed ran out: another worker runs it."""


@dataclass(eq=False, slots=True)
class _Flow:
    """A flow's state as this worker last read or wrote it: its version and its exact JSON."""

    state: FlowState
    version: str
    raw: bytes

    @classmethod
    def read(cls, flow_id: str, raw: bytes, version: bytes | None) -> _Flow:
        """Reads a stored state and version.

        Raises:
            _UnreadableState: either cannot be read.
        """
        try:
            state = decode_state(flow_id, raw)
        except CorruptFlowError as error:
            raise _UnreadableState(flow_id, raw, error.reason) from None
        if version is None or not version.isdigit():
            raise _UnreadableState(flow_id, raw, f"its version {shorten(version)} is not a number")
        return cls(state, version.decode(), raw)


class Worker:
    """Runs the jobs of the workflows registered with a consumer in this process.

    Args:
        store: Redis operations; its ``owner`` names this process in leases, locks and logs.
        notifier: pub/sub, for cancellations.
        exceptions: where failures of this process are remembered.
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
        default_timeout: float | None,
        stall_interval: float,
        stop_grace: float,
    ) -> None:
        self.store = store
        self.keys: Keys = store.keys
        self.notifier = notifier
        self.exceptions = exceptions
        self.default_timeout = default_timeout
        self.stall_interval = stall_interval
        self.stop_grace = stop_grace
        # A stalled job runs again within stall_interval + reconcile_interval; scanning more often than that
        # buys little, since the local timers already fire timeouts on time.
        self.reconcile_interval = min(5.0, max(0.1, stall_interval / 2))
        self.runtimes: dict[str, WorkflowRuntime] = {}
        self._outage = Outage()
        self.leases = Leases(store, self._outage, stall_interval)
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
        self.leases.stopped = False
        if self.runtimes:
            await self._activate()

    async def _activate(self) -> None:
        """Subscribes to cancellations, then starts the workflow loops, the heartbeat and the reconciler."""
        if not self._services:
            self._services = [
                asyncio.create_task(self.leases.renew_forever(), name="plait-arq-heartbeat"),
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
        self.leases.stop()
        background = set(self._background)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        # Commits and claims run shielded: let them land, so that what this process owns is known exactly.
        await asyncio.gather(*set(self._inflight), return_exceptions=True)
        owned = self.leases.owned
        if owned:
            _log.info("Handing %d unfinished job(s) back to their queues", len(owned))
            try:
                await self.store.release(list(owned), hand_back=True)
            except _REDIS_ERRORS as error:
                _log.warning("Could not hand jobs back (%s); they run again once their leases run out", error)
            self.leases.clear()
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
                self._outage.failed(f"claiming jobs of '{runtime.name}'", error)
                await asyncio.sleep(_RETRY)
                continue
            except Exception:
                # A bug, not bad data (jobs are checked one by one): the loop must go on all the same.
                _log.exception("Internal error claiming jobs of '%s'; retrying", runtime.name)
                await asyncio.sleep(_RETRY)
                continue
            self._outage.over()
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
                self._outage.failed(f"waiting for jobs of '{runtime.name}'", error)
                await asyncio.sleep(_RETRY)

    async def _claim(self, runtime: WorkflowRuntime, limit: int) -> tuple[list[Claimed], float | None]:
        sent = asyncio.get_running_loop().time()
        claimed, rejected, due = await self.store.claim(runtime.name, limit)
        for each in claimed:
            self.leases.own(each.job_id, each.job, sent)
        for bad in rejected:
            _log.warning("Dropped job %s from the queues of '%s': %s", bad.name, runtime.name, bad.reason)
        leased = [bad for bad in rejected if bad.leased]
        if leased:
            try:
                await self.store.release([bad.job_id for bad in leased if not bad.misplaced], hand_back=False)
                await self.store.release([bad.job_id for bad in leased if bad.misplaced], hand_back=False, leave=True)
            except _REDIS_ERRORS as error:
                # The claimed jobs are this process's now: a failure here must not lose them.
                _log.warning(
                    "Could not drop %d job(s) (%s); they come back when their leases run out", len(leased), error
                )
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
        current = asyncio.current_task()
        assert current is not None
        try:
            if claimed.state is None:
                await self._drop(job_id)  # the flow expired or was deleted
                return
            flow = _Flow.read(job.flow_id, claimed.state, claimed.version)
            view = runtime.runner.view(flow.state)
            while True:
                if self.leases.lost(job_id):
                    self.leases.disown(job_id)
                    return
                try:
                    following = await self._run(runtime, flow, view, job_id, job)
                except asyncio.CancelledError:
                    if self.leases.lost(job_id):
                        current.uncancel()  # the watchdog or the heartbeat cancelled it, and said so
                        self.leases.disown(job_id)
                        return
                    if job_id not in self._cancelled:
                        raise  # the worker is stopping: stop() hands the job back
                    current.uncancel()
                    await self._drop(job_id)
                    return
                finally:
                    if job_id in self._cancelled or self.leases.lost(job_id):
                        self._cancelled.discard(job_id)
                        if current.cancelling():
                            # A handler swallowed the cancellation and finished anyway: its event is committed
                            # like any other (a compare-and-set), and the next handler must not inherit it.
                            current.uncancel()
                if following is None:
                    return
                job, job_id = following, self.keys.job_id(following)
        except _UnreadableState as unreadable:
            await self._fail_unreadable(runtime, unreadable, finished=job_id)
        except _LeaseRanOut:
            _log.warning(
                "Gave up committing job %s: Redis stayed unreachable until its lease ran out; it runs again elsewhere",
                shorten(job_id),
            )
            self.leases.disown(job_id)
        except UNAVAILABLE as error:
            self._outage.failed(f"running job {shorten(job_id)}", error)
            self.leases.disown(job_id)  # no more heartbeats: its lease runs out and it runs again
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError) and current.cancelling():
                raise
            # Whatever escapes (a bug, or a BaseException from code the runner does not guard, such as a model's
            # validator) must not end this task silently, let alone the process.
            _log.error("Internal error running job %s; handing it back", shorten(job_id), exc_info=error)
            await self._give_up(job_id)

    async def _run(
        self, runtime: WorkflowRuntime, flow: _Flow, view: FlowView[Any], job_id: str, job: Job
    ) -> Job | None:
        engine = runtime.engine
        current = engine.startable(flow.state) if job.kind == "start" else engine.expects(flow.state, job.action())
        if not current:
            await self._drop(job_id)
            return None
        event: Event | None = None
        if job.kind != "start":
            task = asyncio.current_task()
            assert task is not None
            self.leases.performing(job_id, task)
            try:
                event = await self._perform(runtime, view, job)
            finally:
                self.leases.performed(job_id)
        return await self._advance(runtime, flow, view, event, finished=job_id)

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
        finished: str | None,
        timed_out: bool = False,
    ) -> Job | None:
        """Applies ``event`` (``None``: start the flow) and commits; retries on a lost race.

        Returns:
            The job this task should run next, already leased to this process, or ``None``.

        Raises:
            _UnreadableState: the state a lost race returned cannot be read.
            _LeaseRanOut: Redis stayed unreachable until the finished job's lease ran out.
        """
        engine = runtime.engine
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
                    await self._drop(finished)
                if timed_out:
                    await self.store.forget_deadline(runtime.name, state.flow_id)
                return None
            plan = self._plan(runtime, state, actions, allow_local=finished is not None and not self._stopping)
            started_deadline = state.deadline if event is None else None
            conflict = await self._commit(
                runtime, flow.version, state, raw, plan, finished, started_deadline, timed_out or plan.done
            )
            if conflict is None:
                flow.state, flow.raw, flow.version = state, raw, str(int(flow.version) + 1)
                view.state = state
                self._after_commit(runtime, state, plan, started_deadline)
                return plan.local
            if conflict.state is None:
                _log.warning("Flow %s disappeared (expired or deleted); dropping its job", shorten(state.flow_id))
                if finished is not None:
                    await self._drop(finished)
                return None
            fresh = _Flow.read(state.flow_id, conflict.state, conflict.version)
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
        loop = asyncio.get_running_loop()

        async def commit() -> Conflict | None:
            sent = loop.time()
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
                    self.leases.disown(finished_id)
                if plan.local is not None:
                    self.leases.own(self.keys.job_id(plan.local), plan.local, sent)
            return conflict

        # An outage: retry while the job is still this process's, so that its work is not lost; past its lease
        # another worker runs it again anyway. A commit without a job (a timeout) retries one stall interval.
        give_up_at = loop.time() + self.stall_interval
        delay = 0.1
        while True:
            try:
                return await self._guarded(commit())
            except UNAVAILABLE as error:
                self._outage.failed(f"committing flow {shorten(state.flow_id)}", error)
                now = loop.time()
                if finished_id is not None:
                    give_up_at = self.leases.end(finished_id) or now
                    if self.leases.lost(finished_id) or now + delay >= give_up_at:
                        raise _LeaseRanOut() from None
                elif now + delay >= give_up_at:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _after_commit(self, runtime: WorkflowRuntime, state: FlowState, plan: _Plan, deadline: float | None) -> None:
        current = asyncio.current_task()
        for job_id in plan.cancelled:
            task = self.leases.handler(job_id)
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
                _log.warning(
                    "Flow %s of workflow '%s' ended %s: %s", shorten(flow_id), state.workflow, state.status, error
                )
        elif deadline is not None and flow_id not in self._timers:
            delay = max(0.0, deadline - time.time())
            self._timers[flow_id] = asyncio.get_running_loop().call_later(delay, self._timer_fired, runtime, flow_id)

    async def _fail_unreadable(
        self, runtime: WorkflowRuntime, found: _UnreadableState, *, finished: str | None
    ) -> None:
        """Fails a flow whose state cannot be read, once, through the engine's ``Unrunnable`` event."""
        flow_id = found.flow_id
        engine = runtime.engine
        state = engine.new_state(flow_id, None, now=time.time())
        record: ErrorRecord = {
            "type": _CORRUPT,
            "message": f"its stored state cannot be read ({found.reason}); the unreadable bytes are kept in the "
            "field 'unreadable' of its Redis hash",
            "traceback": "",
        }
        engine.handle(state, Unrunnable(record))
        state.finished_at = time.time()
        try:
            failed = await self._guarded(
                self.store.fail_unreadable(
                    flow_id, runtime.name, found.raw, dumps(state.to_dict()), state.status.value, finished=finished
                )
            )
        except _REDIS_ERRORS as error:
            self._outage.failed(f"failing flow {shorten(flow_id)}", error)
            if finished is not None:
                self.leases.disown(finished)  # its lease runs out and whoever claims it next tries again
            return
        if failed:
            if finished is not None:
                self.leases.disown(finished)
            timer = self._timers.pop(flow_id, None)
            if timer is not None:
                timer.cancel()
            _log.error(
                "Flow %s of workflow '%s' has unreadable state (%s): failed it; its bytes are kept in %s, field "
                "'unreadable'",
                shorten(flow_id),
                runtime.name,
                found.reason,
                shorten(self.keys.flow(flow_id)),
            )
        elif finished is not None:
            # It changed meanwhile (repaired, or failed by another worker): let the job run against what is there.
            await self._release(finished, hand_back=True)

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
            flow = _Flow.read(flow_id, *loaded)
            state = flow.state
            if state.deadline is not None and state.deadline > time.time() + 0.001 and not state.status.is_terminal:
                # Not yet due (a deadline moved by the start): look again then.
                self._timers[flow_id] = asyncio.get_running_loop().call_later(
                    state.deadline - time.time(), self._timer_fired, runtime, flow_id
                )
                return
            view = runtime.runner.view(state)
            await self._advance(runtime, flow, view, TimedOut(), finished=None, timed_out=True)
        except _UnreadableState as unreadable:
            await self._fail_unreadable(runtime, unreadable, finished=None)
        except _REDIS_ERRORS as error:
            # The deadline stays in Redis: the reconciler tries again once Redis is back.
            self._outage.failed(f"timing out flow {shorten(flow_id)}", error)
        except Exception:
            _log.exception("Internal error timing out flow %s", shorten(flow_id))

    # -- leases --

    async def _reconciler(self) -> None:
        while True:
            await asyncio.sleep(self.reconcile_interval)
            names = list(self.runtimes)
            try:
                handed_back, dropped, overdue = await self.store.reconcile(names, self.reconcile_interval)
            except _REDIS_ERRORS as error:
                self._outage.failed("scanning for stalled jobs", error)
                continue
            except Exception:
                _log.exception("Internal error scanning for stalled jobs")
                continue
            self._outage.over()
            if handed_back:
                _log.warning("Handed %d stalled job(s) back to their queues", handed_back)
            if dropped:
                _log.warning("Dropped %d stalled lease(s) whose record could not be read", dropped)
            for name, flow_ids in overdue.items():
                runtime = self.runtimes.get(name)
                if runtime is None:
                    continue
                for flow_id in flow_ids:
                    self._background_task(self._time_out(runtime, flow_id))

    async def _drop(self, job_id: str) -> None:
        """Ends the lease of a job that is not needed any more, and deletes it."""
        await self._release(job_id, hand_back=False)

    async def _give_up(self, job_id: str) -> None:
        # Later, not now: a job that trips a bug would otherwise spin through the workers.
        await self._release(job_id, hand_back=True, delay=self.stall_interval)

    async def _release(self, job_id: str, *, hand_back: bool, delay: float = 0.0) -> None:
        try:
            await self._guarded(self.store.release([job_id], hand_back=hand_back, delay=delay))
        except _REDIS_ERRORS as error:
            self._outage.failed(f"releasing job {shorten(job_id)}", error)
        self.leases.disown(job_id)  # if the release failed, the lease runs out instead

    def _on_cancel(self, data: bytes) -> None:
        if not data:
            return  # the notifier's "you may have missed messages": nothing to stop
        try:
            job_ids = loads(data)
        except ValueError:
            job_ids = None
        if not isinstance(job_ids, list):
            _log.warning(
                "Ignored a message on %s that is not a JSON array of job ids: %s", self.keys.cancel, shorten(data)
            )
            return
        for job_id in job_ids:
            # Only a running handler is stopped: a job being committed is settled by its compare-and-set.
            task = self.leases.handler(job_id) if isinstance(job_id, str) else None
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
