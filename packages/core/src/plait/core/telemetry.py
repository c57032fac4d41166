"""OpenTelemetry tracing, when the optional extra is installed (``pip install plait-core[otel]``) and the
application configured a tracer provider; otherwise every function here does nothing, at the cost of one check.

The trace of a flow:

* ``plait.execute <workflow>``: a short span in the caller of ``execute()`` (a child of whatever span is current
  there). Its W3C trace context (``traceparent``, ``tracestate``) is stored in the flow's ``meta``, so it travels
  with the flow to every process.
* ``plait.step <workflow>.<step>`` (and ``plait.rollback``, ``plait.on_complete``, ``plait.on_error``,
  ``plait.evaluate``): one span per handler attempt, in whichever process runs it, a child of the execute span;
  attributes name the flow, workflow, step, item, attempt and outcome.
* ``plait.flow <workflow>``: the whole flow, from its creation to its end, recorded by the process that ends it
  (also a child of the execute span), with its final status.

While a handler runs, its span is current: spans the handler opens (an HTTP client's, say) are its children, and
``ctx.log`` records carry ``trace_id`` and ``span_id``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plait.core.engine import FlowState

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, SpanKind, Status, StatusCode

    _INSTALLED = True
    _UNCONFIGURED: tuple[type, ...] = (ProxyTracerProvider, NoOpTracerProvider)
except ImportError:  # the optional extra is not installed
    _INSTALLED = False

__all__ = [
    "current_ids",
    "enabled",
    "flow_finished",
    "handler_span",
    "set_outcome",
    "traced_meta",
    "use_tracer_provider",
]

_provider: Any = None


def use_tracer_provider(provider: Any) -> None:
    """Records Plait's spans with ``provider`` (an OpenTelemetry ``TracerProvider``) rather than the global one;
    ``None`` goes back to the global provider."""
    global _provider
    _provider = provider


def enabled() -> bool:
    """Whether spans are recorded: OpenTelemetry is installed and a tracer provider was configured (globally, or
    with :func:`use_tracer_provider`)."""
    if not _INSTALLED:
        return False
    if _provider is not None:
        return True
    # trace.get_tracer_provider() reads the environment on every call until a provider is set, which costs more
    # than a whole step; the global it sets once is a cheap look.
    configured = getattr(trace, "_TRACER_PROVIDER", None)
    return configured is not None and not isinstance(configured, _UNCONFIGURED)


def _tracer() -> Any:
    return (_provider or trace.get_tracer_provider()).get_tracer("plait")


def traced_meta(meta: Mapping[str, str] | None, workflow: str, flow_id: str) -> Mapping[str, str] | None:
    """Records the ``plait.execute`` span of a new flow and returns ``meta`` with its trace context added.

    Trace context already in ``meta`` (a flow started by a handler of another flow, say) is the parent.
    """
    if not enabled():
        return meta
    tracer = _tracer()
    parent = propagate.extract(dict(meta)) if meta and "traceparent" in meta else None
    attributes = {"plait.flow_id": flow_id, "plait.workflow": workflow}
    with tracer.start_as_current_span(
        f"plait.execute {workflow}", context=parent, kind=SpanKind.PRODUCER, attributes=attributes
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
    return {**(meta or {}), **carrier}


@contextlib.contextmanager
def handler_span(
    kind: str,
    flow_id: str,
    workflow: str,
    meta: Mapping[str, str],
    step: str | None = None,
    attempt: int | None = None,
    index: int | None = None,
) -> Iterator[Any]:
    """A span around one handler attempt (``kind``: step, rollback, on_complete, on_error, evaluate), current
    while the handler runs; yields the span (``None`` when tracing is off).

    The caller sets ``plait.outcome`` and the error with :func:`set_outcome`.
    """
    if not enabled():
        yield None
        return
    tracer = _tracer()
    name = f"plait.{kind} {workflow}" if step is None else f"plait.{kind} {workflow}.{step}"
    attributes: dict[str, Any] = {"plait.flow_id": flow_id, "plait.workflow": workflow}
    if step is not None:
        attributes["plait.step"] = step
    if attempt is not None:
        attributes["plait.attempt"] = attempt
    if index is not None:
        attributes["plait.index"] = index
    parent = propagate.extract(dict(meta)) if "traceparent" in meta else None
    # The runner records the outcome itself (set_outcome): a handler's exception is its outcome, not the span's.
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def set_outcome(span: Any, outcome: str, error: BaseException | None = None) -> None:
    """Marks a handler span with its outcome (``ok``, ``error``, ``cancelled``) and the error, if any."""
    if span is None:
        return
    span.set_attribute("plait.outcome", outcome)
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def flow_finished(state: FlowState, error: str | None = None) -> None:
    """Records the ``plait.flow`` span of a flow that just ended, from its creation to its end."""
    if not enabled():
        return
    meta = state.meta
    parent = propagate.extract(dict(meta)) if "traceparent" in meta else None
    tracer = _tracer()
    span = tracer.start_span(
        f"plait.flow {state.workflow}",
        context=parent,
        kind=SpanKind.INTERNAL,
        start_time=int(state.created_at * 1e9),
        attributes={
            "plait.flow_id": state.flow_id,
            "plait.workflow": state.workflow,
            "plait.status": str(state.status),
        },
    )
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    end = state.finished_at if state.finished_at is not None else state.created_at
    span.end(end_time=int(end * 1e9))


def current_ids() -> dict[str, str]:
    """The trace and span ids of the current span as hex (``{}`` when tracing is off): for log records."""
    if not _INSTALLED:
        return {}
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}
