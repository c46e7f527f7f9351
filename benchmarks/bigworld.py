"""Big-world benchmarks: execution scaling, catch-up, replay and memory at 100,000 agents.

Figures (units in the names; ``run_all(record)`` records them all, ``python -m benchmarks.bigworld``
prints them):

- Execution scaling, in-process: blocks of 1,000 signed move/harvest actions (signatures verified
  beforehand, as in the node; the mix of ``benchmarks.run.bench_execute``) executed alternately in
  a world of 1,000 and one of 100,000 agents, so that load from other processes falls on both
  alike; medians over ``EXEC_BLOCKS`` blocks:
  ``execute_block_1000_actions_ms_at_{1000,100000}_agents_interleaved`` and
  ``exec_ratio_100k_vs_1k`` (target <= 1.5).
- The chain: ``benchmarks.chain.build_chain`` commits ``AGENTS`` registrations (blocks of 1,000) and
  then ``ACTIVITY_BLOCKS`` blocks of 100 actions into a single-validator home
  (``chain_build_s_at_100k_agents``).
- Replay: ``World.load_from_dir`` of that chain's world snapshot (100k agents; it reads every
  journal segment, decodes every event and checks the journal's hash chain, rebuilds the indexes
  and the state tree and checks the root): ``world_load_s_at_100k_agents`` and
  ``replay_events_per_s`` (journal events / load time). Then what a node does when its snapshot is
  gone: ``NodeRuntimeExecutionDriver.open`` re-executes every stored block from genesis and
  checks each height's root against its execution record: ``replay_from_genesis_blocks_per_s``,
  ``replay_from_genesis_events_per_s``.
- Catch-up, real processes (``testnet.NodeProcess``, ``awnode start``): the validator's node
  serves the chain; a late joiner with an empty home (same genesis, peer = the validator's node)
  syncs and executes it. ``catchup_blocks_per_s`` is measured over the 100-action blocks only,
  from the joiner's own ``block_committed`` log lines (first to last activity height);
  ``catchup_register_blocks_per_s`` is the same over the 1,000-registration blocks, and
  ``catchup_blocks_per_s_at_1k_agents`` the 100-action figure again on a chain of ``SMALL_AGENTS``
  agents (registered in blocks of 100), where world snapshots are cheap.
- Memory: ``node_peak_rss_mb_at_100k_agents`` is VmHWM of ``/proc/<pid>/status`` of the
  validator's node process after it loaded the 100k-agent world, served the sync and committed
  ``SUBMITTED_ACTIONS`` actions submitted through its API (target <= 400 MB);
  ``joiner_peak_rss_mb_at_100k_agents`` the same for the late joiner after its catch-up;
  ``node_start_s_at_100k_agents`` the time from process start to its API answering.

Everything runs under a temporary directory that is removed at the end; node processes are
stopped in all cases. Sizes are module constants (``AGENTS`` etc.) and ``run_all`` arguments.
Run time on the 2-core machine: about 85 s (chain build 25 s, the rest in the node processes,
the replay and the execution worlds).

The machine's load matters: with other processes busy, catch-up and the execution ratio measured
well below their quiet-machine values (the ratio 1.4 quiet, up to 2.0 when the two sizes were
measured one after the other under changing load, hence the interleaving).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Callable

import structlog
import trio

from agent_world_client.client import ClientError, NodeClient
from agent_world_node import config as cfg
from agent_world_node.execution import NodeRuntimeExecutionDriver
from agent_world_node.store import NodeStore
from agent_world_runtime import World
from agent_world_runtime.actions import HarvestRadiation, MoveAgent
from agent_world_runtime.signer import AgentSigner
from agent_world_tools.testnet import NodeProcess, TestnetNode, pick_free_ports, rpc_url_for, wait_until_ready

from .chain import BuiltChain, agent_signers, build_chain, init_joiner_home

log = structlog.get_logger(__name__)

Record = Callable[[str, float], None]

AGENTS = 100_000
REGISTER_PER_BLOCK = 1_000
ACTIVITY_BLOCKS = 1_000
ACTIONS_PER_BLOCK = 100
SMALL_AGENTS = 1_000
EXEC_BLOCKS = 11
EXEC_CHAIN = "bench"
SUBMITTED_ACTIONS = 200
#: Upper bounds on each wait for a node process (seconds): generous, only to never hang.
NODE_READY_TIMEOUT_S = 180.0
CATCHUP_TIMEOUT_S = 300.0


class BenchError(RuntimeError):
    """A benchmark could not produce its figure (a node exited, never caught up, disagreed on a
    root); the message says what and where to look (node logs are quoted)."""


# -- execution scaling ------------------------------------------------------------------------------


def _world_with_agents(n: int) -> tuple[World, list[AgentSigner]]:
    """A world of ``n`` genesis agents (as ``benchmarks.run`` builds its worlds)."""
    from benchmarks.run import GENESIS_BALANCE, PARAMS  # lazy: run.py imports this module

    signers = agent_signers(n, EXEC_CHAIN)
    world = World.from_genesis(EXEC_CHAIN, PARAMS, agents=[s.genesis_agent(GENESIS_BALANCE, GENESIS_BALANCE) for s in signers])
    return world, signers


def _execute_one_block(world: World, signers: list[AgentSigner], index: int, per_block: int) -> float:
    """Sign (untimed) and execute (timed) block ``index`` of ``per_block`` move/harvest actions, as
    ``benchmarks.run.bench_execute`` does; return its execution time in ms."""
    height = world.height + 1
    actions = []
    for i in range(per_block):
        s = signers[(index * per_block + i) % len(signers)]
        actions.append(s.sign(MoveAgent(to=(height, 1, 0)) if i % 2 else HarvestRadiation()))
    start = time.perf_counter()
    world.begin_block(height, height)
    for i, a in enumerate(actions):
        world.apply_action(a, (height * 1_000_000 + i).to_bytes(32, "big"), signature_checked=True)
    world.step_with_modules()
    world.end_block()
    return (time.perf_counter() - start) * 1000


def bench_exec_ratio(
    record: Record, agents: tuple[int, int] = (1_000, AGENTS), blocks: int = EXEC_BLOCKS, per_block: int = 1_000
) -> float:
    """Execute ``blocks`` blocks of ``per_block`` signed move/harvest actions (signatures verified
    beforehand, as in the node) in a world of ``agents[0]`` and one of ``agents[1]`` agents,
    alternating between the two worlds block by block so that load from other processes falls on
    both alike. Records ``execute_block_1000_actions_ms_at_{n}_agents_interleaved`` (median) for
    both and ``exec_ratio_{big}_vs_{small}`` (e.g. ``exec_ratio_100k_vs_1k``, target <= 1.5) and
    returns the ratio. Raises BenchError if any action was rejected."""
    small, big = agents
    worlds = [_world_with_agents(small), _world_with_agents(big)]
    times: list[list[float]] = [[], []]
    for b in range(blocks):
        for k, (world, signers) in enumerate(worlds):
            times[k].append(_execute_one_block(world, signers, b, per_block))
    for world, _ in worlds:
        if world.stats()["actions_rejected"]:
            raise BenchError(f"execution benchmark actions were rejected: {world.events(0, 1, 'domain.action_rejected')}")
    small_ms, big_ms = statistics.median(times[0]), statistics.median(times[1])
    record(f"execute_block_{per_block}_actions_ms_at_{small}_agents_interleaved", small_ms)
    record(f"execute_block_{per_block}_actions_ms_at_{big}_agents_interleaved", big_ms)
    ratio = big_ms / small_ms
    record(f"exec_ratio_{_k(big)}_vs_{_k(small)}", ratio)
    return ratio


def _k(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


# -- replay -----------------------------------------------------------------------------------------


def bench_replay(chain: BuiltChain, record: Record, workdir: Path) -> None:
    """Record the world load and the replay-from-genesis figures (module docstring) of ``chain``,
    checking that both reach the chain's state root (BenchError otherwise). Reads the chain's home
    only; the replay uses an empty snapshot directory under ``workdir``."""
    start = time.perf_counter()
    world = World.load_from_dir(chain.home.snapshot_dir / "current")
    load_s = time.perf_counter() - start
    events = world.stats()["events"]
    agents = world.stats()["agents"]
    if world.state_root() != chain.state_root or world.height != chain.height:
        raise BenchError(f"loaded world is at height {world.height} with another root than the chain's tip {chain.height}")
    del world
    label = _k(agents)
    record(f"world_load_s_at_{label}_agents", load_s)
    record("replay_events_per_s", events / load_s)

    store = NodeStore(chain.home.db_file)
    try:
        genesis = chain.genesis
        start = time.perf_counter()
        driver = NodeRuntimeExecutionDriver.open(
            store,
            lambda: genesis.new_world(),
            workdir / "replay-snapshots",
            1 << 62,
        )
        replay_s = time.perf_counter() - start
        if driver.last_height != chain.height or driver.last_state_root != chain.state_root:
            raise BenchError(f"replay from genesis ended at height {driver.last_height} with another root")
        replayed_events = driver.world.stats()["events"]
    finally:
        store.close()
    record("replay_from_genesis_blocks_per_s", chain.height / replay_s)
    record("replay_from_genesis_events_per_s", replayed_events / replay_s)


# -- node processes ---------------------------------------------------------------------------------


def _set_ports(home: cfg.Home) -> TestnetNode:
    """Give ``home`` fresh loopback ports in its config.toml; return it as a TestnetNode."""
    conf = cfg.read_config(home.config_file)
    p2p_port, rpc_port = pick_free_ports(2)
    conf.p2p.listen = f"/ip4/127.0.0.1/tcp/{p2p_port}"
    conf.rpc.listen = f"127.0.0.1:{rpc_port}"
    cfg.write_config(home.config_file, conf)
    genesis = cfg.read_genesis(home.genesis_file)
    return TestnetNode(name=conf.moniker, home=home, rpc_url=rpc_url_for(conf.rpc.listen), chain_id=genesis.chain_id)


def peak_rss_mb(pid: int) -> float:
    """Return VmHWM (peak resident set size) of process ``pid`` in MiB, from ``/proc/<pid>/status``.
    Raises BenchError when the process or the field is gone (not Linux, or the process exited)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError as exc:
        raise BenchError(f"cannot read /proc/{pid}/status: {exc}") from None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise BenchError(f"/proc/{pid}/status has no VmHWM line")


