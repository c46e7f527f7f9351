"""Which peers this node refuses to talk to: the operator's block list and misbehaviour bans.

Sans-IO (the clock is injected). ``P2PNetwork`` consults it before delivering a gossip message,
serving or fetching sync, dialling, and keeping a connection.

Misbehaviour scoring follows the shape of gossipsub v1.1's peer score and CometBFT's peer
"punishment": each offence adds points (``PENALTY_POINTS``, by reason), the score decays linearly
by ``decay_per_s`` points per second, and a peer whose score reaches ``ban_threshold`` is banned
for ``ban_seconds``: disconnected, its gossip dropped even when relayed by others (pubsub's strict
signing authenticates the origin), its sync streams refused, and it is not redialled. Its score
restarts at zero when the ban ends. Honest peers do not send undecodable messages, forged
signatures or invalid certificates, so the threshold only has to tolerate a few accidents (e.g. a
peer running another version); a flood is scored per message above the per-topic rate limit
(``TopicRateLimiter``; ``Offence.RATE_LIMITED``, 1 point each, so an origin sending ~100 messages
above its limit is banned: a 500 msg/s status flood within about a quarter of a second).

The operator's block list (``set_blocked``) is separate and has no expiry: the unsafe RPC route
sets it, e.g. to cut a testnet in two partitions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..types import Offence

#: Points per offence. A ban needs ``ban_threshold`` (default 100) points, less decay.
PENALTY_POINTS: dict[Offence, float] = {
    Offence.MALFORMED: 10.0,
    Offence.OVERSIZE: 20.0,
    # forged consensus messages: no correct node sends one (pubsub's strict signing names the real
    # origin), so two forgeries within 10 s (the score decays 2 points a second), or three votes from
    # unknown keys within 1 s, ban the sender
    Offence.BAD_SIGNATURE: 60.0,
    Offence.UNKNOWN_VALIDATOR: 34.0,
    Offence.INVALID_MESSAGE: 10.0,
    Offence.INVALID_COMMIT: 25.0,
    Offence.BAD_SYNC_RESPONSE: 25.0,
    # a chunk that does not match the manifest the peer listed, or a snapshot whose state root is
    # not the certified one: no correct node serves either, and a joiner must not ask it again
    Offence.BAD_SNAPSHOT: 100.0,
    Offence.RATE_LIMITED: 1.0,
    # a pubsub frame that does not parse: py-libp2p itself can produce these under load (see
    # network/host.py _serialize_rpc_writes), so only a peer that keeps sending them is banned
    Offence.BAD_PUBSUB_FRAME: 2.0,
}


@dataclass
class _Score:
    points: float
    at: float


class PeerFilter:
    """The block list and ban state of one node.

    ``ban_threshold``: points at which a peer is banned; ``ban_seconds``: ban length;
    ``decay_per_s``: points forgiven per second; ``clock``: seconds, monotonic.
    Raises ValueError for a non-positive threshold, ban length or negative decay.
    """

    def __init__(
        self,
        *,
        ban_threshold: float = 100.0,
        ban_seconds: float = 60.0,
        decay_per_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ban_threshold <= 0 or ban_seconds <= 0 or decay_per_s < 0:
            raise ValueError("ban_threshold and ban_seconds must be positive and decay_per_s non-negative")
        self.ban_threshold = ban_threshold
        self.ban_seconds = ban_seconds
        self.decay_per_s = decay_per_s
        self.clock = clock
        self._blocked: frozenset[str] = frozenset()
        self._scores: dict[str, _Score] = {}
        self._banned_until: dict[str, float] = {}
        self.bans_total = 0

    # -- operator block list --------------------------------------------------------------------
    def set_blocked(self, peers: Iterable[str]) -> None:
        """Replace the operator's block list with ``peers`` (base58 peer ids)."""
        self._blocked = frozenset(peers)

    @property
    def blocked(self) -> frozenset[str]:
        """The operator's block list."""
        return self._blocked

    # -- misbehaviour ---------------------------------------------------------------------------
    def penalize(self, peer: str, reason: Offence, count: int = 1) -> bool:
        """Add the points of ``count`` offences of kind ``reason`` (``PENALTY_POINTS``) to
        ``peer``'s score. Returns True iff this call banned it. Raises KeyError for a reason that
        is not an ``Offence``."""
        if self.is_banned(peer):
            return False
        now = self.clock()
        score = self._current(peer, now)
        score.points += PENALTY_POINTS[reason] * count
        if score.points < self.ban_threshold:
            return False
        self._banned_until[peer] = now + self.ban_seconds
        self._scores.pop(peer, None)
        self.bans_total += 1
        return True

    def score(self, peer: str) -> float:
        """``peer``'s current misbehaviour points (after decay); 0 for a peer never penalized."""
        return self._current(peer, self.clock()).points if peer in self._scores else 0.0

    def _current(self, peer: str, now: float) -> _Score:
        score = self._scores.get(peer)
        if score is None:
            score = self._scores[peer] = _Score(0.0, now)
        else:
            score.points = max(0.0, score.points - (now - score.at) * self.decay_per_s)
            score.at = now
        return score

    def is_banned(self, peer: str) -> bool:
        """True while ``peer`` serves a misbehaviour ban."""
        until = self._banned_until.get(peer)
        if until is None:
            return False
        if self.clock() >= until:
            del self._banned_until[peer]
            return False
        return True

    def banned(self) -> dict[str, float]:
        """Peers currently banned, with the seconds left of their ban."""
        now = self.clock()
        return {p: round(u - now, 1) for p, u in list(self._banned_until.items()) if self.is_banned(p)}

    # -- the one question the network asks -------------------------------------------------------
    def refuses(self, peer: str) -> bool:
        """True iff this node must not talk to ``peer`` (operator-blocked or banned)."""
        return peer in self._blocked or self.is_banned(peer)


