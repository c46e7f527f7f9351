"""Staking in the world runtime: creating validators, bonding, unbonding, unjailing, the set of
epoch e+2 computed at the end of epoch e, slashing by evidence and jailing for downtime."""

from __future__ import annotations

import pytest

from agent_world_runtime import World, compute_action_id
from agent_world_runtime.actions import Bond, CreateValidator, Unbond, Unjail, validator_key_proof
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.params import StakingParams, WorldParams
from agent_world_runtime.signer import AgentSigner
from agent_world_runtime.staking.records import validator_set_hash

CHAIN = "staking-test"
EPOCH = 4
VKEYS = [SigningKey(bytes([0x40 + i]) * 32) for i in range(4)]
VIDS = [k.public_key.hex() for k in VKEYS]
OPS = [AgentSigner.from_seed(f"op-{i}", bytes([0x60 + i]) * 32, CHAIN) for i in range(4)]
ALICE = AgentSigner.from_seed("alice", b"\x11" * 32, CHAIN)
NEW_KEY = SigningKey(b"\x77" * 32)


def make_world(**staking) -> World:
    agents = [op.genesis_agent(1_000, 0) for op in OPS] + [ALICE.genesis_agent(1_000, 0)]
    return World.from_genesis(
        CHAIN, WorldParams(), agents=agents, validators={vid: 10 for vid in VIDS[:3]},
        validator_operators={VIDS[i]: OPS[i].agent_id for i in range(3)}, epoch_length=EPOCH,
        staking_params=StakingParams(**{"unbonding_epochs": 1, **staking}))


