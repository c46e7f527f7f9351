"""Fault tests with real node processes (the perturbations of CometBFT's e2e runner: kill,
pause, disconnect, restart; checked as Jepsen does: after each fault, the histories must agree).

One 4-validator testnet on loopback (``rpc.unsafe = true`` so the tests can set the peer filter) is
shared by the scenarios of this module, one test per scenario, each under the scripted workload:

1. kill/restart: node3 is SIGKILLed and restarted several times; the other three keep committing,
   node3 rejoins, its execution height never goes backwards, every root agrees.
2. 2 of 4 down: no height is committed while half of the stake is gone (the committed height of the
   two survivors stays constant), no divergence; both back: commits resume, roots agree.
3. pause: node1 is SIGSTOPped until the others have dropped it (longer than the dead-peer window,
   ``NetworkConfig.dead_peer_timeout_s``), then SIGCONTed: it catches up to the same roots.
4. partition 2|2 at the application's peer filter: no side commits (neither has 2/3 of the stake),
   so there is nothing to fork; healed: commits resume, roots agree. First, as a control, a 3|1
   cut: the three keep committing while the lone node's height stands still.
5. late joiner: a full node with an empty home syncs from genesis to the tip and agrees on every
   root.

After every scenario: no node process failed, no node reports ``execution_diverged``, no node holds
equivocation evidence, and all running nodes have equal execution state roots on every height they
all executed (``AgreementChecker``).

Long mode: ``AGENT_WORLD_FAULT_MINUTES=N`` (``make test-faults MINUTES=N``) runs
``test_random_fault_schedule`` (marker ``faults_long``), a random seeded schedule of the same
perturbations for N minutes under load, checking agreement after each heal. The seed is
``AGENT_WORLD_FAULT_SEED`` (default: random, printed).

Figures (printed; ``-s`` shows them; appended as one JSON object per line to the file named by
``AGENT_WORLD_FAULT_REPORT`` when set): a restarted validator's rejoin time (seconds from process
start to being at the cluster's height), the longest stall of the survivors while a validator was
down (longest time without a height increase), and a late joiner's catch-up speed (blocks/s).
These are measured, never asserted on: the machine is shared and timing varies.
"""

from __future__ import annotations

import json
import os
import random
import statistics
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx
import pytest
import structlog
import trio

from agent_world_client.client import AgentKey, NodeClient
from agent_world_node.config import NodeConfig, RPCConfig
from agent_world_node.network import NetworkConfig
from agent_world_tools.testnet import (
    AgreementChecker,
    NodeProcess,
    TestnetNode,
    add_testnet_node,
    faucet_key_file,
    init_testnet,
    load_testnet,
    stop_all,
    wait_until_ready,
)
from agent_world_tools.workload import WorkloadStats, run_workload

from .cluster_harness import TimedObserver, cluster_height_samples, longest_height_gap, wait_for

FAULT_MINUTES_ENV = "AGENT_WORLD_FAULT_MINUTES"
FAULT_REPORT_ENV = "AGENT_WORLD_FAULT_REPORT"
FAULT_SEED_ENV = "AGENT_WORLD_FAULT_SEED"

#: A connected peer that answers no ping for this long is disconnected (network/config.py).
DEAD_PEER_WINDOW_S = NetworkConfig.dead_peer_timeout_s
VALIDATORS = ["node0", "node1", "node2", "node3"]

# Short mode (the default, part of `make test`): sizes chosen to keep this file near 3 minutes.
KILL_CYCLES = 3
OUTAGE_S = 6.0  # one validator down (long enough for it to be the proposer of some round)
QUIET_S = 6.0  # how long a stalled cluster must keep its height
SETTLE_S = 2.0  # for messages in flight when a fault starts
LATE_JOINER_MIN_HEIGHT = 30
# Generous bounds for progress (the machine is shared with other clusters); never asserted as speed.
PROGRESS_TIMEOUT_S = 90.0
CATCH_UP_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 120.0
AGREEMENT_ATTEMPTS = 10

