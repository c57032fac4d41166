"""A stand-in for a user's consumer that records every handler call and injects failures where it is told to.

The user's consumer is never changed: the stand-in has its own ``steps`` whose handlers call the user's.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from plait.core import (
    IWorkflowConsumer,
    NoEffectError,
    StepContext,
    StepHandler,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowError,
)
from plait.testing._effects import Handler, running

__all__ = ["Call", "InjectedFailure", "Injection", "Instrumented", "Mode", "Recorder"]

Mode = Literal["raise", "timeout", "invalid", "no_effect"]


class InjectedFailure(Exception):
    """The exception ``assert_compensates`` raises in place of a handler (mode ``raise``)."""


@dataclass(frozen=True, slots=True)
class Injection:
    """Where a run fails and how: step ``step`` (item ``index``), or ``on_complete`` when ``step`` is ``None``."""

    step: str | None
    index: int | None
    mode: Mode

    @property
    def label(self) -> str:
        """``step``, ``step[index]`` or ``on_complete``."""
        if self.step is None:
            return "on_complete"
        return self.step if self.index is None else f"{self.step}[{self.index}]"


@dataclass(slots=True)
class Call:
    """One handler call: who, which attempt, what it saw and how it ended.

    ``outcome`` is ``"running"``, ``"returned"`` (a valid output), ``"invalid"`` (an output that does not
    validate) or ``"raised"``.
    """

    seq: int
    handler: Handler
    attempt: int
    item: Any = None
    seen_output: BaseModel | None = None
    outcome: str = "running"
    output: BaseModel | None = None
    error: BaseException | None = None
    injected: bool = False
    end: int = 0


@dataclass(slots=True)
class Recorder:
    """Every call of every instrumented consumer, in order, and the failure to inject per flow id."""

    calls: list[Call] = field(default_factory=list)
    plan: dict[str, Injection] = field(default_factory=dict)
    ticks: itertools.count[int] = field(default_factory=itertools.count)  # orders calls and their ends

    def begin(self, handler: Handler, attempt: int, item: Any = None, seen_output: BaseModel | None = None) -> Call:
        call = Call(next(self.ticks), handler, attempt, item, seen_output)
        self.calls.append(call)
        return call

    def end(
        self, call: Call, outcome: str, *, output: BaseModel | None = None, error: BaseException | None = None
    ) -> None:
        call.outcome = outcome
        call.output = output
        call.error = error
        call.end = next(self.ticks)

    def of(self, flow_id: str) -> list[Call]:
        """The calls of flow ``flow_id``."""
        return [c for c in self.calls if c.handler.flow_id == flow_id]


class _Invalid:
    """What an ``invalid`` injection returns in place of the handler's output: no model validates it."""

    def __repr__(self) -> str:
        return "<invalid output injected by assert_compensates>"


StepFn = Callable[[StepContext[Any]], Awaitable[BaseModel | Mapping[str, object]]]
RollbackFn = Callable[[StepContext[Any]], Awaitable[None]]


