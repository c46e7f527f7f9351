"""The governance lifecycle in a world (docs/governance.md): propose, shadow run, vote, tally at the
end of the voting period, apply (a new manifest version, module changes), roll back; expiry without
quorum, rejection, failure at application; every bad input a ``domain.action_rejected`` that leaves
the manifest and the proposals as they were."""

from __future__ import annotations

import msgspec
import pytest

from agent_world_runtime import World, compute_action_id
from agent_world_runtime.actions import (
    CreateValidator,
    HarvestRadiation,
    InstallModuleFromArtifact,
    ProposeManifestPatch,
    ProposeManifestUpdate,
    ProposeRollback,
    VoteProposal,
    validator_key_proof,
)
from agent_world_runtime.crypto import SigningKey, sha256
from agent_world_runtime.governance import rules as gov
from agent_world_runtime.governance.manifest import Manifest, ModuleChange, ModuleChangeSet, manifest_hash
from agent_world_runtime.governance.patch import propose_module_changes
from agent_world_runtime.governance.records import PatchOp
from agent_world_runtime.params import GovernanceParams, WorldParams
from agent_world_runtime.signer import AgentSigner
from tests.test_runtime_modules import const_module, deploy, manifest

CHAIN = "gov-chain"
#: fee_per_kib=0: an action costs fee_base plus its kind's surcharge (a proposal: proposal_fee).
PARAMS = WorldParams(fee_base=1, fee_per_kib=0, harvest_interval=0, proposal_fee=50)
VIDS = {"v1": "a1" * 32, "v2": "b2" * 32, "v3": "c3" * 32}
STAKES = {VIDS["v1"]: 40, VIDS["v2"]: 30, VIDS["v3"]: 30}


def signer(name: str) -> AgentSigner:
    return AgentSigner.from_seed(name, sha256(name.encode()), CHAIN)


class Net:
    """A world with genesis agents ``bank``, ``op1``..``op3`` (operators of v1..v3, powers 40/30/30)."""

    def __init__(self, **gov_params) -> None:
        self.agents = {n: signer(n) for n in ("bank", "op1", "op2", "op3")}
        self.world = World.from_genesis(
            CHAIN, PARAMS, agents=[s.genesis_agent(10**9, 10**9) for s in self.agents.values()],
            validators=STAKES, validator_operators={VIDS[f"v{i}"]: f"op{i}" for i in (1, 2, 3)},
            governance_params=GovernanceParams(voting_period_heights=3, **gov_params))

    def block(self, *actions: tuple[str, object]) -> tuple[list, list]:
        """Run the next block with ``(agent, action)`` pairs; return (each action's events, end events)."""
        w = self.world
        w.begin_block(w.height + 1, 1000 * (w.height + 1))
        per_action = []
        for who, action in actions:
            signed = self.agents[who].sign(action)
            per_action.append(w.apply_action(signed, compute_action_id(signed)))
        seen = {e.seq for events in per_action for e in events}
        return per_action, [e for e in w.end_block().events if e.seq not in seen]

    def vote(self, pid: int, *votes: tuple[str, str]) -> tuple[list, list]:
        return self.block(*[(f"op{v[1]}", VoteProposal(proposal_id=pid, validator_id=VIDS[v], option=o)) for v, o in votes])


def kinds(events) -> list[str]:
    return [e.kind for e in events]


def rejection(events) -> str:
    assert kinds(events) == ["domain.action_rejected"], events
    return events[0].data["reason"]


def patch(*ops: PatchOp, title: str = "") -> ProposeManifestPatch:
    return ProposeManifestPatch(ops=list(ops), title=title)


FEE_AND_LIMITS = patch(PatchOp(op="replace", path="/params/fee_base", value=3),
                       PatchOp(op="replace", path="/params/module_limits_max/max_gas", value=5_000), title="cheaper gas")


