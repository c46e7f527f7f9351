"""Unit tests of ConsensusCore, one per transition of Algorithm 1 (Buchman, Kwon, Milosevic 2018).

Four validators of stake 1 each: quorum (2f+1) is 3, f+1 is 2. The core under test is validator ME
unless a test says otherwise; the other validators' messages are signed here by hand.
"""

from __future__ import annotations

import msgspec
import pytest

from agent_world_node.consensus import (
    BlockValidity,
    Broadcast,
    ConsensusCore,
    Decide,
    DuplicateProposalEvidence,
    DuplicateVoteEvidence,
    EvidenceFound,
    GetValue,
    PersistWAL,
    ProposalReceived,
    ScheduleTimeout,
    Step,
    TimeoutConfig,
    TimeoutFired,
    ValidateBlock,
    Validator,
    ValidatorSet,
    ValueToPropose,
    VoteReceived,
    proposer_for,
    verify_commit_certificate,
    verify_evidence,
)
from agent_world_node.types import (
    PROPOSAL_SIGN_DOMAIN,
    VOTE_SIGN_DOMAIN,
    ZERO_HASH,
    Block,
    BlockHeader,
    NodeConsensusAction,
    Proposal,
    Vote,
    VoteType,
    compute_consensus_action_root,
)
from agent_world_runtime.crypto import SigningKey, sha256

from .validity_oracle import with_validity

CHAIN = "test-chain"
KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
ME = KEYS[0]
VSET = ValidatorSet(Validator.from_public_key(k.public_key, 1, f"v{i}") for i, k in enumerate(KEYS))
BY_ID = {k.public_key.hex(): k for k in KEYS}
OTHERS = KEYS[1:]
TIMEOUTS = TimeoutConfig(
    propose_ms=1000,
    propose_delta_ms=100,
    prevote_ms=500,
    prevote_delta_ms=50,
    precommit_ms=400,
    precommit_delta_ms=40,
    commit_ms=0,
)
PREVOTE, PRECOMMIT = VoteType.PREVOTE, VoteType.PRECOMMIT


# -- helpers ----------------------------------------------------------------------------------------


def proposer_key(height: int, round: int) -> SigningKey:
    return BY_ID[proposer_for(VSET, height, round)]


def height_where(me_proposes: set[int], rounds: int = 3, start: int = 2) -> int:
    """The first height >= ``start`` at which ME proposes exactly the rounds in ``me_proposes``
    among rounds 0..rounds-1 (with 4 validators the proposer rotates through all of them every 4
    rounds, so ``height_where(set())`` is a height where ME proposes round 3)."""
    for h in range(start, 500):
        mine = {r for r in range(rounds) if proposer_for(VSET, h, r) == ME.public_key.hex()}
        if mine == me_proposes:
            return h
    raise AssertionError("no such height")


def make_block(height: int, proposer: SigningKey, salt: bytes = b"a", round: int = 0) -> Block:
    payload = b"action-" + salt
    actions = [NodeConsensusAction(sha256(payload), "agent-1", payload, sha256(payload))]
    header = BlockHeader(
        chain_id=CHAIN,
        height=height,
        round=round,
        epoch=0,
        proposer=proposer.public_key.hex(),
        prev_block_hash=ZERO_HASH,
        action_root=compute_consensus_action_root(actions),
        action_count=len(actions),
        last_execution_height=height - 1,
        last_execution_block_hash=ZERO_HASH,
        last_execution_state_root=ZERO_HASH,
        timestamp_ms=1_700_000_000_000,
    )
    return Block(header, actions)


def vote(key: SigningKey, vote_type: VoteType, height: int, round: int, block_hash: bytes | None) -> Vote:
    unsigned = Vote(vote_type, height, round, block_hash, key.public_key.hex(), b"")
    return msgspec.structs.replace(unsigned, signature=key.sign(VOTE_SIGN_DOMAIN, unsigned.sign_bytes(CHAIN)))


def proposal(key: SigningKey, height: int, round: int, block: Block, pol_round: int = -1) -> Proposal:
    unsigned = Proposal(height, round, pol_round, block, key.public_key.hex(), b"")
    return msgspec.structs.replace(
        unsigned, signature=key.sign(PROPOSAL_SIGN_DOMAIN, unsigned.sign_bytes(CHAIN))
    )


