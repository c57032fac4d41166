"""The conformance suite's workflows with every node kind: DAG groups, conditions, waits, sleeps, for-each and
sub-workflows. Their steps are run by :class:`~plait.testing._scripted.Scripted` consumers like the others."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from plait.core import Workflow
from plait.testing._scripted import AOut, BOut, COut, DOut, EachOut, FlowOut, Note, Order, StepOut

__all__ = [
    "BRANCH",
    "DAG",
    "EACH",
    "KID",
    "NAP",
    "NAP_SECONDS",
    "PARENT",
    "SWITCH",
    "UNTIL",
    "WAIT",
    "WAIT_BRIEFLY",
    "WAIT_TIMEOUT",
]

NAP_SECONDS = 0.3
WAIT_TIMEOUT = 0.4

DAG = Workflow.define(name="contract-dag", data=Order, result=FlowOut).steps(
    lambda s: (
        s.sequential(s.step("a", AOut))
        .dag(
            s.step("b", BOut),
            s.step("c", COut),
            s.step("d", DOut, after=("b",)),
            s.step("e", StepOut, after=("b", "c")),
        )
        .sequential(s.step("f", StepOut))
    )
)
"""a; then b and c at once, d after b, e after b and c; then f."""

BRANCH = Workflow.define(name="contract-branch", data=Order, result=FlowOut).steps(
    lambda s: (
        s.sequential(
            s.step("a", AOut),
            s.step("b", BOut, when=lambda ctx: ctx.data.amount > 1),
            s.step("c", COut),
        )
        .parallel(s.step("d", DOut), s.step("e", StepOut), when=lambda ctx: ctx.data.amount > 5)
        .dag(s.step("f", StepOut, when=lambda ctx: ctx.data.key != "skip-f"), s.step("g", StepOut, after=("f",)))
    )
)
"""a, then b only when amount > 1, then c; d and e only when amount > 5; f unless the key is 'skip-f', and g after
f whatever became of it."""

SWITCH = Workflow.define(name="contract-switch", data=Order, result=FlowOut).steps(
    lambda s: (
        s.sequential(s.step("a", AOut), when=lambda ctx: ctx.data.key.startswith("a"))
        .sequential(s.step("b", BOut), when=lambda ctx: not ctx.data.key.startswith("a"))
        .sequential(s.step("c", COut, when=lambda ctx: ctx.data.key == "raise" and 1 / 0 > 0))
    )
)
"""A branch: a when the key starts with 'a', else b; then c, whose condition raises for the key 'raise'."""

WAIT = Workflow.define(name="contract-wait", data=Order, result=FlowOut).steps(
    lambda s: s.sequential(s.step("a", AOut), s.wait_for("approval", Note), s.step("b", BOut))
)
"""a, then wait for the signal 'approval' (a Note), then b."""

WAIT_BRIEFLY = Workflow.define(name="contract-wait-briefly", data=Order, result=FlowOut).steps(
    lambda s: s.sequential(s.step("a", AOut), s.wait_for("approval", Note, timeout=WAIT_TIMEOUT), s.step("b", BOut))
)
"""a, then wait at most WAIT_TIMEOUT seconds for 'approval', then b."""

NAP = Workflow.define(name="contract-nap", data=Order, result=FlowOut).steps(
    lambda s: s.sequential(s.step("a", AOut), s.sleep("nap", seconds=NAP_SECONDS), s.step("b", BOut))
)
"""a, a sleep of NAP_SECONDS, then b."""

UNTIL = Workflow.define(name="contract-until", data=Order, result=FlowOut).steps(
    lambda s: s.sequential(
        s.step("a", AOut),
        s.sleep("nap", until=lambda ctx: datetime.now(UTC) + timedelta(seconds=ctx.data.amount / 10)),
        s.step("b", BOut),
    )
)
"""a, a sleep until amount/10 seconds after it is reached, then b."""

EACH = Workflow.define(name="contract-each", data=Order, result=FlowOut).steps(
    lambda s: (
        s.sequential(s.step("a", AOut))
        .parallel(
            s.for_each(
                "each",
                EachOut,
                items=lambda ctx: [f"{ctx.data.key}-{i}" for i in range(ctx.data.amount)],
                concurrency=3,
            )
        )
        .sequential(s.step("z", StepOut))
    )
)
"""a; then one 'each' item per unit of amount (items '<key>-<i>'), three at a time; then z."""

KID = Workflow.define(name="contract-kid", data=Order, result=FlowOut).steps(
    lambda s: s.sequential(s.step("k1", AOut), s.step("k2", BOut))
)
"""The child of PARENT: k1 then k2."""

PARENT = Workflow.define(name="contract-parent", data=Order, result=FlowOut).steps(
    lambda s: s.sequential(
        s.step("a", AOut),
        s.sub_workflow("kid", KID, data=lambda ctx: Order(key=f"{ctx.data.key}-kid", amount=ctx.data.amount)),
        s.step("b", BOut),
    )
)
"""a, then a child flow of KID, then b."""
