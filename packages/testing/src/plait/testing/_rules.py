"""The rules one run of ``assert_compensates`` must keep, checked against its call record, events and effects.

What is due is computed here from the record of what the handlers did, not asked of the engine: which steps
completed (so which rollbacks are due, in which order, with which ``ctx.output``), what started after the
failure, and which effects are still done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from plait.core import (
    FlowEvent,
    FlowStatus,
    StepFailed,
    StepStarted,
    WorkflowCompletionError,
    WorkflowDefinition,
    WorkflowError,
    WorkflowRollbackError,
    WorkflowStepError,
)
from plait.core.engine import child_flow_id
from plait.testing._effects import Effects, Handler
from plait.testing._instrument import Call, Injection

if TYPE_CHECKING:
    from plait.testing._compensation import Session

__all__ = ["Ended", "RunCheck"]

_ORDER_RULE = (
    "steps that failed in doubt first, then completed steps from the last defined to the first, "
    "a for-each's items from the last"
)


@dataclass(frozen=True, slots=True)
class _Unit:
    """What one rollback undoes: a step (or one item of a for-each) of one flow."""

    flow_id: str
    step: str
    index: int | None
    label: str


@dataclass(slots=True)
class Ended:
    """How a run ended: its status (or ``stuck``), its error, and whether the run without failures completed."""

    status: str
    error: WorkflowError | None = None
    stuck: str | None = None
    completed: bool = False  # the run without failures completed (and was then compensated)


class RunCheck:
    """The rules one run must keep, checked against its call record, its events and its effects."""

    def __init__(
        self, session: Session, plan: Injection | None, flow_id: str, ended: Ended, events: list[FlowEvent]
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
