"""The leases a worker holds: which jobs are this process's, until when, and what happens when one is lost.

A claimed job is leased to this process until now + ``stall_interval``; the heartbeat extends every lease the
process still holds three times per interval. Ends are kept in event loop time, counted from when the request
that got or renewed the lease was sent, so this process never believes a lease longer than Redis does.

A lease can be lost: Redis was unreachable for a stall interval, or this process was paused (SIGSTOP, a VM
migration, a blocked event loop) and the job went to another worker meanwhile. A running handler must then stop
before it does anything more, since its step runs again elsewhere. The watchdog is a plain timer callback, not a
task: after a pause it runs in the event loop's first batch of due callbacks, so it cancels a handler whose lease
ended before that handler's task takes its next step. The heartbeat cancels those whose lease Redis says this
process no longer holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from redis.exceptions import RedisError

from plait.providers.arq._keys import Job, Keys, shorten
from plait.providers.arq._store import Outage, Store

__all__ = ["Leases"]

_log = logging.getLogger("plait.providers.arq")


class Leases:
    """The jobs whose lease this process holds, renewed by :meth:`renew_forever`, watched while they run.

    Args:
        store: Redis operations; leases are held in the name of its ``owner``.
        outage: where Redis failures are reported.
        stall_interval: seconds a lease lasts without renewal.
    """

    __slots__ = (
        "_ends",
        "_lost",
        "_outage",
        "_performing",
        "_store",
        "_watchdog",
        "owned",
        "stall_interval",
        "stopped",
    )

    def __init__(self, store: Store, outage: Outage, stall_interval: float) -> None:
        self._store = store
        self._outage = outage
        self.stall_interval = stall_interval
        self.owned: dict[str, Job] = {}
        self._ends: dict[str, float] = {}  # job id -> event loop time its lease ends, unless renewed
        self._performing: dict[str, asyncio.Task[None]] = {}  # job id -> the task whose handler runs it now
        self._lost: set[str] = set()  # owned jobs whose lease this process lost
        self._watchdog: asyncio.TimerHandle | None = None
        self.stopped = False

    def own(self, job_id: str, job: Job, sent: float) -> None:
        """Records a lease got by a request sent at event loop time ``sent``."""
        self.owned[job_id] = job
        self._ends[job_id] = sent + self.stall_interval

    def disown(self, job_id: str) -> None:
        """Forgets a lease: the job finished, was released, or is not this process's any more."""
        self.owned.pop(job_id, None)
        self._ends.pop(job_id, None)
        self._lost.discard(job_id)

    def clear(self) -> None:
        """Forgets every lease (after handing them all back)."""
        self.owned.clear()
        self._ends.clear()
        self._lost.clear()

    def end(self, job_id: str) -> float | None:
        """When the lease of ``job_id`` ends (event loop time) unless renewed; ``None`` if not held."""
        return self._ends.get(job_id)

    def lost(self, job_id: str) -> bool:
        """Whether this process lost the lease of a job it still counts as its own."""
        return job_id in self._lost

    def handler(self, job_id: str) -> asyncio.Task[None] | None:
        """The task running the handler of ``job_id`` right now, if any."""
        return self._performing.get(job_id)

    def running_items(self, keys: Keys, flow_id: str, node: str) -> list[str]:
        """The ids of the jobs of for-each ``node`` of flow ``flow_id`` whose handler runs here right now."""
        owned = self.owned
        return [
            job_id
            for job_id in self._performing
            if (job := owned.get(job_id)) is not None
            and job.flow_id == flow_id
            and job.step == node
            and job.index is not None
        ]

    def performing(self, job_id: str, task: asyncio.Task[None]) -> None:
        """Marks ``task`` as running the handler of ``job_id`` (until :meth:`performed`): it is cancelled if the
        job's lease is lost."""
        self._performing[job_id] = task
        if self._watchdog is None:
            self._arm()

    def performed(self, job_id: str) -> None:
        """The handler of ``job_id`` has returned."""
        self._performing.pop(job_id, None)

    def stop(self) -> None:
        """Stops the watchdog."""
        self.stopped = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def renew_forever(self) -> None:
        """The heartbeat: renews every lease held, three times per stall interval."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.stall_interval / 3)
            if not self.owned:
                continue
            job_ids = list(self.owned)
            sent = loop.time()
            try:
                lost = await self._store.heartbeat(job_ids)
            except (RedisError, OSError) as error:
                self._outage.failed("renewing leases", error)
                continue
            except Exception:
                _log.exception("Internal error renewing leases")
                continue
            self._outage.over()
            lost_set = set(lost)
            ends = self._ends
            renewed = sent + self.stall_interval
            for job_id in job_ids:
                if job_id not in lost_set and job_id in ends:
                    ends[job_id] = max(ends[job_id], renewed)
            # Only a running handler is stopped: a job being committed is settled by its commit's
            # compare-and-set, and one that finished meanwhile is not this process's any more anyway.
            self._lose([job_id for job_id in lost if job_id in self._performing], "another worker holds it now")

    def _arm(self) -> None:
        if self._watchdog is None and not self.stopped:
            self._watchdog = asyncio.get_running_loop().call_later(self.stall_interval / 4, self._watch)

    def _watch(self) -> None:
        self._watchdog = None
        if not self._performing:
            return
        now = asyncio.get_running_loop().time()
        ends = self._ends
        expired = [job_id for job_id in self._performing if ends.get(job_id, now) < now]
        why = f"no heartbeat renewed it for {self.stall_interval:g}s: Redis unreachable, or this process was paused"
        self._lose(expired, why)
        self._arm()

    def _lose(self, job_ids: Iterable[str], why: str) -> None:
        """Cancels the running handlers of jobs whose lease this process lost, and says so in one line."""
        lost = [job_id for job_id in job_ids if job_id in self.owned and job_id not in self._lost]
        if not lost:
            return
        for job_id in lost:
            self._lost.add(job_id)
            task = self._performing.get(job_id)
            if task is not None:
                task.cancel()
        names = ", ".join(shorten(job_id) for job_id in lost[:5])
        more = f" and {len(lost) - 5} more" if len(lost) > 5 else ""
        _log.warning(
            "Lost the lease of %d job(s) (%s): %s%s; cancelled their handlers, they run again elsewhere",
            len(lost),
            why,
            names,
            more,
        )
