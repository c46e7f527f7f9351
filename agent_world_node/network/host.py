"""Construction of the libp2p host, the GossipSub router and the Pubsub service.

Every setting below departs from a py-libp2p 0.8.1 default for a measured reason
(each measured on py-libp2p 0.8.1):

- security: Noise only (the default host also accepts a plaintext dialer);
- stream muxer: yamux only, with go-yamux's window updates: a WINDOW_UPDATE once half the receive
  window is consumed (``PY_YAMUX_RELEASE_ON_READ=0``, set unless the environment sets it), not
  after every read (the library's default; those updates were most of the frames a loaded node
  wrote, and the change raised a loaded 4-node cluster's throughput by about 10%);
- pubsub protocols: ``/meshsub/1.1.0`` and ``/meshsub/1.0.0`` only (1.2's IDONTWANT roughly doubles
  CPU cost; js-libp2p speaks 1.1);
- GossipSub: spam protection, adaptive gossip and eclipse protection off (they dropped 20% of
  messages at 12.5 msg/s and stretched the heartbeat to 30 s), heartbeat 0.5 s, small degree;
- ``Pubsub.counter`` seeded with ``time.time_ns()`` (the default, seconds, makes a node restarted
  within seconds reuse message ids still in its peers' 120 s seen-cache, and all its messages are
  dropped silently);
- ``allowed_topics``: remote subscriptions to topics outside this chain are ignored;
- inbound RPC frames up to ``max_inbound_rpc_bytes`` (4 MiB; the library's default is 1 MiB, and
  another implementation may pack two ~1 MB messages in one RPC); an RPC above it is scored and
  the peer reconnected instead of silently losing its pubsub stream;
- outbound RPCs split to at most 1 MiB on every write path (``_split_oversize_rpcs``);
- signed peer records never cause an RPC to be ignored, and the validation-result cache is an LRU
  with constant-time operations (``pubsub_patches.py``).
"""

from __future__ import annotations

import os
import socket
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from multiaddr import Multiaddr

from .config import OUTBOUND_RPC_LIMIT
from .pubsub_patches import LruValidationCache, install_pubsub_patches, oversize_frame_error, split_rpc

log = structlog.get_logger(__name__)

#: py-libp2p's yamux switch: "1" (its default) sends a WINDOW_UPDATE after every read, "0" only
#: once half the receive window is consumed (go-yamux's rule).
YAMUX_RELEASE_ON_READ_ENV = "PY_YAMUX_RELEASE_ON_READ"

#: GossipSub protocol versions offered, most preferred first.
PUBSUB_PROTOCOLS: tuple[TProtocol, ...] = (PROTOCOL_ID_V11, PROTOCOL_ID)


class ListenAddressInUseError(OSError):
    """The listen address is already taken by another listening socket (another node?)."""


def check_listen_address_free(listen_addr: Multiaddr) -> None:
    """Raise ``ListenAddressInUseError`` if another socket already listens on ``listen_addr``.

    py-libp2p 0.8.1 listens with SO_REUSEPORT, so a second node started on the same port by
    mistake would bind without error and silently share the port with the first. This check binds
    a plain socket (SO_REUSEADDR only, which tolerates TIME_WAIT leftovers but not a listener) and
    closes it. Port 0 is always free.
    """
    port = int(listen_addr.value_for_protocol("tcp"))
    if port == 0:
        return
    names = [p.name for p in listen_addr.protocols()]
    family = socket.AF_INET6 if names[0] == "ip6" else socket.AF_INET
    address = listen_addr.value_for_protocol(names[0])
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((address, port))
    except OSError as exc:
        raise ListenAddressInUseError(
            exc.errno,
            f"cannot listen on {listen_addr}: {exc.strerror}; another node (or program) is using "
            "that port: stop it or choose another port in [p2p] listen",
        ) from None
    finally:
        probe.close()


def key_pair_from_seed(seed: bytes) -> KeyPair:
    """Return the libp2p Ed25519 key pair for a 32-byte ``seed`` (the node key of a home).
    Raises ValueError if ``seed`` is not 32 bytes."""
    if len(seed) != 32:
        raise ValueError(f"a node key seed is 32 bytes, got {len(seed)}")
    return create_new_key_pair(bytes(seed))


def peer_id_for_seed(seed: bytes) -> str:
    """Return the libp2p peer id (base58) of the Ed25519 identity made from the 32-byte ``seed``."""
    return ID.from_pubkey(key_pair_from_seed(seed).public_key).to_base58()


