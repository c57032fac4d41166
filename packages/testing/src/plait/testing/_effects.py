"""What a test's fake services did and undid, attributed to the handler that was running at the time."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal, NamedTuple

__all__ = ["EffectRecord", "Effects", "Handler", "running"]


@dataclass(frozen=True, slots=True)
class Handler:
    """One handler of one flow: a step's ``execute`` (kind ``"step"``), a ``"rollback"``, ``"on_complete"`` or
    ``"on_error"``; ``index`` is a for-each item's."""

    flow_id: str
    workflow: str
    kind: str
    step: str | None = None
    index: int | None = None

    @property
    def unit(self) -> str:
        """The step (or item) it belongs to, as ``step`` or ``step[index]``; the callback's name for callbacks."""
        if self.step is None:
            return self.kind
        return self.step if self.index is None else f"{self.step}[{self.index}]"

    def __str__(self) -> str:
        if self.kind == "rollback":
            return f"the rollback of '{self.unit}'"
        if self.kind == "step":
            return f"step '{self.unit}'"
        return self.kind


running: ContextVar[Handler | None] = ContextVar("plait_testing_running_handler", default=None)
"""The handler ``assert_compensates`` is running in this context (tasks a handler starts inherit it)."""


class EffectRecord(NamedTuple):
    """One thing a fake service did (``op="did"``) or undid (``op="undid"``), and the handler running then
    (``None`` outside ``assert_compensates``'s runs)."""

    op: Literal["did", "undid"]
    effect: str
    handler: Handler | None


class Effects:
    """A log your test's fake services write to, so that :func:`assert_compensates` can check what each run left.

    Call :meth:`did` where a fake acts and :meth:`undid` where it reverts, naming the effect the same way both
    times (``"charged o-1"``). ``assert_compensates`` knows which handler of which flow was running at each call,
    and reports an effect undone twice, undone by another step's rollback, or still done after the flow failed
    (unless the step that did it is named in ``no_rollback``)::

        effects = Effects()

        class FakePayments:
            async def charge(self, order_id: str) -> str:
                effects.did(f"charged {order_id}")
                return f"ch-{order_id}"

            async def refund(self, charge_id: str) -> None:
                effects.undid(f"charged {charge_id.removeprefix('ch-')}")

    Outside ``assert_compensates`` it is a plain log: :meth:`outstanding` lists what is done and not undone.
    """

    def __init__(self) -> None:
        self._log: list[EffectRecord] = []

    def did(self, effect: str) -> None:
        """Notes that ``effect`` happened (a charge, a reservation, a row written)."""
        self._log.append(EffectRecord("did", _check(effect), running.get()))

    def undid(self, effect: str) -> None:
        """Notes that ``effect`` was reverted (a refund, a release, a row deleted)."""
        self._log.append(EffectRecord("undid", _check(effect), running.get()))

    def _records(self) -> tuple[EffectRecord, ...]:
        """Everything noted so far, in order; ``assert_compensates`` reads it."""
        return tuple(self._log)

    def outstanding(self, flow_id: str | None = None) -> list[str]:
        """The effects done and not undone (of flow ``flow_id`` only, if given), each once per time it is done."""
        count: dict[str, int] = {}
        for record in self._log:
            if flow_id is not None and (record.handler is None or record.handler.flow_id != flow_id):
                continue
            count[record.effect] = count.get(record.effect, 0) + (1 if record.op == "did" else -1)
        return [effect for effect, n in count.items() for _ in range(n)]

    def __repr__(self) -> str:
        return f"Effects({len(self._log)} records, {len(self.outstanding())} outstanding)"


def _check(effect: object) -> str:
    if not isinstance(effect, str) or not effect:
        raise TypeError(f"an effect is named by a non-empty str, got {effect!r}")
    return effect
