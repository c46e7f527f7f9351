"""Helpers to build node homes and run nodes in-process (one trio loop) for tests."""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import trio

from agent_world_node import config as cfg
from agent_world_node.node import Node
from agent_world_runtime.crypto import SigningKey


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_validator_home(root: Path, *, chain_id: str = "api-test", max_mempool: int = 20_000) -> cfg.Home:
    """Create a home whose node is the only validator of its chain, on free loopback ports."""
    vk = SigningKey.generate()
    genesis = cfg.Genesis(
        chain_id=chain_id, genesis_time_ms=0, validators=[cfg.GenesisValidator("solo", vk.public_key.hex(), 100)]
    )
    c = cfg.NodeConfig()
    c.p2p.listen = f"/ip4/127.0.0.1/tcp/{free_port()}"
    c.rpc.listen = f"127.0.0.1:{free_port()}"
    c.mempool.max_actions = max_mempool
    return cfg.init_home(root, moniker="solo", config=c, validator_seed=vk.seed, genesis=genesis)


@asynccontextmanager
async def running_node(home: cfg.Home) -> AsyncIterator[Node]:
    """Run a Node from ``home`` inside the current trio loop; cancel it on exit."""
    node = Node(home)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        try:
            yield node
        finally:
            nursery.cancel_scope.cancel()
