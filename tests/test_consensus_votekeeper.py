"""VoteKeeper: stake tallies, threshold events reported once, duplicates, equivocation evidence."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_world_node.consensus import (
    AddVoteStatus,
    DuplicateVoteEvidence,
    ThresholdEvent,
    ThresholdKind,
    Validator,
    ValidatorSet,
    VoteKeeper,
)
from agent_world_node.types import VOTE_SIGN_DOMAIN, Vote, VoteType
from agent_world_runtime.crypto import SigningKey

CHAIN = "vk-chain"
KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
PREVOTE, PRECOMMIT = VoteType.PREVOTE, VoteType.PRECOMMIT
A, B = b"\xaa" * 32, b"\xbb" * 32
K = ThresholdKind


def vset(*stakes: int) -> ValidatorSet:
    return ValidatorSet(Validator.from_public_key(k.public_key, s) for k, s in zip(KEYS[: len(stakes)], stakes, strict=True))


def vote(i: int, vote_type: VoteType, round: int, value: bytes | None, height: int = 1) -> Vote:
    unsigned = Vote(vote_type, height, round, value, KEYS[i].public_key.hex(), b"")
    return msgspec.structs.replace(unsigned, signature=KEYS[i].sign(VOTE_SIGN_DOMAIN, unsigned.sign_bytes(CHAIN)))


def events(keeper: VoteKeeper, *votes: Vote) -> list[ThresholdEvent]:
    out = []
    for v in votes:
        out += keeper.add_vote(v).events
    return out


def test_polka_for_value_and_polka_any_are_reported_once():
    keeper = VoteKeeper(1, vset(1, 1, 1, 1))
    assert events(keeper, vote(0, PREVOTE, 0, A)) == []
    # 2 votes in round 0: f+1 voters (reported as a skip candidate, the core checks round > its own).
    assert events(keeper, vote(1, PREVOTE, 0, A)) == [ThresholdEvent(K.SKIP_ROUND, 0)]
    assert events(keeper, vote(2, PREVOTE, 0, A)) == [
        ThresholdEvent(K.POLKA_VALUE, 0, A),
        ThresholdEvent(K.POLKA_ANY, 0),
    ]
    assert events(keeper, vote(3, PREVOTE, 0, A)) == []  # already reported
    assert keeper.polka_value(0) == A and keeper.has_polka_any(0) and not keeper.has_polka_nil(0)
    assert keeper.stake_for(0, PREVOTE, A) == 4


def test_polka_nil_and_mixed_polka_any():
    keeper = VoteKeeper(1, vset(1, 1, 1, 1))
    evs = events(keeper, vote(0, PREVOTE, 0, None), vote(1, PREVOTE, 0, A), vote(2, PREVOTE, 0, None))
    assert ThresholdEvent(K.POLKA_ANY, 0) in evs and not keeper.has_polka_nil(0) and keeper.polka_value(0) is None
    assert events(keeper, vote(3, PREVOTE, 0, None)) == [ThresholdEvent(K.POLKA_NIL, 0)]


def test_precommit_quorum_and_precommit_any():
    keeper = VoteKeeper(1, vset(1, 1, 1, 1))
    evs = events(keeper, vote(0, PRECOMMIT, 2, B), vote(1, PRECOMMIT, 2, B), vote(2, PRECOMMIT, 2, B))
    assert ThresholdEvent(K.PRECOMMIT_VALUE, 2, B) in evs and ThresholdEvent(K.PRECOMMIT_ANY, 2) in evs
    assert keeper.precommit_value(2) == B and keeper.precommit_quorums() == [(2, B)]
    assert [v.validator for v in keeper.votes_for(2, PRECOMMIT, B)] == sorted(k.public_key.hex() for k in KEYS[:3])


def test_thresholds_are_by_stake_not_by_count():
    keeper = VoteKeeper(1, vset(7, 1, 1, 1))  # total 10: quorum 7, f+1 4
    assert events(keeper, vote(0, PREVOTE, 0, A)) == [
        ThresholdEvent(K.POLKA_VALUE, 0, A),
        ThresholdEvent(K.POLKA_ANY, 0),
        ThresholdEvent(K.SKIP_ROUND, 0),
    ]
    keeper = VoteKeeper(1, vset(7, 1, 1, 1))
    assert events(keeper, *(vote(i, PREVOTE, 0, A) for i in (1, 2, 3))) == []


def test_skip_round_counts_distinct_validators_across_vote_types():
    keeper = VoteKeeper(1, vset(1, 1, 1, 1))
    assert events(keeper, vote(0, PREVOTE, 4, None), vote(0, PRECOMMIT, 4, None)) == []
    assert keeper.highest_skip_round() == -1
    assert events(keeper, vote(1, PRECOMMIT, 4, None)) == [ThresholdEvent(K.SKIP_ROUND, 4)]
    events(keeper, vote(2, PREVOTE, 2, None), vote(3, PREVOTE, 2, None))
    assert keeper.highest_skip_round() == 4


def test_duplicate_is_ignored():
    keeper = VoteKeeper(1, vset(1, 1, 1, 1))
    v = vote(0, PREVOTE, 0, A)
    assert keeper.add_vote(v).status == AddVoteStatus.ADDED
    assert keeper.add_vote(v).status == AddVoteStatus.DUPLICATE
    assert keeper.stake_any(0, PREVOTE) == 1


def test_equivocation_is_evidence_and_never_overwrites_the_first_vote():
    keeper = VoteKeeper(1, vset(1, 1, 1, 1))
    first, second, third = vote(0, PREVOTE, 0, A), vote(0, PREVOTE, 0, B), vote(0, PREVOTE, 0, None)
    keeper.add_vote(first)
    result = keeper.add_vote(second)
    assert result.status == AddVoteStatus.EQUIVOCATION
    assert result.evidence == DuplicateVoteEvidence(first=first, second=second)
    assert keeper.vote_of(KEYS[0].public_key.hex(), 0, PREVOTE) == first
    # One piece of evidence per validator and step, however many more conflicting votes come.
    assert keeper.add_vote(third).evidence is None
    assert keeper.add_vote(second).status == AddVoteStatus.DUPLICATE
    assert keeper.evidence() == [result.evidence]
    # "any" counts the validator once; each value it signed counts it once.
    assert keeper.stake_any(0, PREVOTE) == 1
    assert [keeper.stake_for(0, PREVOTE, x) for x in (A, B, None)] == [1, 1, 1]
    # A prevote and a precommit for different values are not equivocation.
    assert keeper.add_vote(vote(0, PRECOMMIT, 0, None)).status == AddVoteStatus.ADDED


def test_conflicting_votes_are_capped_per_validator_and_step():
    keeper = VoteKeeper(1, vset(1, 1, 1, 1), max_conflicting_values=1)
    keeper.add_vote(vote(0, PREVOTE, 0, A))
    assert keeper.add_vote(vote(0, PREVOTE, 0, B)).counted
    late = keeper.add_vote(vote(0, PREVOTE, 0, None))
    assert late.status == AddVoteStatus.EQUIVOCATION and not late.counted
    assert keeper.stake_for(0, PREVOTE, None) == 0
    assert len(keeper.all_votes()) == 2


def test_equivocator_cannot_hide_a_polka_from_a_node_that_saw_its_other_vote_first():
    # Validator 0 (Byzantine) sends B to this node first and A to the others; with its A vote
    # relayed here, this node sees the same polka for A that the others saw.
    keeper = VoteKeeper(1, vset(1, 1, 1, 1))
    events(keeper, vote(0, PREVOTE, 0, B), vote(1, PREVOTE, 0, A), vote(2, PREVOTE, 0, None))
    assert keeper.polka_value(0) is None
    evs = events(keeper, vote(0, PREVOTE, 0, A), vote(3, PREVOTE, 0, A))
    assert ThresholdEvent(K.POLKA_VALUE, 0, A) in evs
    assert [v.validator for v in keeper.votes_for(0, PREVOTE, A)] == sorted(
        KEYS[i].public_key.hex() for i in (0, 1, 3)
    )


def test_wrong_height_or_unknown_validator_is_a_caller_error():
    keeper = VoteKeeper(1, vset(1, 1, 1))
    with pytest.raises(ValueError, match="height 2"):
        keeper.add_vote(vote(0, PREVOTE, 0, A, height=2))
    with pytest.raises(ValueError, match="not in the validator set"):
        keeper.add_vote(vote(3, PREVOTE, 0, A))


@settings(max_examples=60, deadline=None)
@given(
    stakes=st.lists(st.integers(1, 20), min_size=4, max_size=4),
    votes=st.lists(st.tuples(st.integers(0, 3), st.sampled_from([A, B, None])), max_size=12),
)
def test_tallies_match_a_recount_and_each_event_is_reported_once(stakes, votes):
    s = vset(*stakes)
    keeper = VoteKeeper(1, s)
    seen: list[ThresholdEvent] = []
    first: dict[int, bytes | None] = {}
    signed: dict[int, set] = {}
    for i, value in votes:
        seen += keeper.add_vote(vote(i, PREVOTE, 0, value)).events
        first.setdefault(i, value)
        signed.setdefault(i, set()).add(value)
    assert len(seen) == len(set(seen))
    stake = {i: s.stake_of(KEYS[i].public_key.hex()) for i in first}
    assert keeper.stake_any(0, PREVOTE) == sum(stake.values())
    for value in (A, B, None):
        # Each validator counts once for every value it signed (up to the cap of 2 extra values).
        assert keeper.stake_for(0, PREVOTE, value) == sum(stake[i] for i in signed if value in signed[i])
    polka = next((e.value for e in seen if e.kind == K.POLKA_VALUE), None)
    assert keeper.polka_value(0) == polka
    if polka is not None:
        assert keeper.stake_for(0, PREVOTE, polka) >= s.quorum
    assert (ThresholdEvent(K.POLKA_ANY, 0) in seen) == (sum(stake.values()) >= s.quorum)
