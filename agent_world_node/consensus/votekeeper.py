"""Vote tallies of one height: stake per (round, vote_type, value) and the thresholds they cross.

The vote keeper counts messages; it takes no decisions (the split of informalsystems/malachite:
vote keeper, then state machine). Votes given to it must already be checked (signature, height,
sender in the validator set): ``ConsensusCore`` does that before calling ``add_vote``.

Rules:
- The first vote of a validator for a (round, vote_type) is its counted vote: it counts for its
  value, for the "any" thresholds and for round skipping. A later identical vote is a duplicate and
  ignored. A later *different* vote is equivocation: the first pair is kept as
  ``DuplicateVoteEvidence`` (one per validator and (round, vote_type)); nothing is overwritten.
- An equivocating vote also counts, for *its own value only*, for up to ``max_conflicting_values``
  further values per validator and (round, vote_type). This is the paper's semantics (a rule such as
  "2f+1 PREVOTE(h, vr, id(v))" is a condition on the set of received messages, and a Byzantine
  validator's message for v is in that set even if it also signed another value), and it is needed
  for liveness: if nodes counted only the first vote they saw, an equivocator could show one half
  of the cluster a polka that the other half can never see, so the half that locked on it and the
  half that did not would never agree again (the cluster simulator, agent_world_node/sim, hits
  exactly this with an equivocating proposer). It does not weaken safety: two quorums of one
  round still intersect in more than 1/3 of the stake, which holds a correct validator, and a
  correct validator votes once. The cap bounds memory.
- Each threshold event is reported once, when the stake first crosses it:

  ==================  ==============================================  ===================
  event               condition (stake, Tendermint paper notation)    used by paper lines
  ==================  ==============================================  ===================
  POLKA_VALUE         2f+1 PREVOTE(round, id(v))                      L28, L36
  POLKA_NIL           2f+1 PREVOTE(round, nil)                        L44
  POLKA_ANY           2f+1 PREVOTE(round, *)                          L34
  PRECOMMIT_VALUE     2f+1 PRECOMMIT(round, id(v))                    L49
  PRECOMMIT_ANY       2f+1 PRECOMMIT(round, *)                        L47
  SKIP_ROUND          f+1 of distinct validators voting in round      L55
  ==================  ==============================================  ===================

  where ``2f+1`` is ``VoteKeeper.quorum`` (``ValidatorSet.quorum``: more than 2/3 of the stake) and
  ``f+1`` is ``ValidatorSet.f_plus_one``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional

from agent_world_node.types import Vote, VoteType

from .evidence import DuplicateVoteEvidence
from .validators import ValidatorSet


class ThresholdKind(enum.Enum):
    """Which threshold a ``ThresholdEvent`` reports (see the module table)."""

    POLKA_VALUE = "polka_value"
    POLKA_NIL = "polka_nil"
    POLKA_ANY = "polka_any"
    PRECOMMIT_VALUE = "precommit_value"
    PRECOMMIT_ANY = "precommit_any"
    SKIP_ROUND = "skip_round"


@dataclass(frozen=True, slots=True)
class ThresholdEvent:
    """A threshold crossed in ``round``; ``value`` is the block hash for *_VALUE events, else None."""

    kind: ThresholdKind
    round: int
    value: Optional[bytes] = None


class AddVoteStatus(enum.Enum):
    """What ``VoteKeeper.add_vote`` did with a vote."""

    ADDED = "added"
    DUPLICATE = "duplicate"
    EQUIVOCATION = "equivocation"


@dataclass(slots=True)
class AddVoteResult:
    """The outcome of one ``add_vote``: the status, threshold events first crossed by this vote,
    the evidence when the vote conflicts with the validator's counted one (first time only), and
    whether the vote was counted for its value."""

    status: AddVoteStatus
    events: list[ThresholdEvent] = field(default_factory=list)
    evidence: Optional[DuplicateVoteEvidence] = None
    counted: bool = False


_VALUE_EVENT = {VoteType.PREVOTE: ThresholdKind.POLKA_VALUE, VoteType.PRECOMMIT: ThresholdKind.PRECOMMIT_VALUE}
_ANY_EVENT = {VoteType.PREVOTE: ThresholdKind.POLKA_ANY, VoteType.PRECOMMIT: ThresholdKind.PRECOMMIT_ANY}


class VoteKeeper:
    """Counts the votes of one height against ``validator_set`` (see the module docstring).

    Memory: per validator and (round, vote_type) at most ``1 + max_conflicting_values`` votes and
    one evidence pair; the caller bounds the rounds it accepts.

    ``quorum`` is the stake every 2f+1 threshold needs (``validator_set.quorum``); it is an
    attribute so that a test-only broken keeper (tests/broken_cores.py) can lower it.
    """

    def __init__(self, height: int, validator_set: ValidatorSet, max_conflicting_values: int = 2) -> None:
        if max_conflicting_values < 0:
            raise ValueError(f"max_conflicting_values must be >= 0, got {max_conflicting_values}")
        self.height = height
        self.validator_set = validator_set
        self.max_conflicting_values = max_conflicting_values
        self.quorum: int = validator_set.quorum
        self._votes: dict[tuple[int, VoteType], dict[str, Vote]] = {}
        self._conflicting: dict[tuple[int, VoteType, str], dict[Optional[bytes], Vote]] = {}
        self._tally: dict[tuple[int, VoteType, Optional[bytes]], int] = {}
        self._type_stake: dict[tuple[int, VoteType], int] = {}
        self._round_voters: dict[int, set[str]] = {}
        self._round_stake: dict[int, int] = {}
        self._quorum_value: dict[tuple[int, VoteType], bytes] = {}
        self._quorum_nil: set[tuple[int, VoteType]] = set()
        self._quorum_any: set[tuple[int, VoteType]] = set()
        self._skip_rounds: set[int] = set()
        self._highest_skip_round = -1
        self._evidence: list[DuplicateVoteEvidence] = []
        self._evidence_keys: set[tuple[str, int, VoteType]] = set()

    def add_vote(self, vote: Vote) -> AddVoteResult:
        """Count ``vote`` (already verified) and return the thresholds it made cross.

        Raises ValueError if the vote is for another height or from a validator outside the set
        (the caller must check both first).
        """
        if vote.height != self.height:
            raise ValueError(f"vote for height {vote.height} given to the vote keeper of height {self.height}")
        stake = self.validator_set.stake_of(vote.validator)
        if stake == 0:
            raise ValueError(f"vote from {vote.validator}, which is not in the validator set")
        key = (vote.round, vote.vote_type)
        votes = self._votes.setdefault(key, {})
        counted = votes.get(vote.validator)
        if counted is not None:
            if counted.block_hash == vote.block_hash:
                return AddVoteResult(AddVoteStatus.DUPLICATE)
            conflicting = self._conflicting.setdefault((vote.round, vote.vote_type, vote.validator), {})
            if vote.block_hash in conflicting:
                return AddVoteResult(AddVoteStatus.DUPLICATE)
            result = AddVoteResult(AddVoteStatus.EQUIVOCATION)
            ev_key = (vote.validator, vote.round, vote.vote_type)
            if ev_key not in self._evidence_keys:
                self._evidence_keys.add(ev_key)
                result.evidence = DuplicateVoteEvidence(first=counted, second=vote)
                self._evidence.append(result.evidence)
            if len(conflicting) < self.max_conflicting_values:
                conflicting[vote.block_hash] = vote
                result.counted = True
                self._count_value(vote, stake, result.events)
            return result

        votes[vote.validator] = vote
        events: list[ThresholdEvent] = []
        quorum = self.quorum
        self._count_value(vote, stake, events)

        type_stake = self._type_stake.get(key, 0) + stake
        self._type_stake[key] = type_stake
        if type_stake >= quorum and type_stake - stake < quorum:
            self._quorum_any.add(key)
            events.append(ThresholdEvent(_ANY_EVENT[vote.vote_type], vote.round))

        voters = self._round_voters.setdefault(vote.round, set())
        if vote.validator not in voters:
            voters.add(vote.validator)
            round_stake = self._round_stake.get(vote.round, 0) + stake
            self._round_stake[vote.round] = round_stake
            if round_stake >= self.validator_set.f_plus_one and vote.round not in self._skip_rounds:
                self._skip_rounds.add(vote.round)
                self._highest_skip_round = max(self._highest_skip_round, vote.round)
                events.append(ThresholdEvent(ThresholdKind.SKIP_ROUND, vote.round))
        return AddVoteResult(AddVoteStatus.ADDED, events, counted=True)

    def _count_value(self, vote: Vote, stake: int, events: list[ThresholdEvent]) -> None:
        """Add ``stake`` to the tally of the vote's value; report a value/nil quorum once."""
        key = (vote.round, vote.vote_type)
        value_key = (vote.round, vote.vote_type, vote.block_hash)
        value_stake = self._tally.get(value_key, 0) + stake
        self._tally[value_key] = value_stake
        quorum = self.quorum
        if value_stake >= quorum and value_stake - stake < quorum:
            if vote.block_hash is None:
                self._quorum_nil.add(key)
                if vote.vote_type == VoteType.PREVOTE:
                    events.append(ThresholdEvent(ThresholdKind.POLKA_NIL, vote.round))
            elif key not in self._quorum_value:
                self._quorum_value[key] = vote.block_hash
                events.append(ThresholdEvent(_VALUE_EVENT[vote.vote_type], vote.round, vote.block_hash))

    # -- queries (the conditions of the paper's upon-rules) --------------------------------------

    def vote_of(self, validator_id: str, round: int, vote_type: VoteType) -> Vote | None:
        """Return the counted vote of ``validator_id`` for (round, vote_type), or None."""
        return self._votes.get((round, vote_type), {}).get(validator_id)

    def stake_for(self, round: int, vote_type: VoteType, value: Optional[bytes]) -> int:
        """Return the counted stake of ``vote_type`` votes for ``value`` (None = nil) in ``round``."""
        return self._tally.get((round, vote_type, value), 0)

    def stake_any(self, round: int, vote_type: VoteType) -> int:
        """Return the counted stake of all ``vote_type`` votes in ``round``, whatever their value."""
        return self._type_stake.get((round, vote_type), 0)

    def polka_value(self, round: int) -> bytes | None:
        """Return the block hash with 2f+1 prevotes in ``round``, or None. While Byzantine stake is
        below 1/3 at most one value can reach 2f+1 in a round; should two ever do, the first stays."""
        return self._quorum_value.get((round, VoteType.PREVOTE))

    def has_polka_nil(self, round: int) -> bool:
        """True iff 2f+1 stake prevoted nil in ``round``."""
        return (round, VoteType.PREVOTE) in self._quorum_nil

    def has_polka_any(self, round: int) -> bool:
        """True iff 2f+1 stake prevoted (anything) in ``round``."""
        return (round, VoteType.PREVOTE) in self._quorum_any

    def precommit_value(self, round: int) -> bytes | None:
        """Return the block hash with 2f+1 precommits in ``round``, or None."""
        return self._quorum_value.get((round, VoteType.PRECOMMIT))

    def has_precommit_any(self, round: int) -> bool:
        """True iff 2f+1 stake precommitted (anything) in ``round``."""
        return (round, VoteType.PRECOMMIT) in self._quorum_any

    def precommit_quorums(self) -> list[tuple[int, bytes]]:
        """Return every (round, block hash) with 2f+1 precommits, by round."""
        return sorted((r, h) for (r, t), h in self._quorum_value.items() if t == VoteType.PRECOMMIT)

    def highest_skip_round(self) -> int:
        """Return the highest round in which validators with f+1 stake voted, or -1 if none."""
        return self._highest_skip_round

    def votes_for(self, round: int, vote_type: VoteType, value: Optional[bytes]) -> list[Vote]:
        """Return the ``vote_type`` votes counted for ``value`` in ``round`` (one per validator,
        counting equivocating votes for this value), sorted by validator id."""
        votes = self._votes.get((round, vote_type), {})
        out = []
        for validator in sorted(votes):
            vote = votes[validator]
            if vote.block_hash != value:
                vote = self._conflicting.get((round, vote_type, validator), {}).get(value)  # type: ignore[assignment]
            if vote is not None:
                out.append(vote)
        return out

    def all_votes(self) -> list[Vote]:
        """Return every vote held (counted first votes, then counted conflicting ones), by round,
        vote type and validator id."""
        out: list[Vote] = []
        for (round, vote_type) in sorted(self._votes):
            votes = self._votes[(round, vote_type)]
            for validator in sorted(votes):
                out.append(votes[validator])
                conflicting = self._conflicting.get((round, vote_type, validator), {})
                out.extend(conflicting.values())
        return out

    def evidence(self) -> list[DuplicateVoteEvidence]:
        """Return the equivocation evidence found so far at this height, in the order found."""
        return list(self._evidence)
