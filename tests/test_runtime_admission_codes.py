"""Admission refusals carry a typed code set by the rule that failed, never guessed from the text.

The agent ids below contain the words a substring search over the message would match ("nonce",
"signature", "chain id", "unknown agent", "already registered", "agent id"), so a code derived from
the text would come out wrong for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from agent_world_runtime import World, compute_action_id
from agent_world_runtime.actions import HarvestRadiation, RegisterAgent, SignedAction, sign_action
from agent_world_runtime.admission import Refusal, RefusalCode, admission_refusal
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.params import WorldParams
from agent_world_runtime.signer import AgentSigner

CHAIN = "test-chain"
PARAMS = WorldParams(initial_electricity=10, initial_data=3, move_cost_per_step=2, harvest_amount=5, grid_size=5)

#: Agents registered (nonce 1) in block 1 of every world below, with their key seeds.
REGISTERED = {"nonce-bot": 1, "already-registered": 2, "chain-id-agent": 3, "bad-signature": 4, "agent-id": 5}


def key(seed: int) -> SigningKey:
    return SigningKey(bytes([seed]) * 32)


def signer(agent_id: str, seed: int, chain_id: str = CHAIN) -> AgentSigner:
    return AgentSigner(agent_id, key(seed), chain_id)


def registered(agent_id: str) -> AgentSigner:
    return AgentSigner(agent_id, key(REGISTERED[agent_id]), CHAIN, next_nonce=2)


def register_with_nonce(agent_id: str, seed: int, nonce: int) -> SignedAction:
    return sign_action(key(seed), CHAIN, agent_id, nonce, RegisterAgent(public_key=key(seed).public_key))


def forged_register(agent_id: str) -> SignedAction:
    """A RegisterAgent carrying one key but signed by another."""
    return sign_action(key(70), CHAIN, agent_id, 1, RegisterAgent(public_key=key(71).public_key))


@dataclass(frozen=True)
class Case:
    name: str
    action: Callable[[], SignedAction]
    code: RefusalCode
    #: Fragments the message must contain: what was wrong, and (where the text gives one) the fix.
    says: tuple[str, ...]


CASES = [
    # WRONG_CHAIN: fix "sign for this chain"
    Case("wrong chain, registered agent 'nonce-bot'",
         lambda: signer("nonce-bot", 1, "other-chain").sign(HarvestRadiation(), nonce=9),
         RefusalCode.WRONG_CHAIN, ("wrong chain id 'other-chain'", "this world is 'test-chain'", "sign for this chain")),
    Case("wrong chain, register 'unknown-agent-x'",
         lambda: signer("unknown-agent-x", 40, "other-chain").register(),
         RefusalCode.WRONG_CHAIN, ("wrong chain id", "sign for this chain")),
    Case("wrong chain, register 'signature-bot' (other checks would fail too)",
         lambda: sign_action(key(41), "nonce-chain", "signature-bot", -1, RegisterAgent(public_key=key(42).public_key)),
         RefusalCode.WRONG_CHAIN, ("wrong chain id 'nonce-chain'", "sign for this chain")),
    # BAD_AGENT_ID: fix "use 1-64 characters of a-z, 0-9, ..."
    Case("invalid id 'Nonce Signature'",
         lambda: signer("Nonce Signature", 43).register(),
         RefusalCode.BAD_AGENT_ID, ("invalid agent id 'Nonce Signature'", "use 1-64 characters of a-z, 0-9")),
    Case("invalid id '-already-registered' (leading '-')",
         lambda: signer("-already-registered", 44).register(),
         RefusalCode.BAD_AGENT_ID, ("invalid agent id", "starting with a letter or digit")),
    Case("invalid id: 65 characters starting 'unknown-agent'",
         lambda: signer("unknown-agent-" + "x" * 51, 45).register(),
         RefusalCode.BAD_AGENT_ID, ("invalid agent id", "use 1-64 characters")),
    # ALREADY_REGISTERED: the text says what is wrong (the id is taken); it names no fix
    Case("'nonce-bot' registers again",
         lambda: signer("nonce-bot", 46).register(),
         RefusalCode.ALREADY_REGISTERED, ("agent 'nonce-bot' already registered",)),
    Case("'chain-id-agent' registers again with its own key",
         lambda: signer("chain-id-agent", REGISTERED["chain-id-agent"]).register(),
         RefusalCode.ALREADY_REGISTERED, ("agent 'chain-id-agent' already registered",)),
    Case("'bad-signature' registers again",
         lambda: signer("bad-signature", 47).register(),
         RefusalCode.ALREADY_REGISTERED, ("agent 'bad-signature' already registered",)),
    Case("'agent-id' registers again",
         lambda: signer("agent-id", 48).register(),
         RefusalCode.ALREADY_REGISTERED, ("agent 'agent-id' already registered",)),
    # BAD_SIGNATURE: the text says what is wrong (the signature); it names no fix
    Case("forged register for 'unknown-agent-x'",
         lambda: forged_register("unknown-agent-x"),
         RefusalCode.BAD_SIGNATURE, ("bad signature for agent 'unknown-agent-x'",)),
    Case("forged harvest for 'nonce-bot'",
         lambda: sign_action(key(49), CHAIN, "nonce-bot", 5, HarvestRadiation()),
         RefusalCode.BAD_SIGNATURE, ("bad signature for agent 'nonce-bot'",)),
    Case("forged harvest for 'already-registered' with a replayed nonce",
         lambda: sign_action(key(50), CHAIN, "already-registered", 1, HarvestRadiation()),
         RefusalCode.BAD_SIGNATURE, ("bad signature for agent 'already-registered'",)),
    # NEGATIVE_NONCE: fix "nonce must be >= 0"
    Case("register 'signature-bot' with nonce -1",
         lambda: register_with_nonce("signature-bot", 51, -1),
         RefusalCode.NEGATIVE_NONCE, ("nonce must be >= 0", "got -1")),
    Case("register 'unknown-agent-x' with nonce -7",
         lambda: register_with_nonce("unknown-agent-x", 52, -7),
         RefusalCode.NEGATIVE_NONCE, ("nonce must be >= 0", "got -7")),
    # UNKNOWN_AGENT: fix "register it first with register_agent"
    Case("unknown 'signature-bot' harvests",
         lambda: signer("signature-bot", 53).sign(HarvestRadiation()),
         RefusalCode.UNKNOWN_AGENT, ("unknown agent 'signature-bot'", "register it first with register_agent")),
    Case("unknown 'nonce-replayed' harvests with nonce 0",
         lambda: signer("nonce-replayed", 54).sign(HarvestRadiation(), nonce=0),
         RefusalCode.UNKNOWN_AGENT, ("unknown agent 'nonce-replayed'", "register it first with register_agent")),
    Case("unknown 'already-registered-2' harvests",
         lambda: signer("already-registered-2", 55).sign(HarvestRadiation()),
         RefusalCode.UNKNOWN_AGENT, ("unknown agent 'already-registered-2'", "register it first")),
    # NONCE_REPLAYED: fix "use a nonce above <last>"
    Case("'bad-signature' replays nonce 1",
         lambda: registered("bad-signature").sign(HarvestRadiation(), nonce=1),
         RefusalCode.NONCE_REPLAYED, ("nonce 1 already used by agent 'bad-signature'", "use a nonce above 1")),
    Case("'chain-id-agent' uses nonce 0",
         lambda: registered("chain-id-agent").sign(HarvestRadiation(), nonce=0),
         RefusalCode.NONCE_REPLAYED, ("nonce 0 already used", "use a nonce above 1")),
    Case("'agent-id' uses nonce -3",
         lambda: registered("agent-id").sign(HarvestRadiation(), nonce=-3),
         RefusalCode.NONCE_REPLAYED, ("nonce -3 already used by agent 'agent-id'", "use a nonce above 1")),
]


@pytest.fixture
def world() -> World:
    """A world in open block 1 with the REGISTERED agents."""
    w = World.from_genesis(CHAIN, PARAMS)
    w.begin_block(1, 1_000)
    for agent_id, seed in REGISTERED.items():
        s = signer(agent_id, seed).register()
        [event] = w.apply_action(s, compute_action_id(s))
        assert event.kind == "domain.agent_registered", event
    return w


def test_refusal_code_values_are_stable():
    assert {c.name: c.value for c in RefusalCode} == {
        "WRONG_CHAIN": "wrong_chain",
        "BAD_AGENT_ID": "bad_agent_id",
        "ALREADY_REGISTERED": "already_registered",
        "BAD_SIGNATURE": "bad_signature",
        "NEGATIVE_NONCE": "negative_nonce",
        "UNKNOWN_AGENT": "unknown_agent",
        "NONCE_REPLAYED": "nonce_replayed",
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
def test_apply_action_records_the_refusal_message_verbatim(world: World, case: Case):
    signed = case.action()
    refusal = world.check_action(signed)
    assert refusal is not None
    before = {a: world.get_agent(a) for a in REGISTERED}
    action_id = compute_action_id(signed)
    [event] = world.apply_action(signed, action_id)
    assert event.kind == "domain.action_rejected"
    assert event.data == {
        "action_id": action_id,
        "agent_id": signed.body.agent_id,
        "action_kind": event.data["action_kind"],
        "reason": refusal.message,
    }
    assert {a: world.get_agent(a) for a in REGISTERED} == before  # no nonce consumed, nothing registered


def test_refusal_is_frozen_and_slotted():
    refusal = Refusal(RefusalCode.UNKNOWN_AGENT, "unknown agent 'x': register it first with register_agent")
    with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
        refusal.code = RefusalCode.WRONG_CHAIN  # type: ignore[misc]  # assigning a frozen field is the point
    assert not hasattr(refusal, "__dict__")


def test_signature_check_can_be_skipped(world: World):
    forged = sign_action(key(60), CHAIN, "nonce-bot", 5, HarvestRadiation())
    state = world._state
    assert admission_refusal(state, forged) == Refusal(RefusalCode.BAD_SIGNATURE, "bad signature for agent 'nonce-bot'")
    assert admission_refusal(state, forged, check_signature=False) is None
    replay = sign_action(key(60), CHAIN, "nonce-bot", 1, HarvestRadiation())
    refusal = admission_refusal(state, replay, check_signature=False)
    assert refusal is not None and refusal.code is RefusalCode.NONCE_REPLAYED


def test_admitted_action_has_no_refusal(world: World):
    assert world.check_action(registered("nonce-bot").sign(HarvestRadiation())) is None
    assert world.check_action(signer("signature-bot", 61).register()) is None
    assert world.check_action(register_with_nonce("nonce-zero", 62, 0)) is None
