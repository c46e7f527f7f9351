"""State root: the incremental state tree against a from-scratch reference, determinism across worlds,
and that a block only recomputes what it changed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_world_runtime import World, compute_action_id, state_tree
from agent_world_runtime.actions import HarvestRadiation, MoveAgent, TransferResource
from agent_world_runtime.merkle import EMPTY_ROOT, merkle_root_of_leaf_hashes, node_hash
from agent_world_runtime.params import WorldParams
from agent_world_runtime.signer import AgentSigner
from agent_world_runtime.state_tree import BUCKET_BITS, StateTree, bucket_of, record_leaf_hash
from tests.worlds import create_signed, genesis_world

CHAIN = "state-chain"


def reference_root(records: dict[bytes, bytes]) -> bytes:
    """The documented layout computed naively: every bucket, then a full binary tree."""
    buckets: dict[int, list[bytes]] = {}
    for key in sorted(records):
        buckets.setdefault(bucket_of(key), []).append(record_leaf_hash(key, records[key]))
    level = [merkle_root_of_leaf_hashes(buckets[b]) if b in buckets else EMPTY_ROOT for b in range(1 << BUCKET_BITS)]
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def test_tree_matches_the_documented_layout():
    tree, records = StateTree(), {}
    assert tree.root() == reference_root({})
    for i in range(40):
        key, value = f"agent/a{i}".encode(), f"v{i}".encode()
        tree.set(key, value)
        records[key] = value
    tree.delete(b"agent/a3")
    del records[b"agent/a3"]
    assert tree.root() == reference_root(records)
    assert len(tree) == 39


ops = st.lists(
    st.tuples(st.sampled_from(["set", "delete", "root"]), st.integers(0, 30), st.binary(max_size=8)),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_incremental_root_equals_fresh_tree(operations):
    tree, records = StateTree(), {}
    for op, k, value in operations:
        key = b"k%d" % k
        if op == "set":
            tree.set(key, value)
            records[key] = value
        elif op == "delete":
            tree.delete(key)
            records.pop(key, None)
        else:
            tree.root()
    fresh = StateTree()
    for key, value in records.items():
        fresh.set(key, value)
    assert tree.root() == fresh.root()
    if not records:
        assert tree.root() == reference_root({})


def build_world(extra_harvest: bool = False) -> tuple[World, list[bytes]]:
    w = genesis_world(CHAIN, WorldParams())
    agents = [AgentSigner.from_seed(f"agent{i}", bytes([i + 1]) * 32, CHAIN) for i in range(3)]
    roots = []
    for height in range(1, 4):
        w.begin_block(height, height * 10)
        for i, a in enumerate(agents):
            if height == 1:
                action = create_signed(w, a)
            elif height == 2:
                action = a.sign(MoveAgent(to=(i, height, 0)))
            else:
                action = a.sign(TransferResource(to=agents[(i + 1) % 3].agent_id, kind="data", amount=i + 1))
            w.apply_action(action, compute_action_id(action))
        if extra_harvest and height == 3:
            s = agents[0].sign(HarvestRadiation())
            w.apply_action(s, compute_action_id(s))
        roots.append(w.end_block().state_root)
    return w, roots


def test_same_actions_same_roots_different_actions_different_roots():
    (w1, r1), (w2, r2) = build_world(), build_world()
    assert r1 == r2 and len(set(r1)) == 3
    assert w1.state_root() == w2.state_root() == r1[-1]
    _, r3 = build_world(extra_harvest=True)
    assert r3[:2] == r1[:2] and r3[2] != r1[2]
    other_chain = World.from_genesis("another-chain", WorldParams())
    assert other_chain.state_root() != World.from_genesis(CHAIN, WorldParams()).state_root()
    other_params = World.from_genesis(CHAIN, WorldParams(harvest_amount=6))
    assert other_params.state_root() != World.from_genesis(CHAIN, WorldParams()).state_root()


def test_a_block_recomputes_only_the_buckets_it_changed(monkeypatch):
    agents = [AgentSigner.from_seed(f"agent{i}", (i + 1).to_bytes(32, "big"), CHAIN) for i in range(300)]
    w = World.from_genesis(CHAIN, WorldParams(), agents=[a.genesis_agent(electricity=100) for a in agents])
    w.begin_block(1, 1)
    for a in agents[:5]:
        s = a.sign(MoveAgent(to=(1, 0, 0)))
        w.apply_action(s, compute_action_id(s))
    w.end_block()
    recomputed: list[int] = []
    real = state_tree.merkle_root_of_leaf_hashes
    monkeypatch.setattr(state_tree, "merkle_root_of_leaf_hashes", lambda hs: recomputed.append(len(hs)) or real(hs))
    w.begin_block(2, 2)
    s = agents[7].sign(HarvestRadiation())
    w.apply_action(s, compute_action_id(s))
    w.end_block()
    # The world leaf, the journal leaf and one agent leaf (its fee and harvest are one record
    # change): three buckets of ~1 record each.
    assert len(recomputed) == 3 and sum(recomputed) <= 6
