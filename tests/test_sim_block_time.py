"""Block time in the simulated cluster (proposer-based timestamps, docs/design-choices.md, "Block
time"): one validator of four with its clock an hour ahead or behind, honest or Byzantine, never
gets a block committed whose time leaves the window the synchronized honest clocks allow (the
``block_time`` property, agent_world_node/sim/properties.py), the chain keeps committing, and no
honest node blames the skewed one for its untimely proposals (the ``robustness`` property). A core
that treats every proposal as timely is caught.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent_world_node.sim import BEHAVIOURS, FAULTS, Scenario, ScenarioError
from agent_world_node.sim.__main__ import main as sim_main
from agent_world_node.sim.cluster import SimCluster

from .broken_cores import IgnoresTimelinessCore

HOUR_MS = 3_600_000
HEIGHTS = 20


@pytest.mark.parametrize("skew", [HOUR_MS, -HOUR_MS])
@pytest.mark.parametrize("behaviour", [None, "equivocator"])
def test_one_skewed_proposer_of_four_cannot_move_chain_time_and_the_chain_lives(skew: int, behaviour: str | None):
    for seed, faults in ((1, frozenset()), (2, frozenset({"drop", "crash", "dup"}))):
        byzantine = [(0, behaviour)] if behaviour else []
        scenario = Scenario.generate(seed, stakes=(1, 1, 1, 1), byzantine=byzantine, faults=faults,
                                     heights=HEIGHTS, clock_skews=[(0, skew)])
        result = SimCluster(scenario).run()
        assert result.ok, "\n" + result.verdict()
        assert result.min_honest_height >= HEIGHTS, "\n" + result.verdict()


def test_a_core_that_ignores_timeliness_is_caught_by_the_block_time_property():
    scenario = Scenario.generate(1, stakes=(1, 1, 1, 1), byzantine=[], faults=frozenset(), heights=HEIGHTS,
                                 clock_skews=[(0, HOUR_MS)])
    result = SimCluster(scenario, IgnoresTimelinessCore, core_name="ignores_timeliness").run()
    assert "block_time" in {v.property for v in result.violations}, result.verdict()
    assert "ahead of every synchronized honest clock" in result.verdict()


def test_skewed_and_byzantine_stake_together_must_stay_below_a_third():
    with pytest.raises(ScenarioError, match="Byzantine and clock-skewed stake 2 of 4"):
        Scenario(seed=1, stakes=(1, 1, 1, 1), byzantine=((1, "silent"),), clock_skews=((0, HOUR_MS),))
    with pytest.raises(ScenarioError, match="two clock skews"):
        Scenario(seed=1, stakes=(1, 1, 1, 1), clock_skews=((0, 1), (0, 2)))
    # chosen here, the stakes are fitted so that the skewed validator and the Byzantine one fit
    scenario = Scenario.generate(3, nodes=7, byzantine=["equivocator"], clock_skews=[(6, -HOUR_MS)])
    assert 3 * scenario.faulty_stake < sum(scenario.stakes)
    assert "n6" not in scenario.synchronized_nodes()


def test_a_skewed_scenario_replays_from_its_command_line(capsys: pytest.CaptureFixture[str]):
    scenario = Scenario.generate(4, stakes=(1, 1, 1, 1), byzantine=[], faults=frozenset(), heights=3,
                                 clock_skews=[(2, -HOUR_MS)])
    assert "--skew" in scenario.replay_args() and "skew=v2:-3600000ms" in scenario.summary()
    assert sim_main(["--seed", "4", *scenario.replay_args()[2:], "--quiet"]) == 0
    assert "skew=v2:-3600000ms" in capsys.readouterr().out


@st.composite
def skewed_scenarios(draw: st.DrawFn) -> Scenario:
    """4 to 7 validators, one of them with a clock skewed by up to a day either way (honest or of
    any Byzantine behaviour), any faults; stakes fitted so the skewed one holds less than 1/3."""
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(4, 7))
    behaviour = draw(st.sampled_from((None, *BEHAVIOURS)))
    skew = draw(st.sampled_from((1, -1))) * draw(st.sampled_from((HOUR_MS, 86_400_000, 20_000, 2_000)))
    faults = draw(st.frozensets(st.sampled_from(FAULTS)))
    skewed = draw(st.integers(0, n - 1))
    byzantine = [(skewed, behaviour)] if behaviour else []
    stakes = [1] * n
    return Scenario.generate(seed, stakes=stakes, byzantine=byzantine, faults=faults, heights=HEIGHTS,
                             clock_skews=[(skewed, skew)])


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
@given(scenario=skewed_scenarios())
def test_random_scenarios_with_a_skewed_validator_keep_every_property(scenario: Scenario):
    for _, behaviour in scenario.byzantine:
        event(f"byzantine {behaviour}")
    event(f"skew {scenario.clock_skews[0][1]:+d}")
    result = SimCluster(scenario).run()
    assert result.ok, "\n" + result.verdict()
    assert result.min_honest_height >= HEIGHTS, "\n" + result.verdict()
