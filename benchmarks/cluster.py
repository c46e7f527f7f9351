"""Empty-cluster block interval, one of the network-limit figures: a real 4-validator testnet on loopback
with no load, and how fast it commits empty blocks. Target: at least ``TARGET_BLOCKS_PER_S``.

What is measured (after ``WARMUP_S`` seconds of warm-up past height ``MIN_START_HEIGHT``):

- ``empty_blocks_per_s``: heights committed by node0 during ``WINDOW_S`` seconds (its GET
  /v1/status, polled every ``POLL_S``), divided by the window.
- ``empty_block_interval_ms_p50`` / ``_p99``: the gap between consecutive heights' block header
  ``timestamp_ms`` (the proposer's clock when it built the block; every node is on this machine, so
  one clock), over the heights of the window (GET /v1/blocks/{h}).
- ``empty_block_extra_rounds``: heights of the window decided in a round above 0 (a timeout fired).
- ``empty_cluster_cpu_percent_per_node``: mean CPU of one node process over the window (% of a core).
- the per-height breakdown ``empty_block_*_ms`` (medians), seen by a 5th, non-validator libp2p
  peer (an observer ``P2PNetwork`` with the node configuration, subscribed to the chain's topics)
  and by node0's log (``block_committed`` lines, structlog JSON, ISO timestamps):

  ``build_to_proposal_seen``  header ``timestamp_ms`` -> the observer receives the proposal
  ``proposal_to_prevotes``    proposal received -> a prevote quorum (> 2/3 stake) for it received
  ``prevotes_to_precommits``  prevote quorum -> precommit quorum received
  ``precommits_to_committed`` precommit quorum -> node0 logs ``block_committed`` (store + execute)
  ``committed_to_next_build`` node0's ``block_committed`` -> the next header's ``timestamp_ms``
                              (``timeout_commit_ms`` plus starting the next height and building)

  The stages are measured at different places (observer arrival, node0's log, the proposer's
  clock), so each is an estimate within a few milliseconds of gossip delay; they sum to the median
  interval only roughly (medians do not add).

Run with ``python -m benchmarks.cluster`` or through ``run_all(record)``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Callable

import structlog
import trio

from agent_world_client.client import ClientError, NodeClient
from agent_world_node.config import ConsensusConfig, NodeConfig, read_config, read_genesis, read_key
from agent_world_node.network import NetworkConfig, P2PNetwork, peer_id_for_seed
from agent_world_node.types import GossipCommitMessage, GossipMessage, GossipProposalMessage, GossipVoteMessage, VoteType
from agent_world_runtime.codec import DecodeError, decode
from agent_world_tools.testnet import (
    NodeProcess,
    TestnetNode,
    init_testnet,
    load_testnet,
    stop_all,
    wait_until_ready,
)

log = structlog.get_logger(__name__)

NODES = 4
TARGET_BLOCKS_PER_S = 4.0
#: Height node0 must reach before the warm-up starts (the first heights include connection setup).
MIN_START_HEIGHT = 3
WARMUP_S = 3.0
WINDOW_S = 15.0
POLL_S = 0.02
#: Bound on the whole measurement (start, warm-up, window, fetching headers), seconds.
TIMEOUT_S = 120.0


@dataclass
class HeightTimes:
    """What the observer saw of one height (wall-clock ms, ``time.time() * 1000``); None = not seen.
    ``prevoters`` / ``precommitters``: validators whose vote for the proposed block has arrived."""

    proposal_seen_ms: float | None = None
    block_hash: bytes | None = None
    round: int | None = None
    prevoters: set[str] = field(default_factory=set)
    precommitters: set[str] = field(default_factory=set)
    prevote_quorum_ms: float | None = None
    precommit_quorum_ms: float | None = None
    commit_seen_ms: float | None = None


class ConsensusObserver:
    """Timestamps the consensus gossip of one chain per height, as seen from one libp2p peer.

    ``stakes``: validator id (hex public key) -> stake, from genesis; a quorum is more than 2/3 of
    the total stake (the +2/3 of voting power of the Tendermint paper). Feed it raw gossip with
    ``on_gossip(data, now_ms)``; undecodable messages are counted in ``malformed`` and otherwise
    ignored.
    """

    def __init__(self, stakes: dict[str, int]) -> None:
        self.stakes = stakes
        self.total = sum(stakes.values())
        self.heights: dict[int, HeightTimes] = {}
        self.malformed = 0
        self.extra_rounds = 0

    def _has_quorum(self, voters: set[str]) -> bool:
        return 3 * sum(self.stakes.get(v, 0) for v in voters) > 2 * self.total

    def on_gossip(self, data: bytes, now_ms: float) -> None:
        """Record one gossip payload received at ``now_ms``."""
        try:
            msg = decode(data, GossipMessage)
        except DecodeError:
            self.malformed += 1
            return
        if isinstance(msg, GossipProposalMessage):
            p = msg.proposal
            t = self.heights.setdefault(p.height, HeightTimes())
            if t.proposal_seen_ms is None:
                t.proposal_seen_ms, t.block_hash, t.round = now_ms, p.block.hash(), p.round
                if p.round > 0:
                    self.extra_rounds += 1
        elif isinstance(msg, GossipVoteMessage):
            v = msg.vote
            t = self.heights.setdefault(v.height, HeightTimes())
            if v.block_hash is None or (t.block_hash is not None and v.block_hash != t.block_hash):
                return
            if v.vote_type == VoteType.PREVOTE:
                t.prevoters.add(v.validator)
                if t.prevote_quorum_ms is None and self._has_quorum(t.prevoters):
                    t.prevote_quorum_ms = now_ms
            else:
                t.precommitters.add(v.validator)
                if t.precommit_quorum_ms is None and self._has_quorum(t.precommitters):
                    t.precommit_quorum_ms = now_ms
        elif isinstance(msg, GossipCommitMessage):
            t = self.heights.setdefault(msg.header.height, HeightTimes())
            if t.commit_seen_ms is None:
                t.commit_seen_ms = now_ms


def committed_times_from_log(path: Path) -> dict[int, float]:
    """Return height -> wall-clock ms of the ``block_committed`` lines in a node's JSON log (the
    structlog ``timestamp`` field, ISO 8601 UTC). Lines that are not JSON are skipped."""
    out: dict[int, float] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if '"block_committed"' not in line:
            continue
        try:
            rec = json.loads(line)
            ts = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp() * 1000
            out.setdefault(int(rec["height"]), ts)
        except (ValueError, KeyError, TypeError):
            continue
    return out


def percentile(values: list[float], q: float) -> float:
    """Return the ``q``-quantile (0..1) of ``values`` by the nearest-rank method. Raises ValueError
    on an empty list."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]