WORKLOAD_AGENTS = 12
WORKLOAD_ACTIONS_PER_S = 10.0


def _fault_minutes() -> float | None:
    raw = os.environ.get(FAULT_MINUTES_ENV, "").strip()
    if not raw:
        return None
    try:
        minutes = float(raw)
    except ValueError:
        raise pytest.UsageError(f"{FAULT_MINUTES_ENV}={raw!r} must be a number of minutes, e.g. 5") from None
    if minutes <= 0:
        raise pytest.UsageError(f"{FAULT_MINUTES_ENV}={raw!r} must be a positive number of minutes")
    return minutes


FAULT_MINUTES = _fault_minutes()

pytestmark = [pytest.mark.multiprocess]


@pytest.fixture(autouse=True, scope="module")
def _quiet_structlog():
    import logging

    # The workload warns about every unreachable node, which these tests cause on purpose.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    yield
    structlog.reset_defaults()


# --- the shared cluster -------------------------------------------------------------------------


@dataclass
class Cluster:
    """A running testnet: its directory, nodes, processes (by name), and node ids (libp2p peer ids).
    ``paused`` holds the names of SIGSTOPped nodes, so that a failed scenario cannot leave one
    frozen for the next."""

    directory: Path
    nodes: list[TestnetNode]
    procs: dict[str, NodeProcess]
    key_dir: Path
    node_ids: dict[str, str] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)

    def node(self, name: str) -> TestnetNode:
        return next(n for n in self.nodes if n.name == name)

    def pause(self, name: str) -> None:
        self.procs[name].pause()
        self.paused.add(name)

    def resume(self, name: str) -> None:
        self.paused.discard(name)
        self.procs[name].resume()

    def resume_all(self) -> None:
        for name in list(self.paused):
            if self.procs[name].alive():
                self.resume(name)
            self.paused.discard(name)

    def start_missing(self) -> None:
        """Start every node process that is not running (a scenario that failed midway)."""
        for proc in self.procs.values():
            if not proc.alive():
                proc.start()

    def failed(self) -> dict[str, str]:
        """Nodes whose process exited without being asked to, with the tail of their log."""
        return {name: p.log_tail(30) for name, p in self.procs.items() if p.failed()}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    directory = tmp_path_factory.mktemp("faults") / "tn"

    def unsafe_config(_: int) -> NodeConfig:
        return NodeConfig(rpc=RPCConfig(unsafe=True))

    init_testnet(directory, len(VALIDATORS), config=unsafe_config)
    nodes = load_testnet(directory)
    c = Cluster(directory, nodes, {n.name: NodeProcess(n) for n in nodes}, directory.parent / "keys")
    try:
        for p in c.procs.values():
            p.start()
        statuses = trio.run(partial(wait_until_ready, nodes, list(c.procs.values()), timeout_s=READY_TIMEOUT_S))
        c.node_ids = {name: s["node_id"] for name, s in statuses.items()}
        yield c
    finally:
        c.resume_all()
        stop_all(list(c.procs.values()), grace_s=15)


# --- figures ------------------------------------------------------------------------------------


