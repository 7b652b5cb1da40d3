"""Dead letters: input a stage cannot process, kept with its reason and original bytes."""

from __future__ import annotations

import time
from typing import Any

MAX_ERROR = 2000
"""Longest `error` text a dead letter carries."""


def dead_letter(
    stage: str,
    reason: str,
    error: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    event_id: str | None = None,
    now_ms: int | None = None,
) -> dict[str, Any]:
    """A `dead_letter` record for input at topic/partition/offset that `stage` gave up on."""
    return {
        "stage": stage,
        "reason": reason,
        "error": error[:MAX_ERROR],
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "key": key,
        "value": value,
        "event_id": event_id,
        "failed_at_ms": now_ms if now_ms is not None else int(time.time() * 1000),
    }


MAX_SLIM_EVENT_ID = 256
"""Longest event id a dead letter without its payload keeps."""


def without_payload(record: dict[str, Any], why: str) -> dict[str, Any]:
    """`record` without the original key and value bytes (and with its event id cut to
    MAX_SLIM_EVENT_ID), for when the whole record cannot be stored, e.g. because the
    original was close to the broker's size limit. The result is always small.

    The source topic, partition and offset still say where the original is; the error
    says why the bytes were left out.
    """
    dropped = len(record["key"] or b"") + len(record["value"] or b"")
    note = f"original key and value ({dropped:,} bytes) not copied: {why}"
    event_id = record["event_id"]
    return record | {
        "key": None,
        "value": None,
        "event_id": event_id[:MAX_SLIM_EVENT_ID] if event_id is not None else None,
        "error": f"{note} | {record['error']}"[:MAX_ERROR],
    }