def pass_proposal(net: Net, pid: int) -> list:
    """Votes yes by v1 and v2 at the next block, then runs blocks until the proposal is decided."""
    net.vote(pid, ("v1", "yes"), ("v2", "yes"))
    end = gov.proposal(net.world._state, pid).voting_end
    events: list = []
    while net.world.height < end:
        events = net.block()[1]
    return events


def test_propose_vote_apply_changes_params_and_the_fees_charged_afterwards():
    net = Net()
    [[harvest]], _ = net.block(("bank", HarvestRadiation()))
    assert harvest.data["fee"] == 1
    [submitted], _ = net.block(("op3", FEE_AND_LIMITS))
    assert kinds(submitted) == ["governance.proposal_submitted", "governance.shadow_report"]
    data = submitted[0].data
    assert (data["proposal_id"], data["kind"], data["voting_end"], data["fee"]) == (1, "patch", 5, 51)
    assert data["changes"] == ["/params/fee_base", "/params/module_limits_max/max_gas"]
    assert submitted[1].data["errors"] == [] and len(submitted[1].data["candidate_manifest_hash"]) == 32
    [v1, v2], _ = net.vote(1, ("v1", "yes"), ("v2", "no"))
    assert v1[0].kind == "governance.vote_cast" and (v1[0].data["power"], v2[0].data["option"]) == (40, "no")
    _, ends = net.block(("op3", VoteProposal(proposal_id=1, validator_id=VIDS["v3"], option="yes")))
    assert ends == [] and net.world.manifest.version == 1, "nothing happens before the voting period ends"
    _, ends = net.block()
    assert kinds(ends) == ["governance.applied", "manifest.updated"]
    manifest = net.world.manifest
    assert (manifest.version, manifest.params.fee_base, manifest.params.module_limits_max.max_gas) == (2, 3, 5_000)
    assert ends[0].data == {"proposal_id": 1, "kind": "patch", "version": 2, "manifest_hash": manifest_hash(manifest),
                            "module_changes": [], "tally": {"yes": 70, "no": 30, "abstain": 0, "total": 100}}
    record = gov.proposal(net.world._state, 1)
    assert (record.status, record.decided_at, record.votes[VIDS["v2"]]) == ("applied", 5, "no")
    assert [(v.version, v.proposal_id, v.applied_at) for v in gov.manifest_versions(net.world._state)] == [(1, 0, 0), (2, 1, 5)]
    [[harvest]], _ = net.block(("bank", HarvestRadiation()))
    assert harvest.data["fee"] == 3
    [[late]], _ = net.vote(1, ("v3", "no"))
    assert "proposal 1 is applied" in rejection([late])


def test_rollback_restores_an_earlier_version():
    net = Net()
    net.block(("op3", FEE_AND_LIMITS))
    pass_proposal(net, 1)
    assert net.world.manifest.params.fee_base == 3
    [submitted], _ = net.block(("bank", ProposeRollback(version=1, title="undo")))
    assert submitted[0].data["rollback_to"] == 1 and submitted[0].data["kind"] == "rollback"
    ends = pass_proposal(net, 2)
    applied = next(e for e in ends if e.kind == "governance.applied")
    assert (applied.data["rolled_back_to"], applied.data["version"]) == (1, 3)
    first = gov.manifest_versions(net.world._state)[0].manifest
    assert net.world.manifest == msgspec.structs.replace(first, version=3)
    [[harvest]], _ = net.block(("bank", HarvestRadiation()))
    assert harvest.data["fee"] == 1


def test_whole_manifest_update():
    net = Net()
    wanted = msgspec.structs.replace(net.world.manifest, version=99,
                                     governance=GovernanceParams(voting_period_heights=7, max_pending=4))
    [submitted], _ = net.block(("bank", ProposeManifestUpdate(manifest=wanted)))
    assert submitted[0].data["changes"] == ["/governance/max_pending", "/governance/voting_period_heights"]
    pass_proposal(net, 1)
    assert net.world.manifest == msgspec.structs.replace(wanted, version=2)


