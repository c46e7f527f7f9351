"""Validator safety across storage faults, with real processes: a validator is killed with -9 and
its SQLite ``-wal`` file deleted (its last transactions lost), or its database is replaced by an
older copy, over and over. It must never sign a second, different message for a height, round and
step it signed before.

Checked from outside the validator: a libp2p observer in the test process, subscribed to the
proposal and vote topics and connected to every node, records every proposal and vote signed by
the faulted validator's key (each signature verified) for the whole run; no (height, round, step)
may appear with two different sign bytes. Also: no node stores equivocation evidence, the chain
keeps committing, every node agrees on the roots, and the validator said
``signing_paused_until_synced`` after a rollback behind what it had signed. Every wait is bounded;
processes are stopped in a finally.

The random cycles of the first test rarely catch a validator at a height it signed before it has
synced past it (the chain moves on within a second); the second test builds that case on purpose,
and fails without the guard (a second proposal for the same height and round is observed).
"""

from __future__ import annotations

import shutil
import sqlite3
import time

import trio

from agent_world_client.client import NodeClient
from agent_world_node.config import NodeConfig, read_config, read_genesis, read_key
from agent_world_node.consensus.proposer import proposer_for
from agent_world_node.consensus.validators import ValidatorSet
from agent_world_node.network import NetworkConfig, P2PNetwork, peer_id_for_seed
from agent_world_node.types import (
    PROPOSAL_SIGN_DOMAIN,
    VOTE_SIGN_DOMAIN,
    GossipMessage,
    GossipProposalMessage,
    GossipVoteMessage,
)
from agent_world_runtime.codec import DecodeError, decode
from agent_world_runtime.crypto import verify
from agent_world_tools.testnet import NodeProcess, init_testnet, load_testnet, stop_all, wait_until_ready

from .cluster_harness import agree_on_all_common_heights

CYCLES = 8  # even cycles delete the -wal file after kill -9, odd ones restore an older copy
LIMIT_S = 480.0  # a hang guard: up to STALL_ATTEMPTS stalls of a few seconds each
STALL_ATTEMPTS = 30
FAULTED = 1  # node index


class SignedLog:
    """Every proposal and vote of one validator key seen on the wire: (height, round, step) to
    the set of distinct sign bytes."""

    def __init__(self, chain_id: str, validator: str) -> None:
        self.chain_id = chain_id
        self.validator = validator
        self.seen: dict[tuple[int, int, str], set[bytes]] = {}
        self.count = 0

    async def run(self, net: P2PNetwork) -> None:
        async for msg in net.incoming:
            try:
                decoded = decode(msg.data, GossipMessage)  # type: ignore[arg-type]
            except DecodeError:
                continue
            if isinstance(decoded, GossipProposalMessage):
                m, domain, step = decoded.proposal, PROPOSAL_SIGN_DOMAIN, "proposal"
            elif isinstance(decoded, GossipVoteMessage):
                m, domain, step = decoded.vote, VOTE_SIGN_DOMAIN, decoded.vote.vote_type.name.lower()
            else:
                continue
            if m.validator != self.validator:
                continue
            sign_bytes = m.sign_bytes(self.chain_id)
            if not verify(bytes.fromhex(self.validator), domain, sign_bytes, m.signature):
                continue
            self.seen.setdefault((m.height, m.round, step), set()).add(sign_bytes)
            self.count += 1

    def double_signs(self) -> dict[tuple[int, int, str], int]:
        return {k: len(v) for k, v in self.seen.items() if len(v) > 1}


def _observer(nodes, seed: int) -> P2PNetwork:  # type: ignore[no-untyped-def]
    """A libp2p peer in the test process that dials every node and receives all gossip."""
    return P2PNetwork(NetworkConfig(chain_id=nodes[0].chain_id, listen_addr="/ip4/127.0.0.1/tcp/0",
                                    peers=[_multiaddr(n) for n in nodes], key_seed=bytes([seed]) * 32,
                                    reconnect_interval_s=0.2), _no_blocks)


