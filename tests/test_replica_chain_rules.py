"""valid(v)'s chain rules: the validator-set hashes in the header, the previous height's commit
certificate (``last_commit``) and equivocation evidence in the block; and the evidence a proposer
includes is executed (slashed and jailed)."""

from __future__ import annotations

import msgspec

from agent_world_node import config as cfg
from agent_world_node.consensus.evidence import DuplicateVoteEvidence
from agent_world_node.replica import Replica
from agent_world_node.store import NodeStore
from agent_world_node.types import VOTE_SIGN_DOMAIN, Block, Vote, VoteType, block_body_hashes
from agent_world_runtime.codec import encode
from agent_world_runtime.crypto import SigningKey

CHAIN = "chain-rules"
KEY = SigningKey(b"\x31" * 32)
VID = KEY.public_key.hex()


def _replica(tmp_path) -> Replica:
    genesis = cfg.Genesis(chain_id=CHAIN, genesis_time_ms=0, epoch_length=4,
                          validators=[cfg.GenesisValidator("v", VID, 10)])
    replica = Replica.open(genesis=genesis, consensus=cfg.ConsensusConfig(), validator_key=KEY,
                           store=NodeStore(tmp_path / "db.sqlite3"), snapshot_dir=tmp_path / "snap",
                           snapshot_interval=100, node_id="n", now_ms=lambda: 10_000)
    replica.start()  # a single validator decides height 1 alone
    assert replica.height == 1
    return replica


def _with_body(block: Block, **changes) -> Block:
    """``block`` with body fields replaced and the header's body hashes recomputed (a well-shaped
    block a Byzantine proposer could make)."""
    block = msgspec.structs.replace(block, **changes)
    commit_hash, evidence_hash = block_body_hashes(block.last_commit, block.evidence)
    header = msgspec.structs.replace(block.header, last_commit_hash=commit_hash, evidence_hash=evidence_hash)
    return msgspec.structs.replace(block, header=header)


def _vote(height: int, block_hash: bytes | None) -> Vote:
    unsigned = Vote(VoteType.PREVOTE, height, 0, block_hash, VID, b"")
    return msgspec.structs.replace(unsigned, signature=KEY.sign(VOTE_SIGN_DOMAIN, unsigned.sign_bytes(CHAIN)))


def test_the_proposal_carries_the_previous_commit_and_set_hashes_and_each_is_checked(tmp_path):
    replica = _replica(tmp_path)
    block = replica._build_block(2, 0)
    assert block.last_commit is not None and block.last_commit.height == 1
    assert block.header.validators_hash == replica.sets.hash_at(2) == replica.sets.hash_at(3)
    assert replica.validity.problem(block) is None

    wrong_set = msgspec.structs.replace(block, header=msgspec.structs.replace(block.header, validators_hash=b"\x01" * 32))
    assert "validators_hash" in replica.validity.problem(wrong_set)
    wrong_next = msgspec.structs.replace(block, header=msgspec.structs.replace(block.header, next_validators_hash=b"\x01" * 32))
    assert "next_validators_hash" in replica.validity.problem(wrong_next)
    assert "no last commit" in replica.validity.problem(_with_body(block, last_commit=None))
    forged = msgspec.structs.replace(block.last_commit, signatures=[
        msgspec.structs.replace(s, signature=b"\x00" * 64) for s in block.last_commit.signatures])
    assert "last commit does not verify" in replica.validity.problem(_with_body(block, last_commit=forged))
    other = msgspec.structs.replace(block.last_commit, block_hash=b"\x02" * 32)
    assert "not a certificate of the previous block" in replica.validity.problem(_with_body(block, last_commit=other))
    # the body must match the header's hashes (shape)
    unhashed = msgspec.structs.replace(block, last_commit=None)
    assert "last_commit_hash" in replica.validity.problem(unhashed)


def test_evidence_is_checked_included_once_and_executed(tmp_path):
    replica = _replica(tmp_path)
    evidence = DuplicateVoteEvidence(_vote(1, b"\x0a" * 32), _vote(1, b"\x0b" * 32))
    block = replica._build_block(2, 0)
    assert "malformed" in replica.validity.problem(_with_body(block, evidence=[b"\x93garbage"]))
    same = DuplicateVoteEvidence(_vote(1, b"\x0a" * 32), _vote(1, b"\x0a" * 32))
    assert "does not prove equivocation" in replica.validity.problem(_with_body(block, evidence=[encode(same)]))
    twice = _with_body(block, evidence=[encode(evidence), encode(evidence)])
    assert "repeats the offence" in replica.validity.problem(twice)
    assert replica.validity.problem(_with_body(block, evidence=[encode(evidence)])) is None

    replica.store.put_evidence(1, "DuplicateVoteEvidence", encode(evidence))
    proposed = replica._build_block(2, 0)
    assert proposed.evidence == [encode(evidence)] and replica.validity.problem(proposed) is None
    replica.handle_commit_wait(1)  # height 2 decided, with the evidence
    assert replica.height == 2
    record = replica.world.validator_record(VID)
    assert record.jailed and record.jail_reason == "double_sign" and record.slashed == 1
    assert replica._build_block(3, 0).evidence == []  # punished once: never included again
    assert "already punished" in replica.validity.problem(_with_body(replica._build_block(3, 0),
                                                                      evidence=[encode(evidence)]))
