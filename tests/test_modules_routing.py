"""Routing stages (pre_action, post_action, post_event, tick), '*' patterns and field filters,
install targets, and capabilities with policy decisions (docs/module-abi.md,
"Routing" and "Capabilities and policy")."""

from __future__ import annotations

import msgspec

from agent_world_runtime.actions import HarvestRadiation, InstallModuleFromArtifact, MoveAgent, TransferResource
from agent_world_runtime.crypto import sha256
from agent_world_runtime.modules.manifest import Subscription
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

EMIT = const_module(msgspec.msgpack.encode({"emits": [{"kind": "seen"}]}))


def instances(events) -> list[tuple[str, str]]:
    return [(e.kind, e.data["instance_id"]) for e in events if e.kind.startswith("module.")]


def test_pre_and_post_action_stages_see_the_action(world, alice):
    subs = [Subscription(kind="move_*", stage="pre_action"), Subscription(kind="move_agent", stage="post_action")]
    iid = deploy_and_install(world, alice, EMIT, manifest("watch", subs=subs))
    events = apply(world, alice.sign(MoveAgent(to=(2, 0, 0))))
    assert kinds(events) == ["module.called", "module.emitted", "domain.agent_moved", "module.called", "module.emitted"]
    assert events[0].data["trace_id"].endswith(f"/pre_action/{iid}")
    assert events[3].data["trace_id"].endswith(f"/post_action/{iid}")
    # a rejected action reaches post_action too (outcome "rejected"), never post_event
    events = apply(world, alice.sign(MoveAgent(to=(5000, 0, 0))))
    assert kinds(events) == ["module.called", "module.emitted", "domain.action_rejected", "module.called", "module.emitted"]
    assert kinds(apply(world, alice.sign(HarvestRadiation()))) == ["domain.radiation_harvested"]


def test_action_input_carries_the_action_fields(world, alice):
    from agent_world_runtime.modules import router

    seen = []
    original = router.ModuleRunner.call

    def spy(self, inst, stage, trace_id, *, event=None, action=None):
        seen.append((stage, action))
        return original(self, inst, stage, trace_id, event=event, action=action)

    router.ModuleRunner.call = spy
    try:
        deploy_and_install(world, alice, EMIT, manifest("spy", subs=[Subscription(kind="*", stage="post_action",
                                                                                  filters={"type": "move_agent"})]))
        apply(world, alice.sign(MoveAgent(to=(3, 0, 0))))
        apply(world, alice.sign(HarvestRadiation()))  # filtered out by type
    finally:
        router.ModuleRunner.call = original
    [(stage, action)] = seen
    assert stage == "post_action"
    assert action == {"type": "move_agent", "to": (3, 0, 0), "agent_id": "alice", "nonce": action["nonce"],
                      "outcome": "applied"}


def test_order_is_by_instance_id_and_patterns_and_filters_apply(world, alice, bob):
    subs = [Subscription(kind="domain.radiation_*", filters={"agent_id": "bob"})]
    deploy(world, alice, EMIT, manifest("echo", subs=subs))
    h = sha256(EMIT).hex()
    for iid in ("zeta", "alpha", "mid"):
        apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=h, instance_id=iid)))
    assert kinds(apply(world, alice.sign(HarvestRadiation()))) == ["domain.radiation_harvested"]
    events = apply(world, bob.sign(HarvestRadiation()))
    assert [i for k, i in instances(events) if k == "module.called"] == ["alpha", "mid", "zeta"]


def test_install_targets_narrow_routing(world, alice, bob):
    subs = [Subscription(kind="domain.radiation_harvested")]
    deploy(world, alice, EMIT, manifest("where", subs=subs))
    h = sha256(EMIT).hex()
    [a] = apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=h, instance_id="for-bob", install_target="agent:bob")))
    assert a.data["install_target"] == "agent:bob"
    apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=h, instance_id="at-5", install_target="location:5,0,0")))
    assert "invalid install_target" in rejection(apply(world, alice.sign(
        InstallModuleFromArtifact(wasm_hash=h, instance_id="x1", install_target="planet:mars"))))
    assert "names no registered agent" in rejection(apply(world, alice.sign(
        InstallModuleFromArtifact(wasm_hash=h, instance_id="x2", install_target="agent:nobody"))))
    assert "outside the grid" in rejection(apply(world, alice.sign(
        InstallModuleFromArtifact(wasm_hash=h, instance_id="x3", install_target="location:999999,0,0"))))
    assert instances(apply(world, alice.sign(HarvestRadiation()))) == []
    assert [i for k, i in instances(apply(world, bob.sign(HarvestRadiation()))) if k == "module.called"] == ["for-bob"]
    apply(world, alice.sign(MoveAgent(to=(5, 0, 0))))
    assert [i for k, i in instances(apply(world, alice.sign(HarvestRadiation()))) if k == "module.called"] == ["at-5"]


