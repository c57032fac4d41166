"""Where Plait's time goes: py-spy on its workers and driver during the measured rounds, and a summary.

``python -m bench.peers --peers plait --workloads w1 --profile DIR`` samples each Plait process with py-spy
(non-blocking, so the processes are not paused) while the rounds run, into ``DIR/<workload>-<role>.txt``
(py-spy's "raw" collapsed stacks), and prints a summary. ``python -m bench.peers.profile FILE...`` summarises
files again; with ``--under Store.commit`` it shows only what runs below that frame. Samples are of busy
threads only: py-spy leaves out a thread that waits (in ``epoll_wait``, say).
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

__all__ = ["Profiler", "Summary", "summarize"]

RATE = 250  # samples per second and process

# Where a sample's innermost Python frame is, by file (shortened, see _short): the first match names the area.
AREAS = (
    ("json (stdlib)", r"^json/"),
    ("pydantic", r"^pydantic"),
    ("redis-py", r"^redis/"),
    ("arq (job format, pool)", r"^arq/"),
    ("Plait engine", r"^plait/core/engine\.py"),
    ("Plait core: runner, contexts, validation", r"^plait/core/"),
    ("Plait arq provider: worker", r"^plait/providers/arq/_worker\.py"),
    ("Plait arq provider: store", r"^plait/providers/arq/_store\.py"),
    ("Plait arq provider: other", r"^plait/providers/arq/"),
    ("asyncio", r"^asyncio/"),
    ("sockets, selectors", r"^(selectors|socket|ssl)\.py"),
    ("logging", r"^logging/"),
    ("dataclasses, typing, enum, uuid", r"^(dataclasses|typing|enum|uuid|copy|abc)\.py"),
    ("the benchmark's handlers", r"^bench/"),
)
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]*)(?::\d+)?\)$")
# Frames of the event loop and of the program's start, on nearly every stack: left out of the inclusive list.
_LOOP = re.compile(
    r"\((asyncio/|<frozen )[^)]*\)$"
    r"|^(<module>|main|drive|_run) \((plait/providers/arq/(_cli|__main__)\.py|bench/peers/plait_peer\.py)\)$"
)
# Prefixes to drop from a file name, the first that matches: site-packages, a workspace member's src/, the
# stdlib, the repository.
_PREFIXES = [
    re.compile(p)
    for p in (r"^.*/site-packages/", r"^.*/packages/[^/]+/src/", r"^.*/lib/python3\.\d+/", r"^.*/(?=bench/)")
]


class Profiler:
    """py-spy processes recording other processes until :meth:`stop`."""

    def __init__(self, py_spy: Path, folder: Path) -> None:
        self.py_spy = py_spy
        self.folder = folder
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, label: str, pids: dict[str, int]) -> None:
        """Starts recording each process of ``pids`` (role -> pid) into ``<folder>/<label>-<role>.txt``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for role, pid in pids.items():
            output = self.folder / f"{label}-{role}.txt"
            command = [str(self.py_spy), "record", "--pid", str(pid), "--rate", str(RATE), "--nonblocking"]
            command += ["--full-filenames", "--format", "raw", "--output", str(output)]
            self.running.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        """Stops every recording; py-spy writes its file on SIGINT."""
        for process in self.running:
            process.send_signal(signal.SIGINT)
        for process in self.running:
            process.wait(timeout=60)
        self.running = []


class Summary:
    """Samples of some processes, by innermost frame (self), by frame anywhere on the stack (inclusive), by area.

    ``samples`` counts every busy sample read; the shares are of it.
    """

    def __init__(self) -> None:
        self.samples = 0
        self.self_time: Counter[str] = Counter()
        self.inclusive: Counter[str] = Counter()
        self.areas: Counter[str] = Counter()

    def add(self, stack: list[str], count: int) -> None:
        """Counts ``count`` samples of ``stack`` (outermost frame first) by frame and area."""
        names = [_name(frame) for frame in stack]
        if not names:
            return
        self.self_time[names[-1]] += count
        for name in set(names):
            self.inclusive[name] += count
        self.areas[_area(stack[-1])] += count

    def lines(self, top: int = 20) -> list[str]:
        total = max(self.samples, 1)
        out = [f"{self.samples} busy samples ({RATE}/s per process)", "  by area of the innermost frame:"]
        out += [f"    {count / total:6.1%}  {name}" for name, count in self.areas.most_common()]
        out.append("  innermost frames (self):")
        out += [f"    {count / total:6.1%}  {name}" for name, count in self.self_time.most_common(top)]
        out.append("  frames anywhere on the stack (inclusive; not the event loop's own):")
        inclusive = [(name, count) for name, count in self.inclusive.most_common() if not _LOOP.search(name)]
        out += [f"    {count / total:6.1%}  {name}" for name, count in inclusive[:top]]
        return out


def _short(file: str) -> str:
    for prefix in _PREFIXES:
        short, found = prefix.subn("", file, count=1)
        if found:
            return short
    return file


def _name(frame: str) -> str:
    match = _FRAME.match(frame)
    return f"{match['function']} ({_short(match['file'])})" if match else frame


def _area(frame: str) -> str:
    match = _FRAME.match(frame)
    file = _short(match["file"]) if match else frame
    for area, pattern in AREAS:
        if re.search(pattern, file):
            return area
    return f"other: {file}"


def summarize(paths: Iterable[Path], under: str | None = None) -> Summary:
    """Adds up py-spy raw files (``frame;frame;...;frame count`` per line, outermost frame first).

    Args:
        under: keep only the part of each stack below the outermost frame whose name contains this (say,
            ``Store.commit``), and only the stacks that have one; shares stay relative to every busy sample.
    """
    summary = Summary()
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not (stack and count.isdigit()):
                continue
            frames = stack.split(";")
            summary.samples += int(count)
            if under is not None:
                found = next((i for i, frame in enumerate(frames) if under in _name(frame)), None)
                if found is None:
                    continue
                frames = frames[found:]
            summary.add(frames, int(count))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.profile", description="Summarises py-spy raw files.")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--under", help="only what runs below a frame whose name contains this, e.g. Store.commit")
    args = parser.parse_args()
    print("\n".join(summarize(args.files, args.under).lines(args.top)))


if __name__ == "__main__":
    main()
