"""``consensus.create_empty_blocks = false`` (CometBFT's option): an idle validator makes no blocks
and writes nothing, an action that arrives is committed in the next block, one more block follows
it (its header carries the action block's execution root, CometBFT's proof block), and
``create_empty_blocks_interval_ms`` brings back a periodic empty block; empty blocks are logged
at debug and summarized. Real in-process nodes on 127.0.0.1; every wait is bounded, and no
duration is asserted (the time an action took is printed)."""

from __future__ import annotations

import time

import httpx
import pytest
import trio

from agent_world_client.client import AgentKey, NodeClient, NotFound
from agent_world_node import config as cfg
from agent_world_runtime.codec import encode_json
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.signer import AgentSigner
from agent_world_tools.testnet import (
    FAUCET_AGENT_ID,
    NodeProcess,
    faucet_key_file,
    init_testnet,
    load_testnet,
    stop_all,
    wait_until_ready,
)

from .cluster_harness import agree_on_all_common_heights
from .node_harness import bank_signer, running_node, single_validator_home

CHAIN = "idle-blocks"
RUN_LIMIT_S = 30


def _idle_home(tmp_path, interval_ms: int = 0) -> cfg.Home:
    home = single_validator_home(tmp_path / "solo", chain_id=CHAIN)
    c = cfg.read_config(home.config_file)
    c.consensus.create_empty_blocks = False
    c.consensus.create_empty_blocks_interval_ms = interval_ms
    cfg.write_config(home.config_file, c)
    return home


async def _settled_height(node, quiet_s: float = 1.0) -> int:
    """The height once it has not changed for ``quiet_s`` (bounded by the caller's deadline)."""
    while True:
        h = node.height
        await trio.sleep(quiet_s)
        if node.height == h:
            return h


def test_an_idle_validator_makes_no_blocks_and_commits_an_action_at_once(tmp_path):
    home = _idle_home(tmp_path)
    bank = bank_signer(CHAIN)

    async def main() -> None:
        with trio.fail_after(RUN_LIMIT_S):
            async with running_node(home) as node:
                idle = await _settled_height(node)
                stored = node.replica.store.last_block_height()
                await trio.sleep(2.0)
                assert node.height == idle and node.replica.store.last_block_height() == stored  # nothing written
                assert node.replica.awaiting_actions
                async with httpx.AsyncClient(base_url=f"http://{node.config.rpc.listen}", timeout=10) as c:
                    assert (await c.get("/ready")).status_code == 200
                    signed = bank.create_agent(AgentSigner("alice", SigningKey(b"a" * 32), CHAIN), electricity=10)
                    t0 = time.monotonic()
                    r = await c.post("/v1/actions", content=encode_json(signed),
                                     headers={"content-type": "application/json"})
                    assert r.status_code == 202, r.text
                    while node.replica.world.get_agent("alice") is None:
                        await trio.sleep(0.01)
                    took = time.monotonic() - t0
                    after = await _settled_height(node)
                    # the action's block and one proof block, then idle again
                    assert after == idle + 2, (idle, after)
                    assert node.replica.awaiting_actions
                    print(f"\nidle at height {idle}; the action was executed {took * 1000:.0f} ms after "
                          f"its submission; idle again at {after}")

    trio.run(main)


def test_the_empty_block_interval_makes_blocks_while_idle(tmp_path):
    home = _idle_home(tmp_path, interval_ms=300)

    async def main() -> None:
        with trio.fail_after(RUN_LIMIT_S):
            async with running_node(home) as node:
                start = node.height
                while node.height < start + 3:  # bounded by the deadline above
                    await trio.sleep(0.05)

    trio.run(main)


def test_the_options_are_validated():
    with pytest.raises(ValueError, match="create_empty_blocks_interval_ms"):
        cfg.ConsensusConfig(create_empty_blocks_interval_ms=-1)
    assert cfg.ConsensusConfig().create_empty_blocks is True  # the local testnet stays lively


