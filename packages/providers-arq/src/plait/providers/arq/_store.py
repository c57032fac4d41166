"""Flow state and job movement in Redis: every change is one Lua script, so it is atomic.

The engine decides in Python; a script only persists its decision. :meth:`Store.commit` is a compare-and-set on
the flow's version: it writes the new state, finishes the job that produced the event, enqueues (or leases to
this worker) the jobs the engine asked for, deletes the jobs of cancelled steps, and publishes the flow's end, all
at once or not at all. A writer that lost the race gets the current state back and applies its event again,
which the engine ignores if it no longer matches; so an event delivered twice advances the flow once.

The scripts read and write a flow's keys together with the queues and lease sets, which are not in the flow's
hash slot: like arq itself, this needs a single Redis server (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from arq.connections import ArqRedis
from redis.commands.core import AsyncScript

from plait.providers.arq._keys import Job, Keys

__all__ = ["Claimed", "Conflict", "Enqueue", "Store", "now_ms"]


def now_ms() -> int:
    """Wall-clock milliseconds, the unit of arq's queue scores."""
    return int(time.time() * 1000)


# KEYS: flow, queue, job key, wake, deadlines
# ARGV: state, workflow, job id, payload, score, retention ms, deadline ms or '', flow id
_CREATE = """
local existing = redis.call('HGET', KEYS[1], 's')
if existing then return existing end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'v', '1', 'st', 'pending', 'wf', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, 63)
if ARGV[7] ~= '' then redis.call('ZADD', KEYS[5], ARGV[7], ARGV[8]) end
return false
"""

# KEYS: steps queue, flow queue, wake, leases, lease queues
# ARGV: now ms, limit, lease end ms, flow key prefix, job key prefix
# Returns {{job id, payload, state, version}...}, next due score or false (only when no ready job is left).
_CLAIM = """
local now = tonumber(ARGV[1])
local left = tonumber(ARGV[2])
local out = {}
for i = 1, 2 do
  local q = KEYS[i]
  while left > 0 do
    local ids = redis.call('ZRANGEBYSCORE', q, '-inf', now, 'LIMIT', 0, left)
    if #ids == 0 then break end
    for _, id in ipairs(ids) do
      redis.call('ZREM', q, id)
      local payload = redis.call('GET', ARGV[5] .. id)
      if payload then
        local flow_id = cjson.decode(payload)['a'][1]
        local st = redis.call('HMGET', ARGV[4] .. '{' .. flow_id .. '}', 's', 'v')
        redis.call('ZADD', KEYS[4], ARGV[3], id)
        redis.call('HSET', KEYS[5], id, q)
        out[#out + 1] = {id, payload, st[1], st[2]}
        left = left - 1
      end
    end
  end
end
local due = false
if left > 0 then
  -- Nothing ready is left: stale wake-up tokens would only wake idle workers for nothing.
  redis.call('DEL', KEYS[3])
  for i = 1, 2 do
    local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    if first[2] and (not due or tonumber(first[2]) < tonumber(due)) then due = first[2] end
  end
end
return {out, due}
"""