def test_no_quorum_expires_and_a_no_majority_rejects():
    net = Net()
    net.block(("bank", FEE_AND_LIMITS))
    net.vote(1, ("v3", "yes"))  # 30 of 100 < 34%
    net.block()
    _, ends = net.block()
    assert kinds(ends) == ["governance.proposal_expired"]
    assert ends[0].data["tally"] == {"yes": 30, "no": 0, "abstain": 0, "total": 100}
    assert gov.proposal(net.world._state, 1).status == "expired" and net.world.manifest.version == 1

    net.block(("bank", FEE_AND_LIMITS))
    net.vote(2, ("v1", "no"), ("v2", "yes"), ("v3", "abstain"))  # yes 30 of yes+no 70: not over 50%
    net.block()
    _, ends = net.block()
    assert kinds(ends) == ["governance.proposal_rejected"]
    assert net.world.manifest.version == 1 and net.world.manifest.params.fee_base == 1


def test_votes_in_the_last_block_of_the_period_count():
    net = Net()
    [submitted], _ = net.block(("bank", FEE_AND_LIMITS))
    assert submitted[0].data["voting_end"] == 4
    net.block()
    net.block()
    _, ends = net.vote(1, ("v1", "yes"), ("v3", "yes"))
    assert net.world.height == 4 and kinds(ends) == ["governance.applied", "manifest.updated"]


def test_all_abstain_reaches_quorum_but_does_not_pass():
    net = Net()
    net.block(("bank", FEE_AND_LIMITS))
    net.vote(1, ("v1", "abstain"), ("v2", "abstain"))
    net.block()
    assert kinds(net.block()[1]) == ["governance.proposal_rejected"]


def test_two_disjoint_proposals_both_apply_in_the_same_block():
    net = Net()
    net.block(("bank", patch(PatchOp(op="replace", path="/params/fee_base", value=2))),
              ("op1", patch(PatchOp(op="replace", path="/governance/max_pending", value=5))))
    net.vote(1, ("v1", "yes"), ("v2", "yes"))
    net.vote(2, ("v1", "yes"), ("v3", "yes"))
    _, ends = net.block()
    assert kinds(ends) == ["governance.applied", "manifest.updated"] * 2
    m = net.world.manifest
    assert (m.version, m.params.fee_base, m.governance.max_pending) == (3, 2, 5), "the second keeps the first's change"


def setup_bad_inputs() -> Net:
    net = Net(max_pending=2)
    [ok], _ = net.block(("bank", FEE_AND_LIMITS))
    assert ok[0].kind == "governance.proposal_submitted"
    return net


BAD_PROPOSALS = [
    (patch(PatchOp(op="move", path="/params/fee_base")), "MALFORMED: unknown operation 'move'"),
    (patch(PatchOp(op="replace", path="/params/fee_bass", value=1)), "UNKNOWN_PATH"),
    (patch(PatchOp(op="add", path="/params/new_rule", value=1)), "UNKNOWN_PATH"),
    (patch(PatchOp(op="replace", path="/version", value=7)), "FORBIDDEN_PATH"),
    (patch(PatchOp(op="test", path="/params/harvest_amount", value=6)), "TEST_FAILED"),
    (patch(PatchOp(op="replace", path="/governance/quorum_percent", value=101)), "INVALID_VALUE"),
    (patch(PatchOp(op="replace", path="/params/grid_size", value=1000)), "the proposal changes nothing"),
    (patch(PatchOp(op="replace", path="/params/module_limits_max", value={
        "max_mem_bytes": 1, "max_gas": 1, "max_call_rate": 1, "max_output_bytes": 1, "max_effects": 1, "max_emits": 1})),
     "proposal 1 (voting until height 4) already changes '/params/module_limits_max/max_gas'"),
    (patch(PatchOp(op="replace", path="/params/fee_base", value=9)), "proposal 1 (voting until height 4) already changes"),
    (patch(PatchOp(op="replace", path="/params/grid_size", value=5), title="x" * 201), "at most 200 characters"),
    (ProposeManifestUpdate(manifest=Manifest(version=1, params=msgspec.structs.replace(PARAMS, fee_base=-1))),
     "shadow run found 1 error(s): world param fee_base must be an integer in [0, 2**62), got -1"),
    (ProposeRollback(version=1), "no earlier manifest version 1"),
    (ProposeRollback(version=5), "no earlier manifest version 5"),
    (ProposeManifestPatch(ops=propose_module_changes(ModuleChangeSet(changes=[
        ModuleChange(op="install", instance_id="sys", wasm_hash="00" * 32, owner_agent_id="op1"),
        ModuleChange(op="upgrade", instance_id="nothing", wasm_hash="00" * 32),
        ModuleChange(op="explode", instance_id="sys")]))),
     "shadow run found 3 error(s): module change 0 (install sys): unknown artifact"),
]


