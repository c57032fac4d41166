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
- ``P:leases`` (sorted set): jobs being run, scored by when their lease ends in ms; ``P:lease-info`` (hash):
  job id -> its lease record, the JSON array ``[queue, wake-up list, owner]``: where to hand the job back when
  the lease runs out, and which worker holds it.
- ``P:reconcile``, ``P.<workflow>:reconcile`` (strings): short locks, so one reconciler scans at a time.

Every key of one flow carries the ``{F}`` hash tag. Channels: ``P:done:F`` (the flow ended: its status) and
``P:cancel`` (job ids to stop, as a JSON array). No list is ever joined with a delimiter: a flow id holding one
could otherwise name other flows' jobs.

A flow's hash also has ``unreadable`` once a worker found its state unreadable and failed it: the bytes it found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from arq.constants import job_key_prefix
from arq.jobs import serialize_job

from plait.core.engine import Action, FlowState, RunComplete, RunOnError, RunRollback, RunStep
from plait.core.errors import CorruptFlowError

__all__ = ["Job", "JobKind", "Keys", "MalformedJobError", "decode_state", "dumps", "loads", "shorten"]

JobKind = Literal["start", "step", "rollback", "complete", "on_error"]

_FUNCTIONS: dict[str, JobKind] = {
    "plait.start": "start",
    "plait.step": "step",
    "plait.rollback": "rollback",
    "plait.complete": "complete",
    "plait.on_error": "on_error",
}
_FLOW_QUEUE_KINDS = frozenset({"start", "complete", "on_error"})
_STEP_KINDS = frozenset({"step", "rollback"})


def dumps(value: Any) -> bytes:
    """Compact JSON; arq's ``job_serializer`` and Plait's state encoding."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def loads(raw: bytes | str) -> Any:
    """JSON back to Python; arq's ``job_deserializer``. Nothing is ever unpickled."""
    return json.loads(raw)


