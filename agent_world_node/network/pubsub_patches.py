"""Process-wide replacements of three py-libp2p 0.8.1 pubsub functions, a faster validation cache,
and the RPC splitter.

Installed once (idempotent) by ``install_pubsub_patches``, which ``host.build_pubsub`` calls:

1. **Signed peer records never drop an RPC.** py-libp2p 0.8.1's
   ``libp2p.pubsub.utils.maybe_consume_signed_record`` (imported by name into
   ``libp2p.pubsub.pubsub``, ``libp2p.pubsub.gossipsub`` and ``libp2p.pubsub.floodsub``) returns
   False when the peer record carried in an RPC (``senderRecord``) is not newer than the one in the
   peerstore, and ``Pubsub.continuously_read_stream`` / ``GossipSub.handle_rpc`` then ignore the
   WHOLE RPC. A record's ``seq`` is the sender's ``time.time_ns()``, so a node that once ran with
   its clock ahead and restarted with the right clock is ignored by every peer that saw it before,
   for as long as the old record is kept (such a validator never received gossip again).
   Our replacement, ``consume_signed_record_leniently``, stores the record best-effort and
   always returns True: message authenticity comes from pubsub's strict signing, and this node
   dials configured addresses, not certified ones. A record whose ``seq`` went backwards is
   accepted as the newest when it is signed by, and arrives over the authenticated connection of,
   the peer it describes (a restart is exactly that); any other bad record is ignored.
2. **An oversized inbound RPC is reported.** ``Pubsub.continuously_read_stream`` catches
   ``MessageTooLarge`` itself (it resets the stream and forgets the peer for pubsub while the
   connection stays up, so that peer's gossip silently stops). ``read_varint_prefixed_bytes_limited``
   in ``libp2p.pubsub.pubsub``'s namespace is wrapped to note the error per stream;
   ``oversize_frame_error(stream)`` returns it afterwards so the caller can score the peer and
   reconnect it (``host.build_pubsub``).

3. **A refused message costs what its validators cost.** ``Pubsub.validate_msg`` puts the whole
   protobuf message into the text of the ``ValidationError`` it raises for every refusal
   (``f"... msg={msg}"``): measured at 0.13 ms for a vote and 52 ms for a 150 KB proposal, so a
   peer whose large messages are refused (rate limit, size, ban) made each node spend that much
   per copy. ``lean_validate_msg`` replaces the method with the same behaviour (cached results
   first, then the synchronous validators, then the asynchronous ones under the library's
   timeout; the result cached) and errors that name the topics and the message id only.

``LruValidationCache`` replaces ``Pubsub.validation_cache`` (``host.build_pubsub`` installs it per
Pubsub): the library's ``ValidationCache`` keeps its LRU order in a list and searches it on every
``put``, up to 1,000 entries, measured at 0.15-0.45 ms per validated message on a loaded node.

``split_rpc(rpc, limit)`` splits an RPC into RPCs of at most ``limit`` serialized bytes each (the
library's own ``RpcQueue.split_rpc``, a port of go-libp2p-pubsub's ``RPC.split``).
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from typing import Any

import structlog
import trio
from libp2p.exceptions import ValidationError
from libp2p.io.exceptions import MessageTooLarge
from libp2p.peer.envelope import consume_envelope
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub, ValidationCache, ValidationResult
from libp2p.pubsub.rpc_queue import RpcQueue

log = structlog.get_logger(__name__)

#: How long the addresses of a consumed peer record are kept, in seconds (the library's value).
PEER_RECORD_TTL_S = 7200
#: The modules of py-libp2p 0.8.1 that call ``maybe_consume_signed_record`` by their own name.
_RECORD_CHECK_MODULES = ("libp2p.pubsub.pubsub", "libp2p.pubsub.gossipsub", "libp2p.pubsub.floodsub")
_MARK = "_agent_world_patch"

_oversize_frames: "weakref.WeakKeyDictionary[Any, MessageTooLarge]" = weakref.WeakKeyDictionary()
#: The last peer record bytes consumed from each peer (per peerstore): a peer sends the same signed
#: record in every RPC, and verifying it each time (Ed25519 plus protobuf parsing, about 0.6 ms)
#: was measured as 5% of a loaded node's CPU.
_last_record: "weakref.WeakKeyDictionary[Any, dict[ID, bytes]]" = weakref.WeakKeyDictionary()
#: Most peers whose last record is remembered per peerstore.
MAX_REMEMBERED_RECORDS = 1024


def consume_signed_record_leniently(msg: rpc_pb2.RPC, host: Any, peer_id: ID) -> bool:
    """Store the signed peer record ``msg.senderRecord`` sent by ``peer_id`` (if any) in
    ``host``'s peerstore, best-effort; always True (never a reason to drop the RPC).

    A record for another peer, or one that does not verify, is ignored (logged at debug). A valid
    record of ``peer_id`` whose ``seq`` is lower than the stored one replaces it (logged once as
    ``peer_record_seq_went_back`` with ``peer``, ``stored_seq``, ``new_seq``). The same bytes as
    the last record of ``peer_id`` are not checked again."""
    if not msg.HasField("senderRecord"):
        return True
    peerstore = host.get_peerstore()
    seen = _last_record.setdefault(peerstore, {})
    if seen.get(peer_id) == msg.senderRecord:
        return True  # consumed already
    if len(seen) >= MAX_REMEMBERED_RECORDS:
        seen.clear()
    seen[peer_id] = msg.senderRecord
    peer = peer_id.to_base58()
    try:
        envelope, record = consume_envelope(msg.senderRecord, "libp2p-peer-record")
    except Exception as exc:
        log.debug("peer_record_ignored", peer=peer, reason="does not verify", error=repr(exc)[:200])
        return True
    if record.peer_id != peer_id:
        log.debug("peer_record_ignored", peer=peer, reason="describes another peer")
        return True
    try:
        if peerstore.consume_peer_record(envelope, PEER_RECORD_TTL_S):
            return True
        records: dict[ID, Any] | None = getattr(peerstore, "peer_record_map", None)
        if records is None or peer_id not in records:
            log.debug("peer_record_ignored", peer=peer, reason="refused by the peerstore")
            return True
        stored = records.pop(peer_id)  # the peer's own, authenticated word replaces its older one
        if peerstore.consume_peer_record(envelope, PEER_RECORD_TTL_S):
            log.info("peer_record_seq_went_back", peer=peer, stored_seq=getattr(stored, "seq", None),
                     new_seq=record.seq)
        else:
            records[peer_id] = stored
            log.debug("peer_record_ignored", peer=peer, reason="refused by the peerstore")
    except Exception as exc:
        log.debug("peer_record_ignored", peer=peer, reason="peerstore error", error=repr(exc)[:200])
    return True


def oversize_frame_error(stream: Any) -> MessageTooLarge | None:
    """The ``MessageTooLarge`` that ended reading pubsub ``stream`` (and forget it), or None."""
    return _oversize_frames.pop(stream, None)


def _install_oversize_frame_notes() -> None:
    import libp2p.pubsub.pubsub as pubsub_module

    original = pubsub_module.read_varint_prefixed_bytes_limited
    if getattr(original, _MARK, False):
        return

    async def read_limited_noting_oversize(reader: Any, max_length: int) -> bytes:
        try:
            return await original(reader, max_length)
        except MessageTooLarge as exc:
            try:
                _oversize_frames[reader] = exc
            except TypeError:
                pass  # not weak-referenceable: the peer is still cut off by the library, not scored
            raise

    setattr(read_limited_noting_oversize, _MARK, True)
    pubsub_module.read_varint_prefixed_bytes_limited = read_limited_noting_oversize


async def lean_validate_msg(self: Pubsub, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
    """``Pubsub.validate_msg`` (same contract: returns when every topic validator of ``msg``
    accepts it, raises ``ValidationError`` otherwise, results cached by message id) without
    formatting ``msg`` into the error (see the module docstring)."""
    msg_id = self._msg_id_constructor(msg)
    cached = self.validation_cache.get(msg_id)
    if cached is not None:
        if not cached.is_valid:
            raise ValidationError(f"cached refusal of message {msg_id.hex()[:32]}: {cached.error_message}")
        return
    validators = self.get_msg_validators(msg)
    error: str | None = None
    for v in validators:
        if not v.is_async and not v.validator(msg_forwarder, msg):
            error = "refused by a topic validator"
            break
    if error is None and any(v.is_async for v in validators):
        results: list[bool] = []
        with trio.move_on_after(self.validation_timeout) as scope:
            async with trio.open_nursery() as nursery:
                for v in validators:
                    if v.is_async:
                        nursery.start_soon(self._run_async_validator, v.validator, msg_forwarder, msg, results)
        if scope.cancelled_caught:
            error = "topic validation timed out"
        elif not all(results):
            error = "refused by an asynchronous topic validator"
    self.validation_cache.put(msg_id, ValidationResult(is_valid=error is None, timestamp=time.time(),
                                                       error_message=error))
    if error is not None:
        raise ValidationError(f"message {msg_id.hex()[:32]} on {list(msg.topicIDs)}: {error}")


def install_pubsub_patches() -> None:
    """Install the replacements described in the module docstring; idempotent."""
    import importlib

    for name in _RECORD_CHECK_MODULES:
        module = importlib.import_module(name)
        if getattr(module, "maybe_consume_signed_record", None) is not consume_signed_record_leniently:
            module.maybe_consume_signed_record = consume_signed_record_leniently  # type: ignore[attr-defined]
    _install_oversize_frame_notes()
    Pubsub.validate_msg = lean_validate_msg  # type: ignore[method-assign]


class LruValidationCache(ValidationCache):
    """py-libp2p's cache of validation results by message id, with the same behaviour (entries
    expire ``ttl`` seconds after they were stored; at ``max_size`` entries the least recently used
    one is evicted) and O(1) ``get`` / ``put`` on an ``OrderedDict`` instead of a list search."""

    def __init__(self, ttl: int = 300, max_size: int = 1000) -> None:
        super().__init__(ttl, max_size)
        self.cache: OrderedDict[bytes, ValidationResult] = OrderedDict()  # type: ignore[assignment]

    def get(self, msg_id: bytes) -> ValidationResult | None:
        """The cached result for ``msg_id``, or None (unknown or expired)."""
        result = self.cache.get(msg_id)
        if result is None:
            return None
        if time.time() - result.timestamp > self.ttl:
            del self.cache[msg_id]
            return None
        self.cache.move_to_end(msg_id)
        return result

    def put(self, msg_id: bytes, result: ValidationResult) -> None:
        """Store ``result`` for ``msg_id`` as the most recently used entry."""
        self.cache.pop(msg_id, None)
        while len(self.cache) >= self.max_size:
            self.cache.popitem(last=False)
        self.cache[msg_id] = result

    def _remove(self, msg_id: bytes) -> None:
        self.cache.pop(msg_id, None)

    def clear_expired(self) -> None:
        """Drop every expired entry."""
        now = time.time()
        for msg_id in [m for m, r in self.cache.items() if now - r.timestamp > self.ttl]:
            del self.cache[msg_id]


def split_rpc(rpc: rpc_pb2.RPC, limit: int) -> list[rpc_pb2.RPC]:
    """Split ``rpc`` into RPCs of at most ``limit`` serialized bytes each, in order (messages,
    then subscriptions, then control; the sender record on the first). A single message larger
    than ``limit`` stays alone in an oversized part: the caller must drop it."""
    return RpcQueue(max_size=1, max_message_size=limit).split_rpc(rpc)
