"""Sync: which peer to fetch missed heights from, and the one fetch in flight.

Peers' heights are learnt from what they send (status heartbeats, commits, proposals and votes
imply a height). A node more than one height behind a connected peer, or one height behind with a
verified commit certificate of a block it never received, fetches the missing heights from the
most advanced connected peer, ``sync_batch_heights`` at a time, one request at a time. A fetch
that fails, or stays unanswered for ``sync_timeout_ms``, makes the node forget what it believed of
that peer's height.

A claim is not proof. A peer whose fetch did not advance us (it answered nothing useful, or the
fetch failed or timed out), although it claimed to be ahead, is **distrusted**: its unverified claims (status, votes, proposals, commit announcements
we did not verify) are ignored, so it is not chosen again and cannot keep a node at the tip
believing it is behind. Only a verified claim clears that: a commit certificate of it that we
verified, or a block of it that we committed. No penalty is given: an honest peer that lost blocks
in a crash answers the same way until it catches up, and one whose answer was lost is trusted
again at its next verified commit announcement. A liar that claims a far-future height thus costs
one futile fetch, whatever it does with the request.

Being behind is also a matter of proof. ``syncing`` (which ``/ready`` and the status report) holds
only when something we checked says we are behind: a verified commit certificate of a height we
lack, or a peer **vouched** for (a fetch from it advanced us, or we verified a certificate of it)
claiming a height two or more ahead, or a fetch in flight from such a peer. Probing an unvouched
claim is not syncing, so a liar cannot take a node at the tip out of service even for the one
fetch it costs; a node that really is behind is syncing from its first useful answer on.
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
        #: peers whose claims a fetch did not back; ignored until a verified claim
        self.distrusted: set[str] = set()
        #: peers whose claims something we checked backed (a useful fetch, a verified certificate)
        self.vouched: set[str] = set()

    @property
    def syncing(self) -> bool:
        """True while we know from something checked that we are behind (see the module
        docstring): the last look found a verified certificate we lack or a vouched peer two or
        more heights ahead, or a fetch from a vouched peer is in flight."""
        return self._behind or (self._in_flight is not None and self._in_flight.peer in self.vouched)

    def note_peer_height(self, peer: str, height: int, *, verified: bool = False) -> None:
        """``peer`` has committed at least ``height``: ``verified`` when we checked it (a commit
        certificate, a block we committed), which also ends any distrust; an unverified claim of a
        distrusted peer is ignored."""
        if verified:
            self.distrusted.discard(peer)
            self.vouched.add(peer)
        elif peer in self.distrusted:
            return
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
        self._behind = self.certified_next == height + 1 or any(
            h >= height + 2 and peer in connected and peer in self.vouched for peer, h in self.peer_heights.items())
        if target is None:
            return None
        peer, peer_height = target
        self._in_flight = _InFlight(peer, now_ms + self.timeout_ms)
        end = min(peer_height, height + self.batch_heights)
        return FetchBlocks(peer, height + 1, end, self.timeout_ms)

    def fetch_ended(self, peer: str, *, useful: bool) -> None:
        """The fetch from ``peer`` ended: ``useful`` when its answer advanced our height. Any other
        end (an answer that did not advance us, a failure, a timeout) makes ``peer`` distrusted
        (see the module docstring)."""
        self._in_flight = None
        if useful:
            self.vouched.add(peer)
        else:
            self.forget_peer(peer)
            self.distrusted.add(peer)
            self.vouched.discard(peer)
