"""Per-consumer options: retries, backoff, timeouts and concurrency. Times are in seconds."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from plait.core.errors import DefinitionError

__all__ = ["Backoff", "ConsumerOptions"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before retrying a failed step or rollback.

    Use :meth:`exponential` or :meth:`fixed` rather than the constructor.
    """

    kind: Literal["exponential", "fixed"]
    delay: float
    max_delay: float = 30.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("exponential", "fixed"):
            raise DefinitionError(f"Backoff kind must be 'exponential' or 'fixed', got {self.kind!r}")
        if not self.delay >= 0:
            raise DefinitionError(f"Backoff delay must be >= 0 seconds, got {self.delay!r}")
        if not self.max_delay >= self.delay:
            raise DefinitionError(f"Backoff max_delay ({self.max_delay!r}) must be >= delay ({self.delay!r})")

    @classmethod
    def exponential(cls, delay: float, max_delay: float = 30.0, jitter: bool = True) -> Backoff:
        """``delay * 2**(attempt-1)``, capped at ``max_delay``; with jitter, a random 50-100% of that."""
        return cls("exponential", delay, max_delay, jitter)

    @classmethod
    def fixed(cls, delay: float) -> Backoff:
        """The same ``delay`` before every retry."""
        return cls("fixed", delay, delay, False)

    def delay_for(self, failed_attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after attempt ``failed_attempt`` (1-based) failed."""
        if self.kind == "fixed":
            return self.delay
        base = min(self.max_delay, self.delay * 2.0 ** min(failed_attempt - 1, 62))
        return base * (0.5 + rand() / 2) if self.jitter else base


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """Options of one workflow's consumer; every provider applies the same defaults.

    Attributes:
        attempts: tries per step and per rollback (1 = no retry).
        backoff: wait between tries.
        step_timeout: seconds one attempt of a step (or rollback, or callback) may take; ``None`` = the
            provider's default.
        timeout: seconds a whole flow may take; ``None`` = the provider's default.
        concurrency: flows of this workflow run at once per process; ``None`` = the provider's default.
    """

    attempts: int = 1
    backoff: Backoff = field(default_factory=lambda: Backoff.exponential(1.0))
    step_timeout: float | None = None
    timeout: float | None = None
    concurrency: int | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.attempts) or self.attempts < 1:
            raise DefinitionError(f"ConsumerOptions.attempts must be an int >= 1, got {self.attempts!r}")
        if not isinstance(self.backoff, Backoff):
            raise DefinitionError(
                f"ConsumerOptions.backoff must be Backoff.exponential(...) or Backoff.fixed(...), got {self.backoff!r}"
            )
        for name in ("step_timeout", "timeout"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and value > 0):
                raise DefinitionError(f"ConsumerOptions.{name} must be > 0 seconds or None, got {value!r}")
        if self.concurrency is not None and (not _is_int(self.concurrency) or self.concurrency < 1):
            raise DefinitionError(f"ConsumerOptions.concurrency must be an int >= 1 or None, got {self.concurrency!r}")


# bool is an int to Python, but attempts=True or timeout=True is a mistake, not a number.
def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