def new_core(key: SigningKey | None = ME, validate=None, **kw) -> ConsensusCore:
    """A core whose valid(v) questions are answered by ``validate`` (default: valid)."""
    return with_validity(ConsensusCore(CHAIN, VSET, key, TIMEOUTS, **kw), validate)


def sent_votes(effects) -> list[Vote]:
    return [e.message for e in effects if isinstance(e, Broadcast) and isinstance(e.message, Vote)]


def sent_proposals(effects) -> list[Proposal]:
    return [e.message for e in effects if isinstance(e, Broadcast) and isinstance(e.message, Proposal)]


def timeouts(effects) -> list[ScheduleTimeout]:
    return [e for e in effects if isinstance(e, ScheduleTimeout)]


def feed_votes(core: ConsensusCore, keys, vote_type, height, round, block_hash) -> list:
    effects = []
    for k in keys:
        effects += core.handle(VoteReceived(vote(k, vote_type, height, round, block_hash)))
    return effects


def assert_wal_before_broadcast(effects) -> None:
    persisted = []
    for e in effects:
        if isinstance(e, PersistWAL):
            persisted.append(e.entry)
        elif isinstance(e, Broadcast) and e.message.validator == ME.public_key.hex():
            assert e.message in persisted, f"{e.message} broadcast before it was persisted"


# -- StartRound (L11-L21) ----------------------------------------------------------------------------


def test_start_height_non_proposer_schedules_propose_timeout_only():
    h = height_where(set())
    core = new_core()
    effects = core.start_height(h)
    assert (core.height, core.round, core.step) == (h, 0, Step.PROPOSE)
    assert effects == [ScheduleTimeout("propose", h, 0, 1000)]


def test_start_height_proposer_asks_for_a_value_and_proposes_it():
    h = height_where({0})
    core = new_core()
    effects = core.start_height(h)
    assert GetValue(h, 0) in effects
    block = make_block(h, ME)
    effects = core.handle(ValueToPropose(h, 0, block))
    assert_wal_before_broadcast(effects)
    [p] = sent_proposals(effects)
    assert (p.height, p.round, p.pol_round, p.block) == (h, 0, -1, block)
    # L22: our own proposal makes us prevote for it at once.
    [pv] = sent_votes(effects)
    assert (pv.vote_type, pv.block_hash) == (PREVOTE, block.hash())
    assert core.step == Step.PREVOTE
    # A second answer for the same round never makes a second proposal.
    assert core.handle(ValueToPropose(h, 0, make_block(h, ME, b"other"))) == []


def test_value_to_propose_for_another_round_is_ignored_and_bad_block_is_an_error():
    h = height_where({0})
    core = new_core()
    core.start_height(h)
    assert core.handle(ValueToPropose(h, 1, make_block(h, ME))) == []
    with pytest.raises(ValueError, match="does not fit height"):
        core.handle(ValueToPropose(h, 0, make_block(h + 1, ME)))


def test_start_height_must_grow():
    core = new_core()
    core.start_height(5)
    with pytest.raises(ValueError, match="already at height 5"):
        core.start_height(5)


# -- message checks ------------------------------------------------------------------------------------


def test_proposal_from_wrong_proposer_is_ignored():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    wrong = next(k for k in OTHERS if k is not proposer_key(h, 0))
    assert core.handle(ProposalReceived(proposal(wrong, h, 0, make_block(h, wrong)))) == []
    assert core.rejected["wrong_proposer"] == 1
    assert core.step == Step.PROPOSE


def test_proposal_with_bad_signature_is_ignored():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    good = proposal(proposer_key(h, 0), h, 0, make_block(h, proposer_key(h, 0)))
    forged = msgspec.structs.replace(good, signature=bytes(64))
    assert core.handle(ProposalReceived(forged)) == []
    assert core.rejected["bad_signature"] == 1
    # The genuine one still counts afterwards.
    assert sent_votes(core.handle(ProposalReceived(good)))[0].block_hash == good.block.hash()


def test_proposal_signed_for_another_chain_is_ignored():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    key = proposer_key(h, 0)
    unsigned = Proposal(h, 0, -1, make_block(h, key), key.public_key.hex(), b"")
    other_chain = msgspec.structs.replace(
        unsigned, signature=key.sign(PROPOSAL_SIGN_DOMAIN, unsigned.sign_bytes("other-chain"))
    )
    assert core.handle(ProposalReceived(other_chain)) == []
    assert core.rejected["bad_signature"] == 1


