"""Installs what the benchmark needs on first run, each peer in a place of its own under ``.bench/`` (gitignored).

* Celery: a virtual environment ``.bench/celery`` with the pinned ``celery_peer/requirements.txt`` (with ``uv``
  when it is on PATH, else ``venv`` and ``pip``). Never in the workspace: Plait's packages must not depend on it.
* BullMQ: ``npm ci`` of the pinned ``bullmq_peer/package-lock.json`` into ``.bench/node``; the scripts find it
  through ``NODE_PATH``. Node and npm come from Debian's packages when missing, as ``redis-server`` does.
* py-spy, for ``--profile`` only: a virtual environment ``.bench/tools``.

Each place records what it was installed from, and is reinstalled when that changes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import ROOT

__all__ = ["BENCH", "HERE", "celery_python", "ensure_redis_server", "node_modules", "py_spy"]

BENCH = ROOT / ".bench"
HERE = Path(__file__).resolve().parent
PY_SPY = "py-spy==0.4.3"


def _say(message: str) -> None:
    print(f"== {message}", file=sys.stderr, flush=True)


def _run(args: list[str], cwd: Path | None = None) -> None:
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def _apt_install(*packages: str) -> None:
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    _say(f"installing {' '.join(packages)} (Debian packages)")
    _run([*sudo, "apt-get", "update", "-qq"])
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", *packages], check=True, env=env, stdout=subprocess.DEVNULL
    )


def _venv(what: str, folder: Path, requirements: list[str], stamp: str) -> Path:
    """A virtual environment at ``folder`` with ``requirements`` (pip arguments) installed; returns its Python."""
    python = folder / "bin" / "python"
    marker = folder / ".installed-from"
    if python.exists() and marker.exists() and marker.read_text() == stamp:
        return python
    _say(f"installing {what} into {folder.relative_to(ROOT)}")
    uv = shutil.which("uv")
    if uv is not None:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        _run([uv, "venv", "--quiet", "--clear", "--python", version, str(folder)])
        _run([uv, "pip", "install", "--quiet", "--python", str(python), *requirements])
    else:
        _run([sys.executable, "-m", "venv", "--clear", str(folder)])
        _run([str(python), "-m", "pip", "install", "--quiet", *requirements])
    marker.write_text(stamp)
    return python


def celery_python() -> Path:
    """The Python of the Celery environment, installed or updated first if needed."""
    requirements = HERE / "celery_peer" / "requirements.txt"
    return _venv("Celery", BENCH / "celery", ["-r", str(requirements)], requirements.read_text())


def py_spy() -> Path:
    """The py-spy executable, installed first if needed."""
    return _venv(PY_SPY, BENCH / "tools", [PY_SPY], PY_SPY).parent / "py-spy"


def node_modules() -> Path:
    """The ``node_modules`` folder holding BullMQ and ioredis, installed first if needed (Node and npm too)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        _apt_install("nodejs", "npm")
    source = HERE / "bullmq_peer"
    folder = BENCH / "node"
    marker = folder / ".installed-from"
    lock = (source / "package-lock.json").read_text()
    if not (marker.exists() and marker.read_text() == lock):
        _say(f"installing BullMQ into {folder.relative_to(ROOT)}")
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(source / name, folder / name)
        # No install scripts: the only one (msgpackr-extract) would build what its prebuilt package already ships.
        _run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder)
        marker.write_text(lock)
    return folder / "node_modules"


def ensure_redis_server() -> None:
    """Installs ``redis-server`` from Debian's packages when it is missing."""
    if shutil.which("redis-server") is None and not Path("/usr/bin/redis-server").exists():
        _apt_install("redis-server")
