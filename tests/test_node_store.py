"""Block store, execution records, WAL and mempool."""

from __future__ import annotations

import pytest

from agent_world_node.mempool import Mempool, MempoolFull
from agent_world_node.store import ExecutionRecord, NodeStore, StoreError
from agent_world_node.types import (
    ZERO_HASH,
    Block,
    BlockHeader,
    CommitCertificate,
    CommitSig,
    compute_consensus_action_root,
)
from agent_world_runtime.actions import MoveAgent, encode_signed_action, sign_action
from agent_world_runtime.crypto import SigningKey, sha256


def _block(height: int, actions=(), prev=ZERO_HASH) -> Block:
    actions = list(actions)
    header = BlockHeader(
        chain_id="test", height=height, round=0, epoch=0, proposer="p", prev_block_hash=prev,
        action_root=compute_consensus_action_root(actions), action_count=len(actions),
        last_execution_height=height - 1, last_execution_block_hash=ZERO_HASH,
        last_execution_state_root=ZERO_HASH, timestamp_ms=1000 + height,
    )
    return Block(header, actions)


def _cert(block: Block) -> CommitCertificate:
    return CommitCertificate(block.header.height, 0, block.hash(), [CommitSig("v", b"s" * 64)])


def test_blocks_round_trip_and_survive_reopen(tmp_path):
    store = NodeStore(tmp_path / "db.sqlite3")
    b1 = _block(1)
    b2 = _block(2, prev=b1.hash())
    store.put_block(b1, _cert(b1))
    store.put_block(b2, _cert(b2))
    store.put_execution(ExecutionRecord(1, b"e" * 32, b"r" * 32, b"v" * 32, 0))
    store.close()
    store = NodeStore(tmp_path / "db.sqlite3")
    assert store.last_block_height() == 2
    assert store.get_block(2).block == b2
    assert store.get_block(1).execution.execution_state_root == b"r" * 32
    assert store.get_block(2).execution is None
    assert store.last_execution().height == 1
    assert store.get_block(3) is None


def test_a_second_block_at_a_height_is_refused(tmp_path):
    store = NodeStore(tmp_path / "db.sqlite3")
    b1 = _block(1)
    store.put_block(b1, _cert(b1))
    store.put_block(b1, _cert(b1))  # idempotent
    other = _block(1, prev=b"x" * 32)
    with pytest.raises(StoreError, match="height 1"):
        store.put_block(other, _cert(other))


def test_execution_record_conflict_is_refused(tmp_path):
    store = NodeStore(tmp_path / "db.sqlite3")
    rec = ExecutionRecord(1, b"e" * 32, b"r" * 32, b"v" * 32, 0)
    store.put_execution(rec)
    store.put_execution(rec)
    with pytest.raises(StoreError, match="state root"):
        store.put_execution(ExecutionRecord(1, b"e" * 32, b"R" * 32, b"v" * 32, 0))


def test_wal_append_and_prune(tmp_path):
    store = NodeStore(tmp_path / "db.sqlite3")
    store.wal_append(5, 0, "prevote", b"a")
    store.wal_append(5, 1, "precommit", b"b")
    store.wal_append(6, 0, "prevote", b"c")
    assert store.wal_entries(5) == [(0, "prevote", b"a"), (1, "precommit", b"b")]
    store.wal_prune(6)
    assert store.wal_entries(5) == []
    assert store.wal_entries(6) == [(0, "prevote", b"c")]


def _signed(agent: str, nonce: int, fee: int = 2):
    key = SigningKey(bytes([len(agent)]) * 32)
    signed = sign_action(key, "test", agent, nonce, MoveAgent(to=(nonce, 0, 0)))
    payload = encode_signed_action(signed)
    return payload, sha256(payload), signed, fee


