"""The workflows and scripted consumers the conformance suite runs: models, definitions, and a consumer that
does what each test tells it and records every call (kind, step, attempt, timing, context).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, field_validator

from plait.core import (
    Backoff,
    IWorkflowConsumer,
    NoEffectError,
    NonRetryableError,
    StepContext,
    StepHandler,
    Workflow,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowError,
)

__all__ = [
    "BAG",
    "BARE",
    "DIAMOND",
    "FAST",
    "FOREVER",
    "LINE",
    "OPAQUE",
    "RICH",
    "SOLO",
    "AOut",
    "BOut",
    "Bag",
    "COut",
    "Call",
    "DOut",
    "Declined",
    "Do",
    "Echo",
    "FlowOut",
    "Opaque",
    "Order",
    "Rich",
    "Scripted",
    "StepBoom",
    "StepOut",
]

T = TypeVar("T")


# --- models and definitions shared by every test ----------------------------------------------------------


class Order(BaseModel):
    """The data of every contract workflow."""

    key: str
    amount: int = 1


class StepOut(BaseModel):
    """What a contract step returns: who ran, which attempt, which results it saw (and, for a for-each item,
    which item)."""

    step: str
    attempt: int
    seen: list[str]
    index: int | None = None
    item: Any = None


class AOut(StepOut):
    """Output of step ``a``."""


class BOut(StepOut):
    """Output of step ``b``."""


class COut(StepOut):
    """Output of step ``c``."""


class DOut(StepOut):
    """Output of step ``d``."""


class FlowOut(BaseModel):
    """The result of every contract workflow: the key and ``<step>:<output class>`` of each result seen."""

    key: str
    results: list[str]


class Rich(BaseModel):
    """Data whose JSON form differs from its Python form, for providers that store JSON."""

    when: datetime
    price: Decimal
    ref: uuid.UUID
    tags: tuple[str, ...]
    nested: Order
    note: str | None


class Explodes:
    """A value whose validation raises ``raises`` (a model's validators are user code too)."""

    def __init__(self, raises: type[BaseException]) -> None:
        self.raises = raises


class Opaque(BaseModel):
    """A step output that may hold a value JSON cannot represent, or one whose validation raises."""

    step: str
    value: Any = None

    @field_validator("value")
    @classmethod
    def _check_value(cls, value: Any) -> Any:
        if isinstance(value, Explodes):
            raise value.raises("the output's validator raised")
        return value


class Note(BaseModel):
    """The payload of the contract's signals."""

    by: str


class EachOut(StepOut):
    """Output of a for-each item."""


class Bag(Order):
    """Order data that may carry anything besides."""

    extra: Any = None


class StepBoom(Exception):
    """Raised by scripted steps, rollbacks and callbacks that are told to fail."""


class Declined(NonRetryableError):
    """A failure that retrying cannot fix: the step fails at once."""


LINE = Workflow.define(name="contract-line", data=Order, result=FlowOut).steps(
    lambda s: s.sequential(s.step("a", AOut), s.step("b", BOut), s.step("c", COut))
)
"""Three sequential steps: a, b, c."""

DIAMOND = Workflow.define(name="contract-diamond", data=Order, result=FlowOut).steps(
    lambda s: (
        s.sequential(s.step("a", AOut)).parallel(s.step("b", BOut), s.step("c", COut)).sequential(s.step("d", DOut))
    )
)
"""a, then b and c in parallel, then d."""

SOLO = Workflow.define(name="contract-solo", data=Order, result=FlowOut).steps(
    lambda s: s.sequential(s.step("a", AOut))
)
"""One step."""

BARE = Workflow.define(name="contract-bare", data=Order, result=FlowOut)
"""No steps: on_complete does the work."""

RICH = Workflow.define(name="contract-rich", data=Rich, result=Rich).steps(lambda s: s.sequential(s.step("echo", Rich)))
"""One step that returns its data; on_complete returns the step's result."""

OPAQUE = Workflow.define(name="contract-opaque", data=Order, result=FlowOut).steps(
    lambda s: s.sequential(s.step("a", AOut), s.step("b", Opaque))
)
"""Step a, then step b whose output can hold anything."""

BAG = Workflow.define(name="contract-bag", data=Bag, result=FlowOut).steps(
    lambda s: s.sequential(s.step("a", AOut), s.step("b", BOut))
)
"""Steps a and b over data that may carry anything."""

FAST = Backoff.fixed(0.01)
FOREVER = 1_000_000  # attempts that fail: every one


# --- a consumer that does what it is told and records what happened ---------------------------------------


@dataclass(frozen=True, slots=True)
class Do:
    """What one step of a :class:`Scripted` consumer does.

    Attributes:
        fail: the first ``fail`` attempts raise (``FOREVER``: every attempt).
        raises: what a failing attempt raises.
        sleep: seconds each attempt takes before it returns or raises.
        sleep_attempts: attempts that sleep (all of them when empty).
        invalid: return an output that does not validate.
        opaque: return an :class:`Opaque` output holding a value that cannot be turned into JSON.
        opaque_raises: with ``opaque``, return the output as a dict whose validation raises this instead.
        plain: return a dict rather than the output model.
        rollback: whether the step has a rollback.
        rollback_fail: the first ``rollback_fail`` rollback attempts raise.
        rollback_raises: what a failing rollback attempt raises.
        pad: add a string of this many characters to the output (to make it large).
        items: for a for-each, the item indices this applies to (the others just succeed); ``None``: every item.
        progress: report this progress fraction before returning.
        no_effect: a failing attempt raises ``NoEffectError`` (it changed nothing).
        in_doubt: the step is rolled back even when it fails (``rollback_if_failed=True``).
        rollback_sleep: seconds each rollback attempt takes.
        finish_late: when cancelled, keep going and return the output anyway (a worker that cannot be interrupted).
    """

    fail: int = 0
    raises: type[BaseException] = StepBoom
    sleep: float = 0.0
    sleep_attempts: frozenset[int] = frozenset()
    invalid: bool = False
    opaque: bool = False
    opaque_raises: type[BaseException] | None = None
    plain: bool = False
    rollback: bool = True
    rollback_fail: int = 0
    rollback_raises: type[BaseException] = StepBoom
    pad: int = 0
    items: frozenset[int] | None = None
    progress: float | None = None
    no_effect: bool = False
    in_doubt: bool = False
    rollback_sleep: float = 0.0
    finish_late: bool = False


@dataclass(slots=True)
class Call:
    """One call of a handler: its kind, step, attempt and start/end times (``end`` is ``None`` while running)."""

    kind: Literal["step", "rollback", "complete", "on_error"]
    step: str | None
    attempt: int
    start: float
    end: float | None = None
    outcome: str = "running"
    index: int | None = None
    ctx: WorkflowContext[Order] | None = field(default=None, repr=False)
    error: WorkflowError | None = field(default=None, repr=False)

    @property
    def step_ctx(self) -> StepContext[Order]:
        """The context of a step or rollback call."""
        assert isinstance(self.ctx, StepContext), f"{self.kind} calls have no step context"
        return self.ctx


class Scripted(IWorkflowConsumer[Order, FlowOut]):
    """A consumer of any contract workflow whose steps behave as ``plan`` says and record every call."""

    def __init__(
        self,
        definition: WorkflowDefinition[Any, FlowOut],
        plan: Mapping[str, Do] | None = None,
        *,
        complete: Literal["ok", "raise", "invalid"] = "ok",
        complete_sleep: float = 0.0,
        on_error_raises: bool = False,
    ) -> None:
        self.plan = dict(plan or {})
        self.outputs = {
            step.name: step.output
            for group in definition.step_groups
            for step in group.steps
            if step.output is not None and step.has_handler
        }
        self.complete = complete
        self.complete_sleep = complete_sleep
        self.on_error_raises = on_error_raises
        self.calls: list[Call] = []
        self.late_finished = asyncio.Event()
        self.steps = {
            name: StepHandler(
                execute=self._execute_for(name),
                rollback=self._rollback_for(name) if self.plan.get(name, Do()).rollback else None,
                rollback_if_failed=self.plan.get(name, Do()).in_doubt,
            )
            for name in self.outputs
        }

    # -- queries used by the tests --

    def of(self, kind: str, step: str | None = None) -> list[Call]:
        """The calls of ``kind`` (for ``step``), in the order they started."""
        return [c for c in self.calls if c.kind == kind and (step is None or c.step == step)]

    def names(self, kind: str) -> list[str | None]:
        """The steps of the calls of ``kind``, in the order they started."""
        return [c.step for c in self.of(kind)]

    def finished(self, kind: str) -> list[str | None]:
        """The steps of the calls of ``kind`` that returned, in the order they ended."""
        done = [c for c in self.calls if c.kind == kind and c.outcome == "ok"]
        return [c.step for c in sorted(done, key=lambda c: c.end or 0.0)]

    # -- handlers --

    def _execute_for(self, name: str) -> Callable[[StepContext[Order]], Awaitable[BaseModel | dict[str, object]]]:
        output = self.outputs[name]

        async def execute(ctx: StepContext[Order]) -> BaseModel | dict[str, object]:
            call = self._begin("step", name, ctx.attempt, ctx)
            do = self._plan_for(name, ctx.index)
            try:
                if do.progress is not None:
                    await ctx.progress(do.progress, f"{name} at {do.progress:g}")
                if do.sleep and (not do.sleep_attempts or ctx.attempt in do.sleep_attempts):
                    await self._sleep(do, call)
                if ctx.attempt <= do.fail:
                    self._end(call, "raised", None)
                    if do.no_effect:
                        raise NoEffectError(f"nothing done by {name} {ctx.attempt}")
                    raise do.raises(f"boom {name} {ctx.attempt}")
                if do.opaque:
                    if do.opaque_raises is not None:
                        return self._end(call, "ok", {"step": name, "value": Explodes(do.opaque_raises)})
                    return self._end(call, "ok", Opaque(step=name, value=object()))
                if do.invalid:
                    invalid: dict[str, object] = {"step": name, "attempt": "not a number", "seen": None}
                    return self._end(call, "ok", invalid)
                seen = [*ctx.results, "x" * do.pad] if do.pad else list(ctx.results)
                fields: dict[str, object] = {"step": name, "attempt": ctx.attempt, "seen": seen}
                if ctx.index is not None:
                    fields.update(index=ctx.index, item=ctx.item)
                return self._end(call, "ok", fields if do.plain else output.model_validate(fields))
            except BaseException as error:
                if call.outcome == "running":
                    self._end(call, "cancelled" if isinstance(error, asyncio.CancelledError) else "raised", None)
                raise

        return execute

    def _rollback_for(self, name: str) -> Callable[[StepContext[Order]], Awaitable[None]]:
        async def rollback(ctx: StepContext[Order]) -> None:
            call = self._begin("rollback", name, ctx.attempt, ctx)
            do = self._plan_for(name, ctx.index)
            if do.rollback_sleep:
                await asyncio.sleep(do.rollback_sleep)
            if ctx.attempt <= do.rollback_fail:
                self._end(call, "raised", None)
                raise do.rollback_raises(f"rollback boom {name} {ctx.attempt}")
            self._end(call, "ok", None)

        return rollback

    async def on_complete(self, ctx: WorkflowContext[Order]) -> FlowOut:
        call = self._begin("complete", None, 1, ctx)
        if self.complete_sleep:
            await asyncio.sleep(self.complete_sleep)
        if self.complete == "raise":
            self._end(call, "raised", None)
            raise StepBoom("boom on_complete")
        if self.complete == "invalid":
            self._end(call, "ok", None)
            return {"key": ctx.data.key, "results": "not a list"}  # type: ignore[return-value]
        seen = [f"{name}:{type(value).__name__}" for name, value in ctx.results.items()]
        return self._end(call, "ok", FlowOut(key=ctx.data.key, results=seen))

    async def on_error(self, ctx: WorkflowContext[Order], error: WorkflowError) -> None:
        call = self._begin("on_error", None, 1, ctx)
        call.error = error
        if self.on_error_raises:
            self._end(call, "raised", None)
            raise StepBoom("boom on_error")
        self._end(call, "ok", None)

    # -- recording --

    def _plan_for(self, name: str, index: int | None) -> Do:
        do = self.plan.get(name, Do())
        if do.items is not None and index not in do.items:
            return Do(rollback=do.rollback)
        return do

    def _begin(self, kind: Any, step: str | None, attempt: int, ctx: WorkflowContext[Order]) -> Call:
        call = Call(kind, step, attempt, time.monotonic(), ctx=ctx, index=ctx.index)
        self.calls.append(call)
        return call

    def _end(self, call: Call, outcome: str, value: T) -> T:
        call.end = time.monotonic()
        call.outcome = outcome
        return value

    async def _sleep(self, do: Do, call: Call) -> None:
        if not do.finish_late:
            await asyncio.sleep(do.sleep)
            return
        try:
            await asyncio.sleep(do.sleep)
        except asyncio.CancelledError:
            # Simulates a worker that cannot be interrupted: it finishes and reports success after all.
            await asyncio.sleep(max(0.0, call.start + do.sleep - time.monotonic()))
        finally:
            self.late_finished.set()


class Echo(IWorkflowConsumer[Rich, Rich]):
    """Echoes the data through a step and back as the result, recording what it saw."""

    def __init__(self) -> None:
        self.seen: list[BaseModel] = []
        self.steps = {"echo": StepHandler(execute=self.echo)}

    async def echo(self, ctx: StepContext[Rich]) -> Rich:
        self.seen.append(ctx.data)
        return ctx.data

    async def on_complete(self, ctx: WorkflowContext[Rich]) -> Rich:
        echoed = ctx.results["echo"]
        self.seen.append(echoed)
        assert isinstance(echoed, Rich)
        return echoed
