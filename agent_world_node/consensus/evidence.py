"""Evidence of equivocation: two different signed messages of one validator for the same step.

Double votes and double proposals are kept as evidence, not silently overwritten. A piece of evidence holds both signed messages, so anyone with the validator set can
check it (``verify_evidence``) without trusting the node that found it.
"""

from __future__ import annotations

import msgspec

from agent_world_node.types import PROPOSAL_SIGN_DOMAIN, VOTE_SIGN_DOMAIN, Proposal, Vote
from agent_world_runtime.crypto import verify

from .validators import ValidatorSet


class InvalidEvidence(ValueError):
    """Evidence that does not prove equivocation; the message says which check failed."""


class DuplicateVoteEvidence(msgspec.Struct, tag="duplicate_vote", forbid_unknown_fields=True, frozen=True):
    """Two different votes of ``first.validator`` for the same (height, round, vote_type).
    ``first`` is the vote that was counted; ``second`` the conflicting one that was not."""

    first: Vote
    second: Vote

    @property
    def validator(self) -> str:
        """The equivocating validator's id."""
        return self.first.validator

    @property
    def height(self) -> int:
        """The height both votes are for."""
        return self.first.height

    @property
    def round(self) -> int:
        """The round both votes are for."""
        return self.first.round


class DuplicateProposalEvidence(
    msgspec.Struct, tag="duplicate_proposal", forbid_unknown_fields=True, frozen=True
):
    """Two different proposals of ``first.validator`` for the same (height, round).
    ``first`` is the proposal that was kept; ``second`` the conflicting one."""

    first: Proposal
    second: Proposal

    @property
    def validator(self) -> str:
        """The equivocating proposer's id."""
        return self.first.validator

    @property
    def height(self) -> int:
        """The height both proposals are for."""
        return self.first.height

    @property
    def round(self) -> int:
        """The round both proposals are for."""
        return self.first.round


Evidence = DuplicateVoteEvidence | DuplicateProposalEvidence


def verify_evidence(evidence: Evidence, chain_id: str, validator_set: ValidatorSet) -> None:
    """Check that ``evidence`` proves equivocation on ``chain_id`` by a member of ``validator_set``.

    Raises InvalidEvidence when the two messages are from different validators or for different
    (height, round[, vote_type]), are identical, the validator is unknown, or a signature is bad.
    """
    a, b = evidence.first, evidence.second
    if a.validator != b.validator:
        raise InvalidEvidence(f"messages are from different validators ({a.validator}, {b.validator})")
    if (a.height, a.round) != (b.height, b.round):
        raise InvalidEvidence(f"messages are for different steps ({a.height}/{a.round}, {b.height}/{b.round})")
    validator = validator_set.get(a.validator)
    if validator is None:
        raise InvalidEvidence(f"validator {a.validator} is not in the validator set")
    if isinstance(evidence, DuplicateVoteEvidence):
        va, vb = evidence.first, evidence.second
        if va.vote_type != vb.vote_type:
            raise InvalidEvidence("votes are of different types (a prevote and a precommit may differ)")
        if va.block_hash == vb.block_hash:
            raise InvalidEvidence("the two votes are for the same value; that is not equivocation")
        domain = VOTE_SIGN_DOMAIN
    else:
        if a.sign_bytes(chain_id) == b.sign_bytes(chain_id):
            raise InvalidEvidence("the two proposals are identical; that is not equivocation")
        domain = PROPOSAL_SIGN_DOMAIN
    for which, msg in (("first", a), ("second", b)):
        if not verify(validator.public_key, domain, msg.sign_bytes(chain_id), msg.signature):
            raise InvalidEvidence(f"the {which} message has a bad signature")
