"""``assert_compensates``: runs a workflow once per failure point and mode, and checks each run's saga.

Each run executes the user's workflow on an in-process provider with a virtual clock, through a stand-in
consumer that calls the user's handlers and makes exactly one of them fail. What must hold afterwards is computed
from the call record, independently of the engine: which steps completed, so which rollbacks are due and in which
order, and which effects (when the test notes them in an :class:`Effects`) must have been undone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, get_args

from pydantic import BaseModel

from plait.core import (
    ConsumerOptions,
    DefinitionError,
    FlowEvent,
    FlowHandle,
    FlowStatus,
    IWorkflowConsumer,
    StepFailed,
    StepHandler,
    StepStarted,
    WorkflowCompletionError,
    WorkflowDefinition,
    WorkflowError,
    WorkflowRollbackError,
    WorkflowStepError,
)
from plait.core.consumer import check_consumer
from plait.core.engine import child_flow_id
from plait.providers.inprocess import InProcessWorkflowProvider
from plait.testing._clock import VirtualClock
from plait.testing._effects import Effects, Handler
from plait.testing._instrument import Call, Injection, Instrumented, Mode, Recorder
from plait.testing._report import CompensationError, CompensationReport, CompensationRun, Finding

__all__ = ["MODES", "assert_compensates"]

D = TypeVar("D", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

MODES: tuple[Mode, ...] = get_args(Mode)
"""Every way a run can fail: ``raise``, ``timeout``, ``invalid``, ``no_effect``."""

_ORDER_RULE = (
    "steps that failed in doubt first, then completed steps from the last defined to the first, "
    "a for-each's items from the last"
)


async def assert_compensates(
    definition: WorkflowDefinition[D, R],
    consumer: IWorkflowConsumer[D, R],
    data: D | Mapping[str, Any],
    *,
    no_rollback: Iterable[str] = (),
    modes: Iterable[Mode] = MODES,
    effects: Effects | None = None,
    options: ConsumerOptions | None = None,
    signals: Mapping[str, BaseModel | Mapping[str, Any]] | None = None,
    sub_workflows: Sequence[tuple[WorkflowDefinition[Any, Any], IWorkflowConsumer[Any, Any]]] = (),
    every_item: bool = False,
    concurrency: int = 1,
    run_timeout: float = 10.0,
) -> CompensationReport:
    """Runs ``definition`` with ``consumer`` once per failure point and mode, and checks that each run compensates.

    First a run without failures, which must complete; then, for each step that ran in it (each for-each's first
    and last item, or every item with ``every_item``) and for ``on_complete``, one run per mode:

    - ``raise``: every attempt raises before the handler acts;
    - ``timeout``: the handler acts, then every attempt times out (as when its answer is lost);
    - ``invalid``: the handler acts, then returns an output that does not validate;
    - ``no_effect``: every attempt raises ``NoEffectError`` (only for steps with ``rollback_if_failed=True``).

    Each run must: end ``failed`` with the injected failure; start nothing after it; roll back exactly the steps
    (and items) that completed and have a rollback, plus the failed step if it is in doubt
    (``rollback_if_failed=True``, unless it raised ``NoEffectError``), each once, in the documented order (steps
    that failed in doubt first, then completed steps from the last defined to the first, a for-each's items from
    the last); give each rollback ``ctx.output`` of its own step; have no rollback fail for good (rollbacks that
    raise are retried per ``options``); run ``on_error`` once. A completed step without a rollback is a finding
    unless it is named in ``no_rollback``. With ``effects``, every effect a flow did must be undone, once, by the
    rollback of the step that did it, except effects of ``no_rollback`` steps and of ``on_error``.

    Runs go one at a time (``concurrency`` runs more at once, for handlers that keep flows apart) on a fresh
    in-process provider with a :class:`VirtualClock`, so backoff, sleeps and timeouts cost no time. The user's
    consumer is not changed: the runs call its handlers through a stand-in.

    Args:
        definition: the workflow.
        consumer: its consumer, built with the (fake) services the test gives it.
        data: the flow's data, a model or a dict.
        no_rollback: steps that need no rollback (an email); they are not reported as missing one.
        modes: the ways to fail; all by default.
        effects: the log the consumer's fake services note their effects in.
        options: the consumer's options (attempts, backoff, ...), as in production.
        signals: payloads of the signals the workflow waits for, sent as each run starts.
        sub_workflows: ``(definition, consumer)`` of each workflow it starts as a sub-workflow.
        every_item: fail every for-each item in turn, not just the first and the last.
        concurrency: how many runs go at once.
        run_timeout: real seconds a run may take before it counts as stuck.

    Returns:
        The report: ``print(report)`` shows a table of the runs.

    Raises:
        CompensationError: (an ``AssertionError``) a run broke a rule; its message lists which failure point broke
            which rule, and ``error.report`` holds the report.
        DefinitionError: the consumer does not match the workflow, or ``no_rollback`` names no such step or a step
            that has a rollback.
        ValueError: an unknown mode, or ``concurrency`` below 1.
    """
    chosen = tuple(modes)
    unknown = [m for m in chosen if m not in MODES]
    if unknown or not chosen:
        raise ValueError(f"modes are some of {', '.join(MODES)}; got {chosen!r}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency!r}")
    workflows: dict[str, tuple[WorkflowDefinition[Any, Any], IWorkflowConsumer[Any, Any]]] = {}
    for child, child_consumer in [(definition, consumer), *sub_workflows]:
        check_consumer(child, child_consumer)
        workflows.setdefault(child.name, (child, child_consumer))
    exempt = frozenset(no_rollback)
    _check_exempt(exempt, workflows)

    recorder = Recorder()
    clock = VirtualClock()
    provider = InProcessWorkflowProvider(
        provider_id="assert-compensates", stop_grace=1.0, max_finished=None, clock=clock
    )
    for child, child_consumer in workflows.values():
        provider.register(child, Instrumented(child, child_consumer, recorder), options)
    session = _Session(
        definition=definition,
        data=data,
        handlers={name: dict(c.steps) for name, (_, c) in workflows.items()},
        exempt=exempt,
        effects=effects,
        signals=dict(signals or {}),
        provider=provider,
        clock=clock,
        recorder=recorder,
        run_timeout=run_timeout,
        prefix=f"flow-compensates-{uuid.uuid4().hex[:8]}",
    )
    await provider.start()
    try:
        baseline = await session.run(None, 0)
        if any(f.rule in ("completes", "ends") for f in baseline.findings):
            raise CompensationError(CompensationReport(definition.name, (baseline,)))
        points, notes = session.failure_points(baseline.flow_id, every_item)
        plans = [
            Injection(step, index, mode)
            for step, index in points
            for mode in chosen
            if mode != "no_effect" or (step is not None and session.in_doubt(definition.name, step))
        ]
        gate = asyncio.Semaphore(concurrency)

        async def run(plan: Injection, n: int) -> CompensationRun:
            async with gate:
                return await session.run(plan, n)

        runs = await asyncio.gather(*(run(plan, n) for n, plan in enumerate(plans, 1)))
    finally:
        await provider.stop()
    report = CompensationReport(definition.name, (baseline, *runs), tuple(notes))
    if not report.ok:
        raise CompensationError(report)
    return report


def _check_exempt(
    exempt: frozenset[str], workflows: Mapping[str, tuple[WorkflowDefinition[Any, Any], IWorkflowConsumer[Any, Any]]]
) -> None:
    for name in sorted(exempt):
        handlers = [c.steps[name] for _, c in workflows.values() if name in c.steps]
        if not handlers:
            raise DefinitionError(f"no_rollback names '{name}', which is no step of the workflow or its sub-workflows")
        if all(h.rollback is not None for h in handlers):
            raise DefinitionError(f"no_rollback names '{name}', which has a rollback")


@dataclass(frozen=True, slots=True)
class _Unit:
    """What one rollback undoes: a step (or one item of a for-each) of one flow."""

    flow_id: str
    step: str
    index: int | None
    label: str


@dataclass(slots=True)
class _Ended:
    status: str
    error: WorkflowError | None = None
    stuck: str | None = None
    completed: bool = False  # the run without failures completed (and was then compensated)


@dataclass(slots=True)
class _Session:
    definition: WorkflowDefinition[Any, Any]
    data: Any
    handlers: dict[str, dict[str, StepHandler[Any]]]
    exempt: frozenset[str]
    effects: Effects | None
    signals: dict[str, Any]
    provider: InProcessWorkflowProvider
    clock: VirtualClock
    recorder: Recorder
    run_timeout: float
    prefix: str

    def in_doubt(self, workflow: str, step: str) -> bool:
        handler = self.handlers[workflow].get(step)
        return handler is not None and handler.rollback is not None and handler.rollback_if_failed

    # -- running --

    async def run(self, plan: Injection | None, n: int) -> CompensationRun:
        flow_id = f"{self.prefix}-{n}"
        if plan is not None:
            self.recorder.plan[flow_id] = plan
        handle = await self.provider.execute(self.definition, self.data, id=flow_id)
        # Nothing of the flow has run yet (execute() never yields to the loop here): a signal is kept until the flow
        # reaches its wait, and a SignalError can only be a name the workflow does not wait for.
        for name, payload in self.signals.items():
            await self.provider.signal(flow_id, name, payload)
        ended = await self._wait(handle)
        if plan is None and ended.status == FlowStatus.COMPLETED:
            # Undo it, as compensate() undoes any completed flow: every completed step must be rolled back, and the
            # services are back where they were for the runs that follow.
            await self.provider.compensate(flow_id, "assert_compensates: the run without failures is undone")
            ended = await self._wait(handle)
            ended.completed = True
        ended_for_good = (await self.provider.get_status(flow_id)).is_terminal
        events = [event async for event in self.provider.subscribe(flow_id)] if ended_for_good else []
        point, mode = ("none", "-") if plan is None else (plan.label, plan.mode)
        check = _Check(self, plan, flow_id, ended, events)
        findings = [Finding(point, mode, rule, message) for rule, message in check.findings()]
        return CompensationRun(point, mode, flow_id, ended.status, tuple(check.rolled_back()), tuple(findings))

    async def _wait(self, handle: FlowHandle[Any]) -> _Ended:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.run_timeout
        stuck: str | None = None
        while True:
            try:
                await handle.result(timeout=0.05)
                return _Ended(FlowStatus.COMPLETED.value)
            except WorkflowError as error:
                status = await handle.status()
                return _Ended(status.value if stuck is None else "stuck", error, stuck)
            except TimeoutError:
                pass
            if stuck is not None:
                if loop.time() > deadline + self.run_timeout:
                    return _Ended("stuck", None, stuck)  # not even cancelling ended it
                continue  # cancelled: it rolls back and ends
            status = await handle.status()
            if status == FlowStatus.WAITING and self.clock.next_at is None:
                stuck = "it waits for a signal nobody sends (pass its payload in signals=)"
            elif loop.time() > deadline:
                stuck = f"it did not end within {self.run_timeout:g} s of real time"
                deadline = loop.time()
            if stuck is not None:
                await self.provider.cancel(handle.id, f"assert_compensates: {stuck}")

    def failure_points(self, baseline: str, every_item: bool) -> tuple[list[tuple[str | None, int | None]], list[str]]:
        """The steps and items that ran without failures, in definition order, then ``on_complete``."""
        ran: dict[str, set[int | None]] = {}
        for call in self.recorder.of(baseline):
            if call.handler.kind == "step" and call.handler.step is not None:
                ran.setdefault(call.handler.step, set()).add(call.handler.index)
        points: list[tuple[str | None, int | None]] = []
        notes: list[str] = []
        for name in self.definition.step_names:
            node = self.definition.step(name)
            if not node.has_handler:
                continue
            if name not in ran:
                skipped = "it produced no items" if node.kind == "for_each" else "its condition was false"
                notes.append(f"'{name}' did not run without failures ({skipped}), so no run fails there")
                continue
            if node.kind == "for_each":
                indices = sorted(i for i in ran[name] if i is not None)
                chosen = indices if every_item else sorted({indices[0], indices[-1]})
                points += [(name, i) for i in chosen]
            else:
                points.append((name, None))
        points.append((None, None))
        return points, notes


class _Check:
    """The rules one run must keep, checked against its call record, its events and its effects."""

    def __init__(
        self, session: _Session, plan: Injection | None, flow_id: str, ended: _Ended, events: list[FlowEvent]
    ) -> None:
        self.session = session
        self.plan = plan
        self.flow_id = flow_id
        self.ended = ended
        self.events = events
        calls = session.recorder.calls
        self.family = self._family(session.definition, flow_id, "")
        self.calls = [c for c in calls if c.handler.flow_id in self.family]
        self.own = [c for c in self.calls if c.handler.flow_id == flow_id]
        # Each step (item) that completed: its last call returned a valid output.
        self.completed: dict[tuple[str, str, int | None], Call] = {}
        self.items: dict[tuple[str, str, int | None], Any] = {}
        for call in self.calls:
            h = call.handler
            if h.kind == "step" and h.step is not None:
                self.items[h.flow_id, h.step, h.index] = call.item
                if call.outcome == "returned":
                    self.completed[h.flow_id, h.step, h.index] = call
        self.expected = self._expected(session.definition, flow_id, "", plan)
        self.rollbacks: dict[_Unit, list[Call]] = {}
        for call in self.calls:
            h = call.handler
            if h.kind == "rollback" and h.step is not None:
                self.rollbacks.setdefault(self._unit(h), []).append(call)

    # -- what is due --

    def _family(self, definition: WorkflowDefinition[Any, Any], flow_id: str, prefix: str) -> dict[str, str]:
        """The flow and its sub-workflows' flows, each with the prefix of its steps' labels (``node/``)."""
        family = {flow_id: prefix}
        for name in definition.step_names:
            child = definition.step(name).workflow
            if child is not None:
                family.update(self._family(child, child_flow_id(flow_id, name), f"{prefix}{name}/"))
        return family

    def _unit(self, handler: Handler) -> _Unit:
        assert handler.step is not None
        label = self.family.get(handler.flow_id, "?/") + handler.unit
        return _Unit(handler.flow_id, handler.step, handler.index, label)

    def _expected(
        self, definition: WorkflowDefinition[Any, Any], flow_id: str, prefix: str, plan: Injection | None
    ) -> list[_Unit]:
        """The rollbacks due, in order: the failed step if it is in doubt, then completed steps and items from the
        last to the first; a completed sub-workflow's own steps in its place."""
        handlers = self.session.handlers[definition.name]
        first: list[_Unit] = []
        then: list[_Unit] = []
        for name in reversed(definition.step_names):
            node = definition.step(name)
            if node.workflow is not None:
                child = child_flow_id(flow_id, name)
                if any(c.handler.flow_id == child and c.handler.kind == "on_complete" and c.outcome == "returned"
                       for c in self.calls):  # fmt: skip
                    then += self._expected(node.workflow, child, f"{prefix}{name}/", None)
                continue
            handler = handlers.get(name)
            if handler is None or handler.rollback is None:
                continue
            doubt = plan is not None and plan.step == name and handler.rollback_if_failed and plan.mode != "no_effect"
            if node.kind == "for_each":
                items = [plan.index] if doubt and plan is not None and plan.index is not None else []
                items += sorted(
                    (i for f, s, i in self.completed if (f, s) == (flow_id, name) and i is not None), reverse=True
                )
                then += [_Unit(flow_id, name, i, f"{prefix}{name}[{i}]") for i in items]
            elif (flow_id, name, None) in self.completed:
                then.append(_Unit(flow_id, name, None, prefix + name))
            elif doubt:
                first.append(_Unit(flow_id, name, None, prefix + name))
        return first + then

    def rolled_back(self) -> list[str]:
        """The units whose rollback completed, in the order they completed."""
        done = [c for c in self.calls if c.handler.kind == "rollback" and c.outcome == "returned"]
        return [self._unit(c.handler).label for c in sorted(done, key=lambda c: c.end)]

    # -- the rules --

    def findings(self) -> list[tuple[str, str]]:
        if self.ended.stuck is not None:
            return [("ends", f"the flow did not end: {self.ended.stuck}")]
        found: list[tuple[str, str]] = []
        if self.plan is None:
            if not self.ended.completed:
                return [
                    ("completes", f"without injected failures the flow ends {self.ended.status}: {self.ended.error}")
                ]
            if self.ended.status != FlowStatus.COMPENSATED:
                found.append(("compensated", f"compensate() of the completed flow ended it {self.ended.status}"))
            found += self._rollbacks()
            found += self._outputs()
            found += self._missing_rollbacks()
            on_error = sum(1 for c in self.own if c.handler.kind == "on_error")
            if on_error:
                found.append(("on_error once", f"on_error ran {on_error} times when the completed flow was undone"))
            if self.session.effects is not None:
                found += self._effects(self.session.effects, None)
            return found
        found += self._fails(self.plan)
        found += self._nothing_after(self.plan)
        found += self._rollbacks()
        found += self._outputs()
        found += self._missing_rollbacks()
        on_error = sum(1 for c in self.own if c.handler.kind == "on_error")
        if on_error != 1:
            found.append(("on_error once", f"on_error ran {on_error} times, not once"))
        if self.session.effects is not None:
            found += self._effects(self.session.effects, self.plan)
        return found

    def _fails(self, plan: Injection) -> list[tuple[str, str]]:
        if not any(c.injected for c in self.own):
            return [("fails", f"the failure was never injected: {plan.label} did not run in this run")]
        if self.ended.status != FlowStatus.FAILED:
            return [("fails", f"the flow ended {self.ended.status}, not failed, although {plan.label} failed")]
        error = self.ended.error
        if isinstance(error, WorkflowRollbackError):
            error = error.primary_error
        if plan.step is None:
            if isinstance(error, WorkflowCompletionError):
                return []
        elif isinstance(error, WorkflowStepError) and (error.step_name, error.index) == (plan.step, plan.index):
            return []
        return [("fails", f"the flow failed with {error!r}, not with the failure of {plan.label}")]

    def _nothing_after(self, plan: Injection) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        steps = [c for c in self.own if c.handler.kind == "step"]
        if plan.step is None:
            complete = next(c for c in self.own if c.handler.kind == "on_complete")
            found += [
                ("nothing after", f"step '{c.handler.unit}' started after on_complete had failed")
                for c in steps
                if c.seq > complete.seq
            ]
            return found
        if any(c.handler.kind == "on_complete" for c in self.own):
            found.append(("nothing after", f"on_complete ran although {plan.label} had failed"))
        failed_at = next(
            (e.seq for e in self.events
             if isinstance(e, StepFailed) and (e.step, e.index) == (plan.step, plan.index) and not e.will_retry),
            None,
        )  # fmt: skip
        if failed_at is not None:
            late = [e for e in self.events if isinstance(e, StepStarted) and e.seq > failed_at]
            found += [
                ("nothing after", f"'{_label(e.step, e.index)}' started after {plan.label} had failed for good")
                for e in late
            ]
        group = _group_of(self.session.definition, plan.step)
        later = {
            h.step for h in (c.handler for c in steps) if h.step and _group_of(self.session.definition, h.step) > group
        }
        found += [
            ("nothing after", f"step '{name}' of a later group ran after {plan.label} failed") for name in sorted(later)
        ]
        return found

    def _rollbacks(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        expected = self.expected
        ran = list(self.rollbacks)  # in the order they first started
        for unit, calls in self.rollbacks.items():
            returned = [c for c in calls if c.outcome == "returned"]
            if len(returned) > 1:
                found.append(("once", f"the rollback of '{unit.label}' ran {len(returned)} times, not once"))
            last = calls[-1]
            if last.outcome == "raised":
                found.append((
                    "rollback failed",
                    f"the rollback of '{unit.label}' failed for good after {len(calls)} attempt"
                    f"{'s' if len(calls) > 1 else ''}: {last.error!r}",
                ))  # fmt: skip
        missing = [u for u in expected if u not in self.rollbacks]
        extra = [u for u in ran if u not in expected]
        for unit in missing:
            if (unit.flow_id, unit.step, unit.index) in self.completed:
                why = "completed and has a rollback"
            else:
                why = "failed in doubt (rollback_if_failed=True)"
            found.append(("rolled back", f"'{unit.label}' {why}, but it was not rolled back"))
        for unit in extra:
            found.append(("rolled back", f"'{unit.label}' was rolled back, but it did not complete"))
        if not missing and not extra and ran != expected:
            found.append((
                "order",
                f"rollbacks ran as {', '.join(u.label for u in ran)}; the documented order is "
                f"{', '.join(u.label for u in expected)} ({_ORDER_RULE})",
            ))  # fmt: skip
        return found

    def _outputs(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for unit, calls in self.rollbacks.items():
            key = (unit.flow_id, unit.step, unit.index)
            step_call = self.completed.get(key)
            expected = None if step_call is None else step_call.output
            for call in calls:
                if call.seen_output != expected:
                    found.append((
                        "ctx.output",
                        f"the rollback of '{unit.label}' saw ctx.output={call.seen_output!r}, "
                        f"not its own step's output {expected!r}",
                    ))  # fmt: skip
                    break
                if unit.index is not None and call.item != self.items.get(key):
                    item = self.items.get(key)
                    found.append(
                        ("ctx.output", f"the rollback of '{unit.label}' saw ctx.item={call.item!r}, not {item!r}")
                    )
                    break
        return found

    def _missing_rollbacks(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        seen: set[str] = set()
        for flow_id, step, _ in self.completed:
            workflow = self.calls_workflow(flow_id)
            handler = self.session.handlers[workflow].get(step)
            label = self.family[flow_id] + step
            if handler is None or handler.rollback is not None or step in self.session.exempt or label in seen:
                continue
            seen.add(label)
            found.append((
                "missing rollback",
                f"step '{label}' completed but has no rollback, so nothing undoes it when a later step fails; "
                f"if it needs none (it sends an email, say), name it in no_rollback",
            ))  # fmt: skip
        return found

    def calls_workflow(self, flow_id: str) -> str:
        return next(c.handler.workflow for c in self.calls if c.handler.flow_id == flow_id)

    def _effects(self, effects: Effects, plan: Injection | None) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        done: dict[str, list[Handler]] = {}
        times: dict[tuple[str, Handler], int] = {}
        undone_by: dict[str, Handler] = {}
        # What earlier runs left done: a fake keyed by the order may let this run undo it (reported in that run).
        left: dict[str, int] = {}
        for record in effects._records():
            handler = record.handler
            if handler is None or handler.flow_id not in self.family:
                if handler is not None:
                    left[record.effect] = left.get(record.effect, 0) + (1 if record.op == "did" else -1)
                continue
            effect = record.effect
            if record.op == "did":
                done.setdefault(effect, []).append(handler)
                times[effect, handler] = times.get((effect, handler), 0) + 1
                continue
            origins = done.get(effect)
            if not origins:
                if left.get(effect, 0) > 0:
                    left[effect] -= 1
                    continue
                if effect in undone_by:
                    first = self._who(undone_by[effect])
                    found.append(("once", f"'{effect}' was undone twice: by {first}, then by {self._who(handler)}"))
                else:
                    found.append(("effects", f"{self._who(handler)} undid '{effect}', which this flow never did"))
                continue
            origin = origins.pop()
            undone_by[effect] = handler
            mine = (handler.flow_id, handler.step, handler.index) == (origin.flow_id, origin.step, origin.index)
            if handler.kind != "rollback" or not mine:
                found.append((
                    "order",
                    f"'{effect}', done by {self._who(origin)}, was undone by {self._who(handler)}, not by the "
                    f"rollback of '{self._unit_label(origin)}': a rollback undoes its own step only (does one "
                    "rollback call another?)",
                ))  # fmt: skip
        for effect, origins in done.items():
            for origin in dict.fromkeys(origins):
                if origin.kind == "on_error" or (origin.kind == "step" and origin.step in self.session.exempt):
                    continue
                hints = self._hints(origin, plan, times[effect, origin])
                why = f": {'; '.join(hints)}" if hints else ""
                after = "the flow failed" if plan is not None else "compensate() undid the completed flow"
                found.append(("effects", f"'{effect}', done by {self._who(origin)}, is still done after {after}{why}"))
        return found

    def _who(self, handler: Handler) -> str:
        label = self._unit_label(handler)
        if handler.kind == "rollback":
            return f"the rollback of '{label}'"
        return f"step '{label}'" if handler.kind == "step" else label

    def _unit_label(self, handler: Handler) -> str:
        return self.family.get(handler.flow_id, "?/") + handler.unit

    def _hints(self, origin: Handler, plan: Injection | None, times: int) -> list[str]:
        """Why an effect may still be done, as far as the record tells."""
        if origin.kind == "on_complete":
            return ["on_complete has no rollback: do such work in a step"]
        if origin.kind == "rollback" or origin.step is None:
            return [f"{origin.kind} did it"]
        hints: list[str] = []
        handler = self.session.handlers[origin.workflow].get(origin.step)
        if handler is None or handler.rollback is None:
            return ["the step has no rollback"]
        if times > 1:
            hints.append(
                f"it was done {times} times, as a retried attempt acted again (make the step idempotent, with "
                "ctx.idempotency_key)"
            )
        injected = (
            plan is not None
            and origin.flow_id == self.flow_id
            and (origin.step, origin.index)
            == (
                plan.step,
                plan.index,
            )
        )
        if plan is not None and injected and not handler.rollback_if_failed:
            hints.append(
                f"the step acted and then failed ({plan.mode}), and a step that failed is rolled back only when it "
                "is in doubt: StepHandler(..., rollback_if_failed=True)"
            )
        elif any(self._unit(c.handler).label == self._unit_label(origin) for c in self.calls
                 if c.handler.kind == "rollback"):  # fmt: skip
            hints.append("its rollback ran but did not undo it")
        return hints


def _group_of(definition: WorkflowDefinition[Any, Any], step: str | None) -> int:
    for index, group in enumerate(definition.step_groups):
        if any(node.name == step for node in group.steps):
            return index
    return -1


def _label(step: str, index: int | None) -> str:
    return step if index is None else f"{step}[{index}]"