class RateLimiter:
    """Per-peer token bucket: ``rate`` messages per second, bursts of ``burst``.

    ``allow(peer)`` returns False for a message above the limit (the caller drops and scores it).
    At most ``max_peers`` buckets are kept: beyond that, buckets that have refilled completely
    (indistinguishable from a fresh one) are forgotten, so peers that come and go cost no memory.
    Raises ValueError for a non-positive rate or a burst below 1.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic,
                 max_peers: int = 10_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_peers = max_peers
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, peer: str) -> bool:
        """Take one token from ``peer``'s bucket; False when it is empty."""
        now = self.clock()
        if peer not in self._buckets and len(self._buckets) >= self.max_peers:
            self._forget_full(now)
        tokens, at = self._buckets.get(peer, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            self._buckets[peer] = (tokens, now)
            return False
        self._buckets[peer] = (tokens - 1, now)
        return True

    def _forget_full(self, now: float) -> None:
        self._buckets = {p: (t, at) for p, (t, at) in self._buckets.items()
                         if t + (now - at) * self.rate < self.burst}


class TopicRateLimiter:
    """Token buckets per (origin peer, logical topic): what a node accepts from one origin on each
    topic. ``limits``: ``{topic: (messages per second, burst)}``; ``allow(peer, topic)`` is False
    for a message above that topic's limit. A topic without a limit is not limited.
    Raises ValueError for a non-positive rate or a burst below 1.
    """

    def __init__(self, limits: Mapping[str, tuple[float, float]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = dict(limits)
        self._by_topic = {topic: RateLimiter(rate, burst, clock) for topic, (rate, burst) in limits.items()}

    def allow(self, peer: str, topic: str) -> bool:
        """Take one token from ``peer``'s bucket of ``topic``; False when it is empty."""
        limiter = self._by_topic.get(topic)
        return True if limiter is None else limiter.allow(peer)
