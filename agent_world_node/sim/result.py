"""The outcome of a simulated run: ``SimResult`` (violations, heights, trace, digest, counters)
and the per-height trace printed by ``python -m agent_world_node.sim``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .properties import PropertyChecker, Violation
from .scenario import Scenario


@dataclass
class SimResult:
    """The outcome of one scenario: violations (empty when every property held), each node's
    committed height, the trace and its digest, and counters."""

    scenario: Scenario
    core: str
    violations: list[Violation]
    heights: dict[str, int]
    time_ms: int
    events: int
    wall_s: float
    trace: list[str]
    digest: str
    stats: dict[str, Any]

    @property
    def ok(self) -> bool:
        """True when no property was violated."""
        return not self.violations

    @property
    def min_honest_height(self) -> int:
        """The lowest committed height among honest nodes."""
        honest = self.scenario.honest_nodes()
        return min((self.heights[n] for n in honest), default=0)

    def verdict(self) -> str:
        """A multi-line verdict: PASS, or FAIL with each violation and the replay command."""
        head = f"{'PASS' if self.ok else 'FAIL'}: {self.scenario.summary()} core={self.core}"
        body = [
            f"  reached heights {self.heights} at t={self.time_ms}ms after {self.events} events in {self.wall_s:.2f}s wall",
        ]
        for v in self.violations[:20]:
            body.append(f"  VIOLATION {v}")
        if not self.ok:
            body.append(f"  replay: {self.scenario.replay_command('' if self.core == 'correct' else self.core)}")
        return "\n".join([head, *body])



def trace_lines(notes: list[tuple[int, str]], checker: PropertyChecker, validator_names: dict[str, str]) -> list[str]:
    """The per-height trace of a run, merged in time order with the cluster's ``notes`` (faults,
    crashes, restarts): one line per height with its first commit time, deciding round, proposer,
    action count, block hash, state root, certificate signers and how many honest nodes committed
    it and when the last one did."""
    lines = [(t, f"t={t:>7}ms  {text}") for t, text in notes]
    honest = sorted(checker.honest)
    for h in sorted(checker.first_commit):
        info = checker.first_commit[h]
        times = [t for n in honest for t, hh in checker.commit_times[n] if hh == h]
        execution = checker.executions.get(h)
        committed = sum(1 for n in honest if h in checker.commits[n])
        lines.append((info.time_ms, (
            f"t={info.time_ms:>7}ms  height {h:>3} round {info.certificate.round} "
            f"proposer {validator_names.get(info.block.header.proposer, '?')} "
            f"actions {len(info.block.actions)} block {checker.chain[h].hex()[:12]} "
            f"state_root {execution[0].hex()[:12] if execution else '-'} "
            f"signers {len(info.certificate.signatures)} committed by {committed}/{len(honest)} honest "
            f"(last at {max(times) if times else '-'}ms)"
        )))
    lines.sort(key=lambda item: item[0])
    return [text for _, text in lines]