def test_proposal_whose_block_does_not_match_its_actions_is_ignored():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    key = proposer_key(h, 0)
    block = make_block(h, key)
    tampered = msgspec.structs.replace(block, actions=[])
    assert core.handle(ProposalReceived(proposal(key, h, 0, tampered))) == []
    assert core.rejected["bad_block"] == 1


def test_proposal_with_pol_round_not_below_its_round_is_ignored():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    key = proposer_key(h, 0)
    assert core.handle(ProposalReceived(proposal(key, h, 0, make_block(h, key), pol_round=0))) == []
    assert core.rejected["bad_pol_round"] == 1


def test_votes_from_unknown_validators_or_with_bad_signatures_or_hashes_are_ignored():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    stranger = SigningKey(b"\x99" * 32)
    assert core.handle(VoteReceived(vote(stranger, PREVOTE, h, 0, None))) == []
    bad_sig = msgspec.structs.replace(vote(KEYS[1], PREVOTE, h, 0, None), signature=b"\x01" * 64)
    assert core.handle(VoteReceived(bad_sig)) == []
    assert core.handle(VoteReceived(vote(KEYS[1], PREVOTE, h, 0, b"short"))) == []
    assert core.handle(VoteReceived(vote(KEYS[1], PREVOTE, h, -1, None))) == []
    assert core.rejected_counts() == {
        "unknown_validator": 1,
        "bad_signature": 1,
        "bad_block_hash": 1,
        "bad_round": 1,
    }
    assert core._keeper.stake_any(0, PREVOTE) == 0  # none of them counted


def test_duplicate_vote_is_counted_once():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    v = vote(KEYS[1], PREVOTE, h, 0, None)
    core.handle(VoteReceived(v))
    assert core.handle(VoteReceived(v)) == []
    assert core._keeper.stake_any(0, PREVOTE) == 1
    assert core.rejected["duplicate"] == 1


def test_votes_for_rounds_too_far_ahead_are_dropped():
    h = height_where(set())
    core = new_core(max_round_lookahead=10)
    core.start_height(h)
    assert core.handle(VoteReceived(vote(KEYS[1], PREVOTE, h, 11, None))) == []
    assert core.rejected["round_too_far"] == 1


# -- L22-L27: prevote on a proposal ----------------------------------------------------------------------


def test_valid_proposal_gets_a_prevote_for_it():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    block = make_block(h, proposer_key(h, 0))
    effects = core.handle(ProposalReceived(proposal(proposer_key(h, 0), h, 0, block)))
    assert_wal_before_broadcast(effects)
    [pv] = sent_votes(effects)
    assert (pv.vote_type, pv.height, pv.round, pv.block_hash) == (PREVOTE, h, 0, block.hash())
    assert core.step == Step.PREVOTE


def test_invalid_proposal_gets_a_nil_prevote():
    h = height_where(set())
    core = new_core(validate=lambda b: False)
    core.start_height(h)
    effects = core.handle(ProposalReceived(proposal(proposer_key(h, 0), h, 0, make_block(h, proposer_key(h, 0)))))
    [pv] = sent_votes(effects)
    assert pv.block_hash is None


def test_validity_is_asked_once_per_block_and_the_prevote_waits_for_the_answer():
    h = height_where(set())
    core = ConsensusCore(CHAIN, VSET, ME, TIMEOUTS)  # no oracle: this test is the driver
    core.start_height(h)
    block = make_block(h, proposer_key(h, 0))
    prop = proposal(proposer_key(h, 0), h, 0, block)
    assert core.handle(ProposalReceived(prop)) == [ValidateBlock(block)]
    assert core.step == Step.PROPOSE  # L22 needs valid(v): no prevote before the answer
    assert core.handle(ProposalReceived(prop)) == []  # a duplicate does not ask again
    assert core.handle(BlockValidity(sha256(b"another block"), False)) == []  # not a block of this height
    [pv] = sent_votes(core.handle(BlockValidity(block.hash(), True)))
    assert (pv.vote_type, pv.block_hash) == (PREVOTE, block.hash())
    assert core.handle(BlockValidity(block.hash(), False)) == []  # the first answer stands


