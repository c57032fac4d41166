"""Tracebacks as text: the standard library's, without the carets, for a twentieth of the cost."""

from __future__ import annotations

import re
import traceback

import pytest

from plait.core.tracebacks import traceback_text

_CARETS = re.compile(r"^ +[~^]+ *\n", re.MULTILINE)


def standard(error: BaseException) -> str:
    """What the standard library writes, less its lines of carets."""
    return _CARETS.sub("", "".join(traceback.format_exception(error)))


def caught(fn: object) -> BaseException:
    try:
        fn()  # type: ignore[operator]
    except BaseException as error:
        return error
    raise AssertionError("nothing was raised")


class Declined(Exception):
    pass


def charge(amount: int) -> int:
    return 100 // amount  # ZeroDivisionError for 0: an expression that gets carets


def checkout() -> None:
    try:
        charge(0)
    except ZeroDivisionError as error:
        raise Declined("card declined") from error


def cleanup() -> None:
    try:
        charge(0)
    except ZeroDivisionError:
        empty: dict[str, int] = {}
        empty["missing"]  # raised while handling the first


def hidden() -> None:
    try:
        charge(0)
    except ZeroDivisionError:
        raise Declined("no reason given") from None


def deep(n: int) -> int:
    return deep(n + 1)


def noted() -> None:
    error = Declined("with a note")
    error.add_note("order o-1")
    raise error


def grouped() -> None:
    raise ExceptionGroup("two failures", [Declined("a"), ValueError("b")])


@pytest.mark.parametrize(
    "fn",
    [lambda: charge(0), checkout, cleanup, hidden, lambda: deep(0), noted, grouped],
    ids=["plain", "cause", "context", "suppressed", "recursion", "note", "group"],
)
def test_the_text_is_the_standard_librarys_without_carets(fn: object) -> None:
    error = caught(fn)
    assert traceback_text(error) == standard(error)


def test_an_exception_never_raised_has_no_traceback_header() -> None:
    assert traceback_text(Declined("built, not raised")) == "tests.unit.test_tracebacks.Declined: built, not raised\n"


def test_a_cycle_of_contexts_ends() -> None:
    first, second = Declined("first"), Declined("second")
    first.__context__, second.__context__ = second, first
    assert traceback_text(first) == standard(first)


def test_deep_recursion_is_folded() -> None:
    text = traceback_text(caught(lambda: deep(0)))
    assert "[Previous line repeated" in text
    assert text.count("in deep\n") == 3
