"""The property suite of the cluster simulator: hypothesis draws whole scenarios (4 to 7
validators, their stakes, up to two Byzantine validators of any behaviour with less than 1/3 of
the stake, any set of network and node faults, and a seed that fixes the schedule and every random
choice) and every one of them must keep agreement, validity, execution agreement, no honest double
sign, robustness and liveness for 20 heights (agent_world_node/sim/properties.py). Every scenario
runs five epochs of 4 heights with drawn validator-set changes (operators leaving, rejoining and
bonding more), and about half have a late joiner that syncs the chain from genesis.

A failure prints the verdict: the seed, the scenario, each violated property with its heights and
nodes, and the one command that replays it with a per-height trace (``make sim SEED=...``).
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent_world_node.sim import BEHAVIOURS, FAULTS, Scenario, run_scenario

SCENARIOS = 300
HEIGHTS = 20


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """A random scenario; the stakes of the Byzantine validators are fitted below 1/3."""
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(4, 7))
    stakes = draw(st.lists(st.sampled_from([1, 1, 2, 3, 5, 8, 10]), min_size=n, max_size=n))
    # Behaviours are drawn as indexes rotated by the (uniform) seed, which offsets hypothesis's
    # preference for some elements and keeps every behaviour about equally frequent.
    picks = draw(st.lists(st.integers(0, len(BEHAVIOURS) - 1), max_size=2 if n >= 6 else 1))
    byzantine = [BEHAVIOURS[(i + seed) % len(BEHAVIOURS)] for i in picks]
    faults = draw(st.frozensets(st.sampled_from(FAULTS)))
    return Scenario.generate(seed, stakes=stakes, byzantine=byzantine, faults=faults, heights=HEIGHTS)


@settings(max_examples=SCENARIOS, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
@given(scenario=scenarios())
def test_every_scenario_keeps_every_property(scenario: Scenario):
    for _, behaviour in scenario.byzantine:
        event(f"byzantine {behaviour}")
    for fault in scenario.faults:
        event(f"fault {fault}")
    if scenario.late_joiner_at_ms:
        event("late joiner")
    result = run_scenario(scenario)
    event(f"validator sets: {min(result.stats['validator_sets'], 3)}{'+' if result.stats['validator_sets'] >= 3 else ''}")
    assert result.ok, "\n" + result.verdict()
    assert result.min_honest_height >= HEIGHTS, "\n" + result.verdict()