# -- L57-L67: timeouts -----------------------------------------------------------------------------------


def test_timeout_propose_prevotes_nil_and_stale_timeouts_do_nothing():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    assert core.handle(TimeoutFired("propose", h, 1)) == []
    assert core.handle(TimeoutFired("propose", h - 1, 0)) == []
    [pv] = sent_votes(core.handle(TimeoutFired("propose", h, 0)))
    assert (pv.vote_type, pv.block_hash) == (PREVOTE, None)
    assert core.step == Step.PREVOTE
    assert core.handle(TimeoutFired("propose", h, 0)) == []  # step is no longer propose


def test_unknown_timeout_kind_is_an_error():
    core = new_core()
    core.start_height(1)
    with pytest.raises(ValueError, match="unknown timeout kind"):
        core.handle(TimeoutFired("commit", 1, 0))  # type: ignore[arg-type]


def test_polka_any_schedules_prevote_timeout_which_precommits_nil():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    core.handle(TimeoutFired("propose", h, 0))  # our nil prevote
    effects = core.handle(VoteReceived(vote(KEYS[1], PREVOTE, h, 0, b"\x01" * 32)))
    assert timeouts(effects) == []
    effects = core.handle(VoteReceived(vote(KEYS[2], PREVOTE, h, 0, b"\x02" * 32)))
    # L34: 3 of 4 prevotes, for three different values: no polka for a value or nil.
    assert timeouts(effects) == [ScheduleTimeout("prevote", h, 0, 500)]
    assert sent_votes(effects) == []
    [pc] = sent_votes(core.handle(TimeoutFired("prevote", h, 0)))
    assert (pc.vote_type, pc.block_hash) == (PRECOMMIT, None)
    assert core.step == Step.PRECOMMIT


def test_precommit_any_schedules_precommit_timeout_which_starts_next_round_with_longer_timeout():
    h = height_where({1})
    core = new_core()
    core.start_height(h)
    core.handle(TimeoutFired("propose", h, 0))
    effects = feed_votes(core, KEYS[1:4], PRECOMMIT, h, 0, None)
    assert ScheduleTimeout("precommit", h, 0, 400) in effects
    effects = core.handle(TimeoutFired("precommit", h, 0))
    assert (core.round, core.step) == (1, Step.PROPOSE)
    assert ScheduleTimeout("propose", h, 1, 1100) in effects
    assert GetValue(h, 1) in effects  # ME proposes round 1 of this height


# -- L36-L46: polkas ---------------------------------------------------------------------------------------


def lock_on(core: ConsensusCore, h: int, block: Block) -> None:
    """Drive ``core`` (a non-proposer at round 0) to lock on ``block`` in round 0."""
    core.handle(ProposalReceived(proposal(proposer_key(h, 0), h, 0, block)))
    feed_votes(core, KEYS[1:3], PREVOTE, h, 0, block.hash())


def test_polka_for_value_locks_and_precommits_it():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    block = make_block(h, proposer_key(h, 0))
    core.handle(ProposalReceived(proposal(proposer_key(h, 0), h, 0, block)))
    core.handle(VoteReceived(vote(KEYS[1], PREVOTE, h, 0, block.hash())))
    effects = core.handle(VoteReceived(vote(KEYS[2], PREVOTE, h, 0, block.hash())))
    assert_wal_before_broadcast(effects)
    [pc] = sent_votes(effects)
    assert (pc.vote_type, pc.block_hash) == (PRECOMMIT, block.hash())
    assert (core.locked_round, core.locked_value) == (0, block)
    assert (core.valid_round, core.valid_value) == (0, block)
    assert core.step == Step.PRECOMMIT


def test_polka_seen_after_precommitting_updates_valid_value_but_not_the_lock():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    block = make_block(h, proposer_key(h, 0))
    core.handle(TimeoutFired("propose", h, 0))  # we prevote nil
    feed_votes(core, KEYS[1:3], PREVOTE, h, 0, block.hash())  # 2f+1 prevotes, 2 for the block
    core.handle(TimeoutFired("prevote", h, 0))  # we precommit nil
    assert core.step == Step.PRECOMMIT
    # L36 with step = precommit: the proposal arrives late, then the third prevote for it.
    core.handle(ProposalReceived(proposal(proposer_key(h, 0), h, 0, block)))
    assert core.valid_round == -1
    effects = feed_votes(core, [KEYS[3]], PREVOTE, h, 0, block.hash())
    assert sent_votes(effects) == []  # L37: no precommit, we already precommitted nil
    assert (core.valid_round, core.valid_value) == (0, block)  # L42-L43
    assert (core.locked_round, core.locked_value) == (-1, None)


