"""What the Redis benchmarks share: a redis-server of their own, worker processes, waiting, percentiles.

A benchmark starts its own ``redis-server`` (no persistence) on a free loopback port with :func:`redis_server`,
its workers as real processes with :func:`spawn` (``plait worker`` through :func:`plait_worker_command`), and
stops every process it started with :func:`stop_all`.
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
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def redis_server() -> Iterator[str]:
    """Runs a ``redis-server`` without persistence on a free loopback port; yields its URL, stops it at the end."""
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
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait()


def plait_worker_command(target: str) -> list[str]:
    """``plait worker <target>``, run from the repository's root."""
    command = [sys.executable, "-m", "plait.providers.arq", "worker", target]
    return [*command, "--app-dir", str(ROOT), "--log-level", "WARNING"]


def spawn(args: list[str], env: dict[str, str], stderr: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    """Starts a process in the repository's root with ``env`` added; its stderr goes to ``stderr`` (default: ours)."""
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=stderr)


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


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each process still running, then waits for each (killing one that takes over 30 s)."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_for_workers(redis: Redis, count: int) -> None:
    """Waits until ``count`` processes besides this one's pool are connected."""

    async def up() -> bool:
        clients: list[dict[str, Any]] = await redis.client_list()
        return len(clients) > count  # each worker holds at least one connection; the pool is one more

    await wait_until(up, "the workers")


async def wait_for_plait_workers(redis: Redis, cancel_channel: str, count: int) -> None:
    """Waits until ``count`` Plait workers of one queue prefix run: each subscribes to its cancel channel."""

    async def up() -> bool:
        subscribed: list[tuple[bytes, int]] = await redis.pubsub_numsub(cancel_channel)
        return subscribed[0][1] >= count

    await wait_until(up, f"{count} Plait workers on {cancel_channel}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(processes: list[subprocess.Popen[bytes]]) -> float:
    """User plus system CPU seconds the processes have used so far (Linux ``/proc``), a steadier measure than
    wall time on a shared machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for process in processes:
        with open(f"/proc/{process.pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime and stime, the 14th and 15th fields
    return total / ticks


async def redis_cpu_seconds(redis: Redis) -> float:
    """User plus system CPU seconds the redis-server has used so far."""
    info: dict[str, Any] = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def redis_calls(redis: Redis) -> int:
    """Commands the redis-server has run so far (``INFO commandstats``: each command a Lua script runs counts)."""
    stats: dict[str, dict[str, Any]] = await redis.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())
