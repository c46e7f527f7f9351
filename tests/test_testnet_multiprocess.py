"""Real node processes on loopback: the multi-process tests of the testnet launcher and the daemon.

1. Four nodes from `testnet init`, driven by the scripted workload (its agents created by the
   testnet's faucet): heights advance, every node
   agrees on execution_state_root at every common height, actions and module calls are executed.
   Then node3 is SIGKILLed: the other three keep committing. node3 restarts from its home, catches
   up, agrees on every root, and its execution_height never went backwards.
2. `awnode testnet` as a user runs it: started, interrupted with SIGINT, summary written.

Every process is bounded by timeouts and stopped in a finally.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog
import trio

from agent_world_client.client import AgentKey, NodeClient
from agent_world_tools.testnet import (
    NodeProcess,
    faucet_key_file,
    init_testnet,
    load_testnet,
    stop_all,
    wait_until_ready,
)
from agent_world_tools.workload import WorkloadStats, run_workload

from .cluster_harness import Observer, agree_on_all_common_heights, wait_for

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(300)]

WORKLOAD_S = 20.0
OUTAGE_S = 8.0
CATCH_UP_TIMEOUT_S = 90.0


@pytest.fixture(autouse=True)
def _quiet_structlog():
    import logging

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    yield
    structlog.reset_defaults()


async def scenario(nodes, procs, key_dir: Path, faucet: AgentKey):
    clients = {n.name: NodeClient(n.rpc_url, timeout_s=5.0) for n in nodes}
    names = [n.name for n in nodes]
    victim = procs[3]
    try:
        await wait_until_ready(nodes, procs, timeout_s=120)
        chain_id = nodes[0].chain_id
        observer = Observer(nodes, clients)
        stats = WorkloadStats()
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(observer.run)
            nursery.start_soon(
                lambda: run_workload(
                    [n.rpc_url for n in nodes], chain_id, agents=20, seed=11, key_dir=key_dir, stop=stop, stats=stats,
                    sponsor=faucet,
                )
            )
            await wait_for(lambda: all(observer.height(n) >= 0 for n in names), 30, "first statuses")
            start_heights = {n: observer.height(n) for n in names}

            # Phase 1: all four nodes under load.
            await trio.sleep(WORKLOAD_S)
            for n in names:
                assert observer.height(n) > start_heights[n] + 3, (n, start_heights, observer.status[n])
            common = await agree_on_all_common_heights(nodes, clients)
            assert common > 3
            assert stats.accepted >= 50, stats.as_dict()
            assert stats.agents_registered == 20, stats.as_dict()
            assert stats.by_kind["create_agent"] >= 20 and "no_sponsor" not in stats.rejected, stats.as_dict()
            await wait_for(lambda: stats.module_installed, 30, f"the module install ({stats.module_error})")
            await wait_for(
                lambda: max(s.get("module_calls", 0) for s in observer.status.values()) >= 1, 30, "a module call"
            )
            assert max(s["actions_committed"] for s in observer.status.values()) >= 50

            # Phase 2: kill -9 node3; the other three (75% of the stake) keep committing.
            before_kill = observer.exec_height("node3")
            victim.kill()
            observer.status.pop("node3", None)
            at_kill = {n: observer.height(n) for n in names[:3]}
            await trio.sleep(OUTAGE_S)
            for n in names[:3]:
                assert observer.height(n) > at_kill[n] + 2, (n, at_kill, observer.status.get(n))

            # Phase 3: restart node3 from its home; it catches up and agrees.
            victim.start()
            restarted_at = trio.current_time()
            target = max(observer.height(n) for n in names[:3])
            await wait_for(
                lambda: observer.exec_height("node3") >= target,
                CATCH_UP_TIMEOUT_S,
                f"node3 to catch up to {target}",
                lambda: f"statuses: {observer.status}\nnode3 log:\n{victim.log_tail(40)}",
            )
            assert not victim.failed(), victim.log_tail()
            print(
                f"\nnode3 restarted at execution height {before_kill}, caught up to {target} "
                f"({target - before_kill} heights) in {trio.current_time() - restarted_at:.1f} s after restart"
            )
            await trio.sleep(3)
            stop.set()
            nursery.cancel_scope.cancel()

        series = observer.exec_series["node3"]
        assert series == sorted(series), f"node3 execution_height went backwards: {series}"
        assert before_kill in series and series[-1] >= target
        final = await agree_on_all_common_heights(nodes, clients)
        assert final >= target
        for n in names:
            assert not procs[names.index(n)].failed(), procs[names.index(n)].log_tail()
    finally:
        with trio.CancelScope(shield=True):
            for c in clients.values():
                await c.aclose()


def test_four_nodes_agree_survive_kill_9_and_catch_up(tmp_path):
    directory = tmp_path / "tn"
    init_testnet(directory, 4)
    faucet = AgentKey.load(faucet_key_file(directory))
    assert faucet.agent_id == "faucet"
    nodes = load_testnet(directory)
    procs = [NodeProcess(n) for n in nodes]
    try:
        for p in procs:
            p.start()
        trio.run(scenario, nodes, procs, tmp_path / "keys", faucet)
    finally:
        codes = stop_all(procs, grace_s=15)
    assert all(code is not None for code in codes.values())


def _processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text`` (nodes this test started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return [p for p in pids if p != os.getpid()]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find leftover node processes")
def test_awnode_testnet_runs_until_sigint_and_writes_the_summary(tmp_path):
    directory = tmp_path / "tn"
    summary_file = tmp_path / "summary.json"
    out = open(tmp_path / "launcher.out", "wb")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "agent_world_tools.cli", "testnet", "--nodes", "4", "--dir", str(directory),
         "--agents", "20", "--json-summary", str(summary_file)],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        log_file = directory / "testnet.log"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and launcher.poll() is None:
            if log_file.exists() and "workload_starting" in log_file.read_text():
                break
            time.sleep(0.25)
        assert launcher.poll() is None, (tmp_path / "launcher.out").read_text()
        time.sleep(10)
        launcher.send_signal(signal.SIGINT)
        rc = launcher.wait(timeout=90)
        output = (tmp_path / "launcher.out").read_text()
        assert rc == 0, output
        summary = json.loads(summary_file.read_text())
        assert summary["ok"] is True and summary["agreement"]["ok"] is True, summary
        assert summary["blocks_committed"] > 0 and summary["actions_committed"] > 0, summary
        assert summary["agreement"]["checked_heights"] > 0
        assert set(summary["exit_statuses"]) == {"node0", "node1", "node2", "node3"}
        # the launcher's workload had the testnet's faucet create its agents
        assert (directory / "faucet.json").exists()
        assert summary["workload"]["agents_registered"] > 0, summary["workload"]
        assert "testnet summary" in output
        assert _processes_mentioning(str(directory)) == []
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        out.close()
        for pid in _processes_mentioning(str(directory)):
            os.kill(pid, signal.SIGKILL)
