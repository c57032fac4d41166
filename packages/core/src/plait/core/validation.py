"""What may be stored: flow ids, and data, outputs and signal payloads that validate and fit the size limit.

Every provider checks what a caller hands it here, before anything is stored, so that a flow never holds a value
its own models would refuse (an instance built with ``model_construct`` or changed after validation, say), a
value too large to keep, or an id that could reach another flow's keys, channels or log lines.
"""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic_core
from pydantic import BaseModel, ValidationError

from plait.core.errors import PayloadTooLargeError, WorkflowValidationError

__all__ = [
    "MAX_FLOW_ID_LENGTH",
    "MAX_PAYLOAD_SIZE",
    "check_flow_id",
    "check_max_payload_size",
    "is_seconds",
    "json_form",
    "json_size",
    "validate",
]

M = TypeVar("M", bound=BaseModel)

MAX_FLOW_ID_LENGTH = 200
"""The longest flow id a caller may give, in characters."""

MAX_PAYLOAD_SIZE = 2 * 1024 * 1024
"""The default ``max_payload_size``: 2 MiB of JSON for a flow's data, a step's output or a signal's payload."""


def check_flow_id(flow_id: object) -> str:
    """Returns ``flow_id`` if it is a ``str`` of 1 to 200 printable characters.

    Raises:
        TypeError: it is not a ``str`` (``123`` would otherwise alias ``"123"``).
        ValueError: it is empty, too long, or holds a character that is not printable (a newline, say).
    """
    if type(flow_id) is not str:
        if not isinstance(flow_id, str):
            raise TypeError(f"A flow id must be a str, got {type(flow_id).__name__} {flow_id!r}")
        flow_id = str.__str__(flow_id)  # a str subclass: keep its plain value only
    if not 0 < len(flow_id) <= MAX_FLOW_ID_LENGTH or not flow_id.isprintable():
        raise ValueError(
            f"A flow id must be 1-{MAX_FLOW_ID_LENGTH} printable characters (no newlines or control characters), "
            f"got {_shorten(flow_id)}"
        )
    return flow_id


def check_max_payload_size(value: object) -> int:
    """Returns ``value`` if it is a usable ``max_payload_size`` (an int of at least 1 KiB)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
        raise ValueError(f"max_payload_size must be an int of at least 1024 bytes, got {value!r}")
    return value


def json_size(value: Any) -> int:
    """How many bytes ``value`` (already JSON-shaped) takes as compact JSON.

    Raises:
        ValueError: it cannot be written as JSON (it nests too deeply, say).
    """
    return len(_to_json(value))


def _to_json(value: Any) -> bytes:
    try:
        return pydantic_core.to_json(value)
    except (pydantic_core.PydanticSerializationError, RecursionError) as error:
        raise ValueError(f"cannot be written as JSON: {error}") from error


def is_seconds(value: object, *, allow_zero: bool = False) -> bool:
    """Whether ``value`` is a number of seconds greater than 0 (or equal, with ``allow_zero``): an int or float,
    not a bool, not NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN is not equal to itself
        return False
    return value > 0 or (allow_zero and value == 0)


_MODEL_DUMP = BaseModel.model_dump


def json_form(model: BaseModel) -> tuple[Any, int]:
    """The model as plain dicts, lists, strings and numbers, read back from its compact JSON, and the bytes that
    JSON takes.

    Written as JSON once and read back: for a model of a few fields, half the cost of its plain form
    (``model_dump(mode="json")``) written as JSON to be measured. What comes back is exactly its JSON, as a durable
    provider reads it back: a float that JSON cannot hold (NaN, an infinity) is what the model's ``ser_json_inf_nan``
    writes (``None`` by default). Straight through pydantic's serializer when the model's class keeps pydantic's
    ``model_dump``: the method only passes a dozen default keywords on, which cost more than a small model's JSON.

    Raises:
        ValueError: the model cannot be written as JSON.
    """
    kind = type(model)
    direct = _DIRECT.get(kind)
    if direct is None:
        direct = _DIRECT[kind] = kind.model_dump is _MODEL_DUMP
    raw = model.__pydantic_serializer__.to_json(model) if direct else _to_json(model.model_dump(mode="json"))
    return _from_json(raw), len(raw)


# Whether json_form writes a model of each class straight through its serializer (the class keeps pydantic's
# model_dump), by class: a class attribute of a model costs more to look up than a dict entry.
_DIRECT: dict[type[BaseModel], bool] = {}
_from_json = pydantic_core.from_json


def validate(model: type[M], value: object, *, workflow: str, what: str, max_size: int) -> tuple[M, Any]:
    """Validates ``value`` (an instance, another model with the same fields, or a mapping) against ``model``.

    An instance of ``model`` itself is validated again from its fields: it may have been built with
    ``model_construct`` or changed after validation.

    Returns:
        The validated model and its JSON form (plain dicts, lists, strings, numbers).

    Raises:
        WorkflowValidationError: ``value`` does not validate, or cannot be written as JSON.
        PayloadTooLargeError: its JSON is larger than ``max_size`` bytes.
    """
    try:
        if isinstance(value, BaseModel):  # its fields, as model_dump(warnings=False) gives them
            if type(value).model_dump is _MODEL_DUMP:
                value = value.__pydantic_serializer__.to_python(value, warnings=False)
            else:
                value = value.model_dump(warnings=False)
        validated = model.model_validate(value)
        payload, size = json_form(validated)
    except (ValidationError, ValueError, TypeError, RecursionError) as error:
        raise WorkflowValidationError(workflow, error, what=what) from error
    if size > max_size:
        raise PayloadTooLargeError(f"The {what} of workflow '{workflow}'", size, max_size)
    return validated, payload


def _shorten(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(value)} characters)"
