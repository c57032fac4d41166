"""The ``plait`` command: ``plait worker module:attr`` runs an application's consumers without an HTTP server.

``attr`` names anything with ``async start()`` and ``async stop()``: a Plait application, or a provider with its
consumers registered; or a callable (sync or async) that returns one. The worker starts it, waits for SIGTERM or
SIGINT, then stops it, which lets running steps finish within the provider's grace period and hands the rest
back to their queues. A second signal stops at once.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = ["load_target", "main"]

_log = logging.getLogger("plait.worker")


@runtime_checkable
class Startable(Protocol):
    """What ``plait worker`` runs: an application or a provider."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def _is_startable(value: object) -> bool:
    start, stop = getattr(value, "start", None), getattr(value, "stop", None)
    return inspect.iscoroutinefunction(start) and inspect.iscoroutinefunction(stop)


async def load_target(spec: str) -> Startable:
    """Imports ``module:attr`` and returns the object to run, calling ``attr`` if it is a factory.

    Raises:
        SystemExit: the spec is malformed, the import fails, or the object has no async start()/stop().
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"plait worker: expected 'module:attr', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SystemExit(f"plait worker: cannot import {module_name!r}: {error}") from error
    value: object = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise SystemExit(f"plait worker: {module_name!r} has no attribute {attr!r}") from None
    if not _is_startable(value) and callable(value):
        value = value()
        if inspect.isawaitable(value):
            value = await value
    if not _is_startable(value) or not isinstance(value, Startable):
        raise SystemExit(f"plait worker: {spec} is not an application or provider (no async start() and stop())")
    return value


async def _run(spec: str) -> None:
    target = await load_target(spec)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    main = asyncio.current_task()

    def on_signal(signum: signal.Signals) -> None:
        if stopping.is_set():
            _log.warning("Second %s: stopping now", signum.name)
            if main is not None:
                main.cancel()
            return
        _log.info("%s received: finishing running steps, then stopping", signum.name)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await target.start()
    _log.info("Plait worker %s running (pid %d)", spec, os.getpid())
    try:
        await stopping.wait()
    finally:
        await target.stop()
        _log.info("Plait worker %s stopped", spec)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``plait`` console script."""
    parser = argparse.ArgumentParser(prog="plait", description="Plait workflow tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="run the workflow consumers of an application (no HTTP server)")
    worker.add_argument("target", help="module:attr of an application or provider, or of a factory returning one")
    worker.add_argument("--app-dir", default=".", help="directory added to the import path (default: .)")
    worker.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, os.path.abspath(args.app_dir))
    try:
        asyncio.run(_run(args.target))
    except asyncio.CancelledError:
        return 1
    return 0
