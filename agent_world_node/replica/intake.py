"""Intake control: clients' actions are admitted at the rate the cluster commits them, not faster.

A node that accepts every valid action into its mempool turns overload into latency: with twice
the cluster's capacity offered, the backlog (and every accepted action's wait) grows without
bound, and the work of taking in actions that cannot be committed soon competes for the CPU with
consensus itself, so throughput falls too. Instead, each node measures what the chain commits
(actions per second over the last ``window_ms`` of its tick clock) and keeps the actions pending
in its mempool (which holds the whole cluster's pending actions: they are gossiped) below what
the chain commits in ``target_queue_ms``: ``budget = max(floor, rate * target_queue_ms / 1000)``.
A client action arriving when the mempool holds ``budget`` actions or more is refused as busy
(HTTP 503 with ``Retry-After``: the time the backlog above the budget takes to commit at the
measured rate), before its signature is checked. By Little's law the wait of an accepted action
in the queue stays near ``target_queue_ms``.

``floor`` (a tenth of a full block) lets a chain that commits little because little is offered
take that much at any time, so the measured rate can grow with the demand: each block then holds
up to the budget, so the budget grows while blocks commit faster than ``target_queue_ms``, and
stops growing where they take that long. Blocks therefore stay small enough to commit in about
``target_queue_ms`` however much is offered, and an accepted action waits about two of them.

Only this node's own clients are refused this way; actions gossiped by peers were accepted by
the cluster and meet only the mempool's hard bound. Local policy, never consensus: nothing here
decides what is committed, and no node needs the same figures as another.
"""

from __future__ import annotations

from collections import deque

#: Shortest retry hint (ms) given with a refusal.
MIN_RETRY_MS = 200
#: Longest retry hint (ms).
MAX_RETRY_MS = 10_000


class IntakeControl:
    """Measures the commit rate and answers whether a client action may join the backlog.

    ``floor``: the smallest budget (actions); ``target_queue_ms``: the queueing time the budget
    allows at the measured rate; ``window_ms``: how far back commits count. Times are the
    driver's tick clock (monotonic ms). Raises ValueError for a non-positive argument."""

    def __init__(self, *, floor: int, target_queue_ms: int, window_ms: int = 10_000) -> None:
        if floor < 1 or target_queue_ms < 1 or window_ms < 1:
            raise ValueError("floor, target_queue_ms and window_ms must be positive")
        self.floor = floor
        self.target_queue_ms = target_queue_ms
        self.window_ms = window_ms
        self._commits: deque[tuple[int, int]] = deque()  # (tick ms, actions committed)
        self._in_window = 0
        self._first_ms: int | None = None

    def committed(self, actions: int, now_ms: int) -> None:
        """A block of ``actions`` actions was committed at ``now_ms``."""
        if self._first_ms is None:
            self._first_ms = now_ms
        self._commits.append((now_ms, actions))
        self._in_window += actions
        self._expire(now_ms)

    def _expire(self, now_ms: int) -> None:
        while self._commits and self._commits[0][0] < now_ms - self.window_ms:
            self._in_window -= self._commits.popleft()[1]

    def rate(self, now_ms: int) -> float:
        """Actions committed per second over the last ``window_ms`` (or since the first commit
        seen, when that is more recent); 0.0 before two ticks' worth of history."""
        self._expire(now_ms)
        if self._first_ms is None:
            return 0.0
        span_ms = min(self.window_ms, now_ms - self._first_ms)
        if span_ms <= 0:
            return 0.0
        return self._in_window * 1000 / span_ms

    def budget(self, now_ms: int) -> int:
        """How many actions may be pending before client actions are refused."""
        return max(self.floor, int(self.rate(now_ms) * self.target_queue_ms / 1000))

    def refusal(self, pending: int, now_ms: int) -> int | None:
        """None when a client action may join ``pending`` actions; otherwise the retry hint in ms
        (the time the excess over the budget takes to commit at the measured rate, bounded by
        ``MIN_RETRY_MS`` and ``MAX_RETRY_MS``)."""
        budget = self.budget(now_ms)
        if pending < budget:
            return None
        rate = self.rate(now_ms)
        drain_ms = (pending - budget + 1) * 1000 / rate if rate > 0 else MAX_RETRY_MS
        return int(min(MAX_RETRY_MS, max(MIN_RETRY_MS, drain_ms)))
