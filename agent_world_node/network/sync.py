"""Height-keyed block sync over the libp2p stream protocol ``/agent-world/sync/1.0.0``.

Anything a node missed it recovers by sync, never by luck. Gossip
is best-effort; this protocol moves committed blocks (encoded ``ReplicatedCommitPayload`` bytes,
opaque to this layer) from a peer's block store on request.

Wire format (every message is a varint length prefix plus canonical msgpack, read with
``VarIntLengthMsgReadWriter(max_msg_size=...)``):

1. the client sends one ``SyncRequest {chain_id, from, to}`` (at most ``MAX_REQUEST_BYTES``);
2. the server answers with frames, each at most ``max_stream_message_bytes`` (4 MiB by default,
   because py-libp2p's ``read_exactly`` fails on messages above ~6.5 MiB):

   - ``{"type": "payloads", "payloads": [bytes, ...]}``: whole payloads, in height order;
   - ``{"type": "part", "data": bytes, "last": bool}``: a piece of one payload too large for a
     frame; pieces are concatenated until ``last``;
   - ``{"type": "end", "count": n}``: end marker; ``n`` payloads were sent;
   - ``{"type": "refused", "reason": str}``: the request is refused (wrong chain, bad or too large
     range, busy, internal error); nothing else follows.

3. the server closes the stream.

The server may return fewer payloads than heights asked for (it has not committed them yet); it
never returns more. Payloads are not decoded or verified here: that is the daemon's job.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Union

import msgspec
import structlog
import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.io.exceptions import MessageTooLarge
from libp2p.io.msgio import VarIntLengthMsgReadWriter
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamReset
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from agent_world_runtime.codec import DecodeError, decode, encode

log = structlog.get_logger(__name__)

SYNC_PROTOCOL_ID = TProtocol("/agent-world/sync/1.0.0")
#: Largest encoded ``SyncRequest`` accepted by a server.
MAX_REQUEST_BYTES = 1024
#: Bytes reserved in every frame for the msgpack map, its keys and the list header.
FRAME_OVERHEAD = 64
#: Bytes reserved per payload inside a ``payloads`` frame (msgpack bin32 header).
ITEM_OVERHEAD = 5
#: How long a server waits for the request after the stream opens.
REQUEST_READ_TIMEOUT_S = 5.0
#: How long closing or resetting a stream may take during cleanup.
CLOSE_TIMEOUT_S = 2.0

SyncHandler = Callable[[int, int], Awaitable[list[bytes]]]


class SyncError(Exception):
    """A sync request to ``peer_id`` failed; ``reason`` says why (timeout, refused, oversize,
    malformed response, stream closed, cannot connect)."""

    def __init__(self, peer_id: str, reason: str) -> None:
        super().__init__(f"block sync from peer {peer_id} failed: {reason}")
        self.peer_id = peer_id
        self.reason = reason


class SyncRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Ask for the committed payloads of heights ``from_height..to_height`` (inclusive) of ``chain_id``.
    On the wire the height fields are named ``from`` and ``to``."""

    chain_id: str
    from_height: int = msgspec.field(name="from")
    to_height: int = msgspec.field(name="to")


class SyncPayloads(msgspec.Struct, tag="payloads", forbid_unknown_fields=True, frozen=True):
    """A frame of whole payloads, in height order."""

    payloads: list[bytes]


class SyncPayloadPart(msgspec.Struct, tag="part", forbid_unknown_fields=True, frozen=True):
    """One piece of a payload larger than a frame; ``last`` marks its final piece."""

    data: bytes
    last: bool


class SyncEnd(msgspec.Struct, tag="end", forbid_unknown_fields=True, frozen=True):
    """End marker: ``count`` payloads were sent in this response."""

    count: int


class SyncRefused(msgspec.Struct, tag="refused", forbid_unknown_fields=True, frozen=True):
    """The server refuses the request; ``reason`` is for the operator's log."""

    reason: str


SyncFrame = Union[SyncPayloads, SyncPayloadPart, SyncEnd, SyncRefused]