class Instrumented(IWorkflowConsumer[Any, Any]):
    """Runs ``consumer``'s handlers, recording each call in ``recorder`` and injecting its planned failures."""

    def __init__(
        self, definition: WorkflowDefinition[Any, Any], consumer: IWorkflowConsumer[Any, Any], recorder: Recorder
    ) -> None:
        self.definition = definition
        self.consumer = consumer
        self.recorder = recorder
        self.steps = {
            name: StepHandler(
                execute=self._execute(name, handler.execute),
                rollback=None if handler.rollback is None else self._rollback(name, handler.rollback),
                rollback_if_failed=handler.rollback_if_failed,
            )
            for name, handler in consumer.steps.items()
        }

    def _injection(self, flow_id: str, step: str | None, index: int | None) -> Injection | None:
        planned = self.recorder.plan.get(flow_id)
        if planned is not None and planned.step == step and planned.index == index:
            return planned
        return None

    def _execute(self, name: str, execute: StepFn) -> StepFn:
        output_model = self.definition.step(name).output
        assert output_model is not None

        async def run(ctx: StepContext[Any]) -> Any:
            handler = Handler(ctx.flow_id, ctx.workflow, "step", name, ctx.index)
            call = self.recorder.begin(handler, ctx.attempt, ctx.item)
            injection = self._injection(ctx.flow_id, name, ctx.index)
            call.injected = injection is not None
            token = running.set(handler)
            try:
                if injection is not None and injection.mode in ("raise", "no_effect"):
                    raise _failure(injection)  # before the handler acts: nothing happened
                out = await _awaited(execute(ctx))
                if injection is not None and injection.mode == "timeout":
                    # As when the answer is lost: the handler acted, and the attempt timed out all the same.
                    raise TimeoutError(f"Step '{injection.label}' timed out (injected by assert_compensates)")
                if injection is not None:
                    self.recorder.end(call, "invalid")
                    return _Invalid()
                try:
                    model = output_model.model_validate(out.model_dump() if isinstance(out, BaseModel) else out)
                except Exception as error:
                    self.recorder.end(call, "invalid", error=error)
                else:
                    self.recorder.end(call, "returned", output=model)
                return out
            except BaseException as error:
                self.recorder.end(call, "raised", error=error)
                raise
            finally:
                running.reset(token)

        return run

    def _rollback(self, name: str, rollback: RollbackFn) -> RollbackFn:
        async def run(ctx: StepContext[Any]) -> None:
            handler = Handler(ctx.flow_id, ctx.workflow, "rollback", name, ctx.index)
            call = self.recorder.begin(handler, ctx.attempt, ctx.item, ctx.output)
            token = running.set(handler)
            try:
                await _awaited(rollback(ctx))
            except BaseException as error:
                self.recorder.end(call, "raised", error=error)
                raise
            else:
                self.recorder.end(call, "returned")
            finally:
                running.reset(token)

        return run

    async def on_complete(self, ctx: WorkflowContext[Any]) -> Any:
        handler = Handler(ctx.flow_id, ctx.workflow, "on_complete")
        call = self.recorder.begin(handler, 1)
        injection = self._injection(ctx.flow_id, None, None)
        call.injected = injection is not None
        token = running.set(handler)
        try:
            if injection is not None and injection.mode in ("raise", "no_effect"):
                raise _failure(injection)
            out = await _awaited(self.consumer.on_complete(ctx))
            if injection is not None and injection.mode == "timeout":
                raise TimeoutError("on_complete timed out (injected by assert_compensates)")
            if injection is not None:
                self.recorder.end(call, "invalid")
                return _Invalid()
            result = self.definition.result
            try:
                model = result.model_validate(out.model_dump() if isinstance(out, BaseModel) else out)
            except Exception as error:
                self.recorder.end(call, "invalid", error=error)
            else:
                self.recorder.end(call, "returned", output=model)
            return out
        except BaseException as error:
            self.recorder.end(call, "raised", error=error)
            raise
        finally:
            running.reset(token)

    async def on_error(self, ctx: WorkflowContext[Any], error: WorkflowError) -> None:
        handler = Handler(ctx.flow_id, ctx.workflow, "on_error")
        call = self.recorder.begin(handler, 1)
        token = running.set(handler)
        try:
            await _awaited(self.consumer.on_error(ctx, error))
        except BaseException as raised:
            self.recorder.end(call, "raised", error=raised)
            raise
        else:
            self.recorder.end(call, "returned")
        finally:
            running.reset(token)


def _failure(injection: Injection) -> Exception:
    where = "on_complete" if injection.step is None else f"step '{injection.label}'"
    if injection.mode == "no_effect":
        return NoEffectError(f"{where} failed without an effect (injected by assert_compensates)")
    return InjectedFailure(f"{where} failed (injected by assert_compensates)")


async def _awaited(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
