"""The ``awnode testnet`` session: ``prepare_testnet`` creates or reuses a testnet directory,
``run_testnet`` starts every node, waits for their APIs, runs the scripted workload with the live
view until Ctrl-C, SIGTERM or the duration, checks that all nodes agree, stops the nodes and returns
a ``TestnetSummary`` (``render_summary`` prints it, ``as_dict`` is the ``--json-summary`` document).
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import structlog
import trio
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from agent_world_client.client import AgentKey, ClientError, NodeClient, NodeUnreachable
from agent_world_node.config import ConfigError, read_config, read_genesis

from ..workload import WorkloadStats, run_workload
from .agreement import AgreementChecker, Mismatch
from .homes import DEFAULT_TESTNET_CHAIN_ID, TestnetNode, faucet_key_file, init_testnet, is_testnet, load_testnet
from .live_view import NodeView, _num, _short, render_live
from .processes import NodeProcess, leaf_exceptions, stop_all, wait_until_ready

log = structlog.get_logger(__name__)

#: A session at least this long (seconds) that commits no action fails (``TestnetSummary.workload_problem``).
WORKLOAD_GRACE_S = 20.0


@dataclass
class TestnetOptions:
    """Options of ``awnode testnet``. ``nodes`` None means 4 for a new testnet or the existing count;
    ``duration_s`` None means until Ctrl-C; ``directory`` None means a new temporary directory."""

    __test__ = False

    nodes: int | None = None
    duration_s: float | None = None
    directory: Path | None = None
    agents: int = 20
    seed: int = 0
    chain_id: str = DEFAULT_TESTNET_CHAIN_ID
    actions_per_s: float = 20.0
    ready_timeout_s: float = 90.0
    stop_grace_s: float = 10.0
    refresh_s: float = 1.0
    base_port: int | None = None
    """A new testnet's first port (``init_testnet``); None: free ports."""
    node_command: Callable[[TestnetNode], list[str]] | None = None
    """How to start a node (default ``python -m agent_world_tools.cli start --home HOME``); lets a
    node run under a wrapper (``nice``, a profiler) or be replaced by a stand-in."""


