"""Throttle: how fast the sender may submit, and in which order.

`TokenBucket` answers "may I submit n now?" with 0.0 or the seconds to wait; it never
sleeps. `PriorityGate` orders pending requests: transactional strictly before marketing,
higher `priority` first within a lane, first in first out on ties. Both are per-process
runtime state: they are rebuilt (full bucket, empty gate) when a worker starts.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from itertools import count
from typing import Generic, TypeVar

from pipeline.errors import RetryableError

T = TypeVar("T")

# Tolerance for float drift in refills: 1e-9 tokens is never a whole SMS.
_EPSILON = 1e-9


class TryAfter(RetryableError):
    """Backpressure: nothing is wrong, come back in `delay_ms` milliseconds."""

    reason = "throttled"

    def __init__(self, delay_ms: int) -> None:
        self.delay_ms = delay_ms
        super().__init__(f"throttled: try again in {delay_ms} ms")


class TokenBucket:
    """`rate_per_s` tokens per second, holding at most `burst`; starts full.

    Time is passed in (`now_s`, e.g. `time.monotonic()`), so tests need no clock.
    """

    __slots__ = ("rate_per_s", "burst", "_tokens", "_last_s")

    def __init__(self, rate_per_s: float, burst: float) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be positive, got {rate_per_s}")
        if not burst >= 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self._tokens = self.burst
        self._last_s: float | None = None

    def _refill(self, now_s: float) -> float:
        last = self._last_s
        if last is None or now_s <= last:  # first call, or a clock that did not advance
            if last is None:
                self._last_s = now_s
            return self._tokens
        tokens = min(self.burst, self._tokens + (now_s - last) * self.rate_per_s)
        self._tokens = tokens
        self._last_s = now_s
        return tokens

    def available(self, now_s: float) -> float:
        """Tokens in the bucket at `now_s`: fractional, negative while in debt."""
        return self._refill(now_s)

    def try_take(self, now_s: float, n: int = 1) -> float:
        """Take `n` tokens: 0.0 when granted, else the seconds until they will be there.

        Nothing is taken when refused. A take larger than `burst` (a long SMS of many
        segments) is granted once the bucket is full and leaves it in debt, which later
        takes wait out: the average rate holds and nothing is refused forever.
        """
        tokens = self._refill(now_s)
        needed = n if n <= self.burst else self.burst
        if tokens + _EPSILON >= needed:
            self._tokens = tokens - n if n > self.burst else max(tokens - n, 0.0)
            return 0.0
        return (needed - tokens) / self.rate_per_s

    def take(self, now_s: float, n: int = 1) -> None:
        """Like `try_take`, but raises `TryAfter` (whole ms, rounded up) when refused."""
        wait_s = self.try_take(now_s, n)
        if wait_s:
            raise TryAfter(math.ceil(wait_s * 1000))


class PriorityGate(Generic[T]):
    """Pending items by lane: strict lane order, then higher priority, then arrival.

    A marketing item comes out only when no transactional one waits. `peek` lets the
    caller ask the throttle before `pop`, so a refused item keeps its place.
    """

    def __init__(self, lanes: Iterable[str] = ("transactional", "marketing")) -> None:
        self.lanes = tuple(lanes)
        self._heaps: dict[str, list[tuple[int, int, T]]] = {lane: [] for lane in self.lanes}
        self._order = count()

    def push(self, item: T, lane: str, priority: int = 0) -> None:
        """Queue `item`; ValueError for a lane the gate does not know."""
        heap = self._heaps.get(lane)
        if heap is None:
            raise ValueError(f"unknown lane {lane!r}; expected one of {self.lanes}")
        heapq.heappush(heap, (-priority, next(self._order), item))

    def _first(self) -> list[tuple[int, int, T]] | None:
        for lane in self.lanes:
            heap = self._heaps[lane]
            if heap:
                return heap
        return None

    def peek(self) -> T | None:
        """The item `pop` would return, left in place; None when empty."""
        heap = self._first()
        return heap[0][2] if heap else None

    def pop(self) -> T | None:
        """Remove and return the next item; None when empty."""
        heap = self._first()
        return heapq.heappop(heap)[2] if heap else None

    def pending(self, lane: str | None = None) -> int:
        """Items waiting in `lane`, or in all lanes."""
        if lane is None:
            return sum(len(h) for h in self._heaps.values())
        return len(self._heaps[lane])

    def __len__(self) -> int:
        return self.pending()

    def __bool__(self) -> bool:
        return any(self._heaps.values())
