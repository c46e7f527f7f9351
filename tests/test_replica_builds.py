"""A validator's part in builds from source, through a real replica (sole validator, so each
height commits inside the call that starts it): a committed build request makes the replica ask
for the build (``StartBuild``); the result comes back as a signed attestation that the next block
carries; the artifact is registered from it, and replaying the chain registers it again without
building."""

from __future__ import annotations

from pathlib import Path

from agent_world_node import config as cfg
from agent_world_node.replica import ActionSource, Replica, StartBuild
from agent_world_node.store import NodeStore
from agent_world_runtime.actions import CompileModuleArtifactFromSource, ModuleSourcePackage
from agent_world_runtime.crypto import SigningKey, sha256
from agent_world_runtime.params import Toolchain, WorldParams
from agent_world_runtime.signer import AgentSigner
from tests.test_runtime_modules import const_module

CHAIN = "replica-builds"
TOOLCHAIN = Toolchain(name="c", version="zig 0.13.0", compiler_sha256="cd" * 32)
BOB = AgentSigner.from_seed("bob", b"\x0b" * 32, CHAIN)
MANIFEST = '{"module_id": "cmod", "version": "1.0.0", "kind": "reducer", "exports": ["reduce"]}'
BUILT = const_module(b"\x80")


def _replica(tmp_path: Path, key: SigningKey, name: str = "db") -> Replica:
    genesis = cfg.Genesis(chain_id=CHAIN, genesis_time_ms=0,
                          validators=[cfg.GenesisValidator("v", key.public_key.hex(), 10)],
                          world=WorldParams(toolchains=[TOOLCHAIN]), agents=[BOB.genesis_agent(10_000, 10_000)])
    return Replica.open(genesis=genesis, consensus=cfg.ConsensusConfig(), validator_key=key,
                        store=NodeStore(tmp_path / f"{name}.sqlite3"), snapshot_dir=tmp_path / f"{name}-snap",
                        snapshot_interval=1000, node_id="n", now_ms=lambda: 1_000)


def test_a_committed_request_is_built_attested_and_registered(tmp_path):
    key = SigningKey(b"\x01" * 32)
    replica = _replica(tmp_path, key)
    package = ModuleSourcePackage(manifest_path="m.json", files={"m.json": MANIFEST, "mod.c": "int x;\n"})
    result = replica.admit(BOB.sign(CompileModuleArtifactFromSource(module_id="cmod", source_package=package)),
                           ActionSource.LOCAL)
    assert result.status == "accepted", result.reason
    replica.start()  # height 1 commits the request
    assert replica.height == 1
    [build] = replica.world.pending_builds()
    [start] = [o for o in replica.tick(0, []) if isinstance(o, StartBuild)]
    assert start.build_id == build.build_id and start.files == package.files and start.toolchain == TOOLCHAIN
    assert [o for o in replica.tick(100, []) if isinstance(o, StartBuild)] == []  # asked once
    attested = replica.build_finished(build.build_id, "OK", BUILT)
    assert attested is not None and attested.status == "accepted", attested
    replica.handle_commit_wait(1)  # height 2 carries the attestation
    assert replica.height == 2
    record = replica.world.get_build(build.build_id)
    assert record is not None and (record.status, record.wasm_hash) == ("registered", sha256(BUILT).hex())
    assert [a["wasm_hash"] for a in replica.world.module_status()["artifacts"]] == [sha256(BUILT).hex()]
    assert replica.build_finished(build.build_id, "OK", BUILT) is None  # settled: nothing to attest
    root = replica.driver.last_state_root

    # A node replaying the stored chain registers the same artifact from the attestation's bytes.
    replica.store.close()
    reopened = Replica.open(genesis=replica.genesis, consensus=cfg.ConsensusConfig(), validator_key=None,
                            store=NodeStore(tmp_path / "db.sqlite3"), snapshot_dir=tmp_path / "fresh-snap",
                            snapshot_interval=1000, node_id="m", now_ms=lambda: 1_000)
    assert reopened.driver.last_height == 2 and reopened.driver.last_state_root == root
    assert reopened.world.get_build(build.build_id).status == "registered"
    assert [o for o in reopened.tick(0, []) if isinstance(o, StartBuild)] == []  # not a validator


def test_a_failed_build_is_attested_by_code_only(tmp_path):
    key = SigningKey(b"\x02" * 32)
    replica = _replica(tmp_path, key)
    package = ModuleSourcePackage(manifest_path="m.json", files={"m.json": MANIFEST, "mod.c": "#include </etc/hostname>\n"})
    replica.admit(BOB.sign(CompileModuleArtifactFromSource(module_id="cmod", source_package=package)), ActionSource.LOCAL)
    replica.start()
    [build] = replica.world.pending_builds()
    replica.tick(0, [])
    replica.build_finished(build.build_id, "COMPILE_ERROR")
    replica.handle_commit_wait(1)
    record = replica.world.get_build(build.build_id)
    assert (record.status, record.code) == ("failed", "COMPILE_ERROR")
    settled = [e for e in replica.world.events(0, 100, "module.build_settled")]
    assert len(settled) == 1 and "hostname" not in repr(settled[0].data)
