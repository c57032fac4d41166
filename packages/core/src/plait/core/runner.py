"""Running the engine's actions against a consumer: the part of execution every provider shares.

A :class:`Runner` binds a definition, its consumer and options. Its ``run_*`` methods build the context, await
the handler (under the step timeout), validate what it returns and turn the outcome into the engine event to
feed back; :meth:`Runner.evaluate` does the same for the definition's own callables (conditions, for-each items,
sub-workflow data, sleep times). Providers decide only where and when these run: in a task, in an arq job, in a
thread.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Container, Iterable, Mapping
from datetime import datetime
from types import CoroutineType
from typing import Any, Generic, TypeVar

import pydantic_core
from pydantic import BaseModel, ValidationError

from plait.core import telemetry
from plait.core.consumer import IWorkflowConsumer, check_consumer
from plait.core.context import StepContext, WorkflowContext
from plait.core.engine import (
    JSON,
    Action,
    CompleteRaised,
    CompleteReturned,
    Engine,
    ErrorHandled,
    ErrorRecord,
    Evaluated,
    ExceptionKey,
    FlowState,
    Policy,
    RollbackRaised,
    RollbackReturned,
    StepRaised,
    StepReturned,
    Unrunnable,
    build_error,
)
from plait.core.errors import (
    DefinitionError,
    FlowConflictError,
    NoEffectError,
    NonRetryableError,
    PayloadTooLargeError,
)
from plait.core.executor import current_correlation_id
from plait.core.handle import FlowStatus
from plait.core.options import ConsumerOptions
from plait.core.tracebacks import traceback_text
from plait.core.validation import MAX_PAYLOAD_SIZE, check_flow_id, is_seconds, json_form, json_size, validate
from plait.core.workflow import WorkflowDefinition

__all__ = [
    "FlowView",
    "ProgressSink",
    "Runner",
    "check_flow_id",
    "check_same_flow",
    "check_timeout",
    "correlate",
    "error_record",
    "flow_ended",
    "new_flow_id",
    "prepare_registration",
    "resolve_timeout",
    "validate_data",
]

D = TypeVar("D", bound=BaseModel)
_end_log = logging.getLogger("plait.engine")  # the flow's end, whichever provider ran it
R = TypeVar("R", bound=BaseModel)

ProgressSink = Callable[["FlowView[Any]", "str | None", "int | None", float, "str | None"], Awaitable[None]]
"""Where a provider takes a flow's progress reports: ``(view, step, index, fraction, message)``."""


def new_flow_id() -> str:
    """A fresh flow id: ``flow-`` and 32 hex digits."""
    # uuid4's randomness, without building a UUID. Read for each id: a buffer of them, shared by threads and
    # inherited by forked processes, would hand two processes the same ids.
    return f"flow-{os.urandom(16).hex()}"


def validate_data(
    definition: WorkflowDefinition[D, Any], data: object, *, max_size: int = MAX_PAYLOAD_SIZE
) -> tuple[D, Any]:
    """Validates ``data`` (a model instance or a mapping) against the definition's ``data`` model.

    Returns:
        The validated model and its JSON form, which is what a provider stores.

    Raises:
        WorkflowValidationError: naming the workflow and pydantic's problems.
        PayloadTooLargeError: the data is larger, as JSON, than ``max_size`` bytes.
    """
    return validate(definition.data, data, workflow=definition.name, what="data", max_size=max_size)


def check_same_flow(state: FlowState, workflow: str, data: object) -> None:
    """Raises :class:`FlowConflictError` unless an existing flow is of ``workflow`` with ``data`` (JSON)."""
    if state.workflow != workflow:
        raise FlowConflictError(state.flow_id, f"for workflow '{state.workflow}', not '{workflow}'")
    if state.data != data:
        raise FlowConflictError(state.flow_id, "with different data")


def check_timeout(value: object, what: str = "timeout") -> None:
    """Raises ``ValueError`` unless ``value`` is ``None`` or a number of seconds greater than 0."""
    if value is not None and not is_seconds(value):
        raise ValueError(f"{what} must be a number of seconds greater than 0, or None; got {value!r}")


