"""Admission refusals carry a typed code set by the rule that failed, never guessed from the text.

The agent ids below contain the words a substring search over the message would match ("nonce",
"signature", "chain id", "unknown agent", "fee"), so a code derived from the text would come out
wrong for them. Problems that admission no longer decides (a bad or taken id in ``create_agent``, a
negative nonce) are covered at the end: static problems for the client API, world-rule rejections
(which pay the fee) in a block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from agent_world_runtime import World, compute_action_id
from agent_world_runtime.actions import (
    AttestBuild,
    CreateAgent,
    HarvestRadiation,
    SignedAction,
    TransferResource,
    sign_action,
    static_action_problem,
)
from agent_world_runtime.admission import Refusal, RefusalCode, admission_refusal
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.params import WorldParams
from agent_world_runtime.signer import AgentSigner

CHAIN = "test-chain"
PARAMS = WorldParams(move_cost_per_step=2, harvest_amount=5, grid_size=5)

#: Genesis agents of every world below: key seed and electricity. "insufficient-fee" cannot pay
#: any fee (every fee is at least fee_base + 1 for the payload); "fee-ok" can pay exactly one small one.
GENESIS = {
    "nonce-bot": (1, 100), "already-registered": (2, 100), "chain-id-agent": (3, 100), "bad-signature": (4, 100),
    "agent-id": (5, 100), "insufficient-fee": (6, 1), "fee-ok": (7, 2),
}


VALIDATOR = SigningKey(b"\x99" * 32)


def key(seed: int) -> SigningKey:
    return SigningKey(bytes([seed]) * 32)


def signer(agent_id: str, seed: int, chain_id: str = CHAIN) -> AgentSigner:
    return AgentSigner(agent_id, key(seed), chain_id)


def known(agent_id: str) -> AgentSigner:
    """A genesis agent's signer (no nonce used yet)."""
    return AgentSigner(agent_id, key(GENESIS[agent_id][0]), CHAIN)


def create_with_nonce(sponsor: str, new_id: str, nonce: int, public_key: bytes = key(62).public_key) -> SignedAction:
    return sign_action(key(GENESIS[sponsor][0]), CHAIN, sponsor, nonce, CreateAgent(agent_id=new_id, public_key=public_key))


def forged_create(sponsor: str) -> SignedAction:
    """A CreateAgent signed for ``sponsor`` with a key that is not its own."""
    return sign_action(key(70), CHAIN, sponsor, 1, CreateAgent(agent_id="new-agent", public_key=key(71).public_key))


@dataclass(frozen=True)
class Case:
    name: str
    action: Callable[[], SignedAction]
    code: RefusalCode
    #: Fragments the message must contain: what was wrong, and (where the text gives one) the fix.
    says: tuple[str, ...]