def build_host(key_pair: KeyPair, listen_addr: Multiaddr) -> IHost:
    """Return a TCP host on ``listen_addr`` with Noise (only) and yamux (only).

    The Noise static key is a fresh X25519 key per process (it is authenticated by the identity
    key inside the handshake, so it need not persist).
    """
    # py-libp2p reads its yamux tuning from the environment at each call; an operator's own
    # setting wins.
    os.environ.setdefault(YAMUX_RELEASE_ON_READ_ENV, "0")
    noise_key = create_new_x25519_key_pair()
    return new_host(
        key_pair=key_pair,
        listen_addrs=[listen_addr],
        sec_opt={NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=noise_key.private_key)},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
    )


def gossip_degrees(cluster_size: int, degree: int | None = None) -> tuple[int, int, int]:
    """Return the GossipSub mesh degrees ``(D, D_low, D_high)``.

    ``degree`` given: ``(degree, degree - 1, degree + 1)``. Otherwise from ``cluster_size`` (nodes
    including this one): up to 8 nodes the measured 3 / 2 / 4 (a 4-node cluster is a full mesh);
    larger clusters use the GossipSub v1.1 spec defaults 6 / 4 / 12.
    """
    if degree is not None:
        return degree, max(1, degree - 1), degree + 1
    if cluster_size <= 8:
        return 3, 2, 4
    return 6, 4, 12


def build_gossipsub(cluster_size: int, *, degree: int | None = None, heartbeat_interval_s: float = 0.5) -> GossipSub:
    """Return a GossipSub router tuned as described in the module docstring."""
    d, d_low, d_high = gossip_degrees(cluster_size, degree)
    return GossipSub(
        protocols=list(PUBSUB_PROTOCOLS),
        degree=d,
        degree_low=d_low,
        degree_high=d_high,
        heartbeat_interval=heartbeat_interval_s,  # type: ignore[arg-type]  # annotated int, used by trio.sleep
        spam_protection_enabled=False,
        adaptive_gossip_enabled=False,
        eclipse_protection_enabled=False,
    )


#: Outbound RPCs queued per peer by pubsub before it drops (silently) new ones. py-libp2p 0.8.1's
#: default, 32, is reached within a second at 2,000 actions/s (batched action gossip, 700 KB
#: proposals and the heartbeat), and what gets dropped then is as likely a vote as anything:
#: measured, heights stalled for 10-20 s in round 0 with every node re-gossiping. Large RPCs are
#: split into parts of at most 1 MiB, so the bound on memory per peer is about this many MiB.
OUTBOUND_RPC_QUEUE = 256


def _raise_outbound_queue_bound() -> None:
    """Make pubsub create its per-peer outbound queues with ``OUTBOUND_RPC_QUEUE`` slots (the
    library reads the module-level ``RpcQueue`` name when a peer is added)."""
    import libp2p.pubsub.pubsub as pubsub_module
    from libp2p.pubsub.rpc_queue import RpcQueue

    if getattr(pubsub_module.RpcQueue, "__name__", "") != "bounded_rpc_queue":

        def bounded_rpc_queue() -> RpcQueue:
            return RpcQueue(max_size=OUTBOUND_RPC_QUEUE)

        pubsub_module.RpcQueue = bounded_rpc_queue  # type: ignore[misc,assignment]


def _serialize_rpc_writes(pubsub: Pubsub) -> None:
    """Make RPC writes to one pubsub stream take turns.

    py-libp2p 0.8.1's yamux ``stream.write`` takes the stream's write lock per chunk of the send
    window, not per call, and pubsub writes each RPC from whichever task produced it (publish,
    forward, heartbeat). Two RPCs larger than the window written at once to the same stream
    interleave their chunks, and the receiver cannot parse the frame (measured: dozens of
    "Error parsing message with type 'pubsub.pb.RPC'" per minute at 2,500 actions/s, each
    costing a stream reset). A lock per stream around ``Pubsub.write_msg`` (which gossipsub
    also calls) keeps each RPC's bytes contiguous."""
    locks: "weakref.WeakKeyDictionary[INetStream, trio.Lock]" = weakref.WeakKeyDictionary()
    write_msg = pubsub.write_msg

    async def write_msg_in_turn(stream: INetStream, rpc_msg: Any) -> bool:
        lock = locks.get(stream)
        if lock is None:
            lock = locks[stream] = trio.Lock()
        async with lock:
            return await write_msg(stream, rpc_msg)

    pubsub.write_msg = write_msg_in_turn  # type: ignore[method-assign]


