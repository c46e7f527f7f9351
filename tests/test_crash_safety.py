"""Crash safety under kill -9: after ``kill -9`` a node restarts from its home and catches up to the
same roots.

1. Fail point parsing (in-process, nothing is killed): names, ``@N`` counts, off by default; and
   the crash itself, in a child process (SIGKILL on the N-th hit, one line on stderr first).
2. A four-validator testnet that writes a world snapshot at every height
   (``storage.snapshot_interval = 1``, so kills often land inside a snapshot write), under the
   scripted workload. A seeded schedule, one node at a time:

   - SIGKILLs a random node at a random moment, restarts it after a random short pause;
   - every cycle but the first restarts it with a fail point armed (``AGENT_WORLD_FAILPOINTS``), so it
     kills itself at an exact dangerous point (inside a snapshot write, between storing a block
     and executing it, between a durable WAL entry and its broadcast, ...), and is then restarted
     without it.

   Checks, after the last restart: every node catches up; all nodes agree on the execution state
   root at every common height; every block a node reported as committed before a crash is
   identical after it (no committed action lost); no action id appears twice in any node's chain
   and no node's execution height ever went backwards (nothing executed twice); no node holds
   equivocation evidence (no double-sign).

Seed: ``CRASH_SAFETY_SEED`` (default 5); ``CRASH_SAFETY_CYCLES`` (default 4) for a longer soak
(8 cycles or more use every fail point). Every process is bounded by timeouts and stopped in a
finally. Measurements (kills, catch-up seconds and heights, fail points hit) are printed (-s).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import structlog
import trio

from agent_world_client.client import ClientError, NodeClient, NotFound
from agent_world_node.config import NodeConfig, StorageConfig
from agent_world_runtime.failpoints import (
    ENV_VAR,
    KNOWN_FAILPOINTS,
    FailpointCounter,
    FailpointSpecError,
    armed,
    parse_failpoints,
)
from agent_world_tools.testnet import (
    NodeProcess,
    init_testnet,
    leaf_exceptions,
    load_testnet,
    stop_all,
    wait_until_ready,
)
from agent_world_tools.workload import WorkloadStats, run_workload

from .cluster_harness import Observer, agree_on_all_common_heights, wait_for

SEED = int(os.environ.get("CRASH_SAFETY_SEED", "5"))
# Crash cycles, one node at a time; every cycle after the first restarts through a fail point.
CYCLES = int(os.environ.get("CRASH_SAFETY_CYCLES", "4"))
# Fail points in the order the fail point cycles use them (rotated by the seed); the first two
# crash a node in the middle of a snapshot write and between put_block and execution.
FAILPOINT_ORDER = [
    "snapshot.after_rename",
    "commit.after_put_block",
    "wal.after_append",
    "snapshot.before_rename",
    "execution.after_put_execution",
    "snapshot.after_current",
    "commit.after_execute",
    "snapshot.after_journal",
]
READY_TIMEOUT_S = 120.0
CATCH_UP_TIMEOUT_S = 120.0
FAILPOINT_TIMEOUT_S = 90.0


# --- 1. fail point parsing --------------------------------------------------------------------------


def test_failpoints_are_off_by_default():
    if os.environ.get(ENV_VAR):
        pytest.skip(f"{ENV_VAR} is set in this test process")
    assert armed() == {}


def test_parse_failpoints_names_and_counts():
    assert parse_failpoints("") == {}
    assert parse_failpoints(" , ,") == {}
    assert parse_failpoints("snapshot.after_rename") == {"snapshot.after_rename": 1}
    assert parse_failpoints("snapshot.after_rename@3, commit.after_put_block ,wal.after_append@ 2") == {
        "snapshot.after_rename": 3,
        "commit.after_put_block": 1,
        "wal.after_append": 2,
    }
    # the state-sync fail points need a joining node; tests/test_state_sync.py uses them
    assert set(FAILPOINT_ORDER) == {f for f in KNOWN_FAILPOINTS if not f.startswith(("state_snapshot.", "statesync."))}


@pytest.mark.parametrize(
    "spec, complaint",
    [
        ("snapshot.after_renam", "unknown fail point 'snapshot.after_renam'"),
        ("snapshot.after_rename@0", "hit count N >= 1"),
        ("snapshot.after_rename@-2", "hit count N >= 1"),
        ("snapshot.after_rename@x", "hit count N >= 1"),
        ("snapshot.after_rename@", "hit count N >= 1"),
        ("commit.after_put_block,commit.after_put_block@2", "listed twice"),
        ("@3", "unknown fail point ''"),
    ],
)
def test_parse_failpoints_refuses_bad_specs(spec, complaint):
    with pytest.raises(FailpointSpecError, match=complaint.replace(".", r"\.").replace("(", r"\(")):
        parse_failpoints(spec)


def test_failpoint_counter_fires_on_the_nth_hit_only():
    counter = FailpointCounter({"snapshot.after_rename": 3, "wal.after_append": 1})
    assert counter.hit("commit.after_put_block") is None  # not armed: not even counted
    assert "commit.after_put_block" not in counter.hits
    assert [counter.hit("snapshot.after_rename") for _ in range(5)] == [None, None, 3, None, None]
    assert counter.hit("wal.after_append") == 1
    assert counter.hit("wal.after_append") is None


def test_an_armed_failpoint_kills_its_process_on_the_nth_hit():
    """The crash path, in a child process: SIGKILL on the 2nd hit, after the stderr line."""
    code = (
        "import sys\n"
        "from agent_world_runtime.failpoints import failpoint\n"
        "for i in range(1, 4):\n"
        "    print('hit', i, flush=True)\n"
        "    failpoint('snapshot.after_rename')\n"
        "print('survived', flush=True)\n"
    )
    env = dict(os.environ, **{ENV_VAR: "snapshot.after_rename@2"})
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stderr)
    assert child.stdout.split("\n")[:2] == ["hit 1", "hit 2"] and "survived" not in child.stdout
    assert "FAILPOINT snapshot.after_rename hit 2: killing pid" in child.stderr, child.stderr

    env[ENV_VAR] = "snapshot.after_rename@x"
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert child.returncode == 1 and "FailpointSpecError" in child.stderr and "hit count N >= 1" in child.stderr


# --- 2. kill -9 under load ---------------------------------------------------------------------------


@pytest.fixture
def _quiet_structlog():
    import logging

    # The workload warns about every submission to a killed node; keep errors only.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    yield
    structlog.reset_defaults()


def _block_view(doc: dict) -> dict:
    """The parts of GET /v1/blocks/{h} fixed at commit (``execution`` is filled in once executed)."""
    return {k: v for k, v in doc.items() if k != "execution"}


@dataclass
class Crash:
    """One crash of one node and its recovery (for the report and the checks)."""

    cycle: int
    node: str
    how: str  # "kill -9" or "failpoint <name>@N"
    exec_height_before: int = -1  # the last execution height the node reported before the crash
    restarted_at: float = 0.0
    target: int = 0
    caught_up_s: float | None = None
    caught_up_height: int = -1


@dataclass
class Recorder:
    """Remembers every block each node reported as committed (fetched while it ran)."""

    clients: dict[str, NodeClient]
    seen: dict[str, dict[int, dict]] = field(default_factory=dict)

    async def record(self, name: str, up_to: int) -> None:
        """Fetch and remember blocks of ``name`` from the last remembered one up to ``up_to``
        (heights the node reported as committed). Stops quietly if the node stops answering."""
        blocks = self.seen.setdefault(name, {})
        h = max(blocks, default=0) + 1
        while h <= up_to:
            try:
                doc = await self.clients[name].block(h)
            except ClientError:
                return
            blocks[h] = _block_view(doc)
            h += 1

    async def run(self, observer: Observer) -> None:
        while True:
            for name in self.clients:
                await self.record(name, observer.height(name))
            await trio.sleep(0.5)


async def _catch_up(observer: Observer, proc: NodeProcess, others: list[str], crash: Crash) -> None:
    """Wait until ``proc``'s node executed the height the others had when it was restarted."""
    crash.target = max(observer.height(n) for n in others)

    def caught_up() -> bool:
        if not proc.alive():
            raise AssertionError(
                f"{proc.name} exited with status {proc.returncode} after a restart from {crash.how}:\n{proc.log_tail(40)}"
            )
        return observer.exec_height(proc.name) >= crash.target

    await wait_for(
        caught_up,
        CATCH_UP_TIMEOUT_S,
        f"{proc.name} to catch up to {crash.target} after {crash.how}",
        lambda: f"statuses: {observer.status}\n{proc.name} log:\n{proc.log_tail(40)}",
    )
    crash.caught_up_s = trio.current_time() - crash.restarted_at
    crash.caught_up_height = observer.exec_height(proc.name)


