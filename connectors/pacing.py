"""Pacing towards a gateway: a rate that backs off when the provider says slow down."""

from __future__ import annotations


class AimdBucket:
    """A token bucket (GCRA form) whose rate backs off multiplicatively and recovers additively.

    ``reserve`` never polls: it books the next slot and returns how long to wait for it.
    """

    __slots__ = (
        "base_rate",
        "rate",
        "_tat",
        "_burst_s",
        "_min_rate",
        "_hold_s",
        "_step",
        "_decrease_gap_s",
        "_last_decrease",
        "_last_change",
    )

    def __init__(
        self,
        rate: float,
        *,
        burst_s: float = 0.1,
        min_fraction: float = 1 / 16,
        hold_s: float = 1.0,
        recover_per_s: float = 0.1,
        decrease_gap_s: float = 0.25,
    ) -> None:
        self.base_rate = rate
        self.rate = rate
        self._tat = 0.0
        self._burst_s = burst_s
        self._min_rate = max(rate * min_fraction, 0.5)
        self._hold_s = hold_s
        self._step = rate * recover_per_s
        self._decrease_gap_s = decrease_gap_s
        self._last_decrease = -1e9
        self._last_change = 0.0

    def reserve(self, now: float) -> float:
        """Book one send; return the seconds to wait before it (0.0 when it may go now)."""
        if self.rate < self.base_rate and now - self._last_decrease >= self._hold_s:
            since = now - max(self._last_change, self._last_decrease + self._hold_s)
            self.rate = min(self.base_rate, self.rate + self._step * since)
            self._last_change = now
        tat = self._tat if self._tat > now else now
        self._tat = tat + 1.0 / self.rate
        wait = tat - now - self._burst_s
        return wait if wait > 0.0 else 0.0

    def slow_down(self, now: float) -> bool:
        """Halve the rate (at most once per gap, so one burst of refusals counts once)."""
        if now - self._last_decrease < self._decrease_gap_s:
            return False
        self.rate = max(self._min_rate, self.rate / 2)
        self._last_decrease = now
        self._last_change = now
        return True
