"""World runtime: block lifecycle, admission (signature, chain id, nonce, replay) and the domain actions."""

from __future__ import annotations

import msgspec
import pytest

from agent_world_runtime import World, compute_action_id
from agent_world_runtime.actions import HarvestRadiation, MoveAgent, RegisterAgent, TransferResource, sign_action
from agent_world_runtime.admission import Refusal, RefusalCode
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.params import WorldParams
from agent_world_runtime.signer import AgentSigner

CHAIN = "test-chain"
PARAMS = WorldParams(initial_electricity=10, initial_data=3, move_cost_per_step=2, harvest_amount=5, grid_size=5)


def signer(name: str, seed_byte: int) -> AgentSigner:
    return AgentSigner.from_seed(name, bytes([seed_byte]) * 32, CHAIN)


def apply(world: World, signed) -> list:
    return world.apply_action(signed, compute_action_id(signed))


def only_rejection(events) -> str:
    assert len(events) == 1, events
    assert events[0].kind == "domain.action_rejected"
    return events[0].data["reason"]


@pytest.fixture
def world() -> World:
    w = World.from_genesis(CHAIN, PARAMS)
    w.begin_block(1, 1_000)
    return w


@pytest.fixture
def alice(world) -> AgentSigner:
    a = signer("alice", 1)
    [event] = apply(world, a.register((1, 1, 1)))
    assert event.kind == "domain.agent_registered"
    return a


@pytest.fixture
def bob(world) -> AgentSigner:
    b = signer("bob", 2)
    apply(world, b.register())
    return b


def test_block_lifecycle_rules():
    w = World.from_genesis(CHAIN, PARAMS)
    assert w.height == 0
    with pytest.raises(ValueError, match="next block must be height 1"):
        w.begin_block(2, 0)
    with pytest.raises(RuntimeError, match="no block is open"):
        w.apply_action(signer("a", 1).register(), b"x" * 32)
    with pytest.raises(RuntimeError, match="no block is open"):
        w.end_block()
    w.begin_block(1, 5)
    with pytest.raises(RuntimeError, match="still open"):
        w.begin_block(2, 6)
    out = w.end_block()
    assert (out.height, w.height, out.events) == (1, 1, [])
    with pytest.raises(ValueError, match="timestamp_ms"):
        w.begin_block(2, -1)


def test_genesis_rejects_bad_chain_id_and_params():
    with pytest.raises(ValueError, match="chain_id"):
        World.from_genesis("", PARAMS)
    with pytest.raises(ValueError, match="grid_size"):
        World.from_genesis(CHAIN, WorldParams(grid_size=-1))


def test_genesis_accepts_any_struct_with_the_world_params_fields():
    class GenesisWorld(msgspec.Struct):  # e.g. the node's genesis.json "world" section
        initial_electricity: int = 100
        initial_data: int = 1000
        move_cost_per_step: int = 1
        harvest_amount: int = 7
        grid_size: int = 1000

    w = World.from_genesis(CHAIN, GenesisWorld())
    assert w.params == WorldParams(harvest_amount=7)
    assert w.state_root() == World.from_genesis(CHAIN, WorldParams(harvest_amount=7)).state_root()


def test_register_gives_initial_balances(world, alice):
    agent = world.get_agent("alice")
    assert agent.public_key == alice.public_key
    assert agent.position == (1, 1, 1)
    assert (agent.electricity, agent.data, agent.last_nonce, agent.registered_at) == (10, 3, 1, 1)


def test_register_rejections(world, alice):
    assert only_rejection(apply(world, signer("alice", 9).register())) == "agent 'alice' already registered"
    assert "invalid agent id" in only_rejection(apply(world, signer("Bad Name", 3).register()))
    assert "outside the grid" in only_rejection(apply(world, signer("carol", 3).register((6, 0, 0))))
    mallory = SigningKey(b"\x07" * 32)
    forged = sign_action(mallory, CHAIN, "dave", 1, RegisterAgent(public_key=SigningKey(b"\x08" * 32).public_key))
    assert only_rejection(apply(world, forged)) == "bad signature for agent 'dave'"
    assert world.get_agent("dave") is None and world.get_agent("carol") is None


def test_rejection_event_fields(world):
    s = signer("x", 4).sign(HarvestRadiation())
    [event] = apply(world, s)
    assert event.data == {
        "action_id": compute_action_id(s),
        "agent_id": "x",
        "action_kind": "harvest_radiation",
        "reason": "unknown agent 'x': register it first with register_agent",
    }


def test_wrong_chain_and_bad_signature(world, alice):
    other = AgentSigner("alice", alice.key, "other-chain", next_nonce=5)
    assert only_rejection(apply(world, other.sign(HarvestRadiation()))).startswith("wrong chain id 'other-chain'")
    forged = sign_action(SigningKey(b"\x09" * 32), CHAIN, "alice", 7, HarvestRadiation())
    assert only_rejection(apply(world, forged)) == "bad signature for agent 'alice'"
    assert world.get_agent("alice").last_nonce == 1


def test_signature_checked_flag_skips_verification(world, alice):
    forged = sign_action(SigningKey(b"\x09" * 32), CHAIN, "alice", 7, HarvestRadiation())
    [event] = world.apply_action(forged, compute_action_id(forged), signature_checked=True)
    assert event.kind == "domain.radiation_harvested"