def report_figures(scenario: str, figures: dict[str, Any]) -> None:
    """Print ``figures`` and append ``{"scenario": ..., **figures}`` as one JSON line to the file
    named by $AGENT_WORLD_FAULT_REPORT (if set)."""
    record = {"scenario": scenario, **figures}
    print(f"\nfault figures {scenario}: {json.dumps(figures, sort_keys=True)}")
    path = os.environ.get(FAULT_REPORT_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


# --- scenario context ---------------------------------------------------------------------------


class Scenario:
    """What a scenario body works with: the cluster, API clients (5 s timeout), a TimedObserver
    (its own clients, 1.5 s timeout), the workload's stats, and helpers for waiting and checks."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.clients: dict[str, NodeClient] = {}
        self.observer = TimedObserver({})
        self.stats = WorkloadStats()
        for n in cluster.nodes:
            self.add_node(n)

    def add_node(self, node: TestnetNode) -> None:
        self.clients[node.name] = NodeClient(node.rpc_url, timeout_s=5.0)
        self.observer.clients[node.name] = NodeClient(node.rpc_url, timeout_s=1.5)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for c in [*self.clients.values(), *self.observer.clients.values()]:
                await c.aclose()

    def now(self) -> float:
        return trio.current_time()

    def height(self, name: str) -> int:
        return self.observer.height(name)

    def heights(self, names: list[str]) -> dict[str, int]:
        return {n: self.observer.height(n) for n in names}

    def detail(self, *names: str) -> Callable[[], str]:
        """A failure detail: latest heights of every node and the log tails of ``names``."""

        def text() -> str:
            heights = {n: (s.get("height"), s.get("execution_height")) for n, s in self.observer.status.items()}
            tails = "\n".join(f"--- {n} log:\n{self.cluster.procs[n].log_tail(30)}" for n in names)
            return f"(height, execution_height) by node: {heights}\nworkload: {self.stats.as_dict()}\n{tails}"

        return text

    async def wait_answering(self, names: list[str], since: float | None = None) -> None:
        """Wait until every node in ``names`` has answered a status poll (after ``since``)."""
        t0 = -1.0 if since is None else since

        def answered(n: str) -> bool:
            samples = self.observer.samples.get(n, [])
            return n in self.observer.status and bool(samples) and samples[-1][0] >= t0

        await wait_for(lambda: all(answered(n) for n in names), READY_TIMEOUT_S, f"{names} to answer", self.detail(*names))

    async def wait_progress(self, names: list[str], above: int, what: str) -> None:
        """Wait until every node in ``names`` has a committed height above ``above``."""
        await wait_for(
            lambda: all(self.height(n) > above for n in names), PROGRESS_TIMEOUT_S, what, self.detail(*names)
        )

    async def wait_caught_up(self, name: str, others: list[str], since: float) -> float:
        """Wait until ``name`` answers (after ``since``) with a committed height at least the lowest
        of ``others``' latest heights; return the trio time when it did."""

        def at_cluster_height() -> bool:
            samples = self.observer.samples.get(name, [])
            if not samples or samples[-1][0] < since or name not in self.observer.status:
                return False
            return self.height(name) >= min(self.height(o) for o in others) >= 0

        await wait_for(at_cluster_height, CATCH_UP_TIMEOUT_S, f"{name} to reach the cluster's height", self.detail(name))
        return self.now()

    async def set_partition(self, sides: list[list[str]]) -> None:
        """Make every node block the node ids of the other sides (``[]`` sides: heal)."""
        ids = self.cluster.node_ids
        for side in sides:
            others = [ids[n] for other in sides if other is not side for n in other]
            for n in side:
                blocked = await self.clients[n].set_peer_filter(others)
                assert sorted(blocked) == sorted(others), (n, blocked, others)

    def separated(self, sides: list[list[str]]) -> bool:
        """True when no node's latest status lists a peer from another side as connected."""
        ids = self.cluster.node_ids
        for side in sides:
            foreign = {ids[o] for other in sides if other is not side for o in other}
            for n in side:
                if n not in self.observer.status or set(self.observer.status[n]["peers"]) & foreign:
                    return False
        return True

    async def assert_halted(self, names: list[str], quiet_s: float, when: str) -> dict[str, int]:
        """After SETTLE_S (a commit in flight when the fault began may still land), record the
        heights of ``names``; after ``quiet_s`` more seconds assert that no new height was committed
        (``assert_no_new_height``), on fresh status answers. Returns the recorded heights."""
        await trio.sleep(SETTLE_S)
        await self.wait_answering(names, since=self.now())
        halted = self.heights(names)
        await trio.sleep(quiet_s)
        await self.wait_answering(names, since=self.now())
        assert_no_new_height(halted, self.heights(names), when, self.detail(*names))
        return halted

    async def heal_partition(self, names: list[str]) -> None:
        for n in names:
            assert await self.clients[n].set_peer_filter([]) == [], n

    async def evidence(self, name: str) -> list[dict[str, Any]]:
        """GET /v1/evidence of ``name``."""
        async with httpx.AsyncClient(base_url=self.cluster.node(name).rpc_url, timeout=5.0) as http:
            response = await http.get("/v1/evidence")
        assert response.status_code == 200, (name, response.status_code, response.text)
        return response.json()["evidence"]

    async def check_healthy(self, names: list[str], checker: AgreementChecker | None = None) -> int:
        """Assert: no node process failed; no node in ``names`` reports execution_diverged or holds
        evidence; all of ``names`` have equal execution state roots on every height they all executed.
        Returns that common height. ``checker`` (incremental) is used when given."""
        failed = self.cluster.failed()
        assert not failed, f"node processes exited on their own: {list(failed)}\n" + "\n".join(
            f"--- {n}:\n{t}" for n, t in failed.items()
        )
        statuses = {n: await self.clients[n].status() for n in names}
        for n, s in statuses.items():
            assert s["execution_diverged"] is None, (n, s["execution_diverged"])
            assert await self.evidence(n) == [], f"{n} holds equivocation evidence"
        common = min(s["execution_height"] for s in statuses.values())
        if checker is None:
            checker = AgreementChecker({n: self.clients[n] for n in names})
        else:
            checker.clients = {n: self.clients[n] for n in names}
        # A transport error (a loaded node resetting an HTTP connection) leaves the check short of
        # ``common`` without a verdict; retry those. A mismatch is final.
        for _ in range(AGREEMENT_ATTEMPTS):
            assert await checker.check_up_to(common), f"execution state roots differ: {checker.mismatch}"
            if checker.checked_up_to == common:
                break
            await trio.sleep(1.0)
        assert checker.checked_up_to == common, f"agreement check incomplete: {checker.last_error}"
        return common


def run_scenario(cluster: Cluster, body: Callable[[Scenario], Awaitable[None]], *, seed: int = 5) -> None:
    """Run ``body`` under the scripted workload against the validators (its agents created by the
    testnet's faucet), then check the cluster's health on every node (``Scenario.check_healthy``)
    and that the workload's agents exist. Before: start any node a failed scenario left down, resume
    any it left paused, clear every peer filter. Every client is closed after."""
    faucet = AgentKey.load(faucet_key_file(cluster.directory))

    async def main() -> None:
        cluster.resume_all()
        cluster.start_missing()
        await wait_until_ready(cluster.nodes, list(cluster.procs.values()), timeout_s=READY_TIMEOUT_S)
        sc = Scenario(cluster)
        try:
            await sc.heal_partition([n.name for n in cluster.nodes])
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sc.observer.run)
                nursery.start_soon(
                    partial(
                        run_workload,
                        [cluster.node(n).rpc_url for n in VALIDATORS],
                        cluster.nodes[0].chain_id,
                        agents=WORKLOAD_AGENTS,
                        seed=seed,
                        key_dir=cluster.key_dir,
                        stop=stop,
                        stats=sc.stats,
                        actions_per_s=WORKLOAD_ACTIONS_PER_S,
                        sponsor=faucet,
                    )
                )
                await sc.wait_answering([n.name for n in cluster.nodes])
                await body(sc)
                stop.set()
                nursery.cancel_scope.cancel()
            await sc.check_healthy([n.name for n in cluster.nodes])
            # the load was real: the faucet created the workload's agents (in an earlier scenario
            # of the module at the latest) and they were seen on the chain
            assert sc.stats.agents_registered > 0 and "no_sponsor" not in sc.stats.rejected, sc.stats.as_dict()
        finally:
            cluster.resume_all()
            await sc.aclose()

    trio.run(main)


