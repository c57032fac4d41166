"""``python -m bench.peers``: runs the peers benchmark (see :mod:`bench.peers`) and prints its tables."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from redis.asyncio import Redis

from bench.common import ROOT, plait_worker_command, redis_server, redis_url, spawn, stop
from bench.peers import effects, install, report
from bench.peers.costs import Cost, snapshot
from bench.peers.profile import Profiler

PEERS = ("plait", "bullmq", "celery")
WORKLOADS = ("w1", "w2", "w3")
DATABASES = {"plait": 0, "celery": 1, "bullmq": 2}  # one server, one database per peer
ASK_TIMEOUT = 900.0  # seconds the benchmark waits for a driver's answer (drivers give up on a round after 300)


@dataclass
class Spec:
    """How to start one peer's workers and driver."""

    name: str
    cwd: Path
    env: dict[str, str]
    workers: list[list[str]]
    driver: list[str]


def specs(names: list[str], port: int) -> list[Spec]:
    """The commands of each peer in ``names``, installing the peer first when needed."""
    found = []
    for name in names:
        env = {"BENCH_REDIS_URL": redis_url(port, DATABASES[name])}
        if name == "plait":
            worker = plait_worker_command("bench.peers.plait_peer:create_app")
            found.append(Spec(name, ROOT, env, [worker, worker], [sys.executable, "-m", "bench.peers.plait_peer"]))
        elif name == "celery":
            python = str(install.celery_python())
            worker = [python, "-m", "celery", "--quiet", "--app", "tasks", "worker", "--pool", "solo"]
            worker += ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"]
            workers = [[*worker, "--hostname", f"bench{i}@%h"] for i in (1, 2)]
            found.append(Spec(name, install.HERE / "celery_peer", env, workers, [python, "driver.py"]))
        else:
            env["NODE_PATH"] = str(install.node_modules())
            worker = ["node", "worker.cjs"]
            found.append(Spec(name, install.HERE / "bullmq_peer", env, [worker, worker], ["node", "driver.cjs"]))
    return found


class Peer:
    """One peer's running processes: two workers, and a driver that answers requests."""

    def __init__(self, spec: Spec, logs: Path) -> None:
        self.spec = spec
        self.name = spec.name
        self.logs = logs
        self.workers: list[subprocess.Popen[bytes]] = []
        self.driver: asyncio.subprocess.Process | None = None
        self.broken: str | None = None
        self._files: list[IO[bytes]] = []

    def _log(self, role: str) -> IO[bytes]:
        file = (self.logs / f"{self.name}-{role}.log").open("wb")
        self._files.append(file)
        return file

    async def start(self, effects_dir: Path) -> None:
        env = {**self.spec.env, "BENCH_EFFECTS_DIR": str(effects_dir)}
        for index, command in enumerate(self.spec.workers, start=1):
            worker = spawn(command, env, cwd=self.spec.cwd, stderr=self._log(f"worker{index}"))
            self.workers.append(worker)
        self.driver = await asyncio.create_subprocess_exec(
            *self.spec.driver,
            cwd=self.spec.cwd,
            env={**os.environ, **env},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log("driver"),
        )

    async def ask(self, op: str, n: int, tag: str) -> dict[str, Any]:
        """Sends one request to the driver; an error (or a broken driver) comes back as ``{"error": ...}``."""
        if self.broken is not None:
            return {"error": self.broken}
        assert self.driver is not None and self.driver.stdin is not None and self.driver.stdout is not None
        try:
            self.driver.stdin.write(json.dumps({"op": op, "n": n, "tag": tag}).encode() + b"\n")
            await self.driver.stdin.drain()
            line = await asyncio.wait_for(self.driver.stdout.readline(), ASK_TIMEOUT)
        except (TimeoutError, OSError) as error:
            line, reason = b"", f"{type(error).__name__} {error}".strip()
        else:
            reason = "the driver exited"
        if not line:
            self.broken = f"{reason}; see {self.logs.relative_to(ROOT)}/{self.name}-*.log"
            return {"error": self.broken}
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def close(self) -> None:
        """Stops the driver, then the workers (which write their effects as they exit)."""
        if self.driver is not None:
            if self.driver.returncode is None and self.driver.stdin is not None:
                self.driver.stdin.write(b'{"op": "quit"}\n')
                self.driver.stdin.close()
            try:
                await asyncio.wait_for(self.driver.wait(), 30)
            except TimeoutError:
                self.driver.kill()
                await self.driver.wait()
        await asyncio.to_thread(stop, self.workers)
        for file in self._files:
            file.close()


