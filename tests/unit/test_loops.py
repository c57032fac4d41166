"""The event loop of the processes Plait starts: uvloop's when installed, unless asyncio's is asked for."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from plait.core.loops import loop_factory, run


def test_auto_and_uvloop_take_uvloop_when_it_is_installed_and_asyncio_takes_asyncios() -> None:
    assert loop_factory() is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None


def test_without_uvloop_auto_takes_asyncios_and_uvloop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert loop_factory("auto") is None
    with pytest.raises(ValueError, match=r"uvloop is not installed \(pip install uvloop\)"):
        loop_factory("uvloop")


def test_an_unknown_choice_is_refused() -> None:
    with pytest.raises(ValueError, match="must be 'auto', 'uvloop' or 'asyncio', got 'trio'"):
        loop_factory("trio")  # type: ignore[arg-type]


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_run_runs_on_the_loop_asked_for() -> None:
    assert run(_loop_module()) == "uvloop"
    assert run(_loop_module(), "asyncio") == "asyncio"