def commit_times(log_path: Path, source: str = "sync") -> dict[int, float]:
    """Return ``{height: unix seconds}`` of the ``block_committed`` JSON log lines of ``source``
    in a node log (other lines and unparseable ones are skipped)."""
    out: dict[int, float] = {}
    with open(log_path, "rb") as f:
        for raw in f:
            if b"block_committed" not in raw:
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if entry.get("event") != "block_committed" or entry.get("source") != source:
                continue
            ts = entry.get("timestamp")
            if not isinstance(ts, str):
                continue
            out[int(entry["height"])] = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    return out


def rate_between(times: dict[int, float], first: int, last: int) -> float:
    """Blocks per second from height ``first`` to ``last`` (``(last - first) / (t_last - t_first)``).
    Raises BenchError if either height is missing from ``times`` or no time passed."""
    if first not in times or last not in times:
        raise BenchError(f"heights {first} and {last} are not both in the joiner's commit log")
    elapsed = times[last] - times[first]
    if elapsed <= 0:
        raise BenchError(f"no time passed between heights {first} and {last} in the log")
    return (last - first) / elapsed


async def _wait_height(client: NodeClient, proc: NodeProcess, height: int, timeout_s: float) -> dict:
    status: dict = {}
    with trio.move_on_after(timeout_s):
        while True:
            if not proc.alive():
                raise BenchError(f"{proc.name} exited ({proc.returncode}); last log lines:\n{proc.log_tail()}")
            try:
                status = await client.status()
            except ClientError:
                status = {}
            if status.get("execution_height", 0) >= height:
                return status
            await trio.sleep(0.2)
    raise BenchError(
        f"{proc.name} reached height {status.get('execution_height')} of {height} within {timeout_s:g} s; "
        f"last log lines:\n{proc.log_tail()}"
    )