@dataclass
class Results:
    """Everything measured, by workload and peer."""

    rates: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[tuple[str, str], str] = field(default_factory=dict)
    costs: dict[tuple[str, str], list[Cost]] = field(default_factory=dict)
    saga_keys: dict[str, list[str]] = field(default_factory=dict)
    saga_ends: dict[str, int] = field(default_factory=dict)
    verdicts: dict[str, effects.Verdict] = field(default_factory=dict)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def measure(redis: Redis, peer: Peer, workload: str, n: int, tag: str, results: Results) -> str:
    """One round of ``workload`` on ``peer``; records it and returns a short description."""
    assert peer.driver is not None
    pids = [worker.pid for worker in peer.workers]
    before = await snapshot(redis, pids, peer.driver.pid)
    reply = await peer.ask(workload, n, tag)
    cost = Cost.between(before, await snapshot(redis, pids, peer.driver.pid), n)
    if workload == "w3":
        results.saga_keys.setdefault(peer.name, []).extend(f"{tag}-{i}" for i in range(n))
    if "error" in reply:
        results.errors.setdefault((workload, peer.name), str(reply["error"]))
        return f"{peer.name} error"
    results.costs.setdefault((workload, peer.name), []).append(cost)
    if workload == "w2":
        results.latencies.setdefault(peer.name, []).extend(reply["latencies"])
        return f"{peer.name} p50 {sorted(reply['latencies'])[len(reply['latencies']) // 2] * 1000:.2f} ms"
    if workload == "w3":
        results.saga_ends[peer.name] = results.saga_ends.get(peer.name, 0) + int(reply["ends"])
    rate = n / float(reply["seconds"])
    results.rates.setdefault((workload, peer.name), []).append(rate)
    return f"{peer.name} {rate:,.0f} flows/s"


async def run(args: argparse.Namespace, port: int, logs: Path, effects_dir: Path) -> Results:
    peers = [Peer(spec, logs) for spec in specs(args.peers, port)]
    profiler = Profiler(install.py_spy(), args.profile) if args.profile else None
    results = Results()
    redis = Redis(port=port)
    try:
        for peer in peers:
            await peer.start(effects_dir)
        for workload in args.workloads:
            n = args.samples if workload == "w2" else args.flows
            warm = min(n, 20 if workload == "w2" else 200)
            for peer in peers:  # also waits for each peer's workers to be up: the flows wait in Redis until then
                await measure(redis, peer, workload, warm, f"{workload}-warm", Results())
                if workload == "w3":
                    results.saga_keys.setdefault(peer.name, []).extend(f"{workload}-warm-{i}" for i in range(warm))
            plait = next((p for p in peers if p.name == "plait"), None)
            if profiler is not None and plait is not None and plait.driver is not None:
                profiler.start(
                    workload,
                    {"driver": plait.driver.pid} | {f"worker{i}": w.pid for i, w in enumerate(plait.workers, 1)},
                )
            for round_ in range(args.rounds):
                shift = round_ % len(peers)
                seen = [
                    await measure(redis, p, workload, n, f"{workload}-r{round_}", results)
                    for p in peers[shift:] + peers[:shift]
                ]
                progress(f"{workload} round {round_ + 1}/{args.rounds}: " + ", ".join(seen))
            if profiler is not None:
                profiler.stop()
    finally:
        for peer in peers:
            await peer.close()
        if profiler is not None:
            profiler.stop()
        await redis.aclose()
    for peer in peers:
        if peer.name in results.saga_keys:
            results.verdicts[peer.name] = effects.verify(
                results.saga_keys[peer.name], effects.load(effects_dir, peer.name)
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description="Plait on the arq provider against Celery and BullMQ, side by side on one Redis.",
    )
    parser.add_argument("--flows", type=int, default=1000, help="flows per round of W1 and W3 (default 1000)")
    parser.add_argument("--samples", type=int, default=100, help="W2 latency samples per round (default 100)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per workload (default 5)")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated, of: plait,bullmq,celery")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated, of: w1,w2,w3")
    parser.add_argument(
        "--profile", type=Path, default=None, help="folder for py-spy profiles of Plait's workers and driver"
    )
    args = parser.parse_args()
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for value, known in ((args.peers, PEERS), (args.workloads, WORKLOADS)):
        if not value or set(value) - set(known):
            parser.error(f"choose among {','.join(known)}")
    install.ensure_redis_server()
    logs = install.BENCH / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with redis_server() as port, tempfile.TemporaryDirectory(prefix="bench-peers-") as folder:
        results = asyncio.run(run(args, port, logs, Path(folder)))
    report.print_report(args, results, report.versions(args.peers), time.time() - started)
    if args.profile:
        report.print_profiles(args.profile, args.workloads)


if __name__ == "__main__":
    main()
