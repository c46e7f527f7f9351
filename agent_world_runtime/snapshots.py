"""State-sync snapshots: a world at one height as one blob, kept on disk in chunks for peers.

A node that joins a long chain restores the newest snapshot its peers offer instead of replaying
every block (as CometBFT's state sync and the Cosmos SDK's snapshot manager do). Unlike the
node's own restart snapshot (``persistence``), a state-sync snapshot holds the world's records
but not its event journal: only the journal's length and hash-chain head, which the state root
commits to. Its size therefore grows with the world, not with the chain's length, and a node
restored from it serves events from the snapshot height on.

Format (``SNAPSHOT_FORMAT``): ``StateSnapshot {world: WorldSnapshot with no segments, modules:
{wasm_hash: bytes}}`` in canonical msgpack. ``restore_snapshot`` rebuilds and verifies it: every
artifact re-hashed, the state root recomputed from the records equal to the one recorded. The
caller then checks that root against a certified block header, which is what makes a snapshot
from an untrusted peer trustworthy.

On disk (``SnapshotArchive``), per height ``H``::

    <dir>/<H:012d>.snapshot     the blob
    <dir>/<H:012d>.manifest     SnapshotManifest: height, format, size, chunk size, the sha256 of
                                every chunk and of the whole blob, the recorded state root

Both are written as temp file + fsync + rename, the blob first: a manifest exists only for a
complete blob (the commit point), so a crash leaves either no snapshot of that height or a whole
one. Leftovers (a blob without a manifest, temp files) are removed by ``prune_snapshot_files``.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import structlog

from .codec import DecodeError, decode, encode
from .crypto import sha256
from .events import EventJournal
from .failpoints import failpoint
from .persistence import SnapshotError, WorldSnapshot, fsync_dir, rebuild_state, snapshot_of, write_atomic
from .state import WorldState

log = structlog.get_logger(__name__)

#: Format of ``StateSnapshot``; a joiner refuses a format it does not read.
SNAPSHOT_FORMAT = 1
#: Bytes per chunk: each chunk travels as one frame of the snapshot stream protocol.
CHUNK_BYTES = 2 * 1024 * 1024
#: Most chunks a manifest may list (a 16 GiB snapshot); a manifest claiming more is refused.
MAX_CHUNKS = 8192
SNAPSHOT_SUFFIX = ".snapshot"
MANIFEST_SUFFIX = ".manifest"


class StateSnapshot(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A world at one height without its journal's events (see the module docstring)."""

    world: WorldSnapshot
    modules: dict[str, bytes]


