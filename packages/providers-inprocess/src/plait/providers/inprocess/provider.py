"""The in-process provider: drives the core engine with asyncio tasks in the running event loop.

Each flow's actions run in asyncio tasks. A task that finishes an action hands the event to the engine and, when
the engine asks for exactly one more thing, runs it itself rather than starting another task; so a sequential
flow costs one task, and a parallel group one task per sibling. All engine calls happen on the event loop's
thread, so they never race.
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Generic, NamedTuple, TypeVar

from pydantic import BaseModel

from plait.core import (
    ConsumerOptions,
    FlowHandle,
    FlowInfo,
    FlowNotFoundError,
    FlowStatus,
    IWorkflowConsumer,
    ProviderNotStartedError,
    WorkflowDefinition,
    WorkflowError,
    WorkflowNotRegisteredError,
)
from plait.core.engine import (
    Action,
    Cancel,
    CancelRunning,
    CompleteSucceeded,
    Event,
    Finish,
    FlowState,
    RunComplete,
    RunOnError,
    RunRollback,
    RunStep,
    TimedOut,
    build_error,
)
from plait.core.runner import (
    FlowView,
    Runner,
    check_flow_id,
    check_same_flow,
    check_timeout,
    new_flow_id,
    prepare_registration,
    resolve_timeout,
    validate_data,
)
from plait.core.validation import MAX_PAYLOAD_SIZE, check_max_payload_size

__all__ = ["InProcessWorkflowProvider"]

D = TypeVar("D", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

_log = logging.getLogger("plait.providers.inprocess")

_COMPLETE = "\x00on_complete"  # task key of on_complete; step names cannot start with a NUL
_DAY = 86400.0


class _Flow:
    """One flow in memory: its engine state, its cached models, the tasks running its actions."""

    __slots__ = ("done", "runner", "slot", "state", "tasks", "timer", "view")

    def __init__(self, runner: Runner[Any, Any], state: FlowState, data: BaseModel) -> None:
        self.runner = runner
        self.state = state
        self.view: FlowView[Any] = runner.view(state, data)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.done: asyncio.Future[None] | None = asyncio.get_running_loop().create_future()  # None once ended
        self.slot: asyncio.Semaphore | None = None


class _Ended(NamedTuple):
    """A finished flow, as kept for its retention.

    A busy application keeps many finished flows, and every object they hold is walked by each full pass of
    the garbage collector (it was most of the in-process provider's cost). So a finished flow is only strings
    and bytes, which CPython does not track: its state ``marshal``-ed (this process's own JSON-shaped data,
    read back only here) and its result as JSON. A failed flow also keeps its exception objects, so that
    ``result()`` raises the very exceptions its handlers raised.
    """

    status: str
    workflow: str
    result: str | None
    state: bytes
    causes: dict[tuple[str, str | None], BaseException] | None

    def load(self) -> FlowState:
        """The flow's recorded state."""
        return FlowState.from_dict(marshal.loads(self.state))


class _Registration:
    __slots__ = ("definition", "runner", "slots")

    def __init__(
        self, definition: WorkflowDefinition[Any, Any], runner: Runner[Any, Any] | None, slots: int | None
    ) -> None:
        self.definition = definition
        self.runner = runner
        self.slots = slots


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
        if isinstance(found, _Flow):
            flow = found
            if flow.done is not None:
                if timeout is None:
                    await asyncio.shield(flow.done)
                else:
                    await asyncio.wait_for(asyncio.shield(flow.done), timeout)
            # Ended now; if max_finished already let it go, the flow this caller waited on still knows.
            kept = provider._flows.get(self.id)
            found = kept if isinstance(kept, _Ended) else _ended(flow)
        if found.result is not None:  # completed
            definition = provider._registrations[found.workflow].definition
            return definition.result.model_validate_json(found.result)  # type: ignore[no-any-return]
        raise build_error(found.load(), found.causes)


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
    ) -> None:
        self.max_payload_size = check_max_payload_size(max_payload_size)
        self.default_timeout = default_timeout
        self.step_timeout = step_timeout
        self.provider_id = provider_id or f"inprocess-{os.getpid()}"
        self.retention = retention
        self.max_finished = max_finished
        self.stop_grace = stop_grace
        self._registrations: dict[str, _Registration] = {}
        self._flows: dict[str, _Flow | _Ended] = {}
        self._active: dict[str, _Flow] = {}
        self._finished: OrderedDict[str, float] = OrderedDict()
        self._semaphores: dict[str, asyncio.Semaphore] = {}
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
            max_payload_size=self.max_payload_size,
        )
        slots = runner.options.concurrency if runner is not None else None
        self._registrations[definition.name] = _Registration(definition, runner, slots)

    async def start(self) -> None:
        """Starts taking work; idempotent."""
        self._started = True
        self._stopping = False

    async def stop(self) -> None:
        """Stops taking work, lets running flows finish within ``stop_grace`` seconds, then cancels the rest.

        Cancelled flows roll back within another ``stop_grace``; a flow still unfinished after that ends
        ``cancelled`` without its remaining rollbacks (logged as an error). Idempotent; safe before ``start()``.
        """
        if not self._started:
            return
        self._stopping = True
        try:
            if await self._wait_active(self.stop_grace):
                return
            for flow in list(self._active.values()):
                self._dispatch(flow, flow.runner.engine.handle(flow.state, Cancel("provider stopped")))
            if await self._wait_active(self.stop_grace):
                return
            for flow in list(self._active.values()):
                _log.error(
                    "Flow %s of workflow '%s' did not finish its rollbacks within the stop grace period; "
                    "it ends cancelled with steps %s not rolled back",
                    flow.state.flow_id,
                    flow.state.workflow,
                    flow.state.rollbacks,
                )
                self._dispatch(flow, flow.runner.engine.abort(flow.state, "provider stopped"))
                for task in list(flow.tasks.values()):
                    task.cancel()
            await asyncio.sleep(0)
        finally:
            self._started = False

    async def _wait_active(self, grace: float) -> bool:
        waiting = [flow.done for flow in self._active.values() if flow.done is not None]
        if waiting:
            await asyncio.wait(waiting, timeout=grace)
        return not self._active

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
        if not self._started or self._stopping:
            raise ProviderNotStartedError(
                "InProcessWorkflowProvider is not running: await provider.start() before execute()"
            )
        registration = self._registrations.get(definition.name)
        if registration is None or registration.runner is None:
            raise WorkflowNotRegisteredError(
                definition.name,
                "register it with a consumer" if registration is None else "no consumer is registered here",
            )
        runner = registration.runner
        if id is not None:
            existing = self._flows.get(id)
            if existing is not None:
                check_same_flow(_state(existing), definition.name, payload)
                return InProcessFlowHandle(id, self)
        else:
            id = new_flow_id()
        if self._finished:
            self._prune()
        now = time.time()
        flow_timeout = resolve_timeout(timeout, runner.options.timeout, self.default_timeout)
        state = runner.engine.new_state(id, payload, meta=meta, timeout=flow_timeout, now=now)
        flow = _Flow(runner, state, model)
        self._flows[id] = flow
        self._active[id] = flow
        if flow_timeout is not None:
            flow.timer = asyncio.get_running_loop().call_later(flow_timeout, self._deliver, flow, TimedOut())
        if registration.slots is None:
            self._dispatch(flow, runner.engine.start(state))
        else:
            semaphore = self._semaphores.get(definition.name)
            if semaphore is None:
                semaphore = self._semaphores[definition.name] = asyncio.Semaphore(registration.slots)
            flow.tasks["\x00start"] = asyncio.create_task(self._start_when_free(flow, semaphore))
        return InProcessFlowHandle(id, self)

    async def get_status(self, flow_id: str) -> FlowStatus:
        """Returns the status of flow ``flow_id``; raises ``FlowNotFoundError`` when unknown or expired."""
        found = self._find(flow_id)
        return found.state.status if isinstance(found, _Flow) else FlowStatus(found.status)

    async def get_handle(self, flow_id: str) -> InProcessFlowHandle[BaseModel]:
        """Returns a handle on flow ``flow_id``; raises ``FlowNotFoundError`` when unknown or expired."""
        self._find(flow_id)
        return InProcessFlowHandle(flow_id, self)

    async def describe(self, flow_id: str) -> FlowInfo:
        """Returns flow ``flow_id``'s status with each step's fate; raises ``FlowNotFoundError`` when unknown."""
        state = self.get_state(flow_id)
        return FlowInfo.from_state(state, self._registrations[state.workflow].definition)

    def get_state(self, flow_id: str) -> FlowState:
        """Returns the recorded state of a flow (step statuses, results, errors) for inspection.

        A running flow's state is the live object; a finished flow's is a copy.
        """
        return _state(self._find(flow_id))

    # -- driving the engine --

    def _find(self, flow_id: str) -> _Flow | _Ended:
        found = self._flows.get(flow_id)
        if found is None:
            raise FlowNotFoundError(flow_id)
        return found

    async def _start_when_free(self, flow: _Flow, semaphore: asyncio.Semaphore) -> None:
        await semaphore.acquire()
        flow.tasks.pop("\x00start", None)
        flow.slot = semaphore
        if flow.state.status == FlowStatus.PENDING:
            self._dispatch(flow, flow.runner.engine.start(flow.state))
        else:  # cancelled or timed out while waiting for a slot
            semaphore.release()
            flow.slot = None

    def _deliver(self, flow: _Flow, event: Event) -> None:
        self._dispatch(flow, flow.runner.engine.handle(flow.state, event))

    def _dispatch(self, flow: _Flow, actions: list[Action]) -> None:
        """Starts a task for each action to run; handles cancellations and the end of the flow."""
        for action in actions:
            if isinstance(action, Finish):
                self._finish(flow)
            elif isinstance(action, CancelRunning):
                self._cancel(flow, action)
            else:
                key = _key(action)
                flow.tasks[key] = asyncio.create_task(self._run(flow, action, key))

    async def _run(self, flow: _Flow, action: Action, key: str) -> None:
        """Runs ``action``, then keeps running the first of the actions the engine asks for next.

        Only the others get tasks of their own: a sequential flow runs in one task, a parallel group of n
        steps in n.
        """
        engine = flow.runner.engine
        tasks = flow.tasks
        me = asyncio.current_task()
        try:
            while True:
                if type(action) is RunStep and not action.delay:  # the hot path, without _perform's frame
                    event: Event = await flow.runner.run_step(flow.view, action.step, action.attempt)
                else:
                    event = await self._perform(flow, action)
                if tasks.get(key) is not me:
                    return  # cancelled by the engine while finishing; its event is stale
                del tasks[key]
                actions = engine.handle(flow.state, event)
                if not actions:
                    return
                follow = actions[0]
                if isinstance(follow, (Finish, CancelRunning)):
                    self._dispatch(flow, actions)
                    return
                if len(actions) > 1:
                    self._dispatch(flow, actions[1:])
                action, key = follow, _key(follow)
                tasks[key] = me  # type: ignore[assignment]  # me is this very task
        except asyncio.CancelledError:
            if tasks.get(key) is me:
                del tasks[key]
            raise
        except Exception as error:  # a bug in Plait itself: do not leave the caller waiting
            _log.exception("Internal error while running flow %s", flow.state.flow_id)
            flow.view.exceptions["complete", None] = error
            self._dispatch(flow, engine.abort(flow.state, f"internal error: {error!r}"))

    async def _perform(self, flow: _Flow, action: Action) -> Event:
        runner = flow.runner
        if isinstance(action, RunStep):
            if action.delay:
                await asyncio.sleep(action.delay)
            return await runner.run_step(flow.view, action.step, action.attempt)
        if isinstance(action, RunRollback):
            if action.delay:
                await asyncio.sleep(action.delay)
            return await runner.run_rollback(flow.view, action.step, action.attempt)
        if isinstance(action, RunComplete):
            event = await runner.run_complete(flow.view)
            if isinstance(event, CompleteSucceeded) and isinstance(event.model, BaseModel):
                flow.view.models[_COMPLETE] = event.model
            return event
        if isinstance(action, RunOnError):
            return await runner.run_on_error(flow.view)
        raise TypeError(f"Unexpected action {action!r}")  # pragma: no cover

    def _cancel(self, flow: _Flow, action: CancelRunning) -> None:
        keys = [*action.steps, *([_COMPLETE] if action.complete else [])]
        for key in keys:
            task = flow.tasks.pop(key, None)
            if task is not None:
                task.cancel()

    def _finish(self, flow: _Flow) -> None:
        state = flow.state
        state.finished_at = time.time()
        if flow.timer is not None:
            flow.timer.cancel()
        if flow.slot is not None:
            flow.slot.release()
            flow.slot = None
        for task in flow.tasks.values():
            task.cancel()
        flow.tasks.clear()
        flow_id = state.flow_id
        self._active.pop(flow_id, None)
        self._flows[flow_id] = _ended(flow)
        self._finished[flow_id] = state.finished_at
        if self.max_finished is not None and len(self._finished) > self.max_finished:
            oldest, _ = self._finished.popitem(last=False)
            self._flows.pop(oldest, None)
        if flow.done is not None:
            flow.done.set_result(None)
            flow.done = None
        if state.status != FlowStatus.COMPLETED:
            error: WorkflowError = build_error(state, flow.view.exceptions)
            _log.warning("Flow %s of workflow '%s' ended %s: %s", flow_id, state.workflow, state.status, error)

    def _prune(self) -> None:
        horizon = time.time() - self.retention
        finished = self._finished
        while finished:
            flow_id, at = next(iter(finished.items()))
            if at > horizon:
                break
            del finished[flow_id]
            self._flows.pop(flow_id, None)


def _ended(flow: _Flow) -> _Ended:
    state = flow.state
    raw = state.to_dict()
    raw["status"] = state.status.value  # marshal takes exact built-in types only
    result = None
    if state.status == FlowStatus.COMPLETED:
        model = flow.view.models.get(_COMPLETE) or flow.runner.definition.result.model_validate(state.result)
        result = model.model_dump_json()
    causes = dict(flow.view.exceptions) if flow.view.exceptions else None
    return _Ended(state.status.value, state.workflow, result, marshal.dumps(raw), causes)


def _state(found: _Flow | _Ended) -> FlowState:
    return found.state if isinstance(found, _Flow) else found.load()


def _key(action: Action) -> str:
    if isinstance(action, (RunStep, RunRollback)):
        return action.step
    if isinstance(action, RunComplete):
        return _COMPLETE
    return "\x00on_error"
