"""Proposer selection: deterministic from (height, round), rotating within a height, stake-weighted."""

from __future__ import annotations

from collections import Counter

import pytest

from agent_world_node.consensus import Validator, ValidatorSet, proposer_for, proposer_order
from agent_world_runtime.crypto import SigningKey


def vset(*stakes: int) -> ValidatorSet:
    return ValidatorSet(
        Validator.from_public_key(SigningKey(bytes([i + 1]) * 32).public_key, s, f"v{i}") for i, s in enumerate(stakes)
    )


def test_deterministic_and_independent_of_input_order():
    a = vset(3, 1, 2, 5)
    b = ValidatorSet(reversed(a.validators))
    for h in range(1, 50):
        for r in range(6):
            assert proposer_for(a, h, r) == proposer_for(b, h, r)
    # Pinned values: the formula must not drift, or nodes of different versions would disagree.
    names = {v.id: v.name for v in a}
    assert [names[x] for x in proposer_order(a, 1)] == ["v3", "v0", "v1", "v2"]
    assert [names[proposer_for(a, h, 0)] for h in range(1, 9)] == ["v3", "v2", "v3", "v0", "v2", "v1", "v0", "v0"]


def test_every_validator_proposes_once_in_n_rounds():
    s = vset(10, 1, 1, 3, 7)
    for h in range(1, 200):
        order = [proposer_for(s, h, r) for r in range(len(s))]
        assert sorted(order) == sorted(s.ids())
        assert proposer_for(s, h, len(s) + 2) == order[2]


def test_round_zero_frequency_is_proportional_to_stake():
    stakes = (1, 2, 3, 6)
    s = vset(*stakes)
    heights = 12_000
    counts = Counter(proposer_for(s, h, 0) for h in range(1, heights + 1))
    total = sum(stakes)
    for v in s.validators:
        expected = heights * v.stake / total
        # Binomial std dev is at most sqrt(heights)/2 ~ 55; allow 5 sigma.
        assert abs(counts[v.id] - expected) < 5 * (heights * 0.25) ** 0.5, (v.name, counts[v.id], expected)


def test_height_and_round_changes_the_draw():
    s = vset(1, 1, 1, 1, 1, 1, 1, 1)
    assert len({proposer_for(s, h, 0) for h in range(1, 60)}) == len(s)


def test_single_validator_always_proposes():
    s = vset(5)
    assert {proposer_for(s, h, r) for h in range(1, 20) for r in range(3)} == {s.validators[0].id}


def test_bad_arguments():
    s = vset(1, 1)
    with pytest.raises(ValueError, match="round"):
        proposer_for(s, 1, -1)
    with pytest.raises(ValueError, match="height"):
        proposer_for(s, -1, 0)
