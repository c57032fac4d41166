"""What a flow costs each peer, beside how fast it went: CPU time of its workers, its driver and Redis, and the
Redis commands it sent, measured over each round.

On a shared 2-core machine the peers are CPU-bound, so these explain the rates: a peer's flows/s is roughly the
CPU it gets divided by the CPU a flow takes. Process CPU time comes from ``/proc/<pid>/stat`` (user + system, in
clock ticks of 10 ms: fine over a round of seconds). Redis's comes from ``INFO cpu``; its commands from ``INFO
commandstats``, which counts the commands a Lua script runs as well as the script call itself. Redis is shared,
so its figures include the few commands of the other peers' idle workers during the round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from bench.common import cpu_seconds, redis_cpu_seconds

__all__ = ["Cost", "Snapshot", "snapshot"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    workers: float
    driver: float
    redis: float
    commands: int
    scripts: int


async def snapshot(redis: Redis, workers: list[int], driver: int) -> Snapshot:
    """The counters of one peer's processes and of Redis, now."""
    stats: dict[str, dict[str, Any]] = await redis.info("commandstats")
    return Snapshot(
        workers=cpu_seconds(workers),
        driver=cpu_seconds([driver]),
        redis=await redis_cpu_seconds(redis),
        commands=sum(int(v["calls"]) for v in stats.values()),
        scripts=sum(int(v["calls"]) for k, v in stats.items() if k.startswith(("cmdstat_eval", "cmdstat_fcall"))),
    )


@dataclass(frozen=True, slots=True)
class Cost:
    """Per flow: CPU milliseconds of the workers, the driver and Redis; Redis commands, and scripts among them."""

    workers_ms: float
    driver_ms: float
    redis_ms: float
    commands: float
    scripts: float

    @classmethod
    def between(cls, before: Snapshot, after: Snapshot, flows: int) -> Cost:
        # The two INFO calls of a snapshot are commands too: leave out the two of ``before``.
        return cls(
            workers_ms=(after.workers - before.workers) * 1000 / flows,
            driver_ms=(after.driver - before.driver) * 1000 / flows,
            redis_ms=(after.redis - before.redis) * 1000 / flows,
            commands=(after.commands - before.commands - 2) / flows,
            scripts=(after.scripts - before.scripts) / flows,
        )

    @property
    def total_ms(self) -> float:
        return self.workers_ms + self.driver_ms + self.redis_ms
