"""Pins the public names of plait.testing and plait.providers.inprocess: changing them is a breaking change."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest

import plait.core
import plait.providers.inprocess
import plait.testing
import plait.testing.plugin


def test_plait_core_exports() -> None:
    # The names DESIGN.md fixes, plus what users need around them; removing one breaks users.
    assert sorted(plait.core.__all__) == [
        "AppContext",
        "Application",
        "Backoff",
        "ConsumerOptions",
        "CorruptFlowError",
        "DefinitionError",
        "EventHook",
        "FlowCancelled",
        "FlowCompensated",
        "FlowCompleted",
        "FlowConflictError",
        "FlowEvent",
        "FlowFailed",
        "FlowHandle",
        "FlowInfo",
        "FlowNotFoundError",
        "FlowPage",
        "FlowStarted",
        "FlowStateError",
        "FlowStatus",
        "FlowSummary",
        "FlowWaiting",
        "IWorkflowConsumer",
        "NoEffectError",
        "NonRetryableError",
        "PayloadTooLargeError",
        "Plait",
        "PlaitError",
        "ProgressInfo",
        "ProgressReported",
        "ProviderNotStartedError",
        "ProviderUnavailableError",
        "RemoteError",
        "RequestContext",
        "RollbackCompleted",
        "RollbackFailed",
        "RollbackStarted",
        "RouteBuilder",
        "SignalError",
        "SignalReceived",
        "Step",
        "StepCompleted",
        "StepContext",
        "StepFailed",
        "StepGroup",
        "StepHandler",
        "StepInfo",
        "StepSkipped",
        "StepStarted",
        "StepStatus",
        "Workflow",
        "WorkflowCancelledError",
        "WorkflowCompensatedError",
        "WorkflowCompletionError",
        "WorkflowContext",
        "WorkflowDefinition",
        "WorkflowError",
        "WorkflowExecutor",
        "WorkflowLifecycle",
        "WorkflowNotRegisteredError",
        "WorkflowProvider",
        "WorkflowRegistration",
        "WorkflowRollbackError",
        "WorkflowStepError",
        "WorkflowTimeoutError",
        "WorkflowValidationError",
    ]


def test_plait_testing_exports() -> None:
    assert sorted(plait.testing.__all__) == [
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


def test_plait_providers_inprocess_exports() -> None:
    assert plait.providers.inprocess.__all__ == ["InProcessWorkflowProvider"]


@pytest.mark.parametrize("module", [plait.core, plait.testing, plait.providers.inprocess])
def test_exported_names_exist_and_are_documented(module: object) -> None:
    assert getattr(module, "__doc__", None)
    for name in getattr(module, "__all__", []):
        assert getattr(getattr(module, name), "__doc__", None), name


def test_the_plugin_provides_its_fixtures() -> None:
    assert plait.testing.plugin.__all__ == ["app_client", "inprocess_provider", "virtual_clock", "virtual_provider"]


@pytest.mark.parametrize("namespace", ["plait", "plait.providers"])
def test_namespaces_are_pep_420(namespace: str) -> None:
    spec = importlib.util.find_spec(namespace)
    assert spec is not None
    assert spec.origin is None  # no __init__.py: several distributions share the namespace
    for location in spec.submodule_search_locations or []:
        assert not (Path(location) / "__init__.py").exists()


def test_leaf_packages_are_typed() -> None:
    for name in ("plait.testing", "plait.providers.inprocess", "plait.core"):
        module = importlib.import_module(name)
        assert module.__file__ is not None
        assert (Path(module.__file__).parent / "py.typed").exists(), name
