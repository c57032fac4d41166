"""Redis key names and the jobs that move through them.

With the queue prefix ``P`` (``"workflow"`` by default):

- ``P:flow:{F}`` (hash): flow ``F``. ``s`` is its engine state (JSON), ``v`` a version bumped by every write,
  ``st`` its status, ``wf`` its workflow, ``n`` the ``P:ends:<owner>`` channel of the provider that started it (if
  any). It has no expiry until the flow ends; then it expires after the retention.
  Fields ``i:<node>:<index>`` hold for-each items, one record each (the engine keeps them apart from the state).
- ``P:events:{F}`` (stream): the flow's events, one entry each (field ``e``: the event record as a JSON array,
  ``[type, seq, at, ...]``; an object in streams written before records were tuples).
- ``arq:job:P:{F}:<kind>[:<name>]`` (string): one job in arq's format, as JSON:
  ``{"f": "plait.step", "a": [F, kind, step, attempt, extra], "k": {}, "t": try, "et": enqueued ms}``.
- ``P.<workflow>`` (sorted set): the arq queue of flow jobs (start, on_complete, on_error, child flows,
  operations), job ids scored by due time in ms (a new flow's start to the microsecond, so that flows stored in
  the same millisecond start in the order they were stored); ``P.<workflow>.steps``: steps, rollbacks and
  evaluations.
- ``P.<workflow>:wake`` (list): wake-up tokens that idle workers of the workflow block on.
- ``P.<workflow>:idle`` and ``P.<workflow>:idle-until`` (sorted sets): the workflow's workers that wait idle,
  each as ``"<lease ms>:<owner>"``, scored by their free slots and by when the registration runs out (ms). A new
  flow's start job is leased straight to the one with the most free slots and pushed to its inbox,
  ``P.<workflow>:inbox:<owner>`` (list), as ``"<lease end ms>\n<job id>\n<payload>\n<state>"``, instead of
  queued: it starts without a claim's round trip.
- ``P.<workflow>:timers`` (sorted set): flows of the workflow scored by their next wake-up in ms.
- ``P:index`` and ``P:index:wf:<workflow>``, ``P:index:st:<status>``, ``P:index:wfst:<workflow>:<status>``,
  ``P:index:parent:{F}`` (sorted sets): flow ids scored by creation time in seconds (exactly the state's), for
  listings.
- ``P:expiring`` (sorted set): ended flows, as the JSON array ``[workflow, F, parent id or null]``, scored by when
  they expire in ms: the sweep removes expired flows from the listing indexes.
- ``P:leases`` (sorted set): jobs being run, scored by when their lease ends in ms; ``P:lease-info`` (hash):
  job id -> its lease record, the JSON array ``[queue, wake-up list, owner]``: where to hand the job back when
  the lease runs out, and which worker holds it.
- ``P:reconcile`` (string): a short lock, so one reconciler scans at a time.

Every key of one flow carries the ``{F}`` hash tag. Channels: ``P:done:F`` (the flow ended: its final state, or
its status when the state is large), ``P:ends:<owner>`` (the same for every flow that provider ``owner`` started,
after the flow id and a newline, which no flow id holds: ids are printable) and ``P:cancel`` (what to stop, as a
JSON object: ``{"jobs": [job ids], "fan_outs": [[flow id, node], ...]}``). No list is ever joined with a
delimiter: a flow id holding one could otherwise name other flows' jobs.

A flow's hash also has ``unreadable`` once a worker found its state unreadable and failed it: the bytes it found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from arq.constants import job_key_prefix
from arq.jobs import serialize_job

from plait.core.engine import Action, Evaluate, FlowState, RunComplete, RunOnError, RunRollback, RunStep
from plait.core.errors import CorruptFlowError

__all__ = ["Job", "JobKind", "Keys", "MalformedJobError", "decode_state", "dumps", "loads", "shorten"]

JobKind = Literal["start", "step", "rollback", "complete", "on_error", "eval", "spawn", "op"]

_FUNCTIONS: dict[str, JobKind] = {f"plait.{kind}": kind for kind in JobKind.__args__}  # type: ignore[attr-defined]
_STEPS_QUEUE_KINDS = frozenset({"step", "rollback", "eval"})
_OPS = frozenset({"cancel", "compensate", "retry_compensation", "child"})


def dumps(value: Any) -> bytes:
    """Compact JSON; arq's ``job_serializer`` and Plait's state encoding.

    orjson writes it several times faster than :mod:`json`; what orjson refuses (an int beyond 64 bits, nesting
    deeper than 255) the standard library writes.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def loads(raw: bytes | str) -> Any:
    """JSON back to Python; arq's ``job_deserializer``. Nothing is ever unpickled.

    orjson reads it several times faster than :mod:`json`, but turns an int beyond 64 bits into a float: JSON with
    a run of 19 digits or more, and whatever orjson refuses (``NaN``, say, or a lone surrogate), goes through
    :mod:`json`, which reads it exactly as Python wrote it.
    """
    if isinstance(raw, bytes) and _LONG_RUN not in raw.translate(_DIGITS):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


