"""World runtime: block lifecycle, admission (signature, chain id, nonce, replay), agent creation and the
domain actions."""

from __future__ import annotations

import msgspec
import pytest

from agent_world_runtime import World, compute_action_id
from agent_world_runtime.actions import CreateAgent, HarvestRadiation, MoveAgent, TransferResource, sign_action
from agent_world_runtime.admission import Refusal, RefusalCode
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.params import WorldParams
from agent_world_runtime.signer import AgentSigner
from tests.worlds import BANK_ID, bank_signer, create, genesis_world

CHAIN = "test-chain"
#: fee_per_kib=0, so every action costs exactly fee_base (1) plus its kind's surcharge (create_agent: 20).
PARAMS = WorldParams(move_cost_per_step=2, harvest_amount=5, grid_size=5, fee_base=1, fee_per_kib=0,
                     create_agent_fee=20)
FEE = 1
CREATE_FEE = 21
UNKNOWN_REASON = "unknown agent 'x': an existing agent must create it first with create_agent"


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
    w = genesis_world(CHAIN, PARAMS)
    w.begin_block(1, 1_000)
    return w


@pytest.fixture
def alice(world) -> AgentSigner:
    a = signer("alice", 1)
    [event] = create(world, a, (1, 1, 1), electricity=10, data=3)
    assert event.kind == "domain.agent_created", event.data
    return a


@pytest.fixture
def bob(world) -> AgentSigner:
    b = signer("bob", 2)
    [event] = create(world, b, electricity=10, data=3)
    assert event.kind == "domain.agent_created", event.data
    return b


def test_block_lifecycle_rules():
    w = genesis_world(CHAIN, PARAMS)
    assert w.height == 0
    with pytest.raises(ValueError, match="next block must be height 1"):
        w.begin_block(2, 0)
    with pytest.raises(RuntimeError, match="no block is open"):
        w.apply_action(bank_signer(w).sign(HarvestRadiation()), b"x" * 32)
    with pytest.raises(RuntimeError, match="no block is open"):
        w.end_block()
    with pytest.raises(RuntimeError, match="no block is open"):
        w.collect_fees([])
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
    with pytest.raises(ValueError, match="fee_base"):
        World.from_genesis(CHAIN, WorldParams(fee_base=-1))


def test_genesis_accepts_any_struct_with_the_world_params_fields():
    class GenesisWorld(msgspec.Struct):  # e.g. the node's genesis.json "world" section
        move_cost_per_step: int = 1
        harvest_amount: int = 7
        grid_size: int = 1000
        create_agent_fee: int = 30

    w = World.from_genesis(CHAIN, GenesisWorld())
    assert w.params == WorldParams(harvest_amount=7, create_agent_fee=30)
    assert w.state_root() == World.from_genesis(CHAIN, WorldParams(harvest_amount=7, create_agent_fee=30)).state_root()


def test_genesis_agents_exist_from_height_zero():
    a = signer("alice", 1)
    w = World.from_genesis(CHAIN, PARAMS, agents=[a.genesis_agent(electricity=7, data=9, position=(1, 2, 3))])
    agent = w.get_agent("alice")
    assert (agent.public_key, agent.position) == (a.public_key, (1, 2, 3))
    assert (agent.electricity, agent.data, agent.last_nonce, agent.registered_at, agent.last_harvest_height) == (7, 9, 0, 0, 0)
    assert w.state_root() != World.from_genesis(CHAIN, PARAMS).state_root()
    w.begin_block(1, 1)
    [event] = apply(w, a.sign(HarvestRadiation()))
    assert event.kind == "domain.radiation_harvested" and event.data["fee"] == FEE
    assert w.get_agent("alice").electricity == 7 - FEE + 5


def test_create_agent_gives_endowments_and_the_sponsor_pays(world):
    bank_before = world.get_agent(BANK_ID)
    a = signer("alice", 1)
    signed = bank_signer(world).create_agent(a, (1, 1, 1), electricity=10, data=3)
    [event] = apply(world, signed)
    assert event.kind == "domain.agent_created"
    assert event.data == {
        "action_id": compute_action_id(signed),
        "agent_id": BANK_ID,
        "created_agent_id": "alice",
        "public_key": a.public_key,
        "position": [1, 1, 1],
        "electricity": 10,
        "data": 3,
        "fee": CREATE_FEE,
    }
    agent = world.get_agent("alice")
    assert agent.public_key == a.public_key and agent.position == (1, 1, 1)
    assert (agent.electricity, agent.data, agent.last_nonce, agent.registered_at) == (10, 3, 0, 1)
    bank = world.get_agent(BANK_ID)
    assert bank.electricity == bank_before.electricity - CREATE_FEE - 10
    assert bank.data == bank_before.data - 3
    assert bank.last_nonce == bank_before.last_nonce + 1


