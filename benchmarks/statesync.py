"""State-sync benchmark: how long a node takes to join a chain of 100,000 agents by state sync,
at two chain lengths, side by side.

For each length in ``LENGTHS`` (heights), ``benchmarks.chain.build_chain`` builds a
single-validator chain offline: ``AGENTS`` agents created in blocks of 1,000, then activity blocks
of ``ACTIONS_PER_BLOCK`` actions up to that height, with a state-sync snapshot every
``SNAPSHOT_EVERY`` heights (so the newest one is at the tip). Then, as real processes
(``awnode start``): the validator's node serves the chain, and a joiner with an empty home and
``statesync.enable`` (same genesis, the validator as its only peer) joins. Figures (units in the
names; ``{n}`` is the chain length in thousands of heights):

- ``statesync_join_s_at_100k_agents_{n}k_heights``: from starting the joiner's process to its
  ``/ready`` answering 200 (state sync done, the blocks after the snapshot synced and executed,
  consensus traffic seen); target < 30 s, and the same at both lengths;
- ``statesync_restore_s_..``: the part from the joiner's ``state_sync_started`` to its
  ``state_sync_completed`` log line (discovery wait, verification, chunk transfer, restore);
- ``statesync_snapshot_mb_at_100k_agents_{n}k_heights``: the snapshot's size;
- ``statesync_snapshot_create_s_at_100k_agents``: how long making one snapshot takes (the pause
  in the serving node's commit path every ``statesync.snapshot_interval`` heights);
- ``chain_build_s_..``: building the chain (not part of joining).

The joiner's state root must equal the validator's at the snapshot height and at the height the
joiner reached (BenchError otherwise). Run time on the 2-core machine: a few minutes, mostly
building the 10,000-height chain.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import structlog
import trio

from agent_world_client.client import NodeClient
from agent_world_node import config as cfg
from agent_world_runtime import World
from agent_world_runtime.snapshots import SnapshotArchive
from agent_world_tools.testnet import NodeProcess, wait_until_ready

from .bigworld import BenchError, _set_ports
from .chain import build_chain, init_joiner_home

log = structlog.get_logger(__name__)

Record = Callable[[str, float], None]

AGENTS = 100_000
LENGTHS = (1_000, 10_000)
ACTIONS_PER_BLOCK = 10
SNAPSHOT_EVERY = 500
READY_TIMEOUT_S = 300.0


def _log_times(log_path: Path, events: tuple[str, ...]) -> dict[str, float]:
    """Unix seconds of the first JSON log line of each event in ``events``."""
    out: dict[str, float] = {}
    with open(log_path, "rb") as f:
        for raw in f:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            event = entry.get("event")
            if event in events and event not in out and isinstance(entry.get("timestamp"), str):
                out[event] = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
    return out


async def _join(validator_home: cfg.Home, workdir: Path, label: str, record: Record) -> None:
    """Serve the chain of ``validator_home`` and join it by state sync (module docstring)."""
    source = _set_ports(validator_home)
    source_proc = NodeProcess(source)
    joiner_proc: NodeProcess | None = None
    try:
        source_proc.start()
        await wait_until_ready([source], [source_proc], timeout_s=READY_TIMEOUT_S)
        conf = cfg.NodeConfig()
        conf.statesync.enable = True
        conf.statesync.discovery_ms = 500
        joiner = _set_ports(init_joiner_home(validator_home, workdir / f"joiner-{label}", config=conf))
        joiner_proc = NodeProcess(joiner)
        started = time.time()
        joiner_proc.start()
        await wait_until_ready([joiner], [joiner_proc], timeout_s=READY_TIMEOUT_S)  # its API answers
        async with NodeClient(joiner.rpc_url, timeout_s=30.0) as jc, NodeClient(source.rpc_url, timeout_s=30.0) as sc:
            with trio.fail_after(READY_TIMEOUT_S):
                while not await jc.ready():
                    if not joiner_proc.alive():
                        raise BenchError(f"the joiner exited; last log lines:\n{joiner_proc.log_tail()}")
                    await trio.sleep(0.05)
            record(f"statesync_join_s_at_100k_agents_{label}_heights", time.time() - started)
            [snap] = (await sc.snapshots())[:1]
            record(f"statesync_snapshot_mb_at_100k_agents_{label}_heights", snap["size"] / 2**20)
            height = (await jc.status())["execution_height"]
            for h in (snap["height"], height):
                ours, theirs = await jc.execution(h), await sc.execution(h)
                if ours["execution_state_root"] != theirs["execution_state_root"]:
                    raise BenchError(f"the joiner's state root at height {h} differs from the validator's")
        times = _log_times(joiner.log_path, ("state_sync_started", "state_sync_completed"))
        if len(times) == 2:
            record(f"statesync_restore_s_at_100k_agents_{label}_heights",
                   times["state_sync_completed"] - times["state_sync_started"])
    finally:
        for proc in (joiner_proc, source_proc):
            if proc is not None:
                proc.stop(grace_s=10.0)


def _snapshot_cost(home: cfg.Home, workdir: Path, record: Record) -> None:
    """Record how long a node's commit path pauses to make one state-sync snapshot of this world
    (``create_snapshot`` plus ``save_snapshot_to_dir``: encode, hash, write, fsync)."""
    world = World.load_from_dir(home.snapshot_dir / "current")
    archive = SnapshotArchive(workdir / "cost", keep_recent=1)
    started = time.perf_counter()
    archive.save_snapshot_to_dir(world.create_snapshot(), world.height, world.state_root())
    record("statesync_snapshot_create_s_at_100k_agents", time.perf_counter() - started)
    shutil.rmtree(workdir / "cost", ignore_errors=True)


def run_all(record: Record, *, agents: int = AGENTS, lengths: tuple[int, ...] = LENGTHS) -> None:
    """Build each chain, join it, ``record`` the figures (module docstring). Raises BenchError
    (or ``testnet.TestnetError``) when a figure cannot be measured."""
    workdir = Path(tempfile.mkdtemp(prefix="aw-statesync-"))
    try:
        for length in lengths:
            label = f"{length // 1000}k" if length % 1000 == 0 else str(length)
            register_blocks = -(-agents // 1000)
            conf = cfg.NodeConfig()
            conf.statesync.snapshot_interval = SNAPSHOT_EVERY
            chain = build_chain(workdir / f"validator-{label}", agents=agents, register_per_block=1000,
                                activity_blocks=max(0, length - register_blocks), actions_per_block=ACTIONS_PER_BLOCK,
                                config=conf, state_snapshot_interval=SNAPSHOT_EVERY, chain_id=f"bench-ss-{label}")
            record(f"chain_build_s_at_100k_agents_{label}_heights", chain.build_s)
            home = chain.home
            del chain
            if length == lengths[0]:
                _snapshot_cost(home, workdir, record)
            trio.run(_join, home, workdir, label, record)
            shutil.rmtree(workdir / f"validator-{label}", ignore_errors=True)
            shutil.rmtree(workdir / f"joiner-{label}", ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    """Print the figures (``python -m benchmarks.statesync``)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    def record(name: str, value: float) -> None:
        print(f"{name:55s} {value:12.2f}", flush=True)

    run_all(record)


if __name__ == "__main__":
    main()
