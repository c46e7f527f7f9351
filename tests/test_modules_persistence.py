"""The module store in save_to_dir / load_from_dir (docs/module-abi.md, "Persistence"): saved by default,
artifact hashes re-checked on load, and a directory written before the module store existed
still loads."""

from __future__ import annotations

import msgspec
import pytest

from agent_world_runtime import World, compute_action_id
from agent_world_runtime.actions import HarvestRadiation, MoveAgent, UpgradeModuleFromArtifact
from agent_world_runtime.codec import decode, encode
from agent_world_runtime.crypto import sha256
from agent_world_runtime.governance.manifest import Manifest
from agent_world_runtime.modules.manifest import Subscription
from agent_world_runtime.params import WorldParams
from agent_world_runtime.persistence import CURRENT, SNAPSHOT_FILE, JournalSegment, SnapshotError, WorldSnapshot
from agent_world_runtime.signer import AgentSigner
from agent_world_runtime.state import AgentRecord, WorldMeta
from tests.test_runtime_modules import CHAIN, PARAMS, const_module, deploy, deploy_and_install, funded, manifest
from tests.worlds import genesis_world

V1 = const_module(msgspec.msgpack.encode({"new_state": b"one"}))
V2 = const_module(msgspec.msgpack.encode({"new_state": b"two", "emits": [{"kind": "v2"}]}))
SUBS = [Subscription(kind="domain.radiation_harvested")]


def act(w: World, signed) -> list:
    return w.apply_action(signed, compute_action_id(signed))


def module_world() -> tuple[World, AgentSigner, str]:
    w = genesis_world(CHAIN, PARAMS)
    w.begin_block(1, 1_000)
    alice = funded(w, "alice", b"\x01" * 32)
    iid = deploy_and_install(w, alice, V1, manifest("kept", subs=SUBS))
    act(w, alice.sign(HarvestRadiation()))
    deploy(w, alice, V2, msgspec.structs.replace(manifest("kept", subs=SUBS), version="2.0.0"))
    act(w, alice.sign(UpgradeModuleFromArtifact(instance_id=iid, wasm_hash=sha256(V2).hex())))
    w.end_block()
    return w, alice, iid


def test_module_store_round_trip_and_modules_keep_running(tmp_path):
    w, alice, iid = module_world()
    w.save_to_dir(tmp_path / "w")
    assert {p.name for p in (tmp_path / "w" / "modules").iterdir()} == {f"{sha256(V1).hex()}.wasm", f"{sha256(V2).hex()}.wasm"}
    loaded = World.load_from_dir(tmp_path / "w")
    assert loaded.state_root() == w.state_root()
    assert loaded.module_status() == w.module_status()
    assert loaded.module_state(iid) == b"one" and loaded.get_instance(iid).version == "2.0.0"
    outcomes = []
    harvest = alice.sign(HarvestRadiation())
    for world in (w, loaded):
        world.begin_block(2, 2_000)
        act(world, harvest)
        outcomes.append(world.end_block())
    assert outcomes[0].state_root == outcomes[1].state_root and outcomes[0].events == outcomes[1].events
    assert loaded.module_state(iid) == b"two"


def test_artifact_hash_is_rechecked_on_load(tmp_path):
    w, _, _ = module_world()
    w.save_to_dir(tmp_path / "w")
    stored = tmp_path / "w" / "modules" / f"{sha256(V2).hex()}.wasm"
    stored.write_bytes(stored.read_bytes() + b"\x00")
    with pytest.raises(SnapshotError, match="corrupt \\(sha256 mismatch\\)"):
        World.load_from_dir(tmp_path / "w")
    stored.unlink()
    with pytest.raises(SnapshotError, match="module store is missing artifact"):
        World.load_from_dir(tmp_path / "w")


class OldWorldSnapshot(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The snapshot layout before the module store existed."""

    format: int
    height: int
    meta: WorldMeta
    manifest: Manifest
    state_root: bytes
    journal_length: int
    journal_head: bytes
    segments: list[JournalSegment]
    agents: list[AgentRecord]
    tables: dict[str, dict[str, bytes]] = {}


def test_directory_without_a_module_store_still_loads(tmp_path):
    alice = AgentSigner.from_seed("alice", b"\x01" * 32, CHAIN)
    w = World.from_genesis(CHAIN, WorldParams(), agents=[alice.genesis_agent(electricity=1000, data=1000)])
    w.begin_block(1, 1_000)
    act(w, alice.sign(MoveAgent(to=(1, 0, 0))))
    w.end_block()
    d = tmp_path / "old"
    w.save_to_dir(d)
    # Rewrite it in the old layout: no module fields in the snapshot, no modules/ directory.
    snap_path = d / (d / CURRENT).read_text().strip() / SNAPSHOT_FILE
    snap = decode(snap_path.read_bytes(), WorldSnapshot)
    old = OldWorldSnapshot(**{f: getattr(snap, f) for f in OldWorldSnapshot.__struct_fields__})
    snap_path.write_bytes(encode(old))
    (d / "modules").rmdir()
    assert b"artifacts" not in snap_path.read_bytes()

    loaded = World.load_from_dir(d)
    assert loaded.state_root() == w.state_root() and loaded.height == 1
    assert loaded.module_status() == {"artifacts": [], "instances": []}
    loaded.begin_block(2, 2_000)
    iid = deploy_and_install(loaded, alice, V1, manifest("later", subs=SUBS))
    loaded.end_block()
    loaded.save_to_dir(d)  # the next save adds the module store
    again = World.load_from_dir(d)
    assert again.get_instance(iid) is not None and again.state_root() == loaded.state_root()