@pytest.mark.parametrize("action, reason", BAD_PROPOSALS)
def test_bad_proposals_are_rejected_without_any_change(action, reason):
    net = setup_bad_inputs()
    before, before_props = net.world.manifest, net.world.records("proposal")
    [events], _ = net.block(("op2", action))
    assert reason in rejection(events)
    assert events[0].data["fee"] == 51, "the proposal fee is kept, as any rejected action's fee"
    assert net.world.manifest == before and net.world.records("proposal") == before_props


def test_too_many_pending():
    net = setup_bad_inputs()
    [ok, refused], _ = net.block(("bank", patch(PatchOp(op="replace", path="/params/grid_size", value=5))),
                                 ("bank", patch(PatchOp(op="replace", path="/params/harvest_amount", value=6))))
    assert ok[0].kind == "governance.proposal_submitted"
    assert "2 proposals are voting (ids [1, 2]); at most 2 may be open at once" in rejection(refused)
    assert len(net.world.records("proposal")) == 2


def outsider_validator(net: Net) -> str:
    key = SigningKey(b"\x77" * 32)
    [created], _ = net.block(("op1", CreateValidator(validator_key=key.public_key, bond=10,
                                                     proof=validator_key_proof(key, CHAIN, "op1"))))
    assert created[0].kind == "staking.validator_created", created
    return key.public_key.hex()


def test_bad_votes_are_rejected():
    net = setup_bad_inputs()
    outsider = outsider_validator(net)
    cases = [
        ("bank", VoteProposal(proposal_id=1, validator_id=VIDS["v1"], option="yes"), "only the operator 'op1'"),
        ("op2", VoteProposal(proposal_id=1, validator_id=VIDS["v1"], option="yes"), "only the operator 'op1'"),
        ("op1", VoteProposal(proposal_id=1, validator_id=outsider, option="yes"), "is not in the validator set in force"),
        ("op1", VoteProposal(proposal_id=1, validator_id="dd" * 32, option="yes"), "no validator"),
        ("op1", VoteProposal(proposal_id=7, validator_id=VIDS["v1"], option="yes"), "no proposal 7"),
        ("op1", VoteProposal(proposal_id=1, validator_id=VIDS["v1"], option="maybe"), "is not one of ['yes', 'no', 'abstain']"),
    ]
    results, _ = net.block(*[(who, action) for who, action, _ in cases])
    for events, (_, _, reason) in zip(results, cases, strict=True):
        assert reason in rejection(events)
    assert gov.proposal(net.world._state, 1).votes == {}
    [first, second], _ = net.block(("op1", VoteProposal(proposal_id=1, validator_id=VIDS["v1"], option="yes")),
                                   ("op1", VoteProposal(proposal_id=1, validator_id=VIDS["v1"], option="no")))
    assert first[0].kind == "governance.vote_cast"
    assert "already voted 'yes' on proposal 1" in rejection(second)
    record = gov.proposal(net.world._state, 1)
    assert record.votes == {VIDS["v1"]: "yes"}
    assert (record.status, record.tally["yes"], record.tally["no"]) == ("applied", 40, 0), "one vote counted, once"