def _median_of(pairs: list[tuple[float | None, float | None]]) -> float | None:
    diffs = [b - a for a, b in pairs if a is not None and b is not None]
    return statistics.median(diffs) if diffs else None


def breakdown(observer: ConsensusObserver, header_ms: dict[int, int], committed_ms: dict[int, float],
              heights: range) -> dict[str, float]:
    """Return the median stage times (ms) of ``heights`` (see the module docstring); stages with no
    data are left out."""
    stages: dict[str, list[tuple[float | None, float | None]]] = {
        "build_to_proposal_seen": [], "proposal_to_prevotes": [], "prevotes_to_precommits": [],
        "precommits_to_committed": [], "committed_to_next_build": [],
    }
    for h in heights:
        t = observer.heights.get(h, HeightTimes())
        stages["build_to_proposal_seen"].append((header_ms.get(h), t.proposal_seen_ms))
        stages["proposal_to_prevotes"].append((t.proposal_seen_ms, t.prevote_quorum_ms))
        stages["prevotes_to_precommits"].append((t.prevote_quorum_ms, t.precommit_quorum_ms))
        stages["precommits_to_committed"].append((t.precommit_quorum_ms, committed_ms.get(h)))
        stages["committed_to_next_build"].append((committed_ms.get(h), header_ms.get(h + 1)))
    out = {}
    for name, pairs in stages.items():
        m = _median_of(pairs)
        if m is not None:
            out[name] = m
    return out


def _node_peer_addr(node: TestnetNode) -> str:
    cfg = read_config(node.home.config_file)
    return f"{cfg.p2p.listen}/p2p/{peer_id_for_seed(read_key(node.home.node_key_file).seed)}"


