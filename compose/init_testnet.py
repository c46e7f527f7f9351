"""Create the homes of the compose testnet (run once by the ``init`` service of docker-compose.yml).

``python compose/init_testnet.py DIR VALIDATORS [FULLNODES]`` writes ``DIR/node0..`` (validators,
then full nodes that join by state sync), the shared genesis and the faucet key
(``DIR/faucet.json``) with ``awnode testnet init``'s code, then points every node at the compose
network: it listens on all interfaces (p2p 26656, HTTP 26657) and dials the others by service
name (``/dns4/validatorN/tcp/26656/p2p/<id>``; ``fullnodeN`` for full nodes). Nodes make a
state-sync snapshot every ``AW_SNAPSHOT_INTERVAL`` heights (default 100) and log in
``AW_LOG_FORMAT`` (console or json; default console). Does nothing when the
homes exist already (a restarted project keeps its chain).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from agent_world_node.config import Home, NodeConfig, P2PConfig, RPCConfig, read_config, read_key, write_config
from agent_world_node.network import peer_id_for_seed
from agent_world_tools.testnet import add_testnet_node, init_testnet

P2P_PORT = 26656
RPC_PORT = 26657


def main(directory: Path, validators: int, fullnodes: int) -> None:
    if (directory / "node0" / "config" / "config.toml").exists():
        print(f"testnet homes exist in {directory}; keeping them", flush=True)
        return
    interval = int(os.environ.get("AW_SNAPSHOT_INTERVAL", "100"))

    def config(i: int) -> NodeConfig:
        c = NodeConfig()
        c.log_format = os.environ.get("AW_LOG_FORMAT", "console")
        c.statesync.snapshot_interval = interval
        return c

    init_testnet(directory, validators, config=config)
    for _ in range(fullnodes):
        c = config(0)
        c.statesync.enable = True
        add_testnet_node(directory, config=c)
    names = [f"validator{i}" for i in range(validators)] + [f"fullnode{i}" for i in range(fullnodes)]
    ids = [peer_id_for_seed(read_key(Home(directory / f"node{i}").node_key_file).seed) for i in range(len(names))]
    for i, name in enumerate(names):
        home = Home(directory / f"node{i}")
        c = read_config(home.config_file)
        c.moniker = name
        c.p2p = P2PConfig(
            listen=f"/ip4/0.0.0.0/tcp/{P2P_PORT}",
            peers=[f"/dns4/{names[j]}/tcp/{P2P_PORT}/p2p/{ids[j]}" for j in range(validators) if j != i],
        )
        c.rpc = RPCConfig(listen=f"0.0.0.0:{RPC_PORT}", unsafe=c.rpc.unsafe)
        write_config(home.config_file, c)
    print(f"created {validators} validators and {fullnodes} full nodes in {directory}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