def test_polka_nil_precommits_nil():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    core.handle(TimeoutFired("propose", h, 0))
    effects = feed_votes(core, KEYS[1:3], PREVOTE, h, 0, None)
    pcs = sent_votes(effects)
    assert [(v.vote_type, v.block_hash) for v in pcs] == [(PRECOMMIT, None)]
    assert core.locked_round == -1


# -- locking across rounds (L22-L33) ------------------------------------------------------------------


def test_locked_validator_prevotes_nil_for_a_different_value_without_pol():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    v = make_block(h, proposer_key(h, 0), b"v")
    lock_on(core, h, v)
    assert core.locked_round == 0
    core.handle(TimeoutFired("precommit", h, 0))
    w = make_block(h, proposer_key(h, 1), b"w")
    [pv] = sent_votes(core.handle(ProposalReceived(proposal(proposer_key(h, 1), h, 1, w))))
    assert (pv.round, pv.block_hash) == (1, None)


def test_locked_validator_prevotes_its_locked_value_when_reproposed():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    v = make_block(h, proposer_key(h, 0), b"v")
    lock_on(core, h, v)
    core.handle(TimeoutFired("precommit", h, 0))
    [pv] = sent_votes(core.handle(ProposalReceived(proposal(proposer_key(h, 1), h, 1, v, pol_round=0))))
    assert (pv.round, pv.block_hash) == (1, v.hash())


def go_to_round(core: ConsensusCore, h: int, target: int) -> None:
    """Time out rounds until ``core`` is in round ``target`` (voting nil where it must vote)."""
    while core.round < target:
        core.handle(TimeoutFired("propose", h, core.round))
        core.handle(TimeoutFired("prevote", h, core.round))
        core.handle(TimeoutFired("precommit", h, core.round))


def test_lock_is_released_by_a_proof_of_lock_from_a_higher_round():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    v = make_block(h, proposer_key(h, 0), b"v")
    w = make_block(h, proposer_key(h, 1), b"w")
    lock_on(core, h, v)
    go_to_round(core, h, 2)
    # The others saw a polka for w in round 1 (we timed out of it).
    feed_votes(core, KEYS[1:4], PREVOTE, h, 1, w.hash())
    assert core.locked_round == 0  # a polka of a past round does not relock (L36 is for round_p)
    # L28-L30: proposal of w with vr = 1 and 2f+1 prevotes for w in round 1; lockedRound 0 <= 1.
    [pv] = sent_votes(core.handle(ProposalReceived(proposal(proposer_key(h, 2), h, 2, w, pol_round=1))))
    assert (pv.round, pv.block_hash) == (2, w.hash())


def test_proof_of_lock_claim_without_the_votes_is_not_enough():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    v = make_block(h, proposer_key(h, 0), b"v")
    w = make_block(h, proposer_key(h, 1), b"w")
    lock_on(core, h, v)
    go_to_round(core, h, 2)
    feed_votes(core, KEYS[1:3], PREVOTE, h, 1, w.hash())  # only 2 of the 3 needed
    assert sent_votes(core.handle(ProposalReceived(proposal(proposer_key(h, 2), h, 2, w, pol_round=1)))) == []
    assert core.step == Step.PROPOSE  # L28 waits for the polka; the propose timeout then prevotes nil
    [pv] = sent_votes(core.handle(TimeoutFired("propose", h, 2)))
    assert pv.block_hash is None


