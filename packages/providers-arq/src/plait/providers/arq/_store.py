"""Flow state and job movement in Redis: every change is one Lua script, so it is atomic.

The engine decides in Python; a script only persists its decision. :meth:`Store.commit` is a compare-and-set on
the flow's version: it writes the new state, finishes the job that produced the event, enqueues (or leases to
this worker) the jobs the engine asked for, deletes the jobs of cancelled steps, and publishes the flow's end, all
at once or not at all. A writer that lost the race gets the current state back and applies its event again,
which the engine ignores if it no longer matches; so an event delivered twice advances the flow once.

The scripts are the ``lua/*.lua`` files of this package. Every key a script touches is passed in by the caller,
named here in Python: the keys it can only know while it runs (a job's payload, the flow a job names, the queue
and wake-up list in a lease record) are built from prefixes passed in, or read from records written by Python.

The scripts read and write a flow's keys together with the queues and lease sets, which are not in the flow's
hash slot: like arq itself, this needs a single Redis server (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

from arq.connections import ArqRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from plait.core.handle import FlowStatus
from plait.providers.arq._batch import ScriptBatcher
from plait.providers.arq._keys import Job, Keys, MalformedJobError, loads, shorten

__all__ = [
    "EVENTS_MAXLEN",
    "UNAVAILABLE",
    "Change",
    "Claimed",
    "Conflict",
    "Enqueue",
    "Outage",
    "Rejected",
    "Store",
    "now_ms",
    "script",
]

_TERMINAL = frozenset(status.value for status in FlowStatus if status.is_terminal)

EVENTS_MAXLEN = 10_000
"""About how many events a flow's stream keeps (the oldest go first); a flow has a few per step."""

UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OutOfMemoryError, OSError)
"""What Redis raises when it cannot be reached (down, restarting, loading its data, failed over) or cannot take
writes (full: ``maxmemory`` reached under ``noeviction``): an outage, not a bug. ``RedisConnectionError`` covers
redis-py's ``BusyLoadingError`` and ``AuthenticationError``."""


