"""State-sync snapshots (``agent_world_runtime.snapshots``): a world restored from one continues
exactly like the original, the journal is not carried, tampering is detected, and the on-disk
archive keeps the newest snapshots, is crash-safe and serves verifiable chunks."""

from __future__ import annotations

import msgspec
import pytest

from agent_world_runtime import SnapshotError, World
from agent_world_runtime.actions import HarvestRadiation, MoveAgent
from agent_world_runtime.codec import decode, encode
from agent_world_runtime.signer import AgentSigner
from agent_world_runtime.snapshots import (
    SnapshotArchive,
    SnapshotManifest,
    StateSnapshot,
    manifest_for,
    verify_chunk,
)
from tests.test_runtime_persistence import apply, populated  # noqa: F401  (fixture)


def grow_both(worlds: list[World], alice: AgentSigner, blocks: int) -> None:
    """Apply the same signed actions to every world, ``blocks`` blocks of them."""
    for _ in range(blocks):
        height = worlds[0].height + 1
        signed = [alice.sign(MoveAgent(to=(height % 7 + 1, 0, 0))), alice.sign(HarvestRadiation())]
        for world in worlds:
            assert world.height + 1 == height
            world.begin_block(height, height * 1000)
            for s in signed:
                apply(world, s)
            world.step_with_modules()
            world.end_block()


def test_a_restored_world_continues_like_the_original(populated, tmp_path) -> None:  # noqa: F811
    world, alice = populated
    data = world.create_snapshot()
    restored = World.restore_snapshot(data)
    assert restored.height == world.height
    assert restored.state_root() == world.state_root()
    assert restored.module_status() == world.module_status()
    # The journal's events are not carried, only its length and head.
    assert len(world.journal_raw()) > 0 and restored.journal_raw() == []
    assert restored.events(0, 10) == []
    grow_both([world, restored], alice, 5)
    assert restored.state_root() == world.state_root()
    first_new = restored.events(0, 100)
    assert first_new and first_new == world.events(first_new[0].seq, 100)
    # And a restored world saves and loads like any other (its journal starts after the base).
    restored.save_to_dir(tmp_path / "w")
    grow_both([world, restored], alice, 2)
    restored.save_to_dir(tmp_path / "w")
    again = World.load_from_dir(tmp_path / "w")
    assert again.state_root() == world.state_root() == restored.state_root()
    assert again.journal_raw() == restored.journal_raw()


def test_tampered_snapshots_are_refused(populated) -> None:  # noqa: F811
    world, _ = populated
    snap = decode(world.create_snapshot(), StateSnapshot)
    agents = list(snap.world.agents)
    agents[0] = msgspec.structs.replace(agents[0], electricity=agents[0].electricity + 1)
    richer = msgspec.structs.replace(snap, world=msgspec.structs.replace(snap.world, agents=agents))
    with pytest.raises(SnapshotError, match="state root recomputed"):
        World.restore_snapshot(encode(richer))
    [wasm_hash] = snap.modules
    bad_module = msgspec.structs.replace(snap, modules={wasm_hash: snap.modules[wasm_hash] + b"\x00"})
    with pytest.raises(SnapshotError, match="corrupt"):
        World.restore_snapshot(encode(bad_module))
    with pytest.raises(SnapshotError, match="lacks module artifact"):
        World.restore_snapshot(encode(msgspec.structs.replace(snap, modules={})))
    longer = msgspec.structs.replace(snap, world=msgspec.structs.replace(snap.world, journal_length=snap.world.journal_length + 1))
    with pytest.raises(SnapshotError, match="journal"):
        World.restore_snapshot(encode(longer))
    with pytest.raises(SnapshotError, match="does not decode"):
        World.restore_snapshot(b"\x93garbage")


def test_archive_keeps_the_newest_and_serves_verified_chunks(tmp_path) -> None:
    archive = SnapshotArchive(tmp_path / "ss", keep_recent=2)
    blobs = {h: bytes([h]) * (5_000_000 + h) for h in (10, 20, 30)}
    for h, data in blobs.items():
        archive.save_snapshot_to_dir(data, h, b"\x01" * 32)
    assert [m.height for m in archive.manifests()] == [30, 20]
    assert sorted(p.name for p in (tmp_path / "ss").iterdir()) == [
        "000000000020.manifest", "000000000020.snapshot", "000000000030.manifest", "000000000030.snapshot"]
    manifest = archive.manifests()[0]
    assert manifest.problem() is None and len(manifest.chunk_hashes) == 3
    chunks = [archive.read_chunk(30, i) for i in range(3)]
    assert all(c is not None and verify_chunk(manifest, i, c) is None for i, c in enumerate(chunks))
    assert b"".join(c for c in chunks if c is not None) == blobs[30]
    assert archive.read_chunk(30, 3) is None and archive.read_chunk(10, 0) is None
    first = chunks[0]
    assert first is not None
    assert "sha256" in (verify_chunk(manifest, 0, first[:-1] + b"\xff") or "")
    assert "bytes" in (verify_chunk(manifest, 0, first[:-1]) or "")
    # Retention can change; a lower one applies at the next prune.
    archive.set_snapshot_retention(1)
    assert archive.prune_snapshot_files() == [20]
    assert [m.height for m in archive.manifests()] == [30]
    with pytest.raises(ValueError):
        archive.set_snapshot_retention(0)


def test_an_interrupted_save_is_never_listed_and_is_cleaned_up(tmp_path) -> None:
    directory = tmp_path / "ss"
    archive = SnapshotArchive(directory, keep_recent=3)
    archive.save_snapshot_to_dir(b"a" * 100, 5, b"\x02" * 32)
    # A crash after the blob and before the manifest, and a temp file of a crash before that.
    (directory / "000000000010.snapshot").write_bytes(b"b" * 100)
    (directory / ".tmp-0000-000000000015.snapshot").write_bytes(b"c")
    (directory / "000000000012.manifest").write_bytes(b"not a manifest")
    fresh = SnapshotArchive(directory, keep_recent=3)
    assert [m.height for m in fresh.manifests()] == [5]
    fresh.prune_snapshot_files()
    assert sorted(p.name for p in directory.iterdir()) == ["000000000005.manifest", "000000000005.snapshot"]


@pytest.mark.parametrize("change, problem", [
    (dict(format=2), "format"),
    (dict(size=0), "bad height"),
    (dict(chunk_bytes=64 * 1024 * 1024), "chunk size"),
    (dict(chunk_hashes=[]), "chunk hashes"),
    (dict(hash=b"short"), "32 bytes"),
])
def test_manifest_problems(change, problem) -> None:
    good = manifest_for(b"x" * 1000, 7, b"\x03" * 32, chunk_bytes=300)
    assert good.problem() is None and len(good.chunk_hashes) == 4
    bad: SnapshotManifest = msgspec.structs.replace(good, **change)
    assert problem in (bad.problem() or "")
