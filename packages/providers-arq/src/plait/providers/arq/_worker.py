"""Running a process's consumers, and every change to a flow: claim jobs, run them through the core runner, hand
what happened to the engine, commit what it decides.

One loop per workflow claims due jobs (up to the workflow's concurrency) and blocks on the workflow's wake-up
list when there are none, registered as idle with its free slots: a new flow's start job is then leased
straight to it and pushed to its own list (which it blocks on too), with the flow's state, so that it starts
without a claim. Each claimed job runs in a task; when the engine answers with a job that can start at
once, the same task runs it too, leased to this process in the same commit (a sequential flow costs one commit
per step and no queue round trip). The others go to the queues, where any worker picks them up. The flow's
closing handler (``on_complete``, ``on_error``) runs before the commit of the outcome that asked for it, and goes
in the same commit when it returns without waiting on anything (see :meth:`Worker.advance`).

Every change to a flow goes through :meth:`Worker.advance`: a job's outcome, a timer's tick, and the operations
any process applies (a signal, a cancellation, an undo: :meth:`Worker.apply`). It is a compare-and-set on the
flow's version that writes the state, the for-each items the event changed and the flow's events at once.

Timers: a flow's next wake-up (a sleep's end, a signal's timeout, its deadline) is a score in its workflow's
timers; a loop in each worker takes the due ones about once a second (so a wake-up fires even when every worker
was down at its time), and the process that committed a wake-up also arms a local timer, so it fires on time.

Leases: a claimed job is leased to this process for ``stall_interval`` seconds, renewed by a heartbeat; a job
whose lease this process loses has its handler cancelled at once (see ``_leases``). A reconciler (any worker,
one at a time through a short lock) hands jobs whose lease ran out back to their queue.

What must never stop a worker: a job that is not one of Plait's is dropped with a log line naming it and why; a
flow whose state cannot be read is failed once (see ``fail_unreadable.lua``); a handler raising any
``BaseException`` fails its attempt (the core runner), and whatever else escapes a job is logged and the job
handed back; a Redis outage is one WARNING, and every loop retries until Redis is back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.exceptions import RedisError

from plait.core.engine import (
    Action,
    Cancel,
    ChildSettled,
    Compensate,
    CompleteRaised,
    Engine,
    ErrorRecord,
    Evaluate,
    Event,
    FlowState,
    ItemsNeeded,
    ParentRef,
    Progress,
    RetryCompensation,
    RollbackRaised,
    RunComplete,
    RunOnError,
    StepRaised,
    Tick,
    Unrunnable,
    build_error,
)
from plait.core.errors import CorruptFlowError, FlowNotFoundError, FlowStateError
from plait.core.handle import FlowStatus
from plait.core.hooks import Hooks
from plait.core.runner import FlowView, Runner, correlate, flow_ended
from plait.providers.arq._flows import Exceptions, Plan, StoredFlow, UnreadableState, plan
from plait.providers.arq._keys import Job, Keys, dumps, loads, shorten
from plait.providers.arq._leases import Leases
from plait.providers.arq._notify import Notifier
from plait.providers.arq._store import UNAVAILABLE, Change, Claimed, Conflict, Outage, Rejected, Store

__all__ = ["Worker", "WorkflowRuntime"]

T = TypeVar("T")

_log = logging.getLogger("plait.providers.arq")

_IDLE_WAIT = 10.0  # seconds an idle workflow loop blocks on its wake-up list before it looks again
_TIMER_POLL = 1.0  # seconds between looks at the due timers, at most
_RETRY = 1.0  # seconds a loop waits before it tries Redis again
_TRIM_EVERY = 60.0  # seconds between sweeps of the listing indexes
_REDIS_ERRORS = (RedisError, OSError)
_CORRUPT = f"{CorruptFlowError.__module__}.{CorruptFlowError.__qualname__}"


@dataclass(eq=False, slots=True)
class _FlowLock:
    """One flow's commits in this process: their lock, how many tasks hold or wait for it, and the last state
    this process committed or saw of it (``raw`` and ``version``; ``None`` until then)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    raw: bytes | None = None
    version: str = "0"


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
class _Held:
    """A flow's state with a job's outcome applied but not committed: the engine asked for the flow's closing
    handler (``action``) alone, to be run first (see ``closing`` in :meth:`Worker.advance`)."""

    state: FlowState
    old_status: str
    old_wake: float | None
    action: RunComplete | RunOnError


@dataclass(eq=False, slots=True)
class _Closer:
    """A closing handler started before the commit of the outcome that asked for it (see ``closing`` in
    :meth:`Worker.advance`): its task, and the progress it reported meanwhile."""

    task: asyncio.Task[Event]
    kept: list[Event]


