"""Sync: which peer to fetch missed heights from, and the one fetch in flight.

Peers' heights are learnt from what they send (status heartbeats, commits, proposals and votes
imply a height). A node more than one height behind a connected peer, or one height behind with a
verified commit certificate of a block it never received, fetches the missing heights from the
most advanced connected peer, ``sync_batch_heights`` at a time, one request at a time. A failed
fetch, one that answers nothing useful, or one unanswered for ``sync_timeout_ms`` makes the node
forget what it believed of that peer's height until the peer tells it again.
"""

from __future__ import annotations

from dataclasses import dataclass

from .outputs import FetchBlocks


@dataclass(slots=True)
class _InFlight:
    peer: str
    deadline_ms: int


class SyncState:
    """Peer heights and the fetch in flight (see the module docstring)."""

    def __init__(self, batch_heights: int, timeout_ms: int) -> None:
        self.batch_heights = batch_heights
        self.timeout_ms = timeout_ms
        self.peer_heights: dict[str, int] = {}
        #: a height whose commit certificate we verified but whose block we lack (0: none)
        self.certified_next = 0
        self._in_flight: _InFlight | None = None
        self._behind = False

    @property
    def syncing(self) -> bool:
        """True while a fetch is in flight or the last look found a peer to sync from."""
        return self._in_flight is not None or self._behind

    def note_peer_height(self, peer: str, height: int) -> None:
        """``peer`` has committed at least ``height``."""
        if height > self.peer_heights.get(peer, -1):
            self.peer_heights[peer] = height

    def forget_peer(self, peer: str) -> None:
        """Drop what we believed about ``peer``'s height (after a failed or useless fetch)."""
        self.peer_heights.pop(peer, None)

    def target(self, height: int, connected: set[str]) -> tuple[str, int] | None:
        """The connected peer furthest ahead of our ``height`` and its height, when it is more
        than one height ahead, or one ahead with a verified commit of a block we never received
        (one height behind is otherwise normal and closed by gossip); else None."""
        best: tuple[int, str] | None = None
        floor = height + 1 if self.certified_next == height + 1 else height + 2
        for peer, h in self.peer_heights.items():
            if peer in connected and h >= floor and (best is None or (h, peer) > best):
                best = (h, peer)
        return (best[1], best[0]) if best else None

    def next_fetch(self, height: int, connected: set[str], now_ms: int) -> FetchBlocks | None:
        """The fetch to start now, or None (nothing to fetch, or one in flight). A fetch in flight
        past its deadline counts as failed."""
        if self._in_flight is not None:
            if now_ms < self._in_flight.deadline_ms:
                return None
            self.fetch_ended(self._in_flight.peer, useful=False)
        target = self.target(height, connected)
        self._behind = target is not None
        if target is None:
            return None
        peer, peer_height = target
        self._in_flight = _InFlight(peer, now_ms + self.timeout_ms)
        end = min(peer_height, height + self.batch_heights)
        return FetchBlocks(peer, height + 1, end, self.timeout_ms)

    def fetch_ended(self, peer: str, *, useful: bool) -> None:
        """The fetch from ``peer`` answered (``useful``: it advanced our height) or failed."""
        self._in_flight = None
        if not useful:
            self.forget_peer(peer)
