"""``P2PNetwork``: the node's libp2p host, gossip topics, block-sync protocol and peer upkeep.

One libp2p host (Noise + yamux), gossipsub topics for proposals,
votes, commits and batched actions (plus status), and a stream protocol for height-keyed sync of
committed blocks. This class owns all of it; the daemon sees bytes in (``incoming`` /
``next_message()``) and bytes out (``publish``, ``fetch_blocks``), and never touches libp2p objects.

What runs inside ``run()`` (all stopped on exit or cancellation):

- the host listening on ``listen_addr`` (see ``host.py`` for the settings that differ from the
  library defaults and why);
- Pubsub + GossipSub, subscribed to every topic of the chain; one task per topic drains its
  subscription at once into ``incoming`` (the library's own 32-message channel must never fill),
  dropping our own echoed publishes;
- the reconnect loop: every ``reconnect_interval_s`` each configured peer that is not connected is
  dialled with its full ``PeerInfo`` (the library forgets addresses after 120 s) after
  ``unblock_peer`` (the library refuses to redial for 60 s after a failure);
- dead-peer detection by pings (``liveness.py``);
- the sync server (``sync.py``);
- the peer filter (``peer_filter.py``): peers on the operator's block list or banned for
  misbehaviour are disconnected, not dialled, put on pubsub's blacklist (their messages are dropped
  even when relayed, before any signature check: pubsub's strict signing authenticates the origin)
  and their sync streams are refused. Each topic has a pubsub validator (``_gate``) that refuses,
  before the library forwards or delivers it, gossip from a refused origin, above the origin's
  per-topic rate limit (``topic_rate_limits``; scored) or above ``max_gossip_bytes`` (scored); the
  daemon scores what it finds invalid with ``penalize``.

Back-pressure: ``incoming`` is an ``InboundQueues`` (``inbound.py``): bounded queues per class, so
consensus messages never wait behind action batches or status heartbeats, status keeps only the
latest message of each peer, and when the daemon falls behind the OLDEST message of the full class
is dropped (anything lost is recovered by re-gossip or sync) and counted in
``stats()["dropped"]["queue_full_<class>"]``. The pubsub readers never block.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee, ISubscriptionAPI
from libp2p.io.exceptions import MessageTooLarge
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from ..types import Offence
from .config import InboundMessage, NetworkConfig, parse_listen_addr, parse_peer_addr
from .host import build_gossipsub, build_host, build_pubsub, check_listen_address_free, key_pair_from_seed
from .inbound import InboundQueues
from .liveness import PeerLiveness
from .log_bridge import install_libp2p_log_bridge
from .peer_filter import PeerFilter, TopicRateLimiter
from .statesync import SNAPSHOT_PROTOCOL_ID, ChunkSource, ManifestSource, SnapshotServer, request_chunk, request_manifests
from .stats import NetworkStats
from .sync import SYNC_PROTOCOL_ID, StreamServer, SyncError, SyncHandler, SyncServer, request_blocks
from .topics import topic_ids

log = structlog.get_logger(__name__)

#: How long closing the host (connections, listeners) may take when the network stops.
HOST_CLOSE_TIMEOUT_S = 5.0
#: How long disconnecting a dead peer may take.
DISCONNECT_TIMEOUT_S = 2.0


#: Attributes leading from a swarm connection down to its TCP stream in py-libp2p 0.8.1:
#: SwarmConn.muxed_conn (Yamux) .secured_conn (SecureSession) .conn (Noise read-writer)
#: .read_writer (Noise packets) .read_writer (RawConnection) .stream (TrioTCPStream) .stream.
_LAYERS = ("muxed_conn", "secured_conn", "conn", "read_writer", "stream")


def _tcp_socket_stream(conn: object) -> trio.SocketStream | None:
    """The ``trio.SocketStream`` under a libp2p connection, or None if the layers differ."""
    obj = conn
    for _ in range(12):
        if isinstance(obj, trio.SocketStream):
            return obj
        for attr in _LAYERS:
            inner = getattr(obj, attr, None)
            if inner is not None and inner is not obj:
                obj = inner
                break
        else:
            return None
    return None


class _ConnectionGate(INotifee):
    """Cuts a new connection from a peer the filter refuses as soon as it opens (the reconnect
    loop's sweep would take up to ``reconnect_interval_s``, long enough for a banned peer to
    deliver a burst)."""

    def __init__(self, network: "P2PNetwork") -> None:
        self._network = network

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id.to_base58()
        if self._network.peer_filter.refuses(peer):
            NetworkStats.bump(self._network._stats.dropped, "refused_connection")
            self._network._disconnect_soon(peer)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._network._disconnecting.discard(conn.muxed_conn.peer_id)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr) -> None:  # type: ignore[no-untyped-def]
        pass

    async def listen_close(self, network: INetwork, multiaddr) -> None:  # type: ignore[no-untyped-def]
        pass


#: ``screen(topic, data)``: a drop reason for a received message no node needs, or None
#: (``P2PNetwork``).
Screen = Callable[[str, bytes], "str | None"]


#: Multiaddr protocols naming a host by DNS name (``/dns4/validator1/tcp/26656/p2p/...``).
DNS_PROTOCOLS = {"dns": 0, "dns4": trio.socket.AF_INET, "dns6": trio.socket.AF_INET6}


async def resolve_dns(info: PeerInfo) -> PeerInfo:
    """``info`` with every ``/dns``, ``/dns4`` or ``/dns6`` address resolved to ``/ip4``/``/ip6``
    addresses (all the name has), at each dial, so a peer whose address changes (a container
    restarted) is found again. Addresses that do not resolve are left out; raises OSError when
    none is left."""
    out = []
    failed: OSError | None = None
    for addr in info.addrs:
        names = [p.name for p in addr.protocols()]
        if not names or names[0] not in DNS_PROTOCOLS:
            out.append(addr)
            continue
        host, port = addr.value_for_protocol(names[0]), addr.value_for_protocol("tcp")
        try:
            found = await trio.socket.getaddrinfo(host, int(port), family=DNS_PROTOCOLS[names[0]],
                                                  type=trio.socket.SOCK_STREAM)
        except OSError as exc:
            failed = exc
            continue
        for family, _, _, _, sockaddr in found:
            out.append(Multiaddr(f"/{'ip6' if family == trio.socket.AF_INET6 else 'ip4'}/{sockaddr[0]}/tcp/{port}"))
    if not out:
        raise OSError(f"no address of peer {info.peer_id.to_base58()} resolves ({failed})")
    return PeerInfo(info.peer_id, list(dict.fromkeys(out)))


class P2PNetwork:
    """A node's libp2p network. Construct, then ``async with network.run():`` (once per instance).

    ``config``: a ``NetworkConfig`` (validated here; ``NetworkConfigError`` if invalid).
    ``sync_handler(from_height, to_height)``: returns the encoded ``ReplicatedCommitPayload`` bytes
    this node has for those heights (inclusive, height order, possibly fewer); it serves other
    nodes' ``fetch_blocks``. ``screen(topic, data)`` (optional): a cheap look at a received
    message's payload, run in the topic validator after the rate limit; it returns a drop reason
    for a message no node needs (a vote for a decided height, say), which is then neither
    delivered nor forwarded and is counted, not penalized; None passes it.
    Attributes: ``peer_id`` (base58 of this node), ``incoming`` (the ``InboundQueues`` of received
    gossip: ``await incoming.receive()``, ``receive_nowait()`` or ``async for``, by priority;
    closed when ``run()`` exits).
    """

    def __init__(self, config: NetworkConfig, sync_handler: SyncHandler, screen: Screen | None = None,
                 snapshots: tuple[ManifestSource, ChunkSource] | None = None) -> None:
        config.validate()
        self.config = config
        self._screen = screen
        self._key_pair = key_pair_from_seed(config.key_seed)
        self._id = ID.from_pubkey(self._key_pair.public_key)
        self.peer_id: str = self._id.to_base58()
        self._listen_maddr = parse_listen_addr(config.listen_addr)
        self._peer_infos: list[PeerInfo] = []
        seen: set[ID] = set()
        for addr in config.peers:
            info = info_from_p2p_addr(parse_peer_addr(addr))
            if info.peer_id == self._id or info.peer_id in seen:
                continue  # our own address (testnets list every node), or a duplicate
            seen.add(info.peer_id)
            self._peer_infos.append(info)
        self._topics = topic_ids(config.chain_id)
        self._stats = NetworkStats()
        self.incoming = InboundQueues(config.consensus_queue_size, config.actions_queue_size,
                                      config.status_queue_peers, dropped=self._stats.dropped)
        self._sync_server = SyncServer(
            config.chain_id,
            sync_handler,
            max_heights=config.max_sync_heights,
            max_frame_bytes=config.max_stream_message_bytes,
            max_concurrent=config.max_concurrent_sync_serves,
            serve_timeout_s=config.sync_serve_timeout_s,
        )
        self._snapshot_server = SnapshotServer(
            config.chain_id,
            *(snapshots or (list, lambda height, index: None)),
            max_frame_bytes=config.max_stream_message_bytes,
            serve_timeout_s=config.sync_serve_timeout_s,
        )
        self._liveness = PeerLiveness(config.dead_peer_timeout_s, self._on_dead_peer, self._on_ping_answer)
        self.peer_filter = PeerFilter(ban_threshold=config.ban_threshold, ban_seconds=config.ban_seconds)
        self._rate = TopicRateLimiter(config.topic_rate_limits)
        self._tasks: trio.Nursery | None = None
        self._last_seen: dict[str, float] = {}
        self._ever_connected: set[ID] = set()
        self._lost: set[ID] = set()  # configured peers seen connected, then not
        self._dialing: set[ID] = set()
        self._disconnecting: set[ID] = set()  # being disconnected by us; not "reconnected"
        self._dial_failures_in_row: dict[ID, int] = {}
        self._host: IHost | None = None
        self._pubsub: Pubsub | None = None
        self._router: GossipSub | None = None
        self._entered = False
        self._running = False

    # ------------------------------------------------------------------ lifecycle

    @asynccontextmanager
    async def run(self) -> AsyncIterator["P2PNetwork"]:
        """Start the host, pubsub, subscriptions, reconnect loop, dead-peer detection and sync
        server; yield this network; stop everything on exit or cancellation and close ``incoming``.

        Raises RuntimeError if entered a second time (make a new ``P2PNetwork`` to restart; the
        same seed and port give the same peer id and address), ``ListenAddressInUseError`` if
        another socket listens on ``listen_addr``. Other errors from the library while starting
        propagate.
        """
        if self._entered:
            raise RuntimeError("P2PNetwork.run() can be entered only once; create a new P2PNetwork to restart")
        self._entered = True
        install_libp2p_log_bridge()
        check_listen_address_free(self._listen_maddr)
        host = build_host(self._key_pair, self._listen_maddr)
        router = build_gossipsub(
            len(self._peer_infos) + 1,
            degree=self.config.gossip_degree,
            heartbeat_interval_s=self.config.heartbeat_interval_s,
        )
        pubsub = build_pubsub(host, router, set(self._topics.values()), on_bad_stream=self._on_bad_pubsub_stream,
                              max_inbound_rpc_bytes=self.config.max_inbound_rpc_bytes)
        host.set_stream_handler(SYNC_PROTOCOL_ID, self._handle_sync_stream)
        host.set_stream_handler(SNAPSHOT_PROTOCOL_ID, self._handle_snapshot_stream)
        host.get_network().register_notifee(_ConnectionGate(self))
        try:
            async with host.run([self._listen_maddr]):
                try:
                    async with background_trio_service(pubsub), background_trio_service(router):
                        await pubsub.wait_until_ready()
                        self._host, self._pubsub, self._router = host, pubsub, router
                        for name, tid in self._topics.items():
                            pubsub.set_topic_validator(tid, self._gate(name), False)
                        subscriptions = {name: await pubsub.subscribe(tid) for name, tid in self._topics.items()}
                        async with trio.open_nursery() as nursery:
                            self._tasks = nursery
                            for name, subscription in subscriptions.items():
                                nursery.start_soon(self._drain, name, subscription)
                            nursery.start_soon(self._reconnect_loop)
                            nursery.start_soon(self._liveness.run, host)
                            self._running = True
                            log.info(
                                "network_started",
                                peer=self.peer_id,
                                listen=[str(a) for a in host.get_transport_addrs()],
                                configured_peers=len(self._peer_infos),
                            )
                            try:
                                yield self
                            finally:
                                self._running = False
                                self._tasks = None
                                nursery.cancel_scope.cancel()
                                # Close every connection while pubsub still runs: a pubsub stream
                                # reader that outlives the pubsub service crashes the swarm with
                                # "Nursery is closed to new arrivals" (py-libp2p 0.8.1).
                                await self._close_host(host)
                finally:
                    await self._close_host(host)  # idempotent; covers a failed start
        finally:
            self._running = False
            self.incoming.close()
            log.info("network_stopped", peer=self.peer_id)

    async def _close_host(self, host: IHost) -> None:
        """Close connections and listening sockets, shielded from cancellation.

        Needed because py-libp2p 0.8.1 runs each TCP listener as a trio *system* task: when the
        host's service is merely cancelled (the ``host.run()`` exit path) the swarm's cleanup is
        itself cancelled before it closes the listener, which then keeps accepting connections on
        the port after the node has stopped (and, with SO_REUSEPORT, steals connections from a
        restarted node on the same port).
        """
        with trio.move_on_after(HOST_CLOSE_TIMEOUT_S) as scope:
            scope.shield = True
            try:
                # Listeners first, so no peer reconnects while the connections are being closed.
                # Out of the swarm's table before closing: pubsub, still forwarding, reads the
                # listen addresses for its signed peer record, and a socket closed but still
                # listed answers EBADF, which crashes the pubsub service (py-libp2p 0.8.1).
                listeners = getattr(host.get_network(), "listeners", {})
                closing = list(listeners.values())
                listeners.clear()
                for listener in closing:
                    await listener.close()
                await host.close()
            except Exception as exc:
                log.warning("host_close_failed", peer=self.peer_id, error=repr(exc))
        if scope.cancelled_caught:
            log.warning("host_close_timeout", peer=self.peer_id, timeout_s=HOST_CLOSE_TIMEOUT_S)

    def _require_running(self) -> tuple[IHost, Pubsub]:
        if not self._running or self._host is None or self._pubsub is None:
            raise RuntimeError("the network is not running; use it inside `async with network.run():`")
        return self._host, self._pubsub

    # ------------------------------------------------------------------ gossip

    async def publish(self, topic: str, data: bytes) -> None:
        """Publish ``data`` on logical ``topic`` (one of ``topics.TOPIC_NAMES``), best-effort.

        Raises ValueError for an unknown topic or when ``len(data) > max_gossip_bytes`` (send large
        data by sync instead), TypeError if ``data`` is not bytes, RuntimeError if not running. A
        failure inside the library is logged and counted (``dropped["publish_error"]``), not raised:
        gossip is best-effort and everything is recoverable by sync.
        """
        if topic not in self._topics:
            raise ValueError(f"unknown topic {topic!r}; use one of {', '.join(self._topics)}")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        if len(data) > self.config.max_gossip_bytes:
            raise ValueError(
                f"payload of {len(data)} bytes on topic {topic!r} exceeds max_gossip_bytes="
                f"{self.config.max_gossip_bytes}; send large data over the sync protocol"
            )
        _, pubsub = self._require_running()
        try:
            with trio.move_on_after(self.config.publish_timeout_s) as scope:
                await pubsub.publish(self._topics[topic], bytes(data))
            if scope.cancelled_caught:
                NetworkStats.bump(self._stats.dropped, "publish_timeout")
                log.warning("publish_timeout", topic=topic, size=len(data), timeout_s=self.config.publish_timeout_s)
                return
        except Exception as exc:
            NetworkStats.bump(self._stats.dropped, "publish_error")
            log.error("publish_failed", topic=topic, size=len(data), error=repr(exc))
            return
        NetworkStats.bump(self._stats.published, topic)

    async def next_message(self) -> InboundMessage:
        """The next received gossip message, consensus first (see ``inbound.py``); waits for one.
        Raises ``trio.EndOfChannel`` once the network has stopped and everything was taken."""
        return await self.incoming.receive()

    def _gate(self, topic: str) -> Callable[[ID, Any], bool]:
        """The pubsub topic validator of logical ``topic``: whether a received message may be
        delivered and forwarded. Refused origins, messages above the origin's rate limit on the
        topic (scored ``RATE_LIMITED``), oversized payloads (scored ``OVERSIZE``) and messages the
        ``screen`` finds useless (counted under its reason) are refused, in that order. py-libp2p
        runs it for every copy it receives, after the signature check and before it forwards the
        message to its mesh peers or delivers it (``Pubsub.push_msg``),
        so a flood neither spreads through this node nor is undercounted when the daemon falls
        behind. Our own messages pass."""
        own = self._id.to_bytes()
        limit = self.config.max_gossip_bytes
        screen = self._screen

        def validate(forwarder: ID, msg: Any) -> bool:
            if msg.from_id == own:
                return True
            try:
                sender = ID(msg.from_id).to_base58()
            except Exception:
                NetworkStats.bump(self._stats.dropped, "bad_sender")
                return False
            if self.peer_filter.refuses(sender):
                NetworkStats.bump(self._stats.dropped, "refused_peer")
                return False
            if not self._rate.allow(sender, topic):
                NetworkStats.bump(self._stats.dropped, "rate_limited")
                NetworkStats.bump(self._stats.rate_limited, topic)
                self.penalize(sender, Offence.RATE_LIMITED)
                return False
            if len(msg.data) > limit:
                NetworkStats.bump(self._stats.dropped, "oversize")
                log.warning("gossip_oversize_dropped", topic=topic, peer=sender, size=len(msg.data), limit=limit)
                self.penalize(sender, Offence.OVERSIZE)
                return False
            if screen is not None and (reason := screen(topic, msg.data)) is not None:
                NetworkStats.bump(self._stats.dropped, reason)
                return False
            return True

        return validate

    async def _drain(self, topic: str, subscription: ISubscriptionAPI) -> None:
        """Move every message of one subscription (already passed by ``_gate``) into ``incoming``
        without ever blocking; our own echoes are dropped and counted."""
        own = self._id.to_bytes()
        async for msg in subscription:
            if msg.from_id == own:
                self._stats.own_filtered += 1
                continue
            sender = ID(msg.from_id)
            self._last_seen[sender.to_base58()] = time.monotonic()
            self._liveness.note_traffic(sender)
            self._deliver(InboundMessage(topic=topic, data=bytes(msg.data), peer_id=sender.to_base58()))

    def _deliver(self, message: InboundMessage) -> None:
        """Queue ``message`` for the daemon (never blocks; drops are counted by the queues)."""
        try:
            self.incoming.put(message)
        except trio.ClosedResourceError:
            NetworkStats.bump(self._stats.dropped, "consumer_closed")
            return
        NetworkStats.bump(self._stats.received, message.topic)

    # ------------------------------------------------------------------ peer filter

    def penalize(self, peer_id: str, reason: Offence, count: int = 1) -> None:
        """Score ``count`` offences of kind ``reason`` (see ``peer_filter.PENALTY_POINTS``) against
        ``peer_id``; a peer whose score reaches the threshold is banned and disconnected."""
        if peer_id == self.peer_id:
            return
        NetworkStats.bump(self._stats.penalties, reason, count)
        if self.peer_filter.penalize(peer_id, reason, count):
            log.warning("peer_banned", peer=peer_id, reason=reason, ban_s=self.peer_filter.ban_seconds)
            self._sync_pubsub_blacklist()
            self._disconnect_soon(peer_id)

    async def _on_bad_pubsub_stream(self, peer_id: ID, error: Exception) -> None:
        """A pubsub stream from ``peer_id`` sent a frame the library cannot parse, or one above
        ``max_inbound_rpc_bytes`` (``MessageTooLarge``): score it (``BAD_PUBSUB_FRAME`` /
        ``OVERSIZE``), and drop the connection so the pubsub handshake starts afresh when it is
        redialled (the library has already forgotten the peer for pubsub)."""
        if isinstance(error, MessageTooLarge):
            NetworkStats.bump(self._stats.dropped, "oversize_rpc")
            self.penalize(peer_id.to_base58(), Offence.OVERSIZE)
        else:
            NetworkStats.bump(self._stats.dropped, "bad_pubsub_frame")
            self.penalize(peer_id.to_base58(), Offence.BAD_PUBSUB_FRAME)
        await self._disconnect(peer_id)

    def _sync_pubsub_blacklist(self) -> None:
        """Make pubsub's blacklist the peers the filter refuses now: pubsub then drops their
        messages, relayed or not, before checking a signature, and forgets their subscriptions.
        Called on every ban, block-list change and reconnect sweep (a ban's end)."""
        pubsub = self._pubsub
        if pubsub is None:
            return
        # The set itself, not add_to_blacklist: that also spawns a teardown task of the library
        # that raises KeyError (and stops the pubsub service) when our own disconnect removed the
        # peer first (py-libp2p 0.8.1 Pubsub._teardown_if_connected). The connection is ours to cut.
        refused = {ID.from_base58(p) for p in self.peer_filter.blocked} | {
            ID.from_base58(p) for p in self.peer_filter.banned()}
        blacklist = pubsub.blacklisted_peers
        blacklist.intersection_update(refused)
        blacklist.update(refused)

    def set_blocked_peers(self, peer_ids: list[str]) -> None:
        """Replace the operator's block list (base58 peer ids) and disconnect the blocked peers now.
        Raises ValueError for a string that is not a peer id."""
        for p in peer_ids:
            try:
                ID.from_base58(p)
            except Exception:
                raise ValueError(f"{p!r} is not a base58 libp2p peer id") from None
        self.peer_filter.set_blocked(peer_ids)
        self._sync_pubsub_blacklist()
        log.info("peer_filter_set", blocked=sorted(peer_ids))
        for p in peer_ids:
            self._disconnect_soon(p)

    def _disconnect_soon(self, peer_id: str) -> None:
        if self._tasks is None or self._host is None:
            return
        self._tasks.start_soon(self._disconnect, ID.from_base58(peer_id))

    async def _disconnect(self, peer_id: ID) -> None:
        """Close every connection to ``peer_id``: gracefully (yamux GO_AWAY) within
        ``DISCONNECT_TIMEOUT_S``, else by closing the TCP socket under it. The graceful close
        blocks when a frozen (SIGSTOPped) peer's receive buffer is full, and py-libp2p 0.8.1 then
        marks the connection closed without removing it, so it would linger until the next
        dead-peer sweep. Until the library reports it gone, the peer is not counted as connected
        again by the reconnect loop."""
        host = self._host
        if host is None or peer_id not in host.get_connected_peers():
            return
        self._disconnecting.add(peer_id)
        with trio.move_on_after(DISCONNECT_TIMEOUT_S) as scope:
            try:
                await host.disconnect(peer_id)
            except Exception as exc:
                log.warning("peer_disconnect_failed", peer=peer_id.to_base58(), error=repr(exc))
        if scope.cancelled_caught or peer_id in host.get_connected_peers():
            closed = 0
            for conn in host.get_network().get_connections(peer_id):
                sock = _tcp_socket_stream(conn)
                if sock is not None:
                    sock.socket.close()  # wakes every task blocked on it with ClosedResourceError
                    closed += 1
            host.get_network().connections.pop(peer_id, None)
            NetworkStats.bump(self._stats.dropped, "forced_disconnect")
            log.warning("peer_disconnect_forced", peer=peer_id.to_base58(), sockets_closed=closed,
                        graceful_timeout_s=DISCONNECT_TIMEOUT_S)

    async def _handle_sync_stream(self, stream: INetStream) -> None:
        await self._serve_stream(stream, self._sync_server)

    async def _handle_snapshot_stream(self, stream: INetStream) -> None:
        await self._serve_stream(stream, self._snapshot_server)

    async def _serve_stream(self, stream: INetStream, server: StreamServer) -> None:
        """Serve a sync or snapshot stream, unless its peer is blocked or banned (then reset it)."""
        try:
            peer = stream.muxed_conn.peer_id.to_base58()
        except Exception:
            peer = ""
        if peer and self.peer_filter.refuses(peer):
            NetworkStats.bump(self._stats.dropped, f"refused_{server.name}_stream")
            with trio.move_on_after(DISCONNECT_TIMEOUT_S):
                try:
                    await stream.reset()
                except Exception:
                    pass
            return
        await server.handle_stream(stream)

    # ------------------------------------------------------------------ peers

    async def _reconnect_loop(self) -> None:
        """Dial every configured peer that is not connected, every ``reconnect_interval_s``."""
        host = self._host
        assert host is not None
        async with trio.open_nursery() as nursery:
            while True:
                self._sync_pubsub_blacklist()
                connected = set(host.get_connected_peers())
                for peer_id in connected:  # inbound connections from refused peers are cut here
                    if self.peer_filter.refuses(peer_id.to_base58()):
                        nursery.start_soon(self._disconnect, peer_id)
                self._disconnecting &= connected
                for info in self._peer_infos:
                    if self.peer_filter.refuses(info.peer_id.to_base58()):
                        continue
                    if info.peer_id in self._disconnecting:
                        continue
                    if info.peer_id in connected:
                        self._note_connected(info.peer_id)
                        continue
                    if info.peer_id in self._ever_connected and info.peer_id not in self._lost:
                        self._lost.add(info.peer_id)
                        log.info("peer_lost", peer=info.peer_id.to_base58())
                    if info.peer_id not in self._dialing:
                        self._dialing.add(info.peer_id)
                        nursery.start_soon(self._dial, host, info)
                await trio.sleep(self.config.reconnect_interval_s)

    def _note_connected(self, peer_id: ID) -> None:
        """Count a configured peer's first connection or its return after a loss (whoever dialled:
        this node, the peer, or the library's own auto-connector)."""
        if peer_id in self._lost:
            self._lost.discard(peer_id)
            self._stats.reconnects += 1
            log.info("peer_reconnected", peer=peer_id.to_base58())
        elif peer_id not in self._ever_connected:
            self._ever_connected.add(peer_id)
            self._stats.connects += 1
            log.info("peer_connected", peer=peer_id.to_base58())

    async def _dial(self, host: IHost, info: PeerInfo) -> None:
        peer = info.peer_id.to_base58()
        try:
            network = host.get_network()
            unblock = getattr(network, "unblock_peer", None)
            if unblock is not None:
                unblock(info.peer_id)  # the library's 60 s negative cache would hide a restarted peer
            with trio.move_on_after(self.config.dial_timeout_s) as scope:
                await host.connect(await resolve_dns(info))
            if scope.cancelled_caught:
                raise TimeoutError(f"dial did not finish within {self.config.dial_timeout_s} s")
        except Exception as exc:
            self._stats.dial_failures += 1
            failures = self._dial_failures_in_row.get(info.peer_id, 0) + 1
            self._dial_failures_in_row[info.peer_id] = failures
            # Log the first failure of a streak; later ones (once per interval) only at debug.
            (log.info if failures == 1 else log.debug)(
                "peer_dial_failed", peer=peer, failures_in_row=failures, error=f"{type(exc).__name__}: {exc}"
            )
            return
        finally:
            self._dialing.discard(info.peer_id)
        self._dial_failures_in_row[info.peer_id] = 0
        self._note_connected(info.peer_id)

    async def _on_dead_peer(self, peer_id: ID, silent_for_s: float) -> None:
        self._stats.dead_peers += 1
        if peer_id in self._ever_connected:
            self._lost.add(peer_id)
        log.warning("peer_dead", peer=peer_id.to_base58(), silent_for_s=round(silent_for_s, 3))
        await self._disconnect(peer_id)

    def _on_ping_answer(self, peer_id: ID) -> None:
        self._last_seen[peer_id.to_base58()] = time.monotonic()

    def connected_peers(self) -> list[str]:
        """Return the base58 ids of peers with an open connection, sorted ([] when not running)."""
        if self._host is None or not self._running:
            return []
        peers = (p.to_base58() for p in self._host.get_connected_peers())
        return sorted(p for p in peers if not self.peer_filter.refuses(p))

    def last_seen(self, peer_id: str) -> float | None:
        """Return when (``time.monotonic()`` seconds) ``peer_id`` was last heard from: a gossip
        message it published or a ping it answered; None if never."""
        return self._last_seen.get(peer_id)

    def mesh_peers(self, topic: str) -> list[str]:
        """Return the base58 ids of this node's GossipSub mesh peers for logical ``topic``, sorted.
        Raises ValueError for an unknown topic."""
        if topic not in self._topics:
            raise ValueError(f"unknown topic {topic!r}; use one of {', '.join(self._topics)}")
        if self._router is None or not self._running:
            return []
        return sorted(p.to_base58() for p in self._router.mesh.get(self._topics[topic], set()))

    def listen_addrs(self) -> list[str]:
        """Return the full multiaddrs (with ``/p2p/<peer id>``) this node listens on; with port 0
        in ``listen_addr`` they carry the port actually bound. Raises RuntimeError if not running."""
        host, _ = self._require_running()
        return [f"{addr}/p2p/{self.peer_id}" for addr in host.get_transport_addrs()]

    # ------------------------------------------------------------------ sync

    async def fetch_blocks(self, peer_id: str, from_height: int, to_height: int, *, timeout_s: float = 10) -> list[bytes]:
        """Fetch the committed payloads of heights ``from_height..to_height`` (inclusive) from
        ``peer_id`` over ``/agent-world/sync/1.0.0``; return them in height order (fewer if the
        peer has fewer, never more). A configured peer that is not connected is dialled first.

        Raises ValueError for a bad range (``to < from``, negative, more than ``max_sync_heights``
        heights: split it) or peer id; ``SyncError`` (with ``.reason``) on timeout after
        ``timeout_s`` seconds, refusal, oversize or malformed response, or an unreachable peer;
        RuntimeError if not running.
        """
        host, _ = self._require_running()
        if self.peer_filter.refuses(peer_id):
            raise SyncError(peer_id, "the peer is blocked or banned on this node")
        info = next((i for i in self._peer_infos if i.peer_id.to_base58() == peer_id), None)
        try:
            payloads = await request_blocks(
                host,
                peer_id,
                self.config.chain_id,
                from_height,
                to_height,
                timeout_s=timeout_s,
                max_frame_bytes=self.config.max_stream_message_bytes,
                max_heights=self.config.max_sync_heights,
                max_total_bytes=self.config.max_sync_response_bytes,
                peer_info=info,
            )
        except SyncError as exc:
            self._stats.sync_fetch_failures += 1
            log.info("sync_fetch_failed", peer=peer_id, from_height=from_height, to_height=to_height,
                     reason=exc.reason)
            raise
        self._stats.sync_fetches += 1
        return payloads

    async def fetch_snapshot_manifests(self, peer_id: str, *, timeout_s: float = 10) -> list[bytes]:
        """The encoded state-sync snapshot manifests ``peer_id`` offers over
        ``/agent-world/snapshot/1.0.0`` (unverified). Raises ``SyncError`` (timeout, refusal,
        malformed answer, unreachable, blocked or banned peer); RuntimeError if not running."""
        host, _ = self._require_running()
        if self.peer_filter.refuses(peer_id):
            raise SyncError(peer_id, "the peer is blocked or banned on this node")
        info = next((i for i in self._peer_infos if i.peer_id.to_base58() == peer_id), None)
        return await request_manifests(host, peer_id, self.config.chain_id, timeout_s=timeout_s,
                                       max_frame_bytes=self.config.max_stream_message_bytes, peer_info=info)

    async def fetch_snapshot_chunk(self, peer_id: str, height: int, index: int, *, max_bytes: int,
                                   timeout_s: float = 10) -> bytes:
        """Chunk ``index`` of ``peer_id``'s state-sync snapshot of ``height`` (at most
        ``max_bytes``, unverified). Raises as ``fetch_snapshot_manifests``."""
        host, _ = self._require_running()
        if self.peer_filter.refuses(peer_id):
            raise SyncError(peer_id, "the peer is blocked or banned on this node")
        info = next((i for i in self._peer_infos if i.peer_id.to_base58() == peer_id), None)
        data = await request_chunk(host, peer_id, self.config.chain_id, height, index, max_bytes=max_bytes,
                                   timeout_s=timeout_s, max_frame_bytes=self.config.max_stream_message_bytes,
                                   peer_info=info)
        self._stats.snapshot_chunks_fetched += 1
        return data

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict:
        """Return a snapshot of the counters (see ``NetworkStats``) as plain data:
        ``published`` / ``received`` (totals) with ``*_by_topic``, ``dropped`` by reason,
        ``own_filtered``, ``connects``, ``reconnects``, ``dial_failures``, ``dead_peers``,
        ``sync_requests_served``, ``sync_requests_refused`` by reason, ``sync_payloads_sent``,
        ``sync_bytes_sent``, ``sync_fetches``, ``sync_fetch_failures``, ``snapshot_requests_served``,
        ``snapshot_requests_refused`` by reason, ``snapshot_bytes_sent``, ``snapshot_chunks_fetched``, ``connected_peers``,
        ``peer_rtt_ms`` (last ping round trip per connected peer), ``incoming_queued`` (total) and
        ``incoming_queued_by_class`` (consensus, actions, status),
        ``rate_limited_by_topic``, ``penalties`` by reason, ``bans`` (total), ``banned_peers`` (seconds left), ``blocked_peers``."""
        s = self._stats
        served = self._sync_server.stats
        return {
            "published": sum(s.published.values()),
            "published_by_topic": dict(s.published),
            "received": sum(s.received.values()),
            "received_by_topic": dict(s.received),
            "dropped": dict(s.dropped),
            "own_filtered": s.own_filtered,
            "connects": s.connects,
            "reconnects": s.reconnects,
            "dial_failures": s.dial_failures,
            "dead_peers": s.dead_peers,
            "sync_requests_served": served.served,
            "sync_requests_refused": dict(served.refused),
            "sync_payloads_sent": served.payloads_sent,
            "sync_bytes_sent": served.bytes_sent,
            "sync_fetches": s.sync_fetches,
            "snapshot_requests_served": self._snapshot_server.stats.served,
            "snapshot_requests_refused": dict(self._snapshot_server.stats.refused),
            "snapshot_bytes_sent": self._snapshot_server.stats.bytes_sent,
            "snapshot_chunks_fetched": s.snapshot_chunks_fetched,
            "sync_fetch_failures": s.sync_fetch_failures,
            "connected_peers": len(self.connected_peers()),
            "peer_rtt_ms": {p.to_base58(): rtt for p, rtt in self._liveness.rtt_ms.items()},
            "incoming_queued": len(self.incoming),
            "incoming_queued_by_class": self.incoming.queued(),
            "rate_limited_by_topic": dict(s.rate_limited),
            "penalties": dict(s.penalties),
            "bans": self.peer_filter.bans_total,
            "banned_peers": self.peer_filter.banned(),
            "blocked_peers": sorted(self.peer_filter.blocked),
        }
