"""Test-only broken variants of ``ConsensusCore``, one per safety mechanism of Tendermint.

A property test that could not fail proves nothing. The simulated-cluster
property suite runs its clusters with ``Replica(core_factory=BROKEN_CORES[name])`` and must report a
violation for every variant here; if it passes with one of them, the suite does not test that
mechanism. Each variant is a small subclass that overrides exactly one of the core's overridable
checks (see the module docstring of ``agent_world_node.consensus.core``); everything else is the
real core. Each takes ``ConsensusCore``'s constructor arguments unchanged, so the class itself is
the factory.

``tests/test_consensus_broken_cores.py`` shows, in minimal hand-built situations, that each variant
really misbehaves where the real core does not.

Never use these outside tests.
"""

from __future__ import annotations

from typing import Callable

from agent_world_node.consensus import ConsensusCore, Validator, ValidatorSet, VoteKeeper
from agent_world_node.types import Vote


class NoLockingCore(ConsensusCore):
    """Ignores its lock: prevotes for every valid proposal (L22-L33 without the conditions
    ``lockedRound = -1 ∨ lockedValue = v`` and ``lockedRound <= vr ∨ lockedValue = v``), so it never
    prevotes nil because of a lock. It still records the lock and still waits for the 2f+1 prevotes
    of round vr that a proposal with vr >= 0 claims (that is the proof of lock, not the lock).

    Breaks safety: a validator that precommitted v in round r helps form a polka for w != v in a
    later round, so w can be decided after v was decided in round r.
    """

    def _lock_allows_prevote(self, value_hash: bytes, pol_round: int) -> bool:
        return True


def half_threshold(total_stake: int) -> int:
    """The broken threshold: more than half of ``total_stake`` (``total // 2 + 1``) instead of more
    than 2/3. It equals the real one (``2 * total // 3 + 1``) only for a total stake of 1, 2 or 4,
    so a cluster that should catch ``HalfThresholdCore`` needs another total (e.g. 5 or 7 equal
    validators; 4 equal validators hide the bug)."""
    return total_stake // 2 + 1


class HalfThresholdVoteKeeper(VoteKeeper):
    """A ``VoteKeeper`` whose 2f+1 thresholds (polka for a value, nil or any; precommit for a value
    or any) need only ``half_threshold(total stake)``; f+1 (round skipping) is unchanged."""

    def __init__(self, height: int, validator_set: ValidatorSet, max_conflicting_values: int = 2) -> None:
        super().__init__(height, validator_set, max_conflicting_values)
        self.quorum = half_threshold(validator_set.total_stake)


class HalfThresholdCore(ConsensusCore):
    """Counts a polka, a precommit quorum and a decision at more than 1/2 of the stake instead of
    more than 2/3 (its vote keeper is a ``HalfThresholdVoteKeeper``).

    Breaks safety: two "quorums" of more than 1/2 intersect in just over 0 stake, so with f
    Byzantine validators two disjoint groups of correct validators can decide different blocks.
    Its commit certificates hold too little stake and fail ``verify_commit_certificate``.
    """

    def _new_vote_keeper(self, height: int) -> VoteKeeper:
        return HalfThresholdVoteKeeper(height, self.validator_set)


class AcceptsUnsignedVotesCore(ConsensusCore):
    """Counts every vote from a known validator id without checking its signature (a missing or
    forged signature passes). Unknown validator ids are still rejected, and proposals are still
    verified.

    Breaks safety: anyone (one Byzantine validator is enough) can forge the votes of correct
    validators and make a polka or a precommit quorum for any value.
    """

    def _vote_signature_ok(self, validator: Validator, vote: Vote) -> bool:
        return True


class IgnoresTimelinessCore(ConsensusCore):
    """Treats every proposal as timely (PBTS's L22 without ``timely(v.time)``,
    [PBTS-ALG-UPON-PROP.1]), so it prevotes any valid new block whatever its time.

    Breaks block time, not agreement: one proposer with a clock an hour ahead gets blocks stamped an
    hour ahead committed, and since block time never decreases the chain's time stays there. Caught
    by the simulator's ``block_time`` property (tests/test_sim_block_time.py); not in
    ``BROKEN_CORES``, whose variants must break agreement under an attack schedule.
    """

    def _proposal_timely(self, round: int) -> bool:
        return True


BROKEN_CORES: dict[str, Callable[..., ConsensusCore]] = {
    "no_locking": NoLockingCore,
    "half_threshold": HalfThresholdCore,
    "accepts_unsigned_votes": AcceptsUnsignedVotesCore,
}
"""Broken variants by name; each value has ``ConsensusCore``'s constructor signature."""
