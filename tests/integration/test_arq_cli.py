"""``plait worker``'s loader: module:attr, factories, nested attributes, and clear refusals."""

from __future__ import annotations

import pytest

from plait.providers.arq._cli import load_target, main
from tests.integration.apps import cli_targets

MODULE = "tests.integration.apps.cli_targets"


async def test_an_object_with_start_and_stop_is_run_as_it_is() -> None:
    assert await load_target(f"{MODULE}:runnable") is cli_targets.runnable
    assert await load_target(f"{MODULE}:Namespace.nested") is cli_targets.Namespace.nested


@pytest.mark.parametrize("name", ["factory", "async_factory"])
async def test_a_factory_is_called(name: str) -> None:
    target = await load_target(f"{MODULE}:{name}")
    assert isinstance(target, cli_targets.Runnable)
    await target.start()
    assert target.running


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no-colon", "expected 'module:attr'"),
        ("tests.integration.apps.missing:app", "cannot import"),
        (f"{MODULE}:missing", "has no attribute"),
        (f"{MODULE}:not_runnable", "not an application or provider"),
        (f"{MODULE}:wrong_factory", "not an application or provider"),
    ],
)
async def test_a_bad_target_is_refused_with_a_message(spec: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        await load_target(spec)


def test_the_command_requires_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([])
    assert "worker" in capsys.readouterr().err
