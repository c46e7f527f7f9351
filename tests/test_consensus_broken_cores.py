"""The test-only broken cores (tests/broken_cores.py) really are broken, each in a minimal hand-built
situation where the real ``ConsensusCore`` behaves correctly; so a simulator property test that
catches them is meaningful."""

from __future__ import annotations

import msgspec
import pytest

from agent_world_node.consensus import (
    ConsensusCore,
    Decide,
    InvalidCertificate,
    ProposalReceived,
    TimeoutFired,
    Validator,
    ValidatorSet,
    VoteReceived,
    proposer_for,
    verify_commit_certificate,
)
from agent_world_runtime.crypto import SigningKey

from .broken_cores import (
    BROKEN_CORES,
    AcceptsUnsignedVotesCore,
    HalfThresholdCore,
    NoLockingCore,
    half_threshold,
)
from .test_consensus_core import (
    CHAIN,
    KEYS,
    ME,
    PRECOMMIT,
    PREVOTE,
    TIMEOUTS,
    VSET,
    feed_votes,
    go_to_round,
    height_where,
    lock_on,
    make_block,
    proposal,
    proposer_key,
    sent_votes,
    vote,
)
from .validity_oracle import with_validity


def both(factory, vset: ValidatorSet = VSET, key: SigningKey = ME) -> tuple[ConsensusCore, ConsensusCore]:
    """A real core and a broken one, built the same way (positional ConsensusCore arguments)."""
    return (
        with_validity(ConsensusCore(CHAIN, vset, key, TIMEOUTS)),
        with_validity(factory(CHAIN, vset, key, TIMEOUTS)),
    )


def decisions(effects) -> list[Decide]:
    return [e for e in effects if isinstance(e, Decide)]


def test_registry_names_and_factories():
    assert set(BROKEN_CORES) == {"no_locking", "half_threshold", "accepts_unsigned_votes"}
    for name, factory in BROKEN_CORES.items():
        core = factory(CHAIN, VSET, ME, TIMEOUTS)
        assert isinstance(core, ConsensusCore) and type(core) is not ConsensusCore, name
        assert core.start_height(1)  # it runs like a core


# -- no_locking ---------------------------------------------------------------------------------------


def test_no_locking_prevotes_a_new_value_while_locked():
    h = height_where(set())
    v = make_block(h, proposer_key(h, 0), b"v")
    w = make_block(h, proposer_key(h, 1), b"w")
    real, broken = both(NoLockingCore)
    prevotes = []
    for core in (real, broken):
        core.start_height(h)
        lock_on(core, h, v)
        assert (core.locked_round, core.locked_hash) == (0, v.hash())
        core.handle(TimeoutFired("precommit", h, 0))
        [pv] = sent_votes(core.handle(ProposalReceived(proposal(proposer_key(h, 1), h, 1, w))))
        prevotes.append(pv.block_hash)
    assert prevotes == [None, w.hash()]  # the real core keeps its lock; the broken one does not


def test_no_locking_accepts_a_proof_of_lock_older_than_its_lock():
    h = height_where(set())
    w = make_block(h, proposer_key(h, 0), b"w")
    v = make_block(h, proposer_key(h, 1), b"v")
    real, broken = both(NoLockingCore)
    prevotes = []
    for core in (real, broken):
        core.start_height(h)
        go_to_round(core, h, 1)
        feed_votes(core, KEYS[1:4], PREVOTE, h, 0, w.hash())  # polka for w in round 0
        core.handle(ProposalReceived(proposal(proposer_key(h, 1), h, 1, v)))
        feed_votes(core, KEYS[1:3], PREVOTE, h, 1, v.hash())  # lock on v in round 1
        assert core.locked_round == 1
        core.handle(TimeoutFired("precommit", h, 1))
        [pv] = sent_votes(core.handle(ProposalReceived(proposal(proposer_key(h, 2), h, 2, w, pol_round=0))))
        prevotes.append(pv.block_hash)
    assert prevotes == [None, w.hash()]


def test_no_locking_still_needs_the_claimed_proof_of_lock():
    h = height_where(set())
    w = make_block(h, proposer_key(h, 1), b"w")
    broken = NoLockingCore(CHAIN, VSET, ME, TIMEOUTS)
    broken.start_height(h)
    go_to_round(broken, h, 2)
    # vr = 1 but no polka for w in round 1: it waits, as the real core does (only the lock is broken).
    assert sent_votes(broken.handle(ProposalReceived(proposal(proposer_key(h, 2), h, 2, w, pol_round=1)))) == []


# -- half_threshold --------------------------------------------------------------------------------------

KEYS5 = [SigningKey(bytes([i + 1]) * 32) for i in range(5)]
VSET5 = ValidatorSet(Validator.from_public_key(k.public_key, 1, f"v{i}") for i, k in enumerate(KEYS5))
BY_ID5 = {k.public_key.hex(): k for k in KEYS5}


