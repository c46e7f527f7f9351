"""JSON Patch (RFC 6902) and JSON Pointer (RFC 6901) on the manifest (governance.patch): each
operation, each typed error, diff_manifest's round trip (hypothesis property), merges and their
conflicts; the parameter validators refuse what they must."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_world_runtime import world as world_module
from agent_world_runtime.governance import validate
from agent_world_runtime.governance.manifest import Manifest, ModuleChange, ModuleChangeSet
from agent_world_runtime.governance.patch import (
    MAX_PATCH_OPS,
    Conflict,
    PatchError,
    PatchErrorCode,
    apply_patch,
    diff_manifest,
    escape_token,
    manifest_json,
    merge_manifest_patches,
    merge_manifest_patches_with_conflicts,
    parse_pointer,
    propose_module_changes,
)
from agent_world_runtime.governance.records import PatchOp
from agent_world_runtime.modules.manifest import ModuleLimitsMax
from agent_world_runtime.params import GovernanceParams, StakingParams, Toolchain, WorldParams

BASE = Manifest(version=3, params=WorldParams())
HEX = "ab" * 32


def op(kind: str, path: str, value=None) -> PatchOp:
    return PatchOp(op=kind, path=path, value=value)


def code_of(manifest: Manifest, ops: list[PatchOp]) -> PatchErrorCode:
    with pytest.raises(PatchError) as info:
        apply_patch(manifest, ops)
    return info.value.code


def test_replace_add_remove_test_on_the_manifest():
    out = apply_patch(BASE, [op("test", "/params/fee_base", 1), op("replace", "/params/fee_base", 7),
                             op("replace", "/params/module_limits_max/max_gas", 5_000),
                             op("add", "/params/toolchains/-", {"name": "c", "version": "1", "compiler_sha256": HEX})])
    assert out.version == 3 and out.params.fee_base == 7 and out.params.module_limits_max.max_gas == 5_000
    assert out.params.toolchains == [Toolchain(name="c", version="1", compiler_sha256=HEX)]
    again = apply_patch(out, [op("add", "/params/toolchains/0", {"name": "rust", "version": "2", "compiler_sha256": HEX}),
                              op("remove", "/params/toolchains/1")])
    assert [t.name for t in again.params.toolchains] == ["rust"]
    assert BASE.params.fee_base == 1, "the input manifest is never changed"


def test_a_struct_value_is_taken_as_its_json_form():
    limits = ModuleLimitsMax(max_gas=9)
    assert apply_patch(BASE, [op("replace", "/params/module_limits_max", limits)]).params.module_limits_max == limits


def test_pointer_escapes_rfc6901():
    assert parse_pointer("") == []
    assert parse_pointer("/a~1b/c~0d/~01") == ["a/b", "c~d", "~1"]
    assert escape_token("a/b~c") == "a~1b~0c"
    with pytest.raises(PatchError) as info:
        parse_pointer("/a~2")
    assert info.value.code is PatchErrorCode.MALFORMED
    with pytest.raises(PatchError):
        parse_pointer("params")


@pytest.mark.parametrize("ops, code", [
    ([op("move", "/params/fee_base")], PatchErrorCode.MALFORMED),
    ([op("replace", "params/fee_base", 1)], PatchErrorCode.MALFORMED),
    ([op("replace", "/params/fee_bass", 1)], PatchErrorCode.UNKNOWN_PATH),
    ([op("add", "/params/fee_bass", 1)], PatchErrorCode.UNKNOWN_PATH),
    ([op("remove", "/params/nothing")], PatchErrorCode.UNKNOWN_PATH),
    ([op("replace", "/nothing/fee_base", 1)], PatchErrorCode.UNKNOWN_PATH),
    ([op("replace", "/params/toolchains/0", 1)], PatchErrorCode.UNKNOWN_PATH),
    ([op("replace", "/params/fee_base/x", 1)], PatchErrorCode.UNKNOWN_PATH),
    ([op("test", "/params/fee_base", 2)], PatchErrorCode.TEST_FAILED),
    ([op("test", "/params/fee_base", True)], PatchErrorCode.TEST_FAILED),
    ([op("replace", "/params/fee_base", -1)], PatchErrorCode.INVALID_VALUE),
    ([op("replace", "/params/fee_base", "1")], PatchErrorCode.INVALID_VALUE),
    ([op("replace", "/params/fee_base", True)], PatchErrorCode.INVALID_VALUE),
    ([op("remove", "/params/fee_base")], PatchErrorCode.INVALID_VALUE),
    ([op("replace", "/governance/quorum_percent", 101)], PatchErrorCode.INVALID_VALUE),
    ([op("replace", "/version", 9)], PatchErrorCode.FORBIDDEN_PATH),
    ([op("remove", "/version")], PatchErrorCode.FORBIDDEN_PATH),
    ([op("replace", "", {})], PatchErrorCode.FORBIDDEN_PATH),
    ([op("test", "/params/fee_base", 1)] * (MAX_PATCH_OPS + 1), PatchErrorCode.MALFORMED),
])
def test_typed_errors(ops, code):
    assert code_of(BASE, ops) is code


def test_a_failing_op_leaves_nothing_applied():
    with pytest.raises(PatchError):
        apply_patch(BASE, [op("replace", "/params/fee_base", 9), op("test", "/params/fee_base", 1)])
    assert BASE.params.fee_base == 1


def test_diff_is_minimal_and_ordered():
    target = msgspec.structs.replace(BASE, params=msgspec.structs.replace(
        BASE.params, fee_base=5, module_limits_max=ModuleLimitsMax(max_gas=1)), governance=GovernanceParams(max_pending=2))
    ops = diff_manifest(BASE, target)
    assert [(o.op, o.path, o.value) for o in ops] == [
        ("replace", "/governance/max_pending", 2),
        ("replace", "/params/fee_base", 5),
        ("replace", "/params/module_limits_max/max_gas", 1),
    ]
    assert diff_manifest(BASE, BASE) == []


def test_diff_of_lists_and_null_module_changes():
    tc = [Toolchain(name="c", version="1", compiler_sha256=HEX), Toolchain(name="rust", version="1", compiler_sha256=HEX)]
    a = msgspec.structs.replace(BASE, params=msgspec.structs.replace(BASE.params, toolchains=tc))
    changes = ModuleChangeSet(changes=[ModuleChange(op="deactivate", instance_id="x@y")])
    b = msgspec.structs.replace(BASE, module_changes=changes)
    ops = diff_manifest(a, b)
    assert [(o.op, o.path) for o in ops] == [("replace", "/module_changes"), ("remove", "/params/toolchains/1"),
                                             ("remove", "/params/toolchains/0")]
    assert apply_patch(a, ops) == b
    assert apply_patch(b, diff_manifest(b, a)) == a


ints = st.integers(min_value=0, max_value=(1 << 62) - 1)
small = st.integers(min_value=0, max_value=1_000_000)
world_params = st.builds(
    WorldParams, fee_base=ints, fee_per_kib=small, grid_size=small, proposal_fee=ints,
    module_limits_max=st.builds(ModuleLimitsMax, max_gas=small, max_emits=small),
    toolchains=st.lists(st.sampled_from([Toolchain(name="c", version="1", compiler_sha256=HEX),
                                         Toolchain(name="rust", version="2", compiler_sha256=HEX)]),
                        max_size=2, unique_by=lambda t: t.name))
change_sets = st.none() | st.builds(ModuleChangeSet, changes=st.lists(st.builds(
    ModuleChange, op=st.sampled_from(["install", "upgrade", "deactivate"]), instance_id=st.sampled_from(["a", "b~/c"]),
    wasm_hash=st.sampled_from(["", HEX]), grant_caps=st.lists(st.sampled_from(["agent.transfer"]), max_size=1)),
    max_size=3))
manifests = st.builds(Manifest, version=st.just(3), params=world_params,
                      staking=st.builds(StakingParams, min_bond=st.integers(1, 100), max_power_percent=st.integers(1, 100)),
                      governance=st.builds(GovernanceParams, quorum_percent=st.integers(0, 100),
                                           max_pending=st.integers(1, 1000)),
                      module_changes=change_sets)


@settings(max_examples=150, deadline=None)
@given(manifests, manifests)
def test_property_apply_of_diff_round_trips(a, b):
    ops = diff_manifest(a, b)
    assert apply_patch(a, ops) == b
    assert (ops == []) == (a == b)
    assert all(o.path != "/version" for o in ops)


def test_merge_of_disjoint_patches_and_agreeing_ones():
    p1 = [op("replace", "/params/fee_base", 4)]
    p2 = [op("replace", "/params/module_limits_max/max_gas", 3), op("replace", "/params/fee_base", 4)]
    p3 = [op("replace", "/governance/max_pending", 2)]
    merged = merge_manifest_patches(BASE, [p1, p2, p3])
    assert (merged.params.fee_base, merged.params.module_limits_max.max_gas, merged.governance.max_pending) == (4, 3, 2)
    assert merged.version == BASE.version
    assert merge_manifest_patches(BASE, []) == BASE


def test_merge_conflicts_first_wins():
    p1 = [op("replace", "/params/fee_base", 4)]
    p2 = [op("replace", "/params/fee_base", 5), op("replace", "/governance/max_pending", 2)]
    p3 = [op("replace", "/params/module_limits_max", {**manifest_json(BASE)["params"]["module_limits_max"], "max_gas": 1})]
    p4 = [op("replace", "/params/module_limits_max/max_gas", 2)]
    merged, conflicts = merge_manifest_patches_with_conflicts(BASE, [p1, p2, p3, p4])
    assert merged.params.fee_base == 4 and merged.governance.max_pending == BASE.governance.max_pending
    assert merged.params.module_limits_max.max_gas == 1
    assert conflicts == [
        Conflict(1, 0, "/params/fee_base", "patches 0 and 1 set '/params/fee_base' differently"),
        Conflict(3, 2, "/params/module_limits_max/max_gas",
                 "patches 2 and 3 set '/params/module_limits_max/max_gas' differently"),
    ]
    with pytest.raises(PatchError) as info:
        merge_manifest_patches(BASE, [p1, p2])
    assert info.value.code is PatchErrorCode.CONFLICT and "patch 1" in info.value.message


def test_merge_prefix_conflict_on_module_changes():
    one = propose_module_changes(ModuleChangeSet(changes=[ModuleChange(op="deactivate", instance_id="a")]))
    two = propose_module_changes(ModuleChangeSet(changes=[ModuleChange(op="deactivate", instance_id="b")]))
    merged, conflicts = merge_manifest_patches_with_conflicts(BASE, [one, two])
    assert merged.module_changes == ModuleChangeSet(changes=[ModuleChange(op="deactivate", instance_id="a")])
    assert [(c.patch_index, c.winner_index, c.path) for c in conflicts] == [(1, 0, "/module_changes")]


def test_merge_same_array_append_is_not_doubled():
    tc = {"name": "c", "version": "1", "compiler_sha256": HEX}
    merged = merge_manifest_patches(BASE, [[op("add", "/params/toolchains/-", tc)]] * 2)
    assert len(merged.params.toolchains) == 1


def test_propose_module_changes_is_one_replace():
    cs = ModuleChangeSet(changes=[ModuleChange(op="upgrade", instance_id="a", wasm_hash=HEX)])
    [only] = propose_module_changes(cs)
    assert (only.op, only.path) == ("replace", "/module_changes")
    assert apply_patch(BASE, [only]).module_changes == cs


@pytest.mark.parametrize("params", [
    WorldParams(fee_base=-1), WorldParams(module_limits_max=ModuleLimitsMax(max_mem_bytes=1 << 40)),
    WorldParams(toolchains=[Toolchain(name="go", version="1", compiler_sha256=HEX)]),
])
def test_invalid_world_params_are_refused_by_the_one_validator(params):
    assert validate.check_world_params(WorldParams()) == WorldParams()
    with pytest.raises(ValueError):
        validate.check_world_params(params)
    assert world_module.check_world_params is validate.check_world_params  # one mechanism, used by genesis too


def test_remove_of_an_optional_module_change_field_is_allowed():
    change = ModuleChange(op="install", instance_id="a", wasm_hash=HEX, owner_agent_id="o", grant_caps=["agent.transfer"])
    base = msgspec.structs.replace(BASE, module_changes=ModuleChangeSet(changes=[change]))
    out = apply_patch(base, [op("remove", "/module_changes/changes/0/grant_caps")])
    assert out.module_changes.changes[0] == msgspec.structs.replace(change, grant_caps=[])
    assert code_of(base, [op("remove", "/module_changes/changes/0/op")]) is PatchErrorCode.INVALID_VALUE
