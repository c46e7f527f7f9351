"""The offline chain builder of the big-world benchmarks (benchmarks/chain.py): a node opens the
home it builds at the built height and root, every stored block carries a valid commit
certificate and action root, a replay from genesis agrees with the execution records, and a late
joiner with an empty home syncs it to the same root."""

from __future__ import annotations

import shutil

import pytest

from agent_world_node import config as cfg
from agent_world_node.consensus import ValidatorSet, verify_commit_certificate
from agent_world_node.node import Node
from agent_world_node.replica import Replica
from agent_world_node.store import NodeStore
from agent_world_node.types import ZERO_HASH, compute_consensus_action_root
from agent_world_runtime.actions import decode_signed_action
from benchmarks.chain import (
    ChainBuildError,
    agent_signers,
    bank_signer,
    build_chain,
    init_joiner_home,
    node_multiaddr,
    workload_blocks,
)
from tests.node_harness import free_port

pytestmark = pytest.mark.timeout(60)


def _config() -> cfg.NodeConfig:
    c = cfg.NodeConfig()
    c.p2p.listen = f"/ip4/127.0.0.1/tcp/{free_port()}"
    c.rpc.listen = f"127.0.0.1:{free_port()}"
    return c


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    return build_chain(root / "validator", agents=30, register_per_block=10, activity_blocks=8,
                       actions_per_block=12, config=_config())


def _open_replica(home: cfg.Home, store: NodeStore) -> Replica:
    return Replica.open(
        genesis=cfg.read_genesis(home.genesis_file),
        consensus=cfg.ConsensusConfig(),
        validator_key=cfg.read_key(home.validator_key_file),
        store=store,
        snapshot_dir=home.snapshot_dir,
        snapshot_interval=50,
        node_id="test",
        now_ms=lambda: 0,
    )


def test_built_chain_has_the_asked_shape(chain):
    assert chain.height == 3 + 8
    assert chain.heights_by_kind == {"register": (1, 3), "activity": (4, 11)}
    assert chain.actions == 30 + 8 * 12
    assert chain.agents == 30
    # one event per applied action (register, harvest, move, transfer), none rejected
    assert chain.events == chain.actions


def test_node_opens_the_chain_at_its_height_and_root(chain):
    node = Node(chain.home)
    try:
        assert node.height == chain.height
        assert node.execution_height == chain.height
        assert node.replica.driver.last_state_root == chain.state_root
        assert node.replica.driver.last_block_hash == chain.execution_block_hash
        assert node.world.stats()["agents"] == 30 + 1  # the agents and the genesis bank
        assert node.replica.is_validator
    finally:
        node.replica.store.close()


def test_every_block_is_certified_by_the_validator(chain):
    genesis = cfg.read_genesis(chain.home.genesis_file)
    validators = ValidatorSet.from_genesis(genesis)
    store = NodeStore(chain.home.db_file)
    try:
        prev = ZERO_HASH
        for h in range(1, chain.height + 1):
            stored = store.get_block(h)
            assert stored is not None and stored.execution is not None
            block = stored.block
            assert block.header.prev_block_hash == prev
            assert block.header.action_root == compute_consensus_action_root(block.actions)
            verify_commit_certificate(stored.certificate, block.hash(), genesis.chain_id, validators, height=h)
            assert [a.submitter for a in block.actions] == sorted(a.submitter for a in block.actions)
            for act in block.actions:
                assert decode_signed_action(act.payload).body.agent_id == act.submitter
            prev = block.hash()
        assert store.get_execution(chain.height).execution_state_root == chain.state_root
    finally:
        store.close()


def test_replay_from_genesis_agrees_with_the_records(chain, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(chain.home.root, copy)
    home = cfg.Home(copy)
    shutil.rmtree(home.snapshot_dir)  # no snapshot: every block is re-executed and checked
    store = NodeStore(home.db_file)
    try:
        replica = _open_replica(home, store)
        assert replica.height == chain.height
        assert replica.driver.last_state_root == chain.state_root
    finally:
        store.close()


def test_late_joiner_syncs_the_chain_to_the_same_root(chain, tmp_path):
    joiner_home = init_joiner_home(chain.home, tmp_path / "joiner", config=_config())
    assert cfg.read_config(joiner_home.config_file).p2p.peers == [node_multiaddr(chain.home)]
    assert joiner_home.genesis_file.read_bytes() == chain.home.genesis_file.read_bytes()
    src_store, dst_store = NodeStore(chain.home.db_file), NodeStore(joiner_home.db_file)
    try:
        source = _open_replica(chain.home, src_store)
        joiner = _open_replica(joiner_home, dst_store)
        assert joiner.height == 0 and not joiner.is_validator
        outputs = joiner.handle_synced(source.serve_sync(1, chain.height), peer="source")
        assert not [o for o in outputs if type(o).__name__ == "Misbehaviour"]
        assert joiner.height == chain.height
        assert joiner.driver.last_state_root == chain.state_root
        assert joiner.driver.last_block_hash == chain.execution_block_hash
    finally:
        src_store.close()
        dst_store.close()


def test_the_workload_follows_the_agents_nonces():
    signers = agent_signers(3, "c")
    blocks = list(workload_blocks(signers, register_per_block=2, activity_blocks=2, actions_per_block=4,
                                  bank=bank_signer("c")))
    assert [k for k, _ in blocks] == ["register", "register", "activity", "activity"]
    assert [a.body.agent_id for a in blocks[0][1]] == ["bank", "bank"]
    nonces = {}
    for _kind, acts in blocks:
        for a in acts:
            assert a.body.nonce > nonces.get(a.body.agent_id, 0)
            nonces[a.body.agent_id] = a.body.nonce
    assert nonces == {"bank": 3, "a0": 3, "a1": 3, "a2": 2}


def test_building_into_an_existing_home_is_refused(chain):
    with pytest.raises(ChainBuildError, match="node home already exists"):
        build_chain(chain.home.root, agents=1)