# KEYS: flow, leases, lease queues, deadlines
# ARGV: [1] expected version, [2] state, [3] status, [4] retention ms, [5] finished job id or '',
#       [6] deadline: '' keep, '-' remove, else ms, [7] flow id, [8] done channel or '', [9] cancel channel,
#       [10] cancelled job ids joined by newlines or '', [11] lease end ms, [12] job key prefix, [13] job count,
#       then 5 per job: queue, id, payload, score ('' = leased to the caller), wake list
_COMMIT = """
local v = redis.call('HGET', KEYS[1], 'v')
if v ~= ARGV[1] then
  if not v then return {0, false, false} end
  return {0, redis.call('HGET', KEYS[1], 's'), v}
end
local jp = ARGV[12]
redis.call('HSET', KEYS[1], 's', ARGV[2], 'v', tostring(tonumber(v) + 1), 'st', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[5] ~= '' then
  redis.call('DEL', jp .. ARGV[5])
  redis.call('ZREM', KEYS[2], ARGV[5])
  redis.call('HDEL', KEYS[3], ARGV[5])
end
if ARGV[6] == '-' then
  redis.call('ZREM', KEYS[4], ARGV[7])
elseif ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[7])
end
if ARGV[10] ~= '' then
  for id in string.gmatch(ARGV[10], '[^\\n]+') do redis.call('DEL', jp .. id) end
  redis.call('PUBLISH', ARGV[9], ARGV[10])
end
local n = tonumber(ARGV[13])
for i = 0, n - 1 do
  local b = 14 + i * 5
  local q, id, score, wake = ARGV[b], ARGV[b + 1], ARGV[b + 3], ARGV[b + 4]
  redis.call('SET', jp .. id, ARGV[b + 2], 'PX', ARGV[4])
  if score == '' then
    redis.call('ZADD', KEYS[2], ARGV[11], id)
    redis.call('HSET', KEYS[3], id, q)
  else
    redis.call('ZADD', q, score, id)
    redis.call('LPUSH', wake, '1')
    redis.call('LTRIM', wake, 0, 63)
  end
end
if ARGV[8] ~= '' then redis.call('PUBLISH', ARGV[8], ARGV[3]) end
return {1}
"""

# KEYS: leases, lease queues
# ARGV: job key prefix, then 3 per job: job id, score ('' = drop the job), wake list
_RELEASE = """
for i = 2, #ARGV, 3 do
  local id, score = ARGV[i], ARGV[i + 1]
  local q = redis.call('HGET', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  if score == '' then
    redis.call('DEL', ARGV[1] .. id)
  elseif q and redis.call('EXISTS', ARGV[1] .. id) == 1 then
    redis.call('ZADD', q, score, id)
    redis.call('LPUSH', ARGV[i + 2], '1')
    redis.call('LTRIM', ARGV[i + 2], 0, 63)
  end
end
return #ARGV
"""

# KEYS: leases, lease queues, lock, then 2 per workflow: deadlines, lock
# ARGV: now ms, lock ms, owner, job key prefix, limit
# Re-queues the jobs whose lease ran out (their worker died or hung) and returns, per workflow, the flows past
# their deadline. A part with something to do runs only for the caller that takes its lock, so one worker
# handles it at a time; an idle scan takes no lock.
_RECONCILE = """
local now, lock_ms, owner, jp, limit = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local requeued = 0
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
if #ids > 0 and redis.call('SET', KEYS[3], owner, 'NX', 'PX', lock_ms) then
  for _, id in ipairs(ids) do
    local q = redis.call('HGET', KEYS[2], id)
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    if q and redis.call('EXISTS', jp .. id) == 1 then
      redis.call('ZADD', q, now, id)
      local base = q
      if string.sub(q, -6) == '.steps' then base = string.sub(q, 1, -7) end
      redis.call('LPUSH', base .. ':wake', '1')
      redis.call('LTRIM', base .. ':wake', 0, 63)
      requeued = requeued + 1
    end
  end
end
local overdue = {}
for i = 4, #KEYS, 2 do
  local due = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now, 'LIMIT', 0, limit)
  if #due > 0 and redis.call('SET', KEYS[i + 1], owner, 'NX', 'PX', lock_ms) then
    overdue[#overdue + 1] = due
  else
    overdue[#overdue + 1] = {}
  end
end
return {requeued, overdue}
"""


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job taken from a queue, with its flow's state as it was (``None`` if the flow is gone)."""

    job_id: str
    job: Job
    state: bytes | None
    version: str | None


@dataclass(frozen=True, slots=True)
class Enqueue:
    """A job a commit creates: queued after ``delay`` seconds, or leased to the committing worker (``local``)."""

    job: Job
    delay: float = 0.0
    local: bool = False


@dataclass(frozen=True, slots=True)
class Conflict:
    """A commit lost the race: the flow's current state and version (``None`` when the flow no longer exists)."""

    state: bytes | None
    version: str | None