@dataclass
class TestnetSummary:
    """The result of a testnet session (``as_dict`` is the ``--json-summary`` document)."""

    __test__ = False

    directory: str
    nodes: int
    duration_s: float
    start_height: int
    end_height: int
    blocks_committed: int
    actions_committed: int
    module_calls: int
    agreement_ok: bool
    checked_heights: int
    compared_nodes: int
    first_mismatch: Mismatch | None
    agreement_error: str | None
    node_failures: dict[str, int | None]
    exit_statuses: dict[str, int | None]
    workload: dict[str, Any]
    interrupted: bool = False
    set_changes: list[dict[str, Any]] = field(default_factory=list)
    """Each validator-set change the chain scheduled (``staking.validator_set_scheduled`` events
    with an addition, a removal or a power change): ``epoch``, ``from_height``, ``added``,
    ``removed``, ``changed`` (validator ids) and ``validators`` (the new set's size)."""

    @property
    def blocks_per_s(self) -> float:
        """Blocks committed per second of the session."""
        return self.blocks_committed / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def actions_per_s(self) -> float:
        """Actions committed per second of the session."""
        return self.actions_committed / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def workload_problem(self) -> str | None:
        """Why the workload did not do its job, or None: a session of at least
        ``WORKLOAD_GRACE_S`` seconds in which no action was committed (every submission refused, no
        agent could be created, nodes unreachable) is a failed run, whatever the agreement says."""
        if self.interrupted or self.duration_s < WORKLOAD_GRACE_S or self.actions_committed > 0:
            return None
        w = self.workload
        refused = ", ".join(f"{k}={v}" for k, v in (w.get("rejected") or {}).items()) or "none"
        return (f"the workload committed no action in {self.duration_s:.0f} s (submitted {w.get('submitted', 0)}, "
                f"accepted {w.get('accepted', 0)}, refused: {refused}, unreachable {w.get('unreachable', 0)}); "
                "see the launcher log, or start from a new --dir")

    @property
    def ok(self) -> bool:
        """True iff the roots agreed at every checked height, no node failed, and the workload
        committed actions (``workload_problem``)."""
        return self.agreement_ok and not self.node_failures and not self.interrupted and self.workload_problem is None

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dictionary."""
        return {
            "ok": self.ok,
            "directory": self.directory,
            "nodes": self.nodes,
            "duration_s": round(self.duration_s, 3),
            "start_height": self.start_height,
            "end_height": self.end_height,
            "blocks_committed": self.blocks_committed,
            "blocks_per_s": round(self.blocks_per_s, 3),
            "actions_committed": self.actions_committed,
            "actions_per_s": round(self.actions_per_s, 3),
            "module_calls": self.module_calls,
            "agreement": {
                "ok": self.agreement_ok,
                "checked_heights": self.checked_heights,
                "compared_nodes": self.compared_nodes,
                "first_mismatch": None
                if self.first_mismatch is None
                else {"height": self.first_mismatch.height, "roots": self.first_mismatch.roots},
                "error": self.agreement_error,
            },
            "node_failures": self.node_failures,
            "exit_statuses": self.exit_statuses,
            "workload": self.workload,
            "interrupted": self.interrupted,
            "workload_problem": self.workload_problem,
            "set_changes": self.set_changes,
        }


def render_summary(summary: TestnetSummary) -> Table:
    """Return the end-of-session summary as a two-column table."""
    table = Table(title="testnet summary", show_header=False)
    table.add_column("what", overflow="fold")
    table.add_column("value", overflow="fold")
    table.add_row("directory", escape(summary.directory))
    table.add_row("duration", f"{summary.duration_s:.1f} s")
    table.add_row(
        "blocks committed",
        f"{summary.blocks_committed} (heights {summary.start_height}->{summary.end_height}), {summary.blocks_per_s:.2f}/s",
    )
    table.add_row("actions committed", f"{summary.actions_committed}, {summary.actions_per_s:.2f}/s")
    table.add_row("module calls", str(summary.module_calls))
    w = summary.workload
    by_code = ", ".join(f"{k}={v}" for k, v in (w.get("rejected") or {}).items())
    table.add_row(
        "workload",
        Text(
            f"agents {w.get('agents_registered', 0)}, submitted {w.get('submitted', 0)}, accepted {w.get('accepted', 0)}, "
        f"refused {w.get('rejected_total', 0)}{f' ({by_code})' if by_code else ''}, retried 503 {w.get('retried_503', 0)}, "
            f"unreachable {w.get('unreachable', 0)}; in the world: applied {w.get('committed', 0)}, "
            f"rejected by the rules {w.get('failed', 0)}; module "
            + ("installed and upgraded" if w.get("module_upgraded") else "installed" if w.get("module_installed")
               else w.get("module_error") or "not installed")
        ),
    )
    if summary.workload_problem is not None:
        table.add_row("workload failed", f"[bold red]{escape(summary.workload_problem)}[/bold red]")
    if summary.first_mismatch is not None:
        roots = ", ".join(f"{k}={_short(v)}" for k, v in summary.first_mismatch.roots.items())
        table.add_row("agreement", f"[bold red]MISMATCH at height {summary.first_mismatch.height}: {roots}[/bold red]")
    elif summary.agreement_error:
        table.add_row("agreement", f"[red]incomplete: {escape(summary.agreement_error)}[/red]")
    else:
        table.add_row(
            "agreement", f"[green]OK[/green] (heights 1..{summary.checked_heights}, {summary.compared_nodes} nodes compared)"
        )
    if summary.node_failures:
        failed = ", ".join(f"{k} (status {v})" for k, v in summary.node_failures.items())
        table.add_row("node failures", f"[red]{failed}[/red]")
    else:
        table.add_row("nodes", "[green]all ran until stopped[/green]")
    for change in summary.set_changes:
        parts = [f"+{_short(v)}" for v in change["added"]] + [f"-{_short(v)}" for v in change["removed"]]
        parts += [f"~{_short(v)}" for v in change["changed"]]
        table.add_row(f"validator set, epoch {change['epoch']}",
                      f"from height {change['from_height']}: {' '.join(parts)} ({change['validators']} validators)")
    if summary.interrupted:
        table.add_row("interrupted", "[yellow]stopped before the final check[/yellow]")
    return table


async def fetch_set_changes(client: NodeClient, epoch_length: int, limit: int = 1000) -> list[dict[str, Any]]:
    """The validator-set changes a node's world scheduled (see ``TestnetSummary.set_changes``),
    oldest first, from its ``staking.validator_set_scheduled`` events (at most ``limit``)."""
    events = await client.events(0, limit, "staking.validator_set_scheduled")
    out = []
    for e in events:
        d = e.get("data", {})
        if d.get("added") or d.get("removed") or d.get("changed"):
            out.append({"epoch": d["epoch"], "from_height": d["epoch"] * epoch_length, "added": d.get("added", []),
                        "removed": d.get("removed", []), "changed": d.get("changed", []),
                        "validators": len(d.get("validators", []))})
    return out


class _Session:
    """State shared by the tasks of one ``run_testnet`` session."""

    def __init__(self, nodes: list[TestnetNode], processes: list[NodeProcess], opts: TestnetOptions, console: Console):
        self.nodes = nodes
        self.processes = {p.name: p for p in processes}
        self.opts = opts
        self.console = console
        self.stop = trio.Event()
        self.aborted = False
        self.stats = WorkloadStats()
        self.views = [NodeView(n.name) for n in nodes]
        self.clients = {n.name: NodeClient(n.rpc_url, timeout_s=3.0) for n in nodes}
        self.checker = AgreementChecker(self.clients)
        self.baseline: dict[str, dict[str, Any]] = {}
        self.final: dict[str, dict[str, Any]] = {}
        self.started_at = 0.0
        self.stopped_at = 0.0
        self.agreement_target = 0
        self.set_changes: list[dict[str, Any]] = []
        self.epoch_length = read_genesis(nodes[0].home.genesis_file).epoch_length if nodes else 1

    async def watch_signals(self, cancel_scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                if not self.stop.is_set():
                    log.info("testnet_stopping", signal=signal.Signals(signum).name)
                    self.stop.set()
                else:
                    log.warning("testnet_aborting", signal=signal.Signals(signum).name)
                    self.aborted = True
                    cancel_scope.cancel()
                    return

    async def poll(self) -> None:
        """Refresh every node's status (concurrently)."""

        async def one(view: NodeView) -> None:
            try:
                view.status = await self.clients[view.name].status()
                view.error = None
                view.samples.append((trio.current_time(), _num(view.status, "actions_committed")))
            except NodeUnreachable:
                view.status = None
                view.error = "unreachable"
            except ClientError as exc:
                view.status = None
                view.error = str(exc)[:60]

        async with trio.open_nursery() as nursery:
            for view in self.views:
                nursery.start_soon(one, view)

    def live_views(self) -> list[NodeView]:
        """Views of nodes whose process runs (all nodes if none were started here)."""
        return [v for v in self.views if v.name not in self.processes or self.processes[v.name].alive()]

    async def check_agreement(self, *, max_heights: int | None) -> None:
        live = [v for v in self.live_views() if v.status is not None]
        if not live:
            return
        self.checker.clients = {v.name: self.clients[v.name] for v in live}
        common = min(_num(v.status, "execution_height") for v in live)
        self.agreement_target = common
        await self.checker.check_up_to(common, max_heights=max_heights)

    def render(self) -> Group:
        elapsed = (trio.current_time() - self.started_at) if self.started_at else 0.0
        return render_live(self.views, self.processes, self.stats, self.checker, elapsed)

    def _print_plain(self) -> None:
        heights = " ".join(f"{v.name}={_num(v.status, 'height')}/{_num(v.status, 'execution_height')}" for v in self.views)
        s = self.stats
        self.console.print(
            f"t={trio.current_time() - self.started_at:.0f}s heights {heights} submitted={s.submitted} "
            f"accepted={s.accepted} rejected={s.rejected_total} agree<= {self.checker.checked_up_to}"
            + (f" MISMATCH@{self.checker.mismatch.height}" if self.checker.mismatch else ""),
            highlight=False,
        )

    async def monitor(self) -> None:
        """Refresh the view about every ``refresh_s`` until stop, the duration elapses, or no node runs."""
        deadline = math.inf if self.opts.duration_s is None else trio.current_time() + self.opts.duration_s
        live: Live | None = None
        if self.console.is_terminal:
            live = Live(self.render(), console=self.console, auto_refresh=False, transient=False)
            live.start()
        last_plain = -math.inf
        try:
            while not self.stop.is_set():
                await self.poll()
                await self.check_agreement(max_heights=64)
                if live is not None:
                    live.update(self.render(), refresh=True)
                elif trio.current_time() - last_plain >= 5.0:
                    self._print_plain()
                    last_plain = trio.current_time()
                if self.processes and not any(p.alive() for p in self.processes.values()):
                    log.error("all_nodes_exited")
                    break
                if trio.current_time() >= deadline:
                    break
                with trio.move_on_at(min(deadline, trio.current_time() + self.opts.refresh_s)):
                    await self.stop.wait()
        finally:
            if live is not None:
                live.stop()

    async def run(self, key_dir: Path, sponsor: AgentKey | None) -> None:
        async with trio.open_nursery() as outer:
            outer.start_soon(self.watch_signals, outer.cancel_scope)
            with trio.CancelScope() as ready_scope:

                async def cancel_on_stop() -> None:
                    await self.stop.wait()
                    ready_scope.cancel()

                async with trio.open_nursery() as waiter:
                    waiter.start_soon(cancel_on_stop)
                    self.baseline = await wait_until_ready(
                        self.nodes, list(self.processes.values()), timeout_s=self.opts.ready_timeout_s
                    )
                    waiter.cancel_scope.cancel()
            if self.stop.is_set():
                self.aborted = True
                outer.cancel_scope.cancel()
                return
            self.console.print(f"all {len(self.nodes)} nodes answer; starting the workload", highlight=False)
            workload_stop = trio.Event()
            self.started_at = trio.current_time()
            async with trio.open_nursery() as workload:
                workload.start_soon(
                    partial(
                        run_workload,
                        [n.rpc_url for n in self.nodes],
                        self.nodes[0].chain_id,
                        agents=self.opts.agents,
                        seed=self.opts.seed,
                        key_dir=key_dir,
                        stop=workload_stop,
                        stats=self.stats,
                        actions_per_s=self.opts.actions_per_s,
                        sponsor=sponsor,
                    )
                )
                await self.monitor()
                workload_stop.set()
            self.stopped_at = trio.current_time()
            self.console.print("workload stopped; checking that all nodes agree", highlight=False)
            await self.poll()
            self.final = {v.name: v.status for v in self.views if v.status is not None}
            await self.check_agreement(max_heights=None)
            live = [v for v in self.live_views() if v.status is not None]
            if live:
                try:
                    self.set_changes = await fetch_set_changes(self.clients[live[0].name], self.epoch_length)
                except ClientError as exc:
                    log.warning("set_changes_unavailable", node=live[0].name, error=str(exc)[:200])
            outer.cancel_scope.cancel()

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            for client in self.clients.values():
                await client.aclose()


