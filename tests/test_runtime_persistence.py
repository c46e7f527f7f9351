"""save_to_dir / load_from_dir: round trip, incremental journal segments, safe replacement, crash
leftovers and corruption detection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent_world_runtime import SnapshotError, World, compute_action_id
from agent_world_runtime.actions import CompileModuleArtifactFromSource, HarvestRadiation, InstallModuleFromArtifact, MoveAgent
from agent_world_runtime.modules.source import package_from_files
from agent_world_runtime.params import WorldParams
from agent_world_runtime.signer import AgentSigner
from tests.worlds import create, genesis_world

CHAIN = "persist-chain"
#: One harvest per 3 heights: the blocks below harvest every time, so some harvests are rejected
#: and ``last_harvest_height`` has to survive a reload.
PARAMS = WorldParams(harvest_interval=3)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "modules"


def apply(world: World, signed) -> list:
    return world.apply_action(signed, compute_action_id(signed))


def grow(world: World, alice: AgentSigner, blocks: int) -> None:
    for _ in range(blocks):
        world.begin_block(world.height + 1, (world.height + 1) * 1000)
        apply(world, alice.sign(MoveAgent(to=(world.height % 7 + 1, 0, 0))))
        apply(world, alice.sign(HarvestRadiation()))
        world.step_with_modules()
        world.end_block()


@pytest.fixture
def populated() -> tuple[World, AgentSigner]:
    w = genesis_world(CHAIN, PARAMS)
    alice = AgentSigner.from_seed("alice", b"\x05" * 32, CHAIN)
    w.begin_block(1, 1000)
    create(w, alice, electricity=1000, data=1000)
    pkg = package_from_files([EXAMPLES / "move_counter.wat", EXAMPLES / "move_counter.manifest.json"],
                             EXAMPLES / "move_counter.manifest.json")
    [compiled] = apply(w, alice.sign(CompileModuleArtifactFromSource(module_id="move_counter", source_package=pkg)))
    apply(w, alice.sign(InstallModuleFromArtifact(wasm_hash=compiled.data["wasm_hash"])))
    w.end_block()
    grow(w, alice, 12)
    return w, alice


def assert_same_world(a: World, b: World) -> None:
    assert a.height == b.height
    assert a.state_root() == b.state_root()
    assert b"".join(a.journal_raw()) == b"".join(b.journal_raw())
    assert a.module_status() == b.module_status()
    assert a.stats() == b.stats()


def test_round_trip_restores_root_journal_and_modules(tmp_path, populated):
    w, alice = populated
    w.save_to_dir(tmp_path / "world")
    loaded = World.load_from_dir(tmp_path / "world")
    assert_same_world(w, loaded)
    assert loaded.module_state("move_counter@alice") == w.module_state("move_counter@alice")
    assert loaded.get_agent("alice") == w.get_agent("alice")
    # Both continue identically, including module calls (artifact bytes came from the module store).
    grow(w, alice, 3)
    alice_again = AgentSigner("alice", alice.key, CHAIN, next_nonce=alice.next_nonce - 6)
    grow(loaded, alice_again, 3)
    assert_same_world(w, loaded)
    assert loaded.stats()["module_calls"] == 15


def test_saving_again_adds_a_journal_segment_and_replaces_the_snapshot(tmp_path, populated):
    w, alice = populated
    d = tmp_path / "world"
    w.save_to_dir(d)
    first_segments = set(os.listdir(d / "journal"))
    first_snapshot = (d / "CURRENT").read_text().strip()
    grow(w, alice, 2)
    w.save_to_dir(d)
    segments = set(os.listdir(d / "journal"))
    assert first_segments < segments and len(segments) == 2  # old segment reused, one new one
    snapshots = [p.name for p in d.iterdir() if p.name.startswith("snapshot-")]
    assert snapshots == [(d / "CURRENT").read_text().strip()] and snapshots[0] != first_snapshot
    assert_same_world(w, World.load_from_dir(d))
    # A world loaded from the directory also appends rather than rewriting.
    loaded = World.load_from_dir(d)
    grow(loaded, AgentSigner("alice", alice.key, CHAIN, next_nonce=alice.next_nonce), 1)
    loaded.save_to_dir(d)
    assert len(os.listdir(d / "journal")) == 3
    assert_same_world(loaded, World.load_from_dir(d))


def test_a_crash_before_the_commit_point_leaves_the_old_snapshot(tmp_path, populated, monkeypatch):
    w, alice = populated
    d = tmp_path / "world"
    w.save_to_dir(d)
    saved_root = w.state_root()
    grow(w, alice, 2)
    import agent_world_runtime.persistence as persistence

    real_write = persistence.write_atomic

    def crash_on_current(path, data):
        if path.name == "CURRENT":
            raise OSError("simulated crash")
        real_write(path, data)

    monkeypatch.setattr(persistence, "write_atomic", crash_on_current)
    with pytest.raises(OSError, match="simulated crash"):
        w.save_to_dir(d)
    monkeypatch.undo()
    old = World.load_from_dir(d)
    assert old.state_root() == saved_root and old.height == 13
    w.save_to_dir(d)  # the next save succeeds and removes the leftovers
    assert_same_world(w, World.load_from_dir(d))
    assert len([p for p in d.iterdir() if p.name.startswith("snapshot-")]) == 1


def test_corruption_is_detected(tmp_path, populated):
    w, _ = populated
    d = tmp_path / "world"
    w.save_to_dir(d)
    [segment] = list((d / "journal").iterdir())
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    segment.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="corrupt"):
        World.load_from_dir(d)

    w.save_to_dir(tmp_path / "w2")
    [wasm] = list((tmp_path / "w2" / "modules").iterdir())
    wasm.unlink()
    with pytest.raises(SnapshotError, match="module store is missing artifact"):
        World.load_from_dir(tmp_path / "w2")

    with pytest.raises(SnapshotError, match="CURRENT is missing"):
        World.load_from_dir(tmp_path / "empty")


def test_save_inside_a_block_is_refused(tmp_path, populated):
    w, _ = populated
    w.begin_block(w.height + 1, 0)
    with pytest.raises(RuntimeError, match="between blocks"):
        w.save_to_dir(tmp_path / "x")


def test_genesis_world_round_trip(tmp_path):
    ann = AgentSigner.from_seed("ann", b"\x06" * 32, CHAIN)
    w = World.from_genesis(CHAIN, WorldParams(grid_size=3, fee_base=4),
                           agents=[ann.genesis_agent(electricity=50, data=7, position=(1, -2, 3))])
    w.save_to_dir(tmp_path / "g")
    loaded = World.load_from_dir(tmp_path / "g")
    assert_same_world(w, loaded)
    assert loaded.params.grid_size == 3 and loaded.params.fee_base == 4 and loaded.chain_id == CHAIN
    assert loaded.get_agent("ann") == w.get_agent("ann")
    assert (loaded.get_agent("ann").electricity, loaded.get_agent("ann").position) == (50, (1, -2, 3))


def test_harvest_interval_survives_a_reload(tmp_path, populated):
    w, alice = populated
    # Blocks 2..13 each tried a harvest: those at heights 2, 5, 8 and 11 succeeded.
    assert (w.height, w.get_agent("alice").last_harvest_height) == (13, 11)
    w.save_to_dir(tmp_path / "w")
    loaded = World.load_from_dir(tmp_path / "w")
    assert loaded.get_agent("alice").last_harvest_height == 11
    harvests = [alice.sign(HarvestRadiation()) for _ in range(3)]  # heights 14, 15, 16
    kinds = []
    for world in (w, loaded):
        kinds.append([])
        for harvest in harvests:
            world.begin_block(world.height + 1, 0)
            kinds[-1].append(world.apply_action(harvest, compute_action_id(harvest))[0].kind)
            world.end_block()
    assert kinds[0] == kinds[1] == ["domain.radiation_harvested", "domain.action_rejected", "domain.action_rejected"]
    assert_same_world(w, loaded)