class SnapshotManifest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What a snapshot is, as listed to peers: ``height`` (the world after that block), ``format``,
    ``size`` (bytes), ``chunk_bytes``, ``chunk_hashes`` (sha256 of each chunk, in order), ``hash``
    (sha256 of the whole blob) and the ``state_root`` the snapshot records (unverified until
    restored and checked against a certified header)."""

    height: int
    format: int
    size: int
    chunk_bytes: int
    chunk_hashes: list[bytes]
    hash: bytes
    state_root: bytes

    def problem(self) -> str | None:
        """Why this manifest (from a peer) cannot describe a snapshot we could use, or None."""
        if self.format != SNAPSHOT_FORMAT:
            return f"format {self.format}, this node reads format {SNAPSHOT_FORMAT}"
        if self.height < 1 or self.size < 1 or not (1 <= self.chunk_bytes <= CHUNK_BYTES):
            return f"bad height {self.height}, size {self.size} or chunk size {self.chunk_bytes}"
        expected = -(-self.size // self.chunk_bytes)
        if len(self.chunk_hashes) != expected or expected > MAX_CHUNKS:
            return f"{len(self.chunk_hashes)} chunk hashes for {self.size} bytes in chunks of {self.chunk_bytes}"
        if any(len(h) != 32 for h in self.chunk_hashes) or len(self.hash) != 32 or len(self.state_root) != 32:
            return "a hash is not 32 bytes"
        return None


def create_snapshot(state: WorldState, height: int) -> bytes:
    """Return the canonical bytes of the ``StateSnapshot`` of ``state`` after block ``height``.
    Call it between blocks."""
    return encode(StateSnapshot(world=snapshot_of(state, height, None), modules=dict(sorted(state.artifact_bytes.items()))))


def restore_snapshot(data: bytes) -> tuple[WorldState, int]:
    """Rebuild ``(state, height)`` from ``create_snapshot`` bytes, verified (module docstring).
    Raises SnapshotError: undecodable, another format, a corrupt artifact, or a recorded state root
    the records do not give."""
    try:
        snap = decode(data, StateSnapshot)
    except DecodeError as exc:
        raise SnapshotError(f"state-sync snapshot does not decode: {exc}") from None
    world = snap.world
    if world.format != SNAPSHOT_FORMAT or world.segments:
        raise SnapshotError(f"state-sync snapshot has format {world.format} with {len(world.segments)} journal "
                            f"segments; this node reads format {SNAPSHOT_FORMAT} without segments")
    if world.journal_base != world.journal_length or world.journal_base_head != world.journal_head:
        raise SnapshotError("state-sync snapshot's journal base differs from its journal length or head")
    try:
        journal = EventJournal(world.journal_base, world.journal_base_head)
    except ValueError as exc:
        raise SnapshotError(f"state-sync snapshot's journal base is invalid: {exc}") from None

    def artifact(wasm_hash: str) -> bytes:
        try:
            return snap.modules[wasm_hash]
        except KeyError:
            raise SnapshotError(f"state-sync snapshot lacks module artifact {wasm_hash}") from None

    return rebuild_state(world, journal, artifact, f"the state-sync snapshot of height {world.height}"), world.height


def manifest_for(data: bytes, height: int, state_root: bytes, chunk_bytes: int = CHUNK_BYTES) -> SnapshotManifest:
    """The manifest of snapshot bytes ``data`` of ``height`` recording ``state_root``."""
    chunks = [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
    return SnapshotManifest(height=height, format=SNAPSHOT_FORMAT, size=len(data), chunk_bytes=chunk_bytes,
                            chunk_hashes=[sha256(c) for c in chunks], hash=sha256(data), state_root=state_root)


class SnapshotArchive:
    """The state-sync snapshots a node keeps in ``directory`` (layout in the module docstring),
    at most ``keep_recent`` of them (the newest). Not thread-safe: one owner."""

    def __init__(self, directory: Path, keep_recent: int) -> None:
        self.directory = Path(directory)
        self.keep_recent = 1
        self.set_snapshot_retention(keep_recent)
        self._manifests: dict[int, SnapshotManifest] | None = None

    def set_snapshot_retention(self, keep_recent: int) -> None:
        """Keep the newest ``keep_recent`` snapshots (>= 1) from the next save or prune on.
        Raises ValueError below 1."""
        if keep_recent < 1:
            raise ValueError(f"snapshot retention must keep at least 1 snapshot, got {keep_recent}")
        self.keep_recent = keep_recent

    def _path(self, height: int, suffix: str) -> Path:
        return self.directory / f"{height:012d}{suffix}"

    def save_snapshot_to_dir(self, data: bytes, height: int, state_root: bytes) -> SnapshotManifest:
        """Store snapshot bytes ``data`` of ``height`` (blob, then manifest: the commit point),
        then prune to the retention. Returns its manifest. Raises OSError on I/O failure (a
        full disk included); nothing half-written is ever listed."""
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest = manifest_for(data, height, state_root)
        write_atomic(self._path(height, SNAPSHOT_SUFFIX), data)
        failpoint("state_snapshot.after_blob")
        write_atomic(self._path(height, MANIFEST_SUFFIX), encode(manifest))
        fsync_dir(self.directory)
        self._manifests = None
        self.prune_snapshot_files()
        log.info("state_snapshot_saved", height=height, bytes=len(data), chunks=len(manifest.chunk_hashes))
        return manifest

    def manifests(self) -> list[SnapshotManifest]:
        """The complete snapshots held, newest first (read from disk once, then cached). A
        manifest that does not decode is skipped (and removed by the next prune)."""
        if self._manifests is None:
            found: dict[int, SnapshotManifest] = {}
            if self.directory.is_dir():
                for path in self.directory.glob(f"*{MANIFEST_SUFFIX}"):
                    try:
                        manifest = decode(path.read_bytes(), SnapshotManifest)
                    except (OSError, DecodeError):
                        log.warning("state_snapshot_manifest_unreadable", path=str(path))
                        continue
                    if path.name == f"{manifest.height:012d}{MANIFEST_SUFFIX}":
                        found[manifest.height] = manifest
            self._manifests = found
        return [self._manifests[h] for h in sorted(self._manifests, reverse=True)]

    def read_chunk(self, height: int, index: int) -> bytes | None:
        """Chunk ``index`` of the snapshot of ``height``, or None if not held (or out of range)."""
        manifest = next((m for m in self.manifests() if m.height == height), None)
        if manifest is None or not 0 <= index < len(manifest.chunk_hashes):
            return None
        failpoint("state_snapshot.serving_chunk")
        try:
            with open(self._path(height, SNAPSHOT_SUFFIX), "rb") as f:
                f.seek(index * manifest.chunk_bytes)
                return f.read(manifest.chunk_bytes)
        except OSError:
            return None

    def prune_snapshot_files(self) -> list[int]:
        """Delete snapshots beyond the newest ``keep_recent``, and leftovers of interrupted saves
        (temp files, blobs without a manifest, unreadable manifests). Returns the heights removed."""
        if not self.directory.is_dir():
            return []
        self._manifests = None
        kept = {m.height for m in self.manifests()[: self.keep_recent]}
        removed: set[int] = set()
        for path in self.directory.iterdir():
            stem, suffix = path.stem, path.suffix
            keep = suffix in (SNAPSHOT_SUFFIX, MANIFEST_SUFFIX) and stem.isdigit() and int(stem) in kept
            if keep:
                continue
            if stem.isdigit():
                removed.add(int(stem))
            try:
                path.unlink()
            except OSError as exc:
                log.warning("state_snapshot_prune_failed", path=str(path), error=str(exc))
        self._manifests = None
        return sorted(removed - kept)


def verify_chunk(manifest: SnapshotManifest, index: int, chunk: bytes) -> str | None:
    """Why ``chunk`` is not chunk ``index`` of ``manifest`` (wrong size or hash), or None."""
    if not 0 <= index < len(manifest.chunk_hashes):
        return f"chunk index {index} out of range 0..{len(manifest.chunk_hashes) - 1}"
    expected = min(manifest.chunk_bytes, manifest.size - index * manifest.chunk_bytes)
    if len(chunk) != expected:
        return f"chunk {index} has {len(chunk)} bytes, the manifest says {expected}"
    if sha256(chunk) != manifest.chunk_hashes[index]:
        return f"chunk {index} does not match its sha256 in the manifest"
    return None
