"""Commit certificates and evidence: every way a certificate can be wrong gives its own reason."""

from __future__ import annotations

import msgspec
import pytest

from agent_world_node.consensus import (
    DuplicateVoteEvidence,
    InvalidCertificate,
    InvalidEvidence,
    Validator,
    ValidatorSet,
    build_commit_certificate,
    verify_commit_certificate,
    verify_evidence,
)
from agent_world_node.types import VOTE_SIGN_DOMAIN, CommitCertificate, CommitSig, Vote, VoteType
from agent_world_runtime.crypto import SigningKey

CHAIN = "cert-chain"
KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
VSET = ValidatorSet(Validator.from_public_key(k.public_key, 1) for k in KEYS)
BLOCK = b"\x42" * 32


def precommit(key: SigningKey, height=5, round=1, block_hash=BLOCK, vote_type=VoteType.PRECOMMIT, chain=CHAIN) -> Vote:
    unsigned = Vote(vote_type, height, round, block_hash, key.public_key.hex(), b"")
    return msgspec.structs.replace(unsigned, signature=key.sign(VOTE_SIGN_DOMAIN, unsigned.sign_bytes(chain)))


def cert(*keys: SigningKey) -> CommitCertificate:
    return build_commit_certificate(5, 1, BLOCK, [precommit(k) for k in keys])


def test_valid_certificate_passes_and_is_sorted():
    c = cert(KEYS[2], KEYS[0], KEYS[1])
    verify_commit_certificate(c, BLOCK, CHAIN, VSET, height=5)
    assert [s.validator for s in c.signatures] == sorted(s.validator for s in c.signatures)


def test_insufficient_stake():
    with pytest.raises(InvalidCertificate, match="stake 2 of 4 is not more than 2/3"):
        verify_commit_certificate(cert(KEYS[0], KEYS[1]), BLOCK, CHAIN, VSET)


def test_unknown_validator():
    stranger = SigningKey(b"\x99" * 32)
    with pytest.raises(InvalidCertificate, match="not in the validator set"):
        verify_commit_certificate(cert(KEYS[0], KEYS[1], stranger), BLOCK, CHAIN, VSET)


def test_duplicate_signer():
    c = cert(KEYS[0], KEYS[1])
    doubled = msgspec.structs.replace(c, signatures=c.signatures + [c.signatures[0]])
    with pytest.raises(InvalidCertificate, match="appears twice"):
        verify_commit_certificate(doubled, BLOCK, CHAIN, VSET)


@pytest.mark.parametrize(
    "bad_vote",
    [
        precommit(KEYS[2], vote_type=VoteType.PREVOTE),  # a prevote is not a precommit
        precommit(KEYS[2], round=0),  # another round
        precommit(KEYS[2], block_hash=b"\x00" * 32),  # another block
        precommit(KEYS[2], chain="other-chain"),  # another chain
    ],
)
def test_bad_signature(bad_vote):
    c = cert(KEYS[0], KEYS[1])
    forged = msgspec.structs.replace(c, signatures=c.signatures + [CommitSig(bad_vote.validator, bad_vote.signature)])
    with pytest.raises(InvalidCertificate, match="bad precommit signature"):
        verify_commit_certificate(forged, BLOCK, CHAIN, VSET)


def test_wrong_block_or_height():
    c = cert(*KEYS[:3])
    with pytest.raises(InvalidCertificate, match="not"):
        verify_commit_certificate(c, b"\x01" * 32, CHAIN, VSET)
    with pytest.raises(InvalidCertificate, match="height 5, expected 6"):
        verify_commit_certificate(c, BLOCK, CHAIN, VSET, height=6)


def test_certificate_checked_against_the_right_validator_set():
    heavy = ValidatorSet(Validator.from_public_key(k.public_key, s) for k, s in zip(KEYS, (1, 1, 1, 10), strict=True))
    with pytest.raises(InvalidCertificate, match="stake 3 of 13"):
        verify_commit_certificate(cert(*KEYS[:3]), BLOCK, CHAIN, heavy)


def test_build_rejects_votes_that_do_not_belong():
    with pytest.raises(ValueError, match="not a precommit for this block"):
        build_commit_certificate(5, 1, BLOCK, [precommit(KEYS[0], round=2)])
    with pytest.raises(ValueError, match="appears twice"):
        build_commit_certificate(5, 1, BLOCK, [precommit(KEYS[0]), precommit(KEYS[0])])


def test_vote_evidence_checks():
    a, b = precommit(KEYS[0]), precommit(KEYS[0], block_hash=None)
    verify_evidence(DuplicateVoteEvidence(a, b), CHAIN, VSET)
    with pytest.raises(InvalidEvidence, match="same value"):
        verify_evidence(DuplicateVoteEvidence(a, a), CHAIN, VSET)
    with pytest.raises(InvalidEvidence, match="different validators"):
        verify_evidence(DuplicateVoteEvidence(a, precommit(KEYS[1], block_hash=None)), CHAIN, VSET)
    with pytest.raises(InvalidEvidence, match="different steps"):
        verify_evidence(DuplicateVoteEvidence(a, precommit(KEYS[0], round=2, block_hash=None)), CHAIN, VSET)
    with pytest.raises(InvalidEvidence, match="different types"):
        verify_evidence(DuplicateVoteEvidence(a, precommit(KEYS[0], vote_type=VoteType.PREVOTE, block_hash=None)), CHAIN, VSET)
    with pytest.raises(InvalidEvidence, match="second message has a bad signature"):
        verify_evidence(DuplicateVoteEvidence(a, msgspec.structs.replace(b, signature=bytes(64))), CHAIN, VSET)
    outsider = SigningKey(b"\x55" * 32)
    with pytest.raises(InvalidEvidence, match="not in the validator set"):
        verify_evidence(DuplicateVoteEvidence(precommit(outsider), precommit(outsider, block_hash=None)), CHAIN, VSET)
