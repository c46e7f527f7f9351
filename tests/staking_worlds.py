"""A world with staking and governance records for the API and CLI tests of the staking and
governance routes, and an in-process stand-in for a node that serves it through the real API app.

Everything staking is made by real actions in real blocks. ``add_governance`` writes proposals
and a second manifest version into the state directly, in the shapes of
``governance/records.py``, so the read tests control every field (a voting and a decided
proposal, a diff against a base version); ``test_api_staking`` also drives the real governance
rules through proposals and votes."""

from __future__ import annotations

import msgspec

from agent_world_node.api import action_outcome_document, create_app
from agent_world_node.replica import AdmissionResult
from agent_world_node.schema import AdmissionCode, AdmissionStatus
from agent_world_runtime import World, compute_action_id
from agent_world_runtime.actions import Bond, CreateValidator, SignedAction, Unbond, validator_key_proof
from agent_world_runtime.codec import to_builtins
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.governance.manifest import Manifest, manifest_hash
from agent_world_runtime.governance.records import ManifestVersionRecord, PatchOp, ProposalRecord, ShadowReport
from agent_world_runtime.params import GovernanceParams, WorldParams
from agent_world_runtime.signer import AgentSigner
from agent_world_runtime.staking.records import ValidatorRecord

from .worlds import bank_signer, create, genesis_world

CHAIN = "staking-api"
EPOCH = 4
V1_KEY = SigningKey(b"\x01" * 32)  # genesis validator, operated by the bank
V2_KEY = SigningKey(b"\x02" * 32)  # created by agent "op" at height 2
V3_KEY = SigningKey(b"\x03" * 32)  # a jailed candidate (written directly)
V1, V2, V3 = (k.public_key.hex() for k in (V1_KEY, V2_KEY, V3_KEY))
OP_SEED = b"\x0b" * 32


def op_signer(chain_id: str = CHAIN) -> AgentSigner:
    return AgentSigner.from_seed("op", OP_SEED, chain_id)


def run_block(world: World, actions: list[SignedAction]) -> list:
    world.begin_block(world.height + 1, 1_000 * (world.height + 1))
    events = []
    for signed in actions:
        events.extend(world.apply_action(signed, compute_action_id(signed)))
    world.end_block()
    return events


def _rejections(events: list) -> list[str]:
    return [e.data["reason"] for e in events if e.kind == "domain.action_rejected"]


def staking_world(*, height: int = 8, governance: GovernanceParams | None = None) -> World:
    """Heights 1-2 create agent ``op``, its validator V2 (bond 5000), the bank's delegation of 200
    to it and op's unbonding of 100 (released at the end of epoch 2); blocks follow up to
    ``height`` (8: epoch 2, whose set holds V1 and V2)."""
    world = genesis_world(CHAIN, WorldParams(), validators={V1: 1000}, validator_operators={V1: "bank"},
                          validator_names={V1: "genesis-one"}, epoch_length=EPOCH, governance_params=governance)
    op = op_signer()
    world.begin_block(1, 1_000)
    assert not _rejections(create(world, op, electricity=100_000))
    world.end_block()
    bank = bank_signer(world)
    events = run_block(world, [
        op.sign(CreateValidator(validator_key=V2_KEY.public_key, bond=5000,
                                proof=validator_key_proof(V2_KEY, CHAIN, "op"), name="second")),
        bank.sign(Bond(validator_id=V2, amount=200)),
        op.sign(Unbond(validator_id=V2, amount=100)),
    ])
    assert not _rejections(events), _rejections(events)
    while world.height < height:
        run_block(world, [])
    return world


