"""Joining by state sync: a node with an empty home restores the newest verified snapshot its
peers offer, skips (and bans) peers that lie about snapshots, block-syncs the rest and keeps the
same roots as the validator. Real in-process nodes and libp2p peers on 127.0.0.1; every wait is
bounded."""

from __future__ import annotations

import msgspec
import pytest
import trio

from agent_world_node import config as cfg
from agent_world_node.network import NetworkConfig, P2PNetwork
from agent_world_node.node import Node
from agent_world_runtime import World
from agent_world_runtime.codec import encode, encode_json
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.signer import AgentSigner
from agent_world_runtime.snapshots import manifest_for

from .node_harness import bank_signer, free_port, running_node, single_validator_home

CHAIN = "statesync"
RUN_LIMIT_S = 90
EVERY = 10  # statesync.snapshot_interval of the validator
AGENTS = 12


def _validator_home(tmp_path) -> cfg.Home:
    home = single_validator_home(tmp_path / "validator", chain_id=CHAIN, timeout_commit_ms=10)
    c = cfg.read_config(home.config_file)
    c.statesync.snapshot_interval = EVERY
    c.statesync.snapshot_keep_recent = 2
    c.storage.snapshot_interval = 7
    cfg.write_config(home.config_file, c)
    return home


def _set(home: cfg.Home, **consensus) -> None:
    c = cfg.read_config(home.config_file)
    for k, v in consensus.items():
        setattr(c.consensus, k, v)
    cfg.write_config(home.config_file, c)


def _joiner_home(tmp_path, validator: cfg.Home, peers: list[str]) -> cfg.Home:
    c = cfg.NodeConfig()
    c.p2p.listen = f"/ip4/127.0.0.1/tcp/{free_port()}"
    c.p2p.peers = peers
    c.rpc.listen = f"127.0.0.1:{free_port()}"
    c.statesync.enable = True
    c.statesync.discovery_ms = 500
    c.statesync.chunk_timeout_ms = 5000
    return cfg.init_home(tmp_path / "joiner", moniker="joiner", config=c,
                         validator_seed=SigningKey.generate().seed, genesis=cfg.read_genesis(validator.genesis_file))


async def _grow(tmp_path, home: cfg.Home, height: int) -> None:
    """Run the validator with empty blocks until ``height``, creating ``AGENTS`` agents on the way."""
    import httpx

    bank = bank_signer(CHAIN)
    async with running_node(home) as node:
        async with httpx.AsyncClient(base_url=f"http://{node.config.rpc.listen}", timeout=10) as c:
            for i in range(AGENTS):
                signed = bank.create_agent(AgentSigner(f"a{i}", SigningKey(bytes([i + 1]) * 32), CHAIN),
                                           electricity=100 + i)
                r = await c.post("/v1/actions", content=encode_json(signed), headers={"content-type": "application/json"})
                assert r.status_code == 202, r.text
        while node.height < height or node.replica.world.get_agent(f"a{AGENTS - 1}") is None:
            await trio.sleep(0.02)


def _liar(seed: int, manifests: list[bytes], chunk) -> P2PNetwork:  # type: ignore[no-untyped-def]
    async def no_blocks(a: int, b: int) -> list[bytes]:
        return []

    return P2PNetwork(NetworkConfig(chain_id=CHAIN, listen_addr="/ip4/127.0.0.1/tcp/0", peers=[],
                                    key_seed=bytes([seed]) * 32), no_blocks, snapshots=(lambda: manifests, chunk))


