"""Pieces the Redis benchmarks share: a private ``redis-server``, worker processes, waiting, percentiles, CPU.

A benchmark starts its own ``redis-server`` (no persistence) on a free loopback port with :func:`redis_server`,
its workers as real processes with :func:`spawn` (``plait worker`` through :func:`plait_worker_command`), and
stops every process it started with :func:`stop`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from redis.asyncio import Redis

__all__ = [
    "ROOT",
    "cpu_seconds",
    "free_port",
    "internal_errors",
    "percentile",
    "plait_worker_command",
    "redis_calls",
    "redis_cpu_seconds",
    "redis_server",
    "redis_url",
    "spawn",
    "stop",
    "wait_for_clients",
    "wait_for_plait_workers",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[1]
_TICK = os.sysconf("SC_CLK_TCK")


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


def redis_url(port: int, db: int = 0) -> str:
    """The URL of database ``db`` of the loopback ``redis-server`` on ``port``."""
    return f"redis://127.0.0.1:{port}/{db}"


def plait_worker_command(target: str) -> list[str]:
    """``plait worker <target>``, run from the repository's root."""
    command = [sys.executable, "-m", "plait.providers.arq", "worker", target]
    return [*command, "--app-dir", str(ROOT), "--log-level", "WARNING"]


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


def internal_errors(log: IO[bytes]) -> tuple[int, str]:
    """How many jobs the workers logging to ``log`` handed back after an internal error, and the last line of the
    first such error's traceback."""
    log.seek(0)
    lines = log.read().decode(errors="replace").splitlines()
    count, first = 0, ""
    for i, line in enumerate(lines):
        if "Internal error" in line:
            count += 1
            if not first:
                rest = [x for x in lines[i + 1 :] if x and not x.startswith((" ", "Traceback"))]
                first = rest[0] if rest else ""
    return count, first


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


async def wait_for_plait_workers(redis: Redis, cancel_channel: str, count: int) -> None:
    """Waits until ``count`` Plait workers of one queue prefix run: each subscribes to its cancel channel."""

    async def up() -> bool:
        subscribed: list[tuple[bytes, int]] = await redis.pubsub_numsub(cancel_channel)
        return subscribed[0][1] >= count

    await wait_until(up, f"{count} Plait workers on {cancel_channel}")


def percentile(values: list[float], q: float) -> float:
    """The value below which a fraction ``q`` of ``values`` falls (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU seconds the processes ``pids`` have used so far, from Linux ``/proc`` (a process that
    is gone counts 0.0): a steadier measure than wall time on a shared machine."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as file:
                fields = file.read().rpartition(")")[2].split()
        except OSError:
            continue
        # After the command name: state is field 3, utime field 14, stime field 15 (1-based, as in proc(5)).
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


async def redis_cpu_seconds(redis: Redis) -> float:
    """User plus system CPU seconds the redis-server has used so far (``INFO cpu``)."""
    info: dict[str, Any] = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def redis_calls(redis: Redis) -> int:
    """Commands the redis-server has run so far (``INFO commandstats``: each command a Lua script runs counts)."""
    stats: dict[str, dict[str, Any]] = await redis.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())