CASES = [
    # WRONG_CHAIN: fix "sign for this chain"
    Case("wrong chain, known agent 'nonce-bot'",
         lambda: signer("nonce-bot", 1, "other-chain").sign(HarvestRadiation(), nonce=9),
         RefusalCode.WRONG_CHAIN, ("wrong chain id 'other-chain'", "this world is 'test-chain'", "sign for this chain")),
    Case("wrong chain, unknown 'unknown-agent-x' creates an agent",
         lambda: signer("unknown-agent-x", 40, "other-chain").create_agent(signer("y", 41)),
         RefusalCode.WRONG_CHAIN, ("wrong chain id", "sign for this chain")),
    Case("wrong chain, 'insufficient-fee' with a forged key and nonce -1 (other checks would fail too)",
         lambda: sign_action(key(41), "nonce-chain", "insufficient-fee", -1, HarvestRadiation()),
         RefusalCode.WRONG_CHAIN, ("wrong chain id 'nonce-chain'", "sign for this chain")),
    # BAD_SIGNATURE: fix "sign the action body with the key the agent was created with"
    Case("forged create_agent for 'already-registered'",
         lambda: forged_create("already-registered"),
         RefusalCode.BAD_SIGNATURE, ("bad signature for agent 'already-registered'", "key the agent was created with")),
    Case("forged harvest for 'nonce-bot'",
         lambda: sign_action(key(49), CHAIN, "nonce-bot", 5, HarvestRadiation()),
         RefusalCode.BAD_SIGNATURE, ("bad signature for agent 'nonce-bot'",)),
    Case("forged harvest for 'chain-id-agent' with a replayed nonce",
         lambda: sign_action(key(50), CHAIN, "chain-id-agent", 0, HarvestRadiation()),
         RefusalCode.BAD_SIGNATURE, ("bad signature for agent 'chain-id-agent'",)),
    Case("forged harvest for poor 'insufficient-fee'",
         lambda: sign_action(key(51), CHAIN, "insufficient-fee", 1, HarvestRadiation()),
         RefusalCode.BAD_SIGNATURE, ("bad signature for agent 'insufficient-fee'",)),
    # UNKNOWN_AGENT: fix "an existing agent must create it first with create_agent"
    Case("unknown 'signature-bot' harvests",
         lambda: signer("signature-bot", 53).sign(HarvestRadiation()),
         RefusalCode.UNKNOWN_AGENT, ("unknown agent 'signature-bot'", "must create it first with create_agent")),
    Case("unknown 'nonce-replayed' harvests with nonce 0",
         lambda: signer("nonce-replayed", 54).sign(HarvestRadiation(), nonce=0),
         RefusalCode.UNKNOWN_AGENT, ("unknown agent 'nonce-replayed'", "create_agent")),
    Case("unknown 'new-agent' tries to create itself",
         lambda: signer("new-agent", 55).create_agent(signer("new-agent", 55)),
         RefusalCode.UNKNOWN_AGENT, ("unknown agent 'new-agent'", "an existing agent must create it first")),
    Case("invalid id 'Nonce Signature' (static problem; unknown to admission)",
         lambda: signer("Nonce Signature", 43).sign(HarvestRadiation()),
         RefusalCode.UNKNOWN_AGENT, ("unknown agent 'Nonce Signature'",)),
    Case("'nonce-bot\\n' is not 'nonce-bot'",
         lambda: AgentSigner("nonce-bot\n", key(1), CHAIN).sign(HarvestRadiation()),
         RefusalCode.UNKNOWN_AGENT, ("unknown agent 'nonce-bot\\n'",)),
    # NONCE_REPLAYED: fix "use a nonce above <last>"
    Case("'bad-signature' uses nonce 0",
         lambda: known("bad-signature").sign(HarvestRadiation(), nonce=0),
         RefusalCode.NONCE_REPLAYED, ("nonce 0 already used by agent 'bad-signature'", "use a nonce above 0")),
    Case("'agent-id' uses nonce -3",
         lambda: known("agent-id").sign(HarvestRadiation(), nonce=-3),
         RefusalCode.NONCE_REPLAYED, ("nonce -3 already used by agent 'agent-id'", "use a nonce above 0")),
    Case("poor 'insufficient-fee' replays (the replay is found first)",
         lambda: known("insufficient-fee").sign(HarvestRadiation(), nonce=0),
         RefusalCode.NONCE_REPLAYED, ("nonce 0 already used by agent 'insufficient-fee'",)),
    Case("'already-registered' creates with nonce -1",
         lambda: create_with_nonce("already-registered", "signature-bot", -1),
         RefusalCode.NONCE_REPLAYED, ("nonce -1 already used", "use a nonce above 0")),
    # INSUFFICIENT_FEE: fix "receive a transfer first"
    Case("'insufficient-fee' (1 electricity) harvests",
         lambda: known("insufficient-fee").sign(HarvestRadiation()),
         RefusalCode.INSUFFICIENT_FEE, ("agent 'insufficient-fee' has 1", "receive a transfer first")),
    Case("'fee-ok' (2 electricity) creates an agent (surcharge 20)",
         lambda: create_with_nonce("fee-ok", "nonce-replayed", 1),
         RefusalCode.INSUFFICIENT_FEE, ("the fee of this action is 22 electricity", "agent 'fee-ok' has 2")),
    # ATTESTATION_REFUSED: a validator's build attestation that cannot apply
    Case("the genesis validator attests a build nobody requested",
         lambda: sign_action(VALIDATOR, CHAIN, VALIDATOR.public_key.hex(), 0, AttestBuild(build_id="ab" * 32, code="TIMEOUT")),
         RefusalCode.ATTESTATION_REFUSED, ("unknown build",)),
]