def _max_field(statuses: dict[str, dict[str, Any]], key: str) -> int:
    return max((_num(s, key) for s in statuses.values()), default=0)


def prepare_testnet(opts: TestnetOptions, console: Console) -> tuple[Path, list[TestnetNode]]:
    """Create or reuse the testnet directory of ``opts`` and return it with its nodes.

    A missing ``opts.directory`` gets a new temporary directory (its path is printed). Raises
    ConfigError when an existing testnet has a different node count than ``opts.nodes``.
    """
    import tempfile

    if opts.directory is None:
        directory = Path(tempfile.mkdtemp(prefix="agent-world-testnet-"))
        console.print(f"testnet directory: {directory}", highlight=False)
    else:
        directory = Path(opts.directory).expanduser().resolve()
        directory.mkdir(parents=True, exist_ok=True)
    if is_testnet(directory):
        nodes = load_testnet(directory)
        if opts.nodes is not None and opts.nodes != len(nodes):
            raise ConfigError(
                f"{directory} holds a testnet of {len(nodes)} nodes, not {opts.nodes}; "
                "drop --nodes to reuse it, or choose another --dir"
            )
        console.print(f"reusing the {len(nodes)}-node testnet in {directory}", highlight=False)
    else:
        init_testnet(directory, opts.nodes or 4, chain_id=opts.chain_id, base_port=opts.base_port)
        nodes = load_testnet(directory)
        console.print(f"created a {len(nodes)}-node testnet in {directory}", highlight=False)
    for node in nodes:
        p2p = read_config(node.home.config_file).p2p.listen
        console.print(f"  {node.name}: API {node.rpc_url}  P2P {p2p}  (awnode status --rpc {node.rpc_url})",
                      highlight=False)
    console.print(f"viewer: open {nodes[0].rpc_url}/ in a browser (every node serves it)", highlight=False)
    return directory, nodes