def test_created_agent_acts_with_nonce_1_and_its_own_key(world, alice):
    assert apply(world, alice.sign(HarvestRadiation(), nonce=1))[0].kind == "domain.radiation_harvested"
    assert world.get_agent("alice").last_nonce == 1
    # The sponsor's key does not sign for the created agent.
    as_bank = sign_action(bank_signer(world).key, CHAIN, "alice", 2, MoveAgent(to=(2, 1, 1)))
    assert only_rejection(apply(world, as_bank)).startswith("bad signature for agent 'alice'")
    assert world.get_agent("alice").last_nonce == 1


def test_created_agent_can_create_agents_from_its_own_balances(world):
    carol = signer("carol", 3)
    [event] = create(world, carol, electricity=100, data=50)
    assert event.kind == "domain.agent_created"
    dave = signer("dave", 4)
    [event] = apply(world, carol.create_agent(dave, electricity=30, data=20))
    assert (event.kind, event.data["agent_id"], event.data["created_agent_id"]) == ("domain.agent_created", "carol", "dave")
    carol = world.get_agent("carol")
    assert (carol.electricity, carol.data) == (100 - CREATE_FEE - 30, 50 - 20)
    assert (world.get_agent("dave").electricity, world.get_agent("dave").data) == (30, 20)


@pytest.mark.parametrize(
    ("new_id", "key", "position", "electricity", "data", "expected"),
    [
        ("alice", bytes(32), (0, 0, 0), 0, 0, "agent 'alice' already exists; choose another agent id"),
        ("Bad Name", bytes(32), (0, 0, 0), 0, 0, "invalid agent id 'Bad Name'"),
        ("carol\n", bytes(32), (0, 0, 0), 0, 0, "invalid agent id 'carol\\n'"),
        ("-carol", bytes(32), (0, 0, 0), 0, 0, "invalid agent id '-carol'"),
        ("c" * 65, bytes(32), (0, 0, 0), 0, 0, "invalid agent id"),
        ("carol", bytes(31), (0, 0, 0), 0, 0, "public_key must be 32 bytes (Ed25519), got 31"),
        ("carol", bytes(33), (0, 0, 0), 0, 0, "public_key must be 32 bytes (Ed25519), got 33"),
        ("carol", bytes(32), (6, 0, 0), 0, 0, "position (6, 0, 0) is outside the grid"),
        ("carol", bytes(32), (0, 0, -6), 0, 0, "position (0, 0, -6) is outside the grid"),
        ("carol", bytes(32), (0, 0, 0), 1000, 0, "agent 'bob' has 79 electricity, cannot give 1000"),
        ("carol", bytes(32), (0, 0, 0), 0, 51, "agent 'bob' has 50 data, cannot give 51"),
        ("carol", bytes(32), (0, 0, 0), -1, 0, "cannot give -1 to the new agent"),
    ],
)
def test_create_agent_rejections_pay_the_fee_and_create_nothing(world, alice, new_id, key, position, electricity,
                                                                 data, expected):
    bob = signer("bob", 2)
    create(world, bob, electricity=100, data=50)
    bob_before = world.get_agent("bob")
    action = CreateAgent(agent_id=new_id, public_key=key, position=position, electricity=electricity, data=data)
    reason = only_rejection(apply(world, bob.sign(action)))
    assert reason.startswith(expected) or expected in reason, reason
    after = world.get_agent("bob")
    # The fee (base + create surcharge) was taken before the rules ran; nothing else moved.
    assert (after.electricity, after.data, after.last_nonce) == (bob_before.electricity - CREATE_FEE, bob_before.data, 1)
    assert world.get_agent("alice").public_key == alice.public_key
    assert world.stats()["agents"] == 3
    if new_id != "alice":
        assert world.get_agent(new_id) is None


def test_an_agent_cannot_be_created_twice(world, alice):
    again = create(world, signer("alice", 9))
    assert only_rejection(again) == "agent 'alice' already exists; choose another agent id"
    assert again[0].data["fee"] == CREATE_FEE
    assert world.get_agent("alice").public_key == alice.public_key  # the first key stays
    # The same action (same nonce) replayed is a refused admission: nothing is charged.
    first = bank_signer(world).create_agent(signer("carol", 3), electricity=1)
    assert apply(world, first)[0].kind == "domain.agent_created"
    bank_electricity = world.get_agent(BANK_ID).electricity
    [replayed] = apply(world, first)
    assert replayed.data["reason"].startswith("nonce ") and replayed.data["fee"] == 0
    assert world.get_agent(BANK_ID).electricity == bank_electricity