def add_governance(world: World) -> None:
    """Write manifest version 2 (fee_base 2, applied at height 5 by proposal 1), proposal 1
    (applied) and proposal 2 (voting: fee_base 2 -> 7 and max_pending 16 -> 20; V1 voted yes, V2
    no) into the state."""
    state = world._state  # test-only: the governance rules do not write these yet
    v1 = world.manifest
    v2 = Manifest(version=2, params=msgspec.structs.replace(v1.params, fee_base=2), staking=v1.staking,
                  governance=v1.governance)
    state.put_record("manifest_version", "2", ManifestVersionRecord(version=2, manifest=v2, applied_at=5, proposal_id=1))
    state.set_manifest(v2)
    state.put_record("proposal", "1", ProposalRecord(
        proposal_id=1, proposer="op", kind="patch", base_version=1, candidate=v2,
        shadow=ShadowReport(manifest_hash(v2), ["/params/fee_base"], []), submitted_at=2, voting_end=5,
        status="applied", title="raise the base fee", ops=[PatchOp("replace", "/params/fee_base", 2)],
        votes={V1: "yes"}, decided_at=5, tally={"yes": 1000, "no": 0, "abstain": 0, "total": 1000}))
    candidate = Manifest(version=3, params=msgspec.structs.replace(v2.params, fee_base=7), staking=v2.staking,
                         governance=msgspec.structs.replace(v2.governance, max_pending=20))
    state.put_record("proposal", "2", ProposalRecord(
        proposal_id=2, proposer="bank", kind="update", base_version=2, candidate=candidate,
        shadow=ShadowReport(manifest_hash(candidate), ["/governance/max_pending", "/params/fee_base"], []),
        submitted_at=7, voting_end=107, title="fees and pending", votes={V1: "yes", V2: "no"}))


def add_jailed(world: World) -> None:
    """A jailed candidate V3 (slashed 50, jailed until height 100)."""
    world._state.put_record("validator", V3, ValidatorRecord(
        validator_id=V3, operator="op", name="jailed", bonded=950, bonds={"op": 950}, created_at=3, jailed=True,
        jailed_until=100, slashed=50, jail_reason="double_sign"))


def full_world() -> World:
    world = staking_world()
    add_governance(world)
    add_jailed(world)
    return world


class WorldNode:
    """What ``api.create_app`` needs of a node, over a bare World: reads see ``world``; each
    admitted action runs at once in a block of its own (recorded in ``posted``, its events in
    ``events``), so CLI tests see the world rules' verdict."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.posted: list[SignedAction] = []
        self.events: list = []
        self.heights: dict[bytes, int] = {}

    @property
    def execution_height(self) -> int:
        return self.world.height

    @property
    def height(self) -> int:
        return self.world.height

    def busy(self) -> AdmissionResult | None:
        return None

    def admit(self, signed: SignedAction) -> AdmissionResult:
        action_id = compute_action_id(signed)
        refusal = self.world.check_action(signed)
        if refusal is not None:
            return AdmissionResult(AdmissionStatus.REJECTED, action_id, code=AdmissionCode.from_refusal(refusal.code),
                                   reason=refusal.message)
        self.posted.append(signed)
        self.events.extend(run_block(self.world, [signed]))
        self.heights[action_id] = self.world.height
        return AdmissionResult(AdmissionStatus.ACCEPTED, action_id)

    def action_json(self, action_id: bytes):
        height = self.heights.get(action_id)
        return None if height is None else action_outcome_document(self.world, action_id, height)

    def rejections(self) -> list[str]:
        return _rejections(self.events)

    def status(self) -> dict:
        return {"chain_id": self.world.chain_id, "height": self.world.height}

    def agent_json(self, agent_id: str) -> dict | None:
        agent = self.world.get_agent(agent_id)
        return to_builtins(agent) if agent is not None else None

    def events_json(self, from_seq: int, limit: int, kind: str | None) -> list[dict]:
        return [to_builtins(e) for e in self.world.events(from_seq, limit, kind)]


def app_for(world: World):
    node = WorldNode(world)
    return node, create_app(node)  # type: ignore[arg-type]  # a stand-in, not a full NodeView