@pytest.fixture
def world() -> World:
    """A world in open block 1 with the GENESIS agents."""
    agents = [signer(a, seed).genesis_agent(electricity=e, data=10) for a, (seed, e) in GENESIS.items()]
    w = World.from_genesis(CHAIN, PARAMS, agents=agents, validators={VALIDATOR.public_key.hex(): 1})
    w.begin_block(1, 1_000)
    return w


def test_refusal_code_values_are_stable():
    assert {c.name: c.value for c in RefusalCode} == {
        "WRONG_CHAIN": "wrong_chain",
        "BAD_SIGNATURE": "bad_signature",
        "UNKNOWN_AGENT": "unknown_agent",
        "NONCE_REPLAYED": "nonce_replayed",
        "ATTESTATION_REFUSED": "attestation_refused",
        "INSUFFICIENT_FEE": "insufficient_fee",
    }
    assert RefusalCode.NONCE_REPLAYED == "nonce_replayed" and str(RefusalCode.WRONG_CHAIN) == "wrong_chain"


def test_table_covers_every_code():
    assert {case.code for case in CASES} == set(RefusalCode)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_check_action_gives_the_code_of_the_failed_rule(world: World, case: Case):
    refusal = world.check_action(case.action())
    assert isinstance(refusal, Refusal)
    assert refusal.code is case.code, refusal
    for fragment in case.says:
        assert fragment in refusal.message, (fragment, refusal.message)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_apply_action_records_the_refusal_message_verbatim_and_charges_nothing(world: World, case: Case):
    signed = case.action()
    refusal = world.check_action(signed)
    assert refusal is not None
    before = {a: world.get_agent(a) for a in GENESIS}
    action_id = compute_action_id(signed)
    [event] = world.apply_action(signed, action_id)
    assert event.kind == "domain.action_rejected"
    assert event.data == {
        "action_id": action_id,
        "agent_id": signed.body.agent_id,
        "action_kind": event.data["action_kind"],
        "reason": refusal.message,
        "fee": 0,
    }
    assert {a: world.get_agent(a) for a in GENESIS} == before  # no fee, no nonce consumed, nothing created
    assert world.stats()["agents"] == len(GENESIS)


def test_refusal_is_frozen_and_slotted():
    refusal = Refusal(RefusalCode.UNKNOWN_AGENT, "unknown agent 'x': an existing agent must create it first")
    with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
        refusal.code = RefusalCode.WRONG_CHAIN  # type: ignore[misc]  # assigning a frozen field is the point
    assert not hasattr(refusal, "__dict__")


def test_signature_check_can_be_skipped(world: World):
    forged = sign_action(key(60), CHAIN, "nonce-bot", 5, HarvestRadiation())
    state = world._state
    refusal = admission_refusal(state, forged)
    assert refusal is not None and refusal.code is RefusalCode.BAD_SIGNATURE
    assert refusal.message.startswith("bad signature for agent 'nonce-bot'")
    assert admission_refusal(state, forged, check_signature=False) is None
    replay = sign_action(key(60), CHAIN, "nonce-bot", 0, HarvestRadiation())
    refusal = admission_refusal(state, replay, check_signature=False)
    assert refusal is not None and refusal.code is RefusalCode.NONCE_REPLAYED


def test_admitted_action_has_no_refusal(world: World):
    assert world.check_action(known("nonce-bot").sign(HarvestRadiation())) is None
    assert world.check_action(known("fee-ok").sign(HarvestRadiation())) is None  # fee 2 of 2
    assert world.check_action(create_with_nonce("agent-id", "signature-bot", 1)) is None


