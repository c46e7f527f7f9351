"""Command line of the simulator.

Replay one scenario (per-height trace, then the verdict; exit status 1 on a violation)::

    python -m agent_world_node.sim --seed 42
    python -m agent_world_node.sim --seed 42 --stakes 3,1,4,1,5 --byzantine 1:twins --faults crash,drop
    python -m agent_world_node.sim --seed 1 --attack no_locking --core no_locking
    python -m agent_world_node.sim --seed 3 --stakes 1,1,1,1 --byzantine none --skew 0:3600000

Run random scenarios for a while (``make sim-long MINUTES=30``)::

    python -m agent_world_node.sim --minutes 30 --jobs 2

Options not given are drawn from the seed (``Scenario.generate``); a failing run prints the exact
command that replays it.
"""

from __future__ import annotations

import argparse
import os
import sys

from .attacks import ATTACKS
from .cluster import run_scenario
from .result import SimResult
from .runner import Options, core_factory_named, long_run, scenario_for
from .scenario import BEHAVIOURS, FAULTS, ScenarioError


def _parse_byzantine(text: str | None) -> tuple[str, ...] | tuple[tuple[int, str], ...] | None:
    if text is None:
        return None
    if text in ("", "none"):
        return ()
    items = [t.strip() for t in text.split(",") if t.strip()]
    if all(":" in t for t in items):
        pairs = []
        for t in items:
            index, _, name = t.partition(":")
            if not index.isdigit():
                raise ScenarioError(f"--byzantine {t!r}: expected INDEX:BEHAVIOUR such as 2:twins")
            pairs.append((int(index), name))
        return tuple(pairs)
    if any(":" in t for t in items):
        raise ScenarioError("--byzantine: give either all INDEX:BEHAVIOUR pairs or only behaviour names")
    return tuple(items)


def _parse_faults(text: str | None) -> frozenset[str] | None:
    if text is None:
        return None
    if text in ("", "none"):
        return frozenset()
    return frozenset(t.strip() for t in text.split(",") if t.strip())


def _parse_skews(text: str | None) -> tuple[tuple[int, int], ...]:
    if not text or text == "none":
        return ()
    pairs = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        index, _, skew = item.partition(":")
        try:
            pairs.append((int(index), int(skew)))
        except ValueError:
            raise ScenarioError(f"--skew {item!r}: expected INDEX:MILLISECONDS such as 0:3600000 or 1:-3600000") from None
    return tuple(pairs)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agent_world_node.sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=None, help="scenario seed (long mode: the first seed)")
    p.add_argument("--nodes", type=int, default=None, help="number of validators (4..7 when drawn)")
    p.add_argument("--stakes", default=None, help="comma-separated stakes, one per validator")
    p.add_argument("--byzantine", default=None,
                   help=f"'none', behaviours ({', '.join(BEHAVIOURS)}) or INDEX:BEHAVIOUR pairs, comma-separated")
    p.add_argument("--faults", default=None, help=f"'none' or comma-separated: {', '.join(FAULTS)}")
    p.add_argument("--skew", default=None,
                   help="INDEX:MILLISECONDS pairs, comma-separated: offset those validators' clocks (e.g. 0:3600000)")
    p.add_argument("--heights", type=int, default=20, help="heights every honest node must reach (default 20)")
    p.add_argument("--attack", default="", help=f"an adversarial schedule: {', '.join(ATTACKS)}")
    p.add_argument("--core", default="correct", help="consensus core: correct, or a broken one from tests/broken_cores.py")
    p.add_argument("--quiet", action="store_true", help="print only the verdict")
    p.add_argument("--minutes", type=float, default=None, help="long mode: run random scenarios for this long")
    p.add_argument("--jobs", type=int, default=1, help="long mode: parallel worker processes")
    return p


def options_from(args: argparse.Namespace) -> Options:
    """The scenario options given on the command line; raises ScenarioError for malformed ones."""
    try:
        stakes = tuple(int(s) for s in args.stakes.split(",")) if args.stakes else None
    except ValueError:
        raise ScenarioError(f"--stakes {args.stakes!r}: expected comma-separated positive integers") from None
    return Options(
        nodes=args.nodes,
        stakes=stakes,
        byzantine=_parse_byzantine(args.byzantine),
        faults=_parse_faults(args.faults),
        heights=args.heights,
        attack=args.attack,
        core=args.core,
        skews=_parse_skews(args.skew),
    )


def _print_result(result: SimResult, quiet: bool) -> None:
    s = result.scenario
    if not quiet:
        print(f"scenario: {s.summary()}")
        print(f"nodes: {', '.join(name for name, _ in s.node_names())} (honest: {', '.join(s.honest_nodes())})")
        for ev in s.schedule:
            print(f"  scheduled t={ev.at_ms}ms {ev.describe()}")
        print("trace:")
        for line in result.trace:
            print(f"  {line}")
        print("stats: " + " ".join(f"{k}={v}" for k, v in sorted(result.stats.items())))
        print(f"digest: {result.digest}")
    print(result.verdict(), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 pass, 1 violation, 2 bad arguments)."""
    args = _parser().parse_args(argv)
    try:
        options = options_from(args)
        core_factory = core_factory_named(options.core)
        if args.minutes is not None:
            first = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
            print(f"long run: {args.minutes} min, {args.jobs} job(s), seeds from {first}", flush=True)
            failures = long_run(args.minutes, args.jobs, first, options, lambda text: print(text, flush=True))
            return 1 if failures else 0
        if args.seed is None:
            raise ScenarioError("--seed is required (or --minutes for a long run)")
        scenario = scenario_for(args.seed, options)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = run_scenario(scenario, core_factory, core_name=options.core)
    _print_result(result, args.quiet)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
