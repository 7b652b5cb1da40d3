"""Dead letters: input a stage cannot process, kept with its reason and original bytes."""

from __future__ import annotations

import time
from typing import Any


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
        "error": error[:2000],
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "key": key,
        "value": value,
        "event_id": event_id,
        "failed_at_ms": now_ms if now_ms is not None else int(time.time() * 1000),
    }
