"""Sustained throughput and latency of a 4-validator cluster, one process per node, loopback.

Method:
1. ``init_testnet`` 4 validators in a temporary directory and start them as processes.
2. The testnet's faucet creates ``agents`` agents (batches through ``POST /v1/actions/batch`` to
   node0), wait until every node executed them.
3. Pre-sign ``rate x duration`` ``TransferResource`` actions (1 data to the next agent; each agent
   keeps one node, so its nonces arrive in order) so the load generator only sends.
4. Every ``TICK_S`` send each node its share as one batch; record each action's submit time.
5. A watcher polls every node's ``/v1/status`` every ``POLL_S``; for every new height it fetches
   the block's action ids from node0 and notes when each node had executed that height. An
   action's latency is (the moment the last node was seen to have executed it) - (its submit
   time); polling adds up to ``POLL_S``.
6. Throughput: actions executed on every node during the measurement window (after a warm-up),
   divided by its length.

Capacity first: offered rates are tried in turn on the same cluster until ``PATIENCE`` (2) rates in a
row are neither sustained (executed >= 95% of offered with p99 <= 3 s) nor execute 5% more than the
best rate before them (one noisy run on a shared machine does not end the search).
The capacity is the highest executed throughput of any rate whose accepted actions kept p99 <= 3 s. Then the plateau: the cluster is
offered 1.5x and 2x the capacity; nodes refuse what they cannot commit soon (503 ``over_capacity``,
``agent_world_node/replica/intake.py``), the load generator drops refused actions (it does not
retry), and the figures show whether executed throughput holds (>= 90% of capacity is the target)
with accepted actions still executed quickly.

Figures per offered rate R: ``cluster_actions_per_s_at_R_offered`` (executed on all 4 nodes),
``cluster_latency_p50_ms_at_R_offered`` / ``_p99_ms_`` (submit to executed on every node, accepted
actions), ``cluster_accepted_ratio_at_R_offered``, ``cluster_blocks_per_s_at_R_offered``,
``cluster_actions_per_block_at_R_offered``, ``cluster_cpu_us_per_action_per_node_at_R_offered``
(user + system CPU time of the node processes in the window, from /proc, divided by the nodes and
by the actions executed in it). Summary: ``cluster_capacity_actions_per_s`` (with
``cluster_capacity_offered_actions_per_s``, ``cluster_latency_p50_ms``, ``cluster_latency_p99_ms``,
``cluster_cpu_us_per_action_per_node`` at it), and for F in 1.5 and 2:
``cluster_actions_per_s_at_{F}x_capacity``, ``cluster_plateau_ratio_at_{F}x_capacity`` (executed /
capacity), ``cluster_latency_p99_ms_at_{F}x_capacity``, ``cluster_accepted_ratio_at_{F}x_capacity``.
The legacy names ``cluster_actions_per_s`` / ``cluster_offered_actions_per_s`` carry the capacity.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import trio

from agent_world_client.client import AgentKey, NodeBusy, NodeClient
from agent_world_node.config import NodeConfig
from agent_world_runtime.actions import TransferResource
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

#: What the faucet gives each load agent, of each resource (transfers cost 1 data and a fee of about 2).
ENDOWMENT = 10**9

TICK_S = 0.1
POLL_S = 0.1
BATCH_LIMIT = 1000


MAX_BLOCK_ACTIONS = 2000
#: The ladder goes on past an offered rate that was not sustained while executed throughput still
#: grows by this factor over the best so far (intake refusals can keep a rate below 95% accepted
#: before the cluster is saturated).
GROWTH = 1.05
#: How many rates in a row must fail to grow executed throughput before the ladder stops.
PATIENCE = 2
#: Multiples of the measured capacity offered after it is found.
PLATEAU_FACTORS = (1.5, 2.0)


def _config(i: int) -> NodeConfig:
    c = NodeConfig()
    c.mempool.max_actions = 50_000
    c.consensus.max_block_actions = MAX_BLOCK_ACTIONS
    c.log_format = "json"
    return c


class Watcher:
    """Tracks, per height, when each node was first seen having executed it, and which actions it
    holds (from node0's copy of the block)."""

    def __init__(self, clients: list[NodeClient]) -> None:
        self.clients = clients
        self.exec_height = [0] * len(clients)
        self.seen_at: dict[int, list[float]] = {}
        self.height_of_action: dict[str, int] = {}
        self.fetched = 0
        self.blocks: dict[int, int] = {}

    def executed_everywhere_at(self, height: int) -> float | None:
        times = self.seen_at.get(height)
        if times is None or any(math.isnan(t) for t in times):
            return None
        return max(times)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for i in range(len(self.clients)):
                nursery.start_soon(self._poll, i)
            nursery.start_soon(self._fetch_blocks)

    async def _poll(self, i: int) -> None:
        while True:
            try:
                status = await self.clients[i].status()
            except Exception:
                await trio.sleep(POLL_S)
                continue
            now = time.monotonic()
            h = status["execution_height"]
            for height in range(self.exec_height[i] + 1, h + 1):
                self.seen_at.setdefault(height, [math.nan] * len(self.clients))[i] = now
            self.exec_height[i] = max(self.exec_height[i], h)
            await trio.sleep(POLL_S)

    async def _fetch_blocks(self) -> None:
        while True:
            if self.fetched < self.exec_height[0]:
                h = self.fetched + 1
                try:
                    block = await self.clients[0].block(h)
                except Exception:
                    await trio.sleep(POLL_S)
                    continue
                for a in block["actions"]:
                    self.height_of_action[a["action_id"]] = h
                self.blocks[h] = len(block["actions"])
                self.fetched = h
            else:
                await trio.sleep(POLL_S)


async def _submit_all(client: NodeClient, signed: list, batch: int = BATCH_LIMIT) -> None:
    """Submit ``signed`` in order, in batches, waiting out busy answers: a node refuses the actions
    above its intake budget (a suffix of a batch, since the backlog only grows within one), and
    those are sent again after the node's hint. Raises RuntimeError when one is rejected."""
    k = 0
    while k < len(signed):
        chunk = signed[k : k + batch]
        try:
            results = await client.submit_batch(chunk)
        except NodeBusy:
            await trio.sleep(0.5)
            continue
        rejected = [r for r in results if r["status"] == "rejected"]
        if rejected:
            raise RuntimeError(f"set-up action rejected: {rejected[0]}")
        busy = [i for i, r in enumerate(results) if r["status"] == "busy"]
        k += busy[0] if busy else len(chunk)
        if busy:
            await trio.sleep(max(0.2, results[busy[0]].get("retry_after_ms", 500) / 1000))


async def _register(clients: list[NodeClient], signers: list[AgentSigner], faucet: AgentSigner) -> None:
    """Have the faucet create every agent (through node0, so its nonces arrive in order) with
    ``ENDOWMENT`` of each resource; wait until all nodes executed the creations."""
    await _submit_all(clients[0], [faucet.create_agent(s, electricity=ENDOWMENT, data=ENDOWMENT) for s in signers])
    with trio.fail_after(120):
        while True:
            agent = None
            try:
                statuses = [await c.status() for c in clients]
                agent = await clients[-1].agent(signers[-1].agent_id)
            except Exception:
                statuses = []
            if agent is not None and min(s["execution_height"] for s in statuses) >= statuses[0]["height"]:
                return
            await trio.sleep(0.2)


def _plan(signers: list[AgentSigner], n: int, rate: float, duration_s: float) -> list[list[list]]:
    """Pre-signed load: ``plan[tick][node]`` lists the transfers node ``node`` gets at that tick;
    each agent sends only through its own node, so its nonces arrive in order."""
    own = [[s for i, s in enumerate(signers) if i % n == j] for j in range(n)]
    index = {s.agent_id: i for i, s in enumerate(signers)}
    cursor = [0] * n
    plan, carry = [], 0.0
    for _ in range(int(duration_s / TICK_S)):
        carry += rate * TICK_S
        count = int(carry)
        carry -= count
        tick: list[list] = [[] for _ in range(n)]
        for k in range(count):
            j = k % n
            s = own[j][cursor[j] % len(own[j])]
            cursor[j] += 1
            to = signers[(index[s.agent_id] + 1) % len(signers)].agent_id
            tick[j].append(s.sign(TransferResource(to=to, kind="data", amount=1)))
        plan.append(tick)
    return plan


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by the processes ``pids`` (Linux /proc; 0 for one
    that is gone)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15 of stat)
    return total


