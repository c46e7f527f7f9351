"""State-sync snapshots over the libp2p stream protocol ``/agent-world/snapshot/1.0.0``.

A node offers the state-sync snapshots it keeps (``agent_world_runtime.snapshots``) to peers that
join by state sync. The framing is the block sync protocol's (``sync``): one request (varint
length prefix plus canonical msgpack, at most ``MAX_REQUEST_BYTES``), answered by ``SyncFrame``s.
Requests are tagged maps:

- ``{"type": "list", "chain_id"}``: the answer's payloads are the encoded ``SnapshotManifest``s
  the node holds, newest first (at most ``MAX_LISTED``);
- ``{"type": "chunk", "chain_id", "height", "index"}``: the answer's one payload is that chunk's
  bytes; a snapshot or chunk the node does not hold is refused (``not_found``).

Nothing is verified here: the joiner checks every chunk against the manifest's hash and the
restored state root against a certified block header (``replica.statesync``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

import msgspec
from libp2p.abc import IHost
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo

from agent_world_runtime.codec import encode

from .sync import Refusal, StreamServer, SyncError, request_payloads

SNAPSHOT_PROTOCOL_ID = TProtocol("/agent-world/snapshot/1.0.0")
#: Most manifests a ``list`` answer carries.
MAX_LISTED = 16
#: Most bytes of manifests a ``list`` answer may carry (a manifest of a 16 GiB snapshot is ~280 KB).
MAX_LIST_BYTES = 4 * 1024 * 1024

#: ``manifests()``: the encoded manifests held, newest first; ``chunk(height, index)``: the bytes
#: of one chunk, or None when not held.
ManifestSource = Callable[[], list[bytes]]
ChunkSource = Callable[[int, int], "bytes | None"]


class ListSnapshots(msgspec.Struct, tag="list", forbid_unknown_fields=True, frozen=True):
    """Ask for the manifests of the snapshots a peer holds."""

    chain_id: str


class GetChunk(msgspec.Struct, tag="chunk", forbid_unknown_fields=True, frozen=True):
    """Ask for chunk ``index`` of the snapshot of ``height``."""

    chain_id: str
    height: int
    index: int


SnapshotRequest = Union[ListSnapshots, GetChunk]


class SnapshotServer(StreamServer):
    """Serves ``/agent-world/snapshot/1.0.0`` from ``manifests`` and ``chunk`` (see the type
    aliases). Requests for another chain are refused; the bounds of ``StreamServer`` apply
    (``max_concurrent`` at once, ``serve_timeout_s`` each)."""

    request_type = SnapshotRequest  # type: ignore[assignment]

    def __init__(self, chain_id: str, manifests: ManifestSource, chunk: ChunkSource, *, max_frame_bytes: int,
                 max_concurrent: int = 2, serve_timeout_s: float = 60.0) -> None:
        super().__init__("snapshot", max_frame_bytes=max_frame_bytes, max_concurrent=max_concurrent,
                         serve_timeout_s=serve_timeout_s)
        self.chain_id = chain_id
        self._manifests = manifests
        self._chunk = chunk

    def check_request(self, request: ListSnapshots | GetChunk) -> tuple[str, str] | None:
        if request.chain_id != self.chain_id:
            return "wrong_chain", f"chain id mismatch: this node serves chain {self.chain_id!r}"
        return None

    def describe(self, request: ListSnapshots | GetChunk) -> dict:  # type: ignore[type-arg]
        if isinstance(request, GetChunk):
            return {"height": request.height, "chunk": request.index}
        return {}

    async def respond(self, request: ListSnapshots | GetChunk) -> list[bytes]:
        if isinstance(request, ListSnapshots):
            return self._manifests()[:MAX_LISTED]
        data = self._chunk(request.height, request.index)
        if data is None:
            raise Refusal("not_found", f"no chunk {request.index} of a snapshot of height {request.height} here")
        return [data]


async def request_manifests(host: IHost, peer_id: str, chain_id: str, *, timeout_s: float,
                            max_frame_bytes: int, peer_info: PeerInfo | None = None) -> list[bytes]:
    """The encoded manifests ``peer_id`` offers (undecoded, unverified). Raises ``SyncError``
    (timeout, refusal, oversize or malformed answer, unreachable peer)."""
    return await request_payloads(host, peer_id, SNAPSHOT_PROTOCOL_ID, encode(ListSnapshots(chain_id)),
                                  timeout_s=timeout_s, max_frame_bytes=max_frame_bytes, max_payloads=MAX_LISTED,
                                  max_total_bytes=MAX_LIST_BYTES, peer_info=peer_info)


async def request_chunk(host: IHost, peer_id: str, chain_id: str, height: int, index: int, *, max_bytes: int,
                        timeout_s: float, max_frame_bytes: int, peer_info: PeerInfo | None = None) -> bytes:
    """Chunk ``index`` of ``peer_id``'s snapshot of ``height`` (at most ``max_bytes``;
    unverified). Raises ``SyncError`` as ``request_manifests`` does, and for an answer without a
    chunk."""

    payloads = await request_payloads(host, peer_id, SNAPSHOT_PROTOCOL_ID,
                                      encode(GetChunk(chain_id, height, index)), timeout_s=timeout_s,
                                      max_frame_bytes=max_frame_bytes, max_payloads=1, max_total_bytes=max_bytes,
                                      peer_info=peer_info)
    if not payloads:
        raise SyncError(peer_id, f"malformed response: no chunk {index} of height {height}")
    return payloads[0]
