"""The conformance suite's rule groups: exported, disjoint, together the whole ProviderContract, each runnable alone."""

from __future__ import annotations

import pytest

import plait.testing
from plait.testing import (
    ControlFlowRules,
    FailureRules,
    FlowRules,
    HardeningRules,
    LifecycleRules,
    ProviderContract,
    RunControlRules,
)

pytest_plugins = ["pytester"]

GROUPS: tuple[type, ...] = (FlowRules, FailureRules, LifecycleRules, HardeningRules, ControlFlowRules, RunControlRules)


def _test_names(cls: type) -> set[str]:
    return {name for name in dir(cls) if name.startswith("test_")}


def test_the_groups_are_disjoint_and_together_are_the_whole_contract() -> None:
    seen: set[str] = set()
    for group in GROUPS:
        own = {name for name in vars(group) if name.startswith("test_")}
        assert own, group.__name__
        assert not own & seen, f"{group.__name__} repeats {own & seen}"
        seen |= own
    assert seen == _test_names(ProviderContract)
    assert all(issubclass(ProviderContract, group) for group in GROUPS)
    assert all(getattr(plait.testing, group.__name__) is group for group in GROUPS)


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.__name__)
def test_each_group_runs_under_pytest_asyncio_without_auto_mode(group: type) -> None:
    marks = getattr(group, "pytestmark", [])
    assert any(mark.name == "asyncio" for mark in marks)


def test_a_provider_runs_only_the_groups_it_supports_in_strict_mode(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        test_mine="""
        import pytest
        from plait.providers.inprocess import InProcessWorkflowProvider
        from plait.testing import FailureRules, FlowRules

        class TestMine(FlowRules, FailureRules):
            @pytest.fixture
            def provider(self) -> InProcessWorkflowProvider:
                return InProcessWorkflowProvider(stop_grace=self.stop_grace)
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-k", "returns_a_flow_id or reverse_definition")
    result.assert_outcomes(passed=2)
    collected = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "-q")
    names = [line for line in collected.stdout.lines if "::" in line]
    assert len(names) == len(_test_names(FlowRules) | _test_names(FailureRules)) < len(_test_names(ProviderContract))
