"""Run control and observation: cancel, list, retry, retry the compensation, events and subscribe, hooks,
progress, in-doubt steps."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import pytest

from plait.core import (
    FlowCancelled,
    FlowCompleted,
    FlowEvent,
    FlowFailed,
    FlowNotFoundError,
    FlowStarted,
    FlowStateError,
    FlowStatus,
    ProgressReported,
    RollbackCompleted,
    RollbackStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
    WorkflowCancelledError,
    WorkflowProvider,
    WorkflowRollbackError,
    WorkflowStepError,
)
from plait.testing._contract_base import ContractBase
from plait.testing._flows import EACH, KID, PARENT, WAIT
from plait.testing._scripted import DIAMOND, FOREVER, LINE, SOLO, Do, FlowOut, Note, Order, Scripted

__all__ = ["RunControlRules"]


class RunControlRules(ContractBase):
    """Cancelling, listing, retrying and watching flows; progress; in-doubt steps."""

    # -- cancel --

    async def test_cancel_stops_the_running_step_rolls_back_and_ends_cancelled(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(LINE, {"b": Do(sleep=5.0)})
        async with self.running(provider, (LINE, consumer, None)):
            handle = await provider.execute(LINE, Order(key="k"))
            await self.until(lambda: bool(consumer.of("step", "b")), "step b to start")
            requested = time.monotonic()
            status = await provider.cancel(handle.id, "customer changed their mind")
            assert status in (FlowStatus.RUNNING, FlowStatus.COMPENSATING, FlowStatus.CANCELLED)
            await self.until(lambda: consumer.of("step", "b")[0].outcome == "cancelled", "step b to be cancelled")
            seen = time.monotonic() - requested
            error = await self.failure(handle)
            assert await handle.status() == FlowStatus.CANCELLED
        assert seen < 1.0 + self.latency
        assert isinstance(error, WorkflowCancelledError) and error.reason == "customer changed their mind"
        assert consumer.names("rollback") == ["a"]
        assert len(consumer.of("on_error")) == 1
        assert consumer.of("step", "c") == []

    async def test_cancel_a_waiting_flow(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(WAIT)
        async with self.running(provider, (WAIT, consumer, None)):
            handle = await provider.execute(WAIT, Order(key="k"))
            await self.status_becomes(provider, handle.id, FlowStatus.WAITING)
            await provider.cancel(handle.id)
            error = await self.failure(handle)
        assert isinstance(error, WorkflowCancelledError)
        assert consumer.names("rollback") == ["a"]

    async def test_cancel_a_pending_flow_runs_nothing_but_on_error(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO, {"a": Do(sleep=0.5)})
        async with self.running(provider, (SOLO, consumer, self.options(concurrency=1))):
            first = await provider.execute(SOLO, Order(key="first"))
            second = await provider.execute(SOLO, Order(key="second"))
            await self.until(lambda: bool(consumer.of("step", "a")), "the first flow to start")
            assert await provider.get_status(second.id) == FlowStatus.PENDING
            await provider.cancel(second.id, "not needed")
            error = await self.failure(second)
            await self.result(first)
        assert isinstance(error, WorkflowCancelledError)
        assert [c.ctx.data.key for c in consumer.of("step", "a") if c.ctx] == ["first"]

    async def test_cancel_of_an_ended_flow_returns_its_status_and_changes_nothing(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(SOLO)
        async with self.running(provider, (SOLO, consumer, None)):
            handle = await provider.execute(SOLO, Order(key="k"))
            await self.result(handle)
            assert await provider.cancel(handle.id) == FlowStatus.COMPLETED
            assert await provider.get_status(handle.id) == FlowStatus.COMPLETED
            with pytest.raises(FlowNotFoundError):
                await provider.cancel(f"flow-contract-{uuid.uuid4().hex}")
        assert consumer.of("rollback") == [] and consumer.of("on_error") == []

    # -- listing --

    async def test_list_flows_newest_first_filtered_by_workflow_and_status(self, provider: WorkflowProvider) -> None:
        solo, line = Scripted(SOLO), Scripted(LINE, {"b": Do(fail=FOREVER)})
        async with self.running(provider, (SOLO, solo, None), (LINE, line, None)):
            done = [await provider.execute(SOLO, Order(key=f"s{i}")) for i in range(3)]
            for handle in done:
                await self.result(handle)
            failed = await provider.execute(LINE, Order(key="l"))
            await self.failure(failed)
            page = await provider.list_flows(workflow="contract-solo")
            assert [s.flow_id for s in page.items][:3] == [h.id for h in reversed(done)]
            assert all(s.workflow == "contract-solo" and s.status == FlowStatus.COMPLETED for s in page.items)
            failures = await provider.list_flows(status=FlowStatus.FAILED)
            assert [s.flow_id for s in failures.items] == [failed.id]
            summary = failures.items[0]
            assert summary.error is not None and "Step 'b' failed" in summary.error
            assert summary.finished_at is not None and summary.finished_at >= summary.created_at
            assert (await provider.list_flows(status="failed", workflow="contract-solo")).items == ()

    async def test_list_flows_pages_with_a_cursor(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO)
        async with self.running(provider, (SOLO, consumer, None)):
            handles = [await provider.execute(SOLO, Order(key=str(i))) for i in range(5)]
            for handle in handles:
                await self.result(handle)
            seen: list[str] = []
            cursor: str | None = None
            while True:
                page = await provider.list_flows(workflow="contract-solo", limit=2, cursor=cursor)
                seen += [s.flow_id for s in page.items]
                assert len(page.items) <= 2
                cursor = page.next_cursor
                if cursor is None:
                    break
        assert seen == [h.id for h in reversed(handles)]

    async def test_list_flows_by_parent_and_by_creation_time(self, provider: WorkflowProvider) -> None:
        parent, kid, solo = Scripted(PARENT), Scripted(KID), Scripted(SOLO)
        async with self.running(provider, (PARENT, parent, None), (KID, kid, None), (SOLO, solo, None)):
            before = await provider.execute(SOLO, Order(key="before"))
            await self.result(before)
            await asyncio.sleep(0.02)
            middle = time.time()
            await asyncio.sleep(0.02)
            handle = await provider.execute(PARENT, Order(key="p"))
            await self.result(handle)
            children = await provider.list_flows(parent_id=handle.id)
            assert [s.flow_id for s in children.items] == [f"{handle.id}.kid"]
            assert children.items[0].parent_id == handle.id
            after = await provider.list_flows(created_after=middle)
            assert before.id not in [s.flow_id for s in after.items]
            assert handle.id in [s.flow_id for s in after.items]
            earlier = await provider.list_flows(created_before=middle)
            assert [s.flow_id for s in earlier.items] == [before.id]

    async def test_list_flows_refuses_bad_arguments(self, provider: WorkflowProvider) -> None:
        async with self.running(provider):
            for bad in ({"limit": 0}, {"limit": 1001}, {"status": "sleeping"}, {"cursor": "not-a-cursor!"}):
                with pytest.raises(ValueError):
                    await provider.list_flows(**bad)

    # -- retry --

    async def test_retry_starts_a_new_flow_with_the_same_data_and_meta(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"b": Do(fail=FOREVER)})
        async with self.running(provider, (LINE, consumer, None)):
            failed = await provider.execute(LINE, Order(key="k", amount=7), meta={"tenant": "t-1"})
            await self.failure(failed)
            consumer.plan["b"] = Do()  # whatever made it fail is fixed
            retried = await provider.retry(failed.id)
            assert retried.id != failed.id
            result = await self.result(retried)
            info = await provider.describe(retried.id)
        assert isinstance(result, FlowOut) and result.key == "k"
        assert info.retry_of == failed.id
        assert info.meta is not None and info.meta["tenant"] == "t-1"
        last = consumer.of("step", "b")[-1]
        assert last.ctx is not None and last.ctx.data == Order(key="k", amount=7)

    async def test_retry_refuses_running_and_completed_flows(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(WAIT)
        async with self.running(provider, (WAIT, consumer, None)):
            handle = await provider.execute(WAIT, Order(key="k"))
            await self.status_becomes(provider, handle.id, FlowStatus.WAITING)
            with pytest.raises(FlowStateError, match="only a failed, cancelled or compensated flow"):
                await provider.retry(handle.id)
            await provider.signal(handle.id, "approval", Note(by="x"))
            await self.result(handle)
            with pytest.raises(FlowStateError):
                await provider.retry(handle.id)

    async def test_retry_compensation_runs_the_failed_rollbacks_again_and_clears_their_errors(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(LINE, {"a": Do(rollback_fail=FOREVER), "c": Do(fail=FOREVER)})
        async with self.running(provider, (LINE, consumer, None)):
            handle = await provider.execute(LINE, Order(key="k"))
            error = await self.failure(handle)
            assert isinstance(error, WorkflowRollbackError)
            consumer.plan["a"] = Do()  # the refund service is back
            status = await provider.retry_compensation(handle.id)
            assert status in (FlowStatus.COMPENSATING, FlowStatus.FAILED)
            await self.until(lambda: len(consumer.of("rollback", "a")) == 2, "the rollback to run again")
            await self.until_status(provider, handle.id, FlowStatus.FAILED)
            error = await self.failure(handle)
            info = await provider.describe(handle.id)
        assert isinstance(error, WorkflowStepError) and error.step_name == "c"  # the rollback error left
        assert [(c.step, c.attempt, c.outcome) for c in consumer.of("rollback")] == [
            ("b", 1, "ok"),
            ("a", 1, "raised"),
            ("a", 1, "ok"),
        ]
        assert info.step("a").status == "compensated"
        assert len(consumer.of("on_error")) == 1  # on_error is not run again

    async def test_retry_compensation_without_failed_rollbacks_is_refused(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"c": Do(fail=FOREVER)})
        async with self.running(provider, (LINE, consumer, None)):
            handle = await provider.execute(LINE, Order(key="k"))
            await self.failure(handle)
            with pytest.raises(FlowStateError, match="no rollbacks that failed"):
                await provider.retry_compensation(handle.id)

    async def test_a_rollback_failing_again_keeps_its_error(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"a": Do(rollback_fail=FOREVER), "c": Do(fail=FOREVER)})
        async with self.running(provider, (LINE, consumer, None)):
            handle = await provider.execute(LINE, Order(key="k"))
            await self.failure(handle)
            await provider.retry_compensation(handle.id)
            await self.until(lambda: len(consumer.of("rollback", "a")) == 2, "the rollback to run again")
            await self.until_status(provider, handle.id, FlowStatus.FAILED)
            error = await self.failure(handle)
        assert isinstance(error, WorkflowRollbackError)
        assert [e.step_name for e in error.rollback_errors] == ["a"]

    # -- events --

    async def test_every_transition_is_an_event_numbered_from_one(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"b": Do(fail=1)})
        async with self.running(provider, (LINE, consumer, self.options(attempts=2))):
            handle = await provider.execute(LINE, Order(key="k"))
            await self.result(handle)
            events = [event async for event in provider.subscribe(handle.id)]
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert all(e.flow_id == handle.id and e.workflow == "contract-line" for e in events)
        assert [type(e).__name__ for e in events] == [
            "FlowStarted",
            "StepStarted",
            "StepCompleted",
            "StepStarted",
            "StepFailed",
            "StepStarted",
            "StepCompleted",
            "StepStarted",
            "StepCompleted",
            "FlowCompleted",
        ]
        failed = events[4]
        assert isinstance(failed, StepFailed)
        assert (failed.step, failed.attempt, failed.will_retry) == ("b", 1, True)
        assert failed.error is not None and "boom b 1" in failed.error
        assert all(later.at >= earlier.at for earlier, later in itertools.pairwise(events))

    async def test_subscribe_replays_then_follows_live_until_the_last_event(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(WAIT)
        async with self.running(provider, (WAIT, consumer, None)):
            handle = await provider.execute(WAIT, Order(key="k"))
            await self.status_becomes(provider, handle.id, FlowStatus.WAITING)
            seen: list[FlowEvent] = []

            async def watch() -> None:
                async for event in provider.subscribe(handle.id):
                    seen.append(event)

            watcher = asyncio.create_task(watch())
            await self.until(lambda: any(type(e).__name__ == "FlowWaiting" for e in seen), "the replay")
            assert isinstance(seen[0], FlowStarted)
            await provider.signal(handle.id, "approval", Note(by="x"))
            await asyncio.wait_for(watcher, self.wait)  # it ends by itself after the last event
        names = [type(e).__name__ for e in seen]
        assert names[-1] == "FlowCompleted"
        assert "SignalReceived" in names
        assert [e.seq for e in seen] == list(range(1, len(seen) + 1))

    async def test_subscribe_follows_a_completed_flow_being_compensated_to_its_new_end(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(LINE, {"a": Do(rollback_sleep=0.3)})
        async with self.running(provider, (LINE, consumer, None)):
            handle = await provider.execute(LINE, Order(key="k"))
            await self.result(handle)
            await provider.compensate(handle.id, "undo")
            await self.until(lambda: bool(consumer.of("rollback", "a")), "the last rollback to start")
            events = [event async for event in provider.subscribe(handle.id)]
        names = [type(e).__name__ for e in events]
        assert names.count("FlowCompleted") == 1
        assert names[-1] == "FlowCompensated"
        assert names.count("RollbackCompleted") == 3

    async def test_subscribe_to_an_unknown_flow_raises(self, provider: WorkflowProvider) -> None:
        async with self.running(provider):
            with pytest.raises(FlowNotFoundError):
                async for _ in provider.subscribe(f"flow-contract-{uuid.uuid4().hex}"):
                    pass

    async def test_the_events_of_a_saga_show_its_rollbacks_in_order(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(DIAMOND, {"d": Do(fail=FOREVER)})
        async with self.running(provider, (DIAMOND, consumer, None)):
            handle = await provider.execute(DIAMOND, Order(key="k"))
            await self.failure(handle)
            events = [event async for event in provider.subscribe(handle.id)]
        rollbacks = [(type(e).__name__, e.step) for e in events if isinstance(e, RollbackStarted | RollbackCompleted)]
        assert rollbacks == [
            ("RollbackStarted", "c"),
            ("RollbackCompleted", "c"),
            ("RollbackStarted", "b"),
            ("RollbackCompleted", "b"),
            ("RollbackStarted", "a"),
            ("RollbackCompleted", "a"),
        ]
        last = events[-1]
        assert isinstance(last, FlowFailed) and last.error is not None and "Step 'd' failed" in last.error

    async def test_hooks_get_every_event_and_a_failing_hook_never_fails_a_flow(
        self, provider: WorkflowProvider
    ) -> None:
        received: list[FlowEvent] = []

        async def record(event: FlowEvent) -> None:
            received.append(event)

        async def broken(event: FlowEvent) -> None:
            raise RuntimeError("hook bug")

        provider.on_event(broken)
        provider.on_event(record)
        consumer = Scripted(LINE)
        async with self.running(provider, (LINE, consumer, None)):
            handle = await provider.execute(LINE, Order(key="k"))
            assert (await self.result(handle)).key == "k"
            await self.until(lambda: any(isinstance(e, FlowCompleted) for e in received), "the last event")
        mine = [e for e in received if e.flow_id == handle.id]
        assert [e.seq for e in mine] == list(range(1, len(mine) + 1))
        assert isinstance(mine[0], FlowStarted) and isinstance(mine[-1], FlowCompleted)

    async def test_progress_is_an_event_and_the_latest_shows_in_describe(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"b": Do(progress=0.5)})
        async with self.running(provider, (LINE, consumer, None)):
            handle = await provider.execute(LINE, Order(key="k"))
            await self.result(handle)
            info = await provider.describe(handle.id)
            events = [event async for event in provider.subscribe(handle.id)]
        progress = [e for e in events if isinstance(e, ProgressReported)]
        assert [(p.step, p.fraction, p.message) for p in progress] == [("b", 0.5, "b at 0.5")]
        assert info.progress is not None
        assert (info.progress.step, info.progress.fraction, info.progress.message) == ("b", 0.5, "b at 0.5")

    async def test_for_each_items_have_their_own_events(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(EACH)
        async with self.running(provider, (EACH, consumer, None)):
            handle = await provider.execute(EACH, Order(key="k", amount=3))
            await self.result(handle)
            events = [event async for event in provider.subscribe(handle.id)]
        items = [e for e in events if isinstance(e, StepStarted | StepCompleted) and e.index is not None]
        assert sorted(e.index or 0 for e in items if isinstance(e, StepStarted)) == [0, 1, 2]
        assert sorted(e.index or 0 for e in items if isinstance(e, StepCompleted)) == [0, 1, 2]

    # -- in-doubt steps --

    async def test_an_in_doubt_step_that_fails_for_good_is_rolled_back_first(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"c": Do(fail=FOREVER, in_doubt=True)})
        async with self.running(provider, (LINE, consumer, self.options(attempts=2))):
            error = await self.failure(await provider.execute(LINE, Order(key="k")))
        assert isinstance(error, WorkflowStepError) and error.step_name == "c"
        assert consumer.names("rollback") == ["c", "b", "a"]
        rollback = consumer.of("rollback", "c")[0]
        assert rollback.step_ctx.output is None

    async def test_no_effect_error_skips_the_in_doubt_rollback_and_is_not_retried(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(LINE, {"c": Do(fail=FOREVER, in_doubt=True, no_effect=True)})
        async with self.running(provider, (LINE, consumer, self.options(attempts=3))):
            error = await self.failure(await provider.execute(LINE, Order(key="k")))
        assert isinstance(error, WorkflowStepError) and error.step_name == "c"
        assert [c.attempt for c in consumer.of("step", "c")] == [1]
        assert consumer.names("rollback") == ["b", "a"]

    # -- handles --

    async def test_get_handle_takes_the_definition_that_types_its_result(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO)
        async with self.running(provider, (SOLO, consumer, None)):
            handle = await provider.execute(SOLO, Order(key="k"))
            again = await provider.get_handle(handle.id, SOLO)
            assert await again.result(timeout=self.wait) == FlowOut(key="k", results=["a:AOut"])

    async def test_events_say_when_a_flow_is_cancelled(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(WAIT)
        async with self.running(provider, (WAIT, consumer, None)):
            handle = await provider.execute(WAIT, Order(key="k"))
            await self.status_becomes(provider, handle.id, FlowStatus.WAITING)
            await provider.cancel(handle.id, "no longer needed")
            await self.failure(handle)
            events = [event async for event in provider.subscribe(handle.id)]
        last = events[-1]
        assert isinstance(last, FlowCancelled) and last.reason == "no longer needed"

    async def until_status(self, provider: WorkflowProvider, flow_id: str, status: FlowStatus) -> None:
        """Polls until the flow's status is ``status`` (whatever it went through on the way)."""
        deadline = time.monotonic() + self.wait
        while await provider.get_status(flow_id) != status:
            if time.monotonic() > deadline:
                pytest.fail(f"Flow {flow_id} never became {status}")
            await asyncio.sleep(0.01)