def test_fee_rule_counts_what_is_owed(world: World):
    harvest = known("fee-ok").sign(HarvestRadiation())
    assert world.action_fee(harvest) == 2
    assert world.check_action(harvest, owed=0) is None
    refusal = world.check_action(harvest, owed=1)
    assert refusal is not None and refusal.code is RefusalCode.INSUFFICIENT_FEE
    assert refusal.message.startswith("the fee of this action is 2 electricity on top of 1 owed for its earlier actions")


# -- what used to be admission codes (BAD_AGENT_ID, ALREADY_REGISTERED, NEGATIVE_NONCE) -------------

@pytest.mark.parametrize(
    ("signed", "problem"),
    [
        (lambda: create_with_nonce("nonce-bot", "Nonce Signature", 1), "body.action.agent_id 'Nonce Signature' is not a valid agent id"),
        (lambda: create_with_nonce("nonce-bot", "-already-registered", 1), "starting with a letter or digit"),
        (lambda: create_with_nonce("nonce-bot", "unknown-agent-" + "x" * 51, 1), "is not a valid agent id"),
        (lambda: create_with_nonce("nonce-bot", "fresh\n", 1), "body.action.agent_id 'fresh\\n' is not a valid agent id"),
        (lambda: create_with_nonce("nonce-bot", "fresh", 1, public_key=b"\x01" * 31), "public_key must be 32 bytes"),
        (lambda: create_with_nonce("nonce-bot", "fresh", -1), "body.nonce must be an integer in 0.."),
        (lambda: signer("Nonce Signature", 43).sign(HarvestRadiation()), "body.agent_id 'Nonce Signature' is not a valid agent id"),
        (lambda: signer("nonce-bot\n", 1).sign(HarvestRadiation()), "body.agent_id 'nonce-bot\\n' is not a valid agent id"),
        (lambda: known("nonce-bot").sign(CreateAgent(agent_id="fresh", public_key=bytes(32), electricity=-1)),
         "electricity and data must be integers in 0.."),
        (lambda: known("nonce-bot").sign(CreateAgent(agent_id="fresh", public_key=bytes(32), data=1 << 63)),
         "electricity and data must be integers in 0.."),
        (lambda: known("nonce-bot").sign(TransferResource(to="agent-id", kind="data", amount=0)), "body.action.amount"),
    ],
)
def test_static_problems_replace_the_old_codes(signed, problem):
    found = static_action_problem(signed())
    assert found is not None and problem in found, found


def test_static_problem_accepts_a_good_create_agent():
    assert static_action_problem(create_with_nonce("nonce-bot", "fresh-agent", 1)) is None
    assert static_action_problem(create_with_nonce("nonce-bot", "a" * 64, 1)) is None


@pytest.mark.parametrize(
    ("new_id", "public_key", "reason"),
    [
        ("nonce-bot", key(62).public_key, "agent 'nonce-bot' already exists; choose another agent id"),
        ("Nonce Signature", key(62).public_key, "invalid agent id 'Nonce Signature'"),
        ("fresh\n", key(62).public_key, "invalid agent id 'fresh\\n'"),
        ("fresh", b"\x01" * 31, "public_key must be 32 bytes (Ed25519), got 31"),
    ],
)
def test_create_agent_id_problems_are_world_rule_rejections_that_pay(world: World, new_id, public_key, reason):
    signed = create_with_nonce("agent-id", new_id, 1, public_key=public_key)
    assert world.check_action(signed) is None  # admission does not look at the new agent
    fee = world.action_fee(signed)
    [event] = world.apply_action(signed, compute_action_id(signed))
    assert event.kind == "domain.action_rejected"
    assert event.data["reason"].startswith(reason) and event.data["fee"] == fee
    sponsor = world.get_agent("agent-id")
    assert (sponsor.electricity, sponsor.last_nonce) == (100 - fee, 1)
    assert world.stats()["agents"] == len(GENESIS)