def _last_exec_height(observer: Observer, name: str) -> int:
    """The last execution height ``name`` reported before it died (-1 if none)."""
    series = observer.exec_series[name]
    return series[-1] if series else -1


async def _fresh_status(client: NodeClient, timeout_s: float = 30.0) -> dict:
    with trio.fail_after(timeout_s):
        while True:
            try:
                return await client.status()
            except ClientError:
                await trio.sleep(0.25)


async def crash_schedule(nodes, procs, clients, observer: Observer, recorder: Recorder, rng: random.Random) -> list[Crash]:
    """Run CYCLES crash cycles, one node at a time; return what happened."""
    names = [n.name for n in nodes]
    crashes: list[Crash] = []
    # Another seed starts elsewhere in FAILPOINT_ORDER; the default seed starts with its first.
    offset = (SEED - 5) % len(FAILPOINT_ORDER)
    fp_iter = iter(FAILPOINT_ORDER[offset:] + FAILPOINT_ORDER[:offset])
    for cycle in range(CYCLES):
        proc = rng.choice(procs)
        name = proc.name
        others = [n for n in names if n != name]
        await trio.sleep(rng.uniform(0.3, 3.0))  # a random moment
        # Record what the victim reports as committed right up to the kill.
        status = await _fresh_status(clients[name])
        await recorder.record(name, status["height"])
        crash = Crash(cycle, name, "kill -9", exec_height_before=_last_exec_height(observer, name))
        proc.kill()
        observer.status.pop(name, None)
        crashes.append(crash)
        await trio.sleep(rng.uniform(0.3, 2.0))  # a random short outage

        if cycle >= 1:
            fp = next(fp_iter)
            nth = rng.randint(1, 6)
            proc.env = {"AGENT_WORLD_FAILPOINTS": f"{fp}@{nth}"}
            proc.start()
            fp_crash = Crash(cycle, name, f"failpoint {fp}@{nth}")
            try:
                await wait_for(
                    lambda proc=proc: not proc.alive(),
                    FAILPOINT_TIMEOUT_S,
                    f"{name} to crash itself at fail point {fp}@{nth}",
                    lambda name=name, proc=proc: f"{name} log:\n{proc.log_tail(30)}",
                )
            finally:
                proc.env = {}
            assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.log_tail(30))
            assert f"FAILPOINT {fp} hit {nth}" in proc.log_tail(5), proc.log_tail(30)
            fp_crash.exec_height_before = _last_exec_height(observer, name)
            observer.status.pop(name, None)
            crashes.append(fp_crash)
            await trio.sleep(rng.uniform(0.3, 2.0))
            crash = fp_crash

        proc.start()
        crash.restarted_at = trio.current_time()
        await _catch_up(observer, proc, others, crash)
    return crashes


