"""Saving and loading a World: a snapshot of its records, its event journal and its module store.

Directory layout::

    <dir>/CURRENT                               name of the current snapshot directory (one line)
    <dir>/snapshot-<height>-<tag>/snapshot.msgpack   WorldSnapshot: every record, the journal
                                                length and head, the list of journal segments
    <dir>/journal/<first>-<last>-<sha>.seg      immutable journal segments: msgpack array of the
                                                events' canonical bytes, seq first..last
    <dir>/modules/<wasm_hash>.wasm              module store: artifact bytes by hash (registry
                                                metadata is in the snapshot's artifact records)

Atomicity: segments and artifacts are immutable, content-named files written as temp file +
fsync + ``os.replace``; the snapshot is written into a temporary directory that is fsynced and
renamed; only then is ``CURRENT`` replaced (temp file + ``os.replace``), which is the commit point.
A crash at any moment leaves ``CURRENT`` naming a complete old or new snapshot. Files no longer
referenced are removed after the switch. One writer per directory at a time; the directory belongs
to the world (unreferenced files under ``journal/`` and ``modules/`` are deleted).

Incremental journal: ``save_state`` and ``load_state`` return a ``SaveCache`` naming the segments
written to (or loaded from) a directory; the World keeps it and hands it to its next save, which
then writes only the events since, as a new segment. After MAX_SEGMENTS segments the journal is
rewritten as one.

This module works on a ``WorldState`` and a height and knows nothing of ``World``:
``World.save_to_dir`` and ``World.load_from_dir`` call ``save_state`` and ``load_state``.

Loading verifies everything: segment and artifact hashes (each artifact's bytes are re-hashed
against its ``wasm_hash``), the journal's sequence and hash-chain head, and the state root
recomputed from the records against the one saved. A directory written before the module store
existed (a snapshot without ``artifacts``/``instances``/``module_state`` and no ``modules/``)
loads as a world without modules; the next save adds the module store.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import msgspec
import structlog

from .codec import DecodeError, decode, encode
from .crypto import sha256
from .events import ZERO_HEAD, EventJournal
from .failpoints import failpoint
from .governance.manifest import Manifest
from .state import TABLES, AgentRecord, ArtifactRecord, BuildRecord, InstanceRecord, WorldMeta, WorldState

log = structlog.get_logger(__name__)

SNAPSHOT_FORMAT = 1
MAX_SEGMENTS = 64
CURRENT = "CURRENT"
SNAPSHOT_FILE = "snapshot.msgpack"


class SnapshotError(RuntimeError):
    """The directory holds no valid world snapshot; the message names the file and the problem."""


class JournalSegment(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One journal segment file: events ``first_seq..last_seq`` and the file's sha256."""

    file: str
    first_seq: int
    last_seq: int
    sha256: bytes