def encode_response_frames(payloads: list[bytes], max_frame_bytes: int) -> Iterator[bytes]:
    """Yield the encoded frames of a response carrying ``payloads``, then the end marker.

    Each yielded frame is at most ``max_frame_bytes`` bytes: payloads are packed greedily into
    ``payloads`` frames; a payload that cannot fit one frame on its own is sent as ``part`` frames.
    Raises ValueError if ``max_frame_bytes`` leaves no room for data (below ``FRAME_OVERHEAD + 1``).
    """
    budget = max_frame_bytes - FRAME_OVERHEAD
    if budget < 1 + ITEM_OVERHEAD:
        raise ValueError(f"max_frame_bytes={max_frame_bytes} is too small for any payload")
    batch: list[bytes] = []
    batch_bytes = 0
    for payload in payloads:
        cost = len(payload) + ITEM_OVERHEAD
        if cost > budget:
            if batch:
                yield encode(SyncPayloads(payloads=batch))
                batch, batch_bytes = [], 0
            for start in range(0, len(payload), budget):
                piece = payload[start : start + budget]
                yield encode(SyncPayloadPart(data=piece, last=start + budget >= len(payload)))
            continue
        if batch_bytes + cost > budget:
            yield encode(SyncPayloads(payloads=batch))
            batch, batch_bytes = [], 0
        batch.append(payload)
        batch_bytes += cost
    if batch:
        yield encode(SyncPayloads(payloads=batch))
    yield encode(SyncEnd(count=len(payloads)))


class SyncResponseReader:
    """Client-side state machine that checks and assembles response frames.

    ``max_payloads``: most payloads accepted (the number of heights asked for);
    ``max_total_bytes``: most payload bytes accepted in total. ``feed(frame)`` returns True once
    the end marker has been read; ``payloads`` then holds the result in height order. Every
    protocol violation raises ``SyncError`` with the reason.
    """

    def __init__(self, peer_id: str, max_payloads: int, max_total_bytes: int) -> None:
        self.peer_id = peer_id
        self.max_payloads = max_payloads
        self.max_total_bytes = max_total_bytes
        self.payloads: list[bytes] = []
        self.total_bytes = 0
        self.done = False
        self._partial: list[bytes] | None = None

    def _add_bytes(self, n: int) -> None:
        self.total_bytes += n
        if self.total_bytes > self.max_total_bytes:
            raise SyncError(
                self.peer_id,
                f"oversize response: more than {self.max_total_bytes} payload bytes (max_sync_response_bytes)",
            )

    def _add_payload(self, payload: bytes) -> None:
        if len(self.payloads) >= self.max_payloads:
            raise SyncError(self.peer_id, f"malformed response: more than the {self.max_payloads} payloads asked for")
        self.payloads.append(payload)

    def feed(self, raw: bytes) -> bool:
        """Process one encoded frame; return True when the response is complete."""
        if self.done:
            raise SyncError(self.peer_id, "malformed response: data after the end marker")
        try:
            frame: SyncPayloads | SyncPayloadPart | SyncEnd | SyncRefused = decode(raw, SyncFrame)  # type: ignore[arg-type]
        except DecodeError as exc:
            raise SyncError(self.peer_id, f"malformed response frame ({exc})") from None
        if isinstance(frame, SyncRefused):
            raise SyncError(self.peer_id, f"peer refused: {frame.reason[:500]}")
        if isinstance(frame, SyncPayloads):
            if self._partial is not None:
                raise SyncError(self.peer_id, "malformed response: whole payloads inside a split payload")
            for payload in frame.payloads:
                self._add_bytes(len(payload))
                self._add_payload(payload)
            return False
        if isinstance(frame, SyncPayloadPart):
            self._add_bytes(len(frame.data))
            if self._partial is None:
                self._partial = []
            self._partial.append(frame.data)
            if frame.last:
                pieces, self._partial = self._partial, None
                self._add_payload(b"".join(pieces))
            return False
        # SyncEnd
        if self._partial is not None:
            raise SyncError(self.peer_id, "malformed response: end marker inside a split payload")
        if frame.count != len(self.payloads):
            raise SyncError(
                self.peer_id,
                f"malformed response: end marker says {frame.count} payloads, received {len(self.payloads)}",
            )
        self.done = True
        return True


async def _close_quietly(stream: INetStream, *, reset: bool) -> None:
    """Close (or reset) ``stream``, shielded from cancellation and bounded by ``CLOSE_TIMEOUT_S``."""
    with trio.move_on_after(CLOSE_TIMEOUT_S) as scope:
        scope.shield = True
        try:
            if reset:
                await stream.reset()
            else:
                await stream.close()
        except Exception:
            pass


