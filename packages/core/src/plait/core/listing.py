"""Listing flows: the query every provider's ``list_flows`` takes, checked once, and its opaque cursor.

Flows are listed newest first, by creation time and then flow id; a cursor names the last flow of a page, so the
next page starts right after it, whatever was created meanwhile.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime

from plait.core.handle import FlowStatus

__all__ = ["MAX_LIMIT", "ListQuery", "decode_cursor", "encode_cursor"]

MAX_LIMIT = 1000
"""The most flows one page of ``list_flows`` holds."""


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A checked ``list_flows`` query.

    Attributes:
        workflow: only flows of this workflow.
        status: only flows with this status.
        parent_id: only children of this flow.
        created_after: only flows created at or after this time (seconds since the epoch).
        created_before: only flows created before this time.
        limit: the page size, 1 to 1000.
        after: the position the page starts after: ``(created_at, flow_id)`` of the previous page's last flow.
    """

    workflow: str | None = None
    status: FlowStatus | None = None
    parent_id: str | None = None
    created_after: float | None = None
    created_before: float | None = None
    limit: int = 50
    after: tuple[float, str] | None = None

    @classmethod
    def of(
        cls,
        *,
        workflow: str | None = None,
        status: FlowStatus | str | None = None,
        parent_id: str | None = None,
        created_after: float | datetime | None = None,
        created_before: float | datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> ListQuery:
        """Checks and normalises ``list_flows``'s arguments.

        Raises:
            ValueError: an unknown status, a limit out of 1-1000, a time that is not a number or datetime, or a
                cursor that no ``list_flows`` returned.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be an int from 1 to {MAX_LIMIT}, got {limit!r}")
        try:
            parsed_status = None if status is None else FlowStatus(status)
        except ValueError:
            known = ", ".join(s.value for s in FlowStatus)
            raise ValueError(f"Unknown status {status!r}; use one of {known}") from None
        return cls(
            workflow=workflow,
            status=parsed_status,
            parent_id=parent_id,
            created_after=_seconds("created_after", created_after),
            created_before=_seconds("created_before", created_before),
            limit=limit,
            after=None if cursor is None else decode_cursor(cursor),
        )

    def admits(self, workflow: str, status: str, parent_id: str | None, created_at: float) -> bool:
        """Whether a flow with these attributes matches the query's filters (the cursor aside)."""
        return (
            (self.workflow is None or workflow == self.workflow)
            and (self.status is None or status == self.status)
            and (self.parent_id is None or parent_id == self.parent_id)
            and (self.created_after is None or created_at >= self.created_after)
            and (self.created_before is None or created_at < self.created_before)
        )

    def follows(self, created_at: float, flow_id: str) -> bool:
        """Whether a flow comes after the cursor's position, newest first."""
        if self.after is None:
            return True
        return (created_at, flow_id) < self.after


def encode_cursor(created_at: float, flow_id: str) -> str:
    """The cursor of a page that ends with this flow."""
    raw = json.dumps([created_at, flow_id], separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The position a cursor names.

    Raises:
        ValueError: it is not a cursor that ``list_flows`` returned.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, flow_id = json.loads(raw)
        if isinstance(created_at, bool) or not isinstance(created_at, int | float) or not isinstance(flow_id, str):
            raise ValueError
    except (ValueError, TypeError):
        raise ValueError(f"Not a list_flows cursor: {cursor[:60]!r}") from None
    return float(created_at), flow_id


def _seconds(what: str, value: float | datetime | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{what} must be an aware datetime (or seconds since the epoch)")
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be seconds since the epoch or an aware datetime, got {value!r}")
    return float(value)