def check_seconds(value: object, what: str, *, allow_zero: bool = False) -> float:
    """Returns ``value`` if it is a number of seconds greater than 0 (or equal, with ``allow_zero``), else raises
    ``ValueError`` naming ``what``."""
    if not is_seconds(value, allow_zero=allow_zero):
        bound = "0 or more" if allow_zero else "greater than 0"
        raise ValueError(f"{what} must be a number of seconds {bound}; got {value!r}")
    assert isinstance(value, int | float)
    return float(value)


def resolve_timeout(*candidates: float | None) -> float | None:
    """The first of ``candidates`` that is not ``None`` (``execute()``'s, the consumer's, the provider's)."""
    for value in candidates:
        if value is not None:
            return value
    return None


def error_record(error: BaseException) -> ErrorRecord:
    """An exception as plain data: qualified type name, message and formatted traceback (without carets: see
    :mod:`plait.core.tracebacks`)."""
    kind = type(error)
    module = kind.__module__
    name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
    return {
        "type": name,
        "message": str(error),
        "traceback": traceback_text(error),
    }


def correlate(state: FlowState) -> None:
    """Makes flow ``state``'s correlation id (as its contexts have it) current in this context, for good.

    A flow that a handler starts through the application's executor carries that id, so the runner makes it current
    around each handler call unless it is already. A provider calls this at the start of a task that runs only this
    flow's handlers: they then run without a coroutine of the runner's own around each call.
    """
    current_correlation_id.set(state.meta.get("correlation_id") or state.flow_id)


def flow_ended(state: FlowState, exceptions: Mapping[ExceptionKey, BaseException] | None = None) -> None:
    """What every provider does when a flow ends: one log line (logger ``plait.engine``) when it did not complete,
    and its span when tracing is on, both from one rebuild of its error (made only when one of them needs it)."""
    message: str | None = None
    if state.error is not None and (state.status != FlowStatus.COMPLETED or telemetry.enabled()):
        message = str(build_error(state, exceptions))
        if state.status != FlowStatus.COMPLETED:
            _end_log.warning(
                "Flow %s of workflow '%s' ended %s: %s", state.flow_id, state.workflow, state.status, message
            )
    telemetry.flow_finished(state, message)


def prepare_registration(
    definition: WorkflowDefinition[D, R],
    consumer: IWorkflowConsumer[D, R] | None,
    options: ConsumerOptions | None,
    *,
    registered: Container[str],
    provider_id: str,
    step_timeout: float | None,
    default_timeout: float | None = None,
    max_payload_size: int = MAX_PAYLOAD_SIZE,
) -> Runner[D, R] | None:
    """What every provider's ``register()`` checks first; returns the consumer's runner (``None`` without one).

    Args:
        registered: the workflow names the provider has already.
        provider_id, step_timeout, default_timeout, max_payload_size: the provider's, handed to the
            :class:`Runner`.

    Raises:
        DefinitionError: not a definition, a name registered twice, or a consumer that does not match.
    """
    if not isinstance(definition, WorkflowDefinition):
        raise DefinitionError(f"register() takes a definition from Workflow.define(), got {definition!r}")
    if definition.name in registered:
        raise DefinitionError(f"Workflow '{definition.name}' is registered twice")
    if consumer is None:
        return None
    return Runner(
        definition,
        consumer,
        options,
        provider_id=provider_id,
        step_timeout=step_timeout,
        default_timeout=default_timeout,
        max_payload_size=max_payload_size,
    )


