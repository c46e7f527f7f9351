"""Building a committed chain fast and offline, for the big-world benchmarks.

``build_chain`` creates a node home for a single-validator chain (``config.init_home`` with a
``Genesis`` naming one validator) and fills its store with committed blocks by driving a real
``Replica`` in-process, exactly as the node daemon does, minus the network and the clocks:

- each block's signed actions are admitted with ``Replica.admit`` (chain id, signature, agent and
  nonce checked against the executed world, then the mempool);
- the first height starts with ``Replica.start()`` and every next one with
  ``Replica.handle_commit_wait(height)`` (the ``StartCommitWait`` the replica asks for),
  skipping the commit wait. A sole validator holds all the stake, so the consensus core proposes,
  prevotes, precommits and decides inside that call (Tendermint, Buchman-Kwon-Milosevic 2018,
  Algorithm 1, L11-L49 with a quorum of one); the replica then stores the block with its commit
  certificate (signed by the validator key), executes it through ``NodeRuntimeExecutionDriver``
  and writes the execution record.

So the home holds what a node with that key would have produced: valid certificates, action roots,
WAL pruning and execution records. Two things differ from a live node, neither visible in the result:
block timestamps come from a deterministic clock (``genesis_time_ms + height * BLOCK_INTERVAL_MS``),
and the SQLite store runs with ``synchronous=OFF`` while building (the finished database is
closed cleanly, so its content is the same; only the crash-safety during building is given up). The
world snapshot is written once, at the tip, so a node opens the home without replaying blocks.

The workload (deterministic from ``seed``): the genesis agent ``bank`` creates ``agents`` agents
``a0, a1, ...`` in blocks of ``register_per_block`` (each with ``ENDOWMENT`` of both resources);
then ``activity_blocks`` blocks of ``actions_per_block`` actions, taken by the agents in turn, each
agent cycling through harvest, move one step east, transfer 1 data to the next agent, move back west.
The chain's world rules (``BENCH_WORLD``) have no harvest interval, so none of these can be
rejected; ``build_chain`` checks that none was.

Late joiners: ``init_joiner_home`` creates a home with the chain's genesis, an empty data directory,
new keys (not a validator) and the chain's node as its peer, so that it syncs the chain.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import structlog

from agent_world_node import config as cfg
from agent_world_node.network import peer_id_for_seed
from agent_world_node.replica import ActionSource, Replica, StartCommitWait
from agent_world_node.store import NodeStore
from agent_world_runtime import World
from agent_world_runtime.actions import (
    HarvestRadiation,
    MoveAgent,
    SignedAction,
    TransferResource,
    encode_signed_action,
)
from agent_world_runtime.crypto import SigningKey, sha256
from agent_world_runtime.params import WorldParams
from agent_world_runtime.signer import AgentSigner
from agent_world_runtime.snapshots import SnapshotArchive

log = structlog.get_logger(__name__)

#: Milliseconds between the deterministic timestamps of consecutive built blocks.
BLOCK_INTERVAL_MS = 1000
#: Genesis time of built chains (Unix ms): fixed, so the same arguments build the same chain.
GENESIS_TIME_MS = 1_700_000_000_000
DEFAULT_CHAIN_ID = "bench-chain"
#: What the bank gives each agent it creates, of each resource.
ENDOWMENT = 10**9
#: The benchmark chain's world rules: harvests are not rate-limited (the workload harvests every
#: fourth action; the interval is a rule it does not measure).
BENCH_WORLD = WorldParams(harvest_interval=0)


class ChainBuildError(RuntimeError):
    """The chain could not be built as asked (an action refused or rejected, a height not
    committed, a home already present); the message says which height and why."""


@dataclass
class BuiltChain:
    """A built chain: ``home`` (the validator's home), its ``genesis``, the committed ``height``,
    the tip's execution ``state_root`` and ``execution_block_hash`` (32 bytes each), the counts of
    ``agents`` and committed ``actions``, the journal length ``events``, ``build_s`` (seconds of
    wall time), the ``signers`` of the agents (their next nonces follow the chain), and the
    ``heights_by_kind`` ``{"register": (first, last), "activity": (first, last)}`` (inclusive,
    ``(0, -1)`` when there were none). ``world`` is the in-memory world at the tip when
    ``keep_world`` was asked, else None."""

    home: cfg.Home
    genesis: cfg.Genesis
    height: int
    state_root: bytes
    execution_block_hash: bytes
    agents: int
    actions: int
    events: int
    build_s: float
    signers: list[AgentSigner] = field(repr=False)
    heights_by_kind: dict[str, tuple[int, int]]
    world: World | None = field(default=None, repr=False)


def bank_signer(chain_id: str, seed: bytes = b"bench") -> AgentSigner:
    """Return the signer of the genesis agent ``bank`` (key seed ``sha256(seed + b"/bank")``), which
    creates the workload's agents."""
    return AgentSigner.from_seed("bank", sha256(seed + b"/bank"), chain_id)


def agent_signers(count: int, chain_id: str, seed: bytes = b"bench") -> list[AgentSigner]:
    """Return ``count`` signers for agents ``a0..a{count-1}``; agent i's key seed is
    ``sha256(seed + b"/agent/" + str(i))``, so the same ``seed`` gives the same keys."""
    return [AgentSigner.from_seed(f"a{i}", sha256(seed + b"/agent/" + str(i).encode()), chain_id) for i in range(count)]


def _activity(signer: AgentSigner, step: int, next_agent: str) -> SignedAction:
    """The ``step``-th activity action of one agent (harvest, east, transfer, west, ...)."""
    phase = step % 4
    if phase == 0:
        return signer.sign(HarvestRadiation())
    if phase == 1:
        return signer.sign(MoveAgent(to=(1, 0, 0)))
    if phase == 2:
        return signer.sign(TransferResource(to=next_agent, kind="data", amount=1))
    return signer.sign(MoveAgent(to=(0, 0, 0)))


def workload_blocks(
    signers: list[AgentSigner], register_per_block: int, activity_blocks: int, actions_per_block: int,
    bank: AgentSigner,
) -> Iterator[tuple[str, list[SignedAction]]]:
    """Yield ``(kind, actions)`` per block, kind "register" (``bank`` creates the agents) then
    "activity" (see the module docstring). Signing is lazy: each block is signed when it is asked
    for, so signers' nonces advance block by block. Raises ValueError for non-positive block sizes."""
    if register_per_block <= 0 or actions_per_block <= 0:
        raise ValueError("register_per_block and actions_per_block must be positive")
    n = len(signers)
    for start in range(0, n, register_per_block):
        yield "register", [bank.create_agent(s, electricity=ENDOWMENT, data=ENDOWMENT)
                           for s in signers[start : start + register_per_block]]
    if n == 0:
        return
    steps = [0] * n
    turn = 0
    for _ in range(activity_blocks):
        actions = []
        for _ in range(actions_per_block):
            i = turn % n
            turn += 1
            actions.append(_activity(signers[i], steps[i], signers[(i + 1) % n].agent_id))
            steps[i] += 1
        yield "activity", actions


def chain_genesis(chain_id: str, validator: SigningKey, bank: AgentSigner, world: WorldParams | None = None) -> cfg.Genesis:
    """Return the genesis of a single-validator chain (stake 100) at ``GENESIS_TIME_MS``, whose
    one agent is ``bank`` (10**18 of each resource); world rules ``world`` (default ``BENCH_WORLD``)."""
    return cfg.Genesis(
        chain_id=chain_id,
        genesis_time_ms=GENESIS_TIME_MS,
        validators=[cfg.GenesisValidator("bench-validator", validator.public_key.hex(), 100)],
        world=world or BENCH_WORLD,
        agents=[bank.genesis_agent(10**18, 10**18)],
    )


def build_chain(
    root: str | Path,
    *,
    agents: int,
    register_per_block: int = 1000,
    activity_blocks: int = 0,
    actions_per_block: int = 100,
    chain_id: str = DEFAULT_CHAIN_ID,
    seed: bytes = b"bench",
    config: cfg.NodeConfig | None = None,
    keep_world: bool = False,
    quiet: bool = True,
    state_snapshot_interval: int = 0,
) -> BuiltChain:
    """Create the home ``root`` of a single-validator chain and commit the workload into it (see
    the module docstring). ``config`` is written as its ``config.toml`` (default ``NodeConfig()``:
    set its listen addresses before starting a node there). The validator and node keys derive
    from ``seed``. ``state_snapshot_interval`` (0: none): state-sync snapshots are written every
    that many heights while building, as a node with ``statesync.snapshot_interval`` does (the
    newest ``statesync.snapshot_keep_recent`` of ``config`` are kept). ``quiet`` silences the per-block INFO logs of the replica while building (the
    process-wide structlog configuration is restored afterwards).

    Cost (2-core machine, measured before creations were paid): about 0.1 s per block of 1,000 creations and 14 ms per
    block of 100 actions. Raises ChainBuildError when ``root`` already holds a home or the chain
    cannot be built as asked (a refused or rejected action, an uncommitted height)."""
    started = time.perf_counter()
    if agents < 0 or activity_blocks < 0:
        raise ChainBuildError("agents and activity_blocks must be >= 0")
    validator = SigningKey(sha256(seed + b"/validator"))
    bank = bank_signer(chain_id, seed)
    genesis = chain_genesis(chain_id, validator, bank)
    try:
        home = cfg.init_home(
            root,
            moniker="bench-validator",
            config=config or cfg.NodeConfig(),
            node_seed=sha256(seed + b"/node"),
            validator_seed=validator.seed,
            genesis=genesis,
        )
    except cfg.ConfigError as exc:
        raise ChainBuildError(str(exc)) from None
    signers = agent_signers(agents, chain_id, seed)
    saved_config = structlog.get_config() if quiet else None
    if quiet:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    store = NodeStore(home.db_file)
    try:
        # Durability is irrelevant while building offline: the file is closed cleanly at the end.
        store._db.execute("PRAGMA synchronous=OFF")
        clock_height = [0]
        replica = Replica.open(
            genesis=genesis,
            consensus=cfg.ConsensusConfig(),
            validator_key=validator,
            store=store,
            snapshot_dir=home.snapshot_dir,
            snapshot_interval=1 << 62,  # one snapshot, at the tip (below)
            node_id="chain-builder",
            now_ms=lambda: GENESIS_TIME_MS + clock_height[0] * BLOCK_INTERVAL_MS,
        )
        if state_snapshot_interval:
            keep = (config or cfg.NodeConfig()).statesync.snapshot_keep_recent
            replica.driver.archive = SnapshotArchive(home.state_snapshot_dir, keep)
            replica.driver.state_snapshot_interval = state_snapshot_interval
        heights: dict[str, list[int]] = {}
        actions = 0
        started_consensus = False
        for kind, block_actions in workload_blocks(signers, register_per_block, activity_blocks, actions_per_block, bank):
            for signed in block_actions:
                payload = encode_signed_action(signed)
                result = replica.admit(signed, ActionSource.LOCAL, payload)
                if result.status != "accepted":
                    raise ChainBuildError(
                        f"height {replica.height + 1}: action of {signed.body.agent_id} refused: {result.code} {result.reason}"
                    )
            before = replica.height
            clock_height[0] = before + 1
            if not started_consensus:
                outputs = replica.start()
                started_consensus = True
            else:
                outputs = replica.handle_commit_wait(before)
            if replica.height != before + 1:
                raise ChainBuildError(
                    f"height {before + 1} was not committed by the sole validator (outputs: {outputs[:4]})"
                )
            if not any(isinstance(o, StartCommitWait) for o in outputs):
                raise ChainBuildError(f"height {before + 1}: the replica did not ask for the commit timer")
            committed = store.get_block(replica.height)
            if committed is None or len(committed.block.actions) != len(block_actions):
                got = len(committed.block.actions) if committed else 0
                raise ChainBuildError(f"height {replica.height} committed {got} of {len(block_actions)} actions")
            actions += len(block_actions)
            heights.setdefault(kind, []).append(replica.height)
        world = replica.world
        stats = world.stats()
        if stats.get("actions_rejected", 0):
            bad = world.events(0, 1, "domain.action_rejected")
            raise ChainBuildError(f"{stats['actions_rejected']} built actions were rejected, e.g. {bad[0].data if bad else '?'}")
        if replica.height > 0:
            replica.driver.write_snapshot()
        height = replica.height
        built = BuiltChain(
            home=home,
            genesis=genesis,
            height=height,
            state_root=replica.driver.last_state_root,
            execution_block_hash=replica.driver.last_block_hash,
            agents=agents,
            actions=actions,
            events=stats["events"],
            build_s=time.perf_counter() - started,
            signers=signers,
            heights_by_kind={k: (v[0], v[-1]) for k, v in heights.items()},
            world=world if keep_world else None,
        )
    finally:
        store.close()
        if saved_config is not None:
            structlog.configure(**saved_config)
    for kind in ("register", "activity"):
        built.heights_by_kind.setdefault(kind, (0, -1))
    log.info("chain_built", home=str(home.root), height=built.height, agents=agents, actions=actions,
             seconds=round(built.build_s, 2))
    return built


def node_multiaddr(home: cfg.Home) -> str:
    """Return the full libp2p address (``/ip4/.../tcp/PORT/p2p/<peer id>``) of the node of ``home``,
    from its ``config.toml`` and node key. Raises ConfigError if either is missing or invalid."""
    conf = cfg.read_config(home.config_file)
    return f"{conf.p2p.listen}/p2p/{peer_id_for_seed(cfg.read_key(home.node_key_file).seed)}"


def init_joiner_home(source: cfg.Home, root: str | Path, *, config: cfg.NodeConfig | None = None) -> cfg.Home:
    """Create a late joiner's home at ``root``: the genesis of ``source`` (same file), an empty data
    directory, new random keys (so not a validator) and ``source``'s node as its only peer.
    ``config`` supplies its listen addresses (default ``NodeConfig()``); its peers are overwritten.
    Raises ConfigError if ``source`` is not a complete home or ``root`` already holds one."""
    genesis = cfg.read_genesis(source.genesis_file)
    conf = config or cfg.NodeConfig()
    conf.p2p.peers = [node_multiaddr(source)]
    return cfg.init_home(root, moniker="late-joiner", config=conf, genesis=genesis)
