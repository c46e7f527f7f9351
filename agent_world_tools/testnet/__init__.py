"""Local multi-node testnet on loopback: create the homes, run the nodes as processes, drive them with
the scripted workload, watch them, and check that they agree (the ``awnode testnet`` command, see
README.md). The pieces are usable on their own (the CLI, the benchmarks and the multi-process tests
use them) and are re-exported here:

- ``homes``: ``init_testnet(dir, nodes, chain_id)`` creates N homes ``dir/node0..N-1`` sharing one
  genesis (all N are validators with equal stake), random keys, free loopback ports, full-mesh
  ``p2p.peers``; ``add_testnet_node`` adds a non-validating late joiner; ``load_testnet(dir)`` returns
  the ``TestnetNode`` descriptions (name, home, RPC URL, chain id) of a testnet.
- ``processes``: ``NodeProcess``, one node as ``python -m agent_world_tools.cli start --home HOME``
  with its output in ``HOME/node.log`` (``stop()`` sends SIGTERM and SIGKILL after a grace period);
  ``stop_all``; ``wait_until_ready`` polls every node's GET /v1/status until all answer.
- ``agreement``: ``AgreementChecker`` compares ``execution_state_root`` of every height all nodes
  executed.
- ``live_view``: ``NodeView`` and ``render_live``, the rich table shown while the testnet runs.
- ``session``: ``prepare_testnet`` and ``run_testnet``, the whole ``awnode testnet`` session,
  returning a ``TestnetSummary``.
"""

from __future__ import annotations

from .agreement import AgreementChecker, Mismatch
from .homes import (
    DEFAULT_STAKE,
    DEFAULT_TESTNET_CHAIN_ID,
    FAUCET_AGENT_ID,
    NODE_LOG,
    TESTNET_WORLD,
    TestnetNode,
    add_testnet_node,
    faucet_key_file,
    genesis_faucet,
    init_testnet,
    is_testnet,
    load_testnet,
    local_toolchains,
    node_dir,
    pick_free_ports,
    rpc_url_for,
)
from .live_view import NodeView, render_live
from .processes import (
    NodeProcess,
    TestnetError,
    _parent_death_signal,
    leaf_exceptions,
    stop_all,
    wait_until_ready,
)
from .session import TestnetOptions, TestnetSummary, prepare_testnet, render_summary, run_testnet

__all__ = [
    "DEFAULT_STAKE",
    "DEFAULT_TESTNET_CHAIN_ID",
    "FAUCET_AGENT_ID",
    "NODE_LOG",
    "TESTNET_WORLD",
    "AgreementChecker",
    "Mismatch",
    "NodeProcess",
    "NodeView",
    "TestnetError",
    "TestnetNode",
    "TestnetOptions",
    "TestnetSummary",
    "_parent_death_signal",
    "add_testnet_node",
    "faucet_key_file",
    "genesis_faucet",
    "init_testnet",
    "is_testnet",
    "local_toolchains",
    "leaf_exceptions",
    "load_testnet",
    "node_dir",
    "pick_free_ports",
    "prepare_testnet",
    "render_live",
    "render_summary",
    "rpc_url_for",
    "run_testnet",
    "stop_all",
    "wait_until_ready",
]
