"""Pieces the Redis benchmarks share: a private ``redis-server``, worker processes, waiting, percentiles."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from redis.asyncio import Redis

__all__ = ["ROOT", "free_port", "percentile", "redis_server", "spawn", "stop", "wait_for_clients", "wait_until"]

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def redis_server() -> Iterator[int]:
    """Runs a ``redis-server`` without persistence on a free loopback port; yields the port."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        server.wait()


def spawn(
    args: list[str],
    env: Mapping[str, str],
    *,
    cwd: Path = ROOT,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    stderr: int | IO[Any] | None = None,
) -> subprocess.Popen[bytes]:
    """Starts ``args`` in ``cwd`` with this process's environment plus ``env``."""
    return subprocess.Popen(args, cwd=cwd, env={**os.environ, **env}, stdout=stdout, stderr=stderr)


def stop(processes: Iterable[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    """SIGTERM to every process still running, then waits for each (killing one that outlives ``timeout``)."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, within: float = 30.0) -> None:
    """Polls ``check`` every 50 ms until it is true; raises ``RuntimeError`` naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_for_clients(redis: Redis, count: int, what: str = "the workers") -> None:
    """Waits until more than ``count`` clients are connected: each worker holds at least one connection, and
    ``redis`` itself is one more."""

    async def up() -> bool:
        clients: list[dict[str, Any]] = await redis.client_list()
        return len(clients) > count

    await wait_until(up, what)


def percentile(values: list[float], q: float) -> float:
    """The value below which a fraction ``q`` of ``values`` falls (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