# --- scenarios ----------------------------------------------------------------------------------


def assert_no_new_height(before: dict[str, int], after: dict[str, int], when: str, detail: Callable[[], str]) -> None:
    """Assert that no height above ``max(before)`` was committed: the highest committed height is
    unchanged and no node went past it. (A node one height behind may still catch up to it from a
    peer on its side: that is not a new commit.) Heights never go backwards."""
    top = max(before.values())
    assert max(after.values()) == top and all(after[n] >= before[n] for n in before), (
        f"a height was committed {when}: {before} -> {after}\n{detail()}"
    )


async def kill_and_restart(sc: Scenario, victim: str, outage_s: float) -> dict[str, float]:
    """SIGKILL ``victim``, keep it down ``outage_s`` seconds under load (longer if needed until
    every survivor committed two more heights: the cluster keeps committing), restart it and wait
    until it is at the cluster's height. Asserts: the victim's execution height after the restart
    never went below its height before the kill, nor backwards. Returns ``stall_s`` (longest time without a height increase of the
    survivors' cluster height during the outage), ``worst_survivor_stall_s`` and ``rejoin_s``
    (process start to being at the cluster's height)."""
    survivors = [n for n in VALIDATORS if n != victim]
    proc = sc.cluster.procs[victim]
    before_kill = sc.observer.exec_height(victim)
    proc.kill()
    sc.observer.forget(victim)
    t_kill = sc.now()
    at_kill = sc.heights(survivors)
    await trio.sleep(outage_s)
    # The outage lasts at least outage_s and until every survivor committed two more heights.
    await wait_for(
        lambda: all(sc.height(n) >= at_kill[n] + 2 for n in survivors),
        PROGRESS_TIMEOUT_S,
        f"the survivors to keep committing while {victim} is down (heights at the kill: {at_kill})",
        sc.detail(*survivors),
    )
    t_restart = sc.now()
    stall = longest_height_gap(cluster_height_samples(sc.observer, survivors), t_kill, t_restart)
    worst = max(longest_height_gap(sc.observer.samples_between(n, t_kill, t_restart), t_kill, t_restart) for n in survivors)
    proc.start()
    t_start = sc.now()
    t_rejoined = await sc.wait_caught_up(victim, survivors, since=t_start)
    after = [e for _, _, e in sc.observer.samples_between(victim, t_start, sc.now())]
    assert after and after == sorted(after), f"{victim} execution height went backwards after restart: {after}"
    assert after[0] >= before_kill, f"{victim} restarted below its pre-kill execution height {before_kill}: {after[:5]}"
    return {"stall_s": round(stall, 2), "worst_survivor_stall_s": round(worst, 2), "rejoin_s": round(t_rejoined - t_start, 2)}


