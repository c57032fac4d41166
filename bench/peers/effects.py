"""W3's verification: every saga's side effects, gathered from the workers' logs, checked one flow at a time.

Each worker process of every peer keeps, in memory, one entry per side effect of the saga's handlers: the flow's
key, the effect (``s1``..``s5``: a step starting; ``c1``..``c3``: a compensation) and the time in nanoseconds of
``CLOCK_MONOTONIC``, one clock for every process of the machine. When it stops, it writes them to
``<dir>/<peer>-<pid>.json`` as a JSON list of ``[key, effect, ns]``. Nothing is sent to Redis, so recording costs
each peer the same few microseconds and adds no round trip to the measurement.

A flow is exact when s1, s2, s3 and s4 started once each, in that order; s5 never started; and c3, c2, c1 ran
once each, in that order, after s4. A compensation is only scheduled after the one before it has finished (and
committed, in Redis), so timestamps from different processes are ordered by causality, not by luck.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["EXPECTED", "Verdict", "load", "verify"]

EXPECTED = ("s1", "s2", "s3", "s4", "c3", "c2", "c1")

Entry = tuple[str, str, int]


@dataclass
class Verdict:
    """How many of the flows a peer started were exact, and what was wrong with the others."""

    flows: int = 0
    exact: int = 0
    strays: int = 0  # flows with effects that no driver started
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.flows > 0 and self.exact == self.flows and not self.strays

    def summary(self) -> str:
        return f"{self.exact}/{self.flows} exact" + ("" if self.ok else f" ({'; '.join(self.problems[:3])})")


def load(folder: Path, peer: str) -> list[Entry]:
    """Every entry the workers of ``peer`` wrote to ``folder``."""
    entries: list[Entry] = []
    for path in sorted(folder.glob(f"{peer}-*.json")):
        entries += [(str(key), str(effect), int(ns)) for key, effect, ns in json.loads(path.read_text())]
    return entries


def verify(keys: Iterable[str], entries: Iterable[Entry]) -> Verdict:
    """Checks each flow of ``keys`` against ``EXPECTED``; entries of flows not in ``keys`` are problems too."""
    by_flow: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for key, effect, ns in entries:
        by_flow[key].append((ns, effect))
    verdict = Verdict()
    wanted = set(keys)
    for key in sorted(wanted):
        verdict.flows += 1
        seen = tuple(effect for _, effect in sorted(by_flow.get(key, [])))
        if seen == EXPECTED:
            verdict.exact += 1
        else:
            verdict.problems.append(f"{key}: {' '.join(seen) or 'nothing'}")
    strays = sorted(set(by_flow) - wanted)
    if strays:
        verdict.strays = len(strays)
        verdict.problems.append(f"effects of {len(strays)} flows never started, e.g. {strays[0]}")
    return verdict
