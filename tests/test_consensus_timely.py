"""Proposer-based timestamps in the core (CometBFT PBTS, spec/consensus/proposer-based-timestamp/
pbts-algorithm.md): L22 prevotes a new value only if its proposal was timely on arrival
([PBTS-ALG-UPON-PROP.1]); L28 re-proposals with a proof-of-lock round are unchanged. The core reads no
clock: the driver's verdict arrives as ``ProposalReceived.timely``.

Same four validators of stake 1 as tests/test_consensus_core.py.
"""

from __future__ import annotations

from agent_world_node.consensus import ProposalReceived, Step, TimeoutFired, ValueToPropose
from agent_world_node.types import VoteType

from .test_consensus_core import (
    KEYS,
    ME,
    PREVOTE,
    feed_votes,
    height_where,
    make_block,
    new_core,
    proposal,
    proposer_key,
    sent_proposals,
    sent_votes,
)


def test_untimely_new_proposal_of_a_valid_block_is_prevoted_nil():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    block = make_block(h, proposer_key(h, 0))
    [pv] = sent_votes(core.handle(ProposalReceived(proposal(proposer_key(h, 0), h, 0, block), timely=False)))
    assert (pv.vote_type, pv.round, pv.block_hash) == (PREVOTE, 0, None)
    assert core.step == Step.PREVOTE
    # valid(v) was asked and is cached as valid: timeliness is not validity
    assert core.validity_asked == [block.hash()]


def test_a_later_timely_copy_does_not_change_the_timeliness_of_the_first():
    h = height_where(set())
    core = new_core()
    core.start_height(h)
    block = make_block(h, proposer_key(h, 0))
    prop = proposal(proposer_key(h, 0), h, 0, block)
    # arrives for round 0 while we are still in round 0, untimely; a re-gossiped copy counts for nothing
    [pv] = sent_votes(core.handle(ProposalReceived(prop, timely=False)))
    assert pv.block_hash is None
    assert core.handle(ProposalReceived(prop, timely=True)) == []


def test_block_untimely_in_one_round_is_prevoted_on_a_proof_of_lock_in_a_later_round():
    """Timeliness belongs to a round's proposal, validity to the block: v untimely here in round 0
    (we prevoted nil) got a polka from the others, so its re-proposal with pol_round 0 (L28) is
    prevoted without any timeliness check, and valid(v) was asked only once."""
    h = height_where(set(), rounds=2)
    core = new_core()
    core.start_height(h)
    v = make_block(h, proposer_key(h, 0), b"v")
    [nil] = sent_votes(core.handle(ProposalReceived(proposal(proposer_key(h, 0), h, 0, v), timely=False)))
    assert nil.block_hash is None
    core.handle(TimeoutFired("prevote", h, 0))
    core.handle(TimeoutFired("precommit", h, 0))
    assert (core.round, core.step) == (1, Step.PROPOSE)
    feed_votes(core, KEYS[1:4], PREVOTE, h, 0, v.hash())  # the polka of round 0 we had not seen
    assert core.locked_round == -1  # (L36 only locks in the current round)
    reproposal = proposal(proposer_key(h, 1), h, 1, v, pol_round=0)
    [pv] = sent_votes(core.handle(ProposalReceived(reproposal, timely=False)))
    assert (pv.vote_type, pv.round, pv.block_hash) == (PREVOTE, 1, v.hash())
    assert core.validity_asked == [v.hash()]


def test_same_block_proposed_anew_timely_in_a_later_round_is_prevoted():
    h = height_where(set(), rounds=2)
    core = new_core()
    core.start_height(h)
    v = make_block(h, proposer_key(h, 0), b"v")
    core.handle(ProposalReceived(proposal(proposer_key(h, 0), h, 0, v), timely=False))
    core.handle(TimeoutFired("prevote", h, 0))
    core.handle(TimeoutFired("precommit", h, 0))
    [pv] = sent_votes(core.handle(ProposalReceived(proposal(proposer_key(h, 1), h, 1, v), timely=True)))
    assert (pv.round, pv.block_hash) == (1, v.hash())


def test_buffered_next_height_proposal_keeps_the_timeliness_judged_on_arrival():
    h = height_where(set())
    for timely, expected in ((False, None), (True, "block")):
        core = new_core()
        core.start_height(h - 1)
        block = make_block(h, proposer_key(h, 0))
        assert core.handle(ProposalReceived(proposal(proposer_key(h, 0), h, 0, block), timely=timely)) == []
        [pv] = sent_votes(core.start_height(h))
        assert pv.block_hash == (block.hash() if expected else None)


def test_own_proposals_are_timely_also_when_replayed_from_the_wal():
    h = height_where({0})
    core = new_core()
    core.start_height(h)
    block = make_block(h, ME)
    effects = core.handle(ValueToPropose(h, 0, block))
    [own] = sent_proposals(effects)
    [pv] = sent_votes(effects)
    assert pv.block_hash == block.hash()
    # crash before the prevote reached the WAL: the restarted core replays its own proposal and
    # prevotes for it (no clock was consulted for it)
    restarted = new_core()
    effects = restarted.resume(h, [own])
    assert sent_proposals(effects) == [own]
    [pv] = [v for v in sent_votes(effects) if v.vote_type == VoteType.PREVOTE]
    assert pv.block_hash == block.hash()
    # our own proposal coming back through the network (e.g. a twin's echo) is timely too
    echo = new_core()
    echo.start_height(h)
    [pv] = sent_votes(echo.handle(ProposalReceived(own, timely=False)))
    assert pv.block_hash == block.hash()
