"""Consumer options and backoff: defaults shared by every provider, bad values rejected when built."""

from __future__ import annotations

from typing import Any

import pytest

from plait.core import Backoff, ConsumerOptions, DefinitionError


def test_defaults() -> None:
    options = ConsumerOptions()
    assert options.attempts == 1
    assert options.backoff == Backoff.exponential(1.0, max_delay=30.0, jitter=True)
    assert (options.step_timeout, options.timeout, options.concurrency) == (None, None, None)


def test_options_are_frozen() -> None:
    with pytest.raises(AttributeError):
        ConsumerOptions().attempts = 3  # type: ignore[misc]


def test_exponential_backoff_doubles_caps_and_jitters() -> None:
    backoff = Backoff.exponential(0.5, max_delay=3.0)
    assert [backoff.delay_for(n, lambda: 0.999999) for n in (1, 2, 3, 4)] == pytest.approx([0.5, 1.0, 2.0, 3.0])
    assert [backoff.delay_for(n, lambda: 0.0) for n in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, 1.5]
    assert Backoff.exponential(0.5, jitter=False).delay_for(3, lambda: 0.0) == 2.0


def test_exponential_backoff_survives_huge_attempt_numbers() -> None:
    assert Backoff.exponential(1.0, max_delay=10.0, jitter=False).delay_for(10_000) == 10.0


def test_fixed_backoff_never_changes() -> None:
    backoff = Backoff.fixed(0.25)
    assert {backoff.delay_for(n, lambda: 0.7) for n in range(1, 10)} == {0.25}
    assert Backoff.fixed(0).delay_for(1) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "linear", "delay": 1.0}, "kind must be"),
        ({"kind": "fixed", "delay": -1.0}, "delay must be >= 0"),
        ({"kind": "fixed", "delay": float("nan")}, "delay must be >= 0"),
        ({"kind": "exponential", "delay": 2.0, "max_delay": 1.0}, "max_delay"),
    ],
)
def test_bad_backoff_is_rejected(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(DefinitionError, match=match):
        Backoff(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"attempts": 0}, "attempts must be an int >= 1"),
        ({"attempts": 2.0}, "attempts must be an int >= 1"),
        ({"attempts": True}, "attempts must be an int >= 1"),
        ({"backoff": 1.0}, "backoff must be Backoff"),
        ({"step_timeout": 0}, "step_timeout must be > 0"),
        ({"step_timeout": -1.0}, "step_timeout must be > 0"),
        ({"step_timeout": float("nan")}, "step_timeout must be > 0"),
        ({"step_timeout": "5"}, "step_timeout must be > 0"),
        ({"timeout": 0.0}, "timeout must be > 0"),
        ({"timeout": True}, "timeout must be > 0"),
        ({"concurrency": 0}, "concurrency must be an int >= 1"),
        ({"concurrency": False}, "concurrency must be an int >= 1"),
    ],
)
def test_bad_options_are_rejected(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(DefinitionError, match=match):
        ConsumerOptions(**kwargs)


def test_good_options_are_kept() -> None:
    options = ConsumerOptions(attempts=3, backoff=Backoff.fixed(0.1), step_timeout=2, timeout=30.5, concurrency=4)
    assert (options.attempts, options.step_timeout, options.timeout, options.concurrency) == (3, 2, 30.5, 4)