def test_mempool_orders_by_submitter_then_nonce_and_bounds_size():
    pool = Mempool(max_actions=4)
    entries = [_signed("bob", 2), _signed("alice", 3), _signed("bob", 1), _signed("alice", 1)]
    for entry in entries:
        assert pool.add(*entry)
    assert not pool.add(*entries[0])  # duplicate
    with pytest.raises(MempoolFull):
        pool.add(*_signed("carol", 1))
    reaped = pool.reap(10, 1_000_000, lambda a: True)
    order = [(a.submitter, next(s.body.nonce for p, h, s, _ in entries if h == a.action_id)) for a in reaped]
    assert order == [("alice", 1), ("alice", 3), ("bob", 1), ("bob", 2)]
    assert len(pool.reap(2, 1_000_000, lambda a: True)) == 2
    assert pool.reap(10, 1, lambda a: True) == []
    assert [a.submitter for a in pool.reap(10, 1_000_000, lambda a: a.submitter == "bob")] == ["bob", "bob"]
    pool.remove([reaped[0].action_id])
    assert len(pool) == 3
    assert pool.recheck(lambda agent: (1, 100) if agent == "bob" else None) == 1  # bob's nonce 1 is used
    assert len(pool) == 2


def test_mempool_owes_fees_per_agent_and_recheck_drops_what_can_no_longer_be_paid():
    pool = Mempool(max_actions=10)
    entries = [_signed("alice", n, fee=3) for n in (1, 2, 3)] + [_signed("bob", 1, fee=5)]
    for entry in entries:
        pool.add(*entry)
    assert (pool.owed("alice"), pool.owed("bob"), pool.owed("carol")) == (9, 5, 0)
    # alice now holds 7 electricity: her first two actions (6) still fit, the third does not
    assert pool.recheck(lambda agent: (0, 7) if agent == "alice" else (0, 100)) == 1
    assert (len(pool), pool.owed("alice"), pool.owed("bob")) == (3, 6, 5)
    pool.remove([entries[3][1]])
    assert pool.owed("bob") == 0


def test_mempool_reaps_the_oldest_actions_first_whatever_the_agent():
    pool = Mempool(max_actions=100)
    first = _signed("zed", 1)
    pool.add(*first)
    later = [_signed("al", n) for n in range(1, 20)]  # an agent that sorts first, arriving later
    for entry in later:
        pool.add(*entry)
    reaped = pool.reap(5, 1_000_000, lambda a: True)
    assert first[1] in [a.action_id for a in reaped], "a backlog starved the oldest action"
    assert [a.submitter for a in reaped] == ["al"] * 4 + ["zed"]  # then ordered by (submitter, nonce)


def test_fee_free_actions_of_one_submitter_can_be_removed_one_by_one():
    """Two of a validator's attestations (fee 0) pending: removing them never fails."""
    pool = Mempool(max_actions=10)
    first, second = _signed("validator", 1, fee=0), _signed("validator", 2, fee=0)
    pool.add(*first)
    pool.add(*second)
    pool.remove([first[1]])
    pool.remove([second[1]])
    assert len(pool) == 0 and pool.owed("validator") == 0


def test_mempool_byte_budget_counts_whole_encodings_so_a_full_block_fits_one_gossip_message():
    """Long agent ids make the per-action framing (ids, hashes, field names) far more than a
    guess of 100 bytes; the reaped actions' encoding must still stay within the budget, and the
    configured budget within one gossip message."""
    from agent_world_node.config import MAX_BLOCK_BYTES_LIMIT, ConsensusConfig
    from agent_world_node.replica import MAX_GOSSIP_BYTES
    from agent_world_runtime.codec import encode

    pool = Mempool(max_actions=10_000)
    for n in range(1, 3000):
        pool.add(*_signed("a" * 60 + f"{n:04d}", 1))
    budget = 200_000
    reaped = pool.reap(10_000, budget, lambda a: True)
    assert len(reaped) < 2999  # the byte budget, not the count, ended the block
    assert 0.95 * budget <= len(encode(reaped)) <= budget
    assert MAX_BLOCK_BYTES_LIMIT + 40_000 <= MAX_GOSSIP_BYTES
    with pytest.raises(ValueError, match="max_block_bytes"):
        ConsensusConfig(max_block_bytes=MAX_BLOCK_BYTES_LIMIT + 1)
