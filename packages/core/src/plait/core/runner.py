"""Running the engine's actions against a consumer: the part of execution every provider shares.

A :class:`Runner` binds a definition, its consumer and options. Its ``run_*`` methods build the context, await
the handler (under the step timeout), validate what it returns and turn the outcome into the engine event to
feed back. Providers decide only where and when these run: in a task, in an arq job, in a thread.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import traceback
import uuid
from collections.abc import Container, Iterable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from plait.core.consumer import IWorkflowConsumer, check_consumer
from plait.core.context import StepContext, WorkflowContext
from plait.core.engine import (
    CompleteFailed,
    CompleteSucceeded,
    Engine,
    ErrorHandled,
    ErrorRecord,
    FlowState,
    RollbackFailed,
    RollbackSucceeded,
    StepFailed,
    StepSucceeded,
    Unrunnable,
    build_error,
)
from plait.core.errors import DefinitionError, FlowConflictError, NonRetryableError, PayloadTooLargeError
from plait.core.executor import current_correlation_id
from plait.core.options import ConsumerOptions
from plait.core.validation import MAX_PAYLOAD_SIZE, check_flow_id, json_size, validate
from plait.core.workflow import WorkflowDefinition

__all__ = [
    "FlowView",
    "Runner",
    "check_flow_id",
    "check_same_flow",
    "check_timeout",
    "error_record",
    "new_flow_id",
    "prepare_registration",
    "resolve_timeout",
    "validate_data",
]

D = TypeVar("D", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

_log = logging.getLogger("plait.runner")


def new_flow_id() -> str:
    """A fresh flow id: ``flow-`` and 32 hex digits."""
    return f"flow-{uuid.uuid4().hex}"


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
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{what} must be a number of seconds greater than 0, or None; got {value!r}")


def resolve_timeout(*candidates: float | None) -> float | None:
    """The first of ``candidates`` that is not ``None`` (``execute()``'s, the consumer's, the provider's)."""
    for value in candidates:
        if value is not None:
            return value
    return None


def error_record(error: BaseException) -> ErrorRecord:
    """An exception as plain data: qualified type name, message and formatted traceback."""
    kind = type(error)
    module = kind.__module__
    name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
    return {
        "type": name,
        "message": str(error),
        "traceback": "".join(traceback.format_exception(error)),
    }


def prepare_registration(
    definition: WorkflowDefinition[D, R],
    consumer: IWorkflowConsumer[D, R] | None,
    options: ConsumerOptions | None,
    *,
    registered: Container[str],
    provider_id: str,
    step_timeout: float | None,
    max_payload_size: int = MAX_PAYLOAD_SIZE,
) -> Runner[D, R] | None:
    """What every provider's ``register()`` checks first; returns the consumer's runner (``None`` without one).

    Args:
        registered: the workflow names the provider has already.
        provider_id, step_timeout, max_payload_size: the provider's, handed to the :class:`Runner`.

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
        max_payload_size=max_payload_size,
    )


class FlowView(Generic[D]):
    """A flow's data and results as models, validated from the state's JSON once and then cached.

    In-process providers keep one per flow (so nothing is validated twice); remote providers build one per job.
    """

    __slots__ = ("_data", "definition", "exceptions", "models", "state")

    def __init__(self, definition: WorkflowDefinition[D, Any], state: FlowState, data: D | None = None) -> None:
        self.definition = definition
        self.state = state
        self._data = data
        self.models: dict[str, BaseModel] = {}
        self.exceptions: dict[tuple[str, str | None], BaseException] = {}

    @property
    def data(self) -> D:
        """The validated input model."""
        if self._data is None:
            self._data = self.definition.data.model_validate(self.state.data)
        return self._data

    def results(self, names: Iterable[str]) -> dict[str, BaseModel]:
        """The output models of those of ``names`` that completed."""
        recorded = self.state.results
        models = self.models
        out: dict[str, BaseModel] = {}
        for name in names:
            if name in recorded:
                model = models.get(name)
                if model is None:
                    model = models[name] = self.definition.step(name).output.model_validate(recorded[name])
                out[name] = model
        return out


class Runner(Generic[D, R]):
    """A workflow with its consumer: builds the engine and runs the actions it asks for.

    Args:
        definition: the workflow definition.
        consumer: the consumer instance implementing its steps.
        options: the consumer's options; ``None`` for the defaults.
        provider_id: the running provider's id, shown in contexts and logs.
        step_timeout: the provider's default step timeout, used when ``options.step_timeout`` is ``None``.
        max_payload_size: the most bytes of JSON a step's output or the flow's result may take.

    Raises:
        DefinitionError: the consumer does not match the definition.
    """

    __slots__ = (
        "_executes",
        "_outputs",
        "consumer",
        "definition",
        "engine",
        "max_payload_size",
        "options",
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
        max_payload_size: int = MAX_PAYLOAD_SIZE,
    ) -> None:
        if options is not None and not isinstance(options, ConsumerOptions):
            raise DefinitionError(
                f"Options of workflow '{definition.name}' must be ConsumerOptions, got {type(options).__name__}"
            )
        self.definition = definition
        self.consumer = consumer
        self.options = options or ConsumerOptions()
        self.engine = Engine(definition, self.options, check_consumer(definition, consumer))
        self.provider_id = provider_id
        self.step_timeout = resolve_timeout(self.options.step_timeout, step_timeout)
        self.max_payload_size = max_payload_size
        # Looked up once per step run: keep them a dict access away.
        self._executes = {name: handler.execute for name, handler in consumer.steps.items()}
        self._outputs = {name: definition.step(name).output for name in definition.step_names}

    def view(self, state: FlowState, data: D | None = None) -> FlowView[D]:
        """A :class:`FlowView` of ``state``."""
        return FlowView(self.definition, state, data)

    def _context(
        self, view: FlowView[D], step: str, attempt: int, names: Iterable[str], kind: str = "step"
    ) -> StepContext[D]:
        state = view.state
        return StepContext(
            flow_id=state.flow_id,
            workflow=state.workflow,
            data=view.data,
            results=view.results(names),
            meta=state.meta,
            provider_id=self.provider_id,
            step_name=step,
            attempt=attempt,
            kind=kind,
        )

    def _workflow_context(self, view: FlowView[D], kind: str) -> WorkflowContext[D]:
        state = view.state
        return WorkflowContext(
            flow_id=state.flow_id,
            workflow=state.workflow,
            data=view.data,
            results=view.results(self.definition.step_names),
            meta=state.meta,
            provider_id=self.provider_id,
            kind=kind,
        )

    async def _call(self, what: str, fn: Any, ctx: WorkflowContext[D], *extra: object) -> Any:
        # A flow that a handler starts through the application's executor carries this flow's correlation id.
        token = current_correlation_id.set(ctx.correlation_id)
        try:
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
                raise TimeoutError(f"{what} timed out after {timeout:g}s") from error
        finally:
            current_correlation_id.reset(token)

    def _check_size(self, value: Any, what: str) -> None:
        size = json_size(value)
        if size > self.max_payload_size:
            raise PayloadTooLargeError(f"The {what}", size, self.max_payload_size)

    async def run_step(self, view: FlowView[D], step: str, attempt: int) -> StepSucceeded | StepFailed | Unrunnable:
        """Runs attempt ``attempt`` of ``step``; returns the event to hand to the engine."""
        try:
            ctx = self._context(view, step, attempt, self.engine.visible_steps(step))
        except ValidationError as error:
            return _unrunnable(error)
        execute = self._executes[step]
        try:
            if self.step_timeout is None:  # the common case, without _call's extra coroutine (same as _call)
                token = current_correlation_id.set(ctx.correlation_id)
                try:
                    out: Any = execute(ctx)
                    if inspect.isawaitable(out):
                        out = await out
                finally:
                    current_correlation_id.reset(token)
            else:
                out = await self._call(f"Step '{step}'", execute, ctx)
        except _FAILURES as error:
            _reraise_cancellation(error)
            view.exceptions["step", step] = error
            retryable = not isinstance(error, NonRetryableError)
            return StepFailed(step, attempt, error_record(error), retryable, error)
        output_model = self._outputs[step]
        try:
            model = out if type(out) is output_model else output_model.model_validate(_plain(out))
            output = model.model_dump(mode="json")
            self._check_size(output, f"output of step '{step}'")
        except Exception as error:
            # A handler that returns the wrong shape, or a value JSON cannot hold, will do so again: no retry.
            view.exceptions["step", step] = error
            record = error_record(error)
            record["message"] = f"invalid output for {output_model.__name__}: {error}"
            return StepFailed(step, attempt, record, False, error)
        view.models[step] = model
        return StepSucceeded(step, attempt, output, model)

    async def run_rollback(
        self, view: FlowView[D], step: str, attempt: int
    ) -> RollbackSucceeded | RollbackFailed | Unrunnable:
        """Runs attempt ``attempt`` of ``step``'s rollback (it sees every completed result)."""
        rollback = self.consumer.steps[step].rollback
        if rollback is None:  # pragma: no cover - the engine only asks for rollbacks that exist
            return RollbackSucceeded(step, attempt)
        try:
            ctx = self._context(view, step, attempt, self.definition.step_names, "rollback")
        except ValidationError as error:
            return _unrunnable(error)
        try:
            await self._call(f"Rollback of step '{step}'", rollback, ctx)
        except _FAILURES as error:
            _reraise_cancellation(error)
            view.exceptions["rollback", step] = error
            return RollbackFailed(step, attempt, error_record(error), error)
        return RollbackSucceeded(step, attempt)

    async def run_complete(self, view: FlowView[D]) -> CompleteSucceeded | CompleteFailed | Unrunnable:
        """Calls ``on_complete`` and validates its result."""
        try:
            ctx = self._workflow_context(view, "on_complete")
        except ValidationError as error:
            return _unrunnable(error)
        result_model = self.definition.result
        try:
            out = await self._call("on_complete", self.consumer.on_complete, ctx)
        except _FAILURES as error:
            _reraise_cancellation(error)
            view.exceptions["complete", None] = error
            return CompleteFailed(error_record(error), error)
        try:
            model = out if type(out) is result_model else result_model.model_validate(_plain(out))
            result = model.model_dump(mode="json")
            self._check_size(result, "result")
        except Exception as error:
            view.exceptions["complete", None] = error
            record = error_record(error)
            record["message"] = f"invalid result for {result_model.__name__}: {error}"
            return CompleteFailed(record, error)
        return CompleteSucceeded(result, model)

    async def run_on_error(self, view: FlowView[D]) -> ErrorHandled | Unrunnable:
        """Calls ``on_error`` with the flow's error; an exception there is logged and swallowed."""
        try:
            ctx = self._workflow_context(view, "on_error")
        except ValidationError as invalid:
            return _unrunnable(invalid)
        flow_error = build_error(view.state, view.exceptions)
        try:
            await self._call("on_error", self.consumer.on_error, ctx, flow_error)
        except _FAILURES as error:
            _reraise_cancellation(error)
            ctx.log.exception("on_error raised; the flow still fails with its original error")
        return ErrorHandled()


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