class Chain:
    """Drives a world block by block; ``signers`` are the validators whose precommits each block's
    last commit carries (default: the whole current set)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.signers: list[str] | None = None

    def block(self, *actions, evidence=()) -> list:
        w = self.world
        h = w.height + 1
        signers = self.signers if self.signers is not None else list(w.validators())
        w.begin_block(h, 1_000 * h, last_commit_signers=signers if h > 1 else None, evidence=evidence)
        for signed in actions:
            w.apply_action(signed, compute_action_id(signed))
        return w.end_block().events

    def until(self, height: int) -> None:
        while self.world.height < height:
            self.block()


def rejected(events) -> list[str]:
    return [e.data["reason"] for e in events if e.kind == "domain.action_rejected"]


def create_validator(op: AgentSigner = ALICE, key: SigningKey = NEW_KEY, bond: int = 50, proof: bytes | None = None):
    return op.sign(CreateValidator(validator_key=key.public_key, bond=bond,
                                   proof=proof if proof is not None else validator_key_proof(key, CHAIN, op.agent_id),
                                   name="new"))


def test_genesis_sets_of_epochs_0_and_1_and_operators():
    w = make_world()
    for epoch in (0, 1):
        rec = w.validator_set(epoch)
        assert rec is not None and rec.validators == [(v, 10) for v in sorted(VIDS[:3])]
        assert rec.hash() == validator_set_hash([(v, 10) for v in VIDS[:3]])
    assert w.validator_set(2) is None
    assert w.validator_record(VIDS[0]).bonds == {"op-0": 10}
    with pytest.raises(ValueError, match="operator"):
        World.from_genesis(CHAIN, WorldParams(), validators={VIDS[0]: 1}, validator_operators={VIDS[0]: "nobody"})


def test_a_new_validator_joins_the_set_two_epochs_after_it_is_created():
    chain = Chain(make_world())
    events = chain.block(create_validator())  # height 1, epoch 0
    created = [e for e in events if e.kind == "staking.validator_created"]
    assert created and created[0].data["earliest_epoch"] == 2
    assert chain.world.get_agent("alice").electricity < 1_000 - 50  # the bond and the fee
    chain.until(EPOCH - 1)  # the end of epoch 0 computes the set of epoch 2
    assert NEW_KEY.public_key.hex() in dict(chain.world.validator_set(2).validators)
    assert NEW_KEY.public_key.hex() not in dict(chain.world.validator_set(1).validators)
    scheduled = chain.world.events(0, 1000, "staking.validator_set_scheduled")
    assert scheduled[-1].data["added"] == [NEW_KEY.public_key.hex()]


def test_create_validator_refusals_change_nothing():
    chain = Chain(make_world(min_bond=20))
    def stakes():
        return [(r.validator_id, r.bonded, r.bonds, r.jailed) for r in chain.world.validator_records()]

    cases = [
        (create_validator(proof=b"\x00" * 64), "proof"),
        (create_validator(bond=5), "below the minimum bond"),
        (create_validator(bond=10_000), "cannot bond"),
        (create_validator(key=VKEYS[0]), "already exists"),
    ]
    for signed, reason in cases:
        before = stakes()
        events = chain.block(signed)
        assert any(reason in r for r in rejected(events)), (reason, rejected(events))
        assert stakes() == before


def test_unbond_leaves_the_set_and_the_stake_returns_after_the_unbonding_epochs():
    chain = Chain(make_world())
    op = OPS[0]
    events = chain.block(op.sign(Unbond(validator_id=VIDS[0], amount=10)))
    started = [e for e in events if e.kind == "staking.unbonding_started"]
    assert started and started[0].data["release_epoch"] == 1
    balance = chain.world.get_agent(op.agent_id).electricity
    chain.until(EPOCH - 1)
    assert VIDS[0] not in dict(chain.world.validator_set(2).validators)
    assert chain.world.get_agent(op.agent_id).electricity == balance  # not yet: released at the end of epoch 1
    chain.until(2 * EPOCH - 1)
    assert chain.world.get_agent(op.agent_id).electricity == balance + 10
    assert [e.data["amount"] for e in chain.world.events(0, 1000, "staking.unbonded")] == [10]


def test_bond_unbond_refusals():
    chain = Chain(make_world())
    events = chain.block(ALICE.sign(Unbond(validator_id=VIDS[0], amount=1)),
                         ALICE.sign(Bond(validator_id="ab" * 32, amount=1)),
                         ALICE.sign(Bond(validator_id=VIDS[0], amount=5_000)))
    reasons = rejected(events)
    assert len(reasons) == 3
    assert "has 0 bonded" in reasons[0] and "no validator" in reasons[1] and "cannot bond" in reasons[2]
    events = chain.block(ALICE.sign(Bond(validator_id=VIDS[1], amount=30)))  # a delegation
    assert chain.world.validator_record(VIDS[1]).bonds == {"alice": 30, "op-1": 10}
    chain.until(EPOCH - 1)
    assert dict(chain.world.validator_set(2).validators)[VIDS[1]] == 40


def test_max_validators_min_bond_and_power_cap():
    w = make_world(max_validators=2, max_power_percent=40)
    chain = Chain(w)
    chain.block(ALICE.sign(Bond(validator_id=VIDS[2], amount=100)))
    chain.until(EPOCH - 1)
    chosen = dict(w.validator_set(2).validators)
    # the two largest bonds (110, then 10 and 10 tie broken by id); power capped at 40% of 120
    assert len(chosen) == 2 and chosen[VIDS[2]] == 48
    assert min(VIDS[0], VIDS[1]) in chosen


def test_double_sign_evidence_slashes_once_jails_and_unjail_after_the_delay():
    chain = Chain(make_world(slash_double_sign_percent=10, double_sign_jail_heights=6))
    chain.block()
    chain.block()
    events = chain.block(evidence=[(VIDS[0], 2)])  # height 3
    slash = [e for e in events if e.kind == "staking.validator_slashed"]
    assert slash and slash[0].data["burned"] == 1 and slash[0].data["jailed_until"] == 9
    rec = chain.world.validator_record(VIDS[0])
    assert rec.jailed and rec.bonded == 9 and rec.jail_reason == "double_sign"
    assert chain.world.evidence_problem(VIDS[0], 2, 4) is not None  # used once
    events = chain.block(evidence=[(VIDS[0], 1)])  # more of the same spree: recorded, nothing burned
    assert [e.data["burned"] for e in events if e.kind == "staking.validator_slashed"] == [0]
    assert chain.world.validator_record(VIDS[0]).bonded == 9
    chain.until(EPOCH - 1)
    assert VIDS[0] not in dict(chain.world.validator_set(2).validators)
    early = chain.block(OPS[0].sign(Unjail(validator_id=VIDS[0])))
    assert any("jailed until height 9" in r for r in rejected(early))
    assert any("only the validator's operator" in r for r in rejected(chain.block(ALICE.sign(Unjail(validator_id=VIDS[0])))))
    chain.until(8)
    events = chain.block(OPS[0].sign(Unjail(validator_id=VIDS[0])))  # height 9
    assert [e.kind for e in events if e.kind.startswith("staking.")] == ["staking.validator_unjailed"]
    chain.until(4 * EPOCH - 1)
    assert VIDS[0] in dict(chain.world.validator_set(5).validators)


def test_evidence_problems():
    w = make_world(evidence_max_age_heights=3)
    chain = Chain(w)
    chain.until(6)
    assert "older than" in w.evidence_problem(VIDS[0], 2, 7)
    assert "not below" in w.evidence_problem(VIDS[0], 7, 7)
    assert "not in the validator set" in w.evidence_problem(NEW_KEY.public_key.hex(), 5, 7)
    assert w.evidence_problem(VIDS[0], 5, 7) is None


def test_downtime_jails_without_a_slash():
    chain = Chain(make_world(downtime_min_signed_percent=50, downtime_jail_heights=5))
    chain.signers = VIDS[1:3]  # VIDS[0] signs no commit of epoch 0
    chain.until(EPOCH - 1)
    rec = chain.world.validator_record(VIDS[0])
    assert rec.jailed and rec.jail_reason == "downtime" and rec.slashed == 0 and rec.bonded == 10
    jailed = chain.world.events(0, 1000, "staking.validator_jailed")
    assert [e.data["validator_id"] for e in jailed] == [VIDS[0]]
    assert VIDS[0] not in dict(chain.world.validator_set(2).validators)
    assert all(not chain.world.validator_record(v).jailed for v in VIDS[1:3])


def test_staking_state_survives_save_and_load(tmp_path):
    chain = Chain(make_world())
    chain.block(create_validator(), OPS[1].sign(Unbond(validator_id=VIDS[1], amount=4)))
    chain.until(EPOCH)
    chain.world.save_to_dir(tmp_path / "w")
    loaded = World.load_from_dir(tmp_path / "w")
    assert loaded.state_root() == chain.world.state_root()
    assert loaded.validator_records() == chain.world.validator_records()
    assert loaded.validator_set(2) == chain.world.validator_set(2)
    restored = World.restore_snapshot(chain.world.create_snapshot())
    assert restored.state_root() == chain.world.state_root() and restored.records("unbonding")


def test_unbondings_are_kept_per_agent_and_validator_and_bounded():
    chain = Chain(make_world(max_unbonding_entries=2))
    op = OPS[0]
    events = chain.block(*(op.sign(Unbond(validator_id=VIDS[0], amount=1)) for _ in range(3)),
                         OPS[1].sign(Unbond(validator_id=VIDS[1], amount=1)))
    reasons = rejected(events)
    assert len(reasons) == 1 and "max_unbonding_entries" in reasons[0]
    records = chain.world.records("unbonding")
    assert sorted(records) == [f"1/op-0/{VIDS[0]}", f"1/op-1/{VIDS[1]}"]
    assert [e.amount for e in records[f"1/op-0/{VIDS[0]}"].entries] == [1, 1]
    chain.until(2 * EPOCH - 1)
    assert chain.world.records("unbonding") == {}
    assert sorted(e.data["agent_id"] for e in chain.world.events(0, 100, "staking.unbonded")) == ["op-0", "op-0", "op-1"]