def test_proof_of_lock_older_than_the_lock_does_not_unlock():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    w = make_block(h, proposer_key(h, 0), b"w")
    v = make_block(h, proposer_key(h, 1), b"v")
    # Round 0: polka for w (we timed out and prevoted nil, then saw it in a later round).
    go_to_round(core, h, 1)
    feed_votes(core, KEYS[1:4], PREVOTE, h, 0, w.hash())
    # Round 1: lock on v.
    core.handle(ProposalReceived(proposal(proposer_key(h, 1), h, 1, v)))
    feed_votes(core, KEYS[1:3], PREVOTE, h, 1, v.hash())
    assert (core.locked_round, core.locked_hash) == (1, v.hash())
    core.handle(TimeoutFired("precommit", h, 1))
    # Round 2: w re-proposed with vr = 0 < lockedRound 1 -> L32 prevote nil.
    [pv] = sent_votes(core.handle(ProposalReceived(proposal(proposer_key(h, 2), h, 2, w, pol_round=0))))
    assert pv.block_hash is None


def test_proposer_reproposes_its_valid_value_with_its_valid_round():
    h = height_where({1})
    core = new_core()
    core.start_height(h)
    v = make_block(h, proposer_key(h, 0), b"v")
    lock_on(core, h, v)
    assert core.valid_round == 0
    effects = core.handle(TimeoutFired("precommit", h, 0))
    assert GetValue(h, 1) not in effects
    [p] = sent_proposals(effects)
    assert (p.round, p.pol_round, p.block) == (1, 0, v)


# -- L49: decision --------------------------------------------------------------------------------------


def test_precommit_quorum_decides_with_a_certificate_that_verifies():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    block = make_block(h, proposer_key(h, 0))
    lock_on(core, h, block)  # we precommit it
    effects = feed_votes(core, KEYS[1:3], PRECOMMIT, h, 0, block.hash())
    [decide] = [e for e in effects if isinstance(e, Decide)]
    assert decide.block == block
    assert core.step == Step.COMMIT and core.decision == block
    cert = decide.certificate
    assert (cert.height, cert.round, cert.block_hash) == (h, 0, block.hash())
    assert len(cert.signatures) == 3
    verify_commit_certificate(cert, block.hash(), CHAIN, VSET, height=h)
    assert core.decision_certificate() == cert
    # After the decision nothing more happens at this height, but a late precommit for the decision
    # joins the decision's certificate (the next block's last commit records who signed in time)
    assert core.handle(VoteReceived(vote(KEYS[3], PRECOMMIT, h, 0, block.hash()))) == []
    late = core.decision_certificate()
    assert len(late.signatures) == 4
    verify_commit_certificate(late, block.hash(), CHAIN, VSET, height=h)
    forged = msgspec.structs.replace(vote(KEYS[3], PRECOMMIT, h, 0, block.hash()), validator=KEYS[1].public_key.hex())
    core.handle(VoteReceived(forged))  # a bad signature is rejected, the certificate unchanged
    assert core.decision_certificate() == late
    assert core.handle(VoteReceived(vote(KEYS[3], PRECOMMIT, h, 1, block.hash()))) == []  # another round: ignored
    assert core.decision_certificate() == late


def test_precommit_quorum_without_the_block_does_not_decide_until_the_block_arrives():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    block = make_block(h, proposer_key(h, 0))
    effects = feed_votes(core, KEYS[1:4], PRECOMMIT, h, 0, block.hash())
    assert not [e for e in effects if isinstance(e, Decide)]
    effects = core.handle(ProposalReceived(proposal(proposer_key(h, 0), h, 0, block)))
    assert [e.block for e in effects if isinstance(e, Decide)] == [block]


def test_decision_in_a_later_round_than_ours():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    key = proposer_key(h, 2)
    block = make_block(h, key)
    # f+1 precommits from round 2 make us skip there (L55), the rest decide (L49).
    effects = core.handle(ProposalReceived(proposal(key, h, 2, block)))
    assert effects == []  # round 2 is in the future: stored, not acted on
    effects = feed_votes(core, KEYS[1:4], PRECOMMIT, h, 2, block.hash())
    assert [e.block for e in effects if isinstance(e, Decide)] == [block]


def test_invalid_block_is_not_decided_even_with_a_precommit_quorum():
    h = height_where(set())
    core = new_core(validate=lambda b: False)
    core.start_height(h)
    block = make_block(h, proposer_key(h, 0))
    core.handle(ProposalReceived(proposal(proposer_key(h, 0), h, 0, block)))
    effects = feed_votes(core, KEYS[1:4], PRECOMMIT, h, 0, block.hash())
    assert not [e for e in effects if isinstance(e, Decide)]
    assert core.decision is None


# -- L55: round skipping -----------------------------------------------------------------------------------