@pytest.mark.timeout(420)
def test_validator_killed_and_restarted_repeatedly_under_load(cluster):
    figures: dict[str, Any] = {}

    async def body(sc: Scenario) -> None:
        await sc.wait_progress(VALIDATORS, 2, "first heights under load")
        runs = []
        for _ in range(KILL_CYCLES):
            result = await kill_and_restart(sc, "node3", OUTAGE_S)
            runs.append(result)
            common = await sc.check_healthy(VALIDATORS)
            assert common > 0
        # The load was real: actions were accepted and committed.
        assert sc.stats.accepted >= 20, sc.stats.as_dict()
        assert max(s["actions_committed"] for s in sc.observer.status.values()) >= 20
        figures.update(
            cycles=KILL_CYCLES,
            outage_s=OUTAGE_S,
            rejoin_s=[r["rejoin_s"] for r in runs],
            longest_stall_s=max(r["stall_s"] for r in runs),
            worst_survivor_stall_s=max(r["worst_survivor_stall_s"] for r in runs),
            height=max(sc.heights(VALIDATORS).values()),
        )

    run_scenario(cluster, body)
    report_figures("kill_restart", figures)


@pytest.mark.timeout(300)
def test_two_of_four_down_halts_without_divergence_and_resumes(cluster):
    figures: dict[str, Any] = {}

    async def body(sc: Scenario) -> None:
        await sc.wait_progress(VALIDATORS, sc.height("node0") + 1, "heights under load before the outage")
        down, up = ["node2", "node3"], ["node0", "node1"]
        for n in down:
            sc.cluster.procs[n].kill()
            sc.observer.forget(n)
        halted = await sc.assert_halted(up, QUIET_S, "with half of the stake down")
        await sc.check_healthy(up)
        t_start = sc.now()
        for n in down:
            sc.cluster.procs[n].start()
        top = max(halted.values())
        await sc.wait_progress(VALIDATORS, top + 2, "commits to resume on all four after both came back")
        figures.update(halted_at=top, quiet_s=QUIET_S, resumed_after_s=round(sc.now() - t_start, 2))

    run_scenario(cluster, body)
    report_figures("two_down", figures)


