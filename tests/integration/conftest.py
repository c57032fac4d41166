"""Integration fixtures: redis-servers a test owns (to stop, restart or start with TLS) and ``plait worker``
processes.

The session's shared redis-server (``redis_url``) is never stopped: a test that needs an outage starts its own
with ``private_redis``.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
PLAIT = Path(sys.executable).parent / "plait"  # the console script of plait-providers-arq


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PrivateRedis:
    """A redis-server of one test, on its own port and directory: stop it, start it again, keep its data.

    With ``persistent``, every write is in its append-only file before Redis answers, so a restart loses nothing.
    ``port`` is a plain TCP port, also when ``extra`` adds a ``--tls-port``.
    """

    port: int
    workdir: Path
    extra: list[str] = field(default_factory=list)
    persistent: bool = False
    password: str | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, *, wait: bool = True) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        command = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--dir", str(self.workdir)]
        command += persistence
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen([*command, *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait:
            self.wait_until_up()

    def wait_until_up(self, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while True:
            assert self.process is not None
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1) as client:
                    client.ping()
                return
            except (redis.ConnectionError, redis.ResponseError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start on port {self.port}")
                time.sleep(0.05)

    def stop(self) -> None:
        """Stops the server (SIGTERM; with ``persistent``, nothing written is lost) and waits until it is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)


MakeRedis = Callable[..., PrivateRedis]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[MakeRedis]:
    """Starts redis-servers for this test only (``private_redis(persistent=True, start=False, ...)``)."""
    servers: list[PrivateRedis] = []

    def make(
        *,
        persistent: bool = False,
        start: bool = True,
        password: str | None = None,
        extra: list[str] | None = None,
        port: int | None = None,
    ) -> PrivateRedis:
        workdir = tmp_path / f"redis-{len(servers)}"
        workdir.mkdir()
        server = PrivateRedis(port or free_port(), workdir, extra or [], persistent, password)
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@dataclass
class Workers:
    """``plait worker`` processes of one test, each logging to its own file."""

    tmp_path: Path
    redis_url: str
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: dict[int, Path] = field(default_factory=dict)

    def start(
        self,
        target: str = "tests.integration.apps.orders:create_app",
        *,
        url: str | None = None,
        stall: float = 1.0,
        console_script: bool = False,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        command = [str(PLAIT)] if console_script else [sys.executable, "-m", "plait.providers.arq"]
        command += ["worker", target, "--app-dir", str(ROOT), *args]
        environment = {
            **os.environ,
            "PLAIT_TEST_REDIS_URL": url or self.redis_url,
            "PLAIT_TEST_STALL": str(stall),
            **(env or {}),
        }
        log = self.tmp_path / f"worker-{len(self.started)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT)
        self.logs[process.pid] = log
        self.started.append(process)
        return process

    def log(self, worker: subprocess.Popen[bytes]) -> str:
        return self.logs[worker.pid].read_text(errors="replace")

    async def ready(self, *workers: subprocess.Popen[bytes], within: float = 20.0) -> None:
        """Waits until each worker logged that it runs (after its application's ``start()`` returned)."""
        deadline = time.monotonic() + within
        for worker in workers:
            while f"running (pid {worker.pid})" not in self.log(worker):
                assert worker.poll() is None, f"worker {worker.pid} exited with {worker.returncode}"
                assert time.monotonic() < deadline, "workers did not start"
                await asyncio.sleep(0.05)

    async def logged(self, worker: subprocess.Popen[bytes], text: str, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while text not in self.log(worker):
            assert time.monotonic() < deadline, f"worker {worker.pid} did not log {text!r}"
            await asyncio.sleep(0.05)


@pytest.fixture
def workers(redis_url: str, tmp_path: Path) -> Iterator[Workers]:
    """Starts ``plait worker`` processes (``workers.start(...)``); kills leftovers and prints their logs."""
    started = Workers(tmp_path, redis_url)
    yield started
    for process in started.started:
        if process.poll() is None:
            process.kill()
        process.wait()
    for log in sorted(tmp_path.glob("worker-*.log")):
        sys.stdout.write(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}\n")
