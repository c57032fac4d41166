"""Pins the public names of every package (changing them is a breaking change), checks that each one is documented,
and that the modules a worker or a custom provider imports stay free of the web stack."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import plait.core
import plait.core.engine
import plait.core.runner
import plait.providers.arq
import plait.providers.inprocess
import plait.testing
import plait.testing.plugin

# Every module whose public names users (or provider authors) import; the API reference documents each of them.
PUBLIC_MODULES = [
    plait.core,
    plait.core.engine,
    plait.core.runner,
    plait.providers.inprocess,
    plait.providers.arq,
    plait.testing,
    plait.testing.plugin,
]


def test_plait_core_exports() -> None:
    # The names users build on; removing one breaks them.
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


def test_plait_core_all_has_no_duplicates() -> None:
    # __all__ is built group by group; a name added to two groups would be listed twice.
    assert len(plait.core.__all__) == len(set(plait.core.__all__))


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


def test_plait_providers_arq_exports() -> None:
    assert sorted(plait.providers.arq.__all__) == ["ArqSettings", "ArqWorkflowProvider"]


def test_the_plugin_provides_its_fixtures() -> None:
    assert plait.testing.plugin.__all__ == ["app_client", "inprocess_provider", "virtual_clock", "virtual_provider"]


def _missing_docstrings(module: ModuleType) -> list[str]:
    """Public names of ``module`` without a docstring of their own, methods and properties of classes included.

    Data (constants, type aliases) is exempt: a class documents its fields in its ``Attributes:`` section. So are
    the ``test_*`` methods of the conformance suite: each name states its rule, and the API reference leaves them out.
    """
    missing: list[str] = []
    for name in module.__all__:
        value = getattr(module, name)
        if not (inspect.isclass(value) or inspect.isroutine(value)):
            continue
        path = f"{module.__name__}.{name}"
        if not _has_docstring(value):
            missing.append(path)
        if inspect.isclass(value):
            for member, attribute in _own_and_inherited(value).items():
                if member.startswith(("_", "test_")):
                    continue
                target = attribute.__func__ if isinstance(attribute, (classmethod, staticmethod)) else attribute
                documentable = isinstance(target, property) or inspect.isroutine(target)
                if documentable and not (target.__doc__ or "").strip():
                    missing.append(f"{path}.{member}")
    return missing


def _own_and_inherited(cls: type) -> dict[str, object]:
    """The members ``cls`` defines or inherits from Plait's own classes (not from the standard library's)."""
    members: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__.startswith("plait."):
            members.update(vars(klass))
    return members


def _has_docstring(value: object) -> bool:
    doc = (getattr(value, "__doc__", None) or "").strip()
    # A dataclass without a docstring gets its signature as one: that documents nothing.
    if inspect.isclass(value) and dataclasses.is_dataclass(value) and doc.startswith(f"{value.__name__}("):
        return False
    return bool(doc)


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_every_public_name_is_documented(module: ModuleType) -> None:
    assert (module.__doc__ or "").strip(), f"{module.__name__} has no module docstring"
    assert _missing_docstrings(module) == []


@pytest.mark.parametrize("namespace", ["plait", "plait.providers"])
def test_namespaces_are_pep_420(namespace: str) -> None:
    spec = importlib.util.find_spec(namespace)
    assert spec is not None
    assert spec.origin is None  # no __init__.py: several distributions share the namespace
    for location in spec.submodule_search_locations or []:
        assert not (Path(location) / "__init__.py").exists()


def test_leaf_packages_are_typed() -> None:
    for name in ("plait.testing", "plait.providers.inprocess", "plait.providers.arq", "plait.core"):
        module = importlib.import_module(name)
        assert module.__file__ is not None
        assert (Path(module.__file__).parent / "py.typed").exists(), name


WEB_STACK = ("starlette", "uvicorn", "dependency_injector")


def _modules_after(code: str) -> dict[str, object]:
    """Runs ``code`` in a fresh interpreter; returns which top-level packages it loaded and what it printed."""
    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    *printed, loaded = out.splitlines()
    return {"loaded": set(json.loads(loaded)), "printed": printed}


@pytest.mark.parametrize(
    "module", ["plait.core", "plait.core.engine", "plait.core.runner", "plait.providers.inprocess"]
)
def test_engine_and_providers_do_not_import_the_web_stack(module: str) -> None:
    # What a worker or a custom provider imports must not cost a web framework (nor need one installed).
    loaded = _modules_after(f"import {module}")["loaded"]
    assert isinstance(loaded, set)
    assert loaded.isdisjoint(WEB_STACK), sorted(loaded & set(WEB_STACK))


def test_app_builder_names_are_imported_on_first_use() -> None:
    found = _modules_after(
        "import plait.core\n"
        "print('Plait' in dir(plait.core), 'RouteBuilder' in dir(plait.core))\n"
        "from plait.core import Plait, RequestContext\n"
        "print(Plait.__module__, RequestContext.__module__)\n"
        "print(plait.core.Plait is Plait)"
    )
    assert found["printed"] == ["True True", "plait.core.app plait.core.routing", "True"]
    loaded = found["loaded"]
    assert isinstance(loaded, set)
    assert {"starlette", "dependency_injector"} <= loaded


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = plait.core.Nope  # type: ignore[attr-defined]