@pytest.mark.timeout(300)
def test_paused_validator_beyond_dead_peer_window_recovers(cluster):
    figures: dict[str, Any] = {}

    async def body(sc: Scenario) -> None:
        victim = "node1"
        others = [n for n in VALIDATORS if n != victim]
        victim_id = sc.cluster.node_ids[victim]
        await sc.wait_progress(VALIDATORS, sc.height("node0") + 1, "heights under load before the pause")
        at_pause = sc.heights(others)
        before = sc.observer.exec_height(victim)
        sc.cluster.pause(victim)
        t_pause = sc.now()
        # The others must notice the silence (dead-peer detection) and drop the connection.
        await wait_for(
            lambda: all(victim_id not in sc.observer.status[n]["peers"] for n in others),
            3 * DEAD_PEER_WINDOW_S + 20,
            f"the others to disconnect the paused {victim}",
            sc.detail(*others),
        )
        dropped_after = sc.now() - t_pause
        await trio.sleep(max(0.0, DEAD_PEER_WINDOW_S + 2 - (sc.now() - t_pause)))
        await sc.wait_progress(others, max(at_pause.values()) + 2, f"the others to keep committing while {victim} is paused")
        sc.cluster.resume(victim)
        t_resume = sc.now()
        paused_s = t_resume - t_pause
        assert paused_s > DEAD_PEER_WINDOW_S
        t_back = await sc.wait_caught_up(victim, others, since=t_resume)
        after = [e for _, _, e in sc.observer.samples_between(victim, t_resume, sc.now())]
        assert after[0] >= before and after == sorted(after), (before, after)
        await sc.wait_progress(VALIDATORS, max(sc.heights(others).values()) + 1, "commits with all four after the resume")
        figures.update(
            paused_s=round(paused_s, 2),
            dropped_by_peers_after_s=round(dropped_after, 2),
            caught_up_after_resume_s=round(t_back - t_resume, 2),
        )

    run_scenario(cluster, body)
    report_figures("pause", figures)


@pytest.mark.timeout(300)
def test_partition_two_and_two_heals_without_fork(cluster):
    figures: dict[str, Any] = {}

    async def body(sc: Scenario) -> None:
        left, right = ["node0", "node1"], ["node2", "node3"]
        await sc.wait_progress(VALIDATORS, sc.height("node0") + 1, "heights under load before the partition")
        # Control: a 3|1 cut at the same filter. The three (3/4 of the stake) keep committing while
        # the isolated node cannot: the filter really cuts, and the halt check tells the two apart.
        major, lone = ["node0", "node1", "node2"], ["node3"]
        await sc.set_partition([major, lone])
        await wait_for(lambda: sc.separated([major, lone]), 30, "node3 to be cut off", sc.detail(*VALIDATORS))
        lone_halted = await sc.assert_halted(lone, 1.0, "on a node cut off from all others")
        await sc.wait_progress(major, lone_halted["node3"] + 1, "the three to commit while node3 is cut off")
        await sc.heal_partition(VALIDATORS)
        await sc.wait_caught_up("node3", major, since=sc.now())
        await sc.set_partition([left, right])
        t_cut = sc.now()
        await wait_for(lambda: sc.separated([left, right]), 30, "the two sides to disconnect", sc.detail(*VALIDATORS))
        # Neither side holds 2/3 of the stake: no side may commit, so no fork is possible.
        halted = await sc.assert_halted(VALIDATORS, QUIET_S, "during a 2|2 partition")
        await sc.heal_partition(VALIDATORS)
        t_heal = sc.now()
        await sc.wait_progress(VALIDATORS, max(halted.values()) + 2, "commits to resume after the heal")
        figures.update(
            halted_at=halted,
            partition_s=round(t_heal - t_cut, 2),
            resumed_after_heal_s=round(sc.now() - t_heal, 2),
        )

    run_scenario(cluster, body)
    report_figures("partition", figures)


