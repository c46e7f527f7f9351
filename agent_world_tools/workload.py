"""Scripted agent workload: many agents acting on a cluster through the nodes' HTTP APIs.

Used by ``awnode testnet`` and the multi-process tests. It is the agent runtime
(``agent_world_agents.runtime.AgentRuntime``) with the scripted population
(``agent_world_agents.scripted.ScriptedPopulation``): each agent has its own Ed25519 key (saved
under ``key_dir`` and reused when the directory already holds it), talks to one node (agents are
spread round robin over ``rpc_urls``), is created by the sponsor (the testnet's genesis faucet
agent, which pays for it and gives it its starting balances), waits until its creation is committed
and executed (GET /v1/agents/{id} answers), then acts: explorers move and harvest, traders pay other
agents (mostly the module owner), and agent 0, the builder, compiles
``examples/modules/move_counter.wat`` in the world, installs it (so every later move also
exercises the WASM sandbox) and later upgrades it to ``move_counter_v2.wat``.

Choices are deterministic from ``seed`` (one ``random.Random`` per agent, seeded from the seed and
the agent id); timing is not. Submissions are paced by one shared scheduler to ``actions_per_s`` in
total. Nonces are per agent and strictly increasing: an agent starts at the node's
``last_nonce + 1`` (1 for a new agent) and never reuses a nonce, whatever the outcome.
A 400 answer is a counted outcome (``WorkloadStats.rejected`` by code), never a crash; an
unreachable node is counted and retried after a pause.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog
import trio

from agent_world_agents.runtime import (
    AgentRuntime,
    Pacer,
    RuntimeStats,
    agent_id_for,
    load_or_create_agent_key,
)
from agent_world_agents.scripted import (
    LOW_ELECTRICITY,
    WANDER_BOUND,
    ModuleBuilder,
    ScriptedPopulation,
    default_modules_dir,
)
from agent_world_client.client import AgentKey

__all__ = [
    "LOW_ELECTRICITY",
    "WANDER_BOUND",
    "Pacer",
    "WorkloadStats",
    "agent_id_for",
    "default_modules_dir",
    "load_or_create_agent_key",
    "run_workload",
]

log = structlog.get_logger(__name__)


@dataclass
class WorkloadStats(RuntimeStats):
    """The runtime's counters (``RuntimeStats``: decisions, submitted, accepted, duplicate,
    rejected by code, retried_503, busy, unreachable, bad_responses, committed, failed, by_kind,
    agents_registered) plus the builder's progress: ``module_wasm_hash`` (the installed artifact),
    ``module_installed``, ``module_upgraded`` and ``module_upgraded_wasm_hash`` (after the
    upgrade), ``module_error`` (why the builder gave up)."""

    module_wasm_hash: str | None = None
    module_installed: bool = False
    module_upgraded: bool = False
    module_upgraded_wasm_hash: str | None = None
    module_error: str | None = None

    def track(self, builder: ModuleBuilder) -> None:
        """Copy ``builder``'s progress into the module fields (its ``on_progress`` callback)."""
        self.module_wasm_hash = builder.wasm_hash or self.module_wasm_hash
        if builder.phase in ("installed", "upgrading", "upgraded"):
            self.module_installed = True
        if builder.phase == "upgraded":
            self.module_upgraded = True
            self.module_upgraded_wasm_hash = builder.upgraded_wasm_hash
        self.module_error = builder.error

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (``RuntimeStats.as_dict`` plus the module fields)."""
        out = super().as_dict()
        out.update(
            module_wasm_hash=self.module_wasm_hash,
            module_installed=self.module_installed,
            module_upgraded=self.module_upgraded,
            module_upgraded_wasm_hash=self.module_upgraded_wasm_hash,
            module_error=self.module_error,
        )
        return out


async def run_workload(
    rpc_urls: list[str],
    chain_id: str,
    *,
    agents: int = 20,
    seed: int = 0,
    key_dir: Path,
    stop: trio.Event,
    stats: WorkloadStats,
    actions_per_s: float = 20.0,
    agent_prefix: str = "agent",
    modules_dir: Path | None = None,
    poll_interval_s: float = 0.5,
    registration_timeout_s: float = 30.0,
    module_timeout_s: float = 60.0,
    upgrade_after_turns: int = 10,
    timeout_s: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
    sponsor: AgentKey | None = None,
) -> None:
    """Run ``agents`` scripted agents against the nodes at ``rpc_urls`` until ``stop`` is set.

    ``chain_id``: the chain the actions are signed for. ``key_dir``: where each agent's key file
    ``<agent_id>.json`` is kept (created if missing, reused if present). ``stats``: updated live.
    ``actions_per_s``: total submission rate over all agents. ``modules_dir``: where
    move_counter(.wat/.manifest.json) and move_counter_v2 are (default: the repository's
    examples/modules). ``poll_interval_s``: how often registration and module progress are polled
    (seconds). ``module_timeout_s``: a builder step whose result has not appeared after about this
    many seconds is submitted again (converted to the builder's turns at the paced rate).
    ``upgrade_after_turns``: the builder's turns between the install and the upgrade.
    ``transport``: an httpx async transport for every client (tests). ``sponsor``: the key of the
    existing agent that creates the agents that do not exist yet (the testnet's faucet).

    Returns after ``stop`` is set and every agent has stopped. Raises ValueError for bad arguments
    and AgentKeyError for an unusable key file; node errors are counted in ``stats``, not raised.
    """
    if not rpc_urls:
        raise ValueError("run_workload needs at least one node URL")
    if agents < 1:
        raise ValueError(f"agents must be >= 1, got {agents}")
    if actions_per_s <= 0:
        raise ValueError(f"actions_per_s must be positive, got {actions_per_s}")
    population = ScriptedPopulation(
        seed, modules_dir=modules_dir, upgrade_after_turns=upgrade_after_turns, on_progress=stats.track
    )
    runtime = AgentRuntime(
        list(rpc_urls),
        agents=agents,
        policy_factory=population,
        key_dir=key_dir,
        chain_id=chain_id,
        seed=seed,
        agent_prefix=agent_prefix,
        turn_s=0.0,
        actions_per_s=actions_per_s,
        poll_interval_s=poll_interval_s,
        registration_timeout_s=registration_timeout_s,
        timeout_s=timeout_s,
        transport=transport,
        stats=stats,
        sponsor=sponsor,
    )
    if population.builder_policy is not None:
        # one builder turn every agents / actions_per_s seconds
        population.builder_policy.retry_after_turns = max(5, int(module_timeout_s * actions_per_s / agents))
    log.info("workload_starting", agents=agents, nodes=len(rpc_urls), actions_per_s=actions_per_s, seed=seed)
    await runtime.run(stop)
    log.info("workload_stopped", **{k: v for k, v in stats.as_dict().items() if not isinstance(v, dict)})
