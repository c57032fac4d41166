"""The in-process benchmark of this tree against an earlier commit's, run alternately on the same machine.

The per-flow cost ratio to the hand-written baseline moves with the machine (2.2x on a quiet day, 3x on a busy
one), so "within 10% of what it was before X" is checked against the code from before X, measured in the same
runs: each pair runs ``python -m bench.inprocess --rounds 3`` in a checkout of that commit, then in this tree.

Run: ``uv run python -m bench.against REV [--pairs N] [--instructions]``. It checks REV out in ``.tmp/against/REV``
(a git worktree, kept for the next run), prints each pair's cost ratios, their medians and now / before, and exits
0. ``--instructions`` also counts, with valgrind (which must be installed), the instructions per flow of Plait and
of the baseline in each tree: the difference between runs of 3,000 and 1,000 flows, so that start-up cancels out.
Instruction counts do not move from run to run, where timings on a shared machine do.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import ROOT

_RATIO = re.compile(r"per-flow cost ratio plait/baseline:\s+([\d.]+)x")
_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")
_COUNT = "import asyncio, sys; from bench.inprocess import {0}; asyncio.run({0}(int(sys.argv[1]), 100))"


def checkout(rev: str) -> Path:
    """A worktree of ``rev`` under ``.tmp/against`` (made once, then reused)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if commit.returncode != 0:
        sys.exit(f"bench.against: {rev!r} is not a commit of this repository")
    tree = ROOT / ".tmp" / "against" / commit.stdout.strip()[:12]
    if not (tree / "bench" / "inprocess.py").exists():
        tree.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=True)
        subprocess.run(
            ["git", "worktree", "add", "--force", "--detach", str(tree), commit.stdout.strip()],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    return tree


def environment(tree: Path) -> dict[str, str]:
    """This process's environment, with ``tree``'s packages and benchmarks first on the import path."""
    sources = sorted(str(src) for src in (tree / "packages").glob("*/src"))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*sources, str(tree)])}


def cost_ratio(tree: Path) -> float:
    """One run of ``bench.inprocess --rounds 3`` in ``tree``: its per-flow cost ratio (CPU)."""
    run = subprocess.run(
        [sys.executable, "-m", "bench.inprocess", "--rounds", "3"],
        cwd=tree,
        env=environment(tree),
        capture_output=True,
        text=True,
        check=True,
    )
    found = _RATIO.search(run.stdout)
    if found is None:
        raise RuntimeError(f"bench.inprocess in {tree} printed no cost ratio:\n{run.stdout}{run.stderr}")
    return float(found.group(1))


def instructions(tree: Path, which: str) -> int:
    """Instructions per flow of ``run_plait`` or ``run_baseline`` in ``tree`` (valgrind)."""

    def count(flows: int) -> int:
        run = subprocess.run(
            [
                "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                sys.executable, "-c", _COUNT.format(which), str(flows),
            ],
            cwd=tree, env=environment(tree), capture_output=True, text=True, check=True,
        )  # fmt: skip
        found = _REFS.search(run.stderr)
        if found is None:
            raise RuntimeError(f"valgrind printed no instruction count:\n{run.stderr[-2000:]}")
        return int(found.group(1).replace(",", ""))

    return (count(3000) - count(1000)) // 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("rev", help="the commit to measure against (say, the last one before a feature)")
    parser.add_argument("--pairs", type=int, default=6, help="alternating pairs of runs (default 6)")
    parser.add_argument("--instructions", action="store_true", help="also count instructions per flow (valgrind)")
    args = parser.parse_args()
    if args.instructions and shutil.which("valgrind") is None:
        sys.exit("bench.against: --instructions needs valgrind (apt-get install valgrind)")
    before_tree = checkout(args.rev)
    print(f"in-process per-flow cost ratio to the baseline: {args.rev} (before) and this tree (now), alternating")
    print("pair   before      now   now / before")
    pairs: list[tuple[float, float]] = []
    for number in range(1, args.pairs + 1):
        pair = cost_ratio(before_tree), cost_ratio(ROOT)
        pairs.append(pair)
        print(f"{number:4}   {pair[0]:5.2f}x   {pair[1]:5.2f}x   {pair[1] / pair[0]:5.2f}", flush=True)
    before, now = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    by_pair = statistics.median(p[1] / p[0] for p in pairs)
    print(f"median {before:5.2f}x   {now:5.2f}x   {now / before:5.2f}   (pair by pair: {by_pair:.2f})")
    if args.instructions:
        baseline = instructions(ROOT, "run_baseline")
        old, new = instructions(before_tree, "run_plait"), instructions(ROOT, "run_plait")
        print(f"instructions per flow (valgrind): baseline {baseline:,}")
        print(f"  before {old:,} ({old / baseline:.2f}x the baseline), now {new:,} ({new / baseline:.2f}x)", end="")
        print(f": now / before {new / old:.3f}")


if __name__ == "__main__":
    main()