def test_f_plus_one_votes_of_a_higher_round_skip_to_it():
    h = height_where(set(), rounds=1)
    core = new_core()
    core.start_height(h)
    effects = core.handle(VoteReceived(vote(KEYS[1], PREVOTE, h, 5, None)))
    assert core.round == 0 and effects == []  # 1 < f+1 = 2
    effects = core.handle(VoteReceived(vote(KEYS[2], PRECOMMIT, h, 5, None)))
    assert core.round == 5 and core.step == Step.PROPOSE
    assert ScheduleTimeout("propose", h, 5, 1500) in effects


def test_f_plus_one_votes_of_the_next_round_skip_to_it():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    feed_votes(core, KEYS[1:3], PREVOTE, h, 1, None)
    assert (core.round, core.step) == (1, Step.PROPOSE)


def test_one_validator_voting_twice_in_a_higher_round_does_not_skip():
    h = height_where(set(), rounds=1)
    core = new_core()
    core.start_height(h)
    core.handle(VoteReceived(vote(KEYS[1], PREVOTE, h, 5, None)))
    core.handle(VoteReceived(vote(KEYS[1], PRECOMMIT, h, 5, None)))
    assert core.round == 0


# -- heights -------------------------------------------------------------------------------------------------


def test_future_height_messages_are_buffered_and_replayed():
    h = height_where(set())
    core = new_core()
    core.start_height(h - 1)
    key = proposer_key(h, 0)
    block = make_block(h, key)
    assert core.handle(ProposalReceived(proposal(key, h, 0, block))) == []
    assert core.handle(VoteReceived(vote(KEYS[1], PREVOTE, h, 0, block.hash()))) == []
    effects = core.start_height(h)
    # The replayed proposal gets our prevote at once.
    assert [(v.vote_type, v.block_hash) for v in sent_votes(effects)] == [(PREVOTE, block.hash())]
    assert core._keeper.stake_for(0, PREVOTE, block.hash()) == 2


def test_messages_before_the_first_height_are_buffered():
    core = new_core()
    assert core.handle(VoteReceived(vote(KEYS[1], PREVOTE, 1, 0, None))) == []
    core.start_height(1)
    assert core._keeper.stake_any(0, PREVOTE) == 1


def test_far_future_and_past_heights_are_dropped_and_buffer_is_bounded():
    core = new_core(future_buffer_per_validator=2)
    core.start_height(10)
    assert core.handle(VoteReceived(vote(KEYS[1], PREVOTE, 12, 0, None))) == []
    assert core.handle(VoteReceived(vote(KEYS[1], PREVOTE, 9, 0, None))) == []
    for r in range(3):
        core.handle(VoteReceived(vote(KEYS[1], PREVOTE, 11, r, None)))
    core.handle(VoteReceived(msgspec.structs.replace(vote(KEYS[2], PREVOTE, 11, 0, None), signature=bytes(64))))
    assert core.rejected_counts() == {
        "future_height": 1,
        "stale_height": 1,
        "future_buffer_full": 1,
        "bad_signature": 1,
    }
    core.start_height(11)
    assert core._keeper.stake_any(0, PREVOTE) == 1
    assert core._keeper.stake_any(1, PREVOTE) == 1


# -- equivocation and double signing ---------------------------------------------------------------------


def test_equivocating_votes_become_evidence_and_the_first_vote_stays():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    first = vote(KEYS[1], PREVOTE, h, 0, b"\x01" * 32)
    second = vote(KEYS[1], PREVOTE, h, 0, b"\x02" * 32)
    core.handle(VoteReceived(first))
    effects = core.handle(VoteReceived(second))
    [found] = [e.evidence for e in effects if isinstance(e, EvidenceFound)]
    assert found == DuplicateVoteEvidence(first=first, second=second)
    verify_evidence(found, CHAIN, VSET)
    assert core.evidence() == [found]
    assert core._keeper.vote_of(KEYS[1].public_key.hex(), 0, PREVOTE) == first
    assert core._keeper.stake_any(0, PREVOTE) == 1  # the validator counts once for "any"