# Each byte of a text as b"1" for a digit, else b"0": a run of 19 digits is then a plain substring search, about
# eight times faster than the regular expression rb"\d{19}" over a flow's state (which took longer than orjson).
_DIGITS = bytes(0x31 if 0x30 <= i <= 0x39 else 0x30 for i in range(256))
_LONG_RUN = b"1" * 19


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


@dataclass(frozen=True, slots=True, eq=False)
class Job:
    """One unit of work of a flow.

    Kinds: ``start`` it; run a ``step`` or ``rollback`` attempt (of for-each item ``index``); call ``complete``
    (``on_complete``) or ``on_error``; ``eval`` the definition's callables (``attempt`` is the evaluation's id,
    ``extra["targets"]`` what to evaluate); ``spawn`` the child flow of sub-workflow ``step`` (``extra``: its
    ``workflow``, ``child`` id and ``data``); or apply an ``op`` to the flow (``extra["op"]``: ``cancel`` or
    ``compensate`` with a ``reason``, ``retry_compensation``, or ``child``: a child of node ``step`` settled).
    """

    kind: JobKind
    workflow: str
    flow_id: str
    step: str = ""
    attempt: int = 0
    index: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_action(cls, workflow: str, flow_id: str, action: Action) -> Job:
        """The job that carries out a ``RunStep``, ``RunRollback``, ``RunComplete``, ``RunOnError`` or ``Evaluate``."""
        if isinstance(action, RunStep):
            return cls("step", workflow, flow_id, action.step, action.attempt, action.index)
        if isinstance(action, RunRollback):
            return cls("rollback", workflow, flow_id, action.step, action.attempt, action.index)
        if isinstance(action, RunComplete):
            return cls("complete", workflow, flow_id)
        if isinstance(action, RunOnError):
            return cls("on_error", workflow, flow_id)
        if isinstance(action, Evaluate):
            return cls(
                "eval", workflow, flow_id, "", action.eval_id, extra={"targets": [list(t) for t in action.targets]}
            )
        raise TypeError(f"No job carries out {action!r}")

    def action(self) -> Action:
        """The engine action this job carries out (``start``, ``spawn`` and ``op`` jobs carry none)."""
        if self.kind == "step":
            return RunStep(self.step, self.attempt, 0.0, self.index)
        if self.kind == "rollback":
            return RunRollback(self.step, self.attempt, 0.0, self.index)
        if self.kind == "complete":
            return RunComplete()
        if self.kind == "on_error":
            return RunOnError()
        if self.kind == "eval":
            return Evaluate(self.attempt, tuple((str(what), str(name)) for what, name in self.extra["targets"]))
        raise TypeError(f"A {self.kind} job carries out no engine action")

    @property
    def name(self) -> str:
        """What tells this job apart from the other jobs of its kind in its flow (part of its id)."""
        kind = self.kind
        if kind in ("step", "rollback"):
            base = f"{self.step}:{self.attempt}"
            return base if self.index is None else f"{base}:{self.index}"
        if kind == "eval":
            return str(self.attempt)
        if kind == "spawn":
            return self.step
        if kind == "op":
            op = self.extra["op"]
            return f"child:{self.step}:{self.extra['status']}" if op == "child" else str(op)
        return ""

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
        for key, what in (("f", "function"), ("a", "arguments"), ("k", "keyword arguments"), ("t", "try")):
            if key not in raw:
                raise MalformedJobError(f"not an arq job (no {what}, '{key}')")
        if "et" not in raw:
            raise MalformedJobError("not an arq job (no enqueue time, 'et')")
        function, args = raw["f"], raw["a"]
        kind = _FUNCTIONS.get(function) if isinstance(function, str) else None
        if kind is None:
            raise MalformedJobError(f"unknown function {shorten(function)}")
        if not isinstance(args, list) or len(args) != 5:
            count = len(args) if isinstance(args, list) else type(args).__name__
            raise MalformedJobError(f"{function} takes 5 arguments (flow id, kind, step, attempt, extra), got {count}")
        if raw["k"] != {} or not _is_int(raw["t"]) or not _is_int(raw["et"]):
            raise MalformedJobError("not an arq job as Plait writes it (keyword arguments, try or enqueue time)")
        flow_id, job_kind, step, attempt, extra = args
        if not isinstance(flow_id, str) or not flow_id:
            raise MalformedJobError(f"its flow id {shorten(flow_id)} is not a string")
        if job_kind != kind:
            raise MalformedJobError(f"{function} with the kind {shorten(job_kind)}")
        if not isinstance(step, str) or not _is_int(attempt) or not isinstance(extra, dict):
            raise MalformedJobError(f"its step {shorten(step)}, attempt {shorten(attempt)} or extra has the wrong type")
        index = extra.pop("i", None)
        if index is not None and (not _is_int(index) or index < 0 or kind not in ("step", "rollback")):
            raise MalformedJobError(f"a {kind} job with item index {shorten(index)}")
        problem = _check_kind(kind, step, attempt, extra)
        if problem:
            raise MalformedJobError(problem)
        return cls(kind, workflow, flow_id, step, attempt, index, extra)

    def payload(self, enqueue_ms: int) -> bytes:
        """The job in arq's format, serialised as JSON."""
        extra = dict(self.extra)
        if self.index is not None:
            extra["i"] = self.index
        args = (self.flow_id, self.kind, self.step, self.attempt, extra)
        return serialize_job(f"plait.{self.kind}", args, {}, max(self.attempt, 1), enqueue_ms, serializer=dumps)

    @property
    def on_steps_queue(self) -> bool:
        """Steps, rollbacks and evaluations go to ``P.<workflow>.steps``; the rest to ``P.<workflow>``."""
        return self.kind in _STEPS_QUEUE_KINDS


