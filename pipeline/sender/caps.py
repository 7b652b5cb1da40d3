"""Frequency caps: at most N marketing SMS per recipient per rolling window.

A lane's `FrequencyCaps` is a set of `Cap(window_s, max_count)` rules (e.g. 2 per 24 h and
5 per 7 days). The state per phone is `CapState`: the timestamps of its most recent sends,
only as many as the strictest check needs (the largest `max_count`) and only within the
longest window, so it stays a handful of ints.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pipeline.errors import PermanentError
from pipeline.sender.decision import Reject, suppressed

REASON = "frequency_cap"
# Bounds when `record_send` is called without the lane's caps.
DEFAULT_KEEP = 16
DEFAULT_HORIZON_MS = 31 * 86_400_000

_FORMAT_VERSION = 1
_HEADER = struct.Struct("<BB")  # version, count; then count × int64 epoch ms, oldest first


class InvalidCapState(PermanentError):
    """Bytes that are not a `CapState`."""

    reason = "invalid_cap_state"


@dataclass(frozen=True, slots=True)
class Cap:
    """At most `max_count` sends in any rolling `window_s` seconds."""

    window_s: int
    max_count: int

    def __post_init__(self) -> None:
        if self.window_s <= 0:
            raise ValueError(f"cap window must be positive seconds, got {self.window_s}")
        if self.max_count < 0:
            raise ValueError(f"cap max must not be negative, got {self.max_count}")


@dataclass(frozen=True)
class FrequencyCaps:
    """All caps of one lane, with the bounds of the state they need."""

    caps: tuple[Cap, ...]
    keep: int = field(init=False)
    horizon_ms: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", max((c.max_count for c in self.caps), default=0))
        object.__setattr__(
            self, "horizon_ms", max((c.window_s for c in self.caps), default=0) * 1000
        )


DEFAULT_CAPS: Mapping[str, FrequencyCaps] = MappingProxyType(
    {"marketing": FrequencyCaps((Cap(86_400, 2), Cap(7 * 86_400, 5)))}
)


@dataclass(frozen=True, slots=True)
class CapState:
    """Recent send times (epoch ms, oldest first) of one phone in one lane."""

    sends: tuple[int, ...] = ()

    def to_bytes(self) -> bytes:
        """2 + 8 per send bytes: version, count, then int64 epoch ms each."""
        return _HEADER.pack(_FORMAT_VERSION, len(self.sends)) + struct.pack(
            f"<{len(self.sends)}q", *self.sends
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> CapState:
        try:
            version, count = _HEADER.unpack_from(data)
            if version != _FORMAT_VERSION:
                raise InvalidCapState(f"cap state: unknown format version {version}")
            return cls(struct.unpack_from(f"<{count}q", data, _HEADER.size))
        except struct.error as exc:
            raise InvalidCapState(f"cap state: {exc}") from None


def check_caps(
    lane: str, state: CapState | None, now_ms: int, caps: Mapping[str, FrequencyCaps]
) -> Reject | None:
    """Suppressed 'frequency_cap' when one more send would break one of `lane`'s caps.

    Called per request after quiet hours, just before the throttle; `caps` maps lane →
    `FrequencyCaps` (lanes without, transactional by default, are never capped). A send
    exactly `window_s` ago has left the window. With N sends in the window the next one
    is refused: "at most N".
    """
    lane_caps = caps.get(lane)
    if lane_caps is None:
        return None
    sends = state.sends if state is not None else ()
    for cap in lane_caps.caps:
        since = now_ms - cap.window_s * 1000
        count = 0
        for at in reversed(sends):
            if at <= since:
                break
            count += 1
        if count >= cap.max_count:
            return suppressed(
                REASON, f"{count} sent in the last {cap.window_s} s, at most {cap.max_count}"
            )
    return None


def record_send(
    state: CapState | None, now_ms: int, lane_caps: FrequencyCaps | None = None
) -> CapState:
    """The state after a send at `now_ms`; called when the gateway accepts the SMS.

    Keeps only what `lane_caps` can ever count (the last `keep` sends within the longest
    window); without caps, the last `DEFAULT_KEEP` within `DEFAULT_HORIZON_MS`.
    """
    keep = lane_caps.keep if lane_caps is not None else DEFAULT_KEEP
    horizon = lane_caps.horizon_ms if lane_caps is not None else DEFAULT_HORIZON_MS
    sends = state.sends if state is not None else ()
    if sends and sends[-1] > now_ms:  # out of order: keep the tuple sorted
        sends = tuple(sorted((*sends, now_ms)))
    else:
        sends = (*sends, now_ms)
    since = now_ms - horizon
    start = max(len(sends) - keep, 0)
    while start < len(sends) and sends[start] <= since:
        start += 1
    return CapState(sends[start:])
