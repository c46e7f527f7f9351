"""Building blocks for hostile peers against a real testnet (node processes on loopback).

- ``Testnet``: a 4-validator testnet from ``agent_world_tools.testnet`` started as processes, with
  what an outside attacker can learn from its directory (each node's libp2p address, the chain id,
  the validators' public keys) and the bound on a height gap the hostile tests allow.
- ``hostile_network``: a ``P2PNetwork`` with its own, fresh key (not a validator) dialling every
  node; its sync handler is chosen by the scenario (answer nothing, stall, fail).
- ``Watch``: polls every node's ``GET /v1/status`` and ``GET /ready`` concurrently and keeps timed
  samples of height, ``syncing`` and readiness.
- message builders (well-formed status, votes forged in various ways, commit announcements for
  far-future heights), ``metric`` (one sample of a node's ``/metrics``) and ``LogMark`` (the lines
  a node logged since a mark).
- ``SHIFTED_CLOCK_LAUNCHER``: a command that runs ``awnode start`` with ``time.time`` and
  ``time.time_ns`` shifted for the whole process (libfaketime is not installed here).

Nothing here asserts on timing.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX
from libp2p.utils.varint import encode_varint_prefixed
from multiaddr import Multiaddr

from agent_world_client.client import ClientError, NodeClient
from agent_world_node.config import read_config, read_genesis, read_key
from agent_world_node.network import NetworkConfig, P2PNetwork
from agent_world_node.network.host import PUBSUB_PROTOCOLS, build_host, key_pair_from_seed, peer_id_for_seed
from agent_world_node.network.topics import topic_ids
from agent_world_node.types import (
    VOTE_SIGN_DOMAIN,
    BlockHeader,
    CommitCertificate,
    CommitSig,
    GossipCommitMessage,
    GossipMessage,
    GossipStatusMessage,
    GossipVoteMessage,
    Vote,
    VoteType,
    block_hash,
)
from agent_world_runtime.codec import decode, encode
from agent_world_runtime.crypto import SigningKey
from agent_world_tools.testnet import NodeProcess, TestnetNode, init_testnet, load_testnet, stop_all, wait_until_ready

from .cluster_harness import longest_height_gap

#: Extra seconds a height may take beyond one failed round (the issue's bound: 3 s plus the round
#: timeouts timeout_propose + timeout_prevote + timeout_precommit of the config used).
GAP_SLACK_S = 3.0

#: Runs ``awnode start ...`` (the arguments after it) with the process clock shifted by
#: ``$HOSTILE_TEST_CLOCK_OFFSET_MS`` milliseconds: ``time.time`` and ``time.time_ns`` are replaced
#: before anything else is imported, so the node's block times and PBTS judgement, and
#: py-libp2p's signed peer-record ``seq`` (``time.time_ns()``) and pubsub counter, all read the
#: shifted clock. Monotonic clocks are untouched (as with a wall clock set wrong).
SHIFTED_CLOCK_LAUNCHER = """
import os, sys, time
_offset_ns = int(os.environ["HOSTILE_TEST_CLOCK_OFFSET_MS"]) * 1_000_000
_time_ns = time.time_ns
time.time_ns = lambda: _time_ns() + _offset_ns
time.time = lambda: time.time_ns() / 1e9
from agent_world_tools.cli import app
app(prog_name="awnode", args=sys.argv[1:])
"""


def shifted_clock_process(node: TestnetNode, offset_ms: int) -> NodeProcess:
    """A ``NodeProcess`` of ``node`` whose clock reads ``offset_ms`` ms ahead (behind if negative)."""
    command = [sys.executable, "-c", SHIFTED_CLOCK_LAUNCHER, "start", "--home", str(node.home.root)]
    return NodeProcess(node, command=command, env={"HOSTILE_TEST_CLOCK_OFFSET_MS": str(offset_ms)})


@dataclass
class Testnet:
    __test__ = False

    """A local testnet of node processes (see the module docstring). ``start()`` it, then
    ``stop()`` it (every process by its pid, SIGTERM then SIGKILL)."""

    directory: Path
    nodes: list[TestnetNode] = field(default_factory=list)
    procs: list[NodeProcess] = field(default_factory=list)

    @classmethod
    def create(cls, directory: Path, size: int = 4) -> "Testnet":
        init_testnet(directory, size)
        net = cls(directory)
        net.nodes = load_testnet(directory)
        net.procs = [NodeProcess(n) for n in net.nodes]
        return net

    @property
    def chain_id(self) -> str:
        return self.nodes[0].chain_id

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def p2p_addr(self, i: int) -> str:
        """Node ``i``'s libp2p address, as any peer reading its config would learn it."""
        home = self.nodes[i].home
        seed = read_key(home.node_key_file).seed
        return f"{read_config(home.config_file).p2p.listen}/p2p/{peer_id_for_seed(seed)}"

    def p2p_addrs(self) -> list[str]:
        return [self.p2p_addr(i) for i in range(len(self.nodes))]

    def peer_id(self, i: int) -> str:
        return peer_id_for_seed(read_key(self.nodes[i].home.node_key_file).seed)

    def validator_keys(self) -> list[str]:
        """The validators' public keys (hex), in genesis order (node0 first)."""
        return [v.public_key for v in read_genesis(self.nodes[0].home.genesis_file).validators]

    def precision_ms(self) -> int:
        return read_genesis(self.nodes[0].home.genesis_file).synchrony.precision_ms

    def gap_bound_s(self) -> float:
        """Longest allowed time between two height increases of an honest node: one failed round
        (timeout_propose + timeout_prevote + timeout_precommit of node0's config) plus
        ``GAP_SLACK_S``."""
        c = read_config(self.nodes[0].home.config_file).consensus
        return GAP_SLACK_S + (c.timeout_propose_ms + c.timeout_prevote_ms + c.timeout_precommit_ms) / 1000

    def start(self) -> None:
        for p in self.procs:
            p.start()

    async def wait_ready(self, timeout_s: float = 90.0, heights: int = 2) -> None:
        """Wait until every node answers and has committed at least ``heights`` heights."""
        await wait_until_ready(self.nodes, self.procs, timeout_s=timeout_s)
        clients = {n.name: NodeClient(n.rpc_url, timeout_s=5.0) for n in self.nodes}
        try:
            with trio.fail_after(timeout_s):
                while True:
                    self.check_alive()
                    try:
                        if min([(await c.status())["height"] for c in clients.values()]) >= heights:
                            return
                    except ClientError:
                        pass
                    await trio.sleep(0.25)
        finally:
            with trio.CancelScope(shield=True):
                for c in clients.values():
                    await c.aclose()

    def check_alive(self) -> None:
        for p in self.procs:
            assert not p.failed(), f"{p.name} exited:\n{p.log_tail(40)}"

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system, seconds) each running node process has used so far."""
        out = {}
        for p in self.procs:
            try:
                fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[p.name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, ValueError, IndexError, TypeError):
                out[p.name] = float("nan")
        return out

    def stop(self) -> dict[str, int | None]:
        return stop_all(self.procs, grace_s=15)


# --- the hostile peer ----------------------------------------------------------------------------


async def answer_nothing(from_height: int, to_height: int) -> list[bytes]:
    """A sync handler that has no blocks: the request is answered with none."""
    return []


async def stall(from_height: int, to_height: int) -> list[bytes]:
    """A sync handler that never answers (the server gives up after its serve timeout)."""
    await trio.sleep_forever()
    return []


async def fail(from_height: int, to_height: int) -> list[bytes]:
    """A sync handler that fails: the request is refused ("internal error")."""
    raise RuntimeError("hostile peer refuses to serve")


def hostile_network(testnet: Testnet, sync_handler: Callable[[int, int], Awaitable[list[bytes]]] = answer_nothing,
                    seed: bytes | None = None) -> P2PNetwork:
    """A ``P2PNetwork`` with a fresh key of its own (not a validator) that dials every node of
    ``testnet`` on 127.0.0.1 and serves sync with ``sync_handler``. Use it in ``async with
    net.run():``."""
    return P2PNetwork(
        NetworkConfig(
            chain_id=testnet.chain_id,
            listen_addr="/ip4/127.0.0.1/tcp/0",
            peers=testnet.p2p_addrs(),
            key_seed=seed if seed is not None else os.urandom(32),
        ),
        sync_handler,
    )


class RawPublisher:
    """A hostile peer that speaks pubsub by writing RPC frames itself: a libp2p host with a fresh
    key of its own, one outbound pubsub stream per node, and messages it signs as their origin
    (pubsub's strict signing). Unlike ``P2PNetwork.publish`` (one RPC per message, through the
    library's outbound queue) it can pack many messages in one frame, so the rate the nodes
    receive does not depend on this process's speed. ``async with publisher.run():`` connects."""

    def __init__(self, testnet: Testnet, seed: bytes | None = None) -> None:
        self.testnet = testnet
        self.keys = key_pair_from_seed(seed if seed is not None else os.urandom(32))
        self.host = build_host(self.keys, Multiaddr("/ip4/127.0.0.1/tcp/0"))
        self.peer_id = self.host.get_id().to_base58()
        self.topics = topic_ids(testnet.chain_id)
        self.streams: dict[int, object] = {}
        self.frames_refused = 0
        self._seqno = time.time_ns()

    @asynccontextmanager
    async def run(self):
        listen = Multiaddr("/ip4/127.0.0.1/tcp/0")
        async with self.host.run([listen]):
            try:
                for i in range(len(self.testnet.nodes)):
                    target = info_from_p2p_addr(Multiaddr(self.testnet.p2p_addr(i)))
                    await self.host.connect(target)
                    self.streams[i] = await self.host.new_stream(target.peer_id, list(PUBSUB_PROTOCOLS))
                yield self
            finally:
                with trio.move_on_after(5) as scope:
                    scope.shield = True
                    await self.host.close()

    def message(self, topic: str, data: bytes) -> rpc_pb2.Message:
        """A pubsub message of ``data`` on logical ``topic``, signed by this peer as its origin."""
        self._seqno += 1
        msg = rpc_pb2.Message(data=data, topicIDs=[self.topics[topic]], from_id=self.host.get_id().to_bytes(),
                              seqno=self._seqno.to_bytes(8, "big"))
        msg.signature = self.keys.private_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
        msg.key = self.keys.public_key.serialize()
        return msg

    async def send(self, messages: list[rpc_pb2.Message]) -> int:
        """Write one RPC frame carrying ``messages`` to every node still connected; return to how
        many nodes it was written (a node that cut this peer is dropped from the list)."""
        frame = encode_varint_prefixed(rpc_pb2.RPC(publish=messages).SerializeToString())
        written = 0
        for i, stream in list(self.streams.items()):
            try:
                await stream.write(frame)  # type: ignore[attr-defined]
                written += 1
            except Exception:
                self.frames_refused += 1
                del self.streams[i]
        return written


class Heard:
    """Drains a hostile network's ``incoming`` (so its queues never matter) and keeps the raw
    vote messages it heard, by height."""

    def __init__(self) -> None:
        self.votes: dict[int, list[bytes]] = {}

    async def run(self, net: P2PNetwork) -> None:
        async for msg in net.incoming:
            if msg.topic != "vote":
                continue
            try:
                decoded = decode(msg.data, GossipMessage)
            except Exception:
                continue
            if isinstance(decoded, GossipVoteMessage):
                kept = self.votes.setdefault(decoded.vote.height, [])
                if len(kept) < 32:
                    kept.append(msg.data)


async def wait_meshed(net: P2PNetwork, peer_ids: list[str], timeout_s: float = 30.0) -> None:
    """Wait until ``net`` is connected to every peer of ``peer_ids``."""
    with trio.fail_after(timeout_s):
        while not set(peer_ids) <= set(net.connected_peers()):
            await trio.sleep(0.1)


# --- messages ------------------------------------------------------------------------------------


def status_message(height: int, execution_height: int | None = None) -> bytes:
    """A well-formed ``GossipStatusMessage`` claiming ``height``."""
    return encode(GossipStatusMessage(height, height if execution_height is None else execution_height, b"\x00" * 32))


def vote_message(chain_id: str, key: SigningKey, height: int, *, validator: str | None = None,
                 sign: bool = True) -> bytes:
    """An encoded prevote for a made-up block at ``height``, round 0, in the name of ``validator``
    (default: ``key``'s own public key), signed by ``key`` (or carrying garbage when ``sign`` is
    False)."""
    who = validator if validator is not None else key.public_key.hex()
    unsigned = Vote(VoteType.PREVOTE, height, 0, b"\x42" * 32, who, b"")
    signature = key.sign(VOTE_SIGN_DOMAIN, unsigned.sign_bytes(chain_id)) if sign else b"\x13" * 64
    return encode(GossipVoteMessage(Vote(VoteType.PREVOTE, height, 0, b"\x42" * 32, who, signature)))


def stale_votes(chain_id: str, block: dict) -> list[bytes]:
    """The precommits of a committed block's certificate (``GET /v1/blocks/{h}``), each as a
    gossip vote message: well-formed, validly signed by validators, and stale."""
    cert = block["certificate"]
    return [encode(GossipVoteMessage(Vote(VoteType.PRECOMMIT, cert["height"], cert["round"],
                                          bytes.fromhex(cert["block_hash"]), validator, bytes.fromhex(sig))))
            for validator, sig in cert["signatures"]]


def commit_announcement(chain_id: str, height: int, validators: list[str]) -> bytes:
    """A commit announcement for ``height`` whose certificate names the header's hash (so it is
    consistent on its face) but carries garbage signatures of ``validators``."""
    header = BlockHeader(
        chain_id=chain_id, height=height, round=0, epoch=0, proposer=validators[0], prev_block_hash=b"\x01" * 32,
        action_root=b"\x00" * 32, action_count=0, last_execution_height=height - 1,
        last_execution_block_hash=b"\x02" * 32, last_execution_state_root=b"\x03" * 32, timestamp_ms=1,
    )
    cert = CommitCertificate(height, 0, block_hash(header), [CommitSig(v, b"\x07" * 64) for v in validators])
    return encode(GossipCommitMessage(header, cert, None))


# --- observing the nodes -------------------------------------------------------------------------


class Watch:
    """Polls every node's status and /ready concurrently every ``interval_s`` (``run()`` as a
    task; ``/ready`` only with ``poll_ready``). ``samples[name]``: ``(trio time, height, execution_height)`` (the shape
    ``cluster_harness.longest_height_gap`` takes); ``syncing[name]`` / ``ready[name]``:
    ``(trio time, bool)``. A node that does not answer gets no sample."""

    def __init__(self, testnet: Testnet, names: list[str] | None = None, interval_s: float = 0.25,
                 poll_ready: bool = False) -> None:
        self.poll_ready = poll_ready
        chosen = set(names or testnet.names)
        self.clients = {n.name: NodeClient(n.rpc_url, timeout_s=2.0) for n in testnet.nodes if n.name in chosen}
        self.interval_s = interval_s
        self.status: dict[str, dict] = {}
        self.samples: dict[str, list[tuple[float, int, int]]] = {n: [] for n in self.clients}
        self.syncing: dict[str, list[tuple[float, bool]]] = {n: [] for n in self.clients}
        self.ready: dict[str, list[tuple[float, bool]]] = {n: [] for n in self.clients}

    async def _loop(self, name: str) -> None:
        client = self.clients[name]
        while True:
            try:
                s = await client.status()
                now = trio.current_time()
                self.status[name] = s
                self.samples[name].append((now, s["height"], s["execution_height"]))
                self.syncing[name].append((now, bool(s["syncing"])))
                if self.poll_ready:
                    ok = await client.ready()
                    self.ready[name].append((trio.current_time(), ok))
            except ClientError:
                pass
            await trio.sleep(self.interval_s)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for name in self.clients:
                nursery.start_soon(self._loop, name)

    def height(self, name: str) -> int:
        return self.status.get(name, {}).get("height", -1)

    def max_gap(self, t0: float, t1: float) -> dict[str, float]:
        """Per node, the longest time in ``[t0, t1]`` without a height increase."""
        return {n: round(longest_height_gap(s, t0, t1), 2) for n, s in self.samples.items()}

    def counts(self, series: dict[str, list[tuple[float, bool]]], t0: float, t1: float, value: bool) -> dict[str, str]:
        """Per node, ``"k/n"``: samples in ``[t0, t1]`` equal to ``value`` out of all of them."""
        out = {}
        for name, samples in series.items():
            window = [v for t, v in samples if t0 <= t <= t1]
            out[name] = f"{sum(1 for v in window if v == value)}/{len(window)}"
        return out

    def episodes(self, series: dict[str, list[tuple[float, bool]]], t0: float, t1: float, value: bool) -> dict[str, int]:
        """Per node, how many separate runs of consecutive samples in ``[t0, t1]`` equal ``value``."""
        out = {}
        for name, samples in series.items():
            runs, previous = 0, None
            for t, v in samples:
                if t0 <= t <= t1:
                    if v == value and previous != value:
                        runs += 1
                    previous = v
            out[name] = runs
        return out

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for c in self.clients.values():
                await c.aclose()


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (0 when the series does not exist)."""
    label = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search("^" + re.escape(name + (f"{{{label}}}" if label else "")) + r" ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


class LogMark:
    """The end of each node's log at creation; ``lines(name)`` returns what the node logged since."""

    def __init__(self, testnet: Testnet) -> None:
        self.paths = {n.name: n.log_path for n in testnet.nodes}
        self.offsets = {name: (p.stat().st_size if p.exists() else 0) for name, p in self.paths.items()}

    def lines(self, name: str) -> list[str]:
        with open(self.paths[name], "rb") as f:
            f.seek(self.offsets[name])
            return f.read().decode("utf-8", errors="replace").splitlines()

    def events(self, name: str, event: str) -> list[dict]:
        """The JSON log records of ``event`` logged by ``name`` since the mark."""
        out = []
        for line in self.lines(name):
            if f'"{event}"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                out.append(record)
        return out

    def count(self, name: str, text: str) -> int:
        return sum(1 for line in self.lines(name) if text in line)
