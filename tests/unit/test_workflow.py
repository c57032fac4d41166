"""Workflow definitions: built once, frozen, and checked when they are defined."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import BaseModel

from plait.core import DefinitionError, Step, StepGroup, StepHandler, Workflow
from plait.core.workflow import StepBuilder


class Data(BaseModel):
    n: int = 0


class Out(BaseModel):
    v: int = 0


class Res(BaseModel):
    ok: bool = True


class NotAModel:
    pass


def test_a_definition_exposes_its_groups_in_order() -> None:
    flow = Workflow.define(name="order", data=Data, result=Res).steps(
        lambda s: (
            s.sequential(s.step("validate", Out), s.step("charge", Out))
            .parallel(s.step("email", Out), s.step("sms", Out))
            .sequential(s.step("finalize", Out))
        )
    )
    assert (flow.name, flow.data, flow.result) == ("order", Data, Res)
    assert [g.kind for g in flow.step_groups] == ["sequential", "parallel", "sequential"]
    assert [[s.name for s in g.steps] for g in flow.step_groups] == [
        ["validate", "charge"],
        ["email", "sms"],
        ["finalize"],
    ]
    assert flow.step_groups[1] == StepGroup("parallel", (Step("email", Out), Step("sms", Out)))
    assert flow.step_names == ("validate", "charge", "email", "sms", "finalize")
    assert flow.step("sms") == Step("sms", Out)
    assert flow.step_index("finalize") == 4
    assert "order" in repr(flow)


def test_steps_returns_a_new_definition_and_leaves_the_original_step_less() -> None:
    bare = Workflow.define(name="bare", data=Data, result=Res)
    full = bare.steps(lambda s: s.sequential(s.step("a", Out)))
    assert bare.step_groups == ()
    assert full.step_names == ("a",)
    assert full is not bare


def test_definitions_are_frozen() -> None:
    flow = Workflow.define(name="frozen", data=Data, result=Res)
    with pytest.raises(AttributeError):
        flow.name = "other"  # type: ignore[misc]


def test_a_partial_builder_chain_can_be_reused() -> None:
    empty: StepBuilder[Data] = StepBuilder()
    base = empty.sequential(Step("a", Out))
    one = base.sequential(Step("b", Out))
    two = base.parallel(Step("c", Out), Step("d", Out))
    assert len(base.groups) == 1
    assert [g.steps[0].name for g in one.groups] == ["a", "b"]
    assert [g.kind for g in two.groups] == ["sequential", "parallel"]


@pytest.mark.parametrize(
    "name",
    ["", "-leading-dash", "_leading", "has space", "dot.ted", "x" * 129, "ünïcode", "newline\n"],
)
def test_bad_workflow_names_are_rejected(name: str) -> None:
    with pytest.raises(DefinitionError, match="Invalid workflow name"):
        Workflow.define(name=name, data=Data, result=Res)


def test_names_up_to_128_characters_are_fine() -> None:
    assert Workflow.define(name="A" + "-_9" * 42 + "z", data=Data, result=Res).name.startswith("A")


@pytest.mark.parametrize("field", ["data", "result"])
@pytest.mark.parametrize("value", [dict, NotAModel, Data(), "Data", None])
def test_data_and_result_must_be_model_classes(field: str, value: Any) -> None:
    kwargs: dict[str, Any] = {"name": "wf", "data": Data, "result": Res, field: value}
    with pytest.raises(DefinitionError, match=f"workflow 'wf' {field} must be a pydantic BaseModel subclass"):
        Workflow.define(**kwargs)


def test_step_outputs_must_be_model_classes() -> None:
    with pytest.raises(DefinitionError, match="step 'a' output must be a pydantic BaseModel"):
        Workflow.define(name="wf", data=Data, result=Res).steps(
            lambda s: s.sequential(s.step("a", NotAModel))  # type: ignore[arg-type]
        )


def test_step_names_must_be_unique_across_groups() -> None:
    with pytest.raises(DefinitionError, match="duplicate step name 'a'"):
        Workflow.define(name="wf", data=Data, result=Res).steps(
            lambda s: s.sequential(s.step("a", Out)).parallel(s.step("b", Out), s.step("a", Out))
        )


def test_bad_step_names_are_rejected() -> None:
    with pytest.raises(DefinitionError, match="step name"):
        Workflow.define(name="wf", data=Data, result=Res).steps(lambda s: s.sequential(s.step("no way", Out)))


@pytest.mark.parametrize("kind", ["sequential", "parallel"])
def test_empty_groups_are_rejected(kind: str) -> None:
    with pytest.raises(DefinitionError, match=f"a {kind} group has no steps"):
        Workflow.define(name="wf", data=Data, result=Res).steps(lambda s: getattr(s, kind)())


def test_groups_take_steps_only() -> None:
    with pytest.raises(DefinitionError, match=r"groups take nodes made by s\.step"):
        Workflow.define(name="wf", data=Data, result=Res).steps(
            lambda s: s.sequential("a")  # type: ignore[arg-type]
        )


def test_steps_must_declare_something_and_return_the_builder() -> None:
    flow = Workflow.define(name="wf", data=Data, result=Res)
    with pytest.raises(DefinitionError, match="declared no steps"):
        flow.steps(lambda s: s)
    with pytest.raises(DefinitionError, match="returns the builder it was given, got NoneType"):
        flow.steps(lambda s: None)  # type: ignore[arg-type,return-value]


def test_steps_can_be_declared_once() -> None:
    flow = Workflow.define(name="wf", data=Data, result=Res).steps(lambda s: s.sequential(s.step("a", Out)))
    with pytest.raises(DefinitionError, match="already has steps"):
        flow.steps(lambda s: s.sequential(s.step("b", Out)))


def test_unknown_group_kinds_are_rejected() -> None:
    with pytest.raises(DefinitionError, match="unknown group kind"):
        Workflow.define(name="wf", data=Data, result=Res).steps(
            lambda s: StepBuilder((StepGroup("diagonal", (Step("a", Out),)),))  # type: ignore[arg-type]
        )


def test_looking_up_an_unknown_step_raises() -> None:
    flow = Workflow.define(name="wf", data=Data, result=Res)
    with pytest.raises(DefinitionError, match="has no step 'a'"):
        flow.step("a")


# --- node kinds and their define-time checks -------------------------------------------------------------


class Signal(BaseModel):
    by: str


def _define(build: Any, name: str = "nodes") -> Any:
    return Workflow.define(name=name, data=Data, result=Res).steps(build)


def test_every_node_kind_is_built_with_its_settings() -> None:
    child = _define(lambda s: s.sequential(s.step("x", Out)), name="child")
    flow = _define(
        lambda s: (
            s.sequential(s.step("a", Out))
            .dag(s.step("b", Out), s.step("c", Out, after=("b",), when=lambda ctx: True))
            .sequential(s.wait_for("approval", Signal, timeout=60), s.sleep("nap", seconds=5))
            .parallel(s.for_each("each", Out, items=lambda ctx: [1, 2], concurrency=2))
            .sequential(s.sub_workflow("kid", child, data=lambda ctx: Data(n=1)), when=lambda ctx: ctx.data.n > 0)
        )
    )
    kinds = {name: flow.step(name).kind for name in flow.step_names}
    assert kinds == {
        "a": "step",
        "b": "step",
        "c": "step",
        "approval": "wait_for",
        "nap": "sleep",
        "each": "for_each",
        "kid": "sub_workflow",
    }
    assert [g.kind for g in flow.step_groups] == ["sequential", "dag", "sequential", "parallel", "sequential"]
    assert flow.step("c").after == ("b",)
    assert flow.step("approval").output is Signal and flow.step("approval").timeout == 60
    assert flow.step("nap").output is None and flow.step("nap").seconds == 5
    assert flow.step("kid").output is Res and flow.step("kid").workflow is child
    assert flow.signals == {"approval": Signal}
    assert flow.descendants == {"child"}
    assert (flow.depth, child.depth) == (2, 1)
    assert [flow.step(n).has_handler for n in flow.step_names] == [True, True, True, False, False, True, False]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda s: s.dag(s.step("a", Out, after=("zzz",))), "after= names 'zzz', which is not in its group"),
        (lambda s: s.dag(s.step("a", Out, after=("b",)), s.step("b", Out)), "'b', which is a later node of its group"),
        (lambda s: s.dag(s.step("a", Out, after=("a",))), "names itself in after="),
        (lambda s: s.sequential(s.step("a", Out)).dag(s.step("b", Out, after=("a",))), "not in its group"),
        (lambda s: s.parallel(s.step("a", Out), s.step("b", Out, after=("a",))), "only a dag group takes"),
        (lambda s: s.dag(s.step("a", Out), s.step("b", Out, after=("a", "a"))), "names a node twice"),
        (lambda s: s.sequential(s.sleep("nap")), "exactly one of seconds= and until="),
        (lambda s: s.sequential(s.sleep("nap", seconds=1, until=lambda ctx: 0)), "exactly one of seconds="),
        (lambda s: s.sequential(s.sleep("nap", seconds=-1)), "seconds must be a number of seconds >= 0"),
        (lambda s: s.sequential(s.wait_for("w", Signal, timeout=0)), "timeout must be a number of seconds > 0"),
        (lambda s: s.sequential(s.sleep("nap", seconds=float("nan"))), "seconds must be a number of seconds >= 0"),
        (lambda s: s.sequential(s.wait_for("w", Signal, timeout=float("nan"))), "must be a number of seconds > 0"),
        (lambda s: s.sequential(s.wait_for("w", dict)), "must be a pydantic BaseModel"),
        (lambda s: s.sequential(s.for_each("e", Out, items=[1, 2])), "needs items=, a function"),
        (lambda s: s.sequential(s.for_each("e", Out, items=lambda c: [], concurrency=0)), "concurrency must be"),
        (lambda s: s.sequential(s.sub_workflow("k", "child", data=lambda c: {})), "takes a definition"),
        (lambda s: s.sequential(s.step("a", Out, when=True)), "'when' must be a function"),
        (lambda s: s.sequential(s.step("a", Out), when="yes"), "the 'when' of a sequential group"),
    ],
)
def test_malformed_nodes_are_refused_at_define_time(build: Any, message: str) -> None:
    with pytest.raises(DefinitionError, match=re.escape(message)):
        _define(build)


def test_a_workflow_cannot_contain_itself_and_nesting_is_capped() -> None:
    inner = _define(lambda s: s.sequential(s.step("x", Out)), name="loop")
    with pytest.raises(DefinitionError, match="workflow 'loop' cannot contain itself"):
        _define(lambda s: s.sequential(s.sub_workflow("k", inner, data=lambda c: {})), name="loop")
    middle = _define(lambda s: s.sequential(s.sub_workflow("k", inner, data=lambda c: {})), name="middle")
    with pytest.raises(DefinitionError, match="cannot contain itself"):
        _define(lambda s: s.sequential(s.sub_workflow("k", middle, data=lambda c: {})), name="loop")
    nested = inner
    for level in range(19):
        nested = _define(lambda s, n=nested: s.sequential(s.sub_workflow("k", n, data=lambda c: {})), name=f"l{level}")
    assert nested.depth == 20
    with pytest.raises(DefinitionError, match="nests sub-workflows 21 deep; at most 20"):
        _define(lambda s: s.sequential(s.sub_workflow("k", nested, data=lambda c: {})), name="too-deep")


def test_a_consumer_implements_steps_and_for_each_and_nothing_that_takes_no_handler() -> None:
    from plait.core.consumer import check_consumer

    flow = _define(
        lambda s: s.sequential(s.step("a", Out), s.wait_for("w", Signal), s.for_each("e", Out, items=lambda c: []))
    )

    class Consumer:
        def __init__(self, steps: dict[str, StepHandler[Data]]) -> None:
            self.steps = steps

        async def on_complete(self, ctx: Any) -> Res:
            return Res()

    async def run(ctx: Any) -> Out:
        return Out()

    async def undo(ctx: Any) -> None:
        return None

    handler = StepHandler(execute=run, rollback=undo)
    assert check_consumer(flow, Consumer({"a": handler, "e": handler})) == {"a", "e"}
    with pytest.raises(DefinitionError, match="no handler for step\\(s\\) 'e'"):
        check_consumer(flow, Consumer({"a": handler}))
    with pytest.raises(DefinitionError, match="handler\\(s\\) for 'w' \\(a wait_for\\), which take none"):
        check_consumer(flow, Consumer({"a": handler, "e": handler, "w": handler}))
    with pytest.raises(DefinitionError, match="rollback_if_failed=True but no rollback"):
        check_consumer(flow, Consumer({"a": StepHandler(execute=run, rollback_if_failed=True), "e": handler}))