def test_a_joiner_restores_a_verified_snapshot_and_bans_peers_that_lie(tmp_path):
    home = _validator_home(tmp_path)

    async def main() -> None:
        with trio.fail_after(RUN_LIMIT_S):
            await _grow(tmp_path, home, 4 * EVERY + 6)
            _set(home, create_empty_blocks=False)  # now it stays at its height while idle
            async with running_node(home) as validator:
                await trio.sleep(0.5)  # the proof block a restart may make
                tip = validator.height
                honest = validator.archive.manifests()[0]
                assert honest.height == 4 * EVERY and tip >= honest.height + 4
                data = b"".join(validator.archive.read_chunk(honest.height, i) or b""
                                for i in range(len(honest.chunk_hashes)))
                root_at = validator.replica.driver.state_root_at
                # Liar 1: the honest snapshot's chunks offered as a newer height, with that height's
                # certified root in the manifest; it serves a corrupted chunk.
                h1 = tip - 2
                lie1 = msgspec.structs.replace(honest, height=h1, state_root=root_at(h1))
                liar_chunk = _liar(7, [encode(lie1)], lambda h, i: b"\xff" + (validator.archive.read_chunk(honest.height, i) or b"")[1:])
                # Liar 2: a self-consistent snapshot of a tampered world (one agent richer; its
                # recorded root is the tampered world's), offered as another newer height with that
                # height's certified root in the manifest. Only the certified root tells.
                h2 = tip - 3
                fake = World.restore_snapshot(data)
                richer = fake._state.agents[f"a{AGENTS - 1}"]
                fake._state.agents[richer.agent_id] = msgspec.structs.replace(richer, electricity=richer.electricity + 10**6)
                fake._state.rebuild_tree()
                tampered = fake.create_snapshot()
                assert World.restore_snapshot(tampered).state_root() != honest.state_root
                lie2 = manifest_for(tampered, h2, root_at(h2) or b"")
                liar_root = _liar(8, [encode(lie2)], lambda h, i: tampered[i * lie2.chunk_bytes:(i + 1) * lie2.chunk_bytes])
                async with liar_chunk.run(), liar_root.run():
                    peers = validator.net.listen_addrs() + liar_chunk.listen_addrs() + liar_root.listen_addrs()
                    joiner_home = _joiner_home(tmp_path, home, peers)
                    joiner = Node(joiner_home)
                    async with trio.open_nursery() as nursery:
                        await nursery.start(joiner.run)
                        while joiner.state_sync is not None or joiner.height < validator.height:
                            await trio.sleep(0.05)
                        # the honest snapshot is the base: the joiner stores nothing older
                        store = joiner.replica.store
                        assert store.first_block_height() == honest.height
                        assert joiner.replica.driver.last_height >= honest.height
                        for h in range(honest.height, validator.height + 1):
                            assert joiner.replica.driver.state_root_at(h) == root_at(h), h
                        assert joiner.replica.world.get_agent(f"a{AGENTS - 1}") is not None
                        # both liars were caught, scored and banned; the validator was not
                        penalties = joiner.net.stats()["penalties"]
                        assert penalties.get("bad_snapshot") == 2, penalties
                        banned = joiner.net.peer_filter.banned()
                        assert liar_chunk.peer_id in banned and liar_root.peer_id in banned
                        assert validator.peer_id not in banned
                        ok, reason = joiner.readiness()
                        assert ok, reason
                        # it follows the chain from here: an action commits on both with equal roots
                        import httpx

                        async with httpx.AsyncClient(base_url=f"http://{validator.config.rpc.listen}", timeout=10) as c:
                            signed = bank_signer(CHAIN, next_nonce=AGENTS + 1).create_agent(
                                AgentSigner("late", SigningKey(b"\x77" * 32), CHAIN), electricity=5)
                            r = await c.post("/v1/actions", content=encode_json(signed),
                                             headers={"content-type": "application/json"})
                            assert r.status_code == 202, r.text
                        while joiner.replica.world.get_agent("late") is None:
                            await trio.sleep(0.05)
                        h = joiner.height
                        while validator.height < h:
                            await trio.sleep(0.05)
                        assert joiner.replica.driver.state_root_at(h) == root_at(h)
                        # the joiner's journal starts at the snapshot: its events are the new ones
                        events = joiner.replica.world.events(0, 1000)
                        assert events and all(e.height > honest.height for e in events)
                        print(f"\njoined at height {honest.height} of {tip}; penalties {penalties}")
                        nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_home_that_holds_the_chain_does_not_state_sync(tmp_path):
    home = _validator_home(tmp_path)

    async def main() -> None:
        with trio.fail_after(RUN_LIMIT_S):
            async with running_node(home) as node:
                while node.height < 3:
                    await trio.sleep(0.02)
                stopped = node.height
            c = cfg.read_config(home.config_file)
            c.statesync.enable = True
            c.p2p.peers = ["/ip4/127.0.0.1/tcp/9/p2p/12D3KooWDN7K2vo9rDBdpWGjDwMsQJaWvSqJxKZKg5ywyS42P8aq"]
            cfg.write_config(home.config_file, c)
            async with running_node(home) as node:  # it continues from its own state
                assert node.state_sync is None and node.height >= stopped
                while node.height < stopped + 3:
                    await trio.sleep(0.02)

    trio.run(main)


@pytest.mark.parametrize("bad, match", [
    (dict(snapshot_keep_recent=0), "keep_recent"),
    (dict(snapshot_interval=-1), "snapshot_interval"),
    (dict(trust_height=5), "go together"),
    (dict(trust_height=5, trust_hash="abc"), "64 hex"),
])
def test_state_sync_options_are_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        cfg.StateSyncConfig(**bad)
