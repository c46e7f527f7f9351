"""The simulator's virtual clock and agenda: a heap of ``(time_ms, seq, event)``.

Time is an integer number of virtual milliseconds starting at 0; nothing reads the wall clock.
``seq`` is a global insertion counter, so events due at the same millisecond run in the order they
were scheduled and a run is a pure function of its inputs.
"""

from __future__ import annotations

import heapq
from typing import Any


class EventQueue:
    """Virtual time and the events due at later times.

    ``now`` is the time of the event being handled. ``schedule(at_ms, event)`` adds an event (any
    object) due at ``at_ms``; ``pop()`` removes the earliest one (ties in scheduling order) and
    advances ``now`` to its time. Raises ValueError when asked to schedule in the past.
    """

    __slots__ = ("now", "_heap", "_seq", "popped")

    def __init__(self) -> None:
        self.now = 0
        self._heap: list[tuple[int, int, Any]] = []
        self._seq = 0
        self.popped = 0

    def schedule(self, at_ms: int, event: Any) -> None:
        """Add ``event`` due at virtual time ``at_ms`` (>= now)."""
        if at_ms < self.now:
            raise ValueError(f"cannot schedule an event at {at_ms} ms: the virtual clock is already at {self.now} ms")
        self._seq += 1
        heapq.heappush(self._heap, (at_ms, self._seq, event))

    def after(self, delay_ms: int, event: Any) -> None:
        """Add ``event`` due ``delay_ms`` (>= 0) after now."""
        self.schedule(self.now + delay_ms, event)

    def peek_time(self) -> int | None:
        """Return the time of the earliest pending event, or None when there is none."""
        return self._heap[0][0] if self._heap else None

    def pop(self) -> Any:
        """Remove and return the earliest event, advancing ``now``; raises IndexError when empty."""
        at, _, event = heapq.heappop(self._heap)
        self.now = at
        self.popped += 1
        return event

    def __len__(self) -> int:
        return len(self._heap)