class Outage:
    """Logs a Redis outage once, as one WARNING however many loops meet it, and its end."""

    __slots__ = ("since",)

    def __init__(self) -> None:
        self.since: float | None = None

    def failed(self, doing: str, error: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            _log.warning("Redis cannot be used while %s (%s); retrying until it is back", doing, _describe(error))

    def over(self) -> None:
        if self.since is not None:
            _log.info("Redis is usable again, after %.1fs", time.monotonic() - self.since)
            self.since = None


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


_log = logging.getLogger("plait.providers.arq")


def now_ms() -> int:
    """Wall-clock milliseconds, the unit of arq's queue scores."""
    return int(time.time() * 1000)


def queue_ms() -> float:
    """Wall-clock milliseconds to the microsecond, for the scores of queued jobs and the claims that take them: jobs
    queued in the same millisecond are then claimed in the order they were queued (between equal scores, Redis
    orders them by job id, that is at random)."""
    return round(time.time() * 1000, 3)


def script(name: str) -> str:
    """The source of ``lua/<name>.lua``, shipped with this package."""
    return resources.files("plait.providers.arq").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job taken from a queue, with its flow's stored state and version as they were (``None`` if the flow is
    gone), and the record of the for-each item it names, if any. The bytes are as stored: they may not be
    readable.

    ``lease_end``: for a start job handed to this worker while it waited idle, when the lease the handing took
    for it runs out (seconds since the epoch); ``None`` for a job this worker claimed (its lease runs from the
    claim's request).
    """

    job_id: str
    job: Job
    state: bytes | None
    version: bytes | None
    item: bytes | None = None
    lease_end: float | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A job taken from a queue that is not one this worker can run; ``leased``: it still has to be released.

    ``job_id`` is the id exactly as stored (one not written by Plait may not even be UTF-8). ``misplaced``: the job
    itself is fine but not this queue's (another workflow's flow, or the other queue of the workflow), so its
    payload, which the job's own queue shares, must be left alone.
    """

    job_id: bytes
    reason: str
    leased: bool
    misplaced: bool = False

    @property
    def name(self) -> str:
        """The job id, safe for a log line."""
        return shorten(self.job_id.decode(errors="replace"))


@dataclass(frozen=True, slots=True)
class Enqueue:
    """A job a commit creates: queued after ``delay`` seconds, or leased to the committing worker (``local``)."""

    job: Job
    delay: float = 0.0
    local: bool = False


@dataclass(frozen=True, slots=True)
class Change:
    """What a commit writes besides the state: for-each items, events, the flow's timer, its listing status."""

    items: Sequence[tuple[str, bytes]] = ()
    events: Sequence[bytes] = ()
    timer: float | None = None
    clear_timer: bool = False
    old_status: str | None = None
    created_at: float = 0.0
    parent_id: str | None = None


@dataclass(frozen=True, slots=True)
class Conflict:
    """A commit lost the race: the flow's current state and version (``None`` when the flow no longer exists)."""

    state: bytes | None
    version: bytes | None


class Store:
    """Plait's Redis operations under one queue prefix.

    Args:
        redis: the connection pool (arq's client, configured with JSON job serialisation).
        keys: key names.
        retention: seconds an ended flow, and a job's payload, stay.
        lease: seconds a claimed job stays leased without a heartbeat (the stall interval).
        owner: who holds the leases this store takes (the worker's id); only the holder renews or releases one.
    """

    __slots__ = (
        "_claim",
        "_commit",
        "_create",
        "_fail_unreadable",
        "_heartbeat",
        "_reconcile",
        "_records",
        "_release",
        "_scripts",
        "_timers",
        "_trim",
        "_waits",
        "keys",
        "lease",
        "owner",
        "redis",
        "retention_ms",
    )

    def __init__(self, redis: ArqRedis, keys: Keys, *, retention: float, lease: float, owner: str) -> None:
        self.redis = redis
        self.keys = keys
        self.retention_ms = max(1, int(retention * 1000))
        self.lease = lease
        self.owner = owner
        self._records: dict[str, bytes] = {}  # queue -> the lease record of its jobs leased here
        self._scripts = ScriptBatcher(redis)
        self._waits: dict[str, ScriptBatcher] = {}  # workflow -> the connection its loop blocks on
        self._create = redis.register_script(script("create"))
        self._claim = redis.register_script(script("claim"))
        self._commit = redis.register_script(script("commit"))
        self._release = redis.register_script(script("release"))
        self._heartbeat = redis.register_script(script("heartbeat"))
        self._reconcile = redis.register_script(script("reconcile"))
        self._fail_unreadable = redis.register_script(script("fail_unreadable"))
        self._timers = redis.register_script(script("timers"))
        self._trim = redis.register_script(script("trim"))

    # -- flows --

    async def create(
        self,
        flow_id: str,
        workflow: str,
        state: bytes,
        start: Job,
        *,
        wake_at: float | None,
        created_at: float,
        parent_id: str | None = None,
        ends: str = "",
    ) -> bytes | None:
        """Stores a new flow, queues its start job, indexes it for listings and arms its timer; returns the
        existing state instead if the id is taken. ``ends``: the channel of the provider that awaits its end, if
        any (``Keys.ends``)."""
        keys = self.keys
        job_id = keys.job_id(start)
        now = queue_ms()
        create_keys = [
            keys.flow(flow_id),
            keys.queue(workflow),
            keys.job_key(job_id),
            keys.wake(workflow),
            keys.timers(workflow),
            keys.index,
            keys.index_workflow(workflow),
            *keys.status_indexes(workflow, "pending"),
            keys.idle(workflow),
            keys.idle_until(workflow),
            keys.leases,
            keys.lease_info,
            keys.steps_queue(workflow),
        ]
        if parent_id is not None:
            create_keys.append(keys.index_parent(parent_id))
        existing = await self._scripts.run(
            self._create,
            create_keys,
            [
                state,
                workflow,
                job_id,
                start.payload(int(now)),
                repr(now),
                self.retention_ms,
                "" if wake_at is None else _ms(wake_at),
                flow_id,
                "pending",
                repr(created_at),
                ends,
                int(now),
                keys.inbox_prefix(workflow),
            ],
        )
        return cast(bytes | None, existing)

    async def load(self, flow_id: str) -> tuple[bytes, bytes | None] | None:
        """A flow's stored state and version, or ``None`` when the flow does not exist."""
        state, version = await self._scripts.command("HMGET", self.keys.flow(flow_id), "s", "v")
        if state is None:
            return None
        return cast(bytes, state), cast(bytes | None, version)

    async def status(self, flow_id: str) -> tuple[bytes | None, bytes | None] | None:
        """A flow's stored status and workflow name, or ``None`` when the flow does not exist."""
        status, workflow, state = await self.command("HMGET", self.keys.flow(flow_id), "st", "wf", "s")
        if status is None and workflow is None and state is None:
            return None
        return cast(bytes | None, status), cast(bytes | None, workflow)

    async def fail_unreadable(
        self, flow_id: str, workflow: str, unreadable: bytes, state: bytes, status: str, *, finished: str | None
    ) -> bool:
        """Replaces an unreadable state by ``state`` (terminal), keeping the bytes; ``False`` if it changed meanwhile.

        Args:
            finished: the id of the job that found it (its lease and payload are deleted).
        """
        keys = self.keys
        done = await self._scripts.run(
            self._fail_unreadable,
            self._writer_keys(flow_id, workflow),
            [
                unreadable,
                state,
                status,
                self.retention_ms,
                finished or "",
                flow_id,
                keys.done(flow_id),
                keys.job_key(""),
                now_ms() + self.retention_ms,
                keys.expiring_member(workflow, flow_id, None),  # its parent, if any, cannot be read
            ],
        )
        return bool(done)

    # -- jobs --

    async def claim(
        self, workflow: str, limit: int, *, idle_for: float | None = None
    ) -> tuple[list[Claimed], list[Rejected], float | None]:
        """Leases up to ``limit`` due jobs of ``workflow`` (steps first) to this store's owner.

        Args:
            idle_for: for a worker that waits for work next: also take the start jobs handed to it while it
                waited (see :meth:`wait_for_work`), and if a slot is left after all, register it as idle for
                about this many seconds, so that new flows' start jobs are handed to it.

        Returns:
            The jobs; those that are not jobs of this workflow this worker can run, and why (the script deleted
            the worst of them already, the others are still leased); and when no due job is left, the time
            (seconds since the epoch) the next one falls due.
        """
        keys = self.keys
        now = queue_ms()
        steps_queue, flow_queue = keys.steps_queue(workflow), keys.queue(workflow)
        claim_keys = [steps_queue, flow_queue, keys.wake(workflow), keys.leases, keys.lease_info]
        idle: list[str | int] = []
        if idle_for is not None:
            claim_keys += [keys.idle(workflow), keys.idle_until(workflow), self._inbox(workflow)]
            idle = [self._idle_member, int(now + idle_for * 1000)]
        jobs, garbage, due, handed = await self._scripts.run(
            self._claim,
            claim_keys,
            [
                repr(now),
                limit,
                repr(now + int(self.lease * 1000)),
                keys.job_key(""),
                keys.flow_prefix,
                keys.flow_suffix,
                self._record(steps_queue, workflow),
                self._record(flow_queue, workflow),
                keys.item_prefix,
                *idle,
            ],
        )
        rejected = [Rejected(job_id, reason.decode(), leased=False) for job_id, reason in garbage]
        claimed: list[Claimed] = []
        for entry in handed:
            taken = self._handed(workflow, entry)
            if isinstance(taken, Claimed):
                claimed.append(taken)
            else:
                rejected.append(taken)
        for raw_id, payload, state, version, flow_workflow, queue_number, item in jobs:
            job_id = _text(raw_id)
            try:
                job = Job.parse(workflow, payload)
                if keys.job_id(job) != job_id:
                    raise MalformedJobError(f"its id does not match its content (a {job.kind} job of {job.flow_id!r})")
            except MalformedJobError as error:
                rejected.append(Rejected(raw_id, str(error), leased=True))
                continue
            misplaced = None
            if job.on_steps_queue != (queue_number == 1):
                misplaced = f"a {job.kind} job on the {'steps' if queue_number == 1 else 'flow'} queue"
            elif flow_workflow is not None and flow_workflow != workflow.encode():
                other = shorten(flow_workflow.decode(errors="replace"))
                misplaced = f"it names flow {shorten(job.flow_id)} of workflow {other}, not of '{workflow}'"
            if misplaced is not None:
                rejected.append(Rejected(raw_id, misplaced, leased=True, misplaced=True))
                continue
            claimed.append(Claimed(job_id, job, state, version, item or None))
        return claimed, rejected, (None if due is None else float(due) / 1000)

    def commit(
        self,
        flow_id: str,
        workflow: str,
        version: str,
        state: bytes,
        status: str,
        *,
        change: Change,
        finished: str | None = None,
        done: bool = False,
        cancelled: bytes | None = None,
        jobs: Sequence[Enqueue] = (),
        waiter: asyncio.Future[Conflict | None] | None = None,
    ) -> asyncio.Future[Conflict | None]:
        """Sends the compare-and-set of ``state`` on ``version``; returns its future: ``None`` once ``state`` is
        written, else the current state. The commit goes, and its future is settled, whether or not anyone awaits
        it; ``waiter`` is settled with it (see :meth:`ScriptBatcher.submit`).

        Args:
            change: the items, events, timer and listing status that go with the state.
            finished: the id of the job whose event this is (its lease and payload are deleted).
            done: the flow has ended: announce ``status`` on its channel.
            cancelled: what to stop, as the JSON object published on the cancel channel (the jobs it names are
                deleted too).
            jobs: jobs to create; a ``local`` one is leased to this store's owner.
        """
        keys = self.keys
        now = now_ms()
        timer: str | int = "-" if change.clear_timer else "" if change.timer is None else _ms(change.timer)
        expiry = _expiry(now + self.retention_ms, status, change.old_status)  # '' while it runs on
        args: list[str | int | bytes] = [
            version,
            state,
            status,
            self.retention_ms,
            finished or "",
            timer,
            flow_id,
            keys.done(flow_id) if done else "",
            keys.cancel,
            cancelled or "",
            now + int(self.lease * 1000),
            keys.job_key(""),
            repr(change.created_at),
            EVENTS_MAXLEN,
            expiry,
            keys.expiring_member(workflow, flow_id, change.parent_id) if expiry != "" else "",
            len(change.items),
            len(change.events),
            len(jobs),
        ]
        for item_field, record in change.items:
            args += [item_field, record]
        args += change.events
        for each in jobs:
            job = each.job
            queue = keys.queue_of(job)
            args += [
                queue,
                keys.job_id(job),
                job.payload(now),
                "" if each.local else now + int(each.delay * 1000),
                keys.wake(job.workflow),
                self._record(queue, job.workflow) if each.local else "",
            ]
        commit_keys = self._writer_keys(flow_id, workflow)
        if change.old_status is not None and change.old_status != status:
            commit_keys += keys.status_indexes(workflow, change.old_status) + keys.status_indexes(workflow, status)
        return self._scripts.submit(self._commit, commit_keys, args, _conflict, waiter)

    def _writer_keys(self, flow_id: str, workflow: str) -> list[str]:
        """The first keys of the scripts that write a flow's state (commit, fail_unreadable), in their order."""
        keys = self.keys
        return [
            keys.flow(flow_id),
            keys.leases,
            keys.lease_info,
            keys.timers(workflow),
            keys.events(flow_id),
            keys.expiring,
        ]

    async def load_items(self, flow_id: str, fields: Sequence[str]) -> list[bytes | None]:
        """The stored records of a flow's for-each items (``None`` for one not stored)."""
        if not fields:
            return []
        return cast(list[bytes | None], await self._scripts.command("HMGET", self.keys.flow(flow_id), *fields))

    async def set_timer(self, workflow: str, flow_id: str, wake_at: float | None) -> None:
        """Sets (or, with ``None``, clears) a flow's timer: after a tick that changed nothing."""
        if wake_at is None:
            await self.command("ZREM", self.keys.timers(workflow), flow_id)
        else:
            await self.command("ZADD", self.keys.timers(workflow), _ms(wake_at), flow_id)

    async def due_timers(self, workflows: Sequence[str], limit: int = 100) -> tuple[dict[str, list[str]], float | None]:
        """Takes the flows of ``workflows`` whose timer is due, moving their timers a lease ahead.

        Returns:
            Per workflow, the flows to tick; and when the earliest timer left falls due (seconds since the epoch).
        """
        if not workflows:
            return {}, None
        due, next_ms = await self._scripts.run(
            self._timers, [self.keys.timers(w) for w in workflows], [now_ms(), int(self.lease * 1000), limit]
        )
        found = {wf: [_text(f) for f in ids] for wf, ids in zip(workflows, due, strict=True) if ids}
        return found, (None if next_ms is None else int(next_ms) / 1000)

    async def sweep_expired(self, statuses: Sequence[str], limit: int = 200) -> tuple[int, bool]:
        """Removes from the listing indexes up to ``limit`` ended flows whose retention expired; returns how many,
        and whether more may be due."""
        keys = self.keys
        now = now_ms()
        due = await self.command("ZRANGE", keys.expiring, "-inf", now, "BYSCORE", "LIMIT", 0, limit)
        if not due:
            return 0, False
        script_keys: list[str] = [keys.expiring]
        args: list[str | bytes | int] = [now]
        for member in due:
            try:
                workflow, flow_id, parent_id = loads(member)
                if not isinstance(workflow, str) or not isinstance(flow_id, str):
                    raise ValueError(member)
            except (ValueError, TypeError):
                await self.command("ZREM", keys.expiring, member)  # not Plait's: nothing to sweep
                continue
            indexes = [keys.index, keys.index_workflow(workflow)]
            if isinstance(parent_id, str):
                indexes.append(keys.index_parent(parent_id))
            for status in statuses:
                indexes += keys.status_indexes(workflow, status)
            script_keys += [keys.flow(flow_id), *indexes]
            args += [member, flow_id, 1 + len(indexes)]
        removed = int(await self._scripts.run(self._trim, script_keys, args)) if len(args) > 1 else 0
        return removed, len(due) == limit

    async def index_page(
        self, index: str, newest: float | None, oldest: float | None, count: int, offset: int = 0
    ) -> list[tuple[str, float]]:
        """Flow ids of a listing index, newest first, with their creation times: at most ``count``, created before
        ``newest`` (inclusive) and at or after ``oldest``, skipping the first ``offset``."""
        high = "+inf" if newest is None else repr(newest)
        low = "-inf" if oldest is None else repr(oldest)
        reply = await self.command("ZRANGE", index, high, low, "BYSCORE", "REV", "LIMIT", offset, count, "WITHSCORES")
        pairs = list(zip(reply[::2], reply[1::2], strict=True))
        return [(_text(flow_id), float(score)) for flow_id, score in pairs]

    async def load_many(self, flow_ids: Sequence[str]) -> list[bytes | None]:
        """The stored states of ``flow_ids`` (``None`` for a flow that is gone), in one round trip."""
        if not flow_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for flow_id in flow_ids:
                pipe.hget(self.keys.flow(flow_id), "s")
            return cast(list[bytes | None], await pipe.execute())

    async def events_after(
        self, flow_id: str, after: str, *, block: float | None = None
    ) -> list[tuple[str, bytes | None]]:
        """The events of a flow's stream after entry ``after`` (``"0"``: from the first), as ``(entry id, record)``
        (``None`` for an entry without one); with ``block``, waits that many seconds at most for new ones."""
        key = self.keys.events(flow_id)
        if block is None:
            reply = await self.command("XRANGE", key, f"({after}" if after != "0" else "-", "+", "COUNT", 1000)
            entries = reply or []
        else:
            reply = await self.command(
                "XREAD", "COUNT", 1000, "BLOCK", max(1, int(block * 1000)), "STREAMS", key, after
            )
            entries = reply[0][1] if reply else []
        return [(_text(entry_id), _field(fields, b"e")) for entry_id, fields in entries]

    async def release(
        self, job_ids: Sequence[str | bytes], *, hand_back: bool, delay: float = 0.0, leave: bool = False
    ) -> int:
        """Ends the leases of ``job_ids`` that this store's owner still holds: hands the jobs back to their queues
        (due after ``delay`` seconds), or drops them for good, or (``leave``) leaves them as they are. Returns how
        many it ended."""
        if not job_ids:
            return 0
        keys = self.keys
        due: str | int = "-" if leave else now_ms() + int(delay * 1000) if hand_back else ""
        args: list[str | bytes | int] = [keys.job_key(""), self.owner]
        for job_id in job_ids:
            args += [job_id, due]
        return int(await self._scripts.run(self._release, [keys.leases, keys.lease_info], args))

    async def heartbeat(self, job_ids: Sequence[str]) -> list[str]:
        """Extends the leases of ``job_ids`` by one stall interval; returns those this store's owner lost."""
        if not job_ids:
            return []
        until = now_ms() + int(self.lease * 1000)
        lost = await self._scripts.run(
            self._heartbeat, [self.keys.leases, self.keys.lease_info], [until, self.owner, *job_ids]
        )
        return [_text(job_id) for job_id in lost]

    async def reconcile(self, interval: float, limit: int = 100) -> tuple[int, int]:
        """Re-queues stalled jobs, for whoever holds the lock.

        Returns:
            How many jobs were handed back, and how many stalled leases had no usable record (dropped).
        """
        keys = self.keys
        handed_back, dropped = await self._scripts.run(
            self._reconcile,
            [keys.leases, keys.lease_info, keys.lock],
            [now_ms(), max(1, int(interval * 1000)), self.owner, keys.job_key(""), limit],
        )
        return int(handed_back), int(dropped)

    def _record(self, queue: str, workflow: str) -> bytes:
        record = self._records.get(queue)
        if record is None:
            record = self._records[queue] = self.keys.lease_record(queue, workflow, self.owner)
        return record

    async def wait_for_work(self, workflow: str, timeout: float) -> Claimed | Rejected | None:
        """Blocks until a start job is handed to this worker (see :meth:`claim`'s ``idle_for``) or a wake-up token
        for ``workflow`` arrives, or ``timeout`` seconds pass; returns the handed job, if any."""
        inbox = self._inbox(workflow)
        # On a pipelined connection of the loop's own: a blocked command would hold up the commits behind it.
        waits = self._waits.get(workflow)
        if waits is None:
            waits = self._waits[workflow] = ScriptBatcher(self.redis)
        reply = await waits.command("BLPOP", inbox, self.keys.wake(workflow), f"{max(timeout, 0.01):.3f}")
        if reply is None or reply[0] != inbox.encode():
            return None
        return self._handed(workflow, reply[1])

    async def leave(self, workflow: str) -> list[Claimed | Rejected]:
        """Stops waiting idle for ``workflow``: no start job is handed to this worker any more; returns those handed
        to it meanwhile (still leased to it)."""
        keys = self.keys
        inbox = self._inbox(workflow)
        member = self._idle_member
        waits = self._waits.pop(workflow, None)
        if waits is not None:
            await waits.close()  # a wait still blocked in Redis would take what comes next
        async with self.redis.pipeline(transaction=True) as leaving:
            leaving.zrem(keys.idle(workflow), member)
            leaving.zrem(keys.idle_until(workflow), member)
            leaving.lrange(inbox, 0, -1)
            leaving.delete(inbox)
            replies = await leaving.execute()
        return [self._handed(workflow, entry) for entry in replies[2]]

    @property
    def _idle_member(self) -> str:
        return f"{int(self.lease * 1000)}:{self.owner}"

    def _inbox(self, workflow: str) -> str:
        return f"{self.keys.inbox_prefix(workflow)}{self.owner}"

    def _handed(self, workflow: str, entry: bytes) -> Claimed | Rejected:
        """An entry of this worker's inbox (see ``create.lua``): the start job it names, leased to this worker."""
        parts = entry.split(b"\n", 3)
        if len(parts) != 4 or not parts[0].isdigit():
            return Rejected(entry[:200], "not an inbox entry", leased=False)
        lease_end, raw_id, payload, state = parts
        try:
            job = Job.parse(workflow, payload)
            if job.kind != "start" or self.keys.job_id(job) != raw_id.decode():
                raise MalformedJobError(f"not the start job its entry names ({shorten(raw_id)})")
        except (MalformedJobError, UnicodeDecodeError) as error:
            return Rejected(raw_id, str(error), leased=True)
        return Claimed(raw_id.decode(), job, state, b"1", lease_end=int(lease_end) / 1000)

    async def command(self, *args: str | bytes | int | float) -> Any:
        """Runs one Redis command and returns its raw reply."""
        return await self.redis.execute_command(*args)  # type: ignore[no-untyped-call]  # unannotated in redis-py


def _expiry(expire_at_ms: int, status: str, old_status: str | None) -> int | str:
    """The commit's expiry argument: when an ended flow expires; ``-`` for one running again after it ended (a
    completed flow being undone), which is kept again; ``''`` for one that runs on."""
    if status in _TERMINAL:
        return expire_at_ms
    return "-" if old_status in _TERMINAL else ""


def _conflict(reply: list[Any]) -> Conflict | None:
    if reply[0] == 1:
        return None
    _, current, current_version = reply
    return Conflict(current, current_version)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _field(fields: Mapping[bytes, bytes], name: bytes) -> bytes | None:
    # redis-py hands a stream entry's fields over as a dict.
    return fields.get(name) if isinstance(fields, Mapping) else None


def _text(value: bytes) -> str:
    # Ids come back from Redis as bytes; one written by something else than Plait may not even be UTF-8.
    return value.decode(errors="replace")
