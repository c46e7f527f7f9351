"""Running scenarios from the command line: building a scenario from options, resolving a core by
name, and the long mode that runs random scenarios in worker processes until time is up."""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from ..consensus import ConsensusCore
from .cluster import run_scenario
from .scenario import Scenario, ScenarioError


@dataclass(frozen=True)
class Options:
    """What the command line may fix about a scenario (None: drawn from the seed)."""

    nodes: int | None = None
    stakes: tuple[int, ...] | None = None
    byzantine: tuple[str, ...] | tuple[tuple[int, str], ...] | None = None
    faults: frozenset[str] | None = None
    heights: int = 20
    attack: str = ""
    core: str = "correct"
    skews: tuple[tuple[int, int], ...] = ()


def scenario_for(seed: int, options: Options) -> Scenario:
    """The scenario of ``seed`` under ``options``; raises ScenarioError for contradictory options."""
    if options.attack:
        if (options.nodes is not None or options.stakes or options.byzantine is not None or options.faults is not None
                or options.skews):
            raise ScenarioError("--attack fixes the validators and faults; give only --seed and --heights with it")
        from .attacks import attack_scenario

        return attack_scenario(options.attack, seed, options.heights)
    return Scenario.generate(
        seed,
        nodes=options.nodes,
        stakes=options.stakes,
        byzantine=list(options.byzantine) if options.byzantine is not None else None,  # type: ignore[arg-type]
        faults=options.faults,
        heights=options.heights,
        clock_skews=options.skews,
    )


def core_factory_named(name: str) -> Callable[..., ConsensusCore]:
    """The consensus core called ``name``: "correct", or a deliberately broken one from
    ``tests/broken_cores.py`` (run from the repository root). Raises ScenarioError otherwise."""
    if name == "correct":
        return ConsensusCore
    try:
        from tests.broken_cores import BROKEN_CORES  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ScenarioError(
            f"--core {name}: broken cores live in tests/broken_cores.py; run from the repository root ({exc})"
        ) from None
    if name not in BROKEN_CORES:
        raise ScenarioError(f"--core {name}: unknown; choose correct or one of {', '.join(sorted(BROKEN_CORES))}")
    return BROKEN_CORES[name]


def run_one(job: tuple[int, Options]) -> tuple[int, bool, int, float, str]:
    """Run the scenario of ``job = (seed, options)``; returns (seed, ok, lowest honest height,
    wall seconds, verdict if it failed)."""
    seed, options = job
    result = run_scenario(scenario_for(seed, options), core_factory_named(options.core), core_name=options.core)
    return seed, result.ok, result.min_honest_height, result.wall_s, "" if result.ok else result.verdict()


def long_run(minutes: float, jobs: int, first_seed: int, options: Options, say: Callable[[str], None] = print) -> int:
    """Run the scenarios of seeds ``first_seed, first_seed + 1, ...`` in ``jobs`` processes for
    ``minutes``; report each failure's verdict and a summary through ``say``. Returns the number of
    failing scenarios."""
    deadline = time.monotonic() + minutes * 60
    started = time.monotonic()
    runs = failures = heights = 0
    next_seed = first_seed
    with multiprocessing.get_context("spawn").Pool(max(1, jobs)) as pool:
        pending: deque = deque()
        while pending or time.monotonic() < deadline:
            while time.monotonic() < deadline and len(pending) < 2 * max(1, jobs):
                pending.append(pool.apply_async(run_one, ((next_seed, options),)))
                next_seed += 1
            seed, ok, height, _wall, verdict = pending.popleft().get()
            runs += 1
            heights += height
            if not ok:
                failures += 1
                say(verdict)
            elif runs % 50 == 0:
                say(f"  {runs} scenarios, {failures} failing, last seed {seed}")
    elapsed = time.monotonic() - started
    say(f"scenarios={runs} failing={failures} heights={heights} wall={elapsed:.0f}s "
        f"heights_per_second={heights / max(elapsed, 1e-9):.1f}")
    return failures
