"""``assert_compensates``: runs a workflow once per failure point and mode, and checks each run's saga.

Each run executes the user's workflow on an in-process provider with a virtual clock, through a stand-in
consumer that calls the user's handlers and makes exactly one of them fail; ``_rules`` then checks the run.
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
    FlowHandle,
    FlowStatus,
    IWorkflowConsumer,
    StepHandler,
    WorkflowDefinition,
    WorkflowError,
)
from plait.core.consumer import check_consumer
from plait.providers.inprocess import InProcessWorkflowProvider
from plait.testing._clock import VirtualClock
from plait.testing._effects import Effects
from plait.testing._instrument import Injection, Instrumented, Mode, Recorder
from plait.testing._report import CompensationError, CompensationReport, CompensationRun, Finding
from plait.testing._rules import Ended, RunCheck

__all__ = ["MODES", "assert_compensates"]

D = TypeVar("D", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

MODES: tuple[Mode, ...] = get_args(Mode)
"""Every way a run can fail: ``raise``, ``timeout``, ``invalid``, ``no_effect``."""


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
    session = Session(
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


@dataclass(slots=True)
class Session:
    """One ``assert_compensates`` check: its provider, its consumers' handlers, and how to run one flow."""

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
        check = RunCheck(self, plan, flow_id, ended, events)
        findings = [Finding(point, mode, rule, message) for rule, message in check.findings()]
        return CompensationRun(point, mode, flow_id, ended.status, tuple(check.rolled_back()), tuple(findings))

    async def _wait(self, handle: FlowHandle[Any]) -> Ended:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.run_timeout
        stuck: str | None = None
        while True:
            try:
                await handle.result(timeout=0.05)
                return Ended(FlowStatus.COMPLETED.value)
            except WorkflowError as error:
                status = await handle.status()
                return Ended(status.value if stuck is None else "stuck", error, stuck)
            except TimeoutError:
                pass
            if stuck is not None:
                if loop.time() > deadline + self.run_timeout:
                    return Ended("stuck", None, stuck)  # not even cancelling ended it
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