@pytest.mark.timeout(300)
def test_late_joiner_syncs_from_genesis_and_agrees(cluster):
    figures: dict[str, Any] = {}

    async def body(sc: Scenario) -> None:
        await sc.wait_progress(VALIDATORS, LATE_JOINER_MIN_HEIGHT, f"a chain of {LATE_JOINER_MIN_HEIGHT} heights")
        home = add_testnet_node(sc.cluster.directory, config=NodeConfig(rpc=RPCConfig(unsafe=True)))
        joiner = next(n for n in load_testnet(sc.cluster.directory) if n.home.root == home.root)
        proc = NodeProcess(joiner)
        sc.cluster.nodes.append(joiner)
        sc.cluster.procs[joiner.name] = proc
        sc.add_node(joiner)
        tip_at_start = max(sc.heights(VALIDATORS).values())
        proc.start()
        t_start = sc.now()
        await sc.wait_answering([joiner.name], since=t_start)
        first_t, first_h, _ = sc.observer.samples[joiner.name][0]
        assert first_h <= tip_at_start, (first_h, tip_at_start)
        # Catch-up: from process start to the tip as it was at the start (a fixed target), then
        # to the cluster's (moving) height.
        await wait_for(
            lambda: sc.observer.exec_height(joiner.name) >= tip_at_start,
            CATCH_UP_TIMEOUT_S,
            f"{joiner.name} to execute up to {tip_at_start}",
            sc.detail(joiner.name),
        )
        t_synced = sc.now()
        t_tip = await sc.wait_caught_up(joiner.name, VALIDATORS, since=t_start)
        status = await sc.clients[joiner.name].status()
        assert status["validator"] is None, "the late joiner is a full node, not a validator"
        started = [json.loads(line) for line in joiner.log_path.read_text().splitlines() if '"node_starting"' in line]
        assert started and started[0]["height"] == 0, f"the late joiner did not start from genesis: {started[:1]}"
        # Its blocks came from the chain, not from a fresh genesis of its own: block 1 is the same.
        assert (await sc.clients[joiner.name].block(1))["block_hash"] == (await sc.clients["node0"].block(1))["block_hash"]
        common = await sc.check_healthy(VALIDATORS + [joiner.name])
        assert common >= tip_at_start, (common, tip_at_start)
        figures.update(
            blocks=tip_at_start,
            catch_up_blocks_per_s=round(tip_at_start / max(t_synced - t_start, 1e-9), 1),
            process_start_to_synced_s=round(t_synced - t_start, 2),
            first_answer_height=first_h,
            # from its first API answer (excludes process start-up), when it answered below the tip
            sync_blocks_per_s=round((tip_at_start - first_h) / (t_synced - first_t), 1) if t_synced > first_t else None,
            process_start_to_cluster_height_s=round(t_tip - t_start, 2),
        )

    run_scenario(cluster, body)
    report_figures("late_joiner", figures)


def test_halt_and_gap_checks_detect_what_they_claim():
    """The pure checks used above, on hand-made histories (no processes)."""
    assert_no_new_height({"a": 5, "b": 4}, {"a": 5, "b": 5}, "x", lambda: "")  # catching up is fine
    with pytest.raises(AssertionError, match="a height was committed"):
        assert_no_new_height({"a": 5, "b": 5}, {"a": 6, "b": 5}, "x", lambda: "")
    with pytest.raises(AssertionError):
        assert_no_new_height({"a": 5, "b": 5}, {"a": 5, "b": 4}, "x", lambda: "")  # backwards
    samples = [(0.0, 1, 1), (1.0, 2, 2), (1.5, 2, 2), (4.0, 3, 3), (4.5, 3, 3)]
    assert longest_height_gap(samples, 0.5, 5.0) == 3.0  # from 1.0 to 4.0
    assert longest_height_gap(samples, 4.2, 6.0) == pytest.approx(1.8)  # no increase inside
    with pytest.raises(ValueError):
        longest_height_gap(samples, 2.0, 1.0)


