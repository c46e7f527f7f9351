"""The node-run policy's clock: which periodic duties ``Replica.tick`` performs now.

Driven by the ``now_ms`` the driver passes to ``tick`` (the daemon's monotonic clock, or the
simulator's virtual clock); the intervals come from ``config.PolicyConfig``. Liveness only: nothing
here decides what is committed.
"""

from __future__ import annotations

from ..config import PolicyConfig

#: Most times ``regossip_after_ms`` between two re-gossips of one stuck height.
REGOSSIP_BACKOFF_MAX = 4


class PolicyClock:
    """Due times of the status heartbeat and of re-gossip while a height stalls."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self._next_status_ms: int | None = None
        self._progress_height = -1
        self._last_progress_ms = 0
        self._last_regossip_ms = 0
        self._backoff = 1

    def status_due(self, now_ms: int) -> bool:
        """True when the status heartbeat is due (at the first tick, then every ``status_interval_ms``)."""
        if self._next_status_ms is not None and now_ms < self._next_status_ms:
            return False
        self._next_status_ms = now_ms + self.config.status_interval_ms
        return True

    def restart_progress(self, now_ms: int) -> None:
        """Count the current height's progress from ``now_ms`` (a height started after an idle
        wait has not been stuck for the wait's length)."""
        self._last_progress_ms = now_ms
        self._backoff = 1

    def regossip_due(self, height: int, now_ms: int) -> bool:
        """True when ``height`` (the committed tip) has not changed for ``regossip_after_ms`` and
        nothing was re-gossiped since; while it stays stuck the interval doubles after each
        re-gossip, up to ``REGOSSIP_BACKOFF_MAX`` times ``regossip_after_ms`` (a stall caused by
        overload must not be fed more traffic at a constant rate), and resets on progress."""
        if height != self._progress_height:
            self._progress_height = height
            self._last_progress_ms = now_ms
            self._backoff = 1
            return False
        after = self.config.regossip_after_ms
        if now_ms - self._last_progress_ms < after or now_ms - self._last_regossip_ms < after * self._backoff:
            return False
        self._last_regossip_ms = now_ms
        self._backoff = min(REGOSSIP_BACKOFF_MAX, self._backoff * 2)
        return True
