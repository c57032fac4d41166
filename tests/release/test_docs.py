"""The documentation site stays true: its code runs as written, and its API reference lists every public name.

``mkdocs build --strict`` (run by scripts/test.sh) catches broken links and references; these tests catch what it
cannot: the scripts of getting started, the control-flow page and the steering and tracing guides run and print
what their page says, the provider sketch of the provider guide runs flows, and no public name is left out of the
API reference.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import BaseModel

from plait.core import (
    Backoff,
    ConsumerOptions,
    FlowConflictError,
    FlowNotFoundError,
    FlowStatus,
    IWorkflowConsumer,
    StepContext,
    StepHandler,
    Workflow,
    WorkflowContext,
    WorkflowProvider,
    WorkflowStepError,
    WorkflowTimeoutError,
    WorkflowValidationError,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"


def titled_blocks(page: str) -> dict[str, str]:
    """The code blocks of a docs page that have a ``title="file name"``, by file name."""
    text = (DOCS / page).read_text()
    return dict(re.findall(r'```\w+ title="([^"]+)"\n(.*?)```', text, re.S))


def printed(page: str, script: str) -> str:
    """What a page says ``python <script>`` prints: the console block that runs it."""
    shown = re.search(rf"\$ python {re.escape(script)}\n(.*?)```", (DOCS / page).read_text(), re.S)
    assert shown is not None, f"{page} shows no output of {script}"
    return shown.group(1)


def run_script(page: str, script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Saves a page's ``script`` block into ``cwd`` as a reader would, and runs it with this Python."""
    (cwd / script).write_text(titled_blocks(page)[script])
    return subprocess.run([sys.executable, script], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


# --- getting started ---------------------------------------------------------------------------------------------


def test_getting_started_runs_as_written(tmp_path: Path) -> None:
    blocks = titled_blocks("getting-started.md")
    assert sorted(blocks) == ["pytest.ini", "run.py", "shop.py", "test_shop.py"]
    for name, code in blocks.items():
        (tmp_path / name).write_text(code)

    ran = run_script("getting-started.md", "run.py", tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == printed("getting-started.md", "run.py")

    tested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "3 passed" in tested.stdout


# --- testing your workflows ---------------------------------------------------------------------------------------


def test_the_testing_guide_saga_tests_pass_next_to_getting_started_and_print_the_report(tmp_path: Path) -> None:
    started = titled_blocks("getting-started.md")
    for name in ("shop.py", "pytest.ini"):
        (tmp_path / name).write_text(started[name])
    assert sorted(titled_blocks("guides/testing.md")) == ["test_saga.py"]
    (tmp_path / "test_saga.py").write_text(titled_blocks("guides/testing.md")["test_saga.py"])
    tested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "test_saga.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "2 passed" in tested.stdout
    shown = re.search(
        r"shows what the first test prints:\n\n```text\n(.*?)```", (DOCS / "guides/testing.md").read_text(), re.S
    )
    assert shown is not None
    assert shown.group(1) in tested.stdout


# --- control flow ------------------------------------------------------------------------------------------------

CONTROL_FLOW_SCRIPTS = ["onboard.py", "approval.py", "trial.py", "book_trip.py", "shipping.py"]


def test_every_control_flow_script_is_run() -> None:
    assert sorted(titled_blocks("control-flow.md")) == sorted(CONTROL_FLOW_SCRIPTS)


@pytest.mark.parametrize("script", CONTROL_FLOW_SCRIPTS)
def test_the_control_flow_scripts_print_what_the_page_shows(script: str, tmp_path: Path) -> None:
    ran = run_script("control-flow.md", script, tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == printed("control-flow.md", script)


# --- steering and watching flows ------------------------------------------------------------------------------


def test_the_steering_script_prints_what_the_guide_shows(tmp_path: Path) -> None:
    assert sorted(titled_blocks("guides/steering.md")) == ["operate.py"]
    ran = run_script("guides/steering.md", "operate.py", tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == printed("guides/steering.md", "operate.py")


# --- logs and tracing --------------------------------------------------------------------------------------------


def test_the_tracing_script_prints_the_span_tree_the_guide_shows(tmp_path: Path) -> None:
    assert sorted(titled_blocks("guides/observability.md")) == ["traced.py"]
    ran = run_script("guides/observability.md", "traced.py", tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == printed("guides/observability.md", "traced.py")


# --- the provider sketch -----------------------------------------------------------------------------------------


class Order(BaseModel):
    order_id: str
    fail: str = ""
    slow: float = 0.0


class Done(BaseModel):
    step: str


class Receipt(BaseModel):
    steps: list[str]


TWO_STEPS = Workflow.define(name="docs-two-steps", data=Order, result=Receipt).steps(
    lambda s: s.sequential(s.step("first", Done)).sequential(s.step("second", Done))
)


class TwoSteps(IWorkflowConsumer[Order, Receipt]):
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.steps = {
            "first": StepHandler(execute=self.first, rollback=self.undo_first),
            "second": StepHandler(execute=self.second),
        }

    async def first(self, ctx: StepContext[Order]) -> Done:
        self.calls.append(f"first#{ctx.attempt}")
        return Done(step="first")

    async def undo_first(self, ctx: StepContext[Order]) -> None:
        self.calls.append("undo first")

    async def second(self, ctx: StepContext[Order]) -> Done:
        self.calls.append(f"second#{ctx.attempt}")
        await asyncio.sleep(ctx.data.slow)
        if ctx.data.fail:
            raise RuntimeError(ctx.data.fail)
        return Done(step="second")

    async def on_complete(self, ctx: WorkflowContext[Order]) -> Receipt:
        return Receipt(steps=list(ctx.results))


def load_sketch(tmp_path: Path) -> ModuleType:
    source = titled_blocks("guides/writing-a-provider.md")["dict_provider.py"]
    path = tmp_path / "dict_provider.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("dict_provider", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_provider_sketch_runs_flows(tmp_path: Path) -> None:
    provider: Any = load_sketch(tmp_path).DictProvider()
    assert isinstance(provider, WorkflowProvider)
    consumer = TwoSteps()
    provider.register(TWO_STEPS, consumer, ConsumerOptions(attempts=2, backoff=Backoff.fixed(0.01)))
    await provider.start()
    try:
        done = await provider.execute(TWO_STEPS, {"order_id": "o-1"}, id="flow-docs-1")
        assert (await done.result(timeout=5)).steps == ["first", "second"]
        assert (await provider.execute(TWO_STEPS, {"order_id": "o-1"}, id="flow-docs-1")).id == "flow-docs-1"
        with pytest.raises(FlowConflictError):
            await provider.execute(TWO_STEPS, {"order_id": "other"}, id="flow-docs-1")

        consumer.calls.clear()
        failed = await provider.execute(TWO_STEPS, Order(order_id="o-2", fail="boom"))
        with pytest.raises(WorkflowStepError, match="boom"):
            await failed.result(timeout=5)
        assert consumer.calls == ["first#1", "second#1", "second#2", "undo first"]
        assert (await provider.describe(failed.id)).compensated == ("first",)

        slow = await provider.execute(TWO_STEPS, Order(order_id="o-3", slow=10), timeout=0.05)
        with pytest.raises(WorkflowTimeoutError):
            await slow.result(timeout=5)
        assert await provider.get_status(slow.id) == FlowStatus.FAILED

        with pytest.raises(WorkflowValidationError):
            await provider.execute(TWO_STEPS, {"order": "o-4"})
        with pytest.raises(FlowNotFoundError):
            await provider.get_status("flow-unknown")
    finally:
        await provider.stop()


def test_the_provider_sketch_passes_the_conformance_suite_but_for_what_the_guide_says_it_leaves_out(
    tmp_path: Path,
) -> None:
    for name, source in titled_blocks("guides/writing-a-provider.md").items():
        (tmp_path / name).write_text(source)
    tested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    failed = sorted(re.findall(r"^FAILED \S+::(test_\w+)", tested.stdout, re.M))
    # Concurrency slots and a graceful stop() are what the guide says the sketch leaves out.
    assert failed == [
        "test_cancel_a_pending_flow_runs_nothing_but_on_error",
        "test_concurrency_keeps_extra_flows_pending",
        "test_stop_lets_a_running_step_finish",
        "test_stop_never_leaves_result_hanging",
    ], tested.stdout[-3000:]
    passed = re.search(r"(\d+) passed", tested.stdout)
    assert passed is not None and int(passed.group(1)) > 100, tested.stdout[-3000:]


# --- the API reference -------------------------------------------------------------------------------------------

PUBLIC_MODULES = [
    "plait.core",
    "plait.core.api",
    "plait.core.engine",
    "plait.core.runner",
    "plait.providers.inprocess",
    "plait.providers.arq",
    "plait.testing",
    "plait.testing.plugin",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_the_api_reference_renders_every_public_name(name: str) -> None:
    # mkdocstrings renders what a page names: a `::: module` line renders the whole module, `::: module.name` one
    # object. A name added to an __all__ must be added to a page too. (Imported here, one module per test, so that
    # a package that fails to import fails its own case only.)
    module = importlib.import_module(name)
    rendered = set()
    for page in (DOCS / "api").glob("*.md"):
        rendered |= set(re.findall(r"^::: ([\w.]+)$", page.read_text(), re.M))
    missing = [
        f"{name}.{member}" for member in module.__all__ if name not in rendered and f"{name}.{member}" not in rendered
    ]
    assert missing == []