def test_create_agent_by_an_unknown_or_forged_sponsor_is_refused_unpaid(world, alice):
    carol = signer("carol", 3)
    unknown = signer("nobody", 5).create_agent(carol)
    [event] = apply(world, unknown)
    assert event.data["reason"].startswith("unknown agent 'nobody'") and event.data["fee"] == 0
    forged = sign_action(SigningKey(b"\x07" * 32), CHAIN, "alice", 1,
                         CreateAgent(agent_id="carol", public_key=carol.public_key))
    [event] = apply(world, forged)
    assert event.data["reason"].startswith("bad signature for agent 'alice'") and event.data["fee"] == 0
    assert world.get_agent("carol") is None
    assert (world.get_agent("alice").electricity, world.get_agent("alice").last_nonce) == (10, 0)


def test_rejection_event_fields(world):
    s = signer("x", 4).sign(HarvestRadiation())
    [event] = apply(world, s)
    assert event.data == {
        "action_id": compute_action_id(s),
        "agent_id": "x",
        "action_kind": "harvest_radiation",
        "reason": UNKNOWN_REASON,
        "fee": 0,
    }


def test_wrong_chain_and_bad_signature(world, alice):
    other = AgentSigner("alice", alice.key, "other-chain", next_nonce=5)
    assert only_rejection(apply(world, other.sign(HarvestRadiation()))).startswith("wrong chain id 'other-chain'")
    forged = sign_action(SigningKey(b"\x09" * 32), CHAIN, "alice", 7, HarvestRadiation())
    assert only_rejection(apply(world, forged)) == (
        "bad signature for agent 'alice'; sign the action body with the key the agent was created with"
    )
    assert (world.get_agent("alice").last_nonce, world.get_agent("alice").electricity) == (0, 10)


def test_signature_checked_flag_skips_verification(world, alice):
    forged = sign_action(SigningKey(b"\x09" * 32), CHAIN, "alice", 7, HarvestRadiation())
    [event] = world.apply_action(forged, compute_action_id(forged), signature_checked=True)
    assert event.kind == "domain.radiation_harvested"


def test_nonce_rules_replay_and_gaps(world, alice, bob):
    first = alice.sign(TransferResource(to="bob", kind="data", amount=1), nonce=5)
    assert apply(world, first)[0].kind == "domain.resource_transferred"
    [replayed] = apply(world, first)
    assert replayed.data["reason"] == "nonce 5 already used by agent 'alice' (last nonce 5); use a nonce above 5"
    assert replayed.data["fee"] == 0
    assert "nonce 3 already used" in only_rejection(apply(world, alice.sign(HarvestRadiation(), nonce=3)))
    assert apply(world, alice.sign(HarvestRadiation(), nonce=100))[0].kind == "domain.radiation_harvested"
    agent = world.get_agent("alice")
    assert agent.last_nonce == 100
    assert (agent.electricity, agent.data) == (10 - 2 * FEE + 5, 2)  # two paid actions, one harvest


def test_nonce_and_fee_are_used_even_when_the_rules_reject(world, alice):
    s = alice.sign(MoveAgent(to=(5, 5, 5)), nonce=2)  # 12 steps cost 24 > 10
    [event] = apply(world, s)
    assert "harvest radiation first" in event.data["reason"] and event.data["fee"] == FEE
    agent = world.get_agent("alice")
    assert (agent.last_nonce, agent.electricity, agent.position) == (2, 10 - FEE, (1, 1, 1))


def test_check_action_mirrors_admission(world, alice):
    ok = alice.sign(HarvestRadiation(), nonce=2)
    assert world.check_action(ok) is None
    replay = world.check_action(alice.sign(HarvestRadiation(), nonce=0))
    assert replay is not None and replay.code is RefusalCode.NONCE_REPLAYED
    assert replay.message.startswith("nonce 0 already used")
    assert world.check_action(signer("x", 5).sign(HarvestRadiation())) == Refusal(RefusalCode.UNKNOWN_AGENT, UNKNOWN_REASON)
    # Whether the action would then succeed is not admission's business: a create_agent of an
    # existing id is admitted (and later rejected by the rules, having paid).
    assert world.check_action(bank_signer(world).create_agent(signer("alice", 9))) is None
    poor = world.check_action(ok, owed=10)
    assert poor is not None and poor.code is RefusalCode.INSUFFICIENT_FEE
    assert world.check_action(ok, owed=10 - FEE) is None
    before = world.state_root()
    world.check_action(ok)
    assert world.state_root() == before
    assert world.get_agent("alice").last_nonce == 0