async def _run_rate(clients: list[NodeClient], plan: list[list[list]], warmup_s: float,
                    pids: list[int]) -> dict[str, float]:
    """Send ``plan`` (one batch per node per tick), watch execution, return this rate's figures."""
    n = len(clients)
    watcher = Watcher(clients)
    submitted: dict[str, float] = {}
    statuses_seen: dict[str, int] = {}
    cpu_at: dict[str, float] = {}

    async def send(j: int, actions: list, at: float) -> None:
        try:
            results = await clients[j].submit_batch(actions)
        except NodeBusy:  # every action of the batch refused (503): dropped, not retried
            statuses_seen["busy"] = statuses_seen.get("busy", 0) + len(actions)
            return
        except Exception:
            statuses_seen["error"] = statuses_seen.get("error", 0) + len(actions)
            return
        for r in results:
            statuses_seen[r["status"]] = statuses_seen.get(r["status"], 0) + 1
            if r["status"] == "accepted":
                submitted[r["action_id"]] = at

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher.run)
        await trio.sleep(2 * POLL_S)  # the watcher's first view of every node
        watcher.fetched = watcher.exec_height[0]  # only blocks from now on
        start = time.monotonic()
        for t, tick in enumerate(plan):
            await trio.sleep(max(0.0, start + t * TICK_S - time.monotonic()))
            if "start" not in cpu_at and time.monotonic() >= start + warmup_s:
                cpu_at["start"] = _cpu_s(pids)
            for j in range(n):
                if tick[j]:
                    nursery.start_soon(send, j, tick[j], time.monotonic())
        end_submit = time.monotonic()
        cpu_at["end"] = _cpu_s(pids)
        with trio.move_on_after(30):  # drain: everything accepted executed everywhere (bounded)
            while True:
                pending = [a for a in submitted if a not in watcher.height_of_action
                           or watcher.executed_everywhere_at(watcher.height_of_action[a]) is None]
                if not pending:
                    break
                await trio.sleep(0.2)
        nursery.cancel_scope.cancel()

    window = (start + warmup_s, end_submit)
    span = window[1] - window[0]
    latencies, executed_in_window = [], 0
    for aid, at in submitted.items():
        h = watcher.height_of_action.get(aid)
        done_at = watcher.executed_everywhere_at(h) if h is not None else None
        if done_at is None:
            continue
        if window[0] <= at <= window[1]:
            latencies.append((done_at - at) * 1000)
        if window[0] <= done_at <= window[1]:
            executed_in_window += 1
    heights = [h for h in watcher.seen_at if (t := watcher.executed_everywhere_at(h)) is not None
               and window[0] <= t <= window[1]]
    latencies.sort()
    out = {
        "actions_per_s": executed_in_window / span,
        "accepted_ratio": statuses_seen.get("accepted", 0) / max(1, sum(statuses_seen.values())),
        "blocks_per_s": len(heights) / span,
        "actions_per_block": statistics.mean([watcher.blocks.get(h, 0) for h in heights]) if heights else 0.0,
        "latency_p50_ms": latencies[len(latencies) // 2] if latencies else math.inf,
        "latency_p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else math.inf,
        "cpu_us_per_action_per_node": ((cpu_at["end"] - cpu_at.get("start", cpu_at["end"])) / len(pids)
                                       / max(1, executed_in_window) * 1e6),
    }
    print(f"  submissions by status: {statuses_seen}")
    return out


async def _diagnostics(clients: list[NodeClient]) -> None:
    for j, c in enumerate(clients):  # where each node is, what its network dropped
        try:
            st = await c.status()
            metrics = (await c._http.get("/metrics")).text
        except Exception as exc:
            print(f"  node{j}: no status ({exc})")
            continue
        dropped = [line for line in metrics.splitlines()
                   if line.startswith(("awnode_gossip_dropped_total{", "awnode_consensus_messages_dropped_total{"))]
        print(f"  node{j}: height {st['height']} round {st['round']} mempool {st['mempool_size']} "
              f"peers {st['peer_count']} dropped {' '.join(d.split('{')[1] for d in dropped)}")


def _meets_targets(fig: dict[str, float], rate: float) -> bool:
    """Sustained: at least 95% of the offered rate executed, with p99 submit-to-executed latency
    of the accepted actions at or below 3 s."""
    return fig["actions_per_s"] >= 0.95 * rate and fig["latency_p99_ms"] <= 3000


async def _scenario(urls: list[str], chain_id: str, *, faucet: AgentSigner, agents: int, rates: tuple[float, ...],
                    duration_s: float, warmup_s: float, record: Callable[[str, float], None], pids: list[int],
                    plateau: tuple[float, ...] = PLATEAU_FACTORS) -> None:
    clients = [NodeClient(u, timeout_s=30.0, max_503_retries=0) for u in urls]
    try:
        signers = [AgentSigner.from_seed(f"t{i}", i.to_bytes(4, "big") * 8, chain_id) for i in range(agents)]
        await _register(clients, signers, faucet)

        async def run(rate: float) -> dict[str, float]:
            plan = _plan(signers, len(clients), rate, duration_s)
            fig = await _run_rate(clients, plan, warmup_s, pids)
            for name, value in fig.items():
                record(f"cluster_{name}_at_{int(rate)}_offered", value)
            await _diagnostics(clients)
            return fig

        capacity: tuple[float, dict[str, float]] | None = None
        misses = 0
        for rate in rates:
            fig = await run(rate)
            best = capacity[1]["actions_per_s"] if capacity else 0.0
            if fig["latency_p99_ms"] <= 3000 and fig["actions_per_s"] > best:
                capacity = (rate, fig)
            misses = misses + 1 if not _meets_targets(fig, rate) and fig["actions_per_s"] < GROWTH * best else 0
            if misses >= PATIENCE:
                break  # saturated: more offered no longer commits more; the plateau runs measure beyond
        if capacity is None:
            record("cluster_capacity_actions_per_s", 0.0)
            return
        rate, fig = capacity
        cap = fig["actions_per_s"]
        for name, value in (("cluster_capacity_actions_per_s", cap), ("cluster_capacity_offered_actions_per_s", rate),
                            ("cluster_actions_per_s", cap), ("cluster_offered_actions_per_s", rate),
                            ("cluster_latency_p50_ms", fig["latency_p50_ms"]),
                            ("cluster_latency_p99_ms", fig["latency_p99_ms"]),
                            ("cluster_cpu_us_per_action_per_node", fig["cpu_us_per_action_per_node"])):
            record(name, value)
        for factor in plateau:
            over = await run(round(cap * factor))
            tag = f"{factor:g}x_capacity"
            record(f"cluster_actions_per_s_at_{tag}", over["actions_per_s"])
            record(f"cluster_plateau_ratio_at_{tag}", over["actions_per_s"] / cap)
            record(f"cluster_latency_p99_ms_at_{tag}", over["latency_p99_ms"])
            record(f"cluster_accepted_ratio_at_{tag}", over["accepted_ratio"])
    finally:
        with trio.CancelScope(shield=True):
            for c in clients:
                await c.aclose()
#: Offered rates tried in turn until more offered no longer commits more: steps of about 1.25x, from a load every
#: machine sustains (the capacity of a 4-process cluster on 2 cores is CPU-bound near 200-400/s).
DEFAULT_RATES = (150.0, 200.0, 250.0, 300.0, 400.0, 500.0, 650.0, 800.0, 1000.0, 1250.0, 1600.0, 2000.0, 2500.0, 3000.0)


def run_cluster(record: Callable[[str, float], None], *, rates: tuple[float, ...] = DEFAULT_RATES,
                duration_s: float = 20.0,
                warmup_s: float = 5.0, agents: int = 4000, nodes: int = 4, keep_dir: Path | None = None,
                profile_to: Path | None = None) -> None:
    """Start ``nodes`` validator processes and run the load described in the module docstring at
    each offered rate of ``rates`` in turn (``duration_s`` seconds each) until more offered no longer commits more
    within the latency targets, then 1.5x and 2x the capacity found; record the figures named in
    the module docstring. Stops every process.
    ``profile_to``: write node1's cProfile stats there (``AGENT_WORLD_PROFILE``)."""
    with tempfile.TemporaryDirectory(prefix="aw-bench-") as tmp:
        directory = keep_dir or Path(tmp) / "tn"
        init_testnet(directory, nodes, config=_config)
        tn = load_testnet(directory)
        procs = [NodeProcess(node) for node in tn]
        if profile_to is not None:
            # node1: node0 also serves the watcher's block fetches
            procs[1] = NodeProcess(tn[1], env={"AGENT_WORLD_PROFILE": str(profile_to)})
        try:
            for p in procs:
                p.start()
            faucet_key = AgentKey.load(faucet_key_file(directory))
            faucet = AgentSigner(FAUCET_AGENT_ID, faucet_key.key, tn[0].chain_id)
            trio.run(_ready_and_run, tn, procs, record, tuple(rates), duration_s, warmup_s, agents, faucet)
        finally:
            stop_all(procs, grace_s=10)


async def _ready_and_run(tn, procs, record, rates, duration_s, warmup_s, agents, faucet) -> None:
    await wait_until_ready(tn, procs, timeout_s=60)
    pids = [p.pid for p in procs if p.pid is not None]
    await _scenario([n.rpc_url for n in tn], tn[0].chain_id, faucet=faucet, agents=agents, rates=rates,
                    duration_s=duration_s, warmup_s=warmup_s, record=record, pids=pids)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default=",".join(str(int(r)) for r in DEFAULT_RATES),
                        help="offered actions/s, comma-separated, tried in order")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--agents", type=int, default=4000)
    parser.add_argument("--keep-dir", type=Path, default=None)
    parser.add_argument("--max-block-actions", type=int, default=MAX_BLOCK_ACTIONS)
    parser.add_argument("--profile", type=Path, default=None, help="write node1's cProfile stats here")
    args = parser.parse_args()
    MAX_BLOCK_ACTIONS = args.max_block_actions

    def show(name: str, value: float) -> None:
        print(f"{name:45s} {value:12.2f}", flush=True)

    run_cluster(show, rates=tuple(float(r) for r in args.rates.split(",")), duration_s=args.duration, agents=args.agents, keep_dir=args.keep_dir,
                profile_to=args.profile)
