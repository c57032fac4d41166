"""For-each on the arq provider under load: the items of one flow run in two ``plait worker`` processes, ten at a
time, each item's chain taking the next item on in the same task; every item runs once and none is handed back."""

from __future__ import annotations

from typing import cast

import redis

from plait.providers.arq import ArqWorkflowProvider
from tests.integration.apps.fan import FAN, Count
from tests.integration.conftest import Workers


async def test_the_items_of_one_flow_run_once_each_in_two_workers_without_a_hand_back(
    redis_url: str, redis_client: redis.Redis, workers: Workers
) -> None:
    # A stall interval of 30 s: an item handed back would run again only long after the result's timeout.
    running = [workers.start("tests.integration.apps.fan:create_app", stall=30.0) for _ in range(2)]
    await workers.ready(*running)
    emitter = ArqWorkflowProvider(redis_url)
    await emitter.start()
    try:
        handle = await emitter.execute(FAN, Count(n=600))
        assert (await handle.result(timeout=25)).n == 600
    finally:
        await emitter.stop()
    runs = cast(dict[bytes, bytes], redis_client.hgetall(f"fan:{handle.id}"))
    assert sorted(int(index) for index in runs) == list(range(600))
    assert set(runs.values()) == {b"1"}
    for worker in running:
        assert "Internal error" not in workers.log(worker)