async def _observe(network: P2PNetwork, observer: ConsensusObserver,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with network.run():
        task_status.started()
        async for msg in network.incoming:
            observer.on_gossip(msg.data, time.time() * 1000)


async def _no_blocks(from_height: int, to_height: int) -> list[bytes]:
    return []


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` from ``/proc`` (Linux); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


async def measure_empty_cluster(directory: Path, *, nodes: int = NODES, warmup_s: float = WARMUP_S,
                                window_s: float = WINDOW_S,
                                consensus: ConsensusConfig | None = None) -> dict[str, float]:
    """Create a ``nodes``-validator testnet in ``directory`` (must be empty), run it with no load,
    and return the figures named in the module docstring (keys are the final figure names), plus
    ``empty_cluster_cpu_percent_per_node`` (mean CPU use of one node process during the window,
    percent of one core; Linux only). ``consensus``: the nodes' timeouts (default: the
    ``config.toml`` defaults). Every node process is stopped before returning.

    Raises ``testnet.TestnetError`` if a node does not start, RuntimeError if the chain commits
    no height during the window, ``trio.TooSlowError`` after ``TIMEOUT_S`` seconds.
    """
    init_testnet(directory, nodes, config=(lambda i: NodeConfig(consensus=consensus)) if consensus is not None else None)
    tnodes = load_testnet(directory)
    genesis = read_genesis(tnodes[0].home.genesis_file)
    observer = ConsensusObserver({v.public_key: v.stake for v in genesis.validators})
    processes = [NodeProcess(n) for n in tnodes]
    client = NodeClient(tnodes[0].rpc_url, timeout_s=2.0)
    try:
        for p in processes:
            p.start()
        with trio.fail_after(TIMEOUT_S):
            await wait_until_ready(tnodes, processes, timeout_s=60)
            net = P2PNetwork(
                NetworkConfig(chain_id=genesis.chain_id, listen_addr="/ip4/127.0.0.1/tcp/0",
                              peers=[_node_peer_addr(n) for n in tnodes], key_seed=os.urandom(32)),
                sync_handler=_no_blocks,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(_observe, net, observer)
                while (await client.status())["height"] < MIN_START_HEIGHT:
                    await trio.sleep(0.1)
                await trio.sleep(warmup_s)
                h0 = (await client.status())["height"]
                cpu0 = [_cpu_seconds(p.pid) for p in processes]
                start = time.monotonic()
                last = h0
                while time.monotonic() - start < window_s:
                    try:
                        last = (await client.status())["height"]
                    except ClientError:
                        pass
                    await trio.sleep(POLL_S)
                elapsed = time.monotonic() - start
                cpu1 = [_cpu_seconds(p.pid) for p in processes]
                h1 = last
                nursery.cancel_scope.cancel()
            if h1 <= h0:
                tails = "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in processes)
                raise RuntimeError(f"no height committed in {window_s} s (stuck at {h0}); node logs:\n{tails}")
            header_ms = {}
            for h in range(h0, h1 + 2):
                try:
                    header_ms[h] = (await client.block(h))["header"]["timestamp_ms"]
                except ClientError:
                    pass
    finally:
        with trio.CancelScope(shield=True):
            await client.aclose()
        stop_all(processes)
    committed = committed_times_from_log(tnodes[0].log_path)
    gaps = [header_ms[h + 1] - header_ms[h] for h in range(h0, h1) if h in header_ms and h + 1 in header_ms]
    figures = {
        "empty_blocks_per_s": (h1 - h0) / elapsed,
        "empty_block_interval_ms_p50": statistics.median(gaps),
        "empty_block_interval_ms_p99": percentile(gaps, 0.99),
        "empty_block_extra_rounds": float(sum(1 for h in range(h0 + 1, h1 + 1)
                                             if (observer.heights.get(h) or HeightTimes()).round not in (None, 0))),
    }
    cpu = [b - a for a, b in zip(cpu0, cpu1, strict=True) if a is not None and b is not None]
    if cpu:
        figures["empty_cluster_cpu_percent_per_node"] = 100 * statistics.mean(cpu) / elapsed
    for name, value in breakdown(observer, header_ms, committed, range(h0 + 1, h1)).items():
        figures[f"empty_block_{name}_ms"] = value
    log.info("empty_cluster_measured", heights=h1 - h0, window_s=round(elapsed, 2), **{k: round(v, 1) for k, v in figures.items()})
    return figures


def block_interval(record: Callable[[str, float], None], *, consensus: ConsensusConfig | None = None) -> dict[str, float]:
    """Measure the empty-cluster block rate and interval (a fresh testnet in a temporary directory,
    removed afterwards; ``consensus`` overrides the default timeouts) and pass each figure to
    ``record(name, value)``; return them too."""
    with tempfile.TemporaryDirectory(prefix="aw-bench-cluster-") as tmp:
        figures = trio.run(partial(measure_empty_cluster, Path(tmp) / "testnet", consensus=consensus))
    for name, value in figures.items():
        record(name, value)
    return figures


def run_all(record: Callable[[str, float], None]) -> None:
    """All cluster benchmarks of this module: ``block_interval``."""
    block_interval(record)


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.cluster [--timeout-commit-ms MS]``: print the figures (the option
    shows what another ``timeout_commit_ms`` would give; ``run_all`` uses the default)."""
    import logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout-commit-ms", type=int, default=None)
    args = parser.parse_args(argv)

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    def record(name: str, value: float) -> None:
        print(f"{name:45s} {value:12.2f}", flush=True)

    if args.timeout_commit_ms is None:
        run_all(record)
    else:
        block_interval(record, consensus=ConsensusConfig(timeout_commit_ms=args.timeout_commit_ms))


if __name__ == "__main__":
    main()
