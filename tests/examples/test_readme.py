"""The README's code runs as written: the quickstart serves orders, and its test snippets pass as a user copies
them, into a project of their own where pytest runs with no configuration at all.

A project is the quickstart saved as ``orders.py`` (the module the snippets import), each test snippet of
"Testing your workflows" as a test module, and the custom-provider snippets of "Providers" with a ``my_provider``
module standing in for the reader's provider. It runs twice: in this process through ``pytester`` (fast), and in
a fresh virtual environment with only ``plait-testing`` (and what it depends on) installed from this workspace.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from plait.core import (
    Application,
    FlowStatus,
    WorkflowCancelledError,
    WorkflowCompensatedError,
    WorkflowRollbackError,
    WorkflowStepError,
)
from plait.providers.inprocess import InProcessWorkflowProvider
from plait.testing import VirtualClock

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

# The custom-provider snippets run against a stand-in for the reader's provider.
MY_PROVIDER = "from plait.providers.inprocess import InProcessWorkflowProvider as MyProvider\n"
# A few contract tests that depend on the knobs (stop_grace above all), rather than the whole suite again.
AUTO = re.compile(r"asyncio: mode=(Mode\.)?auto", re.I)
PROVIDER_TESTS = "stop_never_leaves_result_hanging or stop_lets_a_running_step_finish or idempotent or reverse_def"


def sections() -> dict[str, list[str]]:
    """The README's Python blocks, by the ``##`` section they are in."""
    found: dict[str, list[str]] = {}
    for part in re.split(r"^## ", README.read_text(), flags=re.M)[1:]:
        title, _, body = part.partition("\n")
        found[title.strip()] = re.findall(r"```python\n(.*?)```", body, re.S)
    return found


def quickstart_source() -> str:
    """The quickstart's blocks as one module, ``orders.py``, that pytest can import without serving HTTP."""
    blocks = sections()["Quickstart"]
    source = "\n\n".join(blocks[:2])
    # As copied, a module-level listen() would serve forever while pytest imports the module; one already guarded
    # by ``if __name__ == "__main__":`` (indented) is left as it is.
    return re.sub(r"^(app\.listen\(.*)$", 'if __name__ == "__main__":\n    \\1', source, flags=re.M)


def project_files() -> dict[str, str]:
    """The files of a reader's project made of the README's snippets, by name."""
    readme = sections()
    tests = [block for block in readme["Testing your workflows"] if re.search(r"^(async )?def test_", block, re.M)]
    providers = [block for block in readme["Providers"] if "plait.testing" in block]
    assert len(tests) >= 4 and len(providers) == 2
    files = {"orders.py": quickstart_source(), "my_provider.py": MY_PROVIDER}
    files.update({f"test_readme_{n}.py": block for n, block in enumerate(tests, 1)})
    files.update({f"test_provider_{n}.py": block for n, block in enumerate(providers, 1)})
    return files


@pytest.fixture
def orders() -> Iterator[types.ModuleType]:
    """The quickstart as the module ``orders``, which the README's test snippets import."""
    module = types.ModuleType("orders")
    module.__file__ = str(README)
    exec(compile(quickstart_source(), str(README), "exec"), module.__dict__)
    saved = sys.modules.get("orders")
    sys.modules["orders"] = module
    try:
        yield module
    finally:
        if saved is None:
            del sys.modules["orders"]
        else:
            sys.modules["orders"] = saved


@pytest.mark.parametrize("guarded", [False, True])
def test_the_quickstart_imports_without_serving_whether_or_not_listen_is_guarded(
    guarded: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = README.read_text()
    if guarded:  # as the quickstart may show it: served only when run as a script
        text = re.sub(r"^app\.listen\((.*)$", 'if __name__ == "__main__":\n    app.listen(\\1', text, flags=re.M)
    readme = tmp_path / "README.md"
    readme.write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "README", readme)
    source = quickstart_source()
    assert not re.search(r"^app\.listen", source, re.M)
    assert source.count('if __name__ == "__main__":') == 1
    namespace: dict[str, Any] = {"__name__": "orders"}
    exec(compile(source, "orders.py", "exec"), namespace)  # would block in uvicorn if listen() ran
    assert isinstance(namespace["app"], Application)