def _closes(actions: Sequence[Action], like: Action | None = None) -> bool:
    """Whether ``actions`` are the flow's closing handler alone (the same as ``like``, if given)."""
    if len(actions) != 1:
        return False
    kind = type(actions[0])
    return kind is type(like) if like is not None else kind in (RunComplete, RunOnError)


class _LeaseRanOut(Exception):
    """Redis stayed unreachable until the lease of the job being committed ran out: another worker runs it."""


class _Gone(Exception):
    """The flow no longer exists (expired or deleted)."""


class Worker:
    """Runs the jobs of the workflows registered with a consumer in this process, and commits every change this
    process makes to a flow.

    Args:
        store: Redis operations; its ``owner`` names this process in leases, locks and logs.
        notifier: pub/sub, for cancellations.
        exceptions: where failures of this process are remembered.
        hooks: the provider's event hooks.
        stall_interval: seconds after which a job whose worker stopped renewing its lease runs elsewhere.
        stop_grace: seconds ``stop()`` lets running jobs finish before it hands them back.
        retention: seconds a flow is kept; the listing indexes are swept of flows older than that.
    """

    def __init__(
        self,
        store: Store,
        notifier: Notifier,
        exceptions: Exceptions,
        hooks: Hooks,
        *,
        stall_interval: float,
        stop_grace: float,
        retention: float,
        record_events: bool = True,
    ) -> None:
        self.store = store
        self.record_events = record_events
        self.keys: Keys = store.keys
        self.notifier = notifier
        self.exceptions = exceptions
        self.hooks = hooks
        self.stall_interval = stall_interval
        self.stop_grace = stop_grace
        self.retention = retention
        # A stalled job runs again within stall_interval + reconcile_interval; scanning more often buys little.
        self.reconcile_interval = min(5.0, max(0.1, stall_interval / 2))
        self.runtimes: dict[str, WorkflowRuntime] = {}
        self.engines: dict[str, Engine] = {}  # engines of workflows known here without a consumer
        self._outage = Outage()
        self.leases = Leases(store, self._outage, stall_interval)
        self._cancelled: set[str] = set()  # job ids the engine cancelled while they ran here
        # Commits of one flow from this process go one at a time, each from the last state this process saw of
        # it: the items of a for-each, finishing together, would otherwise race each other's compare-and-set.
        self._flows: dict[str, _FlowLock] = {}
        self._chains: set[asyncio.Task[None]] = set()
        self._inflight: set[asyncio.Future[Any]] = set()  # commits, claims and releases on their way
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
        """Subscribes to cancellations, then starts the workflow loops, timers, heartbeat and reconciler."""
        if not self._services:
            self._services = [
                asyncio.create_task(self.leases.renew_forever(), name="plait-arq-heartbeat"),
                asyncio.create_task(self._reconciler(), name="plait-arq-reconciler"),
                asyncio.create_task(self._timer_loop(), name="plait-arq-timers"),
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
            try:
                # Start jobs handed to this worker as it waited are its own: they are handed back with the rest.
                await self._take(runtime, await self.store.leave(runtime.name), asyncio.get_running_loop().time())
            except _REDIS_ERRORS as error:
                _log.warning("Could not stop waiting for jobs of '%s' (%s)", runtime.name, error)
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
            if claimed:
                await asyncio.sleep(0)  # the jobs' first steps (their commits on their way) before waiting for more
            await self._wait(runtime, time.time() + (_IDLE_WAIT if due is None else min(_IDLE_WAIT, due - time.time())))

    async def _wait(self, runtime: WorkflowRuntime, until: float) -> None:
        """Waits for work until ``until`` (seconds since the epoch) or a wake-up token. A new flow's start job handed
        to this worker as it waits (leased to it already) starts at once, without a claim of its own, and the
        wait goes on (unless other jobs run here too: see below)."""
        while (wait := until - time.time()) > 0.001 and runtime.busy < runtime.capacity:
            try:
                handed = await self.store.wait_for_work(runtime.name, wait)
            except _REDIS_ERRORS as error:
                self._outage.failed(f"waiting for jobs of '{runtime.name}'", error)
                await asyncio.sleep(_RETRY)
                return
            if handed is None:
                return
            for each in await self._take(runtime, [handed], asyncio.get_running_loop().time()):
                self._spawn(runtime, each)
            if runtime.busy > 1:
                # Busy with other jobs too: starts are coming in a burst. The claim takes all those handed
                # meanwhile in one round trip, rather than one wait each.
                await asyncio.sleep(0)  # this start's first commit on its way first
                return

    async def _claim(self, runtime: WorkflowRuntime, limit: int) -> tuple[list[Claimed], float | None]:
        sent = asyncio.get_running_loop().time()
        claimed, rejected, due = await self.store.claim(runtime.name, limit, idle_for=_IDLE_WAIT + 1)
        return await self._take(runtime, [*claimed, *rejected], sent), due

    async def _take(self, runtime: WorkflowRuntime, taken: list[Claimed | Rejected], sent: float) -> list[Claimed]:
        """Owns the leases of the jobs taken (claimed at event loop time ``sent``, or handed to this worker), and
        drops those it cannot run; returns those to run."""
        claimed: list[Claimed] = []
        rejected: list[Rejected] = []
        for each in taken:
            if isinstance(each, Rejected):
                rejected.append(each)
            elif each.lease_end is None:
                self.leases.own(each.job_id, each.job, sent)
                claimed.append(each)
            else:
                left = each.lease_end - time.time()
                if left <= 0:
                    continue  # held up past its lease: the reconciler hands it back, to run elsewhere
                self.leases.own(each.job_id, each.job, asyncio.get_running_loop().time() + left - self.stall_interval)
                claimed.append(each)
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
        return claimed

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
        flow: StoredFlow | None = None
        try:
            if claimed.state is None:
                await self._drop(job_id)  # the flow expired or was deleted
                return
            items: dict[tuple[str, int], bytes] = {}
            if claimed.item is not None and job.index is not None:
                items[job.step, job.index] = claimed.item
            flow = StoredFlow.read(job.flow_id, claimed.state, claimed.version, items)
            correlate(flow.state)  # this task runs only this flow's handlers
            view = flow.view = runtime.runner.view(flow.state)
            # Through a weak reference: a flow that referred to itself would be freed only by the garbage
            # collector, whose passes then walked every finished flow's objects.
            view.sink = functools.partial(self._progress, runtime.engine, weakref.ref(flow))
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
        except UnreadableState as unreadable:
            await self._fail_unreadable(runtime.name, runtime.engine, unreadable, finished=job_id)
        except _LeaseRanOut:
            _log.warning(
                "Gave up committing job %s: Redis stayed unreachable until its lease ran out; it runs again elsewhere",
                shorten(job_id),
            )
            self.leases.disown(job_id)
        except _Gone:
            _log.warning("Flow %s disappeared (expired or deleted); dropping its job", shorten(job.flow_id))
            await self._drop(job_id)
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
        finally:
            if flow is not None and flow.closing is not None:  # its job was not run here after all
                flow.closing.cancel()

    async def _run(
        self, runtime: WorkflowRuntime, flow: StoredFlow, view: FlowView[Any], job_id: str, job: Job
    ) -> Job | None:
        engine = runtime.engine
        kind = job.kind
        if kind == "spawn":
            await self._spawn_child(runtime, flow, job)
            await self._drop(job_id)
            return None
        if kind == "op":
            return await self._operate(runtime, flow, view, job_id, job)
        if kind == "start":
            current = engine.startable(flow.state)
        else:
            current = await self._with_items(flow, lambda: engine.expects(flow.state, job.action()))
        if not current:
            await self._drop(job_id)
            return None
        if kind == "start":
            return await self.advance(engine, flow, None, finished=job_id, runner=runtime.runner)
        task = asyncio.current_task()
        assert task is not None
        self.leases.performing(job_id, task)
        try:
            if flow.closing is not None:  # started before this job was committed: its task is this job's handler
                closer, flow.closing = flow.closing, None
                event = await closer  # cancelling this task cancels it too
            else:
                event = await self._perform(runtime, view, job)
        finally:
            self.leases.performed(job_id)
        return await self.advance(engine, flow, event, finished=job_id, closing=runtime)

    async def _perform(self, runtime: WorkflowRuntime, view: FlowView[Any], job: Job) -> Event:
        runner = runtime.runner
        flow_id = view.state.flow_id
        kind = job.kind
        if kind == "step":
            step_event = await runner.run_step(view, job.step, job.attempt, job.index)
            if isinstance(step_event, StepRaised) and step_event.exception is not None:
                self.exceptions.record(flow_id, ("step", job.step, job.index), step_event.exception, step_event.error)
            return step_event
        if kind == "rollback":
            undo_event = await runner.run_rollback(view, job.step, job.attempt, job.index)
            if isinstance(undo_event, RollbackRaised) and undo_event.exception is not None:
                self.exceptions.record(
                    flow_id, ("rollback", job.step, job.index), undo_event.exception, undo_event.error
                )
            return undo_event
        if kind == "eval":
            action = job.action()
            assert isinstance(action, Evaluate)
            return await runner.evaluate(view, action.eval_id, action.targets)
        return await self._close(runner, view, RunComplete() if kind == "complete" else RunOnError())

    async def _close(self, runner: Runner[Any, Any], view: FlowView[Any], action: RunComplete | RunOnError) -> Event:
        """Runs the flow's closing handler: ``on_complete`` or ``on_error``."""
        if type(action) is RunComplete:
            event = await runner.run_complete(view)
            if isinstance(event, CompleteRaised) and event.exception is not None:
                self.exceptions.record(view.state.flow_id, ("complete", None, None), event.exception, event.error)
            return event
        view.exceptions = self.exceptions.matching(view.state)
        return await runner.run_on_error(view)

    def _may_close_early(self, state: FlowState, finished: str | None, now: float) -> bool:
        """Whether the closing handler the engine asked for with job ``finished``'s outcome may run before that
        outcome is committed: not if the job was cancelled or its lease lost (the flow moved on, as far as this
        process knows), nor past its lease's end or the flow's deadline, nor while this worker stops."""
        if finished is None or self._stopping or finished in self._cancelled or self.leases.lost(finished):
            return False
        lease_end = self.leases.end(finished)
        if lease_end is not None and lease_end <= asyncio.get_running_loop().time():
            return False
        return state.deadline is None or state.deadline > now

    async def _close_early(
        self, runner: Runner[Any, Any], view: FlowView[Any], action: RunComplete | RunOnError
    ) -> _Closer:
        """Starts the closing handler the engine asked for with a job's outcome, before that outcome is committed
        (see ``closing`` in :meth:`advance`), and returns once it has returned or waits on something.

        It runs in a task of its own, so that, should it wait, it goes on while the outcome is committed. Its
        progress reports until then are kept, not committed: they go with its outcome, or after the commit.
        """
        loop = asyncio.get_running_loop()
        kept: list[Event] = []

        async def keep(
            view: FlowView[Any], step: str | None, index: int | None, fraction: float, message: str | None
        ) -> None:
            kept.append(Progress(step, fraction, message, index))

        sink, view.sink = view.sink, keep
        task = loop.create_task(self._close(runner, view, action))
        first = loop.create_future()
        loop.call_soon(first.set_result, None)  # runs right after the task's first step
        try:
            await first
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            view.sink = sink
        return _Closer(task, kept)

    async def _operate(
        self, runtime: WorkflowRuntime, flow: StoredFlow, view: FlowView[Any], job_id: str, job: Job
    ) -> Job | None:
        """Applies an operation another flow (or process) queued for this flow: a cancellation, an undo, a child's
        end."""
        extra = job.extra
        op = extra["op"]
        event: Event
        if op == "cancel":
            event = Cancel(str(extra.get("reason") or "cancelled"))
        elif op == "compensate":
            event = Compensate(str(extra.get("reason") or "compensated"))
        elif op == "retry_compensation":
            event = RetryCompensation()
        else:
            event = ChildSettled(
                job.step,
                str(extra.get("child")),
                str(extra.get("status")),
                extra.get("result"),
                extra.get("error"),
                bool(extra.get("rollback_failed")),
            )
        try:
            return await self.advance(runtime.engine, flow, event, finished=job_id)
        except FlowStateError as refused:
            _log.warning("%s: dropped the %s asked of it", refused, op)
            await self._drop(job_id)
            return None

    async def _spawn_child(self, runtime: WorkflowRuntime, flow: StoredFlow, job: Job) -> None:
        """Creates the child flow of sub-workflow ``job.step`` (once, whatever the crashes: its id is derived)."""
        parent = flow.state
        child_id = str(job.extra["child"])
        child_definition = runtime.engine.node(job.step).step.workflow
        assert child_definition is not None
        engine = self.engine_of(child_definition.name) or Engine(child_definition)
        self.engines.setdefault(child_definition.name, engine)
        meta = {**parent.meta, "correlation_id": parent.meta.get("correlation_id") or parent.flow_id}
        ref: ParentRef = {"flow_id": parent.flow_id, "workflow": parent.workflow, "node": job.step}
        now = time.time()
        state = engine.new_state(
            child_id,
            job.extra["data"],
            meta=meta,
            now=now,
            parent=ref,
            depth=parent.depth + 1,
        )
        start = Job("start", child_definition.name, child_id)
        existing = await self.store.create(
            child_id,
            child_definition.name,
            dumps(state.to_dict()),
            start,
            wake_at=state.wake_at,
            created_at=now,
            parent_id=parent.flow_id,
        )
        if existing is None:
            return
        try:
            found = StoredFlow.read(child_id, existing, b"1").state
        except UnreadableState:
            found = None
        settled: ChildSettled | None = None
        if found is None or found.parent is None or found.parent["flow_id"] != parent.flow_id:
            error = f"a flow with the child's id '{child_id}' already exists"
            settled = ChildSettled(job.step, child_id, FlowStatus.FAILED.value, None, error)
        elif found.status.is_terminal:  # a crash after it ended, before its parent heard of it
            result = found.result if found.status == FlowStatus.COMPLETED else None
            message = None if found.error is None else str(build_error(found))
            settled = ChildSettled(job.step, child_id, found.status.value, result, message, bool(found.rollback_errors))
        if settled is not None:
            await self.apply(runtime.engine, parent.flow_id, settled)

    async def _progress(
        self, engine: Engine, ref: weakref.ref[StoredFlow], view: FlowView[Any], step: str | None, index: int | None,
        fraction: float, message: str | None,
    ) -> None:  # fmt: skip
        flow = ref()
        if flow is not None:  # else its job has ended: the progress of a handler that outlived it is dropped
            await self.advance(engine, flow, Progress(step, fraction, message, index), finished=None)

    # -- committing --

    async def apply(self, engine: Engine, flow_id: str, event: Event) -> FlowState:
        """Applies ``event`` to flow ``flow_id`` from this process (an operation, a child's end, a tick).

        Returns:
            The flow's state once the event is committed (or found to change nothing).

        Raises:
            FlowNotFoundError: the flow does not exist.
            CorruptFlowError: its stored state cannot be read.
            SignalError, FlowStateError: the engine refused the operation.
        """
        loaded = await self.store.load(flow_id)
        if loaded is None:
            raise FlowNotFoundError(flow_id)
        try:
            flow = StoredFlow.read(flow_id, *loaded)
        except UnreadableState as unreadable:
            raise CorruptFlowError(flow_id, unreadable.reason) from None
        try:
            await self.advance(engine, flow, event, finished=None)
        except _Gone:
            raise FlowNotFoundError(flow_id) from None
        return flow.state

    async def advance(
        self,
        engine: Engine,
        flow: StoredFlow,
        event: Event | None,
        *,
        finished: str | None,
        runner: Runner[Any, Any] | None = None,
        tick: bool = False,
        closing: WorkflowRuntime | None = None,
    ) -> Job | None:
        """Applies ``event`` (``None``: start the flow with ``runner``) and commits; retries on a lost race.

        Args:
            finished: the id of the job whose outcome this is (its lease ends with the commit).
            tick: the event is a timer's: set the flow's timer anew even if nothing changed.
            closing: when the engine answers ``event`` (a job's outcome) with the flow's closing handler alone
                (``on_complete`` or ``on_error``), start it with this runtime's consumer before committing. If it
                returns without waiting on anything, its outcome goes in the same commit as ``event``'s: one commit,
                and one round trip, less per flow. If it waits, ``event``'s outcome is committed at once, as if the
                handler had not started, and the job that runs the handler takes its task over. The job's lease
                is held until the commit, so a worker that dies meanwhile leaves the job to run again elsewhere. The
                handler has no undo, so running it early leaves nothing unrecorded that matters: if the flow moved
                on meanwhile (it was cancelled, say), its outcome is dropped, as it would have been had the
                cancellation found it running.

        Returns:
            The job this task should run next, already leased to this process, or ``None``.

        Raises:
            UnreadableState: the state a lost race returned cannot be read.
            _LeaseRanOut: Redis stayed unreachable until the finished job's lease ran out.
            _Gone: the flow no longer exists.
        """
        # One flow's commits from this process go one at a time (inline, not a context manager: this runs at every
        # step).
        flow_id = flow.state.flow_id
        latest = self._flows.get(flow_id)
        if latest is None:
            latest = self._flows[flow_id] = _FlowLock()
        latest.users += 1
        try:
            async with latest.lock:
                done = await self._advance(engine, flow, event, latest, finished=finished, runner=runner, tick=tick,
                                           hold=closing is not None)  # fmt: skip
            if not isinstance(done, _Held):
                return done
            assert closing is not None and flow.view is not None
            closer = await self._close_early(closing.runner, flow.view, done.action)
            task = closer.task
            if task.done():  # it returned without waiting on anything: its outcome goes with this commit
                outcome = [*closer.kept, task.result()]
                async with latest.lock:
                    after = await self._advance(engine, flow, event, latest, finished=finished, runner=runner,
                                                tick=tick, held=done, closing=outcome)  # fmt: skip
                assert not isinstance(after, _Held)
                return after
            # It waits on something: commit the job's outcome first, as if the handler had not started, and let
            # the job that runs it (kept by this task) take the handler over.
            async with latest.lock:
                after = await self._advance(engine, flow, event, latest, finished=finished, runner=runner, tick=tick,
                                            held=done)  # fmt: skip
            assert not isinstance(after, _Held)
            if after is None or after.kind not in ("complete", "on_error") or after.action() != done.action:
                task.cancel()  # the flow moved on meanwhile (it was cancelled, say)
                return after
            flow.closing = task
            for progress in closer.kept:
                await self.advance(engine, flow, progress, finished=None)
            return after
        finally:
            latest.users -= 1
            if not latest.users:
                del self._flows[flow_id]

    async def _advance(
        self,
        engine: Engine,
        flow: StoredFlow,
        event: Event | None,
        latest: _FlowLock,
        *,
        finished: str | None,
        runner: Runner[Any, Any] | None,
        tick: bool,
        hold: bool = False,
        held: _Held | None = None,
        closing: list[Event] | None = None,
    ) -> Job | _Held | None:
        """:meth:`advance` under the flow's lock.

        Args:
            hold: when the engine answers ``event`` with the flow's closing handler alone, return a :class:`_Held`
                rather than commit (see ``closing`` in :meth:`advance`).
            held: what an earlier call held: its state, if still this flow's, has ``event`` applied already.
            closing: the events of the closing handler ``held`` asked for, to apply after ``event`` if the engine
                still asks for that handler alone (``None``: it still runs; its job is committed as usual).
        """
        workflow = engine.definition.name
        while True:
            if latest.raw is not None and int(latest.version) > int(flow.version):
                # Another task of this process committed since this one read the flow: go on from there.
                flow.replace(StoredFlow.read(flow.state.flow_id, latest.raw, latest.version.encode()))
            state = flow.state
            now = time.time()
            applied = held if held is not None and held.state is state else None  # event is applied already
            if applied is not None:
                old_status, old_wake = applied.old_status, applied.old_wake
            else:
                old_status = state.status.value
                old_wake = state.wake_at
            try:
                if applied is not None:
                    actions: list[Action] = [applied.action]
                elif event is None:
                    assert runner is not None
                    actions = runner.start(state, now)
                else:
                    actions = engine.handle(state, event, now)
                    if hold and _closes(actions) and self._may_close_early(state, finished, now):
                        return _Held(state, old_status, old_wake, actions[0])  # type: ignore[arg-type]
                # The closing handler's outcome counts only if the flow still asks for that handler alone: else
                # the flow moved on while it ran (it was cancelled, say), and its outcome is dropped.
                if closing is not None and held is not None and _closes(actions, like=held.action):
                    for later in closing:
                        actions = engine.handle(state, later, now)
            except ItemsNeeded as needed:
                await self._load_items(flow, needed)
                flow.reread()
                continue
            records = state.take_events()
            raw = dumps(state.to_dict())
            if raw == flow.raw and not state.items_changed:
                # The event changed nothing (a duplicate, or the flow moved on): just let the job go.
                if finished is not None:
                    await self._drop(finished)
                if tick:
                    await self.store.set_timer(workflow, state.flow_id, state.wake_at)
                return None
            commit = plan(self.keys, workflow, state, actions, allow_local=finished is not None and not self._stopping)
            timer_changed = tick or state.wake_at != old_wake
            change = Change(
                items=flow.changed_items(self.keys),
                events=[dumps(record) for record in records] if self.record_events else (),
                timer=state.wake_at if timer_changed else None,
                clear_timer=timer_changed and state.wake_at is None,
                old_status=old_status,
                created_at=state.created_at,
                parent_id=state.parent["flow_id"] if state.parent else None,
            )
            conflict = await self._commit(workflow, flow.version, state, raw, commit, change, finished)
            if conflict is None:
                flow.raw, flow.version = raw, str(int(flow.version) + 1)
                latest.raw, latest.version = raw, flow.version
                state.items_changed = frozenset()
                self._after_commit(engine, state, commit, records)
                return commit.local
            if conflict.state is None:
                raise _Gone()
            # Another process got there first. The items at hand may have changed too: drop them, and let the
            # engine ask for those it needs (reloading every item at hand made each lost race cost O(items)).
            fresh = StoredFlow.read(state.flow_id, conflict.state, conflict.version)
            latest.raw, latest.version = fresh.raw, fresh.version
            flow.replace(fresh)

    async def _with_items(self, flow: StoredFlow, ask: Any) -> Any:
        """Asks the engine something, loading the items it needs first if it says so."""
        while True:
            try:
                return ask()
            except ItemsNeeded as needed:
                await self._load_items(flow, needed)
                flow.reread()

    async def _load_items(self, flow: StoredFlow, needed: ItemsNeeded) -> None:
        node = needed.node
        if needed.indices is None:
            total = int(flow.state.nodes[node].get("total", 0))
            indices: tuple[int, ...] = tuple(range(total))
        else:
            indices = needed.indices
        fields = [self.keys.item_field(node, i) for i in indices]
        records = await self.store.load_items(flow.state.flow_id, fields)
        for index, record in zip(indices, records, strict=True):
            if record is None:
                raise UnreadableState(flow.state.flow_id, flow.raw, f"its item {index} of '{node}' is missing")
            flow.items[node, index] = record
        if needed.indices is None:
            flow.complete.add(node)

    async def _commit(
        self,
        workflow: str,
        version: str,
        state: FlowState,
        raw: bytes,
        commit: Plan,
        change: Change,
        finished_id: str | None,
    ) -> Conflict | None:
        loop = asyncio.get_running_loop()

        def attempt() -> asyncio.Future[Conflict | None]:
            # This task waits on a future of its own, settled with the commit's in the same turn: cancelling the
            # task does not cancel the commit, which lands and settles its leases (as with asyncio.shield, without
            # the turn of the loop that shield's relay costs at every step).
            waiter: asyncio.Future[Conflict | None] = loop.create_future()
            future = self.store.commit(
                state.flow_id,
                workflow,
                version,
                raw,
                state.status.value,
                change=change,
                finished=finished_id,
                done=commit.done,
                cancelled=commit.cancel_message,
                jobs=commit.jobs,
                waiter=waiter,
            )
            # The leases it ends and begins are settled with it, whether or not this task still waits for it; and
            # stop() lets it land. (A future and callbacks cost a third of what a task to shield would.)
            future.add_done_callback(functools.partial(self._committed, finished_id, commit.local, loop.time()))
            self._inflight.add(future)
            future.add_done_callback(self._inflight.discard)
            return waiter

        # An outage: retry while the job is still this process's, so that its work is not lost; past its lease
        # another worker runs it again anyway. A commit without a job (a tick, an operation) retries one stall
        # interval.
        give_up_at = loop.time() + self.stall_interval
        delay = 0.1
        while True:
            try:
                return await attempt()  # a commit on its way lands, and its leases are known, even if this is cancelled
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

    def _committed(
        self, finished_id: str | None, local: Job | None, sent: float, future: asyncio.Future[Conflict | None]
    ) -> None:
        """A commit sent at loop time ``sent`` is settled: if it was written, the job it finished is no longer
        this process's, and the job it leased here is."""
        if future.cancelled() or future.exception() is not None or future.result() is not None:
            return
        if finished_id is not None:
            self.leases.disown(finished_id)
        if local is not None:
            self.leases.own(self.keys.job_id(local), local, sent)

    def _after_commit(self, engine: Engine, state: FlowState, commit: Plan, records: list[Any]) -> None:
        current = asyncio.current_task()
        for job_id in commit.cancel_jobs:
            self._cancel_here(job_id, current)
        for flow_id, node in commit.cancel_fan_outs:
            for job_id in self.leases.running_items(self.keys, flow_id, node):
                self._cancel_here(job_id, current)
        flow_id = state.flow_id
        timer = self._timers.pop(flow_id, None)
        if timer is not None:
            timer.cancel()
        if commit.done:
            flow_ended(state, self.exceptions.matching(state))
        elif state.wake_at is not None and engine.definition.name in self.runtimes and not self._stopping:
            delay = max(0.0, state.wake_at - time.time())
            self._timers[flow_id] = asyncio.get_running_loop().call_later(
                delay, self._timer_fired, engine.definition.name, flow_id
            )
        if records:
            self.hooks.publish(flow_id, state.workflow, records)

    def _cancel_here(self, job_id: str, current: asyncio.Task[Any] | None) -> None:
        task = self.leases.handler(job_id)
        if task is not None and task is not current and job_id not in self._cancelled:
            self._cancelled.add(job_id)
            task.cancel()

    async def _fail_unreadable(
        self, workflow: str, engine: Engine, found: UnreadableState, *, finished: str | None
    ) -> None:
        """Fails a flow whose state cannot be read, once, through the engine's ``Unrunnable`` event."""
        flow_id = found.flow_id
        now = time.time()
        state = engine.new_state(flow_id, None, now=now)
        record: ErrorRecord = {
            "type": _CORRUPT,
            "message": f"its stored state cannot be read ({found.reason}); the unreadable bytes are kept in the "
            "field 'unreadable' of its Redis hash",
            "traceback": "",
        }
        engine.handle(state, Unrunnable(record), now)
        try:
            failed = await self._guarded(
                self.store.fail_unreadable(
                    flow_id, workflow, found.raw, dumps(state.to_dict()), state.status.value, finished=finished
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
                workflow,
                found.reason,
                shorten(self.keys.flow(flow_id)),
            )
        elif finished is not None:
            # It changed meanwhile (repaired, or failed by another worker): let the job run against what is there.
            await self._release(finished, hand_back=True)

    # -- timers --

    def engine_of(self, workflow: str) -> Engine | None:
        """The engine of ``workflow`` in this process (its consumer's, or one known without a consumer)."""
        runtime = self.runtimes.get(workflow)
        return runtime.engine if runtime is not None else self.engines.get(workflow)

    def _timer_fired(self, workflow: str, flow_id: str) -> None:
        self._timers.pop(flow_id, None)
        self._background_task(self.tick(workflow, flow_id))

    def _background_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def tick(self, workflow: str, flow_id: str) -> None:
        """Fires whatever is due in flow ``flow_id`` (its deadline, a sleep's end, a signal's timeout)."""
        engine = self.engine_of(workflow)
        if engine is None:
            return
        try:
            loaded = await self.store.load(flow_id)
            if loaded is None:
                await self.store.set_timer(workflow, flow_id, None)
                return
            flow = StoredFlow.read(flow_id, *loaded)
            await self.advance(engine, flow, Tick(), finished=None, tick=True)
        except UnreadableState as unreadable:
            await self._fail_unreadable(workflow, engine, unreadable, finished=None)
        except _Gone:
            await self.store.set_timer(workflow, flow_id, None)
        except _REDIS_ERRORS as error:
            # The timer stays in Redis, a lease ahead: a worker tries again once Redis is back.
            self._outage.failed(f"firing a timer of flow {shorten(flow_id)}", error)
        except Exception:
            _log.exception("Internal error firing a timer of flow %s", shorten(flow_id))

    async def _timer_loop(self) -> None:
        """Takes the due timers of this process's workflows about once a second, whoever armed them."""
        while True:
            names = list(self.runtimes)
            wait = _TIMER_POLL
            try:
                due, next_at = await self.store.due_timers(names)
            except _REDIS_ERRORS as error:
                self._outage.failed("looking for due timers", error)
                await asyncio.sleep(_RETRY)
                continue
            except Exception:
                _log.exception("Internal error looking for due timers")
                await asyncio.sleep(_RETRY)
                continue
            for workflow, flow_ids in due.items():
                for flow_id in flow_ids:
                    self._background_task(self.tick(workflow, flow_id))
            if next_at is not None:
                wait = min(wait, max(0.01, next_at - time.time()))
            await asyncio.sleep(wait)

    # -- leases --

    async def _reconciler(self) -> None:
        last_trim = time.monotonic()
        while True:
            await asyncio.sleep(self.reconcile_interval)
            try:
                handed_back, dropped = await self.store.reconcile(self.reconcile_interval)
                if time.monotonic() - last_trim >= min(_TRIM_EVERY, self.retention):
                    last_trim = time.monotonic()
                    await self._trim_indexes()
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

    async def _trim_indexes(self) -> None:
        # An ended flow is indexed under the status it ended with: the sweep looks in those indexes only.
        ended = [status.value for status in FlowStatus if status.is_terminal]
        more = True
        while more:
            _, more = await self.store.sweep_expired(ended)

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
            # The notifier's "you may have missed messages": its connection was down, and a cancellation published
            # meanwhile is lost. Look at the flows of the handlers running here instead.
            if any(self.leases.handler(job_id) is not None for job_id in self.leases.owned):
                self._background_task(self._recheck_running())
            return
        try:
            message = loads(data)
        except ValueError:
            message = None
        jobs = message.get("jobs") if isinstance(message, dict) else None
        fan_outs = message.get("fan_outs") if isinstance(message, dict) else None
        if not isinstance(jobs, list) or not isinstance(fan_outs, list):
            _log.warning(
                "Ignored a message on %s that is not a JSON object of jobs and fan-outs: %s",
                self.keys.cancel,
                shorten(data),
            )
            return
        # Only a running handler is stopped: a job being committed is settled by its compare-and-set.
        for job_id in jobs:
            if isinstance(job_id, str):
                self._cancel_here(job_id, None)
        for pair in fan_outs:
            if isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair):
                for job_id in self.leases.running_items(self.keys, pair[0], pair[1]):
                    self._cancel_here(job_id, None)

    async def _recheck_running(self) -> None:
        """Cancels the running handlers whose job their flow no longer expects (cancelled while this process's
        pub/sub connection was down)."""
        for job_id, job in list(self.leases.owned.items()):
            engine = self.engine_of(job.workflow)
            if engine is None or self.leases.handler(job_id) is None:
                continue
            try:
                loaded = await self.store.load(job.flow_id)
                if loaded is None:
                    continue  # gone: its job is dropped when the handler returns
                expected = await self._expects(engine, StoredFlow.read(job.flow_id, *loaded), job)
            except UnreadableState:
                continue  # failed once its handler returns
            except _REDIS_ERRORS as error:
                # Down again: the notifier says so once it is back, and this runs again.
                self._outage.failed("looking for cancelled jobs", error)
                return
            except Exception:
                _log.exception("Internal error looking for cancelled jobs of flow %s", shorten(job.flow_id))
                continue
            if not expected:
                self._cancel_here(job_id, None)

    async def _expects(self, engine: Engine, flow: StoredFlow, job: Job) -> bool:
        # flow.state, not a state bound once: loading a for-each's items reads the state anew.
        return bool(await self._with_items(flow, lambda: engine.expects(flow.state, job.action())))

    async def _guarded(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs ``coro`` to its end even if the caller is cancelled: a lease must never be half-known."""
        task = asyncio.create_task(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)