def _heights(nodes):  # type: ignore[no-untyped-def]
    """The nodes' API clients by name, and ``height(name)`` (-1 while a node does not answer)."""
    clients = {n.name: NodeClient(n.rpc_url, timeout_s=5.0) for n in nodes}

    async def height(name: str) -> int:
        try:
            return (await clients[name].status())["height"]
        except Exception:
            return -1

    return clients, height


def test_a_validator_never_double_signs_after_losing_its_database_log_or_a_rollback(tmp_path):
    directory = tmp_path / "tn"

    def config(i: int) -> NodeConfig:
        c = NodeConfig()
        c.storage.snapshot_interval = 10_000  # the database alone holds the recent heights
        return c

    init_testnet(directory, 4, config=config)
    nodes = load_testnet(directory)
    procs = [NodeProcess(n) for n in nodes]
    victim, vproc = nodes[FAULTED], procs[FAULTED]
    data = victim.home.data_dir
    validator = read_key(victim.home.validator_key_file).public_key.hex()
    log = SignedLog(nodes[0].chain_id, validator)
    observer = _observer(nodes, 0x42)
    clients, height = _heights(nodes)

    async def main() -> None:
        with trio.fail_after(LIMIT_S):
            async with observer.run(), trio.open_nursery() as nursery:
                nursery.start_soon(log.run, observer)
                await wait_until_ready(nodes, procs, timeout_s=60)
                await _until_height(height, nodes[0].name, 8)
                old = tmp_path / "old-db"
                rollbacks = 0
                for cycle in range(CYCLES):
                    await trio.sleep(0.5 + (cycle % 3) * 0.7)  # land the kill at different moments
                    vproc.kill()
                    if cycle == 0:  # a consistent copy of the killed database: db plus its log
                        old.mkdir()
                        for f in data.glob("node.sqlite3*"):
                            shutil.copy2(f, old / f.name)
                    if cycle % 2 == 0:
                        for suffix in ("-wal", "-shm"):
                            (data / f"node.sqlite3{suffix}").unlink(missing_ok=True)
                    else:
                        for f in data.glob("node.sqlite3*"):
                            f.unlink()
                        for f in old.iterdir():
                            shutil.copy2(f, data / f.name)
                        rollbacks += 1
                    tip = await height(nodes[0].name)
                    vproc.start()
                    await _until_height(height, victim.name, tip + 2, limit_s=60)
                # the chain went on, everyone agrees, nobody saw an equivocation
                final = await height(nodes[0].name)
                await _until_height(height, victim.name, final)
                common = await agree_on_all_common_heights(nodes, clients)
                assert common >= final
                for n in nodes:
                    assert (await clients[n.name]._get_json("/v1/evidence"))["evidence"] == [], n.name
                text = victim.log_path.read_text(errors="replace")
                paused = text.count("signing_paused_until_synced")
                assert paused >= rollbacks, (paused, rollbacks)
                assert log.count > 0 and log.double_signs() == {}, log.double_signs()
                print(f"\n{CYCLES} kill -9 cycles ({rollbacks} rollbacks): {log.count} signed messages of the "
                      f"validator observed over {len(log.seen)} (height, round, step), no double sign; "
                      f"{paused} pauses; chain at {common}")
                nursery.cancel_scope.cancel()

    try:
        for p in procs:
            p.start()
        trio.run(main)
    finally:
        stop_all(procs, grace_s=10)