class WorldSnapshot(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Everything needed to rebuild a World, except the journal events and artifact bytes, which
    it references."""

    format: int
    height: int
    meta: WorldMeta
    manifest: Manifest
    state_root: bytes
    journal_length: int
    journal_head: bytes
    segments: list[JournalSegment]
    agents: list[AgentRecord]
    # The module store; absent in directories written before it existed (they load as "no modules").
    artifacts: list[ArtifactRecord] = []
    instances: list[InstanceRecord] = []
    module_state: dict[str, bytes] = {}
    builds: list[BuildRecord] = []
    # A journal restored by state sync holds only events after ``journal_base`` (``EventJournal``).
    journal_base: int = 0
    journal_base_head: bytes = ZERO_HEAD
    # The generic record tables (``state.TABLES``): table -> key -> the record's canonical bytes.
    tables: dict[str, dict[str, bytes]] = {}


@dataclass(frozen=True)
class SaveCache:
    """What a world last wrote to (or loaded from) a directory: the resolved ``directory``, the
    snapshot ``generation`` ``CURRENT`` named then, and the journal ``segments`` already there.
    The owner of the state keeps it and passes it to the next ``save_state``."""

    directory: Path
    generation: str
    segments: tuple[JournalSegment, ...]


@dataclass(frozen=True)
class LoadedState:
    """A verified snapshot: the rebuilt ``state``, the ``height`` of the last completed block and
    the ``cache`` to pass to the next ``save_state`` into the same directory."""

    state: WorldState
    height: int
    cache: SaveCache


def fsync_dir(path: Path) -> None:
    """fsync the directory ``path`` (makes renames and new entries in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace the file ``path`` with ``data`` atomically: a temporary file beside it, written and
    fsynced, then renamed over it (a crash leaves the old or the new content, and at worst a
    ``.tmp-*`` file). The rename is durable once the caller fsyncs the directory (``fsync_dir``).
    Raises OSError; the temporary file is removed on failure."""
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_current(directory: Path) -> str | None:
    try:
        return (directory / CURRENT).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def snapshot_of(state: WorldState, height: int, segments: list[JournalSegment] | None) -> WorldSnapshot:
    """The ``WorldSnapshot`` of ``state`` at block ``height`` whose journal's held events are in
    ``segments``; None: without the journal's events (the snapshot's journal then starts after a
    base of every event so far, as state sync restores it)."""
    journal = state.journal
    if segments is None:
        segments, base, base_head = [], len(journal), journal.head
    else:
        base, base_head = journal.base, journal.base_head
    return WorldSnapshot(
        format=SNAPSHOT_FORMAT,
        height=height,
        meta=state.meta,
        manifest=state.manifest,
        state_root=state.state_root(),
        journal_length=len(journal),
        journal_head=journal.head,
        segments=segments,
        agents=[state.agents[k] for k in sorted(state.agents)],
        artifacts=[state.artifacts[k] for k in sorted(state.artifacts)],
        instances=[state.instances[k] for k in sorted(state.instances)],
        module_state=dict(sorted(state.module_state.items())),
        builds=[state.builds[k] for k in sorted(state.builds)],
        journal_base=base,
        journal_base_head=base_head,
        tables={name: {k: encode(r) for k, r in sorted(records.items())} for name, records in state.tables.items()},
    )


def rebuild_state(snap: WorldSnapshot, journal: EventJournal, artifact_bytes: Callable[[str], bytes], where: str) -> WorldState:
    """Rebuild and verify the ``WorldState`` of ``snap`` with its ``journal``: ``artifact_bytes
    (wasm_hash)`` returns each artifact's bytes (raising SnapshotError when missing), which are
    re-hashed; the state root recomputed from the records must equal ``snap.state_root``.
    ``where`` names the source in errors. Raises SnapshotError."""
    if len(journal) != snap.journal_length or journal.head != snap.journal_head:
        raise SnapshotError(f"journal in {where} does not match its snapshot (length or hash-chain head differs)")
    state = WorldState(snap.meta, snap.manifest)
    state.journal = journal
    for name, records in snap.tables.items():
        if name not in TABLES:
            raise SnapshotError(f"{where} holds an unknown record table {name[:40]!r}")
        try:
            state.tables[name] = {k: decode(raw, TABLES[name]) for k, raw in records.items()}
        except DecodeError as exc:
            raise SnapshotError(f"{where}: a {name} record is malformed: {exc}") from None
    for agent in snap.agents:
        state.agents[agent.agent_id] = agent
    for art in snap.artifacts:
        wasm = artifact_bytes(art.wasm_hash)
        if sha256(wasm).hex() != art.wasm_hash:
            raise SnapshotError(f"module artifact {art.wasm_hash} in {where} is corrupt (sha256 mismatch)")
        state.artifacts[art.wasm_hash] = art
        state.artifact_bytes[art.wasm_hash] = wasm
    for inst in snap.instances:
        state.instances[inst.instance_id] = inst
    state.module_state.update(snap.module_state)
    for build in snap.builds:
        state.builds[build.build_id] = build
    state.rebuild_indexes()
    root = state.rebuild_tree()
    if root != snap.state_root:
        raise SnapshotError(
            f"state root recomputed from {where} is {root.hex()}, but the snapshot recorded {snap.state_root.hex()}"
        )
    return state


def save_state(state: WorldState, height: int, directory: Path, cache: SaveCache | None) -> SaveCache:
    """Write ``state`` at block ``height`` into ``directory`` as described in the module
    docstring and return the SaveCache for the next save. ``cache`` is the one the previous
    ``save_state``/``load_state`` returned for this state (None for none): journal segments it lists
    that are still current in ``directory`` are kept, so only newer events are written. Call it
    between blocks. Raises OSError on I/O failure."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "journal").mkdir(exist_ok=True)
    (directory / "modules").mkdir(exist_ok=True)
    resolved = directory.resolve()
    journal = state.journal

    segments: list[JournalSegment] = []
    if (cache is not None and cache.directory == resolved and _read_current(directory) == cache.generation
            and len(cache.segments) < MAX_SEGMENTS
            and all((directory / "journal" / s.file).is_file() for s in cache.segments)):
        segments = list(cache.segments)
    covered = segments[-1].last_seq if segments else journal.base
    if len(journal) > covered:
        first, last = covered + 1, len(journal)
        blob = encode(journal.raw(first, last))
        digest = sha256(blob)
        name = f"{first:012d}-{last:012d}-{digest.hex()[:16]}.seg"
        write_atomic(directory / "journal" / name, blob)
        segments.append(JournalSegment(file=name, first_seq=first, last_seq=last, sha256=digest))
    failpoint("snapshot.after_journal")

    for wasm_hash, wasm in state.artifact_bytes.items():
        target = directory / "modules" / f"{wasm_hash}.wasm"
        if not target.is_file() or target.stat().st_size != len(wasm):
            write_atomic(target, wasm)
    fsync_dir(directory / "journal")
    fsync_dir(directory / "modules")

    snapshot = snapshot_of(state, height, segments)
    generation = f"snapshot-{height:012d}-{uuid.uuid4().hex[:12]}"
    tmp_dir = directory / f".tmp-{generation}"
    tmp_dir.mkdir()
    with open(tmp_dir / SNAPSHOT_FILE, "wb") as f:
        f.write(encode(snapshot))
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp_dir)
    failpoint("snapshot.before_rename")
    os.replace(tmp_dir, directory / generation)
    fsync_dir(directory)
    failpoint("snapshot.after_rename")
    write_atomic(directory / CURRENT, (generation + "\n").encode())
    fsync_dir(directory)  # commit point: CURRENT names the new snapshot
    failpoint("snapshot.after_current")

    new_cache = SaveCache(resolved, generation, tuple(segments))
    _collect_garbage(directory, generation, {s.file for s in segments}, set(state.artifact_bytes))
    log.info("world_saved", path=str(directory), height=height, events=len(journal), segments=len(segments))
    return new_cache


