"""Commit certificates: building one from a precommit quorum, and checking one.

A commit certificate for (height, round, block_hash) is the set of precommit signatures of more than
2/3 of the stake. Every node that receives a commit or syncs a block checks
it with ``verify_commit_certificate`` before it trusts the block.
"""

from __future__ import annotations

from agent_world_node.types import VOTE_SIGN_DOMAIN, CommitCertificate, CommitSig, Vote, VoteType
from agent_world_runtime.crypto import verify

from .validators import ValidatorSet


class InvalidCertificate(ValueError):
    """A commit certificate that does not prove a commit; the message gives the reason."""


def build_commit_certificate(height: int, round: int, block_hash: bytes, precommits: list[Vote]) -> CommitCertificate:
    """Return the certificate made of ``precommits`` (verified PRECOMMIT votes for ``block_hash`` at
    (height, round)), signatures sorted by validator id.

    Raises ValueError if a vote is not such a precommit or a validator appears twice.
    """
    seen: set[str] = set()
    sigs = []
    for vote in sorted(precommits, key=lambda v: v.validator):
        if (vote.vote_type, vote.height, vote.round, vote.block_hash) != (
            VoteType.PRECOMMIT,
            height,
            round,
            block_hash,
        ):
            raise ValueError(f"vote of {vote.validator} is not a precommit for this block at {height}/{round}")
        if vote.validator in seen:
            raise ValueError(f"validator {vote.validator} appears twice")
        seen.add(vote.validator)
        sigs.append(CommitSig(vote.validator, vote.signature))
    return CommitCertificate(height=height, round=round, block_hash=block_hash, signatures=sigs)


def verify_commit_certificate(
    cert: CommitCertificate,
    block_hash: bytes,
    chain_id: str,
    validator_set: ValidatorSet,
    *,
    height: int | None = None,
) -> None:
    """Check that ``cert`` commits ``block_hash`` on ``chain_id`` under ``validator_set``.

    Each signature must be a valid Ed25519 signature by its validator over
    ``VOTE_SIGN_DOMAIN || Vote(PRECOMMIT, cert.height, cert.round, block_hash).sign_bytes(chain_id)``,
    no validator may sign twice, and the signers' stake must be at least ``validator_set.quorum``
    (more than 2/3 of the total). When ``height`` is given, ``cert.height`` must equal it.

    Raises InvalidCertificate with the reason: wrong block or height, negative round, unknown
    validator, duplicate signer, bad signature, or insufficient stake
    (e.g. "stake 2 of 4 is not more than 2/3").
    """
    if cert.block_hash != block_hash:
        raise InvalidCertificate(
            f"certificate is for block {cert.block_hash.hex()[:16]}, not {block_hash.hex()[:16]}"
        )
    if height is not None and cert.height != height:
        raise InvalidCertificate(f"certificate is for height {cert.height}, expected {height}")
    if cert.height < 0 or cert.round < 0:
        raise InvalidCertificate(f"certificate has negative height or round ({cert.height}/{cert.round})")
    signed_stake = 0
    seen: set[str] = set()
    for sig in cert.signatures:
        validator = validator_set.get(sig.validator)
        if validator is None:
            raise InvalidCertificate(f"signer {sig.validator} is not in the validator set")
        if sig.validator in seen:
            raise InvalidCertificate(f"signer {sig.validator} appears twice")
        seen.add(sig.validator)
        sign_bytes = Vote(
            vote_type=VoteType.PRECOMMIT,
            height=cert.height,
            round=cert.round,
            block_hash=block_hash,
            validator=sig.validator,
            signature=b"",
        ).sign_bytes(chain_id)
        if not verify(validator.public_key, VOTE_SIGN_DOMAIN, sign_bytes, sig.signature):
            raise InvalidCertificate(f"bad precommit signature from {sig.validator}")
        signed_stake += validator.stake
    if not validator_set.has_quorum(signed_stake):
        raise InvalidCertificate(
            f"stake {signed_stake} of {validator_set.total_stake} is not more than 2/3"
        )