async def _submit_and_commit(chain: BuiltChain, node: TestnetNode, proc: NodeProcess, count: int) -> None:
    """Submit ``count`` harvests (agents a0.. with their next nonces) to ``node`` and wait until
    its ``actions_committed`` grew by ``count``."""
    async with NodeClient(node.rpc_url, timeout_s=10.0) as client:
        before = (await client.status())["actions_committed"]
        for signer in chain.signers[:count]:
            await client.submit(signer.sign(HarvestRadiation()))
        with trio.move_on_after(NODE_READY_TIMEOUT_S):
            while (await client.status())["actions_committed"] < before + count:
                if not proc.alive():
                    raise BenchError(f"{proc.name} exited; last log lines:\n{proc.log_tail()}")
                await trio.sleep(0.2)
            return
    raise BenchError(f"{node.name} did not commit {count} submitted actions; see {node.log_path}")


async def _nodes_session(chain: BuiltChain, record: Record, workdir: Path, *, suffix: str = "", memory: bool = True) -> None:
    """Start the chain's validator node and a late joiner (real processes), record the catch-up
    rates (names end with ``suffix``) and, when ``memory``, the start time and peak RSS figures.
    Both processes are stopped before returning, whatever happens."""
    source = _set_ports(chain.home)
    source_proc = NodeProcess(source)
    joiner_proc: NodeProcess | None = None
    label = _k(chain.agents)
    try:
        started = time.perf_counter()
        source_proc.start()
        await wait_until_ready([source], [source_proc], timeout_s=NODE_READY_TIMEOUT_S)
        if memory:
            record(f"node_start_s_at_{label}_agents", time.perf_counter() - started)

        joiner_home = init_joiner_home(chain.home, workdir / f"joiner{suffix}")
        joiner = _set_ports(joiner_home)
        joiner_proc = NodeProcess(joiner)
        joiner_proc.start()
        await wait_until_ready([joiner], [joiner_proc], timeout_s=NODE_READY_TIMEOUT_S)
        async with NodeClient(joiner.rpc_url, timeout_s=10.0) as jc, NodeClient(source.rpc_url, timeout_s=10.0) as sc:
            await _wait_height(jc, joiner_proc, chain.height, CATCHUP_TIMEOUT_S)
            theirs = await sc.execution(chain.height)
            ours = await jc.execution(chain.height)
            if not theirs["execution_state_root"] == ours["execution_state_root"] == chain.state_root.hex():
                raise BenchError(f"the joiner's execution state root at height {chain.height} differs from the chain's")
        times = commit_times(joiner.log_path)
        first, last = chain.heights_by_kind["activity"]
        if last > first:
            # from the commit of the block before the first activity block: last - first + 1 blocks
            record(f"catchup_blocks_per_s{suffix}", rate_between(times, first - 1, last))
        rfirst, rlast = chain.heights_by_kind["register"]
        if memory and rlast > rfirst:
            record(f"catchup_register_blocks_per_s{suffix}", rate_between(times, rfirst, rlast))
        if memory:
            await _submit_and_commit(chain, source, source_proc, min(SUBMITTED_ACTIONS, len(chain.signers)))
            assert source_proc.pid is not None and joiner_proc.pid is not None
            record(f"node_peak_rss_mb_at_{label}_agents", peak_rss_mb(source_proc.pid))
            record(f"joiner_peak_rss_mb_at_{label}_agents", peak_rss_mb(joiner_proc.pid))
    finally:
        for proc in (joiner_proc, source_proc):
            if proc is not None:
                proc.stop(grace_s=10.0)