def test_tick_routing_is_per_instance(world, alice):
    deploy(world, alice, EMIT, manifest("ticker", subs=[Subscription(kind="tick", stage="tick")]))
    h = sha256(EMIT).hex()
    for iid in ("t2", "t1"):
        apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=h, instance_id=iid)))
    events = world.step_with_modules()
    assert [e.data["instance_id"] for e in events if e.kind == "module.called"] == ["t1", "t2"]


TRANSFER = {"kind": "transfer_resource", "cap_ref": "agent.transfer", "params": {"to": "bob", "kind": "electricity", "amount": 7}}


def transfer_module(**params):
    effect = {**TRANSFER, "params": {**TRANSFER["params"], **params}}
    return const_module(msgspec.msgpack.encode({"effects": [effect]}))


def payer_manifest(module_id: str):
    return msgspec.structs.replace(manifest(module_id, subs=[Subscription(kind="domain.radiation_harvested")],
                                            max_effects=1), required_caps=["agent.transfer"])


def test_granted_capability_applies_the_effect(world, alice, bob):
    wasm = transfer_module()
    deploy(world, alice, wasm, payer_manifest("payer"))
    apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=sha256(wasm).hex(), grant_caps=["agent.transfer"])))
    assert world.get_instance("payer@alice").granted_caps == ["agent.transfer"]
    bob_before = world.get_agent("bob").electricity
    harvest = bob.sign(HarvestRadiation())
    events = apply(world, harvest)
    assert kinds(events) == ["domain.radiation_harvested", "module.called", "governance.policy_decision_recorded",
                             "effect.applied"]
    decision, applied = events[2].data, events[3].data
    assert decision["allowed"] is True and decision["cap_ref"] == "agent.transfer"
    assert (applied["from"], applied["to"], applied["kind"], applied["amount"]) == ("alice", "bob", "electricity", 7)
    assert events[0].data["fee"] == world.action_fee(harvest)
    assert world.get_agent("bob").electricity == bob_before - world.action_fee(harvest) + 5 + 7


def test_ungranted_or_disallowed_effects_are_denied_and_recorded(world, alice, bob):
    wasm = transfer_module()
    deploy(world, alice, wasm, payer_manifest("payer"))
    apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=sha256(wasm).hex())))  # nothing granted
    bob_before = world.get_agent("bob").electricity
    harvest = bob.sign(HarvestRadiation())
    events = apply(world, harvest)
    assert kinds(events)[-1] == "governance.policy_decision_recorded"
    assert events[-1].data["allowed"] is False and "was not granted" in events[-1].data["reason"]
    assert world.get_agent("bob").electricity == bob_before - world.action_fee(harvest) + 5
    # over the world policy's per-effect ceiling
    big = transfer_module(amount=10_000)
    deploy(world, alice, big, msgspec.structs.replace(payer_manifest("bigpayer")))
    apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=sha256(big).hex(), grant_caps=["agent.transfer"])))
    events = apply(world, bob.sign(HarvestRadiation()))
    decisions = [e.data for e in events if e.kind == "governance.policy_decision_recorded"]
    assert any(d["instance_id"] == "bigpayer@alice" and not d["allowed"] and "policy: amount" in d["reason"]
               for d in decisions)
    assert "effect.applied" not in kinds(events)


def test_grants_must_be_required_and_caps_known(world, alice):
    wasm = const_module(b"\x80")
    deploy(world, alice, wasm, manifest("nocaps"))
    reason = rejection(apply(world, alice.sign(InstallModuleFromArtifact(wasm_hash=sha256(wasm).hex(),
                                                                         grant_caps=["agent.transfer"]))))
    assert "cannot grant capability 'agent.transfer'" in reason


def test_transfer_action_kind_routes_with_wildcard(world, alice, bob):
    deploy_and_install(world, alice, EMIT, manifest("all", subs=[Subscription(kind="*", stage="pre_action")]))
    events = apply(world, alice.sign(TransferResource(to="bob", kind="data", amount=1)))
    assert kinds(events)[:2] == ["module.called", "module.emitted"]