def _split_oversize_rpcs(pubsub: Pubsub, limit: int = OUTBOUND_RPC_LIMIT) -> None:
    """Make every RPC this node writes on a pubsub stream at most ``limit`` bytes.

    Replaces (per instance) py-libp2p 0.8.1's ``Pubsub.write_msg``, which writes whatever RPC it
    is given as one frame. Receivers (py-libp2p, go-libp2p-pubsub) refuse frames above 1 MiB and
    drop the sender's stream: its gossip then silently stops. The library splits RPCs in
    ``GossipSub.send_rpc`` and ``Pubsub.message_all_peers`` (publish, forwarding, IWANT answers)
    but ``GossipSub.flush_pending_messages`` and ``send_recent_messages`` write directly; this
    wrapper, at the one place every RPC passes, splits any RPC above ``limit`` with
    ``pubsub_patches.split_rpc`` and writes the parts in order. A part that still exceeds
    ``limit`` (one message larger than it, which ``publish`` never lets out) is dropped and logged
    as ``pubsub_rpc_part_dropped``. Returns False as soon as one write does (stream closed)."""
    write_msg = pubsub.write_msg

    async def write_msg_split(stream: INetStream, rpc_msg: Any) -> bool:
        if rpc_msg.ByteSize() <= limit:
            return await write_msg(stream, rpc_msg)
        for part in split_rpc(rpc_msg, limit):
            size = part.ByteSize()
            if size > limit:
                log.warning("pubsub_rpc_part_dropped", peer=stream.muxed_conn.peer_id.to_base58(),
                            size=size, limit=limit)
                continue
            if not await write_msg(stream, part):
                return False
        return True

    pubsub.write_msg = write_msg_split  # type: ignore[method-assign]


def build_pubsub(
    host: IHost,
    router: GossipSub,
    allowed_topics: set[str],
    on_bad_stream: Callable[[ID, Exception], Awaitable[None]] | None = None,
    *,
    max_inbound_rpc_bytes: int = 4 * 1024 * 1024,
) -> Pubsub:
    """Return a signing Pubsub service on ``host`` with its message counter seeded from
    ``time.time_ns()`` (see module docstring), remote subscriptions limited to ``allowed_topics``,
    inbound RPC frames limited to ``max_inbound_rpc_bytes`` and outbound ones split to 1 MiB.

    Each pubsub stream is read inside a guard: py-libp2p 0.8.1's ``Pubsub.stream_handler`` catches
    stream and varint errors but not ``google.protobuf.message.DecodeError``, so one frame that is
    not a protobuf RPC ends the whole host (a hostile peer could stop any node with it). The guard
    resets that stream, drops the peer from pubsub and awaits ``on_bad_stream(peer_id, error)``
    (the network scores and disconnects the peer; it is redialled if configured). A frame above
    ``max_inbound_rpc_bytes`` ends the stream inside the library (which then forgets the peer for
    pubsub while keeping the connection); the guard reports it the same way, with the library's
    ``MessageTooLarge`` as the error."""
    _raise_outbound_queue_bound()
    install_pubsub_patches()
    pubsub = Pubsub(host, router, strict_signing=True, allowed_topics=allowed_topics,
                    max_inbound_rpc_size=max_inbound_rpc_bytes)
    pubsub.counter = time.time_ns()
    pubsub.validation_cache = LruValidationCache(pubsub.validation_cache.ttl, pubsub.validation_cache.max_size)
    _serialize_rpc_writes(pubsub)
    _split_oversize_rpcs(pubsub)

    async def guarded_stream_handler(stream: INetStream) -> None:
        try:
            await pubsub.stream_handler(stream)
        except Exception as exc:
            peer_id = stream.muxed_conn.peer_id
            log.warning("pubsub_stream_failed", peer=peer_id.to_base58(), error=repr(exc)[:200])
            with trio.move_on_after(2.0):
                try:
                    await stream.reset()
                except Exception:
                    pass
            pubsub._handle_dead_peer(peer_id)
            if on_bad_stream is not None:
                await on_bad_stream(peer_id, exc)
        else:
            oversize = oversize_frame_error(stream)
            if oversize is not None:
                peer_id = stream.muxed_conn.peer_id
                log.warning("pubsub_rpc_oversize", peer=peer_id.to_base58(), limit=max_inbound_rpc_bytes,
                            error=str(oversize)[:200])
                if on_bad_stream is not None:
                    await on_bad_stream(peer_id, oversize)

    for protocol in router.get_protocols():
        host.set_stream_handler(protocol, guarded_stream_handler)
    return pubsub
