"""Helpers to build node homes and run nodes in-process (one trio loop) for tests.

Agents exist from genesis or are created, and paid for, by an existing agent (docs/fees.md). A
``single_validator_home`` therefore puts in its genesis, besides any ``agents`` the test passes, a
``bank``: a genesis agent with a known seed and ``BANK_BALANCE`` of each resource. A test creates
its agents through it::

    bank = bank_signer(CHAIN)                       # next nonce 1: a fresh chain
    alice = AgentSigner("alice", SigningKey(b"a" * 32), CHAIN)
    await post(bank.create_agent(alice, electricity=1000, data=1000))

An agent created in a block can act from the next block on; its first nonce is 1.
"""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Sequence

import trio

from agent_world_node import config as cfg
from agent_world_node.node import Node
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.params import GenesisAgent, WorldParams
from agent_world_runtime.signer import AgentSigner

BANK_ID = "bank"
BANK_SEED = b"\xba" * 32
BANK_BALANCE = 10**15


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bank_signer(chain_id: str, next_nonce: int = 1) -> AgentSigner:
    """The bank of a harness chain ``chain_id``, signing with nonces from ``next_nonce`` (1 on a
    chain where it has not acted yet)."""
    return AgentSigner(BANK_ID, SigningKey(BANK_SEED), chain_id, next_nonce=next_nonce)


def bank_genesis_agent() -> GenesisAgent:
    """The bank as a genesis agent: ``BANK_BALANCE`` electricity and data at the origin."""
    return bank_signer("").genesis_agent(BANK_BALANCE, BANK_BALANCE)


def single_validator_home(root: Path, *, chain_id: str = "api-test", max_mempool: int = 20_000,
                          agents: Sequence[GenesisAgent] = (), bank: bool = True,
                          world: WorldParams | None = None, absent_validators: int = 0,
                          timeout_commit_ms: int = 50) -> cfg.Home:
    """Create a home whose node is the only validator of its chain, on free loopback ports.

    The genesis holds ``agents`` and, unless ``bank`` is False, the bank (``bank_genesis_agent``,
    listed first). ``world``: the genesis world parameters (default ``WorldParams()``).
    ``absent_validators``: more validators of the same stake whose nodes never run (the home's
    node then has no peer and cannot commit). ``timeout_commit_ms``: the pause after each commit
    (short by default, so that tests waiting for heights finish quickly; nodes default to 500)."""
    vk = SigningKey.generate()
    genesis_agents = ([bank_genesis_agent()] if bank else []) + list(agents)
    validators = [cfg.GenesisValidator("solo", vk.public_key.hex(), 100)] + [
        cfg.GenesisValidator(f"absent{i}", SigningKey.generate().public_key.hex(), 100) for i in range(absent_validators)
    ]
    genesis = cfg.Genesis(
        chain_id=chain_id, genesis_time_ms=0, validators=validators,
        world=world or WorldParams(), agents=genesis_agents,
    )
    c = cfg.NodeConfig()
    c.p2p.listen = f"/ip4/127.0.0.1/tcp/{free_port()}"
    c.rpc.listen = f"127.0.0.1:{free_port()}"
    c.mempool.max_actions = max_mempool
    c.consensus.timeout_commit_ms = timeout_commit_ms
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