@dataclass
class SyncServeStats:
    """Counters of a ``SyncServer``: requests ``served``, payloads and frame bytes sent, and
    requests ``refused`` by reason key (wrong_chain, bad_range, range_too_large, busy, malformed,
    request_too_large, request_timeout, stream_error, internal_error, serve_timeout)."""

    served: int = 0
    payloads_sent: int = 0
    bytes_sent: int = 0
    refused: dict[str, int] = field(default_factory=dict)


class StreamServer:
    """Serves one request-response stream protocol whose responses are ``SyncFrame``s.

    Subclasses say what a request is (``request_type``, decoded from at most
    ``MAX_REQUEST_BYTES``), why one is refused (``check_request``) and what answers it
    (``respond``: a list of payloads). This class bounds everything else: the request must arrive
    within ``REQUEST_READ_TIMEOUT_S``; more than ``max_concurrent`` requests at once are refused as
    busy; producing and sending a response may take at most ``serve_timeout_s`` (then the stream
    is reset); a ``respond`` error is logged and refused as an internal error. No request can
    raise out of ``handle_stream``. ``stats`` is a ``SyncServeStats``; log events are prefixed with
    ``name``."""

    request_type: type = msgspec.Struct

    def __init__(self, name: str, *, max_frame_bytes: int, max_concurrent: int, serve_timeout_s: float) -> None:
        self.name = name
        self.max_frame_bytes = max_frame_bytes
        self.serve_timeout_s = serve_timeout_s
        self._slots = trio.Semaphore(max_concurrent)
        self.stats = SyncServeStats()

    def check_request(self, request) -> tuple[str, str] | None:  # type: ignore[no-untyped-def]
        """Return ``(reason_key, reason)`` if ``request`` must be refused, else None."""
        return None

    async def respond(self, request) -> list[bytes]:  # type: ignore[no-untyped-def]
        """The payloads answering ``request`` (subclasses)."""
        raise NotImplementedError

    def describe(self, request) -> dict:  # type: ignore[no-untyped-def,type-arg]
        """Log fields naming ``request``."""
        return {}

    def _refuse_count(self, reason_key: str) -> None:
        self.stats.refused[reason_key] = self.stats.refused.get(reason_key, 0) + 1

    async def handle_stream(self, stream: INetStream) -> None:
        """Serve one request on ``stream`` (the libp2p stream handler); always closes the stream."""
        try:
            peer = stream.muxed_conn.peer_id.to_base58()
        except Exception:
            peer = "unknown"
        reset = True
        try:
            reset = await self._serve(stream, peer)
        except (StreamReset, StreamClosed, StreamEOF) as exc:
            log.info(f"{self.name}_client_gone", peer=peer, error=repr(exc))
        except Exception as exc:  # a hostile or broken peer must never take the node down
            log.warning(f"{self.name}_serve_failed", peer=peer, error=repr(exc))
        finally:
            await _close_quietly(stream, reset=reset)

    async def _refuse(self, writer: VarIntLengthMsgReadWriter, peer: str, key: str, reason: str) -> None:
        self._refuse_count(key)
        log.info(f"{self.name}_request_refused", peer=peer, reason=key, detail=reason)
        with trio.move_on_after(REQUEST_READ_TIMEOUT_S):
            await writer.write_msg(encode(SyncRefused(reason=reason)))

    async def _serve(self, stream: INetStream, peer: str) -> bool:
        """Serve one request; return True if the stream should be reset rather than closed."""
        reader = VarIntLengthMsgReadWriter(stream, max_msg_size=MAX_REQUEST_BYTES)
        writer = VarIntLengthMsgReadWriter(stream, max_msg_size=self.max_frame_bytes)
        try:
            with trio.fail_after(REQUEST_READ_TIMEOUT_S):
                raw = await reader.read_msg()
        except trio.TooSlowError:
            self._refuse_count("request_timeout")
            log.info(f"{self.name}_request_timeout", peer=peer)
            return True
        except MessageTooLarge:
            await self._refuse(writer, peer, "request_too_large",
                               f"request larger than {MAX_REQUEST_BYTES} bytes")
            return False
        except (BaseLibp2pError, EOFError) as exc:
            self._refuse_count("stream_error")
            log.info(f"{self.name}_request_unreadable", peer=peer, error=repr(exc))
            return True
        try:
            request = decode(raw, self.request_type)
        except DecodeError as exc:
            await self._refuse(writer, peer, "malformed", f"malformed request ({exc})")
            return False
        problem = self.check_request(request)
        if problem is not None:
            await self._refuse(writer, peer, *problem)
            return False
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            await self._refuse(writer, peer, "busy", f"busy serving other {self.name} requests; retry later")
            return False
        reset = True
        try:
            with trio.move_on_after(self.serve_timeout_s) as deadline:
                reset = await self._send(writer, peer, request)
        finally:
            self._slots.release()
        if deadline.cancelled_caught:  # a slow handler or a slow reader
            self._refuse_count("serve_timeout")
            log.warning(f"{self.name}_serve_timeout", peer=peer, timeout_s=self.serve_timeout_s, **self.describe(request))
            return True
        return reset

    async def _send(self, writer: VarIntLengthMsgReadWriter, peer: str, request) -> bool:  # type: ignore[no-untyped-def]
        try:
            payloads = await self.respond(request)
            if not isinstance(payloads, list) or not all(isinstance(p, bytes) for p in payloads):
                raise TypeError(f"{self.name} handler must return list[bytes], got {type(payloads).__name__}")
        except _Refusal as refusal:
            await self._refuse(writer, peer, refusal.key, refusal.reason)
            return False
        except Exception as exc:
            log.error(f"{self.name}_handler_failed", peer=peer, error=repr(exc), **self.describe(request))
            await self._refuse(writer, peer, "internal_error", "internal error while reading the answer")
            return False
        sent_bytes = 0
        for frame in encode_response_frames(payloads, self.max_frame_bytes):
            await writer.write_msg(frame)
            sent_bytes += len(frame)
        self.stats.served += 1
        self.stats.payloads_sent += len(payloads)
        self.stats.bytes_sent += sent_bytes
        log.debug(f"{self.name}_request_served", peer=peer, payloads=len(payloads), bytes=sent_bytes,
                  **self.describe(request))
        return False