def test_move_costs_manhattan_distance_plus_the_fee(world, alice):
    [event] = apply(world, alice.sign(MoveAgent(to=(2, 0, 1))))
    assert event.kind == "domain.agent_moved"
    assert event.data["from"] == [1, 1, 1] and event.data["to"] == [2, 0, 1]
    assert (event.data["distance"], event.data["cost"], event.data["fee"]) == (2, 4, FEE)
    assert event.data["electricity"] == 10 - FEE - 4
    agent = world.get_agent("alice")
    assert agent.position == (2, 0, 1) and agent.electricity == 10 - FEE - 4


def test_move_rejections(world, alice):
    assert "outside the grid" in only_rejection(apply(world, alice.sign(MoveAgent(to=(0, 0, 6)))))
    assert "already at (1, 1, 1)" in only_rejection(apply(world, alice.sign(MoveAgent(to=(1, 1, 1)))))
    reason = only_rejection(apply(world, alice.sign(MoveAgent(to=(-5, -5, 1)))))  # 12 steps, cost 24
    assert reason.startswith(f"moving 12 steps costs 24 electricity but agent 'alice' has {10 - 3 * FEE}")
    agent = world.get_agent("alice")
    assert agent.position == (1, 1, 1) and agent.electricity == 10 - 3 * FEE


def test_move_that_only_the_fee_makes_unaffordable_is_rejected(world, alice):
    # 5 steps cost 10: affordable before the fee, not after it.
    reason = only_rejection(apply(world, alice.sign(MoveAgent(to=(-2, 0, 0)))))
    assert reason.startswith(f"moving 5 steps costs 10 electricity but agent 'alice' has {10 - FEE}")


def test_harvest_adds_electricity(world, alice):
    [event] = apply(world, alice.sign(HarvestRadiation()))
    assert event.data["amount"] == 5 and event.data["electricity"] == 10 - FEE + 5 and event.data["fee"] == FEE
    agent = world.get_agent("alice")
    assert agent.electricity == 10 - FEE + 5 and agent.last_harvest_height == 1


def test_transfer_moves_resources(world, alice, bob):
    [event] = apply(world, alice.sign(TransferResource(to="bob", kind="data", amount=2)))
    assert event.kind == "domain.resource_transferred"
    assert event.data["to"] == "bob" and event.data["amount"] == 2 and event.data["fee"] == FEE
    assert (world.get_agent("alice").data, world.get_agent("alice").electricity) == (1, 10 - FEE)
    assert (world.get_agent("bob").data, world.get_agent("bob").electricity) == (5, 10)
    apply(world, alice.sign(TransferResource(to="bob", kind="electricity", amount=10 - 2 * FEE)))
    assert (world.get_agent("alice").electricity, world.get_agent("bob").electricity) == (0, 10 + 10 - 2 * FEE)


@pytest.mark.parametrize(
    ("to", "kind", "amount", "expected"),
    [
        ("bob", "gold", 1, "unknown resource kind 'gold'"),
        ("bob", "data", 0, "transfer amount must be positive, got 0"),
        ("bob", "data", -3, "transfer amount must be positive, got -3"),
        ("alice", "data", 1, "agent 'alice' cannot transfer to itself"),
        ("zed", "data", 1, "unknown recipient agent 'zed'"),
        ("bob\n", "data", 1, "unknown recipient agent 'bob\\n'"),
        ("bob", "electricity", 10, f"agent 'alice' has {10 - FEE} electricity, not enough to transfer 10"),
    ],
)
def test_transfer_rejections(world, alice, bob, to, kind, amount, expected):
    reason = only_rejection(apply(world, alice.sign(TransferResource(to=to, kind=kind, amount=amount))))
    assert reason.startswith(expected)
    assert world.get_agent("alice").data == 3 and world.get_agent("bob").data == 3
    assert world.get_agent("alice").electricity == 10 - FEE and world.get_agent("bob").electricity == 10


def test_block_outcome_and_events_query(world, alice, bob):
    apply(world, alice.sign(HarvestRadiation()))
    out = world.end_block()
    assert out.height == 1 and len(out.state_root) == 32 and len(out.events_root) == 32
    assert [e.seq for e in out.events] == [1, 2, 3]
    assert [e.kind for e in world.events(kind_prefix="domain.agent_")] == ["domain.agent_created"] * 2
    assert [e.seq for e in world.events(from_seq=2, limit=1)] == [2]
    assert world.stats()["agents"] == 3 and world.stats()["events"] == 3
    world.begin_block(2, 2_000)
    empty = world.end_block()
    assert empty.events == [] and empty.state_root != out.state_root  # the height is part of the state
