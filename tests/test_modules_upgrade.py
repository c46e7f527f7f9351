"""UpgradeModuleFromArtifact (docs/module-abi.md, "Upgrades"): owner only, same module id, same
interface_version, compatible ABI (same kind), no export removed, subscriptions still covered;
each failed rule is a rejection naming it; a good upgrade keeps the instance's state."""

from __future__ import annotations

import msgspec
import pytest

from agent_world_runtime.actions import HarvestRadiation, UpgradeModuleFromArtifact
from agent_world_runtime.crypto import sha256
from agent_world_runtime.modules.lifecycle import subscription_covers
from agent_world_runtime.modules.manifest import Subscription
from agent_world_runtime.signer import AgentSigner
from tests.test_runtime_modules import (  # noqa: F401  (fixtures)
    alice,
    apply,
    bob,
    const_module,
    deploy,
    deploy_and_install,
    kinds,
    manifest,
    rejection,
    world,
)

V1 = const_module(msgspec.msgpack.encode({"new_state": b"v1"}))
V2 = const_module(msgspec.msgpack.encode({"new_state": b"v2"}))
SUBS = [Subscription(kind="domain.radiation_harvested", filters={"agent_id": "alice"})]


def v(version: str, **changes):
    m = msgspec.structs.replace(manifest("up", subs=SUBS), version=version)
    return msgspec.structs.replace(m, **changes)


def upgrade(world, who: AgentSigner, iid: str, wasm: bytes, activate: bool = True):
    return apply(world, who.sign(UpgradeModuleFromArtifact(instance_id=iid, wasm_hash=sha256(wasm).hex(), activate=activate)))


def test_upgrade_moves_the_instance_and_keeps_its_state(world, alice):
    iid = deploy_and_install(world, alice, V1, v("1.0.0"))
    apply(world, alice.sign(HarvestRadiation()))
    assert world.module_state(iid) == b"v1"
    deploy(world, alice, V2, v("2.0.0", subscriptions=[Subscription(kind="domain.*")]))
    [upgraded] = upgrade(world, alice, iid, V2)
    assert upgraded.kind == "module.upgraded"
    assert (upgraded.data["instance_id"], upgraded.data["from_version"], upgraded.data["to_version"]) == (iid, "1.0.0", "2.0.0")
    inst = world.get_instance(iid)
    assert (inst.version, inst.wasm_hash, inst.owner_agent_id) == ("2.0.0", sha256(V2).hex(), "alice")
    assert world.module_state(iid) == b"v1"  # state survives the upgrade
    apply(world, alice.sign(HarvestRadiation()))
    assert world.module_state(iid) == b"v2"  # the next call runs the new artifact


def test_upgrade_can_deactivate(world, alice):
    iid = deploy_and_install(world, alice, V1, v("1.0.0"))
    deploy(world, alice, V2, v("2.0.0"))
    upgrade(world, alice, iid, V2, activate=False)
    assert world.get_instance(iid).active is False
    assert kinds(apply(world, alice.sign(HarvestRadiation()))) == ["domain.radiation_harvested"]


@pytest.mark.parametrize(("changes", "rule"), [
    ({"interface_version": 2}, None),  # not even publishable: this runtime speaks 1
    ({"kind": "pure", "exports": ["reduce", "call"]}, "compatible ABI contract"),
    ({"exports": []}, None),  # not publishable: a reducer must list reduce
    ({"subscriptions": [Subscription(kind="domain.agent_moved")]}, "subscriptions still covered"),
    ({"subscriptions": [Subscription(kind="domain.radiation_harvested", filters={"agent_id": "bob"})]},
     "subscriptions still covered"),
    ({"subscriptions": [Subscription(kind="domain.radiation_harvested", stage="tick")]}, "subscriptions still covered"),
])
def test_incompatible_next_manifests_are_rejected(world, alice, changes, rule):
    iid = deploy_and_install(world, alice, V1, v("1.0.0", exports=["reduce", "extra"]))
    next_manifest = v("2.0.0", **changes)
    if "exports" not in changes:
        next_manifest = msgspec.structs.replace(next_manifest, exports=["reduce", "extra"])
    wasm = V2 if changes.get("kind") != "pure" else const_module(b"\x80", entry="call")
    published = deploy(world, alice, wasm, next_manifest)
    if rule is None:
        assert published[0].kind == "domain.action_rejected"
        return
    assert published[0].kind == "module.artifact_deployed", published[0].data
    reason = rejection(upgrade(world, alice, iid, wasm))
    assert f"upgrade rule '{rule}' failed" in reason
    assert world.get_instance(iid).version == "1.0.0"


def test_removing_an_export_is_rejected(world, alice):
    iid = deploy_and_install(world, alice, V1, v("1.0.0", exports=["reduce", "extra"]))
    deploy(world, alice, V2, v("2.0.0"))
    assert "upgrade rule 'no export removed' failed: the next manifest drops ['extra']" in rejection(upgrade(world, alice, iid, V2))


def test_owner_only_and_same_module(world, alice, bob):
    iid = deploy_and_install(world, alice, V1, v("1.0.0"))
    deploy(world, alice, V2, v("2.0.0"))
    assert "upgrade rule 'owner only' failed" in rejection(upgrade(world, bob, iid, V2))
    other = const_module(b"\x81\xa5emits\x90")
    deploy(world, bob, other, msgspec.structs.replace(v("3.0.0"), module_id="other"))
    assert "upgrade rule 'same module id' failed" in rejection(upgrade(world, alice, iid, other))
    assert "unknown instance" in rejection(upgrade(world, alice, "nope", V2))
    assert "unknown artifact" in rejection(apply(world, alice.sign(UpgradeModuleFromArtifact(instance_id=iid, wasm_hash="ab" * 32))))
    assert "already runs artifact" in rejection(upgrade(world, alice, iid, V1))


def test_subscription_covers():
    s = Subscription
    assert subscription_covers(s(kind="domain.*"), s(kind="domain.agent_moved"))
    assert subscription_covers(s(kind="domain.*"), s(kind="domain.agent_*"))
    assert subscription_covers(s(kind="x"), s(kind="x", filters={"a": "1"}))
    assert not subscription_covers(s(kind="x", filters={"a": "1"}), s(kind="x"))
    assert not subscription_covers(s(kind="domain.agent_moved"), s(kind="domain.*"))
    assert not subscription_covers(s(kind="x", stage="tick"), s(kind="x"))


def test_check_upgrade_interface_version_rule():
    from agent_world_runtime.modules.lifecycle import check_upgrade
    from agent_world_runtime.rules import Rejected

    with pytest.raises(Rejected, match="upgrade rule 'same interface_version' failed: 1 -> 2"):
        check_upgrade(v("1.0.0"), v("2.0.0", interface_version=2))
