"""The fixed parts of a simulated chain: validator keys derived from the scenario seed, the
genesis, and the consensus timeouts of simulated nodes (virtual milliseconds)."""

from __future__ import annotations

from agent_world_runtime.crypto import SigningKey, sha256
from agent_world_runtime.params import StakingParams
from agent_world_runtime.signer import AgentSigner

from ..config import ConsensusConfig, Genesis, GenesisValidator
from .clients import genesis_agents
from .scenario import Scenario

SIM_CONSENSUS = ConsensusConfig(
    timeout_propose_ms=400,
    timeout_propose_delta_ms=100,
    timeout_prevote_ms=200,
    timeout_prevote_delta_ms=100,
    timeout_precommit_ms=200,
    timeout_precommit_delta_ms=100,
    timeout_commit_ms=50,
    max_block_actions=16,
    max_block_bytes=200_000,
)
"""Consensus timeouts of simulated nodes, in virtual ms (small, so heights are quick)."""

GENESIS_TIME_MS = 1_700_000_000_000


def validator_keys(seed: int, count: int) -> list[SigningKey]:
    """The deterministic validator keys of a scenario seed."""
    return [SigningKey(sha256(f"sim-validator/{seed}/{i}".encode())) for i in range(count)]


#: Staking rules of simulated chains: unbonded stake returns after one epoch, and downtime never
#: jails (crashes and partitions are the simulator's business; jailing an honest validator for
#: them could hand the Byzantine ones a third of a later set, which no scenario may do).
SIM_STAKING = StakingParams(unbonding_epochs=1, downtime_min_signed_percent=0)

#: Electricity of each validator operator's genesis agent.
OPERATOR_BALANCE = 1_000_000


def operator_signers(chain_id: str, seed: int, count: int) -> list[AgentSigner]:
    """The genesis agents ``op-<i>`` that operate (hold the bond of) validator ``i``."""
    return [AgentSigner(f"op-{i}", SigningKey(sha256(f"sim-operator/{seed}/{i}".encode())), chain_id)
            for i in range(count)]


def make_genesis(scenario: Scenario) -> tuple[Genesis, list[SigningKey]]:
    """The genesis of a scenario (chain ``sim-<seed>``, with its genesis client agents and the
    validators' operators, epochs of ``scenario.epoch_length`` heights) and the validators' keys."""
    keys = validator_keys(scenario.seed, len(scenario.stakes))
    chain_id = f"sim-{scenario.seed}"
    operators = operator_signers(chain_id, scenario.seed, len(keys))
    validators = [
        GenesisValidator(name=f"v{i}", public_key=k.public_key.hex(), stake=s, operator=operators[i].agent_id)
        for i, (k, s) in enumerate(zip(keys, scenario.stakes, strict=True))
    ]
    agents = genesis_agents(chain_id, scenario.clients, scenario.seed)
    agents += [op.genesis_agent(OPERATOR_BALANCE, 0, (0, 0, 0)) for op in operators]
    return Genesis(chain_id=chain_id, genesis_time_ms=GENESIS_TIME_MS, validators=validators, agents=agents,
                   epoch_length=scenario.epoch_length, staking=SIM_STAKING), keys