def test_half_threshold_differs_from_the_real_quorum_except_for_tiny_totals():
    assert VSET5.quorum == 4 and half_threshold(5) == 3
    assert [t for t in range(1, 40) if half_threshold(t) == (2 * t) // 3 + 1] == [1, 2, 4]


def test_half_threshold_decides_with_three_of_five_precommits():
    # ME (KEYS5[0]) is an observer here so that only the three precommits below count.
    h = 3
    key = BY_ID5[proposer_for(VSET5, h, 0)]
    block = make_block(h, key)
    real, broken = both(HalfThresholdCore, VSET5, key=None)  # type: ignore[arg-type]
    outcomes = []
    for core in (real, broken):
        core.start_height(h)
        core.handle(ProposalReceived(proposal(key, h, 0, block)))
        effects = feed_votes(core, KEYS5[1:4], PRECOMMIT, h, 0, block.hash())  # 3 of 5 stake
        outcomes.append(decisions(effects))
    assert outcomes[0] == [] and real.decision is None
    [decide] = outcomes[1]
    assert decide.block == block and broken.decision == block
    # Its certificate holds 3 of 5, which is not more than 2/3: every honest node would refuse it.
    with pytest.raises(InvalidCertificate, match="not more than 2/3"):
        verify_commit_certificate(decide.certificate, block.hash(), CHAIN, VSET5, height=h)


def test_half_threshold_locks_on_a_polka_of_three_of_five():
    h = 3
    key = BY_ID5[proposer_for(VSET5, h, 0)]
    me = next(k for k in KEYS5 if k is not key)
    others = [k for k in KEYS5 if k not in (key, me)][:2]
    block = make_block(h, key)
    real, broken = both(HalfThresholdCore, VSET5, key=me)
    for core in (real, broken):
        core.start_height(h)
        core.handle(ProposalReceived(proposal(key, h, 0, block)))  # our prevote: 1
        feed_votes(core, others, PREVOTE, h, 0, block.hash())  # 3 of 5 prevotes for the block
    assert real.locked_round == -1
    assert (broken.locked_round, broken.locked_hash) == (0, block.hash())


# -- accepts_unsigned_votes -------------------------------------------------------------------------------


def unsigned(key: SigningKey, vote_type, height: int, round: int, block_hash) -> object:
    return msgspec.structs.replace(vote(key, vote_type, height, round, block_hash), signature=b"")


def test_accepts_unsigned_votes_counts_missing_and_forged_signatures():
    h = height_where(set())
    real, broken = both(AcceptsUnsignedVotesCore)
    for core in (real, broken):
        core.start_height(h)
        core.handle(VoteReceived(unsigned(KEYS[1], PREVOTE, h, 0, None)))
        forged = msgspec.structs.replace(vote(KEYS[2], PREVOTE, h, 0, None), signature=b"\x01" * 64)
        core.handle(VoteReceived(forged))
    assert real._keeper.stake_any(0, PREVOTE) == 0 and real.rejected["bad_signature"] == 2
    assert broken._keeper.stake_any(0, PREVOTE) == 2 and broken.rejected["bad_signature"] == 0


def test_accepts_unsigned_votes_still_rejects_unknown_validators():
    h = height_where(set())
    broken = AcceptsUnsignedVotesCore(CHAIN, VSET, ME, TIMEOUTS)
    broken.start_height(h)
    stranger = SigningKey(b"\x99" * 32)
    assert broken.handle(VoteReceived(unsigned(stranger, PREVOTE, h, 0, None))) == []
    assert broken.rejected["unknown_validator"] == 1
    assert broken._keeper.stake_any(0, PREVOTE) == 0


def test_accepts_unsigned_votes_decides_on_forged_precommits():
    h = height_where(set())
    key = proposer_key(h, 0)
    block = make_block(h, key)
    real, broken = both(AcceptsUnsignedVotesCore)
    outcomes = []
    for core in (real, broken):
        core.start_height(h)
        core.handle(ProposalReceived(proposal(key, h, 0, block)))
        effects = []
        for k in KEYS[1:4]:  # nobody signed these
            effects += core.handle(VoteReceived(unsigned(k, PRECOMMIT, h, 0, block.hash())))
        outcomes.append(decisions(effects))
    assert outcomes[0] == [] and real.decision is None
    assert [d.block for d in outcomes[1]] == [block]
    with pytest.raises(InvalidCertificate, match="bad precommit signature"):
        verify_commit_certificate(outcomes[1][0].certificate, block.hash(), CHAIN, VSET, height=h)


def test_accepts_unsigned_votes_buffers_unsigned_future_votes():
    real, broken = both(AcceptsUnsignedVotesCore)
    for core in (real, broken):
        core.start_height(1)
        core.handle(VoteReceived(unsigned(KEYS[1], PREVOTE, 2, 0, None)))
        core.start_height(2)
    assert real._keeper.stake_any(0, PREVOTE) == 0
    assert broken._keeper.stake_any(0, PREVOTE) == 1