async def fetch_chain(client: NodeClient, height: int) -> dict[int, dict]:
    """GET /v1/blocks/1..height of one node (every one must exist)."""
    chain: dict[int, dict] = {}
    limiter = trio.CapacityLimiter(8)

    async def one(h: int) -> None:
        async with limiter:
            try:
                chain[h] = await client.block(h)
            except NotFound as exc:
                raise AssertionError(f"block {h} is missing below the reported height {height}: {exc}") from None

    async with trio.open_nursery() as nursery:
        for h in range(1, height + 1):
            nursery.start_soon(one, h)
    return chain


async def scenario(nodes, procs, key_dir: Path) -> dict:
    clients = {n.name: NodeClient(n.rpc_url, timeout_s=10.0) for n in nodes}
    names = [n.name for n in nodes]
    rng = random.Random(SEED)
    try:
        await wait_until_ready(nodes, procs, timeout_s=READY_TIMEOUT_S)
        observer = Observer(nodes, clients)
        recorder = Recorder(clients)
        stats = WorkloadStats()
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(observer.run)
            nursery.start_soon(recorder.run, observer)
            nursery.start_soon(
                lambda: run_workload(
                    [n.rpc_url for n in nodes], nodes[0].chain_id, agents=12, seed=SEED, key_dir=key_dir,
                    stop=stop, stats=stats,
                )
            )
            await wait_for(lambda: all(observer.height(n) >= 2 for n in names), 60, "two committed heights")
            started = trio.current_time()
            crashes = await crash_schedule(nodes, procs, clients, observer, recorder, rng)
            schedule_s = trio.current_time() - started
            # After the last restart: every node catches up to the same height.
            await trio.sleep(2)
            stop.set()
            target = max(observer.height(n) for n in names)
            await wait_for(
                lambda: all(observer.exec_height(n) >= target for n in names),
                CATCH_UP_TIMEOUT_S,
                f"every node to execute height {target}",
                lambda: f"statuses: {observer.status}",
            )
            nursery.cancel_scope.cancel()

        for p in procs:
            assert p.alive() and not p.failed(), f"{p.name} died:\n{p.log_tail(40)}"

        # Same execution state root on every common height.
        common = await agree_on_all_common_heights(nodes, clients)
        assert common >= target

        # No committed block lost or changed; the chains agree; no action twice in a chain.
        statuses = {n: await clients[n].status() for n in names}
        chains = {n: await fetch_chain(clients[n], statuses[n]["height"]) for n in names}
        checked_blocks = 0
        for n in names:
            for h, before in recorder.seen.get(n, {}).items():
                assert h in chains[n], f"{n}: block {h} reported committed before a crash is gone after it"
                assert _block_view(chains[n][h]) == before, f"{n}: block {h} changed across a crash"
                checked_blocks += 1
            ids: dict[str, int] = {}
            for h in sorted(chains[n]):
                for act in chains[n][h]["actions"]:
                    assert act["action_id"] not in ids, (
                        f"{n}: action {act['action_id']} is in block {ids[act['action_id']]} and again in block {h}"
                    )
                    ids[act["action_id"]] = h
        lowest = min(statuses[n]["height"] for n in names)
        for h in range(1, lowest + 1):
            hashes = {n: chains[n][h]["block_hash"] for n in names}
            assert len(set(hashes.values())) == 1, f"block hashes differ at height {h}: {hashes}"
        assert checked_blocks > 0

        # Execution heights never went backwards, across every restart.
        for n in names:
            series = observer.exec_series[n]
            assert series == sorted(series), f"{n}: execution_height went backwards: {series}"

        # No double-sign: no node holds equivocation evidence.
        for n in names:
            evidence = await clients[n]._get_json("/v1/evidence")
            assert evidence["evidence"] == [], f"{n} holds equivocation evidence: {evidence}"

        return {
            "crashes": crashes,
            "schedule_s": schedule_s,
            "final_height": target,
            "checked_blocks": checked_blocks,
            "actions_in_chain": sum(len(b["actions"]) for b in chains[names[0]].values()),
            "workload": stats.as_dict(),
        }
    finally:
        with trio.CancelScope(shield=True):
            for c in clients.values():
                await c.aclose()


