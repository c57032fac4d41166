"""The peers benchmark's tables: each peer's figure, Plait's ratio to it, the targets, W3's correctness."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import percentile
from bench.peers import install
from bench.peers.costs import Cost
from bench.peers.profile import summarize

if TYPE_CHECKING:
    from bench.peers.__main__ import Results

__all__ = ["TARGETS", "print_profiles", "print_report", "versions"]

# Plait's ratio to a peer that meets the target: flows/s at least this multiple of the peer's (W1, W3), or a
# p50 at most this fraction of the peer's (W2; 0.2 of Celery's p50 is 5x as fast).
TARGETS: dict[tuple[str, str], float] = {
    ("w1", "bullmq"): 1.5,
    ("w1", "celery"): 5.0,
    ("w2", "bullmq"): 0.75,
    ("w2", "celery"): 0.2,
    ("w3", "bullmq"): 1.5,
    ("w3", "celery"): 5.0,
}
TITLES = {
    "w1": "W1  throughput: flows of validate -> charge -> [email || sms] -> finalize",
    "w2": "W2  latency: one 4-step sequential flow at a time, start to observed end",
    "w3": "W3  throughput: 5-step sagas, step 4 fails (no retry), 3 compensations in reverse, step 5 never",
}


def _command_output(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def _package_json_version(package: str) -> str:
    path = install.BENCH / "node" / "node_modules" / package / "package.json"
    return str(json.loads(path.read_text())["version"]) if path.exists() else "?"


def versions(peers: list[str]) -> str:
    """One line per runtime: what was measured, and with what."""
    redis = _command_output([shutil.which("redis-server") or "/usr/bin/redis-server", "--version"])
    redis = next((part[2:] for part in redis.split() if part.startswith("v=")), redis)
    lines = [
        f"redis-server {redis}; Python {platform.python_version()}",
        f"Plait {metadata.version('plait-providers-arq')} on arq {metadata.version('arq')}, "
        f"redis-py {metadata.version('redis')} (hiredis {metadata.version('hiredis')})",
    ]
    if "celery" in peers:
        pins = (install.HERE / "celery_peer" / "requirements.txt").read_text().splitlines()
        pinned = dict(line.split("==", 1) for line in pins if "==" in line)
        lines.append(
            f"Celery {pinned.get('celery', '?')}, kombu {pinned.get('kombu', '?')}, redis-py "
            f"{pinned.get('redis', '?')} (hiredis {pinned.get('hiredis', '?')}), solo pool"
        )
    if "bullmq" in peers:
        lines.append(
            f"BullMQ {_package_json_version('bullmq')}, ioredis {_package_json_version('ioredis')}, "
            f"Node {_command_output(['node', '--version'])}"
        )
    return "\n".join(lines)


def _mark(met: bool) -> str:
    return "met" if met else "NOT MET"


def _throughput(workload: str, args: argparse.Namespace, results: Results) -> list[str]:
    plait = results.rates.get((workload, "plait"))
    plait_rate = statistics.median(plait) if plait else None
    head = f"  {'peer':<8} {'flows/s':>9}  {'min-max of rounds':>19}  {'Plait / peer':>12}  {'target':>8}  {'':7}"
    if workload == "w3":
        head += "  correctness (every flow: c3, c2, c1 once each, in order; s5 never)"
    lines = [head]
    for peer in args.peers:
        rates = results.rates.get((workload, peer))
        error = results.errors.get((workload, peer))
        if not rates:
            lines.append(f"  {peer:<8} error: {error}")
            continue
        rate = statistics.median(rates)
        spread = f"{min(rates):,.0f}-{max(rates):,.0f}"
        line = f"  {peer:<8} {rate:>9,.0f}  {spread:>19}"
        target = TARGETS.get((workload, peer))
        if peer != "plait" and plait_rate is not None:
            ratio = plait_rate / rate
            line += f"  {ratio:>11.2f}x"
            if target is not None:
                line += f"  {'>= ' + format(target, '.1f') + 'x':>8}  {_mark(ratio >= target):7}"
        else:
            line += f"  {'':>12}  {'':>8}  {'':7}"
        if workload == "w3" and peer in results.verdicts:
            line += f"  {results.verdicts[peer].summary()}"
        if error:
            line += f"  (one round failed: {error})"
        lines.append(line)
    return lines


def _latency(args: argparse.Namespace, results: Results) -> list[str]:
    plait = results.latencies.get("plait")
    plait_p50 = statistics.median(plait) if plait else None
    lines = [f"  {'peer':<8} {'p50 ms':>9} {'p95 ms':>9}  {'Plait p50 / peer p50':>20}  {'target':>8}"]
    for peer in args.peers:
        samples = results.latencies.get(peer)
        if not samples:
            lines.append(f"  {peer:<8} error: {results.errors.get(('w2', peer))}")
            continue
        p50, p95 = statistics.median(samples), percentile(samples, 0.95)
        line = f"  {peer:<8} {p50 * 1000:>9.2f} {p95 * 1000:>9.2f}"
        target = TARGETS.get(("w2", peer))
        if peer != "plait" and plait_p50 is not None:
            ratio = plait_p50 / p50
            line += f"  {ratio:>19.2f}x"
            if target is not None:
                line += f"  {'<= ' + format(target, '.2f') + 'x':>8}  {_mark(ratio <= target)}"
        lines.append(line)
    return lines


def _median(costs: list[Cost], name: str) -> float:
    return statistics.median(float(getattr(cost, name)) for cost in costs)


def _costs(workload: str, args: argparse.Namespace, results: Results) -> list[str]:
    columns = ("workers_ms", "driver_ms", "redis_ms", "total_ms", "commands", "scripts")
    lines = [
        f"  {'per flow, median of rounds':<28}{'CPU ms: workers':>16}{'driver':>8}{'Redis':>8}{'total':>8}"
        f"{'Redis commands':>16}{'scripts':>9}"
    ]
    for peer in args.peers:
        costs = results.costs.get((workload, peer))
        if costs:
            w, d, r, t, c, sc = (_median(costs, name) for name in columns)
            lines.append(f"  {peer:<28}{w:>16.3f}{d:>8.3f}{r:>8.3f}{t:>8.3f}{c:>16.1f}{sc:>9.1f}")
    return lines


def print_report(args: argparse.Namespace, results: Results, runtimes: str, seconds: float) -> None:
    print()
    print(
        f"Plait against its peers, {date.today().isoformat()}: one redis-server (a database per peer), "
        f"2 worker processes and 1 driver per peer, {args.rounds} alternating rounds, medians; "
        f"{os.cpu_count()} CPUs; {seconds:.0f} s in all"
    )
    print(runtimes)
    for workload in args.workloads:
        print()
        if workload == "w2":
            print(f"{TITLES[workload]} ({args.samples} samples x {args.rounds} rounds)")
            print("\n".join(line.rstrip() for line in _latency(args, results) + _costs(workload, args, results)))
        else:
            print(f"{TITLES[workload]} ({args.flows} flows per round, 200 started at a time)")
            lines = _throughput(workload, args, results) + _costs(workload, args, results)
            print("\n".join(line.rstrip() for line in lines))
    if "w3" in args.workloads:
        print()
        for peer in args.peers:
            verdict = results.verdicts.get(peer)
            ends = results.saga_ends.get(peer, 0)
            if verdict is not None:
                state = "correct" if verdict.ok else "WRONG"
                seen = f"{ends} failed ends seen by its driver in the rounds"
                print(f"W3 correctness, {peer}: {state}: {verdict.summary()}; {seen}")


def print_profiles(folder: Path, workloads: list[str]) -> None:
    for workload in workloads:
        for role, pattern in (("workers", f"{workload}-worker*.txt"), ("driver", f"{workload}-driver.txt")):
            files = sorted(folder.glob(pattern))
            if files:
                print()
                print(f"Profile of Plait's {role} in {workload.upper()} ({', '.join(f.name for f in files)}):")
                print("\n".join(summarize(files).lines()))