def _collect_garbage(directory: Path, generation: str, segment_files: set[str], wasm_hashes: set[str]) -> None:
    """Remove snapshots, segments and artifacts the current snapshot does not reference."""
    try:
        for entry in directory.iterdir():
            if entry.name in (CURRENT, generation, "journal", "modules"):
                continue
            if entry.is_dir() and (entry.name.startswith("snapshot-") or entry.name.startswith(".tmp-")):
                for child in entry.iterdir():
                    child.unlink()
                entry.rmdir()
            elif entry.is_file() and entry.name.startswith(".tmp-"):
                entry.unlink()
        for entry in (directory / "journal").iterdir():
            if entry.name not in segment_files:
                entry.unlink()
        for entry in (directory / "modules").iterdir():
            if entry.suffix != ".wasm" or entry.stem not in wasm_hashes:
                entry.unlink()
    except OSError as exc:  # leftovers are harmless; the next save tries again
        log.warning("snapshot_cleanup_failed", path=str(directory), error=str(exc))


def load_state(directory: Path) -> LoadedState:
    """Load and verify the snapshot ``directory/CURRENT`` names; raises SnapshotError (the
    message names the file and the problem)."""
    generation = _read_current(directory)
    if generation is None:
        raise SnapshotError(f"no world snapshot in {directory}: {CURRENT} is missing; save a world there first")
    snap_path = directory / generation / SNAPSHOT_FILE
    try:
        snap = decode(snap_path.read_bytes(), WorldSnapshot)
    except (OSError, DecodeError) as exc:
        raise SnapshotError(f"cannot read {snap_path}: {exc}") from None
    if snap.format != SNAPSHOT_FORMAT:
        raise SnapshotError(f"{snap_path} has format {snap.format}; this runtime reads format {SNAPSHOT_FORMAT}")

    raws: list[bytes] = []
    for seg in snap.segments:
        seg_path = directory / "journal" / seg.file
        try:
            blob = seg_path.read_bytes()
        except OSError as exc:
            raise SnapshotError(f"cannot read journal segment {seg_path}: {exc}") from None
        if sha256(blob) != seg.sha256:
            raise SnapshotError(f"journal segment {seg_path} is corrupt (sha256 mismatch)")
        if seg.first_seq != snap.journal_base + len(raws) + 1:
            raise SnapshotError(f"journal segment {seg_path} starts at seq {seg.first_seq}, "
                                f"expected {snap.journal_base + len(raws) + 1}")
        try:
            items = decode(blob, list[bytes])
        except DecodeError as exc:
            raise SnapshotError(f"journal segment {seg_path} is malformed: {exc}") from None
        if len(items) != seg.last_seq - seg.first_seq + 1:
            raise SnapshotError(f"journal segment {seg_path} holds {len(items)} events, expected {seg.last_seq - seg.first_seq + 1}")
        raws.extend(items)
    try:
        journal = EventJournal.from_raw(raws, snap.journal_base, snap.journal_base_head)
    except (DecodeError, ValueError) as exc:
        raise SnapshotError(f"journal in {directory} is malformed: {exc}") from None

    def artifact(wasm_hash: str) -> bytes:
        wasm_path = directory / "modules" / f"{wasm_hash}.wasm"
        try:
            return wasm_path.read_bytes()
        except OSError as exc:
            raise SnapshotError(f"module store is missing artifact {wasm_hash} ({wasm_path}): {exc}") from None

    state = rebuild_state(snap, journal, artifact, str(snap_path))
    log.info("world_loaded", path=str(directory), height=snap.height, events=len(journal))
    return LoadedState(state, snap.height, SaveCache(directory.resolve(), generation, tuple(snap.segments)))
