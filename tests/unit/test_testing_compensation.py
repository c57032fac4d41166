"""plait.testing.assert_compensates against consumers that compensate and consumers that are broken on purpose.

The shop below reserves stock, charges and labels in parallel, packs each item (a for-each) and sends an email.
Its fake services note what they do in an ``Effects`` log; each broken consumer changes one thing, and the check
must name the failure point and the rule it breaks.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import BaseModel

from plait.core import (
    Backoff,
    ConsumerOptions,
    DefinitionError,
    IWorkflowConsumer,
    SignalError,
    StepContext,
    StepHandler,
    Workflow,
    WorkflowContext,
)
from plait.core.engine import Engine, FlowState
from plait.core.runner import FlowView, Runner
from plait.testing import CompensationError, CompensationReport, Effects, assert_compensates


class Order(BaseModel):
    order_id: str
    items: list[str] = ["kb", "mouse", "cable"]
    gift: bool = False


class Reserved(BaseModel):
    reservation: str


class Charged(BaseModel):
    charge_id: str


class Labelled(BaseModel):
    label: str


class Packed(BaseModel):
    parcel: str


class Sent(BaseModel):
    to: str


class Receipt(BaseModel):
    charge_id: str
    parcels: list[str]


SHOP = Workflow.define(name="shop", data=Order, result=Receipt).steps(
    lambda s: (
        s.sequential(s.step("reserve", Reserved))
        .parallel(s.step("charge", Charged), s.step("label", Labelled))
        .sequential(s.step("wrap", Labelled, when=lambda ctx: ctx.data.gift))
        .sequential(s.for_each("pack", Packed, items=lambda ctx: ctx.data.items))
        .sequential(s.step("notify", Sent))
    )
)
FAST = ConsumerOptions(attempts=3, backoff=Backoff.exponential(60, max_delay=3600))
ALL_MODES = ("raise", "timeout", "invalid", "no_effect")


class Warehouse:
    """A fake of the services the shop calls. Acting twice on one key acts once, unless ``idempotent`` is off;
    undoing what is not done does nothing, unless ``careful`` is off (then it notes an undo anyway)."""

    def __init__(self, effects: Effects, *, idempotent: bool = True, careful: bool = True) -> None:
        self.effects = effects
        self.idempotent = idempotent
        self.careful = careful
        self.done: set[str] = set()

    async def act(self, what: str) -> None:
        if self.idempotent and what in self.done:
            return
        self.done.add(what)
        self.effects.did(what)

    async def undo(self, what: str) -> None:
        if self.careful and what not in self.done:
            return
        self.done.discard(what)
        self.effects.undid(what)


class GoodShop(IWorkflowConsumer[Order, Receipt]):
    """Compensates everywhere: every step with an effect has a rollback, is in doubt when it fails, and acts (and
    undoes) by keys derived from the order, so retries and in-doubt rollbacks are safe."""

    in_doubt = True

    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse
        doubt = self.in_doubt
        self.steps: dict[str, StepHandler[Order]] = {
            "reserve": StepHandler(execute=self.reserve, rollback=self.release, rollback_if_failed=doubt),
            "charge": StepHandler(execute=self.charge, rollback=self.refund, rollback_if_failed=doubt),
            "label": StepHandler(execute=self.label, rollback=self.void, rollback_if_failed=doubt),
            "wrap": StepHandler(execute=self.wrap, rollback=self.unwrap),
            "pack": StepHandler(execute=self.pack, rollback=self.unpack, rollback_if_failed=doubt),
            "notify": StepHandler(execute=self.notify),
        }

    def key(self, ctx: StepContext[Order], effect: str) -> str:
        """How the fakes name an effect: by the order, so that every run of one order acts on the same things."""
        return effect

    async def reserve(self, ctx: StepContext[Order]) -> Reserved:
        await self.warehouse.act(self.key(ctx, f"reserved {ctx.data.order_id}"))
        return Reserved(reservation=f"r-{ctx.data.order_id}")

    async def release(self, ctx: StepContext[Order]) -> None:
        await self.warehouse.undo(self.key(ctx, f"reserved {ctx.data.order_id}"))

    async def charge(self, ctx: StepContext[Order]) -> Charged:
        await self.warehouse.act(self.key(ctx, f"charged {ctx.data.order_id}"))
        return Charged(charge_id=f"ch-{ctx.data.order_id}")

    async def refund(self, ctx: StepContext[Order]) -> None:
        await self.warehouse.undo(self.key(ctx, f"charged {ctx.data.order_id}"))

    async def label(self, ctx: StepContext[Order]) -> Labelled:
        await self.warehouse.act(self.key(ctx, f"labelled {ctx.data.order_id}"))
        return Labelled(label=f"l-{ctx.data.order_id}")

    async def void(self, ctx: StepContext[Order]) -> None:
        await self.warehouse.undo(self.key(ctx, f"labelled {ctx.data.order_id}"))

    async def wrap(self, ctx: StepContext[Order]) -> Labelled:
        return Labelled(label="gift")

    async def unwrap(self, ctx: StepContext[Order]) -> None:
        pass

    async def pack(self, ctx: StepContext[Order]) -> Packed:
        await self.warehouse.act(self.key(ctx, f"packed {ctx.item}"))
        return Packed(parcel=f"p-{ctx.item}")

    async def unpack(self, ctx: StepContext[Order]) -> None:
        await self.warehouse.undo(self.key(ctx, f"packed {ctx.item}"))

    async def notify(self, ctx: StepContext[Order]) -> Sent:
        await self.warehouse.act(self.key(ctx, f"emailed {ctx.data.order_id}"))  # an email stays sent: no rollback
        return Sent(to="customer")

    async def on_complete(self, ctx: WorkflowContext[Order]) -> Receipt:
        parcels = [p.parcel for p in ctx.results_of("pack", Packed)]
        return Receipt(charge_id=ctx.result("charge", Charged).charge_id, parcels=parcels)


async def check(consumer: GoodShop, effects: Effects | None = None, **kwargs: Any) -> CompensationReport:
    kwargs.setdefault("options", FAST)
    kwargs.setdefault("no_rollback", {"notify"})
    return await assert_compensates(SHOP, consumer, Order(order_id="o-1"), effects=effects, **kwargs)


async def findings(consumer: GoodShop, effects: Effects | None = None, **kwargs: Any) -> list[str]:
    """The findings, as ``point (mode) [rule] message`` lines; the check must fail."""
    with pytest.raises(CompensationError) as caught:
        await check(consumer, effects, **kwargs)
    assert isinstance(caught.value, AssertionError)
    report = caught.value.report
    assert not report.ok and str(caught.value) == str(report)
    return [f"{f.point} ({f.mode}) [{f.rule}] {f.message}" for f in report.findings]


# -- consumers that compensate --


async def test_a_consumer_that_compensates_everywhere_passes_every_point_and_mode() -> None:
    effects = Effects()
    started = time.monotonic()
    report = await check(GoodShop(Warehouse(effects)), effects)
    elapsed = time.monotonic() - started
    assert report.ok and report.findings == ()
    points = [(run.point, run.mode) for run in report.runs]
    steps = ["reserve", "charge", "label", "pack[0]", "pack[2]"]
    assert points == [("none", "-")] + [(p, m) for p in steps for m in ALL_MODES] + [
        (p, m) for p in ("notify", "on_complete") for m in ALL_MODES[:3]
    ]
    assert report.notes == ("'wrap' did not run without failures (its condition was false), so no run fails there",)
    runs = {(run.point, run.mode): run for run in report.runs}
    assert runs["reserve", "raise"].rolled_back == ("reserve",)  # in doubt: rolled back although it failed
    assert runs["reserve", "no_effect"].rolled_back == ()  # NoEffectError: nothing to undo
    assert runs["charge", "raise"].rolled_back[0] == "charge"  # the in-doubt step first
    assert runs["pack[0]", "raise"].rolled_back == ("pack[0]", "pack[2]", "pack[1]", "label", "charge", "reserve")
    assert runs["on_complete", "raise"].rolled_back == ("pack[2]", "pack[1]", "pack[0]", "label", "charge", "reserve")
    assert all(run.status == "failed" for run in report.runs[1:])
    assert effects.outstanding() == ["emailed o-1"]  # sent once (the fake is idempotent), and never taken back
    assert elapsed < 5  # a minute of backoff per retry, 36 runs: virtual time


async def test_the_report_prints_as_a_table_of_points_modes_and_outcomes() -> None:
    report = await check(GoodShop(Warehouse(Effects())), modes=("raise",))
    text = str(report)
    lines = text.splitlines()
    assert lines[0] == "assert_compensates(shop): 8 runs, no findings"
    assert lines[2].split() == ["failure", "point", "mode", "flow", "rolled", "back", "outcome"]
    # The run without failures, undone with compensate() once it completed.
    assert lines[3].split(maxsplit=3) == [
        "none",
        "-",
        "compensated",
        "pack[2], pack[1], pack[0], label, charge, reserve  ok",
    ]
    assert lines[4].split() == ["reserve", "raise", "failed", "reserve", "ok"]
    assert lines[-1] == "note: 'wrap' did not run without failures (its condition was false), so no run fails there"
    assert text == "\n\n".join([report.summary(), report.table(), lines[-1]])


async def test_every_item_fails_each_item_in_turn_and_a_true_condition_makes_a_point() -> None:
    effects = Effects()
    report = await assert_compensates(
        SHOP,
        GoodShop(Warehouse(effects)),
        Order(order_id="o-2", items=["a", "b", "c", "d"], gift=True),
        no_rollback={"notify"},
        modes=("raise",),
        every_item=True,
        effects=effects,
    )
    packs = [f"pack[{i}]" for i in range(4)]
    assert [run.point for run in report.runs] == [
        "none",
        "reserve",
        "charge",
        "label",
        "wrap",
        *packs,
        "notify",
        "on_complete",
    ]
    assert report.notes == ()


async def test_the_consumer_given_is_not_changed() -> None:
    consumer = GoodShop(Warehouse(Effects()))
    steps = consumer.steps
    handlers = dict(steps)
    await check(consumer, modes=("raise",))
    assert consumer.steps is steps and consumer.steps == handlers


async def test_a_rollback_that_raises_is_retried_and_passes_once_it_succeeds() -> None:
    class FlakyRefund(GoodShop):
        failed = 0

        async def refund(self, ctx: StepContext[Order]) -> None:
            if ctx.attempt == 1:
                self.failed += 1
                raise ConnectionError("the payment service is down")
            await super().refund(ctx)

    effects = Effects()
    consumer = FlakyRefund(Warehouse(effects))
    assert (await check(consumer, effects, modes=("raise",))).ok
    assert consumer.failed > 0


# -- consumers broken on purpose --


async def test_a_rollback_that_undoes_twice_is_caught_by_its_effects() -> None:
    class RefundTwice(GoodShop):
        in_doubt = False  # so that only what completed is undone: the fake below notes every undo

        async def refund(self, ctx: StepContext[Order]) -> None:
            await super().refund(ctx)
            await super().refund(ctx)  # a second refund through the same service

    effects = Effects()
    found = await findings(RefundTwice(Warehouse(effects, careful=False)), effects, modes=("raise",))
    assert "label (raise) [once] 'charged o-1' was undone twice: by the rollback of 'charge', then by the " in (
        "\n".join(found)
    )
    assert all("[once]" in line and "'charged o-1'" in line for line in found)
    points = {line.split(" ")[0] for line in found}
    assert points == {"none", "label", "pack[0]", "pack[2]", "notify", "on_complete"}  # wherever it is undone


async def test_a_rollback_that_calls_another_rollback_is_caught_undoing_out_of_order() -> None:
    class RefundReleases(GoodShop):
        async def refund(self, ctx: StepContext[Order]) -> None:
            await super().refund(ctx)
            await self.release(ctx)  # "the stock goes back with the money": but reserve has its own rollback

    effects = Effects()
    found = await findings(RefundReleases(Warehouse(effects)), effects, modes=("raise",))
    expected = (
        "[order] 'reserved o-1', done by step 'reserve', was undone by the rollback of 'charge', not by the "
        "rollback of 'reserve': a rollback undoes its own step only (does one rollback call another?)"
    )
    assert f"on_complete (raise) {expected}" in found
    # With a fake that notes every undo, the release that follows is an undo of nothing: twice.
    effects = Effects()
    found = await findings(RefundReleases(Warehouse(effects, careful=False)), effects, modes=("raise",))
    assert any(line.startswith("on_complete (raise) [once] 'reserved o-1' was undone twice") for line in found)


async def test_a_step_without_a_rollback_is_a_missing_rollback() -> None:
    class NoRelease(GoodShop):
        def __init__(self, warehouse: Warehouse) -> None:
            super().__init__(warehouse)
            self.steps["reserve"] = StepHandler(execute=self.reserve)

    found = await findings(NoRelease(Warehouse(Effects())), modes=("raise",))
    message = (
        "[missing rollback] step 'reserve' completed but has no rollback, so nothing undoes it when a later step "
        "fails; if it needs none (it sends an email, say), name it in no_rollback"
    )
    points = ("none", "charge", "label", "pack[0]", "pack[2]", "notify", "on_complete")
    assert found == [f"{point} ({'-' if point == 'none' else 'raise'}) {message}" for point in points]
    effects = Effects()
    found = await findings(NoRelease(Warehouse(effects)), effects, modes=("raise",))
    assert (
        "none (-) [effects] 'reserved o-1', done by step 'reserve', is still done after compensate() undid the "
        "completed flow: the step has no rollback"
    ) in found
    # Naming it says it needs none: no finding left.
    assert (await check(NoRelease(Warehouse(Effects())), modes=("raise",), no_rollback={"notify", "reserve"})).ok


async def test_the_email_needs_naming_in_no_rollback() -> None:
    found = await findings(GoodShop(Warehouse(Effects())), modes=("raise",), no_rollback=())
    message = (
        "[missing rollback] step 'notify' completed but has no rollback, so nothing undoes it when a later step "
        "fails; if it needs none (it sends an email, say), name it in no_rollback"
    )
    assert found == [f"none (-) {message}", f"on_complete (raise) {message}"]


async def test_a_step_that_is_not_in_doubt_leaves_what_it_did_when_its_answer_is_lost() -> None:
    class Certain(GoodShop):
        in_doubt = False

    effects = Effects()
    found = await findings(Certain(Warehouse(effects)), effects)
    assert (
        "charge (timeout) [effects] 'charged o-1', done by step 'charge', is still done after the flow failed: the "
        "step acted and then failed (timeout), and a step that failed is rolled back only when it is in doubt: "
        "StepHandler(..., rollback_if_failed=True)"
    ) in found
    # Each step's timeout run leaves its effect standing; its invalid run finds it standing already, and the fake,
    # idempotent, does not act again: the first finding is the one to fix.
    steps = ("reserve", "charge", "label", "pack[0]", "pack[2]")
    assert {line.split(" [")[0] for line in found} == {f"{step} (timeout)" for step in steps}
    # Without effects the record cannot tell: such runs pass (raise and no_effect runs do not apply).
    assert (await check(Certain(Warehouse(Effects())))).ok


async def test_a_step_that_acts_again_on_each_retry_is_not_idempotent() -> None:
    effects = Effects()
    found = await findings(GoodShop(Warehouse(effects, idempotent=False)), effects, modes=("timeout",))
    assert (
        "charge (timeout) [effects] 'charged o-1', done by step 'charge', is still done after the flow failed: it "
        "was done 3 times, as a retried attempt acted again (make the step idempotent, with ctx.idempotency_key); "
        "its rollback ran but did not undo it"
    ) in found


async def test_an_in_doubt_rollback_that_needs_the_output_fails_for_good() -> None:
    class RefundByOutput(GoodShop):
        async def refund(self, ctx: StepContext[Order]) -> None:
            if ctx.output is None:  # a step that failed has no output
                raise LookupError("no charge to refund")
            await super().refund(ctx)

    found = await findings(RefundByOutput(Warehouse(Effects())), options=ConsumerOptions(attempts=2))
    assert (
        "charge (raise) [rollback failed] the rollback of 'charge' failed for good after 2 attempts: "
        "LookupError('no charge to refund')"
    ) in found
    assert {line.split(" [")[0] for line in found} == {"charge (raise)", "charge (timeout)", "charge (invalid)"}


async def test_a_rollback_that_keeps_failing_is_a_finding() -> None:
    class BrokenVoid(GoodShop):
        async def void(self, ctx: StepContext[Order]) -> None:
            raise ConnectionError("the label printer is offline")

    found = await findings(BrokenVoid(Warehouse(Effects())), modes=("raise",), options=ConsumerOptions(attempts=1))
    assert (
        "pack[2] (raise) [rollback failed] the rollback of 'label' failed for good after 1 attempt: "
        "ConnectionError('the label printer is offline')"
    ) in found


async def test_a_for_each_rollback_that_undoes_every_item_is_caught() -> None:
    class UnpackAll(GoodShop):
        async def unpack(self, ctx: StepContext[Order]) -> None:
            for item in ctx.data.items:
                await self.warehouse.undo(self.key(ctx, f"packed {item}"))

    effects = Effects()
    found = await findings(UnpackAll(Warehouse(effects)), effects, modes=("raise",))
    assert (
        "notify (raise) [order] 'packed mouse', done by step 'pack[1]', was undone by the rollback of 'pack[2]', "
        "not by the rollback of 'pack[1]': a rollback undoes its own step only (does one rollback call another?)"
    ) in found


# -- the rules the engine keeps: a provider that broke them would be caught --


async def test_a_rollback_left_out_or_run_out_of_order_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    order = Engine._rollback_order

    def forgetful(self: Engine, state: FlowState) -> list[str]:
        return order(self, state)[:-1]

    monkeypatch.setattr(Engine, "_rollback_order", forgetful)
    found = await findings(GoodShop(Warehouse(Effects())), modes=("raise",))
    assert "charge (raise) [rolled back] 'reserve' completed and has a rollback, but it was not rolled back" in found
    assert (
        "reserve (raise) [rolled back] 'reserve' failed in doubt (rollback_if_failed=True), but it was not rolled back"
        in found
    )

    def backwards(self: Engine, state: FlowState) -> list[str]:
        return order(self, state)[::-1]

    monkeypatch.setattr(Engine, "_rollback_order", backwards)
    found = await findings(GoodShop(Warehouse(Effects())), modes=("raise",))
    assert (
        "label (raise) [order] rollbacks ran as reserve, charge, label; the documented order is label, charge, "
        "reserve (steps that failed in doubt first, then completed steps from the last defined to the first, a "
        "for-each's items from the last)"
    ) in found


async def test_on_error_running_twice_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    run_on_error = Runner.run_on_error

    async def twice(self: Runner[Any, Any], view: FlowView[Any]) -> Any:
        await run_on_error(self, view)
        return await run_on_error(self, view)

    monkeypatch.setattr(Runner, "run_on_error", twice)
    found = await findings(GoodShop(Warehouse(Effects())), modes=("raise",))
    assert "reserve (raise) [on_error once] on_error ran 2 times, not once" in found


async def test_a_rollback_given_another_output_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def stale(self: FlowView[Any], step: str, index: int | None) -> Charged:
        return Charged(charge_id="ch-stale")

    monkeypatch.setattr(FlowView, "output", stale)
    found = await findings(GoodShop(Warehouse(Effects())), modes=("raise",))
    assert (
        "label (raise) [ctx.output] the rollback of 'charge' saw ctx.output=Charged(charge_id='ch-stale'), not its "
        "own step's output Charged(charge_id='ch-o-1')"
    ) in found


# -- signals, sub-workflows, arguments --


class Ask(BaseModel):
    topic: str


class Answer(BaseModel):
    yes: bool


class Opened(BaseModel):
    account: str


ACCOUNT = Workflow.define(name="account", data=Ask, result=Opened).steps(
    lambda s: s.sequential(s.step("open", Opened)).sequential(s.step("fund", Opened))
)
ASKING = Workflow.define(name="asking", data=Ask, result=Answer).steps(
    lambda s: (
        s.sequential(s.step("hold", Opened))
        .sequential(s.wait_for("answer", Answer, timeout=48 * 3600))
        .sequential(s.sleep("cool_off", seconds=7 * 86400))
        .sequential(s.sub_workflow("account", ACCOUNT, data=lambda ctx: ctx.data))
        .sequential(s.step("confirm", Opened))
    )
)


class AccountWorkflow(IWorkflowConsumer[Ask, Opened]):
    def __init__(self, effects: Effects) -> None:
        self.effects = effects
        self.steps = {
            "open": StepHandler(execute=self.open, rollback=self.close),
            "fund": StepHandler(execute=self.fund, rollback=self.unfund),
        }

    async def open(self, ctx: StepContext[Ask]) -> Opened:
        self.effects.did("opened")
        return Opened(account="a-1")

    async def close(self, ctx: StepContext[Ask]) -> None:
        self.effects.undid("opened")

    async def fund(self, ctx: StepContext[Ask]) -> Opened:
        self.effects.did("funded")
        return Opened(account="a-1")

    async def unfund(self, ctx: StepContext[Ask]) -> None:
        self.effects.undid("funded")

    async def on_complete(self, ctx: WorkflowContext[Ask]) -> Opened:
        return ctx.result("fund", Opened)


class AskingWorkflow(IWorkflowConsumer[Ask, Answer]):
    def __init__(self) -> None:
        self.steps = {
            "hold": StepHandler(execute=self.hold, rollback=self.unhold),
            "confirm": StepHandler(execute=self.hold, rollback=self.unhold),
        }

    async def hold(self, ctx: StepContext[Ask]) -> Opened:
        return Opened(account="held")

    async def unhold(self, ctx: StepContext[Ask]) -> None:
        pass

    async def on_complete(self, ctx: WorkflowContext[Ask]) -> Answer:
        return ctx.result("answer", Answer)


async def test_signals_sleeps_and_sub_workflows_are_compensated_in_place() -> None:
    effects = Effects()
    started = time.monotonic()
    report = await assert_compensates(
        ASKING,
        AskingWorkflow(),
        Ask(topic="t"),
        signals={"answer": Answer(yes=True)},
        sub_workflows=[(ACCOUNT, AccountWorkflow(effects))],
        effects=effects,
        modes=("raise",),
    )
    assert time.monotonic() - started < 2  # a week of sleep per run
    runs = {run.point: run for run in report.runs}
    assert runs["confirm"].rolled_back == ("account/fund", "account/open", "hold")
    assert runs["hold"].rolled_back == ()
    assert list(runs) == ["none", "hold", "confirm", "on_complete"]


async def test_a_sub_workflow_without_its_consumer_or_a_missing_signal_fails_the_run_without_failures() -> None:
    with pytest.raises(CompensationError, match=r"without injected failures the flow ends failed: .*account"):
        await assert_compensates(ASKING, AskingWorkflow(), Ask(topic="t"), signals={"answer": {"yes": True}})
    with pytest.raises(CompensationError, match=r"no signal 'answer' arrived"):
        await assert_compensates(ASKING, AskingWorkflow(), Ask(topic="t"))


async def test_a_flow_that_waits_forever_is_reported_stuck() -> None:
    forever = Workflow.define(name="forever", data=Ask, result=Answer).steps(
        lambda s: s.sequential(s.step("hold", Opened)).sequential(s.wait_for("answer", Answer))
    )

    class Forever(AskingWorkflow):
        def __init__(self) -> None:
            super().__init__()
            self.steps = {"hold": StepHandler(execute=self.hold, rollback=self.unhold)}

    started = time.monotonic()
    with pytest.raises(CompensationError) as caught:
        await assert_compensates(forever, Forever(), Ask(topic="t"))
    assert time.monotonic() - started < 2
    (finding,) = caught.value.report.findings
    assert (finding.rule, finding.point) == ("ends", "none")
    assert finding.message == "the flow did not end: it waits for a signal nobody sends (pass its payload in signals=)"


async def test_bad_arguments_are_refused_before_anything_runs() -> None:
    consumer = GoodShop(Warehouse(Effects()))
    with pytest.raises(DefinitionError, match="no_rollback names 'nope', which is no step"):
        await check(consumer, no_rollback={"nope"})
    with pytest.raises(DefinitionError, match="no_rollback names 'charge', which has a rollback"):
        await check(consumer, no_rollback={"charge"})
    with pytest.raises(ValueError, match="modes are some of raise, timeout, invalid, no_effect"):
        await check(consumer, modes=("explode",))
    with pytest.raises(ValueError, match="concurrency"):
        await check(consumer, concurrency=0)
    with pytest.raises(DefinitionError, match="no handler for step"):
        await assert_compensates(ASKING, AccountWorkflow(Effects()), Ask(topic="t"))  # type: ignore[misc]


async def test_runs_may_go_several_at_once_when_the_fakes_keep_flows_apart() -> None:
    class PerFlow(GoodShop):
        def key(self, ctx: StepContext[Order], effect: str) -> str:
            return f"{effect} in {ctx.flow_id}"

    effects = Effects()
    report = await check(PerFlow(Warehouse(effects)), effects, concurrency=8)
    assert report.ok and len(report.runs) == 27


async def test_a_handler_that_hangs_is_reported_after_the_run_timeout() -> None:
    class Hangs(AskingWorkflow):
        async def hold(self, ctx: StepContext[Ask]) -> Opened:
            await asyncio.Event().wait()  # real waiting: virtual time cannot end it
            raise AssertionError("unreachable")

    started = time.monotonic()
    with pytest.raises(CompensationError) as caught:
        await assert_compensates(ASKING, Hangs(), Ask(topic="t"), signals={"answer": {"yes": True}}, run_timeout=0.3)
    assert time.monotonic() - started < 3
    (finding,) = caught.value.report.findings
    assert finding.message == "the flow did not end: it did not end within 0.3 s of real time"
    assert caught.value.report.runs[0].status == "stuck"


async def test_a_signal_the_workflow_does_not_wait_for_is_refused() -> None:
    with pytest.raises(SignalError, match="waits for no signal 'anser'"):
        await assert_compensates(ASKING, AskingWorkflow(), Ask(topic="t"), signals={"anser": {"yes": True}})
