"""The engine's event records: tuples of plain values, named by ``EVENT_FIELDS`` and made typed events."""

from __future__ import annotations

import gc
from typing import Any, get_args

import pytest

from plait.core.engine import EVENT_FIELDS, event_fields
from plait.core.events import FlowEvent, event_from_record, is_last

_VALUES: dict[str, Any] = {
    "step": "charge",
    "index": 2,
    "attempt": 3,
    "error": "RuntimeError: boom",
    "will_retry": True,
    "delay": 0.5,
    "reason": "by hand",
    "name": "approval",
    "fraction": 0.25,
    "message": "a quarter",
}


def test_every_event_type_has_fields_and_a_typed_event() -> None:
    models = {model.model_fields["type"].default: model for model in get_args(get_args(FlowEvent)[0])}
    assert set(EVENT_FIELDS) == set(models)
    for kind, names in EVENT_FIELDS.items():
        record = (kind, 7, 100.0, *(_VALUES[name] for name in names))
        event = event_from_record("flow-1", "wf", record)
        assert type(event) is models[kind]
        assert (event.flow_id, event.workflow, event.seq, event.at.timestamp()) == ("flow-1", "wf", 7, 100.0)
        for name in set(names) & set(models[kind].model_fields):  # a completed flow's has no error, say
            assert getattr(event, name) == _VALUES[name], (kind, name)


def test_fields_left_out_at_the_end_are_absent_and_take_their_defaults() -> None:
    record = ("step_started", 2, 10.0, "charge", 1)
    assert event_fields(record) == {"type": "step_started", "seq": 2, "at": 10.0, "step": "charge", "attempt": 1}
    event = event_from_record("f", "wf", record)
    assert event.type == "step_started" and event.index is None


def test_a_record_stored_as_an_object_reads_the_same() -> None:
    record = {"type": "step_completed", "seq": 3, "at": 10.0, "step": "charge"}
    assert event_fields(record) == record
    assert event_from_record("f", "wf", record) == event_from_record("f", "wf", ("step_completed", 3, 10.0, "charge"))


@pytest.mark.parametrize(
    ("record", "error"),
    [
        (("step_started", 1), ValueError),
        (("no_such_event", 1, 10.0), KeyError),
        (("step_skipped", 1, 10.0, "a", "b"), ValueError),
    ],
)
def test_a_record_that_is_not_an_event_is_refused(record: tuple[Any, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        event_fields(record)


def test_is_last_reads_both_forms() -> None:
    assert is_last(("flow_completed", 9, 10.0, None, None))
    assert is_last({"type": "flow_failed"})
    assert not is_last(("step_completed", 3, 10.0, "a"))
    assert not is_last(())


def test_a_record_of_plain_values_is_not_tracked_once_the_collector_has_seen_it() -> None:
    records = [("step_started", 1, 10.0, "charge", 1)]
    gc.collect()
    assert not gc.is_tracked(records[0])