def test_a_proposer_that_lost_its_wal_does_not_propose_again(tmp_path):
    """The deterministic case of the fault above. With two of four validators down the chain
    stalls in round 0 of height H+1 (no quorum of prevotes, so no round change), whose proposer
    has proposed block B1. That proposer is killed and its consensus WAL rows of H+1 deleted (what
    a lost database log does), then restarted at round 0 of H+1, where it is the proposer again.
    Without the separately kept sign state it would propose a second block (another timestamp):
    the double sign of the field report. Its guard must refuse (``double_sign_refused``), and it
    signs again once the chain has moved past H+1."""
    directory = tmp_path / "tn"
    init_testnet(directory, 4)
    nodes = load_testnet(directory)
    procs = [NodeProcess(n) for n in nodes]
    vset = ValidatorSet.from_genesis(read_genesis(nodes[0].home.genesis_file))
    ids = [read_key(n.home.validator_key_file).public_key.hex() for n in nodes]
    logs = {v: SignedLog(nodes[0].chain_id, v) for v in ids}
    observer = _observer(nodes, 0x43)
    clients, height = _heights(nodes)

    async def stalled_at(names: list[str]) -> int:
        """The height at which ``names`` stopped (both at it, unchanged for 3 s)."""
        while True:
            before = [await height(n) for n in names]
            await trio.sleep(3.0)
            after = [await height(n) for n in names]
            if len(set(before)) == 1 and after == before:
                return before[0]
            print(f"waiting for a stall: heights {before} -> {after}")

    async def main() -> None:
        with trio.fail_after(LIMIT_S):
            async with observer.run(), trio.open_nursery() as nursery:
                for log in logs.values():
                    nursery.start_soon(log.run, observer)  # each keeps what its key signed
                await wait_until_ready(nodes, procs, timeout_s=60)
                await _until_height(height, nodes[0].name, 3)
                # until the stalled height's round-0 proposer is node1: about one attempt in four, so
                # 30 attempts all miss about once in 5,000 runs (12 missed in one CI run)
                for attempt in range(STALL_ATTEMPTS):
                    for i in (2, 3):
                        procs[i].kill()
                    h = await stalled_at([nodes[0].name, nodes[1].name])
                    proposer = proposer_for(vset, h + 1, 0)
                    print(f"attempt {attempt}: stalled at {h}; the proposer of ({h + 1}, 0) is node{ids.index(proposer)}")
                    if proposer == ids[FAULTED]:
                        break
                    for i in (2, 3):
                        procs[i].start()
                    await _until_height(height, nodes[0].name, h + 1 + attempt % 2)
                else:
                    raise AssertionError(f"no stall with node{FAULTED} as the proposer in {STALL_ATTEMPTS} attempts")
                victim, vproc = nodes[FAULTED], procs[FAULTED]
                log = logs[proposer]
                with trio.move_on_after(30):
                    while (h + 1, 0, "proposal") not in log.seen:
                        await trio.sleep(0.1)
                assert (h + 1, 0, "proposal") in log.seen, "the observer did not receive the proposal within 30 s"
                vproc.kill()
                with sqlite3.connect(victim.home.db_file) as db:
                    lost = db.execute("DELETE FROM wal WHERE height > ?", (h,)).rowcount
                assert lost >= 1  # its proposal (and vote) of h+1
                vproc.start()
                await _until_height(height, victim.name, h)
                await trio.sleep(5.0)  # round 0 of h+1 again, as its proposer
                assert log.double_signs() == {}, log.double_signs()
                assert "double_sign_refused" in victim.log_path.read_text(errors="replace")
                for i in (2, 3):
                    procs[i].start()
                await _until_height(height, victim.name, h + 4, limit_s=90)
                common = await agree_on_all_common_heights(nodes, clients)
                for n in nodes:
                    assert (await clients[n.name]._get_json("/v1/evidence"))["evidence"] == [], n.name
                assert all(lg.double_signs() == {} for lg in logs.values())
                after = [k for k in log.seen if k[0] > h + 1]
                assert after, "the validator signs again after the heights it had signed"
                print(f"\nstalled at {h}, {victim.name} proposed ({h + 1}, 0), lost {lost} WAL rows, was restarted and "
                      f"signed nothing conflicting there; signing again from height {min(k[0] for k in after)}; chain at {common}")
                nursery.cancel_scope.cancel()

    try:
        for p in procs:
            p.start()
        trio.run(main)
    finally:
        stop_all(procs, grace_s=10)


def _multiaddr(node) -> str:  # type: ignore[no-untyped-def]
    c = read_config(node.home.config_file)
    return f"{c.p2p.listen}/p2p/{peer_id_for_seed(read_key(node.home.node_key_file).seed)}"


async def _no_blocks(a: int, b: int) -> list[bytes]:
    return []


async def _until_height(height, name: str, target: int, limit_s: float = 60.0) -> None:
    started = time.monotonic()
    while await height(name) < target:
        assert time.monotonic() - started < limit_s, f"{name} did not reach height {target} in {limit_s} s"
        await trio.sleep(0.2)