@pytest.mark.multiprocess
@pytest.mark.timeout(600)
def test_kill_9_at_random_moments_and_fail_points_loses_nothing(tmp_path, _quiet_structlog):
    directory = tmp_path / "tn"
    init_testnet(directory, 4, config=lambda i: NodeConfig(storage=StorageConfig(snapshot_interval=1)))
    nodes = load_testnet(directory)
    procs = [NodeProcess(n) for n in nodes]
    try:
        for p in procs:
            p.start()
        try:
            result = trio.run(scenario, nodes, procs, tmp_path / "keys")
        except BaseExceptionGroup as group:  # show the one failure, not the nursery's group
            leaves = list(leaf_exceptions(group))
            if len(leaves) == 1:
                raise leaves[0] from None
            raise
    finally:
        stop_all(procs, grace_s=15)
    logs = {n.name: n.log_path.read_text(errors="replace") for n in nodes}
    refused = {name: text.count("double_sign_refused") for name, text in logs.items()}
    fired = [line for text in logs.values() for line in text.splitlines() if line.startswith("FAILPOINT ")]
    crashes: list[Crash] = result["crashes"]
    print(f"\nseed {SEED}: {len(crashes)} crashes in {result['schedule_s']:.1f} s; final height {result['final_height']}")
    for c in crashes:
        caught = (
            f"caught up to {c.caught_up_height} (target {c.target}) in {c.caught_up_s:.1f} s after restart"
            if c.caught_up_s is not None
            else "restarted with a fail point armed"
        )
        print(f"  cycle {c.cycle} {c.node:6} {c.how:42} last exec height seen {c.exec_height_before:4}  {caught}")
    print(f"  fail points fired: {fired}")
    print(f"  double_sign_refused warnings: {refused}")
    print(f"  blocks compared across crashes: {result['checked_blocks']}; actions in chain: {result['actions_in_chain']}")
    print(f"  workload: accepted {result['workload']['accepted']} submitted {result['workload']['submitted']}")
    assert len(fired) == sum(1 for c in crashes if c.how.startswith("failpoint"))
