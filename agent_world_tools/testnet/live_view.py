"""The rich live view of a running testnet: ``NodeView`` (what the launcher last saw of one node, with
recent samples for an actions-per-second rate) and ``render_live``, the table of one row per node
(process, height, execution height, state root, peers, mempool, actions/s) followed by the workload
counters and the agreement state.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..workload import WorkloadStats
from .agreement import AgreementChecker
from .processes import NodeProcess


@dataclass
class NodeView:
    """What the launcher last saw of one node."""

    name: str
    status: dict[str, Any] | None = None
    error: str | None = None
    samples: deque = field(default_factory=lambda: deque(maxlen=8))

    def actions_per_s(self) -> float | None:
        """Committed actions per second over the recent samples of ``actions_committed``."""
        if len(self.samples) < 2:
            return None
        (t0, a0), (t1, a1) = self.samples[0], self.samples[-1]
        return (a1 - a0) / (t1 - t0) if t1 > t0 else None


def _short(value: Any, n: int = 12) -> str:
    return value[:n] if isinstance(value, str) else "-"


def _num(status: dict[str, Any] | None, key: str) -> int:
    value = status.get(key) if status else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def render_live(
    views: list[NodeView],
    processes: dict[str, NodeProcess],
    stats: WorkloadStats,
    checker: AgreementChecker,
    elapsed_s: float,
) -> Group:
    """Return the live view: one row per node, then the workload counters and the agreement state."""
    table = Table(title=f"Agent World testnet — {elapsed_s:,.0f} s", expand=False)
    for column, justify in (
        ("node", "left"),
        ("process", "left"),
        ("height", "right"),
        ("exec height", "right"),
        ("state root", "left"),
        ("peers", "right"),
        ("mempool", "right"),
        ("actions/s", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for view in views:
        proc = processes.get(view.name)
        if proc is None:
            pstate = "-"
        elif proc.alive():
            pstate = f"pid {proc.pid}"
        else:
            pstate = f"[red]exited {proc.returncode}[/red]"
        s = view.status
        rate = view.actions_per_s()
        if s is None:
            table.add_row(view.name, pstate, "-", "-", f"[yellow]{escape(view.error or 'no answer')}[/yellow]", "-", "-", "-")
            continue
        table.add_row(
            view.name,
            pstate,
            str(s.get("height", "-")),
            str(s.get("execution_height", "-")),
            _short(s.get("execution_state_root")),
            str(s.get("peer_count", "-")),
            str(s.get("mempool_size", "-")),
            "-" if rate is None else f"{rate:.1f}",
        )
    rejected = ", ".join(f"{k}={v}" for k, v in sorted(stats.rejected.items())) or "0"
    module = "installed" if stats.module_installed else (f"[red]{escape(stats.module_error)}[/red]" if stats.module_error else "pending")
    workload = Text.from_markup(
        f"workload: agents registered {stats.agents_registered}  submitted {stats.submitted}  "
        f"accepted {stats.accepted}  duplicate {stats.duplicate}  rejected {rejected}  "
        f"retried 503 {stats.retried_503}  unreachable {stats.unreachable}  module {module}"
    )
    if checker.mismatch is not None:
        agreement = Text.from_markup(f"[bold red]state roots DISAGREE at height {checker.mismatch.height}[/bold red]")
    else:
        agreement = Text.from_markup(f"[green]state roots agree on heights 1..{checker.checked_up_to}[/green]")
    return Group(table, workload, agreement, Text("Ctrl-C to stop", style="dim"))