# --- long mode ----------------------------------------------------------------------------------

PERTURBATIONS = ("kill_restart", "pause", "partition", "two_down")


@pytest.mark.faults_long
@pytest.mark.skipif(FAULT_MINUTES is None, reason=f"long fault schedule: set {FAULT_MINUTES_ENV}=<minutes>")
@pytest.mark.timeout(int((FAULT_MINUTES or 0) * 60) + 900)
def test_random_fault_schedule(cluster):
    """For $AGENT_WORLD_FAULT_MINUTES minutes: a random perturbation at a time (seeded), each healed
    before the next, then: commits resume on all four and roots agree on every common height."""
    assert FAULT_MINUTES is not None
    seed = int(os.environ.get(FAULT_SEED_ENV) or random.SystemRandom().randrange(1 << 31))
    print(f"\nfault schedule seed {seed} ({FAULT_SEED_ENV}={seed} replays the schedule)")
    rng = random.Random(seed)
    figures: dict[str, Any] = {"seed": seed, "minutes": FAULT_MINUTES, "counts": {k: 0 for k in PERTURBATIONS}}
    rejoins: list[float] = []
    stalls: list[float] = []

    async def body(sc: Scenario) -> None:
        checker = AgreementChecker({})
        deadline = sc.now() + FAULT_MINUTES * 60
        await sc.wait_progress(VALIDATORS, 2, "first heights under load")
        step = 0
        while sc.now() < deadline:
            kind = rng.choice(PERTURBATIONS)
            outage = rng.uniform(2.0, 12.0)
            step += 1
            print(f"step {step}: {kind} for {outage:.1f} s at heights {sc.heights(VALIDATORS)}")
            figures["counts"][kind] += 1
            top = max(sc.heights(VALIDATORS).values())
            if kind == "kill_restart":
                result = await kill_and_restart(sc, rng.choice(VALIDATORS), max(outage, 4.0))
                rejoins.append(result["rejoin_s"])
                stalls.append(result["stall_s"])
            elif kind == "pause":
                victim = rng.choice(VALIDATORS)
                sc.cluster.pause(victim)
                await trio.sleep(outage)
                sc.cluster.resume(victim)
                await sc.wait_caught_up(victim, [n for n in VALIDATORS if n != victim], since=sc.now())
            elif kind == "partition":
                order = rng.sample(VALIDATORS, len(VALIDATORS))
                left, right = sorted(order[:2]), sorted(order[2:])
                await sc.set_partition([left, right])
                await wait_for(
                    lambda left=left, right=right: sc.separated([left, right]), 30, "the two sides to disconnect", sc.detail()
                )
                await sc.assert_halted(VALIDATORS, outage, f"during the partition {left}|{right}")
                await sc.heal_partition(VALIDATORS)
            else:
                down = rng.sample(VALIDATORS, 2)
                for n in down:
                    sc.cluster.procs[n].kill()
                    sc.observer.forget(n)
                up = [n for n in VALIDATORS if n not in down]
                await sc.assert_halted(up, outage, f"with {down} down")
                for n in down:
                    sc.cluster.procs[n].start()
            await sc.wait_progress(VALIDATORS, top + 1, f"commits to resume on all four after {kind}")
            common = await sc.check_healthy(VALIDATORS, checker)
            print(f"step {step}: healed; roots agree on heights 1..{common}")
            await trio.sleep(rng.uniform(1.0, 5.0))
        figures.update(
            steps=step,
            height=max(sc.heights(VALIDATORS).values()),
            rejoin_s_max=max(rejoins, default=None),
            rejoin_s_median=statistics.median(rejoins) if rejoins else None,
            longest_stall_s=max(stalls, default=None),
        )

    run_scenario(cluster, body, seed=seed % 1000)
    report_figures("random_schedule", figures)
