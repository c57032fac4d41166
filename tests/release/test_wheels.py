"""The four wheels as a user gets them: built, installed with pip into a fresh virtual environment, and checked.

How it installs, and why: pip installs the wheels and resolves their third-party dependencies from the package
index, as it would for a user, constrained to the versions in uv.lock (``uv export``) so that the test does not
change when a dependency publishes a release. Building a wheelhouse of every dependency instead would mean
downloading them anyway; pip's own cache makes a repeated run take about 20 seconds (a first run on a new
machine, a minute or so). The environment is filled in two stages: ``plait-core`` alone first (it must import, and
an application must say which provider to install), then the three others.
"""

from __future__ import annotations

import email.message
import email.parser
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = ["plait-core", "plait-providers-arq", "plait-providers-inprocess", "plait-testing"]
LEAF_PACKAGES = {
    "plait-core": "plait/core",
    "plait-providers-arq": "plait/providers/arq",
    "plait-providers-inprocess": "plait/providers/inprocess",
    "plait-testing": "plait/testing",
}
HOME = "https://github.com/plait-dev/plait"
VERSION: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

# Building and installing takes a while the first time on a machine (downloads); the per-test default is 60 s.
pytestmark = pytest.mark.timeout(600)

CORE_ONLY_PROBE = """
import asyncio, importlib, json
import plait.core
from plait.core import Plait, PlaitError
present = []
for name in ("plait.providers.inprocess", "plait.providers.arq", "plait.testing"):
    try:
        importlib.import_module(name)
        present.append(name)
    except ImportError:
        pass
try:
    asyncio.run(Plait.create().start())
    start = "started"
except PlaitError as error:
    start = str(error)
print(json.dumps({"core": plait.core.__file__, "others": present, "start": start}))
"""

FULL_PROBE = """
import importlib, importlib.metadata as metadata, json
files = {name: importlib.import_module(name).__file__ for name in (
    "plait.core", "plait.core.engine", "plait.providers.inprocess", "plait.providers.arq", "plait.testing",
    "plait.testing.plugin")}
print(json.dumps({
    "files": files,
    "pytest11": sorted(ep.value for ep in metadata.entry_points(group="pytest11")),
    "scripts": sorted(ep.value for ep in metadata.entry_points(group="console_scripts") if ep.name == "plait"),
}))
"""


@dataclass(frozen=True, slots=True)
class Release:
    """What the module fixture built and installed."""

    wheels: dict[str, Path]  # distribution name -> wheel
    venv: Path
    core_only: dict[str, Any]
    full: dict[str, Any]
    pip_check: str
    plait_help: str


def _run(args: list[str | Path], *, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _clean_env() -> dict[str, str]:
    # The tests run inside the workspace's environment; the new one must see none of it.
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    uv = os.environ.get("UV") or shutil.which("uv")  # `uv run` sets UV to its own executable
    if uv is None:
        pytest.fail("uv is needed to build the wheels (scripts/test.sh installs it)")
    work = tmp_path_factory.mktemp("release")
    wheelhouse = work / "wheels"
    _run([uv, "build", "--all-packages", "--wheel", "--quiet", "--out-dir", wheelhouse])
    wheels = {_metadata(path)["Name"]: path for path in wheelhouse.glob("*.whl")}
    assert sorted(wheels) == DISTRIBUTIONS

    constraints = work / "constraints.txt"
    _run([uv, "export", "--frozen", "--no-dev", "--no-emit-workspace", "--no-hashes", "-o", constraints, "-q"])
    venv = work / "venv"
    env = _clean_env()
    _run([uv, "venv", "--seed", "--quiet", "--python", sys.executable, venv], env=env)
    python = venv / "bin" / "python"
    pip: list[str | Path] = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    pip += ["-c", constraints]

    _run([*pip, wheels["plait-core"]], cwd=work, env=env)
    core_only = json.loads(_run([python, "-c", CORE_ONLY_PROBE], cwd=work, env=env))
    _run([*pip, *(wheels[name] for name in DISTRIBUTIONS if name != "plait-core")], cwd=work, env=env)
    full = json.loads(_run([python, "-c", FULL_PROBE], cwd=work, env=env))
    pip_check = _run([python, "-m", "pip", "check"], cwd=work, env=env)
    plait_help = _run([venv / "bin" / "plait", "worker", "--help"], cwd=work, env=env)
    return Release(wheels, venv, core_only, full, pip_check, plait_help)


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(archive.read(name).decode())


# --- installing ----------------------------------------------------------------------------------------------


def test_plait_core_alone_imports_and_says_which_provider_to_install(release: Release) -> None:
    assert release.core_only["core"].startswith(str(release.venv))  # the wheel, not the workspace's sources
    assert release.core_only["others"] == []
    assert "pip install plait-providers-inprocess" in release.core_only["start"]


def test_all_four_install_together_from_the_wheels(release: Release) -> None:
    for module, path in release.full["files"].items():
        assert path.startswith(str(release.venv)), module
    assert "No broken requirements" in release.pip_check


def test_the_plait_command_and_the_pytest_plugin_are_registered(release: Release) -> None:
    assert release.full["scripts"] == ["plait.providers.arq._cli:main"]
    assert "plait.testing.plugin" in release.full["pytest11"]
    assert "module:attr" in release.plait_help


# --- metadata ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_metadata_is_complete(release: Release, name: str) -> None:
    meta = _metadata(release.wheels[name])
    assert meta["Version"] == VERSION
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier") or []
    assert {"Typing :: Typed", "Programming Language :: Python :: 3.11", "Intended Audience :: Developers"} <= set(
        classifiers
    )
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert not any(c.startswith("License ::") for c in classifiers)  # the license expression says it
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL") or [])
    assert sorted(urls) == ["Documentation", "Homepage", "Issues", "Source"]
    assert all(url.startswith(HOME) for url in urls.values()), urls
    assert meta["Description-Content-Type"] == "text/markdown"
    readme = meta.get_payload()
    assert isinstance(readme, str)
    assert readme.startswith(f"# {name}\n")


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_dependencies_are_bounded(release: Release, name: str) -> None:
    major, minor, _ = VERSION.split(".", 2)
    series = f"=={major}.{minor}.*"
    for line in _metadata(release.wheels[name]).get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        specifiers = {spec.operator: spec.version for spec in requirement.specifier}
        if requirement.name.startswith("plait-"):
            assert str(requirement.specifier) == series, line  # the whole family moves together
        else:
            assert ">=" in specifiers and "<" in specifiers, f"{name}: {line} needs a lower and an upper bound"


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_wheels_ship_the_typed_marker_and_the_license(release: Release, name: str) -> None:
    with zipfile.ZipFile(release.wheels[name]) as archive:
        files = set(archive.namelist())
        license_file = next(n for n in files if n.endswith(".dist-info/licenses/LICENSE"))
        assert archive.read(license_file).decode() == (ROOT / "LICENSE").read_text()
    assert f"{LEAF_PACKAGES[name]}/py.typed" in files
    # plait and plait.providers are namespaces that several distributions share: none may own an __init__.py.
    assert "plait/__init__.py" not in files
    assert "plait/providers/__init__.py" not in files


def test_each_package_folder_has_the_license_and_a_readme() -> None:
    for folder in ("core", "providers-inprocess", "providers-arq", "testing"):
        assert (ROOT / "packages" / folder / "LICENSE").read_text() == (ROOT / "LICENSE").read_text(), folder
        assert (ROOT / "packages" / folder / "README.md").exists(), folder