def _check_kind(kind: str, step: str, attempt: int, extra: dict[str, Any]) -> str:
    """What is wrong with the fields of a job of ``kind`` ('' when nothing is)."""
    if kind in ("step", "rollback"):
        ok = step != "" and attempt >= 1 and not extra
    elif kind == "eval":
        targets = extra.get("targets")
        ok = (
            step == ""
            and attempt >= 1
            and isinstance(targets, list)
            and all(isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t) for t in targets)
        )
    elif kind == "spawn":
        ok = (
            step != ""
            and attempt == 0
            and isinstance(extra.get("workflow"), str)
            and isinstance(extra.get("child"), str)
        )
    elif kind == "op":
        op = extra.get("op")
        ok = attempt == 0 and op in _OPS and (op != "child" or (step != "" and isinstance(extra.get("status"), str)))
    else:
        ok = step == "" and attempt == 0 and not extra
    return "" if ok else f"a {kind} job with step {shorten(step)}, attempt {attempt} and extra {shorten(extra)}"


# Container fields of a state that the engine reads as such: checked, so that a state with, say, a list where
# its steps belong is reported as unreadable rather than crashing every worker that runs it.
_SHAPES: dict[str, type | tuple[type, ...]] = {
    "workflow": str,
    "meta": dict,
    "nodes": dict,
    "results": dict,
    "signals": dict,
    "evals": dict,
    "rollbacks": list,
    "compensated": list,
    "rollback_errors": list,
    "error": (dict, type(None)),
    "parent": (dict, type(None)),
    "policy": (dict, type(None)),
    "progress": (dict, type(None)),
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
    for name, expected in _SHAPES.items():
        value = getattr(state, name, None)
        if name in data and not isinstance(value, expected):
            raise CorruptFlowError(flow_id, f"its field '{name}' holds a {type(value).__name__}")
    if not all(isinstance(record, dict) for record in state.nodes.values()):
        raise CorruptFlowError(flow_id, "its field 'nodes' holds something other than node records")
    if state.flow_id != flow_id:
        raise CorruptFlowError(flow_id, f"it is the state of flow {shorten(state.flow_id)}")
    return state


class Keys:
    """Every key and channel name under one queue prefix."""

    __slots__ = ("cancel", "expiring", "flow_prefix", "flow_suffix", "index", "lease_info", "leases", "lock", "prefix")

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
        self.index = f"{prefix}:index"
        self.expiring = f"{prefix}:expiring"

    def flow(self, flow_id: str) -> str:
        """The hash of flow ``flow_id``."""
        return f"{self.flow_prefix}{flow_id}{self.flow_suffix}"

    def events(self, flow_id: str) -> str:
        """The stream of flow ``flow_id``'s events."""
        return f"{self.prefix}:events:{{{flow_id}}}"

    def done(self, flow_id: str) -> str:
        """The channel that announces the end of flow ``flow_id``."""
        return f"{self.prefix}:done:{flow_id}"

    def ends(self, owner: str) -> str:
        """The channel that announces the ends of the flows provider ``owner`` started."""
        return f"{self.prefix}:ends:{owner}"

    def queue(self, workflow: str) -> str:
        """The arq queue of a workflow's flow jobs (start, on_complete, on_error, child flows, operations)."""
        return f"{self.prefix}.{workflow}"

    def steps_queue(self, workflow: str) -> str:
        """The arq queue of a workflow's step, rollback and evaluation jobs."""
        return f"{self.prefix}.{workflow}.steps"

    def wake(self, workflow: str) -> str:
        """The list idle workers of ``workflow`` block on."""
        return f"{self.prefix}.{workflow}:wake"

    def idle(self, workflow: str) -> str:
        """The sorted set of the workflow's idle workers, ``"<lease ms>:<owner>"`` scored by their free slots."""
        return f"{self.prefix}.{workflow}:idle"

    def idle_until(self, workflow: str) -> str:
        """The sorted set of the workflow's idle workers scored by when their registration runs out (ms)."""
        return f"{self.prefix}.{workflow}:idle-until"

    def inbox_prefix(self, workflow: str) -> str:
        """The start of the inbox names of the workflow's idle workers (the owner's id follows)."""
        return f"{self.prefix}.{workflow}:inbox:"

    def timers(self, workflow: str) -> str:
        """The sorted set of the workflow's flows scored by their next wake-up (a sleep, a signal's timeout, a
        deadline) in ms."""
        return f"{self.prefix}.{workflow}:timers"

    def index_workflow(self, workflow: str) -> str:
        """The listing index of a workflow's flows."""
        return f"{self.index}:wf:{workflow}"

    def index_status(self, status: str) -> str:
        """The listing index of the flows with ``status``."""
        return f"{self.index}:st:{status}"

    def index_workflow_status(self, workflow: str, status: str) -> str:
        """The listing index of a workflow's flows with ``status``."""
        return f"{self.index}:wfst:{workflow}:{status}"

    def index_parent(self, parent_id: str) -> str:
        """The listing index of the children of flow ``parent_id``."""
        return f"{self.index}:parent:{{{parent_id}}}"

    @staticmethod
    def expiring_member(workflow: str, flow_id: str, parent_id: str | None) -> str:
        """An ended flow in the expiring set (scored by when it expires): what the index sweep needs of it."""
        return dumps([workflow, flow_id, parent_id]).decode()

    def status_indexes(self, workflow: str, status: str) -> list[str]:
        """The two listing indexes a flow's status puts it in."""
        return [self.index_status(status), self.index_workflow_status(workflow, status)]

    item_prefix = "i:"
    """The start of the field names of a flow's for-each items."""

    def item_field(self, node: str, index: int) -> str:
        """The field of a flow's hash that holds for-each ``node``'s item ``index``."""
        return f"{self.item_prefix}{node}:{index}"

    def job_id(self, job: Job) -> str:
        """A deterministic id: the same action of the same flow always gets the same job id."""
        base = f"{self.prefix}:{{{job.flow_id}}}:{job.kind}"
        name = job.name
        return f"{base}:{name}" if name else base

    def job_key(self, job_id: str) -> str:
        """arq's key of a job's payload."""
        return f"{job_key_prefix}{job_id}"

    def queue_of(self, job: Job) -> str:
        """The queue ``job`` waits in."""
        return self.steps_queue(job.workflow) if job.on_steps_queue else self.queue(job.workflow)

    def lease_record(self, queue: str, workflow: str, owner: str) -> bytes:
        """What ``P:lease-info`` holds for a job of ``queue`` leased to ``owner``: ``[queue, wake-up list, owner]``."""
        return dumps([queue, self.wake(workflow), owner])