def test_double_proposal_becomes_evidence():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    key = proposer_key(h, 0)
    a = proposal(key, h, 0, make_block(h, key, b"a"))
    b = proposal(key, h, 0, make_block(h, key, b"b"))
    core.handle(ProposalReceived(a))
    effects = core.handle(ProposalReceived(b))
    [found] = [e.evidence for e in effects if isinstance(e, EvidenceFound)]
    assert found == DuplicateProposalEvidence(first=a, second=b)
    verify_evidence(found, CHAIN, VSET)
    assert core.handle(ProposalReceived(b)) == []  # repeated: no second piece of evidence
    assert len(core.evidence()) == 1


def test_restarted_validator_never_signs_a_conflicting_prevote():
    h = height_where(set())
    key = proposer_key(h, 0)
    v = make_block(h, key, b"v")
    w = make_block(h, key, b"w")
    before = new_core()
    before.start_height(h)
    [signed] = sent_votes(before.handle(ProposalReceived(proposal(key, h, 0, v))))
    # After a crash: the driver replays our WAL entry, then the proposer's equivocating proposal arrives.
    after = new_core()
    after.start_height(h)
    after.handle(VoteReceived(signed))
    effects = after.handle(ProposalReceived(proposal(key, h, 0, w)))
    assert not [e for e in effects if isinstance(e, PersistWAL)]
    assert sent_votes(effects) == [signed]


def test_replayed_own_precommit_restores_the_lock():
    h = height_where(set())
    v = make_block(h, proposer_key(h, 0))
    core = new_core()
    core.start_height(h)
    core.handle(VoteReceived(vote(ME, PRECOMMIT, h, 0, v.hash())))
    assert (core.locked_round, core.locked_hash) == (0, v.hash())


def test_observer_follows_and_decides_but_never_signs():
    h = height_where(set())
    core = new_core(key=None)
    assert not core.is_validator
    effects = core.start_height(h)
    block = make_block(h, proposer_key(h, 0))
    effects += core.handle(ProposalReceived(proposal(proposer_key(h, 0), h, 0, block)))
    effects += feed_votes(core, KEYS[1:4], PREVOTE, h, 0, block.hash())
    effects += feed_votes(core, KEYS[1:4], PRECOMMIT, h, 0, block.hash())
    assert not [e for e in effects if isinstance(e, (Broadcast, PersistWAL, GetValue))]
    assert core.decision == block


def test_validator_outside_the_set_acts_as_observer():
    outsider = SigningKey(b"\x77" * 32)
    core = new_core(key=outsider)
    assert not core.is_validator
    effects = core.start_height(1) + core.handle(TimeoutFired("propose", 1, 0))
    assert not [e for e in effects if isinstance(e, (Broadcast, PersistWAL))]


def test_handle_rejects_non_inputs():
    core = new_core()
    with pytest.raises(TypeError, match="not a consensus input"):
        core.handle("vote")  # type: ignore[arg-type]


def test_timeouts_grow_linearly_with_the_round():
    t = TimeoutConfig(propose_ms=1000, propose_delta_ms=500, prevote_ms=10, prevote_delta_ms=1)
    assert [t.duration_ms("propose", r) for r in range(3)] == [1000, 1500, 2000]
    assert t.duration_ms("prevote", 7) == 17
    with pytest.raises(ValueError):
        TimeoutConfig(propose_ms=-1)
    # A zero increment would keep every round's timeouts the same: liveness needs them to grow.
    for field in ("propose_delta_ms", "prevote_delta_ms", "precommit_delta_ms"):
        with pytest.raises(ValueError, match=f"{field} must be at least 1 ms"):
            TimeoutConfig(**{field: 0})


def test_height_messages_hold_everything_needed_for_regossip():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    key = proposer_key(h, 0)
    a, b = proposal(key, h, 0, make_block(h, key, b"a")), proposal(key, h, 0, make_block(h, key, b"b"))
    core.handle(ProposalReceived(a))  # we prevote a
    core.handle(ProposalReceived(b))  # equivocation: kept too
    first, second = vote(KEYS[1], PREVOTE, h, 0, a.block.hash()), vote(KEYS[1], PREVOTE, h, 0, None)
    core.handle(VoteReceived(first))
    core.handle(VoteReceived(second))
    messages = core.height_messages()
    own = core._keeper.vote_of(ME.public_key.hex(), 0, PREVOTE)
    assert messages[:2] == [a, b]
    assert sorted(messages[2:], key=repr) == sorted([own, first, second], key=repr)
