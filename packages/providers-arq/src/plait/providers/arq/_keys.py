"""Redis key names and the jobs that move through them.

With the queue prefix ``P`` (``"workflow"`` by default):

- ``P:flow:{F}`` (hash): flow ``F``. ``s`` is its engine state (JSON), ``v`` a version bumped by every write,
  ``st`` its status, ``wf`` its workflow.
- ``arq:job:P:{F}:<kind>[:<step>:<attempt>]`` (string): one job in arq's format, as JSON:
  ``{"f": "plait.step", "a": [F, kind, step, attempt], "k": {}, "t": try, "et": enqueued ms}``.
- ``P.<workflow>`` (sorted set): the arq queue of flow jobs (start, on_complete, on_error), job ids scored by
  due time in ms; ``P.<workflow>.steps``: the arq queue of step and rollback jobs.
- ``P.<workflow>:wake`` (list): wake-up tokens that idle workers of the workflow block on.
- ``P.<workflow>:deadlines`` (sorted set): flows of the workflow scored by their deadline in ms.
- ``P:leases`` (sorted set): jobs being run, scored by when their lease ends in ms; ``P:lease-queues`` (hash):
  job id -> the queue to hand it back to when the lease runs out.
- ``P:reconcile``, ``P.<workflow>:reconcile`` (strings): short locks, so one reconciler scans at a time.

Every key of one flow carries the ``{F}`` hash tag. Channels: ``P:done:F`` (the flow ended: its status) and
``P:cancel`` (job ids to stop, one per line).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from arq.constants import job_key_prefix
from arq.jobs import deserialize_job_raw, serialize_job

from plait.core.engine import Action, RunComplete, RunOnError, RunRollback, RunStep

__all__ = ["Job", "JobKind", "Keys", "dumps", "loads"]

JobKind = Literal["start", "step", "rollback", "complete", "on_error"]

_FUNCTIONS: dict[str, JobKind] = {
    "plait.start": "start",
    "plait.step": "step",
    "plait.rollback": "rollback",
    "plait.complete": "complete",
    "plait.on_error": "on_error",
}
_FLOW_QUEUE_KINDS = frozenset({"start", "complete", "on_error"})


def dumps(value: Any) -> bytes:
    """Compact JSON; arq's ``job_serializer`` and Plait's state encoding."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def loads(raw: bytes | str) -> Any:
    """JSON back to Python; arq's ``job_deserializer``. Nothing is ever unpickled."""
    return json.loads(raw)


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of work of a flow: start it, run a step or rollback attempt, or call a callback."""

    kind: JobKind
    workflow: str
    flow_id: str
    step: str = ""
    attempt: int = 0

    @classmethod
    def for_action(cls, workflow: str, flow_id: str, action: Action) -> Job:
        """The job that carries out ``action`` (a ``RunStep``, ``RunRollback``, ``RunComplete`` or ``RunOnError``)."""
        if isinstance(action, RunStep):
            return cls("step", workflow, flow_id, action.step, action.attempt)
        if isinstance(action, RunRollback):
            return cls("rollback", workflow, flow_id, action.step, action.attempt)
        if isinstance(action, RunComplete):
            return cls("complete", workflow, flow_id)
        if isinstance(action, RunOnError):
            return cls("on_error", workflow, flow_id)
        raise TypeError(f"No job carries out {action!r}")

    def action(self) -> Action:
        """The engine action this job carries out (not for ``start`` jobs, which carry none)."""
        if self.kind == "step":
            return RunStep(self.step, self.attempt)
        if self.kind == "rollback":
            return RunRollback(self.step, self.attempt)
        if self.kind == "complete":
            return RunComplete()
        if self.kind == "on_error":
            return RunOnError()
        raise TypeError(f"A {self.kind} job carries out no engine action")

    @classmethod
    def parse(cls, workflow: str, payload: bytes) -> Job:
        """Reads a job back from arq's JSON format."""
        function, args, _, _, _ = deserialize_job_raw(payload, deserializer=loads)
        flow_id, _, step, attempt = args
        return cls(_FUNCTIONS[function], workflow, str(flow_id), str(step), int(attempt))

    def payload(self, enqueue_ms: int) -> bytes:
        """The job in arq's format, serialised as JSON."""
        args = (self.flow_id, self.kind, self.step, self.attempt)
        return serialize_job(f"plait.{self.kind}", args, {}, max(self.attempt, 1), enqueue_ms, serializer=dumps)

    @property
    def on_steps_queue(self) -> bool:
        """Steps and rollbacks go to ``P.<workflow>.steps``; the rest to ``P.<workflow>``."""
        return self.kind not in _FLOW_QUEUE_KINDS


class Keys:
    """Every key and channel name under one queue prefix."""

    __slots__ = ("cancel", "flow_prefix", "lease_queues", "leases", "lock", "prefix")

    def __init__(self, prefix: str) -> None:
        if not prefix or any(c in prefix for c in "{}\n "):
            raise ValueError(f"Invalid queue prefix {prefix!r}: use letters, digits, '.', ':', '_' or '-'")
        self.prefix = prefix
        self.flow_prefix = f"{prefix}:flow:"
        self.leases = f"{prefix}:leases"
        self.lease_queues = f"{prefix}:lease-queues"
        self.lock = f"{prefix}:reconcile"
        self.cancel = f"{prefix}:cancel"

    def flow(self, flow_id: str) -> str:
        """The hash of flow ``flow_id``."""
        return f"{self.flow_prefix}{{{flow_id}}}"

    def done(self, flow_id: str) -> str:
        """The channel that announces the end of flow ``flow_id``."""
        return f"{self.prefix}:done:{flow_id}"

    def queue(self, workflow: str) -> str:
        """The arq queue of a workflow's flow jobs (start, on_complete, on_error)."""
        return f"{self.prefix}.{workflow}"

    def steps_queue(self, workflow: str) -> str:
        """The arq queue of a workflow's step and rollback jobs."""
        return f"{self.prefix}.{workflow}.steps"

    def wake(self, workflow: str) -> str:
        """The list idle workers of ``workflow`` block on."""
        return f"{self.prefix}.{workflow}:wake"

    def deadlines(self, workflow: str) -> str:
        """The sorted set of the workflow's flow deadlines."""
        return f"{self.prefix}.{workflow}:deadlines"

    def workflow_lock(self, workflow: str) -> str:
        """The lock of the workflow's deadline scan."""
        return f"{self.prefix}.{workflow}:reconcile"

    def job_id(self, job: Job) -> str:
        """A deterministic id: the same action of the same flow always gets the same job id."""
        base = f"{self.prefix}:{{{job.flow_id}}}:{job.kind}"
        return f"{base}:{job.step}:{job.attempt}" if job.step else base

    def job_key(self, job_id: str) -> str:
        """arq's key of a job's payload."""
        return f"{job_key_prefix}{job_id}"

    def queue_of(self, job: Job) -> str:
        """The queue ``job`` waits in."""
        return self.steps_queue(job.workflow) if job.on_steps_queue else self.queue(job.workflow)
