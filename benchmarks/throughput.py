"""Sustained throughput and latency of a 4-validator cluster (issue 6), one process per node, loopback.

Method:
1. ``init_testnet`` 4 validators in a temporary directory and start them as processes.
2. Register ``agents`` agents (batches through ``POST /v1/actions/batch``), wait until every node
   executed them.
3. Pre-sign ``rate x duration`` ``TransferResource`` actions (1 data to the next agent; each agent
   keeps one node, so its nonces arrive in order) so the load generator only sends.
4. Every ``TICK_S`` send each node its share as one batch; record each action's submit time.
5. A watcher polls every node's ``/v1/status`` every ``POLL_S``; for every new height it fetches
   the block's action ids from node0 and notes when each node had executed that height. An
   action's latency is (the moment the last node was seen to have executed it) - (its submit
   time); polling adds up to ``POLL_S``.
6. Throughput: actions executed on every node during the measurement window (after a warm-up),
   divided by its length.

Figures: ``cluster_actions_per_s`` (executed on all 4 nodes), ``cluster_offered_actions_per_s``,
``cluster_latency_p50_ms`` / ``_p99_ms`` (submit to executed on every node), ``cluster_accepted_ratio``,
``cluster_blocks_per_s_under_load``, ``cluster_actions_per_block``.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import trio

from agent_world_node.client import NodeClient
from agent_world_node.config import NodeConfig
from agent_world_node.testnet import NodeProcess, init_testnet, load_testnet, stop_all, wait_until_ready
from agent_world_runtime.actions import TransferResource
from agent_world_runtime.signer import AgentSigner

TICK_S = 0.1
POLL_S = 0.1
BATCH_LIMIT = 1000


MAX_BLOCK_ACTIONS = 2000


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


async def _submit_all(client: NodeClient, signed: list, batch: int = BATCH_LIMIT) -> list[dict]:
    out = []
    for k in range(0, len(signed), batch):
        out.extend(await client.submit_batch(signed[k : k + batch]))
    return out


async def _scenario(urls: list[str], chain_id: str, *, agents: int, rate: float, duration_s: float,
                    warmup_s: float, record: Callable[[str, float], None]) -> None:
    clients = [NodeClient(u, timeout_s=30.0) for u in urls]
    n = len(clients)
    try:
        signers = [AgentSigner.from_seed(f"t{i}", i.to_bytes(4, "big") * 8, chain_id) for i in range(agents)]
        # 1. registration, each agent through "its" node
        async with trio.open_nursery() as nursery:
            for j in range(n):
                regs = [s.register() for i, s in enumerate(signers) if i % n == j]
                nursery.start_soon(_submit_all, clients[j], regs)
        with trio.fail_after(120):
            while True:
                agent = None
                try:
                    statuses = [await c.status() for c in clients]
                    agent = await clients[-1].agent(signers[-1].agent_id)
                except Exception:
                    pass
                if agent is not None and min(s["execution_height"] for s in statuses) >= statuses[0]["height"]:
                    break
                await trio.sleep(0.2)

        # 2. pre-signed load: per tick, per node, the actions of that node's agents in turn
        ticks = int(duration_s / TICK_S)
        per_tick = rate * TICK_S
        plan: list[list[list]] = []  # plan[tick][node] -> signed actions
        carry = 0.0
        cursor = [0] * n
        own = [[s for i, s in enumerate(signers) if i % n == j] for j in range(n)]
        for _ in range(ticks):
            carry += per_tick
            count = int(carry)
            carry -= count
            tick: list[list] = [[] for _ in range(n)]
            for k in range(count):
                j = k % n
                s = own[j][cursor[j] % len(own[j])]
                cursor[j] += 1
                to = signers[(signers.index(s) + 1) % agents].agent_id if agents < 50 else f"t{(int(s.agent_id[1:]) + 1) % agents}"
                tick[j].append(s.sign(TransferResource(to=to, kind="data", amount=1)))
            plan.append(tick)

        watcher = Watcher(clients)
        submitted: dict[str, float] = {}
        statuses_seen: dict[str, int] = {}
        lock_start = time.monotonic()

        async def send(j: int, actions: list, at: float) -> None:
            try:
                results = await clients[j].submit_batch(actions)
            except Exception:
                statuses_seen["error"] = statuses_seen.get("error", 0) + len(actions)
                return
            for r in results:
                statuses_seen[r["status"]] = statuses_seen.get(r["status"], 0) + 1
                if r["status"] == "accepted":
                    submitted[r["action_id"]] = at

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher.run)
            start = time.monotonic()
            for t, tick in enumerate(plan):
                at = start + t * TICK_S
                await trio.sleep_until(trio.current_time() + max(0.0, at - time.monotonic()))
                for j in range(n):
                    if tick[j]:
                        nursery.start_soon(send, j, tick[j], time.monotonic())
            end_submit = time.monotonic()
            # drain: wait until the accepted actions are executed everywhere (bounded)
            with trio.move_on_after(30):
                while True:
                    done = sum(1 for a in submitted if a in watcher.height_of_action
                               and watcher.executed_everywhere_at(watcher.height_of_action[a]) is not None)
                    if done >= len(submitted):
                        break
                    await trio.sleep(0.2)
            nursery.cancel_scope.cancel()

        window = (start + warmup_s, end_submit)
        latencies = []
        executed_in_window = 0
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
        span = window[1] - window[0]
        record("cluster_offered_actions_per_s", rate)
        record("cluster_actions_per_s", executed_in_window / span)
        record("cluster_accepted_ratio", statuses_seen.get("accepted", 0) / max(1, sum(statuses_seen.values())))
        record("cluster_blocks_per_s_under_load", len(heights) / span)
        record("cluster_actions_per_block", statistics.mean([watcher.blocks.get(h, 0) for h in heights]) if heights else 0)
        if latencies:
            latencies.sort()
            record("cluster_latency_p50_ms", latencies[len(latencies) // 2])
            record("cluster_latency_p99_ms", latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))])
        print(f"  submissions by status: {statuses_seen}; setup+run {time.monotonic() - lock_start:.0f} s")
        for j, c in enumerate(clients):  # diagnostics: where each node is, what its network dropped
            try:
                st = await c.status()
                metrics = (await c._http.get("/metrics")).text
            except Exception as exc:
                print(f"  node{j}: no status ({exc})")
                continue
            dropped = [line for line in metrics.splitlines()
                       if line.startswith(("awnode_gossip_dropped{", "awnode_consensus_messages_dropped_total{"))]
            print(f"  node{j}: height {st['height']} round {st['round']} mempool {st['mempool_size']} "
                  f"peers {st['peer_count']} dropped {' '.join(d.split('{')[1] for d in dropped)}")
    finally:
        with trio.CancelScope(shield=True):
            for c in clients:
                await c.aclose()


def run_cluster(record: Callable[[str, float], None], *, rate: float = 2500.0, duration_s: float = 30.0,
                warmup_s: float = 8.0, agents: int = 4000, nodes: int = 4, keep_dir: Path | None = None,
                profile_to: Path | None = None) -> None:
    """Start ``nodes`` validator processes, run the load described in the module docstring at
    ``rate`` actions/s for ``duration_s`` seconds, record the figures, stop every process.
    ``profile_to``: write node0's cProfile stats there (``AGENT_WORLD_PROFILE``)."""
    with tempfile.TemporaryDirectory(prefix="aw-bench-") as tmp:
        directory = keep_dir or Path(tmp) / "tn"
        init_testnet(directory, nodes, config=_config)
        tn = load_testnet(directory)
        procs = [NodeProcess(node) for node in tn]
        if profile_to is not None:
            procs[0] = NodeProcess(tn[0], env={"AGENT_WORLD_PROFILE": str(profile_to), "AGENT_WORLD_LOG_LEVEL": "debug"})
        try:
            for p in procs:
                p.start()
            trio.run(_ready_and_run, tn, procs, record, rate, duration_s, warmup_s, agents)
        finally:
            stop_all(procs, grace_s=10)


async def _ready_and_run(tn, procs, record, rate, duration_s, warmup_s, agents) -> None:
    await wait_until_ready(tn, procs, timeout_s=60)
    await _scenario([n.rpc_url for n in tn], tn[0].chain_id, agents=agents, rate=rate, duration_s=duration_s,
                    warmup_s=warmup_s, record=record)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2500.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--agents", type=int, default=4000)
    parser.add_argument("--keep-dir", type=Path, default=None)
    parser.add_argument("--max-block-actions", type=int, default=MAX_BLOCK_ACTIONS)
    parser.add_argument("--profile", type=Path, default=None, help="write node0's cProfile stats here")
    args = parser.parse_args()
    MAX_BLOCK_ACTIONS = args.max_block_actions

    def show(name: str, value: float) -> None:
        print(f"{name:45s} {value:12.2f}", flush=True)

    run_cluster(show, rate=args.rate, duration_s=args.duration, agents=args.agents, keep_dir=args.keep_dir,
                profile_to=args.profile)