# -- all --------------------------------------------------------------------------------------------


def run_all(
    record: Record,
    *,
    agents: int = AGENTS,
    register_per_block: int = REGISTER_PER_BLOCK,
    activity_blocks: int = ACTIVITY_BLOCKS,
    actions_per_block: int = ACTIONS_PER_BLOCK,
    exec_blocks: int = EXEC_BLOCKS,
    small_agents: int = SMALL_AGENTS,
) -> None:
    """Run every big-world benchmark and ``record(name, value)`` each figure (module docstring).
    ``small_agents`` = 0 skips the small-world catch-up. Raises BenchError (or
    ``testnet.TestnetError`` from the node processes) when a figure cannot be measured."""
    bench_exec_ratio(record, (1_000, agents), exec_blocks)
    workdir = Path(tempfile.mkdtemp(prefix="aw-bigworld-"))
    try:
        chain = build_chain(
            workdir / "validator",
            agents=agents,
            register_per_block=register_per_block,
            activity_blocks=activity_blocks,
            actions_per_block=actions_per_block,
        )
        record(f"chain_build_s_at_{_k(agents)}_agents", chain.build_s)
        log.info("bigworld_chain_built", height=chain.height, agents=agents, home=str(chain.home.root))
        bench_replay(chain, record, workdir)
        log.info("bigworld_node_session", agents=agents)
        trio.run(_nodes_session, chain, record, workdir)
        del chain
        if small_agents:
            log.info("bigworld_node_session", agents=small_agents)
            small = build_chain(
                workdir / "small-validator",
                agents=small_agents,
                register_per_block=actions_per_block,
                activity_blocks=activity_blocks,
                actions_per_block=actions_per_block,
                chain_id="bench-small",
            )
            trio.run(partial(_nodes_session, small, record, workdir, suffix=f"_at_{_k(small_agents)}_agents", memory=False))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    """Print the figures (``python -m benchmarks.bigworld``); sizes from ``AW_BENCH_AGENTS`` and
    ``AW_BENCH_ACTIVITY_BLOCKS`` when set."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    def record(name: str, value: float) -> None:
        print(f"{name:45s} {value:12.2f}", flush=True)

    run_all(
        record,
        agents=int(os.environ.get("AW_BENCH_AGENTS", AGENTS)),
        activity_blocks=int(os.environ.get("AW_BENCH_ACTIVITY_BLOCKS", ACTIVITY_BLOCKS)),
    )


if __name__ == "__main__":
    main()
