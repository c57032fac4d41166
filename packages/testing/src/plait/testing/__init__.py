"""Plait's testing kit: mock contexts, compensation checks, virtual time, pytest fixtures, the conformance suite.

Unit-test a step handler without a provider::

    from plait.testing import create_mock_step_context

    async def test_charge() -> None:
        ctx = create_mock_step_context(Order(order_id="o-1"), {"validate": ValidateOut(ok=True)})
        assert (await ProcessOrderWorkflow(FakePayments()).charge(ctx)).charge_id

Check that a workflow compensates wherever it fails (one run per step, item and ``on_complete``, per way to fail)::

    from plait.testing import assert_compensates

    async def test_every_failure_is_rolled_back() -> None:
        report = await assert_compensates(ProcessOrder, ProcessOrderWorkflow(FakePayments()), {"order_id": "o-1"})
        print(report)

Travel in time: ``InProcessWorkflowProvider(clock=VirtualClock())`` (or the ``virtual_provider`` fixture) runs a
48-hour signal timeout in milliseconds.

Test an application over HTTP, in memory::

    from plait.testing import run_app

    async def test_place_order() -> None:
        async with run_app(build_app()) as client:
            assert (await client.post("/orders", json={"sku": "KB-87"})).status_code == 202

Prove a custom provider with one class (or with the rule groups it supports, such as ``FlowRules``)::

    from plait.testing import ProviderContract

    class TestMyProvider(ProviderContract):
        @pytest.fixture
        def provider(self) -> MyProvider:
            return MyProvider(stop_grace=self.stop_grace)

Installing ``plait-testing`` also registers a pytest plugin with the fixtures ``inprocess_provider``,
``virtual_clock``, ``virtual_provider`` and ``app_client`` (a factory: ``client = await app_client(app)``), and
turns on pytest-asyncio's auto mode unless the project chose a mode.
"""

from plait.testing._app import AppClient, run_app
from plait.testing._clock import VirtualClock
from plait.testing._compensation import assert_compensates
from plait.testing._contract import LifecycleRules, ProviderContract
from plait.testing._contract_control import RunControlRules
from plait.testing._contract_failure import FailureRules
from plait.testing._contract_flow import FlowRules
from plait.testing._contract_hardening import HardeningRules
from plait.testing._contract_nodes import ControlFlowRules
from plait.testing._effects import Effects
from plait.testing._mocks import ProgressCall, create_mock_step_context, create_mock_workflow_context
from plait.testing._report import CompensationError, CompensationReport, CompensationRun, Finding

__all__ = [
    "AppClient",
    "CompensationError",
    "CompensationReport",
    "CompensationRun",
    "ControlFlowRules",
    "Effects",
    "FailureRules",
    "Finding",
    "FlowRules",
    "HardeningRules",
    "LifecycleRules",
    "ProgressCall",
    "ProviderContract",
    "RunControlRules",
    "VirtualClock",
    "assert_compensates",
    "create_mock_step_context",
    "create_mock_workflow_context",
    "run_app",
]
