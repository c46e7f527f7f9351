"""Settings of the libp2p network layer and the shape of a received gossip message.

Limits here come from measurements of py-libp2p 0.8.1:
a pubsub payload of 1,048,576 bytes or more is dropped silently by the library, and a stream
message above ~6.5 MiB fails inside ``read_exactly``; so gossip payloads are capped at about
1,000,000 bytes and stream messages at 4 MiB.

Errors: ``NetworkConfigError`` (a ``ValueError``) naming the setting that is wrong and what to use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from multiaddr import Multiaddr

from ..config import DEFAULT_TOPIC_RATE_LIMITS
from .topics import TOPIC_NAMES

#: Largest gossip payload a config may allow. The library drops RPC frames >= 1 MiB; the signed
#: envelope (key, signature, topic, seqno, from) adds a few hundred bytes around the payload.
GOSSIP_PAYLOAD_HARD_LIMIT = 1_040_000
#: Largest length-prefixed stream message a config may allow (``read_exactly`` fails above ~6.5 MiB).
STREAM_MESSAGE_HARD_LIMIT = 4 * 1024 * 1024
#: Smallest stream message limit that still leaves room for frame overhead plus useful data.
STREAM_MESSAGE_MIN = 4096
#: Largest pubsub RPC frame this node SENDS: py-libp2p 0.8.1 (and go-libp2p-pubsub) read at most
#: 1 MiB per frame by default and drop the sender's stream when a frame is larger, so every RPC
#: this node writes is split to stay within it (``host.py``, ``_split_oversize_rpcs``).
OUTBOUND_RPC_LIMIT = 1024 * 1024
#: Largest inbound RPC frame a config may allow (``max_inbound_rpc_bytes``).
INBOUND_RPC_HARD_LIMIT = 16 * 1024 * 1024



class NetworkConfigError(ValueError):
    """A network setting is invalid; the message names the setting and the accepted values."""


@dataclass
class NetworkConfig:
    """Settings of one node's libp2p network.

    Fields (units in the names; sizes in bytes, times in seconds):

    - ``chain_id``: namespaces every topic (``/agent-world/{chain_id}/{name}/1``); non-empty, no ``/``
      or whitespace.
    - ``listen_addr``: ``/ip4/A.B.C.D/tcp/PORT`` (PORT 0 picks a free port; see
      ``P2PNetwork.listen_addrs()``).
    - ``peers``: full multiaddrs ending in ``/p2p/<peer id>``; the node keeps dialling each one that is
      not connected. Its own address may be in the list (it is skipped).
    - ``key_seed``: 32-byte Ed25519 seed of the node key; the peer id is derived from it as in
      ``network.host.peer_id_for_seed``.
    - ``max_gossip_bytes``: largest payload published or accepted on a topic.
    - ``max_stream_message_bytes``: largest length-prefixed message on the sync stream (a frame).
    - ``reconnect_interval_s``: how often disconnected configured peers are redialled.
    - ``dead_peer_timeout_s``: a connected peer that answers no ping for this long is disconnected
      (and redialled if configured).
    - ``consensus_queue_size`` / ``actions_queue_size``: capacity (messages) of the inbound queue of
      proposals, votes and commits / of action batches; when full the oldest is dropped (counted as
      ``dropped["queue_full_consensus"]`` / ``["queue_full_actions"]``); ``status_queue_peers``: most
      origins with a queued status (one each; see ``inbound.py``).
    - ``max_sync_heights``: most heights one sync request may ask for (both as client and server).
    - ``max_sync_response_bytes``: most payload bytes a client accepts in one sync response.
    - ``max_concurrent_sync_serves``: sync requests served at once; more are refused as busy.
    - ``gossip_degree``: gossipsub mesh degree D (low = D - 1, high = D + 1); ``None`` picks it
      from the cluster size (see ``host.gossip_degrees``).
    - ``heartbeat_interval_s``: gossipsub heartbeat (mesh maintenance) period.
    - ``dial_timeout_s``: how long one dial of a peer may take.
    - ``sync_serve_timeout_s``: how long serving one sync request may take (slow readers are cut off).
    - ``publish_timeout_s``: how long one publish may take before it is abandoned (counted).
    - ``topic_rate_limits``: ``{topic: (messages per second, burst)}`` accepted from one origin on
      each topic (every topic must be present; defaults ``agent_world_node.config.DEFAULT_TOPIC_RATE_LIMITS``,
      which gives the reasons); more are
      dropped before any decoding and scored ``rate_limited`` (``peer_filter``).
    - ``max_inbound_rpc_bytes``: largest pubsub RPC frame accepted from a peer (the library's
      default is 1 MiB; another implementation may pack two ~1 MB messages in one RPC). A larger
      frame resets the peer's pubsub stream and is scored ``oversize``.
    - ``ban_threshold`` / ``ban_seconds``: misbehaviour points that ban a peer, and for how long.

    Raises ``NetworkConfigError`` from ``validate()`` (called by ``P2PNetwork``).
    """

    chain_id: str
    listen_addr: str
    peers: list[str]
    key_seed: bytes
    max_gossip_bytes: int = 1_000_000
    max_stream_message_bytes: int = 4 * 1024 * 1024
    reconnect_interval_s: float = 1.0
    dead_peer_timeout_s: float = 3.0
    consensus_queue_size: int = 4096
    actions_queue_size: int = 256
    status_queue_peers: int = 1024
    max_sync_heights: int = 500
    max_sync_response_bytes: int = 256 * 1024 * 1024
    max_concurrent_sync_serves: int = 4
    gossip_degree: int | None = None
    heartbeat_interval_s: float = 0.5
    dial_timeout_s: float = 5.0
    sync_serve_timeout_s: float = 60.0
    publish_timeout_s: float = 5.0
    topic_rate_limits: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_TOPIC_RATE_LIMITS))
    max_inbound_rpc_bytes: int = 4 * 1024 * 1024
    ban_threshold: float = 100.0
    ban_seconds: float = 60.0

    def validate(self) -> None:
        """Check every field; raise ``NetworkConfigError`` naming the first bad one and the fix."""
        if not isinstance(self.chain_id, str) or not self.chain_id:
            raise NetworkConfigError("chain_id must be a non-empty string (the chain id from genesis.json)")
        if "/" in self.chain_id or any(c.isspace() for c in self.chain_id):
            raise NetworkConfigError(
                f"chain_id {self.chain_id!r} must not contain '/' or whitespace: it is part of topic names"
            )
        if not isinstance(self.key_seed, (bytes, bytearray)) or len(self.key_seed) != 32:
            raise NetworkConfigError(
                "key_seed must be the 32-byte Ed25519 seed of the node key (config/node_key.json)"
            )
        parse_listen_addr(self.listen_addr)
        for addr in self.peers:
            parse_peer_addr(addr)
        if not (1 <= self.max_gossip_bytes <= GOSSIP_PAYLOAD_HARD_LIMIT):
            raise NetworkConfigError(
                f"max_gossip_bytes={self.max_gossip_bytes} must be in 1..{GOSSIP_PAYLOAD_HARD_LIMIT}: "
                "py-libp2p silently drops pubsub frames of 1 MiB or more; send large data by sync"
            )
        if not (STREAM_MESSAGE_MIN <= self.max_stream_message_bytes <= STREAM_MESSAGE_HARD_LIMIT):
            raise NetworkConfigError(
                f"max_stream_message_bytes={self.max_stream_message_bytes} must be in "
                f"{STREAM_MESSAGE_MIN}..{STREAM_MESSAGE_HARD_LIMIT} (py-libp2p fails above ~6.5 MiB)"
            )
        for name in ("reconnect_interval_s", "dead_peer_timeout_s", "heartbeat_interval_s",
                     "dial_timeout_s", "sync_serve_timeout_s", "publish_timeout_s", "ban_threshold",
                     "ban_seconds"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise NetworkConfigError(f"{name}={value!r} must be a positive number")
        for name in ("consensus_queue_size", "actions_queue_size", "status_queue_peers", "max_sync_heights", "max_sync_response_bytes",
                     "max_concurrent_sync_serves"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise NetworkConfigError(f"{name}={value!r} must be a positive integer")
        if not isinstance(self.topic_rate_limits, dict) or set(self.topic_rate_limits) != set(TOPIC_NAMES):
            raise NetworkConfigError(
                f"topic_rate_limits must give (per second, burst) for exactly the topics {', '.join(TOPIC_NAMES)}"
            )
        for topic, limit in self.topic_rate_limits.items():
            rate, burst = limit
            if not (isinstance(rate, (int, float)) and rate > 0 and isinstance(burst, (int, float)) and burst >= 1):
                raise NetworkConfigError(
                    f"topic_rate_limits[{topic!r}]={limit!r}: the rate must be positive and the burst at least 1"
                )
        if not (OUTBOUND_RPC_LIMIT <= self.max_inbound_rpc_bytes <= INBOUND_RPC_HARD_LIMIT):
            raise NetworkConfigError(
                f"max_inbound_rpc_bytes={self.max_inbound_rpc_bytes} must be in {OUTBOUND_RPC_LIMIT}.."
                f"{INBOUND_RPC_HARD_LIMIT}: peers send RPCs of up to 1 MiB"
            )
        if self.gossip_degree is not None and not (2 <= self.gossip_degree <= 12):
            raise NetworkConfigError(
                f"gossip_degree={self.gossip_degree} must be in 2..12, or None to pick it from the cluster size"
            )


@dataclass(frozen=True)
class InboundMessage:
    """One gossip message from another node.

    ``topic``: the logical topic name (``"proposal"``, ``"vote"``, ``"commit"``, ``"actions"``,
    ``"status"``); ``data``: the payload exactly as published (at most ``max_gossip_bytes``);
    ``peer_id``: base58 peer id of the node that published it (the pubsub ``from`` field, checked
    against the message signature by libp2p), not of the peer that forwarded it.
    Validating ``data`` (decoding, signatures) is the receiver's job.
    """

    topic: str
    data: bytes
    peer_id: str


def parse_listen_addr(addr: str) -> Multiaddr:
    """Parse a listen multiaddr ``/ip4|ip6/HOST/tcp/PORT``; raise ``NetworkConfigError`` if it is not one."""
    try:
        maddr = Multiaddr(addr)
    except Exception as exc:
        raise NetworkConfigError(
            f"listen_addr {addr!r} is not a multiaddr ({exc}); use e.g. /ip4/127.0.0.1/tcp/26656"
        ) from None
    names = [p.name for p in maddr.protocols()]
    if len(names) != 2 or names[0] not in ("ip4", "ip6") or names[1] != "tcp":
        raise NetworkConfigError(
            f"listen_addr {addr!r} must be /ip4/HOST/tcp/PORT or /ip6/HOST/tcp/PORT, e.g. /ip4/127.0.0.1/tcp/26656"
        )
    return maddr


def parse_peer_addr(addr: str) -> Multiaddr:
    """Parse a peer multiaddr that ends in ``/p2p/<peer id>``; raise ``NetworkConfigError`` otherwise."""
    try:
        maddr = Multiaddr(addr)
    except Exception as exc:
        raise NetworkConfigError(
            f"peer address {addr!r} is not a multiaddr ({exc}); "
            "use e.g. /ip4/127.0.0.1/tcp/26656/p2p/12D3KooW..."
        ) from None
    names = [p.name for p in maddr.protocols()]
    if not names or names[-1] != "p2p" or "tcp" not in names:
        raise NetworkConfigError(
            f"peer address {addr!r} must be a TCP address ending in /p2p/<peer id>, "
            "e.g. /ip4/127.0.0.1/tcp/26656/p2p/12D3KooW... (awnode testnet writes these)"
        )
    try:
        from libp2p.peer.id import ID

        ID.from_base58(maddr.value_for_protocol("p2p"))
    except Exception:
        raise NetworkConfigError(f"peer address {addr!r}: the /p2p/ part is not a valid peer id") from None
    return maddr