def module_net() -> tuple[Net, str]:
    net = Net()
    wasm = const_module(msgspec.msgpack.encode({"new_state": b"v1"}))
    w = net.world
    w.begin_block(w.height + 1, 1000)
    [published] = deploy(w, net.agents["bank"], wasm, manifest("sysmod"))
    assert published.kind == "module.artifact_deployed", published.data
    w.end_block()
    return net, sha256(wasm).hex()


def test_module_changes_install_then_deactivate_with_governance_authority():
    net, wasm_hash = module_net()
    install = ModuleChangeSet(changes=[ModuleChange(op="install", instance_id="sys@gov", wasm_hash=wasm_hash,
                                                    owner_agent_id="op2")])
    [submitted], _ = net.block(("op1", ProposeManifestPatch(ops=propose_module_changes(install))))
    assert submitted[0].data["changes"] == ["/module_changes"]
    ends = pass_proposal(net, 1)
    assert kinds(ends) == ["governance.applied", "manifest.updated", "module.installed"]
    assert ends[0].data["module_changes"] == [{"op": "install", "instance_id": "sys@gov", "wasm_hash": wasm_hash,
                                               "owner_agent_id": "op2"}]
    assert ends[2].data["proposal_id"] == 1 and ends[2].data["authority"] == "governance"
    inst = net.world.get_instance("sys@gov")
    assert (inst.owner_agent_id, inst.active, net.world.manifest.module_changes) == ("op2", True, install)
    # the next proposal is written against the manifest without the changes already run
    deactivate = ModuleChangeSet(changes=[ModuleChange(op="deactivate", instance_id="sys@gov")])
    net.block(("op1", ProposeManifestPatch(ops=propose_module_changes(deactivate))))
    assert kinds(pass_proposal(net, 2)) == ["governance.applied", "manifest.updated", "module.activation_changed"]
    assert net.world.get_instance("sys@gov").active is False
    [again], _ = net.block(("op1", ProposeManifestPatch(ops=propose_module_changes(deactivate))))
    assert "module change 0 (deactivate sys@gov): instance 'sys@gov' is already inactive" in rejection(again)
    # a parameter change afterwards runs no module change
    net.block(("op1", patch(PatchOp(op="replace", path="/params/fee_base", value=2))))
    ends = pass_proposal(net, 3)
    assert kinds(ends) == ["governance.applied", "manifest.updated"] and net.world.manifest.module_changes is None


def test_a_passed_proposal_that_no_longer_applies_fails():
    net, wasm_hash = module_net()
    install = ModuleChangeSet(changes=[ModuleChange(op="install", instance_id="taken", wasm_hash=wasm_hash,
                                                    owner_agent_id="op2")])
    net.block(("op1", ProposeManifestPatch(ops=propose_module_changes(install))))
    [[installed]], _ = net.block(("bank", InstallModuleFromArtifact(wasm_hash=wasm_hash, instance_id="taken")))
    assert installed.kind == "module.installed"
    net.vote(1, ("v1", "yes"), ("v2", "yes"))
    _, ends = net.block()
    assert kinds(ends) == ["governance.proposal_failed"]
    assert "instance 'taken' already exists" in ends[0].data["errors"][0]
    assert gov.proposal(net.world._state, 1).status == "failed"
    assert net.world.manifest.version == 1 and net.world.get_instance("taken").owner_agent_id == "bank"


def run_script() -> tuple[list[bytes], bytes]:
    net = Net()
    roots = []
    net.block(("bank", FEE_AND_LIMITS))
    net.vote(1, ("v1", "yes"), ("v2", "yes"))
    for _ in range(3):
        net.block()
        roots.append(net.world.state_root())
    return roots, net.world.create_snapshot()


def test_deterministic_roots_and_snapshot_round_trip():
    (roots, snap), (roots2, snap2) = run_script(), run_script()
    assert roots == roots2 and snap == snap2
    restored = World.restore_snapshot(snap)
    assert restored.state_root() == roots[-1]
    assert restored.manifest.version == 2 and [p.status for p in gov.proposals(restored._state)] == ["applied"]