class FlowView(Generic[D]):
    """A flow's data and results as models, validated from the state's JSON once and then cached.

    In-process providers keep one per flow (so nothing is validated twice); remote providers build one per job.

    Attributes:
        definition: the workflow definition.
        state: the flow's recorded state.
        models: validated results by node name, cached.
        exceptions: the exceptions handlers of this flow raised here, for its error's causes.
        sink: where ``ctx.progress()`` goes, called with this view first; ``None`` ignores it. A provider can hand
            every flow the same sink (one bound method): a reporter of its own per flow would keep a few more
            objects alive per running flow for the garbage collector to walk.
    """

    __slots__ = ("_data", "definition", "exceptions", "models", "sink", "state")

    def __init__(self, definition: WorkflowDefinition[D, Any], state: FlowState, data: D | None = None) -> None:
        self.definition = definition
        self.state = state
        self._data = data
        self.models: dict[str, Any] = {}
        self.exceptions: dict[ExceptionKey, BaseException] = {}
        self.sink: ProgressSink | None = None

    @property
    def data(self) -> D:
        """The validated input model."""
        if self._data is None:
            self._data = self.definition.data.model_validate(self.state.data)
        return self._data

    def progress(self, step: str | None, index: int | None, fraction: float, message: str | None) -> Awaitable[None]:
        """Hands a progress report of ``step`` (item ``index``) to the sink."""
        assert self.sink is not None
        return self.sink(self, step, index, fraction, message)

    def results(self, names: Iterable[str]) -> dict[str, Any]:
        """The result models of those of ``names`` that completed (a for-each's: a list of models)."""
        recorded = self.state.results
        models = self.models
        out: dict[str, Any] = {}
        for name in names:
            if name in recorded:
                model = models.get(name)
                if model is None:
                    model = models[name] = self._validate(name, recorded[name])
                out[name] = model
        return out

    def _validate(self, name: str, value: JSON) -> Any:
        step = self.definition.step(name)
        output = step.output
        assert output is not None  # sleeps record no result
        if step.kind == "for_each":
            return [output.model_validate(v) for v in value]
        return output.model_validate(value)

    def item(self, step: str, index: int) -> JSON:
        """For-each ``step``'s item ``index`` (its recorded JSON value)."""
        return self.state.items[step][index].get("value")

    def output(self, step: str, index: int | None) -> BaseModel | None:
        """The output of ``step`` (of item ``index``), for its rollback; ``None`` if it did not complete."""
        if index is None:
            value = self.results((step,)).get(step)
            return value if isinstance(value, BaseModel) else None
        item = self.state.items[step][index]
        if item.get("status") not in ("completed", "compensating", "compensated", "compensation_failed"):
            return None
        if "output" not in item:
            return None
        output = self.definition.step(step).output
        assert output is not None
        return output.model_validate(item["output"])