class Store:
    """Plait's Redis operations under one queue prefix.

    Args:
        redis: the connection pool (arq's client, configured with JSON job serialisation).
        keys: key names.
        retention: seconds a flow and its jobs stay after their last change.
        lease: seconds a claimed job stays leased without a heartbeat (the stall interval).
    """

    __slots__ = ("_claim", "_commit", "_create", "_reconcile", "_release", "keys", "lease", "redis", "retention_ms")

    def __init__(self, redis: ArqRedis, keys: Keys, *, retention: float, lease: float) -> None:
        self.redis = redis
        self.keys = keys
        self.retention_ms = max(1, int(retention * 1000))
        self.lease = lease
        self._create = redis.register_script(_CREATE)
        self._claim = redis.register_script(_CLAIM)
        self._commit = redis.register_script(_COMMIT)
        self._release = redis.register_script(_RELEASE)
        self._reconcile = redis.register_script(_RECONCILE)

    # -- flows --

    async def create(
        self, flow_id: str, workflow: str, state: bytes, start: Job, deadline: float | None
    ) -> bytes | None:
        """Stores a new flow and queues its start job; returns the existing state instead if the id is taken."""
        keys = self.keys
        job_id = keys.job_id(start)
        now = now_ms()
        existing = await _run(
            self._create,
            [
                keys.flow(flow_id),
                keys.queue(workflow),
                keys.job_key(job_id),
                keys.wake(workflow),
                keys.deadlines(workflow),
            ],
            [
                state,
                workflow,
                job_id,
                start.payload(now),
                now,
                self.retention_ms,
                "" if deadline is None else int(deadline * 1000),
                flow_id,
            ],
        )
        return cast(bytes | None, existing)

    async def load(self, flow_id: str) -> tuple[bytes, str] | None:
        """A flow's state and version, or ``None``."""
        state, version = await self.command("HMGET", self.keys.flow(flow_id), "s", "v")
        if state is None or version is None:
            return None
        return cast(bytes, state), cast(bytes, version).decode()

    async def status(self, flow_id: str) -> tuple[str, str] | None:
        """A flow's status and workflow name, or ``None``."""
        status, workflow = await self.command("HMGET", self.keys.flow(flow_id), "st", "wf")
        if status is None or workflow is None:
            return None
        return cast(bytes, status).decode(), cast(bytes, workflow).decode()

    # -- jobs --

    async def claim(self, workflow: str, limit: int) -> tuple[list[Claimed], float | None]:
        """Leases up to ``limit`` due jobs of ``workflow`` (steps first) to the caller.

        Returns:
            The jobs, and when no due job is left, the time (seconds since the epoch) the next one falls due.
        """
        keys = self.keys
        now = now_ms()
        jobs, due = await _run(
            self._claim,
            [keys.steps_queue(workflow), keys.queue(workflow), keys.wake(workflow), keys.leases, keys.lease_queues],
            [now, limit, now + int(self.lease * 1000), keys.flow_prefix, keys.job_key("")],
        )
        claimed = [
            Claimed(
                job_id.decode(),
                Job.parse(workflow, payload),
                state,
                None if version is None else version.decode(),
            )
            for job_id, payload, state, version in jobs
        ]
        return claimed, (None if due is None else int(due) / 1000)

    async def commit(
        self,
        flow_id: str,
        workflow: str,
        version: str,
        state: bytes,
        status: str,
        *,
        finished: str | None = None,
        deadline: float | None = None,
        forget_deadline: bool = False,
        done: bool = False,
        cancelled: Sequence[str] = (),
        jobs: Sequence[Enqueue] = (),
    ) -> Conflict | None:
        """Writes ``state`` if the flow is still at ``version``; ``None`` on success, else the current state.

        Args:
            finished: the id of the job whose event this is (its lease and payload are deleted).
            deadline: a deadline (seconds since the epoch) to watch for the flow.
            forget_deadline: stop watching the flow's deadline (it ended, or its timeout was handled).
            done: the flow has ended: announce ``status`` on its channel.
            cancelled: ids of jobs to stop (their payloads are deleted and their workers told).
            jobs: jobs to create.
        """
        keys = self.keys
        now = now_ms()
        args: list[str | int | bytes] = [
            version,
            state,
            status,
            self.retention_ms,
            finished or "",
            "-" if forget_deadline else "" if deadline is None else int(deadline * 1000),
            flow_id,
            keys.done(flow_id) if done else "",
            keys.cancel,
            "\n".join(cancelled),
            now + int(self.lease * 1000),
            keys.job_key(""),
            len(jobs),
        ]
        for each in jobs:
            job = each.job
            args += [
                keys.queue_of(job),
                keys.job_id(job),
                job.payload(now),
                "" if each.local else now + int(each.delay * 1000),
                keys.wake(job.workflow),
            ]
        reply = await _run(
            self._commit, [keys.flow(flow_id), keys.leases, keys.lease_queues, keys.deadlines(workflow)], args
        )
        if reply[0] == 1:
            return None
        _, current, current_version = reply
        return Conflict(current, None if current_version is None else current_version.decode())

    async def release(self, jobs: Mapping[str, Job], *, hand_back: bool, delay: float = 0.0) -> None:
        """Ends the leases of ``jobs``: hands them back to their queues (due after ``delay`` seconds), or drops
        them for good."""
        if not jobs:
            return
        keys = self.keys
        due = now_ms() + int(delay * 1000)
        args: list[str | int] = [keys.job_key("")]
        for job_id, job in jobs.items():
            args += [job_id, due if hand_back else "", keys.wake(job.workflow)]
        await _run(self._release, [keys.leases, keys.lease_queues], args)

    async def heartbeat(self, job_ids: Sequence[str]) -> None:
        """Extends the leases of ``job_ids`` that still exist by one stall interval."""
        if not job_ids:
            return
        until = now_ms() + int(self.lease * 1000)
        pairs: list[str | int] = []
        for job_id in job_ids:
            pairs += [until, job_id]
        await self.command("ZADD", self.keys.leases, "XX", *pairs)

    async def reconcile(
        self, workflows: Sequence[str], owner: str, interval: float, limit: int = 100
    ) -> tuple[int, dict[str, list[str]]]:
        """Re-queues stalled jobs and lists overdue flows of ``workflows``, for whoever holds the locks.

        Returns:
            How many jobs were handed back, and per workflow the ids of flows past their deadline.
        """
        keys = self.keys
        scan_keys = [keys.leases, keys.lease_queues, keys.lock]
        for workflow in workflows:
            scan_keys += [keys.deadlines(workflow), keys.workflow_lock(workflow)]
        requeued, overdue = await _run(
            self._reconcile, scan_keys, [now_ms(), max(1, int(interval * 1000)), owner, keys.job_key(""), limit]
        )
        found = {wf: [f.decode() for f in ids] for wf, ids in zip(workflows, overdue, strict=True) if ids}
        return int(requeued), found

    async def forget_deadline(self, workflow: str, flow_id: str) -> None:
        """Removes a flow from its workflow's deadlines (it ended, or its timeout has been handled)."""
        await self.command("ZREM", self.keys.deadlines(workflow), flow_id)

    async def wait_for_work(self, workflow: str, timeout: float) -> bool:
        """Blocks until a wake-up token for ``workflow`` arrives or ``timeout`` seconds pass."""
        reply = await self.command("BLPOP", self.keys.wake(workflow), f"{max(timeout, 0.01):.3f}")
        return reply is not None

    async def command(self, *args: str | bytes | int | float) -> Any:
        """Runs one Redis command and returns its raw reply."""
        return await self.redis.execute_command(*args)  # type: ignore[no-untyped-call]  # unannotated in redis-py


async def _run(script: AsyncScript, keys: Sequence[str], args: Sequence[str | bytes | int]) -> Any:
    # AsyncScript sends EVALSHA and loads the script on NOSCRIPT (after a Redis restart or SCRIPT FLUSH).
    return await script(keys=list(keys), args=list(args))