async def test_readme_quickstart_serves_orders_through_the_app(orders: types.ModuleType) -> None:
    app: Application = orders.app
    await app.start()
    try:
        transport = httpx.ASGITransport(app=app.asgi())
        async with httpx.AsyncClient(transport=transport, base_url="http://readme") as client:
            response = await client.post(
                "/orders", json={"order_id": "o-1", "amount": 12.5}, headers={"x-correlation-id": "corr-1"}
            )
            assert response.status_code == 202, response.text
            assert response.headers["x-correlation-id"] == "corr-1"
            flow_id = response.json()["flow_id"]
            handle = await app.context.workflows.get_handle(flow_id)
            result = await handle.result(timeout=5)
            assert result.model_dump() == {"charge_id": "ch-o-1", "tracking": "track-o-1"}
            status = await client.get(f"/orders/{flow_id}")
            assert status.json() == {"status": FlowStatus.COMPLETED.value}

            bad = await client.post("/orders", json={"order_id": "o-2"})
            assert bad.status_code == 422
            assert "amount" in bad.text
            assert (await client.get("/orders/flow-unknown")).status_code == 404
    finally:
        await app.stop()


async def test_the_compensation_table_in_the_readme_is_what_the_snippet_prints(
    orders: types.ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    block = next(b for b in sections()["Testing your workflows"] if "def test_every_failure_point" in b)
    namespace: dict[str, Any] = {"__name__": "readme_compensation"}
    exec(compile(block, str(README), "exec"), namespace)
    capsys.readouterr()
    await namespace["test_every_failure_point_is_compensated"]()
    printed = capsys.readouterr().out
    shown = re.search(r"print\(report\)\n```\n\n```text\n(.*?)```", README.read_text(), re.S)
    assert shown is not None, "the README shows the report under the snippet"
    assert printed == shown.group(1)


async def test_the_48_hour_timeout_in_the_readme_takes_milliseconds() -> None:
    block = next(b for b in sections()["Testing your workflows"] if "VirtualClock" in b)
    namespace: dict[str, Any] = {"__name__": "readme_time_travel"}
    exec(compile(block, str(README), "exec"), namespace)
    clock = VirtualClock()
    provider = InProcessWorkflowProvider(stop_grace=1.0, clock=clock)
    await provider.start()
    try:
        started = time.perf_counter()
        await namespace["test_an_unanswered_approval_times_out_after_48_hours"](provider, clock)
        elapsed = time.perf_counter() - started
    finally:
        await provider.stop()
    assert elapsed < 0.5, f"{elapsed:.3f} s"


def test_the_readme_snippets_pass_as_copied_with_pytest_unconfigured(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(**{name.removesuffix(".py"): source for name, source in project_files().items()})
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-k", f"readme or ({PROVIDER_TESTS})")
    outcomes = result.parseoutcomes()
    assert result.ret == 0, result.stdout.str()
    assert outcomes.get("passed", 0) >= 12 and not set(outcomes) & {"failed", "skipped", "errors", "error"}
    assert AUTO.search(result.stdout.str())  # the plugin chose it: nothing configured one
    assert "PytestDeprecationWarning" not in result.stdout.str()


def test_an_explicit_asyncio_mode_is_left_as_the_project_chose(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        test_strict="""
        import pytest

        @pytest.mark.asyncio
        async def test_marked() -> None:
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert re.search(r"asyncio: mode=(Mode\.)?strict", result.stdout.str(), re.I)


def uv() -> str:
    found = shutil.which("uv")
    if found is None:
        pytest.skip("uv is not installed (scripts/test.sh installs it)")
    return found


def test_the_readme_snippets_pass_in_a_fresh_project_with_only_plait_testing(tmp_path: Path) -> None:
    started = time.monotonic()
    # What `pip install plait-testing` gives, from this workspace: its packages built as wheels, and the
    # third-party packages at the versions the workspace pins (uv's cache has them: no network needed).
    wheels = tmp_path / "wheels"
    build = [uv(), "build", "--quiet", "--wheel", "--out-dir", str(wheels)]
    packages = [str(ROOT / "packages" / name) for name in ("core", "providers-inprocess", "testing")]
    builds = [subprocess.Popen([*build, "--offline", package], stderr=subprocess.DEVNULL) for package in packages]
    for package, offline in zip(packages, builds, strict=True):
        if offline.wait(timeout=300) != 0:
            run([*build, package], cwd=tmp_path)  # the build backend is not in uv's cache: fetch it
    lock = tmp_path / "lock" / "pylock.toml"
    lock.parent.mkdir()
    export = ["export", "--frozen", "--format", "pylock.toml", "--package", "plait-testing", "--no-dev", "--quiet"]
    run([uv(), *export, "-o", str(lock)], cwd=ROOT)
    head, *packages = lock.read_text().split("[[packages]]")
    lock.write_text(head + "".join(f"[[packages]]{p}" for p in packages if not re.search(r'^name = "plait-', p, re.M)))
    venv = tmp_path / "venv"
    run([uv(), "venv", "--quiet", "--python", sys.executable, str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    install = [uv(), "pip", "install", "--quiet", "--python", str(python)]
    if run([*install, "--offline", "-r", str(lock)], cwd=tmp_path, check=False).returncode != 0:
        run([*install, "-r", str(lock)], cwd=tmp_path)  # the cache lacks something: fetch it
    run([*install, "--offline", "--no-deps", *map(str, sorted(wheels.glob("*.whl")))], cwd=tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    for name, source in project_files().items():
        (project / name).write_text(source)
    result = run(
        [str(python), "-m", "pytest", "-p", "no:cacheprovider", "-k", f"readme or ({PROVIDER_TESTS})", "-rA"],
        cwd=project,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert AUTO.search(output)
    assert "Warning" not in output and "not natively supported" not in output
    passed = re.search(r"(\d+) passed", output)
    assert passed is not None and int(passed.group(1)) >= 12 and "skipped" not in output, output
    assert time.monotonic() - started < 120


def run(args: list[str], *, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    # A reader's shell: none of this workspace's virtual environment or pytest settings leak into it.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTEST", "PYTHONPATH", "PYTHONHOME"))
    }
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


# --- control flow and run control --------------------------------------------------------------------------------
# These sections add to the quickstart's module (their blocks without tests), and test what they add (their blocks
# with tests), as a reader who adds them to orders.py and copies the tests next to it would.

ADDING_SECTIONS = ["Approvals, branches and timers", "A step per item", "Cancel, undo and retry"]


def section_blocks(title: str) -> tuple[list[str], list[str]]:
    """A section's Python blocks: those that add to the quickstart's module, and its test snippets."""
    blocks = sections()[title]
    tests = [block for block in blocks if re.search(r"^(async )?def test_", block, re.M)]
    return [block for block in blocks if block not in tests], tests


def extended_source() -> str:
    """The quickstart's module with what the control-flow and run-control sections add to it."""
    added = [block for title in ADDING_SECTIONS for block in section_blocks(title)[0]]
    return "\n\n".join([quickstart_source(), *added])


@pytest.fixture
def extended_orders() -> Iterator[types.ModuleType]:
    """The quickstart and the sections that add to it, as the module ``orders``."""
    module = types.ModuleType("orders")
    module.__file__ = str(README)
    exec(compile(extended_source(), str(README), "exec"), module.__dict__)
    saved = sys.modules.get("orders")
    sys.modules["orders"] = module
    try:
        yield module
    finally:
        if saved is None:
            del sys.modules["orders"]
        else:
            sys.modules["orders"] = saved


def test_the_control_flow_snippets_pass_as_copied(pytester: pytest.Pytester) -> None:
    files = {"orders": extended_source()}
    for title in ADDING_SECTIONS:
        slug = re.sub(r"\W+", "_", title.lower())
        for n, block in enumerate(section_blocks(title)[1], 1):
            files[f"test_{slug}_{n}"] = block
    assert len(files) == 3  # the module, the approval tests, the for-each test
    pytester.makepyfile(**files)
    started = time.perf_counter()
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=3)
    assert time.perf_counter() - started < 5  # the 30-minute cooling-off is virtual


async def test_an_unanswered_large_order_fails_after_48_hours_with_nothing_charged(
    extended_orders: types.ModuleType,
) -> None:
    clock = VirtualClock()
    provider = InProcessWorkflowProvider(stop_grace=1.0, clock=clock)
    payments = extended_orders.PaymentService()
    provider.register(extended_orders.ReviewedOrder, extended_orders.ReviewedOrderWorkflow(payments))
    await provider.start()
    try:
        started = clock.time()
        handle = await provider.execute(extended_orders.ReviewedOrder, {"order_id": "o-11", "amount": 900})
        with pytest.raises(WorkflowStepError, match="no signal 'approval' arrived within 172800s"):
            await handle.result()
        assert round(clock.time() - started) == 48 * 3600
        small = await provider.execute(extended_orders.ReviewedOrder, {"order_id": "o-12", "amount": 20})
        assert (await small.result()).tracking == "track-o-12"  # no approval needed: straight to the charge
        assert (await provider.describe(small.id)).step("approval").status == "skipped"
    finally:
        await provider.stop()


async def test_the_support_desk_cancels_undoes_and_finishes_failed_refunds(
    extended_orders: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    refunds_down = {"o-3"}  # the payment service refuses these orders' refunds until it is "back"
    refund = extended_orders.PaymentService.refund
    ship = extended_orders.ProcessOrderWorkflow.ship

    async def flaky_refund(self: Any, charge_id: str) -> None:
        if charge_id.removeprefix("ch-") in refunds_down:
            raise ConnectionError("the payment service is down")
        await refund(self, charge_id)

    async def failing_ship(self: Any, ctx: Any) -> Any:
        if ctx.data.order_id == "o-3":
            raise RuntimeError("the carrier lost the parcel")
        return await ship(self, ctx)

    monkeypatch.setattr(extended_orders.PaymentService, "refund", flaky_refund)
    monkeypatch.setattr(extended_orders.ProcessOrderWorkflow, "ship", failing_ship)
    app: Application = extended_orders.app
    await app.start()
    try:
        workflows = app.context.workflows
        payments = app.context.resolve(extended_orders.PaymentService)
        transport = httpx.ASGITransport(app=app.asgi())
        async with httpx.AsyncClient(transport=transport, base_url="http://readme") as client:
            # A completed order is undone: its charge refunded.
            done = await workflows.execute(extended_orders.ProcessOrder, {"order_id": "o-1", "amount": 12.5})
            await done.result(timeout=5)
            undo = await client.post(f"/support/orders/{done.id}/cancel")
            assert undo.status_code == 202, undo.text
            with pytest.raises(WorkflowCompensatedError, match="cancelled by the customer"):
                await done.result(timeout=5)
            assert payments.refunded == {"ch-o-1"}

            # An order still waiting for its approval is cancelled.
            waiting = await workflows.execute(extended_orders.ReviewedOrder, {"order_id": "o-2", "amount": 900})
            async for event in workflows.subscribe(waiting.id):
                if event.type == "flow_waiting":
                    break
            stop = await client.post(f"/support/orders/{waiting.id}/cancel")
            assert stop.status_code == 202, stop.text
            with pytest.raises(WorkflowCancelledError, match="cancelled by the customer"):
                await waiting.result(timeout=5)

            # An order fails while refunds are down: it shows in the list, and the retry finishes its refund.
            failed = await workflows.execute(extended_orders.ProcessOrder, {"order_id": "o-3", "amount": 7.0})
            with pytest.raises(WorkflowRollbackError):
                await failed.result(timeout=5)
            listed = (await client.get("/support/orders/failed-refunds")).json()
            assert [entry["flow_id"] for entry in listed] == [failed.id]
            refunds_down.clear()
            retried = await client.post(f"/support/orders/{failed.id}/retry-refund")
            assert retried.status_code == 202, retried.text
            with pytest.raises(WorkflowStepError, match="the carrier lost the parcel") as error:
                await failed.result(timeout=5)
            assert not isinstance(error.value, WorkflowRollbackError)  # the refund went through this time
            assert "ch-o-3" in payments.refunded
            assert (await client.get("/support/orders/failed-refunds")).json() == []
            again = await client.post(f"/support/orders/{failed.id}/retry-refund")
            assert again.status_code == 409
    finally:
        await app.stop()