class Runner(Generic[D, R]):
    """A workflow with its consumer: builds the engine and runs the actions it asks for.

    Args:
        definition: the workflow definition.
        consumer: the consumer instance implementing its steps.
        options: the consumer's options; ``None`` for the defaults.
        provider_id: the running provider's id, shown in contexts and logs.
        step_timeout: the provider's default step timeout, used when ``options.step_timeout`` is ``None``.
        default_timeout: the provider's default flow timeout, used when ``options.timeout`` is ``None``.
        max_payload_size: the most bytes of JSON a step's output, the flow's result, a for-each's items or a
            sub-workflow's data may take.

    Raises:
        DefinitionError: the consumer does not match the definition.
    """

    __slots__ = (
        "_executes",
        "_outputs",
        "_visible",
        "consumer",
        "default_timeout",
        "definition",
        "engine",
        "max_payload_size",
        "options",
        "policy",
        "provider_id",
        "step_timeout",
    )

    def __init__(
        self,
        definition: WorkflowDefinition[D, R],
        consumer: IWorkflowConsumer[D, R],
        options: ConsumerOptions | None = None,
        *,
        provider_id: str = "",
        step_timeout: float | None = None,
        default_timeout: float | None = None,
        max_payload_size: int = MAX_PAYLOAD_SIZE,
    ) -> None:
        if options is not None and not isinstance(options, ConsumerOptions):
            raise DefinitionError(
                f"Options of workflow '{definition.name}' must be ConsumerOptions, got {type(options).__name__}"
            )
        self.definition = definition
        self.consumer = consumer
        self.options = options = options or ConsumerOptions()
        undo = check_consumer(definition, consumer)
        self.engine = Engine(definition)
        backoff = options.backoff
        self.policy: Policy = {
            "attempts": options.attempts,
            "backoff": [backoff.kind, backoff.delay, backoff.max_delay, backoff.jitter],
            "undo": [name for name in definition.step_names if name in undo],
            "in_doubt": [name for name, handler in consumer.steps.items() if handler.rollback_if_failed],
        }
        """What the engine records in each flow at its start: attempts, backoff, rollbacks, in-doubt steps."""
        self.provider_id = provider_id
        self.step_timeout = resolve_timeout(options.step_timeout, step_timeout)
        self.default_timeout = resolve_timeout(options.timeout, default_timeout)
        """A flow's timeout when ``execute()`` gives none: the registration's, else the provider's."""
        self.max_payload_size = max_payload_size
        # Looked up once per step run: keep them a dict access away.
        self._executes = {name: handler.execute for name, handler in consumer.steps.items()}
        self._outputs = {name: definition.step(name).output for name in definition.step_names}
        self._visible = {name: self.engine.visible(name) for name in definition.step_names}

    def view(self, state: FlowState, data: D | None = None) -> FlowView[D]:
        """A :class:`FlowView` of ``state``."""
        return FlowView(self.definition, state, data)

    def start(self, state: FlowState, now: float) -> list[Action]:
        """Starts a pending flow with this consumer's policy and default timeout (see :meth:`Engine.start`)."""
        return self.engine.start(state, policy=self.policy, default_timeout=self.default_timeout, now=now)

    # -- contexts --

    def _context(
        self,
        view: FlowView[D],
        step: str,
        attempt: int,
        names: Iterable[str],
        kind: str = "step",
        index: int | None = None,
        output: BaseModel | None = None,
    ) -> StepContext[D]:
        state = view.state
        return StepContext(  # by position: see WorkflowContext.__init__
            state.flow_id,
            state.workflow,
            view.data,
            view.results(names),
            state.meta,
            self.provider_id,
            step,
            attempt,
            kind,
            None if index is None else view.item(step, index),
            index,
            output,
            None if view.sink is None else view.progress,
        )

    def _workflow_context(self, view: FlowView[D], kind: str, names: Iterable[str] | None = None) -> WorkflowContext[D]:
        state = view.state
        return WorkflowContext(  # by position: see WorkflowContext.__init__
            state.flow_id,
            state.workflow,
            view.data,
            view.results(self.definition.step_names if names is None else names),
            state.meta,
            self.provider_id,
            kind,
            None if view.sink is None else view.progress,
        )

    def _bare(self, ctx: WorkflowContext[D]) -> bool:
        """Whether a handler can be called as it is: no step timeout, no tracing, and the flow's correlation id
        already current (see :func:`correlate`). Then an async handler's coroutine is awaited where it is made, and
        costs no coroutine of the runner's own; else :meth:`_guarded` does it all."""
        if self.step_timeout is not None or current_correlation_id.get() != ctx.correlation_id:
            return False
        return not telemetry.enabled()

    async def _call(self, what: str, name: str, fn: Any, ctx: WorkflowContext[D], *extra: object) -> Any:
        """Calls a handler and awaits what it returns, if it is awaitable. ``what`` names the handler in the error of
        a timeout, formatted with ``name`` only then."""
        if not self._bare(ctx):
            return await self._guarded(what, name, fn, ctx, *extra)
        out = fn(ctx, *extra)
        return await out if type(out) is CoroutineType or inspect.isawaitable(out) else out

    async def _guarded(self, what: str, name: str, fn: Any, ctx: WorkflowContext[D], *extra: object) -> Any:
        # A flow that a handler starts through the application's executor carries this flow's correlation id.
        token = current_correlation_id.set(ctx.correlation_id)
        try:
            if not telemetry.enabled():
                return await self._await(what, name, fn, ctx, *extra)
            with telemetry.handler_span(
                ctx.kind, ctx.flow_id, ctx.workflow, ctx.meta, ctx.step_name, getattr(ctx, "attempt", None), ctx.index
            ) as span:
                try:
                    out = await self._await(what, name, fn, ctx, *extra)
                except BaseException as error:
                    telemetry.set_outcome(
                        span, "cancelled" if isinstance(error, asyncio.CancelledError) else "error", error
                    )
                    raise
                telemetry.set_outcome(span, "ok")
                return out
        finally:
            current_correlation_id.reset(token)

    async def _await(self, what: str, name: str, fn: Any, ctx: WorkflowContext[D], *extra: object) -> Any:
        timeout = self.step_timeout
        if timeout is None:
            out = fn(ctx, *extra)
            return await out if inspect.isawaitable(out) else out
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                out = fn(ctx, *extra)
                return await out if inspect.isawaitable(out) else out
        except TimeoutError as error:
            if not scope.expired():
                raise  # the handler's own TimeoutError (say, from an HTTP client): keep it as the cause
            raise TimeoutError(f"{what.format(name)} timed out after {timeout:g}s") from error

    def _check_size(self, value: Any, what: str, name: str = "", size: int | None = None) -> None:
        """Raises ``PayloadTooLargeError`` if ``value`` (its JSON taking ``size`` bytes, when known) is too large."""
        if size is None:
            size = json_size(value)
        if size > self.max_payload_size:  # what names the value; formatted with name only then
            raise PayloadTooLargeError(f"The {what.format(name)}", size, self.max_payload_size)

    # -- handlers --

    async def run_step(
        self, view: FlowView[D], step: str, attempt: int, index: int | None = None
    ) -> StepReturned | StepRaised | Unrunnable:
        """Runs attempt ``attempt`` of ``step`` (of for-each item ``index``); returns the event for the engine."""
        try:
            ctx = self._context(view, step, attempt, self._visible[step], "step", index)
        except ValidationError as error:
            return _unrunnable(error)
        try:
            # _call's lines, without its coroutine
            if self._bare(ctx):
                out: Any = self._executes[step](ctx)
                if type(out) is CoroutineType or inspect.isawaitable(out):
                    out = await out
            else:
                out = await self._guarded("Step '{}'", step, self._executes[step], ctx)
        except _FAILURES as error:
            _reraise_cancellation(error)
            view.exceptions["step", step, index] = error
            retryable = not isinstance(error, NonRetryableError)
            no_effect = isinstance(error, NoEffectError)
            return StepRaised(step, attempt, error_record(error), retryable, error, index, no_effect)
        output_model = self._outputs[step]
        try:
            model = out if type(out) is output_model else output_model.model_validate(_plain(out))  # type: ignore[union-attr]
            output, size = json_form(model)
            if size > self.max_payload_size:  # checked here, not in _check_size: a frame less per step
                self._check_size(output, "output of step '{}'", step, size)
        except _FAILURES as error:
            # A handler that returns the wrong shape, or a value JSON cannot hold, will do so again: no retry.
            # The model's own validators and serializers run here, and may raise any BaseException.
            _reraise_cancellation(error)
            view.exceptions["step", step, index] = error
            record = error_record(error)
            record["message"] = f"invalid output for {output_model.__name__}: {error}"  # type: ignore[union-attr]
            return StepRaised(step, attempt, record, False, error, index)
        if index is None:
            view.models[step] = model
        return StepReturned(step, attempt, output, model, index)

    async def run_rollback(
        self, view: FlowView[D], step: str, attempt: int, index: int | None = None
    ) -> RollbackReturned | RollbackRaised | Unrunnable:
        """Runs attempt ``attempt`` of ``step``'s rollback (of item ``index``); it sees every completed result and
        ``ctx.output``, the output being rolled back."""
        rollback = self.consumer.steps[step].rollback
        if rollback is None:  # pragma: no cover - the engine only asks for rollbacks that exist
            return RollbackReturned(step, attempt, index)
        try:
            output = view.output(step, index)
            ctx = self._context(view, step, attempt, self.definition.step_names, "rollback", index, output)
        except ValidationError as error:
            return _unrunnable(error)
        try:
            await self._call("Rollback of step '{}'", step, rollback, ctx)
        except _FAILURES as error:
            _reraise_cancellation(error)
            view.exceptions["rollback", step, index] = error
            return RollbackRaised(step, attempt, error_record(error), error, index)
        return RollbackReturned(step, attempt, index)

    async def run_complete(self, view: FlowView[D]) -> CompleteReturned | CompleteRaised | Unrunnable:
        """Calls ``on_complete`` and validates its result."""
        try:
            ctx = self._workflow_context(view, "on_complete")
        except ValidationError as error:
            return _unrunnable(error)
        result_model = self.definition.result
        try:
            out = await self._call("on_complete", "", self.consumer.on_complete, ctx)
        except _FAILURES as error:
            _reraise_cancellation(error)
            view.exceptions["complete", None, None] = error
            return CompleteRaised(error_record(error), error)
        try:
            model = out if type(out) is result_model else result_model.model_validate(_plain(out))
            result, size = json_form(model)
            self._check_size(result, "result", "", size)
        except _FAILURES as error:
            _reraise_cancellation(error)
            view.exceptions["complete", None, None] = error
            record = error_record(error)
            record["message"] = f"invalid result for {result_model.__name__}: {error}"
            return CompleteRaised(record, error)
        return CompleteReturned(result, model)

    async def run_on_error(self, view: FlowView[D]) -> ErrorHandled | Unrunnable:
        """Calls ``on_error`` with the flow's error; an exception there is logged and swallowed."""
        try:
            ctx = self._workflow_context(view, "on_error")
        except ValidationError as invalid:
            return _unrunnable(invalid)
        flow_error = build_error(view.state, view.exceptions)
        try:
            await self._call("on_error", "", self.consumer.on_error, ctx, flow_error)
        except _FAILURES as error:
            _reraise_cancellation(error)
            ctx.log.exception("on_error raised; the flow still fails with its original error")
        return ErrorHandled()

    # -- the definition's callables --

    async def evaluate(
        self, view: FlowView[D], eval_id: int, targets: Iterable[tuple[str, str]]
    ) -> Evaluated | Unrunnable:
        """Runs the definition's callables the engine asked for (conditions, for-each items, sub-workflow data,
        sleep times) and returns their values as JSON, or the errors they raised."""
        values: dict[str, JSON] = {}
        errors: dict[str, ErrorRecord] = {}
        graph = self.engine.graph
        for what, name in targets:
            key = f"{what}:{name}"
            try:
                if what == "group":
                    group = int(name)
                    fn: Any = self.definition.step_groups[group].when
                    ctx = self._workflow_context(view, "condition", graph.nodes[graph.roots[group][0]].visible)
                else:
                    node = graph.nodes[name]
                    fn = {"when": node.step.when, "items": node.step.items, "data": node.step.data}.get(
                        what, node.step.until
                    )
                    ctx = self._workflow_context(view, "condition", node.visible)
            except ValidationError as error:
                return _unrunnable(error)
            try:
                value = await self._call(what + "() of '{}'", name, fn, ctx)
                values[key] = self._to_json(what, name, value)
            except _FAILURES as error:
                _reraise_cancellation(error)
                errors[key] = error_record(error)
        return Evaluated(eval_id, values, errors)

    def _to_json(self, what: str, name: str, value: Any) -> JSON:
        if what in ("when", "group"):
            return bool(value)
        if what == "until":
            if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
                raise TypeError(f"until() of sleep '{name}' must return an aware datetime, got {value!r}")
            return value.timestamp()
        if what == "items":
            if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
                raise TypeError(f"items() of for-each '{name}' must return a list (or another iterable) of items")
            items = pydantic_core.to_jsonable_python(list(value))
            self._check_size(items, "items of for-each '{}'", name)
            return items
        child = self.definition.step(name).workflow
        assert child is not None
        _, payload = validate(child.data, value, workflow=child.name, what="data", max_size=self.max_payload_size)
        return payload


# Whatever a handler raises fails that attempt, BaseExceptions included: a handler's SystemExit,
# KeyboardInterrupt or GeneratorExit must not stop the process (or leave its flow running forever). Only the
# provider cancelling the running task itself (a timeout, a shutdown) propagates; a CancelledError the handler
# raised without being cancelled (it awaited a future somebody else cancelled) is a failure like any other.
_FAILURES = BaseException


def _reraise_cancellation(error: BaseException) -> None:
    if isinstance(error, asyncio.CancelledError):
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise error


def _unrunnable(error: ValidationError) -> Unrunnable:
    # The recorded data or a recorded result no longer validates (the models changed since it was stored):
    # no handler of this flow can be given a valid context, now or later.
    record = error_record(error)
    record["message"] = f"its recorded data or results no longer validate against the workflow's models: {error}"
    return Unrunnable(record)


def _plain(value: object) -> object:
    # A model of another class (say, a handler's own model with the same fields) validates through its data.
    return value.model_dump() if isinstance(value, BaseModel) else value
