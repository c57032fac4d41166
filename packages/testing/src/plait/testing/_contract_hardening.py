"""Hardening: what a provider refuses before storing anything, and handlers that misbehave without stopping it."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from plait.core import (
    FlowNotFoundError,
    FlowStatus,
    PayloadTooLargeError,
    WorkflowProvider,
    WorkflowRollbackError,
    WorkflowStepError,
    WorkflowValidationError,
)
from plait.testing._contract_base import ContractBase, cause_message, cause_name
from plait.testing._scripted import BAG, FOREVER, LINE, OPAQUE, SOLO, Bag, Do, FlowOut, Order, Scripted

__all__ = ["HardeningRules"]

_MIB = 1024 * 1024


class _Interrupt(BaseException):
    """A BaseException of the user's own, neither an Exception nor a cancellation."""


class HardeningRules(ContractBase):
    """Bad ids, data that skipped validation, oversized payloads, and handlers raising any ``BaseException``."""

    # -- flow ids --

    @pytest.mark.parametrize("flow_id", [123, True, b"flow-1", 1.5])
    async def test_a_flow_id_that_is_not_a_string_is_refused(self, provider: WorkflowProvider, flow_id: object) -> None:
        consumer = Scripted(SOLO)
        async with self.running(provider, (SOLO, consumer, None)):
            with pytest.raises(TypeError, match="flow id must be a str"):
                await provider.execute(SOLO, Order(key="k"), id=flow_id)  # type: ignore[arg-type]
            with pytest.raises(FlowNotFoundError):
                await provider.get_status(str(flow_id))
            await asyncio.sleep(self.latency)
        assert consumer.calls == []

    @pytest.mark.parametrize("flow_id", ["", "a\nb", "tab\there", "nul\x00", "x" * 201, "\u2028"])
    async def test_a_flow_id_that_is_not_1_to_200_printable_characters_is_refused(
        self, provider: WorkflowProvider, flow_id: str
    ) -> None:
        consumer = Scripted(SOLO)
        async with self.running(provider, (SOLO, consumer, None)):
            with pytest.raises(ValueError, match="1-200 printable characters"):
                await provider.execute(SOLO, Order(key="k"), id=flow_id)
            await asyncio.sleep(self.latency)
        assert consumer.calls == []

    async def test_any_printable_flow_id_of_up_to_200_characters_is_its_own_flow(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(SOLO)
        ids = [f"order 42 ✓ {uuid.uuid4().hex}", "{" + uuid.uuid4().hex + "}:step:a:1", "é" * 200]
        async with self.running(provider, (SOLO, consumer, None)):
            handles = [await provider.execute(SOLO, Order(key=str(i)), id=flow_id) for i, flow_id in enumerate(ids)]
            results = [await self.result(handle) for handle in handles]
        assert [handle.id for handle in handles] == ids
        assert [r.key for r in results] == ["0", "1", "2"]

    # -- what execute() stores --

    async def test_data_that_skipped_validation_is_validated_before_it_is_stored(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(SOLO)
        mutated = Order(key="k")
        mutated.amount = "many"  # type: ignore[assignment]  # no validate_assignment: pydantic lets this through
        constructed = Order.model_construct(key=42, amount=1)  # type: ignore[arg-type]
        async with self.running(provider, (SOLO, consumer, None)):
            for data in (mutated, constructed):
                flow_id = f"flow-contract-{uuid.uuid4().hex}"
                with pytest.raises(WorkflowValidationError):
                    await provider.execute(SOLO, data, id=flow_id)
                with pytest.raises(FlowNotFoundError):
                    await provider.get_status(flow_id)
            await asyncio.sleep(self.latency)
        assert consumer.calls == []

    async def test_data_too_deep_to_store_is_a_validation_error(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(BAG)
        deep: dict[str, object] = {}
        inner = deep
        for _ in range(10_000):
            inner["x"] = {}
            inner = inner["x"]  # type: ignore[assignment]
        async with self.running(provider, (BAG, consumer, None)):
            with pytest.raises(WorkflowValidationError, match="contract-bag"):
                await provider.execute(BAG, Bag(key="k", extra=deep))
            await asyncio.sleep(self.latency)
        assert consumer.calls == []

    async def test_data_over_the_size_limit_is_refused(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(SOLO)
        flow_id = f"flow-contract-{uuid.uuid4().hex}"
        async with self.running(provider, (SOLO, consumer, None)):
            with pytest.raises(PayloadTooLargeError) as caught:
                await provider.execute(SOLO, Order(key="x" * (3 * _MIB)), id=flow_id)
            assert caught.value.limit == 2 * _MIB
            assert caught.value.size > 3 * _MIB
            assert "max_payload_size" in str(caught.value)
            with pytest.raises(FlowNotFoundError):
                await provider.get_status(flow_id)
            # Just under the limit is fine.
            await self.result(await provider.execute(SOLO, Order(key="x" * (2 * _MIB - 100))))

    async def test_an_output_over_the_size_limit_fails_the_step_without_retry(self, provider: WorkflowProvider) -> None:
        consumer = Scripted(LINE, {"b": Do(pad=3 * _MIB)})
        async with self.running(provider, (LINE, consumer, self.options(attempts=3))):
            error = await self.failure(await provider.execute(LINE, Order(key="k")))
        assert isinstance(error, WorkflowStepError)
        assert error.step_name == "b"
        assert cause_name(error) == "PayloadTooLargeError"
        assert "max_payload_size" in cause_message(error)
        assert [c.attempt for c in consumer.of("step", "b")] == [1]
        assert consumer.names("rollback") == ["a"]

    # -- handlers raising BaseExceptions --

    @pytest.mark.parametrize("raises", [SystemExit, KeyboardInterrupt, GeneratorExit, _Interrupt])
    async def test_a_step_raising_any_base_exception_fails_that_attempt_like_an_exception(
        self, provider: WorkflowProvider, raises: type[BaseException]
    ) -> None:
        retried = Scripted(SOLO, {"a": Do(fail=1, raises=raises)})
        failing = Scripted(LINE, {"b": Do(fail=FOREVER, raises=raises)})
        options = self.options(attempts=2)
        async with self.running(provider, (SOLO, retried, options), (LINE, failing, options)):
            assert await self.result(await provider.execute(SOLO, Order(key="k"))) == FlowOut(
                key="k", results=["a:AOut"]
            )
            handle = await provider.execute(LINE, Order(key="k"))
            error = await self.failure(handle)
            assert await handle.status() == FlowStatus.FAILED
            # The provider goes on running flows.
            assert (await self.result(await provider.execute(SOLO, Order(key="after")))).key == "after"
        assert [(c.attempt, c.outcome) for c in retried.of("step", "a")][:2] == [(1, "raised"), (2, "ok")]
        assert isinstance(error, WorkflowStepError)
        assert error.step_name == "b"
        assert cause_name(error) == raises.__name__
        assert [c.attempt for c in failing.of("step", "b")] == [1, 2]
        assert failing.names("rollback") == ["a"]
        assert len(failing.of("on_error")) == 1

    @pytest.mark.parametrize("raises", [SystemExit, KeyboardInterrupt, _Interrupt])
    async def test_an_output_whose_validator_raises_a_base_exception_fails_the_step_without_retry(
        self, provider: WorkflowProvider, raises: type[BaseException]
    ) -> None:
        consumer = Scripted(OPAQUE, {"b": Do(opaque=True, opaque_raises=raises)})
        async with self.running(provider, (OPAQUE, consumer, self.options(attempts=3)), (SOLO, Scripted(SOLO), None)):
            error = await self.failure(await provider.execute(OPAQUE, Order(key="k")))
            # The provider goes on running flows.
            assert (await self.result(await provider.execute(SOLO, Order(key="after")))).key == "after"
        assert isinstance(error, WorkflowStepError)
        assert error.step_name == "b"
        assert cause_name(error) == raises.__name__
        assert [c.attempt for c in consumer.of("step", "b")] == [1]
        assert consumer.names("rollback") == ["a"]

    async def test_a_rollback_raising_a_base_exception_is_retried_then_recorded(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(LINE, {"a": Do(rollback_fail=FOREVER, rollback_raises=SystemExit), "c": Do(fail=FOREVER)})
        async with self.running(provider, (LINE, consumer, self.options(attempts=2))):
            error = await self.failure(await provider.execute(LINE, Order(key="k")))
        assert isinstance(error, WorkflowRollbackError)
        assert [e.step_name for e in error.rollback_errors] == ["a"]
        assert cause_name(error.rollback_errors[0]) == "SystemExit"
        assert [(c.step, c.attempt) for c in consumer.of("rollback")] == [("b", 1), ("a", 1), ("a", 2)]

    # -- idempotency keys --

    async def test_the_idempotency_key_is_stable_across_attempts_and_differs_between_handlers(
        self, provider: WorkflowProvider
    ) -> None:
        consumer = Scripted(LINE, {"b": Do(fail=1), "c": Do(fail=FOREVER)})
        async with self.running(provider, (LINE, consumer, self.options(attempts=2))):
            first = await provider.execute(LINE, Order(key="k"))
            await self.failure(first)
            second = await provider.execute(LINE, Order(key="k"))
            await self.failure(second)
        keys: dict[tuple[str, str, str | None], set[str]] = {}
        for call in consumer.calls:
            assert call.ctx is not None
            keys.setdefault((call.ctx.flow_id, call.kind, call.step), set()).add(call.ctx.idempotency_key)
        assert all(len(seen) == 1 for seen in keys.values()), "one key per handler, whatever the attempt"
        distinct = {key for seen in keys.values() for key in seen}
        assert len(distinct) == len(keys), "a different key for each handler of each flow"
        assert all(len(key) == 32 and int(key, 16) >= 0 for key in distinct)
        step_b = keys[first.id, "step", "b"]
        assert step_b != keys[first.id, "rollback", "b"]
        assert step_b != keys[second.id, "step", "b"]
