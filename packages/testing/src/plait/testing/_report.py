"""What ``assert_compensates`` found: one row per run, the rules each run broke, and a readable table of them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CompensationError", "CompensationReport", "CompensationRun", "Finding"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule one run broke.

    Attributes:
        point: where the run failed: a step, ``step[index]`` for a for-each item, ``on_complete``, or ``none``
            for the run without failures (which ``compensate()`` then undoes).
        mode: how it failed: ``raise``, ``timeout``, ``invalid`` or ``no_effect`` (``-`` without failures).
        rule: the rule broken, e.g. ``missing rollback``, ``once``, ``order``, ``effects``.
        message: what happened, in words.
    """

    point: str
    mode: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{_where(self.point, self.mode)}: [{self.rule}] {self.message}"


@dataclass(frozen=True, slots=True)
class CompensationRun:
    """One run of the workflow, failing at one point in one way.

    Attributes:
        point: where it failed (see :attr:`Finding.point`).
        mode: how (see :attr:`Finding.mode`).
        flow_id: the flow's id.
        status: how the flow ended (``completed``, ``failed``, ...), or ``stuck``.
        rolled_back: the steps (``step[index]`` for items, ``node/step`` inside a sub-workflow) whose rollbacks
            completed, in the order they ran.
        findings: the rules this run broke.
    """

    point: str
    mode: str
    flow_id: str
    status: str
    rolled_back: tuple[str, ...]
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        """Whether the run broke no rule."""
        return not self.findings


@dataclass(frozen=True, slots=True)
class CompensationReport:
    """Every run of an ``assert_compensates`` check; ``str(report)`` is a table of them.

    Attributes:
        workflow: the workflow's name.
        runs: the run without failures first, then one per failure point and mode, in definition order.
        notes: what was not tried, and why (a step its condition skipped, a for-each without items).
    """

    workflow: str
    runs: tuple[CompensationRun, ...]
    notes: tuple[str, ...] = ()

    @property
    def findings(self) -> tuple[Finding, ...]:
        """Every rule broken, run by run."""
        return tuple(f for run in self.runs for f in run.findings)

    @property
    def ok(self) -> bool:
        """Whether no run broke a rule."""
        return not self.findings

    def table(self) -> str:
        """The runs as a table: failure point, mode, how the flow ended, what was rolled back, the outcome."""
        header = ("failure point", "mode", "flow", "rolled back", "outcome")
        rows = [
            (
                run.point,
                run.mode,
                run.status,
                ", ".join(run.rolled_back) or "-",
                "ok" if run.ok else f"{len(run.findings)} finding{'s' if len(run.findings) > 1 else ''}",
            )
            for run in self.runs
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
        head = "  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)).rstrip()
        return "\n".join([head, *lines])

    def summary(self) -> str:
        """One line: the workflow, how many runs, how many findings."""
        count = len(self.findings)
        found = "no findings" if not count else f"{count} finding{'s' if count > 1 else ''}"
        return f"assert_compensates({self.workflow}): {len(self.runs)} runs, {found}"

    def __str__(self) -> str:
        parts = [self.summary(), self.table()]
        if self.notes:
            parts.append("\n".join(f"note: {note}" for note in self.notes))
        if self.findings:
            parts.append(_grouped(self.findings))
        return "\n\n".join(parts)


class CompensationError(AssertionError):
    """``assert_compensates`` found rules broken; ``report`` has every run and finding, and the message says which
    failure point broke which rule."""

    def __init__(self, report: CompensationReport) -> None:
        self.report = report
        super().__init__(str(report))


def _grouped(findings: tuple[Finding, ...]) -> str:
    # The same finding at many failure points (a step without a rollback) is listed once, with every point.
    where: dict[tuple[str, str], list[str]] = {}
    for finding in findings:
        where.setdefault((finding.rule, finding.message), []).append(_where(finding.point, finding.mode))
    lines = ["findings:"]
    for (rule, message), points in where.items():
        lines.append(f"- [{rule}] {', '.join(points)}: {message}")
    return "\n".join(lines)


def _where(point: str, mode: str) -> str:
    return "in the run without failures" if point == "none" else f"failing at {point} ({mode})"
