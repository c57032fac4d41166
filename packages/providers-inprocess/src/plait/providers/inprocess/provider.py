"""The in-process provider: drives the core engine with asyncio tasks in the running event loop.

Each flow's actions run in asyncio tasks. A task that finishes an action hands the event to the engine and, when
the engine asks for exactly one more thing, runs it itself rather than starting another task; so a sequential
flow costs one task, and a parallel group one task per sibling. A flow that waits for a signal or a timer holds no
task and no concurrency slot, only a timer. All engine calls happen on the event loop's thread, so they never race.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from typing import Any, Generic, TypeVar, overload

from pydantic import BaseModel

from plait.core import (
    ConsumerOptions,
    FlowHandle,
    FlowInfo,
    FlowNotFoundError,
    FlowStatus,
    IWorkflowConsumer,
    ProviderNotStartedError,
    SignalError,
    WorkflowDefinition,
    WorkflowNotRegisteredError,
    telemetry,
)
from plait.core.clock import Clock, SystemClock
from plait.core.engine import (
    Action,
    Cancel,
    CancelChild,
    CancelRunning,
    ChildSettled,
    Compensate,
    CompensateChild,
    Evaluate,
    Event,
    EventRecord,
    Finish,
    FlowState,
    NotifyParent,
    ParentRef,
    Progress,
    RetryCompensation,
    RunComplete,
    RunOnError,
    RunRollback,
    RunStep,
    Signal,
    StartChild,
    Tick,
    build_error,
)
from plait.core.events import FlowEvent, event_from_record, is_last
from plait.core.hooks import Hooks
from plait.core.info import FlowPage, FlowSummary
from plait.core.listing import ListQuery, encode_cursor
from plait.core.provider import EventHook
from plait.core.runner import (
    FlowView,
    ProgressSink,
    Runner,
    check_flow_id,
    check_same_flow,
    check_seconds,
    check_timeout,
    correlate,
    flow_ended,
    new_flow_id,
    prepare_registration,
    validate_data,
)
from plait.core.validation import MAX_PAYLOAD_SIZE, check_max_payload_size, validate
from plait.providers.inprocess._records import (
    COMPLETE,
    SLOT,
    Ended,
    Flow,
    Kept,
    Registration,
    TaskKey,
    ended,
    kept,
    state_of,
    task_key,
    view,
)

__all__ = ["InProcessWorkflowProvider"]

D = TypeVar("D", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

_log = logging.getLogger("plait.providers.inprocess")

_DAY = 86400.0
# The actions that run a handler or a user callable: a task that finishes one goes on with the next of them.
# A tuple, not a union: isinstance with a union builds it anew on every call.
_HANDLER_ACTIONS = (RunStep, RunRollback, RunComplete, RunOnError, Evaluate)


class InProcessFlowHandle(FlowHandle[R], Generic[R]):
    """A handle on a flow of an :class:`InProcessWorkflowProvider`."""

    __slots__ = ("_provider",)

    def __init__(self, flow_id: str, provider: InProcessWorkflowProvider) -> None:
        super().__init__(flow_id)
        self._provider = provider

    async def status(self) -> FlowStatus:
        return await self._provider.get_status(self.id)

    async def result(self, timeout: float | None = None) -> R:
        provider = self._provider
        found = provider._find(self.id)
        if isinstance(found, Flow):
            flow = found
            if not flow.ended:
                if timeout is None:
                    await asyncio.shield(flow.end())
                else:
                    await asyncio.wait_for(asyncio.shield(flow.end()), timeout)
            # Ended now; if max_finished already let it go, the flow this caller waited on still knows.
            known = provider._get(self.id)
            found = known if isinstance(known, Ended) else ended(flow)
        if found.result is not None and found.status == FlowStatus.COMPLETED:
            definition = provider._registrations[found.workflow].definition
            return definition.result.model_validate_json(found.result)  # type: ignore[no-any-return]
        raise build_error(found.load()[0], found.causes)


class InProcessWorkflowProvider:
    """Runs flows as asyncio tasks in this process: for tests and single-process applications.

    Flow state lives in memory, so flows do not survive the process; use a durable provider for that.

    Args:
        default_timeout: seconds a flow may take when neither ``execute()`` nor its registration says;
            ``None`` for no limit.
        step_timeout: seconds one step attempt may take when its registration does not say; ``None`` for none.
        provider_id: shown in contexts and logs; defaults to ``inprocess-<pid>``.
        retention: seconds a finished flow stays queryable (7 days by default).
        max_finished: how many finished flows are kept at most (the oldest go first); state lives in this
            process's memory, so a busy application needs a bound. ``None`` for no bound.
        stop_grace: seconds ``stop()`` lets running flows finish, and then lets cancelled flows roll back.
        max_payload_size: the most bytes of JSON a flow's data, a step's output or a signal's payload may take.
        clock: where time comes from; ``plait.testing.VirtualClock`` makes sleeps, signal timeouts, backoff and
            flow timeouts happen at once in tests.
    """

    def __init__(
        self,
        *,
        default_timeout: float | None = None,
        step_timeout: float | None = None,
        provider_id: str | None = None,
        retention: float = 7 * _DAY,
        max_finished: int | None = 100_000,
        stop_grace: float = 10.0,
        max_payload_size: int = MAX_PAYLOAD_SIZE,
        clock: Clock | None = None,
    ) -> None:
        self.max_payload_size = check_max_payload_size(max_payload_size)
        check_timeout(default_timeout, "default_timeout")
        check_timeout(step_timeout, "step_timeout")
        check_seconds(retention, "retention", allow_zero=True)  # 0: forget a flow as soon as it ends
        check_seconds(stop_grace, "stop_grace", allow_zero=True)
        self.default_timeout = default_timeout
        self.step_timeout = step_timeout
        self.provider_id = provider_id or f"inprocess-{os.getpid()}"
        self.retention = retention
        self.max_finished = max_finished
        self.stop_grace = stop_grace
        self.clock: Clock = clock or SystemClock()
        # Read several times per step: the clock's bound method, or time.time itself for the real clock.
        self._now: Callable[[], float] = time.time if type(self.clock) is SystemClock else self.clock.time
        self.clock.attach(self._is_idle)
        self._registrations: dict[str, Registration] = {}
        self._flows: dict[str, Flow | Kept] = {}
        self._active: dict[str, Flow] = {}
        self._finished: OrderedDict[str, float] = OrderedDict()
        self._working = 0  # handler or callable runs in progress (a virtual clock waits for none)
        self._hooks = Hooks(self.provider_id)
        self._sink: ProgressSink = self._progress  # bound once: every flow's view shares it
        self._started = False
        self._stopping = False

    # -- lifecycle --

    def register(
        self,
        definition: WorkflowDefinition[D, R],
        consumer: IWorkflowConsumer[D, R] | None = None,
        options: ConsumerOptions | None = None,
    ) -> None:
        """Registers ``definition`` and the consumer that runs its flows here.

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
        slots = runner.options.concurrency if runner is not None else None
        self._registrations[definition.name] = Registration(definition, runner, slots)

    def on_event(self, hook: EventHook) -> None:
        """Calls ``hook`` with every event of every flow, in order, from a task of its own; a hook that raises is
        logged and never fails a flow."""
        self._hooks.add(hook)
        if self._started:
            self._hooks.start()

    async def start(self) -> None:
        """Starts taking work; idempotent."""
        self._started = True
        self._stopping = False
        self._hooks.start()

    async def stop(self) -> None:
        """Stops taking work, lets running flows finish within ``stop_grace`` seconds, then cancels the rest.

        Flows that only wait (for a signal or a timer) are cancelled at once: state in memory cannot outlive the
        process. Cancelled flows roll back within another ``stop_grace``; a flow still unfinished after that ends
        ``cancelled`` without its remaining rollbacks (logged as an error). Idempotent; safe before ``start()``.
        """
        if not self._started:
            return
        self._stopping = True
        try:
            if not await self._wait_active(self.stop_grace, running_only=True):
                for flow in list(self._active.values()):
                    self._deliver(flow, Cancel("provider stopped"))
                if not await self._wait_active(self.stop_grace, running_only=False):
                    for flow in list(self._active.values()):
                        _log.error(
                            "Flow %s of workflow '%s' did not finish its rollbacks within the stop grace period; "
                            "it ends cancelled with steps %s not rolled back",
                            flow.state.flow_id,
                            flow.state.workflow,
                            flow.state.rollbacks,
                        )
                        self._dispatch(flow, flow.runner.engine.abort(flow.state, "provider stopped", self._now()))
                        for task in list(flow.tasks.values()):
                            task.cancel()
                    await asyncio.sleep(0)
        finally:
            self._started = False
            await self._hooks.stop(self.stop_grace)

    async def _wait_active(self, grace: float, *, running_only: bool) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while True:
            waiting = [
                flow.end()
                for flow in self._active.values()
                if not flow.ended and not (running_only and flow.state.status == FlowStatus.WAITING)
            ]
            if not waiting:
                return not self._active
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            # Wake when one ends, or at most every 50 ms: a flow may go from running to waiting meanwhile.
            await asyncio.wait(waiting, timeout=min(remaining, 0.05), return_when=asyncio.FIRST_COMPLETED)

    # -- executor --

    async def execute(
        self,
        definition: WorkflowDefinition[D, R],
        data: D | Mapping[str, Any],
        *,
        id: str | None = None,
        timeout: float | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> InProcessFlowHandle[R]:
        """Validates ``data`` and starts a flow; returns its handle at once.

        Raises:
            WorkflowValidationError: ``data`` does not match ``definition.data``; nothing was started.
            WorkflowNotRegisteredError: no consumer for this workflow is registered here.
            FlowConflictError: ``id`` names an existing flow of another workflow or with other data.
            ProviderNotStartedError: the provider is not started (or is stopping).
        """
        if id is not None:
            id = check_flow_id(id)
        model, payload = validate_data(definition, data, max_size=self.max_payload_size)
        check_timeout(timeout, "execute(timeout=)")
        registration = self._runnable(definition.name)
        if id is not None:
            existing = self._get(id)
            if existing is not None:
                check_same_flow(state_of(existing), definition.name, payload)
                return InProcessFlowHandle(id, self)
        flow_id = id or new_flow_id()
        meta = telemetry.traced_meta(meta, definition.name, flow_id)
        flow = self._create(registration, flow_id, payload, model, timeout=timeout, meta=meta)
        return InProcessFlowHandle(flow.state.flow_id, self)

    def _runnable(self, workflow: str) -> Registration:
        if not self._started or self._stopping:
            raise ProviderNotStartedError(
                "InProcessWorkflowProvider is not running: await provider.start() before execute()"
            )
        registration = self._registrations.get(workflow)
        if registration is None or registration.runner is None:
            raise WorkflowNotRegisteredError(
                workflow, "register it with a consumer" if registration is None else "no consumer is registered here"
            )
        return registration

    def _create(
        self,
        registration: Registration,
        flow_id: str,
        payload: Any,
        model: BaseModel | None,
        *,
        timeout: float | None = None,
        meta: Mapping[str, str] | None = None,
        parent: ParentRef | None = None,
        depth: int = 1,
        retry_of: str | None = None,
    ) -> Flow:
        if self._finished:
            self._prune()
        runner = registration.runner
        assert runner is not None
        state = runner.engine.new_state(
            flow_id, payload, meta=meta, timeout=timeout, now=self._now(), parent=parent, depth=depth,
            retry_of=retry_of,
        )  # fmt: skip
        flow = self._new_flow(registration, state, model)
        self._flows[flow_id] = flow
        self._active[flow_id] = flow
        if registration.slots is None:
            self._begin(flow)
        else:
            flow.tasks[SLOT] = asyncio.create_task(self._start_when_free(flow))
        return flow

    def _new_flow(self, registration: Registration, state: FlowState, model: BaseModel | None) -> Flow:
        flow = Flow(registration, state, model)
        # One sink for every flow, which finds the flow by its id: a reporter per flow that referred to the flow
        # would make a cycle, freed only by the garbage collector, and even through a weak reference it kept four
        # more objects alive per running flow for each of the collector's passes to walk.
        flow.view.sink = self._sink
        return flow

    async def get_status(self, flow_id: str) -> FlowStatus:
        """Returns the status of flow ``flow_id``; raises ``FlowNotFoundError`` when unknown or expired."""
        found = self._find(flow_id)
        return found.state.status if isinstance(found, Flow) else FlowStatus(found.status)

    @overload
    async def get_handle(self, flow_id: str) -> InProcessFlowHandle[BaseModel]: ...

    @overload
    async def get_handle(self, flow_id: str, definition: WorkflowDefinition[Any, R]) -> InProcessFlowHandle[R]: ...

    async def get_handle(
        self, flow_id: str, definition: WorkflowDefinition[Any, Any] | None = None
    ) -> InProcessFlowHandle[Any]:
        """Returns a handle on flow ``flow_id``; raises ``FlowNotFoundError`` when unknown or expired."""
        self._find(flow_id)
        return InProcessFlowHandle(flow_id, self)

    async def describe(self, flow_id: str) -> FlowInfo:
        """Returns flow ``flow_id``'s status with each node's fate; raises ``FlowNotFoundError`` when unknown."""
        state = self.get_state(flow_id)
        return FlowInfo.from_state(state, self._registrations[state.workflow].definition)

    def get_state(self, flow_id: str) -> FlowState:
        """Returns the recorded state of a flow (node statuses, results, errors) for inspection.

        A running flow's state is the live object; a finished flow's is a copy.
        """
        return state_of(self._find(flow_id))

    async def signal(self, flow_id: str, name: str, payload: BaseModel | Mapping[str, Any]) -> None:
        """Delivers signal ``name`` with ``payload`` to flow ``flow_id`` (kept until the flow gets to its wait).

        Raises:
            FlowNotFoundError: unknown flow.
            SignalError: the workflow does not wait for ``name``, the flow has ended, or the signal already came
                with another payload.
            WorkflowValidationError: the payload does not validate; nothing was stored.
        """
        found = self._find(flow_id)
        state = state_of(found)
        definition = self._registrations[state.workflow].definition
        model = definition.signals.get(name)
        if model is None:
            declared = ", ".join(f"'{n}'" for n in definition.signals) or "none"
            raise SignalError(f"Workflow '{state.workflow}' waits for no signal '{name}' (it waits for: {declared})")
        _, value = validate(
            model, payload, workflow=state.workflow, what=f"payload of signal '{name}'", max_size=self.max_payload_size
        )
        if isinstance(found, Flow):
            self._deliver(found, Signal(name, value), raises=True)
        else:
            self._runner(state.workflow).engine.handle(state, Signal(name, value), self._now())  # raises: ended

    async def cancel(self, flow_id: str, reason: str | None = None) -> FlowStatus:
        """Cancels flow ``flow_id`` (see ``WorkflowExecutor.cancel``); an ended flow is left as it is."""
        found = self._find(flow_id)
        if isinstance(found, Flow):
            self._deliver(found, Cancel(reason or "cancelled"))
            return found.state.status
        return FlowStatus(found.status)

    async def compensate(self, flow_id: str, reason: str | None = None) -> FlowStatus:
        """Undoes completed flow ``flow_id`` (see ``WorkflowExecutor.compensate``).

        Raises:
            FlowStateError: the flow has not completed.
        """
        return self._operate(flow_id, Compensate(reason or "compensate() was called"))

    async def retry_compensation(self, flow_id: str) -> FlowStatus:
        """Runs the failed rollbacks of ended flow ``flow_id`` again (see ``WorkflowExecutor.retry_compensation``).

        Raises:
            FlowStateError: none of its rollbacks failed for good.
        """
        return self._operate(flow_id, RetryCompensation())

    def _operate(self, flow_id: str, event: Event) -> FlowStatus:
        found = self._find(flow_id)
        if isinstance(found, Flow):
            self._deliver(found, event, raises=True)
            return found.state.status
        if not self._started or self._stopping:
            raise ProviderNotStartedError("InProcessWorkflowProvider is not running")
        state, events = found.load()
        registration = self._registrations[state.workflow]
        runner = self._runner(state.workflow)
        state.emitted, published = events, len(events)  # its history goes on
        actions = runner.engine.handle(state, event, self._now())  # raises if the operation does not apply
        flow = self._new_flow(registration, state, None)
        flow.published = published
        flow.view.exceptions.update(found.causes or {})
        self._flows[flow_id] = flow
        self._active[flow_id] = flow
        self._finished.pop(flow_id, None)
        self._recorded(flow)
        self._dispatch(flow, actions)
        return state.status

    async def retry(self, flow_id: str) -> InProcessFlowHandle[BaseModel]:
        """Starts a new flow with the data and metadata of failed, cancelled or compensated flow ``flow_id``.

        Raises:
            FlowStateError: the flow is running, or completed.
        """
        state = state_of(self._find(flow_id))
        registration = self._runnable(state.workflow)
        runner = self._runner(state.workflow)
        runner.engine.check_retry(state)
        new_id = new_flow_id()
        meta = telemetry.traced_meta(state.meta, state.workflow, new_id)
        flow = self._create(registration, new_id, state.data, None, meta=meta, retry_of=flow_id)
        return InProcessFlowHandle(flow.state.flow_id, self)

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
        """Lists the flows this process keeps, newest first (see ``WorkflowExecutor.list_flows``)."""
        query = ListQuery.of(
            workflow=workflow,
            status=status,
            parent_id=parent_id,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            cursor=cursor,
        )
        items: list[FlowSummary] = []
        for flow_id, kept_flow in reversed(self._flows.items()):
            found = view(kept_flow)
            if isinstance(found, Flow):
                state = found.state
                parent = state.parent["flow_id"] if state.parent else None
                facts = (state.workflow, state.status.value, parent, state.created_at)
            else:
                facts = (found.workflow, found.status, found.parent_id, found.created_at)
            if not query.admits(*facts) or not query.follows(facts[3], flow_id):
                continue
            if len(items) == query.limit:
                last = items[-1]
                return FlowPage(tuple(items), encode_cursor(last.created_at, last.flow_id))
            items.append(FlowSummary.from_state(state_of(found)))
        return FlowPage(tuple(items))

    async def subscribe(self, flow_id: str) -> AsyncIterator[FlowEvent]:
        """Yields flow ``flow_id``'s events, from the first to the last; raises ``FlowNotFoundError`` when unknown."""
        found = self._find(flow_id)
        if isinstance(found, Ended):
            state, events = found.load()
            for record in events:
                yield event_from_record(flow_id, state.workflow, record)
            return
        flow = found
        workflow = flow.state.workflow
        queue: asyncio.Queue[list[EventRecord]] = asyncio.Queue()
        backlog = list(flow.events)
        if flow.listeners is None:
            flow.listeners = []
        flow.listeners.append(queue)
        try:
            # A running flow's history may hold an end already (it completed, and is being compensated now): the
            # backlog is replayed whole, and only a live end ends the subscription.
            for record in backlog:
                yield event_from_record(flow_id, workflow, record)
            while True:
                for record in await queue.get():
                    yield event_from_record(flow_id, workflow, record)
                    if is_last(record):
                        return
        finally:
            if flow.listeners is not None and queue in flow.listeners:
                flow.listeners.remove(queue)

    # -- driving the engine --

    def _find(self, flow_id: str) -> Flow | Ended:
        found = self._get(flow_id) if isinstance(flow_id, str) else None
        if found is None:
            raise FlowNotFoundError(str(flow_id))
        return found

    def _get(self, flow_id: str) -> Flow | Ended | None:
        found = self._flows.get(flow_id)
        return None if found is None else view(found)

    def _runner(self, workflow: str) -> Runner[Any, Any]:
        registration = self._registrations.get(workflow)
        if registration is None or registration.runner is None:
            raise WorkflowNotRegisteredError(workflow, "no consumer is registered here")
        return registration.runner

    def _is_idle(self) -> bool:
        return self._working == 0

    async def _start_when_free(self, flow: Flow) -> None:
        await self._acquire(flow)
        flow.tasks.pop(SLOT, None)
        if flow.state.status == FlowStatus.PENDING:
            self._begin(flow)
        else:  # cancelled or timed out while waiting for a slot
            self._release(flow)

    def _begin(self, flow: Flow) -> None:
        actions = flow.runner.start(flow.state, self._now())
        self._recorded(flow)
        self._dispatch(flow, actions)

    async def _acquire(self, flow: Flow) -> None:
        registration = flow.registration
        semaphore = registration.semaphore
        if semaphore is None:
            assert registration.slots is not None
            semaphore = registration.semaphore = asyncio.Semaphore(registration.slots)
        await semaphore.acquire()
        flow.slot = semaphore

    def _release(self, flow: Flow) -> None:
        if flow.slot is not None:
            flow.slot.release()
            flow.slot = None

    def _deliver(self, flow: Flow, event: Event, *, raises: bool = False) -> None:
        """Hands ``event`` to the engine for ``flow`` and carries out what it answers."""
        try:
            actions = flow.runner.engine.handle(flow.state, event, self._now())
        except Exception:
            if raises:
                raise
            _log.exception("Internal error handling %r for flow %s", event, flow.state.flow_id)
            return
        self._recorded(flow)
        self._dispatch(flow, actions)

    def _recorded(self, flow: Flow) -> None:
        """Hands the events the engine recorded since the last call to listeners and hooks, and re-arms the flow's
        timer if its wake-up time moved."""
        state = flow.state
        count = len(flow.events)  # the engine records them there (see Flow)
        if count != flow.published:
            if flow.listeners or self._hooks.active:
                events = flow.events[flow.published :]
                for queue in flow.listeners or ():
                    queue.put_nowait(events)
                self._hooks.publish(state.flow_id, state.workflow, events)
            flow.published = count
        wake_at = state.wake_at
        if wake_at == flow.armed:
            return
        if flow.timer is not None:
            flow.timer.cancel()
            flow.timer = None
        flow.armed = wake_at
        if wake_at is not None:
            flow.timer = self.clock.call_later(wake_at - self._now(), functools.partial(self._tick, flow))

    def _tick(self, flow: Flow) -> None:
        flow.timer = None
        flow.armed = None
        if not flow.ended:
            self._deliver(flow, Tick())

    def _dispatch(self, flow: Flow, actions: list[Action]) -> None:
        """Starts a task for each action to run; carries out the others at once."""
        if not actions:
            self._after_dispatch(flow)
            return
        runnable: list[Action] = []
        for action in actions:
            if isinstance(action, _HANDLER_ACTIONS):  # the common case first
                runnable.append(action)
            elif isinstance(action, Finish):
                self._finish(flow)
            elif isinstance(action, CancelRunning):
                self._cancel(flow, action)
            elif isinstance(action, StartChild):
                self._start_child(flow, action)
            elif isinstance(action, CancelChild):
                self._to_flow(action.child, Cancel(action.reason))
            elif isinstance(action, CompensateChild):
                self._to_flow(action.child, RetryCompensation() if action.retry else Compensate(action.reason))
            elif isinstance(action, NotifyParent):
                self._to_flow(action.parent["flow_id"], action.settled)
            else:  # pragma: no cover - guarded by the type checker
                raise TypeError(f"Unexpected action {action!r}")
        if runnable:
            if flow.slot is None and flow.registration.slots is not None and not flow.ended:
                self._resume_when_free(flow, runnable)  # it waited without a slot: take one again first
            else:
                for action in runnable:
                    key = task_key(action)
                    flow.tasks[key] = asyncio.create_task(self._run(flow, action, key))
        self._after_dispatch(flow)

    def _after_dispatch(self, flow: Flow) -> None:
        # A flow that only waits holds no concurrency slot.
        if flow.slot is not None and flow.state.status == FlowStatus.WAITING and not flow.tasks:
            self._release(flow)

    def _resume_when_free(self, flow: Flow, actions: list[Action]) -> None:
        async def resume() -> None:
            await self._acquire(flow)
            flow.tasks.pop(SLOT, None)
            if flow.ended:
                self._release(flow)
                return
            self._dispatch(flow, actions)

        previous = flow.tasks.get(SLOT)
        if previous is not None:  # already waiting for a slot: run these too once it has one
            previous.cancel()
        flow.tasks[SLOT] = asyncio.create_task(resume())

    def _to_flow(self, flow_id: str, event: Event) -> None:
        # On the next turn of the loop: a flow never re-enters another flow's dispatch.
        target = self._get(flow_id)
        if isinstance(target, Flow):
            asyncio.get_running_loop().call_soon(self._deliver, target, event)
        elif isinstance(target, Ended) and isinstance(event, (Compensate, RetryCompensation)):
            asyncio.get_running_loop().call_soon(self._operate_quietly, flow_id, event)

    def _operate_quietly(self, flow_id: str, event: Event) -> None:
        try:
            self._operate(flow_id, event)
        except Exception:
            _log.exception("Could not hand %r to flow %s", event, flow_id)

    def _start_child(self, parent: Flow, action: StartChild) -> None:
        state = parent.state
        registration = self._registrations.get(action.workflow)
        existing = self._get(action.child)
        if existing is not None:
            child_state = state_of(existing)
            if child_state.parent is None or child_state.parent["flow_id"] != state.flow_id:
                self._settle_child(parent, action, f"a flow with the child's id '{action.child}' already exists")
            elif child_state.status.is_terminal:
                self._settle_child(parent, action, None, child_state)
            return
        if registration is None or registration.runner is None:
            self._settle_child(parent, action, f"workflow '{action.workflow}' has no consumer registered here")
            return
        if self._stopping:
            self._settle_child(parent, action, "the provider is stopping")
            return
        ref: ParentRef = {"flow_id": state.flow_id, "workflow": state.workflow, "node": action.step}
        meta = {**state.meta, "correlation_id": state.meta.get("correlation_id") or state.flow_id}
        self._create(registration, action.child, action.data, None, meta=meta, parent=ref, depth=state.depth + 1)

    def _settle_child(
        self, parent: Flow, action: StartChild, error: str | None, ended: FlowState | None = None
    ) -> None:
        if ended is not None:
            result = ended.result if ended.status == FlowStatus.COMPLETED else None
            message = None if ended.error is None else str(build_error(ended))
            event = ChildSettled(action.step, action.child, ended.status.value, result, message)
        else:
            event = ChildSettled(action.step, action.child, FlowStatus.FAILED.value, None, error)
        asyncio.get_running_loop().call_soon(self._deliver, parent, event)

    async def _run(self, flow: Flow, action: Action, key: TaskKey) -> None:
        """Runs ``action``, then keeps running the first of the actions the engine asks for next.

        Only the others get tasks of their own: a sequential flow runs in one task, a parallel group of n
        steps in n.
        """
        engine = flow.runner.engine
        tasks = flow.tasks
        me = asyncio.current_task()
        correlate(flow.state)  # this task runs only this flow's handlers
        self._working += 1
        try:
            while True:
                if type(action) is RunStep and not action.delay:  # the hot path, without _perform's frame
                    event: Event = await flow.runner.run_step(flow.view, action.step, action.attempt, action.index)
                else:
                    event = await self._perform(flow, action)
                if tasks.get(key) is not me:
                    return  # cancelled by the engine while finishing; its event is stale
                del tasks[key]
                actions = engine.handle(flow.state, event, self._now())
                self._recorded(flow)
                if not actions:
                    self._after_dispatch(flow)
                    return
                follow = actions[0]
                if not isinstance(follow, _HANDLER_ACTIONS):
                    self._dispatch(flow, actions)
                    return
                if len(actions) > 1:
                    self._dispatch(flow, actions[1:])
                action = follow
                key = follow.step if type(follow) is RunStep and follow.index is None else task_key(follow)
                tasks[key] = me  # type: ignore[assignment]  # me is this very task
        except asyncio.CancelledError:
            if tasks.get(key) is me:
                del tasks[key]
            raise
        except Exception as error:  # a bug in Plait itself: do not leave the caller waiting
            _log.exception("Internal error while running flow %s", flow.state.flow_id)
            flow.view.exceptions["complete", None, None] = error
            self._dispatch(flow, engine.abort(flow.state, f"internal error: {error!r}", self._now()))
            self._recorded(flow)
        finally:
            self._working -= 1
            if not self._working:
                self.clock.idle()

    async def _perform(self, flow: Flow, action: Action) -> Event:
        runner = flow.runner
        if isinstance(action, RunStep):
            if action.delay:
                await self._pause(action.delay)
            return await runner.run_step(flow.view, action.step, action.attempt, action.index)
        if isinstance(action, RunRollback):
            if action.delay:
                await self._pause(action.delay)
            return await runner.run_rollback(flow.view, action.step, action.attempt, action.index)
        if isinstance(action, RunComplete):
            return await runner.run_complete(flow.view)
        if isinstance(action, RunOnError):
            return await runner.run_on_error(flow.view)
        if isinstance(action, Evaluate):
            return await runner.evaluate(flow.view, action.eval_id, action.targets)
        raise TypeError(f"Unexpected action {action!r}")  # pragma: no cover

    async def _pause(self, delay: float) -> None:
        # A backoff is time waited, not work: a virtual clock may skip it.
        self._working -= 1
        if not self._working:
            self.clock.idle()
        try:
            await self.clock.sleep(delay)
        finally:
            self._working += 1

    async def _progress(
        self, view: FlowView[Any], step: str | None, index: int | None, fraction: float, message: str | None
    ) -> None:
        flow = self._active.get(view.state.flow_id)
        if flow is not None and flow.view is view:  # else it has ended: a late handler's report is dropped
            self._deliver(flow, Progress(step, fraction, message, index))

    def _cancel(self, flow: Flow, action: CancelRunning) -> None:
        tasks = flow.tasks
        keys: list[TaskKey] = [name for name, _ in action.steps]
        keys += [(name, index) for name, index, _ in action.items]
        if action.fan_outs:
            keys += [k for k in tasks if isinstance(k, tuple) and k[0] in action.fan_outs]
        if action.complete:
            keys.append(COMPLETE)
        keys += [f"\x00eval{e}" for e in action.evals]
        for key in keys:
            task = tasks.pop(key, None)
            if task is not None:
                task.cancel()

    def _finish(self, flow: Flow) -> None:
        state = flow.state
        if flow.timer is not None:
            flow.timer.cancel()
            flow.timer = None
        self._release(flow)
        for task in flow.tasks.values():
            task.cancel()
        flow.tasks.clear()
        flow_id = state.flow_id
        self._active.pop(flow_id, None)
        self._recorded(flow)
        self._flows[flow_id] = kept(flow)
        self._finished[flow_id] = state.finished_at or self._now()
        if self.max_finished is not None and len(self._finished) > self.max_finished:
            oldest, _ = self._finished.popitem(last=False)
            self._flows.pop(oldest, None)
        flow.set_ended()
        flow_ended(state, flow.view.exceptions)

    def _prune(self) -> None:
        horizon = self._now() - self.retention
        finished = self._finished
        while finished:
            flow_id, at = next(iter(finished.items()))
            if at > horizon:
                break
            del finished[flow_id]
            self._flows.pop(flow_id, None)