def run_testnet(directory: Path, nodes: list[TestnetNode], opts: TestnetOptions, console: Console) -> TestnetSummary:
    """Run a whole ``awnode testnet`` session on the testnet in ``directory`` (from
    ``prepare_testnet``) and return its summary.

    Starts every node (``NodeProcess``), waits
    for their APIs, runs the workload with a live view until Ctrl-C/SIGTERM or ``duration_s``, stops
    the workload, checks agreement of execution state roots over all heights every node executed,
    then stops every node (SIGTERM, SIGKILL after ``stop_grace_s``). Every started process is stopped,
    whatever happens. Raises ConfigError or TestnetError when the testnet cannot be set up or started.
    """
    faucet = faucet_key_file(directory)
    sponsor = AgentKey.load(faucet) if faucet.exists() else None  # a testnet made before faucets: agents must exist
    processes = [NodeProcess(n, command=opts.node_command(n) if opts.node_command else None) for n in nodes]
    session = _Session(nodes, processes, opts, console)
    exit_statuses: dict[str, int | None] = {}
    failures: dict[str, int | None] = {}

    async def main() -> None:
        try:
            await session.run(directory / "workload-keys", sponsor)
        finally:
            await session.close()

    try:
        for proc in processes:
            proc.start()
        try:
            trio.run(main)
        except BaseExceptionGroup as group:
            leaves = list(leaf_exceptions(group))
            if len(leaves) == 1:
                raise leaves[0] from None
            raise
    finally:
        failures = {p.name: p.returncode for p in processes if p.failed()}
        console.print("stopping nodes", highlight=False)
        exit_statuses = stop_all(processes, opts.stop_grace_s)
    checker = session.checker
    complete = not session.aborted and bool(session.final) and checker.checked_up_to >= session.agreement_target
    if session.aborted or not session.final:
        incomplete_reason = "the session was interrupted before the final check"
    else:
        incomplete_reason = (
            f"checked heights 1..{checker.checked_up_to} of 1..{session.agreement_target}: {checker.last_error}"
        )
    duration = max(0.0, session.stopped_at - session.started_at)
    start_height = _max_field(session.baseline, "height")
    end_height = _max_field(session.final, "height")
    return TestnetSummary(
        directory=str(directory),
        nodes=len(nodes),
        duration_s=duration,
        start_height=start_height,
        end_height=end_height,
        blocks_committed=max(0, end_height - start_height),
        actions_committed=max(0, _max_field(session.final, "actions_committed") - _max_field(session.baseline, "actions_committed")),
        module_calls=max(0, _max_field(session.final, "module_calls") - _max_field(session.baseline, "module_calls")),
        agreement_ok=checker.mismatch is None and complete,
        checked_heights=checker.checked_up_to,
        compared_nodes=len(checker.clients),
        first_mismatch=checker.mismatch,
        agreement_error=None if complete or checker.mismatch else incomplete_reason,
        node_failures=failures,
        exit_statuses=exit_statuses,
        workload=session.stats.as_dict(),
        interrupted=session.aborted,
        set_changes=session.set_changes,
    )
