"""The node-run policy lives in one place: ``config.PolicyConfig`` (``[policy]`` of config.toml),
performed by ``Replica.tick``. Neither the daemon nor the simulator holds policy constants of its
own, and both hand the replica the configured policy, so the simulator tests what production runs."""

from __future__ import annotations

import ast
from pathlib import Path

import agent_world_node
from agent_world_node import config as cfg
from agent_world_node.sim import cluster

PACKAGE = Path(agent_world_node.__file__).parent
POLICY_WORDS = ("INTERVAL", "REGOSSIP", "STATUS", "SYNC", "TICK", "BATCH", "HEARTBEAT", "GOSSIP")


def _module_constants(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name) and t.id.isupper()]
    return names


def test_daemon_and_simulator_hold_no_policy_constants():
    files = [PACKAGE / "node.py", *sorted((PACKAGE / "sim").glob("*.py"))]
    found = {
        f"{path.relative_to(PACKAGE)}:{name}"
        for path in files
        for name in _module_constants(path)
        if any(word in name for word in POLICY_WORDS)
    }
    assert found == set(), "policy constants belong in config.PolicyConfig"


def test_simulator_runs_the_daemons_default_policy():
    assert cluster.POLICY == cfg.NodeConfig().policy


def test_daemon_hands_the_replica_its_configured_policy(tmp_path):
    from agent_world_node.node import Node

    from .node_harness import single_validator_home

    home = single_validator_home(tmp_path / "home")
    config = cfg.read_config(home.config_file)
    config.policy = cfg.PolicyConfig(tick_interval_ms=70, status_interval_ms=700, regossip_after_ms=900,
                                     sync_batch_heights=33, sync_timeout_ms=4_000)
    cfg.write_config(home.config_file, config)
    node = Node(home)
    try:
        assert node.replica.policy == config.policy
        assert (node.replica.sync.batch_heights, node.replica.sync.timeout_ms) == (33, 4_000)
    finally:
        node.replica.store.close()
