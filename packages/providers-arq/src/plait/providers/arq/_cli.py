"""The ``plait`` command: ``plait worker module:attr`` runs an application's consumers without an HTTP server.

``attr`` names a Plait application, or a provider with its consumers registered (or an object holding one as its
``provider`` attribute); or a callable (sync or async) that returns one. Its workflow provider must be
distributed (its class says ``distributed = True``, as :class:`ArqWorkflowProvider` does): the in-process
provider runs a flow only in the process that starts it, so a worker would have nothing to do.

The worker starts it, waiting for Redis if it cannot be reached (one WARNING per try, backoff up to 30 s, until
``--connect-timeout``), waits for SIGTERM or SIGINT, then stops it, which lets running steps finish within the
provider's grace period and hands the rest back to their queues. A second signal stops at once. Whatever the
worker refuses, or gives up on, is one line on stderr and a non-zero exit status; only an unexpected exception
from the application's own code (its factory, say) shows a traceback.

It runs on uvloop's event loop when uvloop is installed (a dependency of this package, but on Windows): a worker's
own work is mostly the event loop's (waking tasks, reading and writing its Redis connections), and uvloop's costs
a sixth fewer instructions per flow. ``--loop asyncio`` runs on the standard library's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import platform
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from typing import Protocol, runtime_checkable

from plait.core import Application, PlaitError, ProviderUnavailableError, WorkflowProvider
from plait.core.loops import loop_factory, run
from plait.providers.arq.provider import ArqWorkflowProvider

__all__ = ["find_provider", "load_target", "main"]

_log = logging.getLogger("plait.worker")

_MAX_DELAY = 30.0  # seconds between two tries to start, at most

_EXAMPLES = """\
examples:
  plait worker myservice.app:app
  plait worker myservice.app:create_app --app-dir src --log-level DEBUG
  plait worker myservice.app:create_app --connect-timeout 60

TARGET is module:attr: a Plait application (Plait.create()...), an ArqWorkflowProvider with its consumers
registered, or a function (sync or async) returning one. Its provider must be distributed (ArqWorkflowProvider):
the in-process provider runs a flow only in the process that started it.

If Redis cannot be reached at start, the worker waits for it: it tries again after 1 s, 2 s, 4 s ... (at most
30 s apart), one WARNING line per try, until --connect-timeout seconds have passed (default: forever). Once
running, it rides through Redis outages. SIGTERM or SIGINT lets running steps finish (the provider's
stop_grace), hands the rest back to the queues and exits 0; a second signal stops at once.
"""


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


def find_provider(target: object) -> WorkflowProvider | None:
    """The workflow provider ``target`` runs: itself, an application's, or its ``provider`` attribute.

    Returns ``None`` for an application that set none, which therefore runs the in-process provider.
    """
    if isinstance(target, Application):
        try:
            return target.context.provider
        except PlaitError:
            return None  # no provider set: the application will choose the in-process one
    if isinstance(target, WorkflowProvider):
        return target
    inner = getattr(target, "provider", None)
    return inner if isinstance(inner, WorkflowProvider) else None


def _check_distributed(spec: str, target: object) -> WorkflowProvider:
    provider = find_provider(target)
    if provider is None:
        if isinstance(target, Application):
            raise SystemExit(
                f"plait worker: {spec} runs the in-process provider, whose flows run only in the process that "
                "starts them; give it a distributed one: .workflow_provider(ArqWorkflowProvider(redis_url))"
            )
        raise SystemExit(
            f"plait worker: {spec} has no workflow provider (expected a Plait application, a provider, or an object "
            "whose 'provider' attribute is one)"
        )
    if getattr(provider, "distributed", False) is not True:
        raise SystemExit(
            f"plait worker: {spec} runs {type(provider).__name__}, which is not distributed: its flows run only in "
            "the process that starts them; use ArqWorkflowProvider"
        )
    return provider


async def _start(target: Startable, spec: str, stopping: asyncio.Event, connect_timeout: float | None) -> bool:
    """Starts ``target``, waiting with backoff while its provider cannot be reached; ``False`` if told to stop.

    Raises:
        SystemExit: it cannot start (a PlaitError), or could not reach its store within ``connect_timeout``.
    """
    loop = asyncio.get_running_loop()
    give_up_at = None if connect_timeout is None else loop.time() + connect_timeout
    delay, tries = 1.0, 1
    while True:
        try:
            await target.start()
            return True
        except ProviderUnavailableError as error:
            if give_up_at is not None and loop.time() + delay > give_up_at:
                raise SystemExit(
                    f"plait worker: cannot start {spec}: {error} (gave up after {tries} tries, --connect-timeout)"
                ) from None
            _log.warning("Cannot start %s: %s; try %d failed, next in %gs", spec, error, tries, delay)
        except PlaitError as error:
            raise SystemExit(f"plait worker: cannot start {spec}: {error}") from None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
        if stopping.is_set():
            return False
        delay, tries = min(delay * 2, _MAX_DELAY), tries + 1


async def _run(spec: str, connect_timeout: float | None) -> None:
    target = await load_target(spec)
    provider = _check_distributed(spec, target)
    if isinstance(provider, ArqWorkflowProvider):
        # One try per start: this command does the waiting, with backoff and one line per try.
        provider.settings = replace(provider.settings, conn_retries=0)
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
    if not await _start(target, spec, stopping, connect_timeout):
        _log.info("Plait worker %s stopped before it could start", spec)
        return
    _log.info(
        "Plait worker %s running (pid %d) on %s's event loop", spec, os.getpid(), type(loop).__module__.split(".")[0]
    )
    try:
        await stopping.wait()
    finally:
        await target.stop()
        _log.info("Plait worker %s stopped", spec)


def _version() -> str:
    found = []
    for distribution in ("plait-core", "plait-providers-arq"):
        try:
            found.append(f"{distribution} {version(distribution)}")
        except PackageNotFoundError:  # pragma: no cover - run from a source tree without installing
            found.append(f"{distribution} (not installed)")
    return f"plait ({', '.join(found)}; Python {platform.python_version()})"


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``plait`` console script."""
    parser = argparse.ArgumentParser(
        prog="plait",
        description="Plait workflow tools.",
        epilog="Run 'plait worker --help' for the worker's options and examples.",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser(
        "worker",
        help="run the workflow consumers of an application (no HTTP server)",
        description="Runs the workflow consumers of an application, without an HTTP server, until SIGTERM or SIGINT.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument("target", metavar="TARGET", help="module:attr of an application or provider, or a factory")
    worker.add_argument("--app-dir", default=".", help="directory added to the import path (default: .)")
    worker.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    worker.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="give up (exit 1) if Redis cannot be reached within SECONDS at start (default: wait for it)",
    )
    worker.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="the event loop: uvloop's, or asyncio's (default: auto, uvloop's when it is installed)",
    )
    worker.add_argument("--version", action="version", version=_version())
    args = parser.parse_args(argv)
    try:
        loop_factory(args.loop)
    except ValueError as error:
        worker.error(f"--loop {args.loop}: {error}")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, os.path.abspath(args.app_dir))
    try:
        run(_run(args.target, args.connect_timeout), args.loop)
    except asyncio.CancelledError:
        return 1
    return 0