class _Refusal(Exception):
    """Raised by ``respond`` to refuse a request it cannot answer (``key``: the stats reason)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        self.reason = reason


Refusal = _Refusal


class SyncServer(StreamServer):
    """Serves ``/agent-world/sync/1.0.0`` from the daemon's block store.

    ``handler(from_height, to_height)`` returns the encoded payloads the node has for those heights
    (inclusive, in height order, possibly fewer). Requests for another chain, invalid ranges and
    ranges longer than ``max_heights`` are refused with a reason; the bounds of ``StreamServer``
    apply.
    """

    request_type = SyncRequest

    def __init__(
        self,
        chain_id: str,
        handler: SyncHandler,
        *,
        max_heights: int = 500,
        max_frame_bytes: int = 4 * 1024 * 1024,
        max_concurrent: int = 4,
        serve_timeout_s: float = 60.0,
    ) -> None:
        super().__init__("sync", max_frame_bytes=max_frame_bytes, max_concurrent=max_concurrent,
                         serve_timeout_s=serve_timeout_s)
        self.chain_id = chain_id
        self.handler = handler
        self.max_heights = max_heights

    def check_request(self, request: SyncRequest) -> tuple[str, str] | None:
        """Return ``(reason_key, reason)`` if ``request`` must be refused, else None."""
        if request.chain_id != self.chain_id:
            return "wrong_chain", f"chain id mismatch: this node serves chain {self.chain_id!r}"
        if request.from_height < 0 or request.to_height < request.from_height:
            return "bad_range", (
                f"invalid height range {request.from_height}..{request.to_height}: "
                "need 0 <= from <= to"
            )
        count = request.to_height - request.from_height + 1
        if count > self.max_heights:
            return "range_too_large", (
                f"range of {count} heights exceeds the limit of {self.max_heights}; split the request"
            )
        return None

    def describe(self, request: SyncRequest) -> dict:  # type: ignore[type-arg]
        return {"from_height": request.from_height, "to_height": request.to_height}

    async def respond(self, request: SyncRequest) -> list[bytes]:
        count = request.to_height - request.from_height + 1
        payloads = await self.handler(request.from_height, request.to_height)
        if isinstance(payloads, list) and len(payloads) > count:
            log.error("sync_handler_returned_too_many", asked=count, returned=len(payloads))
            payloads = payloads[:count]
        return payloads


async def request_blocks(
    host: IHost,
    peer_id: str,
    chain_id: str,
    from_height: int,
    to_height: int,
    *,
    timeout_s: float,
    max_frame_bytes: int,
    max_heights: int,
    max_total_bytes: int,
    peer_info: PeerInfo | None = None,
) -> list[bytes]:
    """Fetch the payloads of heights ``from_height..to_height`` (inclusive) from ``peer_id``.

    ``peer_info``: the peer's addresses, used to connect first when it is not connected (after
    clearing the library's negative dial cache for it); without it the peerstore's addresses are used.

    Returns them in height order (possibly fewer than asked for, never more). Raises ValueError for
    a bad range or peer id (a caller bug); raises ``SyncError`` on timeout (the whole exchange is
    bounded by ``timeout_s``), a refused request, a frame above ``max_frame_bytes``, more than
    ``max_total_bytes`` of payloads, a malformed response, or a peer that cannot be reached.
    """
    if from_height < 0 or to_height < from_height:
        raise ValueError(f"invalid height range {from_height}..{to_height}: need 0 <= from <= to")
    count = to_height - from_height + 1
    if count > max_heights:
        raise ValueError(f"range of {count} heights exceeds max_sync_heights={max_heights}; split the request")
    request = SyncRequest(chain_id=chain_id, from_height=from_height, to_height=to_height)
    return await request_payloads(host, peer_id, SYNC_PROTOCOL_ID, encode(request), timeout_s=timeout_s,
                                  max_frame_bytes=max_frame_bytes, max_payloads=count,
                                  max_total_bytes=max_total_bytes, peer_info=peer_info)


async def request_payloads(
    host: IHost,
    peer_id: str,
    protocol: TProtocol,
    request: bytes,
    *,
    timeout_s: float,
    max_frame_bytes: int,
    max_payloads: int,
    max_total_bytes: int,
    peer_info: PeerInfo | None = None,
) -> list[bytes]:
    """Send the encoded ``request`` to ``peer_id`` on a new stream of ``protocol`` and return the
    payloads of its ``SyncFrame`` response (at most ``max_payloads``, ``max_total_bytes`` in all).
    ``peer_info`` as in ``request_blocks``. Raises ValueError for a bad timeout or peer id;
    ``SyncError`` as ``request_blocks`` does."""
    if not (timeout_s > 0 and math.isfinite(timeout_s)):
        raise ValueError(f"timeout_s={timeout_s!r} must be a positive number of seconds")
    try:
        pid = ID.from_base58(peer_id)
    except Exception:
        raise ValueError(f"{peer_id!r} is not a base58 peer id") from None
    response = SyncResponseReader(peer_id, max_payloads=max_payloads, max_total_bytes=max_total_bytes)
    stream: INetStream | None = None
    ok = False
    with trio.move_on_after(timeout_s) as deadline:
        try:
            try:
                if peer_info is not None and pid not in host.get_connected_peers():
                    unblock = getattr(host.get_network(), "unblock_peer", None)
                    if unblock is not None:
                        unblock(pid)
                    await host.connect(peer_info)
                stream = await host.new_stream(pid, [protocol])
            except Exception as exc:
                raise SyncError(peer_id, f"cannot open a {protocol} stream ({type(exc).__name__}: {exc})") from None
            rw = VarIntLengthMsgReadWriter(stream, max_msg_size=max_frame_bytes)
            try:
                await rw.write_msg(request)
                while not response.feed(await rw.read_msg()):
                    pass
            except MessageTooLarge as exc:
                raise SyncError(peer_id, f"oversize response frame ({exc})") from None
            except (BaseLibp2pError, EOFError) as exc:
                raise SyncError(
                    peer_id, f"stream closed before the end marker ({type(exc).__name__}: {exc})"
                ) from None
            ok = True
        finally:
            if stream is not None:
                await _close_quietly(stream, reset=not ok)
    if deadline.cancelled_caught:
        raise SyncError(
            peer_id, f"timed out after {timeout_s} s ({len(response.payloads)} payloads received)"
        )
    return response.payloads
