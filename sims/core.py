"""The discrete-event core: a time-ordered heap of callbacks with a counter tie-break, and seeded randomness.

How it works (as simpy's core, `cristiklein/simpy` `src/simpy/core.py`): an event is
[time_s, sequence, callback, args]; the heap pops the earliest time, and among equal times the one
scheduled first (the ever-increasing sequence number), so a run is a pure function of its inputs and seed.
Cancelling marks the entry dead (lazy deletion) instead of searching the heap.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable

import numpy as np

from sims.errors import SimError

_CANCELLED = None


class Simulator:
    """Clock, event heap and the one random generator every part of a run draws from."""

    def __init__(self, seed: int = 0, *, record: bool = False) -> None:
        self.now_s = 0.0
        self.rng = np.random.default_rng(seed)
        self.num_events = 0
        self.trace: list[tuple[float, str]] | None = [] if record else None
        self._heap: list[list] = []
        self._sequence = itertools.count()

    def at(self, time_s: float, callback: Callable, *args) -> list:
        """Run `callback(*args)` at `time_s` (not before now); returns a handle for `cancel`."""
        if time_s < self.now_s - 1e-12 or math.isnan(time_s):
            raise SimError(f"cannot schedule at {time_s} s, the clock is already at {self.now_s} s")
        entry = [max(time_s, self.now_s), next(self._sequence), callback, args]
        heapq.heappush(self._heap, entry)
        return entry

    def after(self, delay_s: float, callback: Callable, *args) -> list:
        return self.at(self.now_s + delay_s, callback, *args)

    @staticmethod
    def cancel(handle: list | None) -> None:
        if handle is not None:
            handle[2] = _CANCELLED

    def run(self, until_s: float = math.inf) -> None:
        """Process events in order until none is left or the next one is after `until_s`."""
        heap = self._heap
        while heap and heap[0][0] <= until_s:
            time_s, _, callback, args = heapq.heappop(heap)
            if callback is _CANCELLED:
                continue
            self.now_s = time_s
            self.num_events += 1
            if self.trace is not None:
                self.trace.append((time_s, getattr(callback, "__qualname__", repr(callback))))
            callback(*args)
        if until_s != math.inf:
            self.now_s = max(self.now_s, until_s)

    @property
    def num_pending(self) -> int:
        return sum(1 for e in self._heap if e[2] is not _CANCELLED)
