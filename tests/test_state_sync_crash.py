"""Kill -9 during state-sync snapshot creation, snapshot serving and state sync: every process
restarts from its home to the same roots. Real ``awnode start`` processes on 127.0.0.1, killed at
exact points by fail points (``AGENT_WORLD_FAILPOINTS``: SIGKILL, as ``kill -9``); every wait is
bounded and every process is stopped in a finally.

1. The validator (a one-validator testnet, a state-sync snapshot every ``EVERY`` heights) dies
   between writing its second snapshot's blob and its manifest; restarted, it lists only complete
   snapshots and removes the orphan blob at its next snapshot.
2. Restarted with ``state_snapshot.serving_chunk`` armed, it dies serving the first chunk to a
   joiner; the joiner keeps trying, and completes once the validator is back.
3. That joiner dies right after saving the restored world (``statesync.after_world``), a second
   one right after storing the base block (``statesync.after_block``); both restart, state-sync
   again, and agree with the validator's roots from their base height on.
"""

from __future__ import annotations

import os
import time

import pytest
import trio

from agent_world_client.client import NodeClient
from agent_world_node.config import NodeConfig
from agent_world_runtime.failpoints import ENV_VAR
from agent_world_tools.testnet import (
    NodeProcess,
    add_testnet_node,
    init_testnet,
    load_testnet,
    stop_all,
    wait_until_ready,
)
from agent_world_tools.testnet.homes import TestnetNode

EVERY = 10
LIMIT_S = 150.0


def _died(proc: NodeProcess, failpoint: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.returncode == -9, f"{proc.name} did not die at {failpoint}: {proc.returncode}\n{proc.log_tail()}"
    assert f"FAILPOINT {failpoint} hit" in proc.node.log_path.read_text(errors="replace")


async def _ready(node: TestnetNode, proc: NodeProcess) -> None:
    """Wait until ``node`` answers /ready with 200 (a joiner: state sync and catch-up done)."""
    await wait_until_ready([node], [proc], timeout_s=60)
    async with NodeClient(node.rpc_url, timeout_s=5.0) as c:
        while not await c.ready():
            assert proc.alive(), proc.log_tail()
            await trio.sleep(0.1)


async def _height(c: NodeClient) -> int:
    return (await c.status())["execution_height"]


async def _agree_from(joiner: NodeClient, validator: NodeClient) -> tuple[int, int]:
    """The joiner's base height (its first stored block) and tip; their roots equal the validator's."""
    base = min(s["height"] for s in await validator.snapshots())  # any kept snapshot is a possible base
    tip = await _height(joiner)
    first = None
    for h in range(base - EVERY, tip + 1):
        try:
            ours = await joiner.execution(h)
        except Exception:
            continue
        first = first or h
        assert ours["execution_state_root"] == (await validator.execution(h))["execution_state_root"], h
    assert first is not None and first % EVERY == 0, first
    return first, tip


def _joiner(directory) -> TestnetNode:
    """A new full node of the testnet (the next ``nodeN``) that joins by state sync."""
    c = NodeConfig()
    c.statesync.enable = True
    c.statesync.discovery_ms = 300
    c.statesync.chunk_timeout_ms = 3000
    add_testnet_node(directory, config=c)
    return load_testnet(directory)[-1]


@pytest.mark.skipif(bool(os.environ.get(ENV_VAR)), reason=f"{ENV_VAR} is set in this test process")
def test_kill_9_while_making_serving_and_restoring_snapshots(tmp_path):
    directory = tmp_path / "tn"

    def config(i: int) -> NodeConfig:
        c = NodeConfig()
        c.statesync.snapshot_interval = EVERY
        c.statesync.snapshot_keep_recent = 2
        c.storage.snapshot_interval = 4
        c.consensus.timeout_commit_ms = 50
        return c

    init_testnet(directory, 1, config=config)
    [vnode] = load_testnet(directory)
    procs: list[NodeProcess] = []

    def proc(node: TestnetNode, failpoint: str | None = None) -> NodeProcess:
        p = NodeProcess(node, env={ENV_VAR: failpoint} if failpoint else None)
        procs.append(p)
        p.start()
        return p

    async def main() -> None:
        with trio.fail_after(LIMIT_S):
            vc = NodeClient(vnode.rpc_url, timeout_s=5.0)
            # 1. killed between the second snapshot's blob and its manifest
            v = proc(vnode, "state_snapshot.after_blob@2")
            await trio.to_thread.run_sync(_died, v, "state_snapshot.after_blob")
            snapdir = vnode.home.state_snapshot_dir
            orphan = snapdir / f"{2 * EVERY:012d}.snapshot"
            assert orphan.exists() and not orphan.with_suffix(".manifest").exists()
            # 2. restarted; it serves only complete snapshots, then dies serving a chunk
            v = proc(vnode, "state_snapshot.serving_chunk")
            await _ready(vnode, v)
            while not [s for s in await vc.snapshots() if s["height"] >= 3 * EVERY] or await _height(vc) < 3 * EVERY + 2:
                await trio.sleep(0.1)
            assert all(s["height"] % EVERY == 0 for s in await vc.snapshots())
            assert not orphan.exists()  # removed with the next snapshot
            j1 = _joiner(directory)
            p1 = proc(j1, "statesync.after_world")
            await trio.to_thread.run_sync(_died, v, "state_snapshot.serving_chunk")
            assert p1.alive()
            v = proc(vnode)  # back, serving again
            # 3. the joiner completes the restore and dies after saving the world; restarted, it
            # state-syncs again
            await trio.to_thread.run_sync(_died, p1, "statesync.after_world")
            p1 = proc(j1)
            await _ready(j1, p1)
            c1 = NodeClient(j1.rpc_url, timeout_s=5.0)
            base1, tip1 = await _agree_from(c1, vc)
            j2 = _joiner(directory)
            p2 = proc(j2, "statesync.after_block")
            await trio.to_thread.run_sync(_died, p2, "statesync.after_block")
            p2 = proc(j2)
            await _ready(j2, p2)
            c2 = NodeClient(j2.rpc_url, timeout_s=5.0)
            base2, tip2 = await _agree_from(c2, vc)
            for log in (j1.log_path, j2.log_path):
                assert log.read_text(errors="replace").count("state_sync_completed") == 1
            print(f"\njoiner1 restored height {base1} (at {tip1}), joiner2 height {base2} (at {tip2}) after kill -9")
            for c in (vc, c1, c2):
                await c.aclose()

    try:
        trio.run(main)
    finally:
        stop_all(procs, grace_s=10)