@pytest.mark.multiprocess
@pytest.mark.timeout(180)
def test_an_idle_four_validator_testnet_stays_ready_and_wakes_for_an_action(tmp_path):
    """Four validator processes without empty blocks: once idle they stop making blocks and stay
    ready (peers' status heartbeats stand for consensus traffic), an action sent to one node wakes
    all of them through gossip, and every node executes it, with the same roots."""
    def config(i: int) -> cfg.NodeConfig:
        c = cfg.NodeConfig()
        c.consensus.create_empty_blocks = False
        return c

    directory = tmp_path / "tn"
    init_testnet(directory, 4, config=config)
    nodes = load_testnet(directory)
    procs = [NodeProcess(n) for n in nodes]
    faucet = AgentSigner(FAUCET_AGENT_ID, AgentKey.load(faucet_key_file(directory)).key, nodes[0].chain_id)

    async def heights(clients) -> list[int]:
        return [(await c.status())["height"] for c in clients]

    async def knows(c: NodeClient, agent_id: str) -> bool:
        try:
            await c.agent(agent_id)
        except NotFound:
            return False
        return True

    async def main() -> None:
        clients = [NodeClient(n.rpc_url, timeout_s=5.0) for n in nodes]
        try:
            await wait_until_ready(nodes, procs, timeout_s=90)
            with trio.fail_after(120):
                while True:  # idle: every node at one height that stays put for 2 s
                    before = await heights(clients)
                    await trio.sleep(2.0)
                    if len(set(before)) == 1 and await heights(clients) == before:
                        break
                idle = before[0]
                for _ in range(6):  # longer than the readiness silence limit would allow without heartbeats
                    await trio.sleep(1.0)
                    ready = [(await c._http.get("/ready")).status_code for c in clients]
                    assert ready == [200] * 4, ready
                assert await heights(clients) == [idle] * 4
                signed = faucet.create_agent(AgentSigner("wake", SigningKey(b"w" * 32), nodes[0].chain_id), electricity=5)
                t0 = time.monotonic()
                await clients[2].submit(signed)
                while not all([await knows(c, "wake") for c in clients]):
                    await trio.sleep(0.05)
                took = time.monotonic() - t0
                while True:
                    before = await heights(clients)
                    await trio.sleep(2.0)
                    if len(set(before)) == 1 and await heights(clients) == before:
                        break
                # The action's block and its proof block, then idle again. Before the action's
                # block there may be an empty one: a proposer woken by a peer's vote before the
                # gossiped action reached it proposes what it has (as CometBFT's does).
                with_actions = [h for h in range(idle + 1, before[0] + 1) if (await clients[0].block(h))["actions"]]
                assert len(with_actions) == 1 and before[0] == with_actions[0] + 1, (idle, before, with_actions)
                assert with_actions[0] <= idle + 2, (idle, with_actions)
                assert await agree_on_all_common_heights(nodes, {n.name: c for n, c in zip(nodes, clients, strict=True)}) >= idle + 2
                print(f"\n4 validators idle at height {idle}; an action sent to node2 was executed on all 4 "
                      f"{took * 1000:.0f} ms later; idle again at {before[0]}")
        finally:
            with trio.CancelScope(shield=True):
                for c in clients:
                    await c.aclose()

    try:
        for p in procs:
            p.start()
        trio.run(main)
    finally:
        stop_all(procs, grace_s=10)


def test_empty_blocks_are_summarized_not_logged_one_by_one(tmp_path):
    """A quiet chain's empty blocks are debug lines; every ``SUMMARY_INTERVAL_MS`` one info line
    ``heights_committed`` counts them."""
    import structlog

    from agent_world_node.replica import Replica
    from agent_world_node.replica.replica import SUMMARY_INTERVAL_MS
    from agent_world_node.store import NodeStore

    key = SigningKey(bytes([9]) * 32)
    genesis = cfg.Genesis(chain_id="quiet", genesis_time_ms=1_700_000_000_000,
                          validators=[cfg.GenesisValidator("me", key.public_key.hex(), 1)])
    replica = Replica.open(genesis=genesis, consensus=cfg.ConsensusConfig(), validator_key=key,
                           store=NodeStore(tmp_path / "db.sqlite3"), snapshot_dir=tmp_path / "snap",
                           snapshot_interval=100, node_id="me", now_ms=lambda: 1_700_000_060_000)
    with structlog.testing.capture_logs() as logs:
        replica.tick(0, [])
        replica.start()  # a lone validator commits height 1 at once
        for _ in range(4):
            replica.handle_commit_wait(replica.height)
        replica.tick(SUMMARY_INTERVAL_MS - 1, [])
        assert not [e for e in logs if e["event"] == "heights_committed"]
        replica.tick(SUMMARY_INTERVAL_MS, [])
    assert replica.height == 5
    committed = [e for e in logs if e["event"] == "block_committed"]
    assert len(committed) == 5 and all(e["log_level"] == "debug" for e in committed)
    [summary] = [e for e in logs if e["event"] == "heights_committed"]
    assert summary["log_level"] == "info"
    assert (summary["from_height"], summary["to_height"], summary["blocks"], summary["empty"]) == (1, 5, 5, 5)
