"""Counters of the network layer, read by the daemon's metrics and status endpoints."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NetworkStats:
    """Counters since the network started (all plain integers, by logical topic or reason key).

    - ``published`` / ``received``: gossip messages published by this node / queued in
      ``P2PNetwork.incoming``, by topic;
    - ``dropped``: received messages not delivered, by reason (``queue_full_consensus`` /
      ``queue_full_actions`` / ``queue_full_status``: that inbound queue was full and its oldest
      message was dropped; ``status_coalesced``: a queued status replaced by a newer one of the same
      peer; ``oversize``: above ``max_gossip_bytes``; ``oversize_rpc``: a pubsub frame above
      ``max_inbound_rpc_bytes``; ``bad_sender``: unreadable ``from`` field; ``consumer_closed``:
      the network stopped) plus ``publish_error`` for publishes the library failed;
    - ``rate_limited``: messages dropped above an origin's rate limit, by topic (their total is
      ``dropped["rate_limited"]``);
    - ``own_filtered``: our own publishes echoed back by pubsub and discarded;
    - ``connects`` / ``reconnects``: successful dials of configured peers, first time / after a loss;
    - ``dial_failures``: failed dials; ``dead_peers``: peers disconnected for missing pings;
    - ``sync_fetches`` / ``sync_fetch_failures``: ``fetch_blocks`` calls that succeeded / raised;
    - ``snapshot_chunks_fetched``: state-sync chunks received by ``fetch_snapshot_chunk``;
    - ``penalties``: misbehaviour offences scored against peers, by reason (``peer_filter``);
      ``dropped`` also counts ``refused_peer`` (gossip from a blocked or banned origin),
      ``rate_limited``, ``refused_sync_stream``, ``refused_snapshot_stream`` and ``publish_timeout``.
    """

    published: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    own_filtered: int = 0
    connects: int = 0
    reconnects: int = 0
    dial_failures: int = 0
    dead_peers: int = 0
    sync_fetches: int = 0
    sync_fetch_failures: int = 0
    snapshot_chunks_fetched: int = 0
    penalties: dict[str, int] = field(default_factory=dict)
    rate_limited: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def bump(counter: dict[str, int], key: str, n: int = 1) -> None:
        """Add ``n`` to ``counter[key]`` (creating it at 0)."""
        counter[key] = counter.get(key, 0) + n
