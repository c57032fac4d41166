"""``plait worker``: its loader (module:attr, factories, nested attributes), the providers it refuses in one
line, ``--version`` and its help. Waiting for Redis at start is tested in ``test_arq_outages``."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from plait.providers.arq import ArqWorkflowProvider
from plait.providers.arq._cli import find_provider, load_target, main
from tests.integration.apps import cli_targets

ROOT = Path(__file__).resolve().parents[2]

MODULE = "tests.integration.apps.cli_targets"


async def test_an_object_with_start_and_stop_is_run_as_it_is() -> None:
    assert await load_target(f"{MODULE}:runnable") is cli_targets.runnable
    assert await load_target(f"{MODULE}:Namespace.nested") is cli_targets.Namespace.nested


@pytest.mark.parametrize("name", ["factory", "async_factory"])
async def test_a_factory_is_called(name: str) -> None:
    target = await load_target(f"{MODULE}:{name}")
    assert isinstance(target, cli_targets.Runnable)
    await target.start()
    assert target.running


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no-colon", "expected 'module:attr'"),
        ("tests.integration.apps.missing:app", "cannot import"),
        (f"{MODULE}:missing", "has no attribute"),
        (f"{MODULE}:not_runnable", "not an application or provider"),
        (f"{MODULE}:wrong_factory", "not an application or provider"),
    ],
)
async def test_a_bad_target_is_refused_with_a_message(spec: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        await load_target(spec)


def test_the_command_requires_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([])
    assert "worker" in capsys.readouterr().err


# -- what the worker runs, and what it refuses --


def test_the_provider_is_found_in_an_application_a_provider_or_a_wrapper() -> None:
    app = cli_targets.arq_app()
    assert isinstance(find_provider(app), ArqWorkflowProvider)
    wrapper = cli_targets.Wrapper()
    assert find_provider(wrapper) is wrapper.provider
    assert find_provider(wrapper.provider) is wrapper.provider
    assert find_provider(cli_targets.inprocess_app()) is None  # it would choose the in-process one at start
    assert find_provider(cli_targets.runnable) is None


def run_worker(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "plait.providers.arq", "worker", f"{MODULE}:{target}", "--app-dir", str(ROOT)]
    return subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("inprocess_app", "runs the in-process provider, whose flows run only in the process that starts them"),
        ("explicit_inprocess_app", "runs InProcessWorkflowProvider, which is not distributed"),
        ("runnable", "has no workflow provider"),
    ],
)
def test_plait_worker_refuses_a_provider_that_is_not_distributed_in_one_line(target: str, message: str) -> None:
    done = run_worker(target)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"plait worker: {MODULE}:{target} ")
    assert message in lines[0]


def test_plait_version(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--version"], ["worker", "--version"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"plait (plait-core {version('plait-core')}, plait-providers-arq ")
        assert "Python 3." in out


def test_plait_worker_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["worker", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "plait worker myservice.app:app" in out
    assert "--connect-timeout SECONDS" in out
    assert "one WARNING line per try" in out


def test_asking_for_uvloop_where_it_is_not_installed_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(SystemExit) as exit_:
        main(["worker", f"{MODULE}:provider", "--loop", "uvloop"])
    assert exit_.value.code == 2
    assert "--loop uvloop: uvloop is not installed (pip install uvloop)" in capsys.readouterr().err