def test_nonce_rules_replay_and_gaps(world, alice):
    first = alice.sign(HarvestRadiation(), nonce=5)
    assert apply(world, first)[0].kind == "domain.radiation_harvested"
    assert only_rejection(apply(world, first)) == (
        "nonce 5 already used by agent 'alice' (last nonce 5); use a nonce above 5"
    )
    assert "nonce 3 already used" in only_rejection(apply(world, alice.sign(HarvestRadiation(), nonce=3)))
    assert apply(world, alice.sign(HarvestRadiation(), nonce=100))[0].kind == "domain.radiation_harvested"
    assert world.get_agent("alice").last_nonce == 100
    assert world.get_agent("alice").electricity == 20


def test_nonce_is_used_even_when_the_rules_reject(world, alice):
    s = alice.sign(MoveAgent(to=(5, 5, 5)), nonce=2)  # 12 steps cost 24 > 10
    assert "harvest radiation first" in only_rejection(apply(world, s))
    assert world.get_agent("alice").last_nonce == 2


def test_check_action_mirrors_admission(world, alice):
    ok = alice.sign(HarvestRadiation(), nonce=2)
    assert world.check_action(ok) is None
    replay = world.check_action(alice.sign(HarvestRadiation(), nonce=1))
    assert replay is not None and replay.code is RefusalCode.NONCE_REPLAYED
    assert replay.message.startswith("nonce 1 already used")
    assert world.check_action(signer("nobody", 5).sign(HarvestRadiation())) == Refusal(
        RefusalCode.UNKNOWN_AGENT, "unknown agent 'nobody': register it first with register_agent"
    )
    assert world.check_action(signer("alice", 1).register()) == Refusal(
        RefusalCode.ALREADY_REGISTERED, "agent 'alice' already registered"
    )
    before = world.state_root()
    world.check_action(ok)
    assert world.state_root() == before
    assert world.get_agent("alice").last_nonce == 1


def test_move_costs_manhattan_distance(world, alice):
    [event] = apply(world, alice.sign(MoveAgent(to=(2, 0, 1))))
    assert event.kind == "domain.agent_moved"
    assert event.data["from"] == [1, 1, 1] and event.data["to"] == [2, 0, 1]
    assert (event.data["distance"], event.data["cost"]) == (2, 4)
    agent = world.get_agent("alice")
    assert agent.position == (2, 0, 1) and agent.electricity == 6


def test_move_rejections(world, alice):
    assert "outside the grid" in only_rejection(apply(world, alice.sign(MoveAgent(to=(0, 0, 6)))))
    assert "already at (1, 1, 1)" in only_rejection(apply(world, alice.sign(MoveAgent(to=(1, 1, 1)))))
    reason = only_rejection(apply(world, alice.sign(MoveAgent(to=(-5, -5, 1)))))  # 12 steps, cost 24
    assert reason.startswith("moving 12 steps costs 24 electricity but agent 'alice' has 10")
    assert world.get_agent("alice").position == (1, 1, 1)


def test_harvest_adds_electricity(world, alice):
    [event] = apply(world, alice.sign(HarvestRadiation()))
    assert event.data["amount"] == 5 and event.data["electricity"] == 15
    assert world.get_agent("alice").electricity == 15


def test_transfer_moves_resources(world, alice, bob):
    [event] = apply(world, alice.sign(TransferResource(to="bob", kind="data", amount=2)))
    assert event.kind == "domain.resource_transferred"
    assert event.data["to"] == "bob" and event.data["amount"] == 2
    assert world.get_agent("alice").data == 1
    assert world.get_agent("bob").data == 5


@pytest.mark.parametrize(
    ("to", "kind", "amount", "expected"),
    [
        ("bob", "gold", 1, "unknown resource kind 'gold'"),
        ("bob", "data", 0, "transfer amount must be positive, got 0"),
        ("bob", "data", -3, "transfer amount must be positive, got -3"),
        ("alice", "data", 1, "agent 'alice' cannot transfer to itself"),
        ("zed", "data", 1, "unknown recipient agent 'zed'"),
        ("bob", "electricity", 11, "agent 'alice' has 10 electricity, not enough to transfer 11"),
    ],
)
def test_transfer_rejections(world, alice, bob, to, kind, amount, expected):
    reason = only_rejection(apply(world, alice.sign(TransferResource(to=to, kind=kind, amount=amount))))
    assert reason.startswith(expected)
    assert world.get_agent("alice").data == 3 and world.get_agent("bob").data == 3


def test_block_outcome_and_events_query(world, alice, bob):
    apply(world, alice.sign(HarvestRadiation()))
    out = world.end_block()
    assert out.height == 1 and len(out.state_root) == 32 and len(out.events_root) == 32
    assert [e.seq for e in out.events] == [1, 2, 3]
    assert [e.kind for e in world.events(kind_prefix="domain.agent_")] == ["domain.agent_registered"] * 2
    assert [e.seq for e in world.events(from_seq=2, limit=1)] == [2]
    assert world.stats()["agents"] == 2 and world.stats()["events"] == 3
    world.begin_block(2, 2_000)
    empty = world.end_block()
    assert empty.events == [] and empty.state_root != out.state_root  # the height is part of the state