def shorten(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to about ``limit`` characters: safe to put in a log line or an error message.

    A repr escapes newlines and control characters, so a value read from Redis cannot forge log lines.
    """
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}...({len(text)} chars)"


class MalformedJobError(ValueError):
    """A job payload that is not one of Plait's jobs; the message says why."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
        """Reads a job back from arq's JSON format, checking every field Plait writes.

        Raises:
            MalformedJobError: it is not JSON, not in arq's format, or not a Plait job; the message says why.
        """
        try:
            raw = loads(payload)
        except (ValueError, RecursionError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise MalformedJobError(f"not JSON ({type(error).__name__})") from None
        if not isinstance(raw, dict):
            raise MalformedJobError(f"not an arq job (a JSON {type(raw).__name__}, not an object)")
        for field, what in (("f", "function"), ("a", "arguments"), ("k", "keyword arguments"), ("t", "try")):
            if field not in raw:
                raise MalformedJobError(f"not an arq job (no {what}, '{field}')")
        if "et" not in raw:
            raise MalformedJobError("not an arq job (no enqueue time, 'et')")
        function, args = raw["f"], raw["a"]
        kind = _FUNCTIONS.get(function) if isinstance(function, str) else None
        if kind is None:
            raise MalformedJobError(f"unknown function {shorten(function)}")
        if not isinstance(args, list) or len(args) != 4:
            count = len(args) if isinstance(args, list) else type(args).__name__
            raise MalformedJobError(f"{function} takes 4 arguments (flow id, kind, step, attempt), got {count}")
        if raw["k"] != {} or not _is_int(raw["t"]) or not _is_int(raw["et"]):
            raise MalformedJobError("not an arq job as Plait writes it (keyword arguments, try or enqueue time)")
        flow_id, job_kind, step, attempt = args
        if not isinstance(flow_id, str) or not flow_id:
            raise MalformedJobError(f"its flow id {shorten(flow_id)} is not a string")
        if job_kind != kind:
            raise MalformedJobError(f"{function} with the kind {shorten(job_kind)}")
        if not isinstance(step, str) or not _is_int(attempt):
            raise MalformedJobError(f"its step {shorten(step)} or attempt {shorten(attempt)} has the wrong type")
        if (kind in _STEP_KINDS) != (step != "" and attempt >= 1) or (kind not in _STEP_KINDS and attempt != 0):
            raise MalformedJobError(f"a {kind} job with step {shorten(step)} and attempt {attempt}")
        return cls(kind, workflow, flow_id, step, attempt)

    def payload(self, enqueue_ms: int) -> bytes:
        """The job in arq's format, serialised as JSON."""
        args = (self.flow_id, self.kind, self.step, self.attempt)
        return serialize_job(f"plait.{self.kind}", args, {}, max(self.attempt, 1), enqueue_ms, serializer=dumps)

    @property
    def on_steps_queue(self) -> bool:
        """Steps and rollbacks go to ``P.<workflow>.steps``; the rest to ``P.<workflow>``."""
        return self.kind not in _FLOW_QUEUE_KINDS


# Container fields of a state that the engine reads as such: checked, so that a state with, say, a list where
# its steps belong is reported as unreadable rather than crashing every worker that runs it.
_SHAPES: dict[str, type | tuple[type, ...]] = {
    "workflow": str,
    "meta": dict,
    "steps": dict,
    "results": dict,
    "rollbacks": list,
    "rollback_errors": list,
    "error": (dict, type(None)),
    "phase": str,
}


def decode_state(flow_id: str, raw: bytes) -> FlowState:
    """Reads the stored state of flow ``flow_id``.

    Raises:
        CorruptFlowError: it is not JSON, not a flow state, or the state of another flow.
    """
    try:
        data = loads(raw)
    except (ValueError, RecursionError) as error:
        raise CorruptFlowError(flow_id, f"not JSON ({error})") from None
    if not isinstance(data, dict):
        raise CorruptFlowError(flow_id, f"a JSON {type(data).__name__}, not an object")
    try:
        state = FlowState.from_dict(data)
    except (TypeError, ValueError, KeyError) as error:
        raise CorruptFlowError(flow_id, f"not a flow state ({shorten(str(error), 160)})") from None
    for field, expected in _SHAPES.items():
        value = getattr(state, field, None)
        if field in data and not isinstance(value, expected):
            raise CorruptFlowError(flow_id, f"its field '{field}' holds a {type(value).__name__}")
    if not all(isinstance(record, dict) for record in state.steps.values()):
        raise CorruptFlowError(flow_id, "its field 'steps' holds something other than step records")
    if state.flow_id != flow_id:
        raise CorruptFlowError(flow_id, f"it is the state of flow {shorten(state.flow_id)}")
    return state


class Keys:
    """Every key and channel name under one queue prefix."""

    __slots__ = ("cancel", "flow_prefix", "flow_suffix", "lease_info", "leases", "lock", "prefix")

    def __init__(self, prefix: str) -> None:
        if not prefix or any(c in prefix for c in "{}\n ") or not prefix.isprintable():
            raise ValueError(f"Invalid queue prefix {prefix!r}: use letters, digits, '.', ':', '_' or '-'")
        self.prefix = prefix
        self.flow_prefix = f"{prefix}:flow:{{"
        self.flow_suffix = "}"
        self.leases = f"{prefix}:leases"
        self.lease_info = f"{prefix}:lease-info"
        self.lock = f"{prefix}:reconcile"
        self.cancel = f"{prefix}:cancel"

    def flow(self, flow_id: str) -> str:
        """The hash of flow ``flow_id``."""
        return f"{self.flow_prefix}{flow_id}{self.flow_suffix}"

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

    def lease_record(self, queue: str, workflow: str, owner: str) -> bytes:
        """What ``P:lease-info`` holds for a job of ``queue`` leased to ``owner``: ``[queue, wake-up list, owner]``."""
        return dumps([queue, self.wake(workflow), owner])
