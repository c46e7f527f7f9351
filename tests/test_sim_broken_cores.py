"""The simulator's properties can fail: each deliberately broken consensus core
(tests/broken_cores.py) is caught, deterministically, by a fixed set of adversarial scenarios
(agent_world_node/sim/attacks.py), while the correct core survives the same scenarios with no
violation and stays live after the adversary lets go.

- ``no_locking``: the ``no_locking`` attack (a minority locks v in round 0 and one node decides v;
  the Byzantine round-1 proposer offers v') ends in an agreement violation.
- ``half_threshold``: the ``split_brain`` attack (equivocating proposer, honest halves cut apart)
  ends in an agreement violation; random scenarios catch it too (its certificates hold too little
  stake).
- ``accepts_unsigned_votes``: the ``forged_split`` attack (the equivocator forges every other
  validator's votes) ends in an agreement violation; random scenarios with a forger catch it too.
"""

from __future__ import annotations

import pytest

from agent_world_node.consensus import ConsensusCore
from agent_world_node.sim import Scenario
from agent_world_node.sim.attacks import ATTACKS, attack_scenario
from agent_world_node.sim.cluster import SimCluster

from .broken_cores import BROKEN_CORES

SEEDS = (1, 2, 3)
ATTACK_FOR = {"no_locking": "no_locking", "half_threshold": "split_brain", "accepts_unsigned_votes": "forged_split"}


def _violated(attack: str, seed: int, core: str) -> set[str]:
    factory = ConsensusCore if core == "correct" else BROKEN_CORES[core]
    result = SimCluster(attack_scenario(attack, seed), factory, core_name=core, stop_on_violation=False).run()
    return {v.property for v in result.violations}


def test_every_broken_core_has_an_attack():
    assert set(ATTACK_FOR) == set(BROKEN_CORES)
    assert set(ATTACK_FOR.values()) <= set(ATTACKS)


@pytest.mark.parametrize("attack", ATTACKS)
def test_the_correct_core_survives_every_attack(attack: str):
    for seed in SEEDS:
        result = SimCluster(attack_scenario(attack, seed)).run()
        assert result.ok, result.verdict()
        assert result.min_honest_height == result.scenario.heights


@pytest.mark.parametrize("core", sorted(BROKEN_CORES))
def test_each_broken_core_is_caught(core: str):
    for seed in SEEDS:
        violated = _violated(ATTACK_FOR[core], seed, core)
        # a disagreement, or a commit certificate that does not verify (the next height then
        # refuses to build on it: its block's last commit must verify)
        assert violated & {"agreement", "validity"}, f"{core} under {ATTACK_FOR[core]} seed {seed}: only {sorted(violated)}"


@pytest.mark.parametrize("core", ["half_threshold", "accepts_unsigned_votes"])
def test_random_scenarios_catch_thresholds_and_signatures(core: str):
    byzantine = ["forger"] if core == "accepts_unsigned_votes" else None
    caught = []
    for seed in SEEDS:
        scenario = Scenario.generate(seed, byzantine=byzantine, heights=20)
        result = SimCluster(scenario, BROKEN_CORES[core], core_name=core).run()
        caught.append({v.property for v in result.violations})
    assert all("validity" in props for props in caught), caught  # certificates that do not verify
