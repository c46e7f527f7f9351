"""NodeRuntimeExecutionDriver: the execution hook, idempotence, gaps, snapshots and restart replay."""

from __future__ import annotations

import pytest

from agent_world_node.execution import ExecutionError, NodeRuntimeExecutionDriver
from agent_world_node.store import NodeStore
from agent_world_node.types import (
    ZERO_HASH,
    Block,
    BlockHeader,
    CommitCertificate,
    NodeConsensusAction,
    compute_consensus_action_root,
)
from agent_world_runtime import World
from agent_world_runtime.actions import HarvestRadiation, MoveAgent, encode_signed_action
from agent_world_runtime.crypto import sha256
from agent_world_runtime.params import WorldParams
from agent_world_runtime.signer import AgentSigner

CHAIN = "exec-test"


ALICE = AgentSigner.from_seed("alice", b"a" * 32, CHAIN)


def _genesis() -> World:
    return World.from_genesis(CHAIN, WorldParams(), agents=[ALICE.genesis_agent(10_000, 10_000)])


def _consensus_action(signed) -> NodeConsensusAction:
    payload = encode_signed_action(signed)
    h = sha256(payload)
    return NodeConsensusAction(h, signed.body.agent_id, payload, h)


def _blocks(n: int) -> list[Block]:
    """n blocks: alice (a genesis agent) moves and harvests."""
    alice = AgentSigner.from_seed("alice", b"a" * 32, CHAIN)
    out, prev = [], ZERO_HASH
    for h in range(1, n + 1):
        acts = [alice.sign(MoveAgent(to=(h, 0, 0))), alice.sign(HarvestRadiation())]
        actions = [_consensus_action(a) for a in acts]
        header = BlockHeader(CHAIN, h, 0, 0, "p", prev, compute_consensus_action_root(actions), len(actions),
                             h - 1, ZERO_HASH, ZERO_HASH, 1_000 * h)
        block = Block(header, actions)
        out.append(block)
        prev = block.hash()
    return out


def _cert(block: Block) -> CommitCertificate:
    return CommitCertificate(block.header.height, 0, block.hash(), [])


def _open(tmp_path, interval=3):
    store = NodeStore(tmp_path / "node.sqlite3")
    return store, NodeRuntimeExecutionDriver.open(store, _genesis, tmp_path / "snapshots", interval)


def _run(driver, store, block):
    store.put_block(block, _cert(block))
    return driver.on_commit(driver.context_for(block, CHAIN, "node", 0))


def test_execution_is_deterministic_idempotent_and_ordered(tmp_path):
    blocks = _blocks(5)
    store_a, a = _open(tmp_path / "a")
    store_b, b = _open(tmp_path / "b")
    results = [_run(a, store_a, blk) for blk in blocks]
    for blk, res in zip(blocks, results, strict=True):
        assert _run(b, store_b, blk) == res
    assert len({r.execution_state_root for r in results}) == 5  # every height changes the world
    # the same height again returns the stored result; a lower height is an error
    assert a.on_commit(a.context_for(blocks[-1], CHAIN, "node", 0)) == results[-1]
    with pytest.raises(ExecutionError, match="below the last executed height"):
        a.on_commit(a.context_for(blocks[1], CHAIN, "node", 0))
    assert a.world.get_agent("alice").position == (5, 0, 0)


def test_a_gap_is_filled_from_the_block_store(tmp_path):
    blocks = _blocks(4)
    store, driver = _open(tmp_path)
    for blk in blocks[:3]:
        store.put_block(blk, _cert(blk))
    res = _run(driver, store, blocks[3])
    assert res.execution_height == 4
    assert [store.get_execution(h) is not None for h in (1, 2, 3, 4)] == [True] * 4
    store2, reference = _open(tmp_path / "ref")
    assert [_run(reference, store2, b) for b in blocks][-1] == res


def test_a_gap_without_stored_blocks_is_a_clear_error(tmp_path):
    blocks = _blocks(3)
    store, driver = _open(tmp_path)
    with pytest.raises(ExecutionError, match="not in the store"):
        driver.on_commit(driver.context_for(blocks[2], CHAIN, "node", 0))


def test_restart_restores_from_snapshot_and_replays_the_rest(tmp_path):
    blocks = _blocks(7)
    store, driver = _open(tmp_path, interval=3)
    results = [_run(driver, store, blk) for blk in blocks]
    assert (tmp_path / "snapshots" / "current").exists()  # written at heights 3 and 6
    store.close()
    store, restarted = _open(tmp_path, interval=3)
    assert restarted.last_height == 7
    assert restarted.last_state_root == results[-1].execution_state_root
    assert restarted.last_block_hash == results[-1].execution_block_hash
    assert restarted.world.get_agent("alice").position == (7, 0, 0)


def test_restart_detects_a_tampered_execution_record(tmp_path):
    blocks = _blocks(4)
    store, driver = _open(tmp_path, interval=100)  # no snapshot: restart replays from genesis
    for blk in blocks:
        _run(driver, store, blk)
    store._db.execute("UPDATE executions SET execution_state_root=? WHERE height=2", (b"\x01" * 32,))
    store.close()
    with pytest.raises(ExecutionError, match="height 2"):
        _open(tmp_path, interval=100)
