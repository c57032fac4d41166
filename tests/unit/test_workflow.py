"""Workflow definitions: built once, frozen, and checked when they are defined."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from plait.core import DefinitionError, Step, StepGroup, Workflow
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
