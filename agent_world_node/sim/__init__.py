"""The deterministic cluster simulator: N real replicas on a virtual clock
over a simulated network with faults, Byzantine validators, and the safety and liveness properties
checked on every run.

Entry points: ``Scenario.generate(seed, ...)`` and ``run_scenario(scenario)`` (or
``python -m agent_world_node.sim --seed SEED``, which prints a per-height trace and the verdict).
"""

from .cluster import SimCluster, run_scenario
from .properties import PROPERTIES, Violation
from .result import SimResult
from .scenario import BEHAVIOURS, FAULTS, Scenario, ScenarioError

__all__ = [
    "BEHAVIOURS",
    "FAULTS",
    "PROPERTIES",
    "Scenario",
    "ScenarioError",
    "SimCluster",
    "SimResult",
    "Violation",
    "run_scenario",
]
