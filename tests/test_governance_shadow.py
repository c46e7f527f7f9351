"""Shadow runs (governance.shadow): read-only, deterministic reports of a candidate manifest: its
hash, the changed paths, every error (parameters, module changes checked in order against the state,
limits); and the overlap test of pending proposals' paths."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from agent_world_runtime.crypto import sha256
from agent_world_runtime.governance.changes import MAX_MODULE_CHANGES
from agent_world_runtime.governance.manifest import ModuleChange, ModuleChangeSet, manifest_hash
from agent_world_runtime.governance.patch import paths_overlap
from agent_world_runtime.governance.rules import first_overlap
from agent_world_runtime.governance.shadow import MAX_MANIFEST_BYTES, proposal_base, shadow_proposal
from agent_world_runtime.params import Toolchain
from tests.test_governance_lifecycle import Net
from tests.test_runtime_modules import const_module, deploy, manifest

V1 = const_module(msgspec.msgpack.encode({"new_state": b"v1"}))
V2 = const_module(msgspec.msgpack.encode({"new_state": b"v2"}))
H1, H2 = sha256(V1).hex(), sha256(V2).hex()


def net_with_artifacts() -> Net:
    net = Net()
    w = net.world
    w.begin_block(1, 1000)
    for wasm, version in ((V1, "1.0.0"), (V2, "2.0.0")):
        [published] = deploy(w, net.agents["bank"], wasm, msgspec.structs.replace(manifest("sysmod"), version=version))
        assert published.kind == "module.artifact_deployed", published.data
    w.end_block()
    return net


def with_changes(net: Net, *changes: ModuleChange):
    return msgspec.structs.replace(proposal_base(net.world._state), module_changes=ModuleChangeSet(changes=list(changes)))


def test_a_clean_report_changes_nothing_in_the_state():
    net = net_with_artifacts()
    state = net.world._state
    root = net.world.state_root()
    candidate = with_changes(net, ModuleChange(op="install", instance_id="sys", wasm_hash=H1, owner_agent_id="op1"),
                             ModuleChange(op="upgrade", instance_id="sys", wasm_hash=H2),
                             ModuleChange(op="deactivate", instance_id="sys"))
    report = shadow_proposal(state, None, candidate)
    assert report.errors == [] and report.changes == ["/module_changes"]
    assert report.candidate_manifest_hash == manifest_hash(candidate)
    assert shadow_proposal(state, None, candidate) == report
    assert net.world.state_root() == root and net.world.get_instance("sys") is None


def test_each_module_change_error_is_listed():
    net = net_with_artifacts()
    state = net.world._state
    candidate = with_changes(
        net,
        ModuleChange(op="install", instance_id="sys", wasm_hash=H1, owner_agent_id="ghost"),
        ModuleChange(op="install", instance_id="Bad Id", wasm_hash=H1, owner_agent_id="op1"),
        ModuleChange(op="install", instance_id="ok", wasm_hash=H1, owner_agent_id="op1", grant_caps=["agent.transfer"]),
        ModuleChange(op="install", instance_id="twice", wasm_hash=H1, owner_agent_id="op1"),
        ModuleChange(op="install", instance_id="twice", wasm_hash=H1, owner_agent_id="op1"),
        ModuleChange(op="upgrade", instance_id="twice", wasm_hash=H1),
        ModuleChange(op="upgrade", instance_id="missing", wasm_hash=H2),
        ModuleChange(op="deactivate", instance_id="missing"),
        ModuleChange(op="install", instance_id="far", wasm_hash=H1, owner_agent_id="op1", install_target="location:9999,0,0"),
    )
    errors = shadow_proposal(state, None, candidate).errors
    assert [e.split(":")[0] for e in errors] == [
        "module change 0 (install sys)", "module change 1 (install Bad Id)", "module change 2 (install ok)",
        "module change 4 (install twice)", "module change 5 (upgrade twice)", "module change 6 (upgrade missing)",
        "module change 7 (deactivate missing)", "module change 8 (install far)"]
    assert "'ghost' is not a registered agent" in errors[0]
    assert "cannot grant capability 'agent.transfer'" in errors[2]
    assert "instance 'twice' already exists" in errors[3]
    assert "already runs artifact" in errors[4]
    assert "outside the grid" in errors[7]


def test_upgrade_rules_are_lifecycles():
    net = net_with_artifacts()
    w = net.world
    other = const_module(msgspec.msgpack.encode({"new_state": b"o"}))
    w.begin_block(2, 2000)
    deploy(w, net.agents["op1"], other, manifest("othermod"))
    w.end_block()
    candidate = with_changes(net, ModuleChange(op="install", instance_id="sys", wasm_hash=H1, owner_agent_id="op1"),
                             ModuleChange(op="upgrade", instance_id="sys", wasm_hash=sha256(other).hex()))
    [error] = shadow_proposal(w._state, None, candidate).errors
    assert "upgrade rule 'same module id' failed" in error


def test_limits_and_parameters():
    net = net_with_artifacts()
    state = net.world._state
    many = with_changes(net, *[ModuleChange(op="deactivate", instance_id=f"i{n}") for n in range(MAX_MODULE_CHANGES + 1)])
    assert shadow_proposal(state, None, many).errors == [f"{MAX_MODULE_CHANGES + 1} module changes; the limit is 32"]
    base = proposal_base(state)
    huge = msgspec.structs.replace(base, params=msgspec.structs.replace(
        base.params, toolchains=[Toolchain(name="c", version="x" * MAX_MANIFEST_BYTES, compiler_sha256="ab" * 32)]))
    [error] = shadow_proposal(state, None, huge).errors
    assert "the limit is 65536" in error
    bad = msgspec.structs.replace(base, params=msgspec.structs.replace(base.params, fee_base=-1))
    assert shadow_proposal(state, None, bad).errors == ["world param fee_base must be an integer in [0, 2**62), got -1"]
    assert shadow_proposal(state, None, base).errors == ["the proposal changes nothing: the candidate equals the manifest in force"]


paths = st.lists(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map(lambda t: "/" + "/".join(t)),
                 max_size=6)


@given(paths, paths)
def test_property_first_overlap_matches_pairwise(mine, theirs):
    found = first_overlap(mine, theirs)
    expected = any(paths_overlap(a, b) for a in mine for b in theirs)
    assert (found is not None) == expected
    if found is not None:
        assert found[0] in mine and found[1] in theirs and paths_overlap(*found)
