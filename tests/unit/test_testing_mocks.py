"""plait.testing's mock contexts for for-each items, rollbacks and progress: what a provider would hand over."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from plait.core import StepContext, WorkflowContext
from plait.core.context import idempotency_key
from plait.testing import ProgressCall, create_mock_step_context, create_mock_workflow_context


class Signup(BaseModel):
    email: str


class Mate(BaseModel):
    name: str
    email: str


class Invited(BaseModel):
    to: str


async def invite(ctx: StepContext[Signup]) -> Invited:
    """A for-each handler: one teammate per item, reporting progress."""
    mate = Mate.model_validate(ctx.item)
    await ctx.progress(0.5, f"inviting {mate.name}")
    await ctx.progress(1.0)
    return Invited(to=mate.email)


async def test_a_for_each_item_arrives_as_its_recorded_json_with_its_index() -> None:
    progress: list[ProgressCall] = []
    ctx = create_mock_step_context(
        Signup(email="boss@x.io"),
        step_name="invite",
        item=Mate(name="ada", email="ada@x.io"),
        index=2,
        progress=progress,
    )
    assert ctx.item == {"name": "ada", "email": "ada@x.io"}  # a model item is recorded as JSON
    assert ctx.index == 2
    assert (await invite(ctx)).to == "ada@x.io"
    assert progress == [(0.5, "inviting ada"), (1.0, None)]
    assert progress[0].fraction == 0.5 and progress[0].message == "inviting ada"


def test_the_idempotency_key_is_derived_as_a_provider_derives_it() -> None:
    step = create_mock_step_context(Signup(email="a"), flow_id="flow-1", step_name="invite", index=3)
    assert step.idempotency_key == idempotency_key("flow-1", "step", "invite", 3)
    retried = create_mock_step_context(Signup(email="a"), flow_id="flow-1", step_name="invite", index=3, attempt=2)
    assert retried.idempotency_key == step.idempotency_key  # the same across attempts
    undo = create_mock_step_context(Signup(email="a"), flow_id="flow-1", step_name="invite", index=3, kind="rollback")
    assert undo.idempotency_key == idempotency_key("flow-1", "rollback", "invite", 3) != step.idempotency_key
    other = create_mock_step_context(Signup(email="a"), flow_id="flow-1", step_name="invite", index=4)
    assert other.idempotency_key != step.idempotency_key
    done = create_mock_workflow_context(Signup(email="a"), flow_id="flow-1")
    assert done.idempotency_key == idempotency_key("flow-1", "on_complete", None)
    failed = create_mock_workflow_context(Signup(email="a"), flow_id="flow-1", kind="on_error")
    assert failed.idempotency_key == idempotency_key("flow-1", "on_error", None)


async def test_a_rollback_context_carries_the_output_it_undoes() -> None:
    sent = Invited(to="ada@x.io")
    ctx = create_mock_step_context(
        Signup(email="a"),
        {"invite": [sent]},
        step_name="invite",
        kind="rollback",
        item="ada@x.io",
        index=0,
        output=sent,
    )
    assert ctx.kind == "rollback" and ctx.output == sent
    assert ctx.results_of("invite", Invited) == [sent]  # a for-each's result is the list of its items' outputs
    assert create_mock_step_context(Signup(email="a")).output is None


async def test_progress_is_checked_as_a_provider_checks_it_and_recorded_on_workflow_contexts_too() -> None:
    progress: list[ProgressCall] = []
    ctx = create_mock_workflow_context(Signup(email="a"), progress=progress)
    await ctx.progress(1)
    with pytest.raises(ValueError, match="fraction from 0 to 1"):
        await ctx.progress(1.5)
    assert progress == [ProgressCall(1.0)]
    silent = create_mock_step_context(Signup(email="a"))
    await silent.progress(0.5)  # without a list, progress is checked and dropped
    with pytest.raises(ValueError):
        await silent.progress(-0.1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"index": -1}, ValueError, "0-based"),
        ({"index": True}, ValueError, "0-based"),
        ({"kind": "on_complete"}, ValueError, "'step' or 'rollback'"),
        ({"output": {"to": "x"}}, TypeError, "output must be a pydantic model"),
        ({"progress": ()}, TypeError, "progress must be a list"),
        ({"results": {"invite": [1, 2]}}, TypeError, r"results\['invite'\]"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        create_mock_step_context(Signup(email="a"), **kwargs)  # type: ignore[arg-type]


def test_a_workflow_context_takes_on_complete_or_on_error_only() -> None:
    with pytest.raises(ValueError, match="'on_complete' or 'on_error'"):
        create_mock_workflow_context(Signup(email="a"), kind="step")  # type: ignore[arg-type]
    assert isinstance(create_mock_workflow_context(Signup(email="a")), WorkflowContext)
