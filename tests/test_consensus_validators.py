"""Validator sets: stake thresholds, genesis loading, epochs, and the epoch-boundary hook."""

from __future__ import annotations

import pytest

from agent_world_node.config import Genesis, GenesisValidator
from agent_world_node.consensus import Validator, ValidatorSet, ValidatorSetError
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.staking.sets import epoch_of


def key(i: int) -> SigningKey:
    return SigningKey(bytes([i]) * 32)


def vset(*stakes: int) -> ValidatorSet:
    return ValidatorSet(Validator.from_public_key(key(i + 1).public_key, s, f"v{i}") for i, s in enumerate(stakes))


@pytest.mark.parametrize(
    "stakes, quorum, f_plus_one",
    [
        ((1, 1, 1, 1), 3, 2),  # n = 3f + 1 with f = 1
        ((1, 1, 1), 3, 2),  # 2 of 3 is not more than 2/3
        ((1, 1, 1, 1, 1, 1), 5, 3),  # 4 of 6 is exactly 2/3: not enough
        ((10, 1, 1, 1), 9, 5),
        ((7,), 5, 3),
    ],
)
def test_thresholds_are_more_than_two_thirds_and_one_third_of_stake(stakes, quorum, f_plus_one):
    s = vset(*stakes)
    assert (s.total_stake, s.quorum, s.f_plus_one) == (sum(stakes), quorum, f_plus_one)
    assert 3 * s.quorum > 2 * s.total_stake and 3 * (s.quorum - 1) <= 2 * s.total_stake
    assert 3 * s.f_plus_one > s.total_stake and 3 * (s.f_plus_one - 1) <= s.total_stake
    assert s.has_quorum(quorum) and not s.has_quorum(quorum - 1)
    assert s.has_f_plus_one(f_plus_one) and not s.has_f_plus_one(f_plus_one - 1)


def test_lookup_and_order():
    s = vset(3, 1, 2)
    assert s.ids() == sorted(s.ids())
    v = s.validators[0]
    assert s.get(v.id) is v and v.id in s and s.stake_of(v.id) == v.stake
    assert s.get("ff" * 32) is None and s.stake_of("ff" * 32) == 0
    assert len(s) == 3 and list(s) == list(s.validators)
    assert vset(3, 1, 2) == s and hash(vset(3, 1, 2)) == hash(s) and vset(3, 1, 1) != s


def test_malformed_validators_are_rejected_with_the_reason():
    pk = key(1).public_key
    with pytest.raises(ValidatorSetError, match="stake 0 must be a positive integer"):
        Validator.from_public_key(pk, 0)
    with pytest.raises(ValidatorSetError, match="public key is 3 bytes"):
        Validator("abcdef", b"abc", 1)
    with pytest.raises(ValidatorSetError, match="lowercase hex of its public key"):
        Validator(pk.hex().upper(), pk, 1)
    with pytest.raises(ValidatorSetError, match="appears twice"):
        ValidatorSet([Validator.from_public_key(pk, 1), Validator.from_public_key(pk, 2)])
    with pytest.raises(ValidatorSetError, match="at least one validator"):
        ValidatorSet([])


def test_from_genesis():
    genesis = Genesis(
        chain_id="c",
        genesis_time_ms=0,
        validators=[
            GenesisValidator("alice", key(1).public_key.hex(), 5),
            GenesisValidator("bob", key(2).public_key.hex(), 2),
        ],
    )
    s = ValidatorSet.from_genesis(genesis)
    assert s.total_stake == 7
    assert s.get(key(1).public_key.hex()).name == "alice"
    assert s.get(key(2).public_key.hex()).public_key == key(2).public_key
    bad = Genesis(chain_id="c", genesis_time_ms=0, validators=[GenesisValidator("eve", "zz", 1)])
    with pytest.raises(ValidatorSetError, match="eve.*not hex"):
        ValidatorSet.from_genesis(bad)


def test_epoch_of():
    assert [epoch_of(h, 10) for h in (0, 9, 10, 25)] == [0, 0, 1, 2]
    with pytest.raises(ValueError):
        epoch_of(5, 0)
    with pytest.raises(ValueError):
        epoch_of(-1, 10)
