"""Local multi-node testnet on loopback: create the homes, run the nodes as processes, drive them with
the scripted workload, watch them, and check that they agree (DESIGN.md, "Interfaces people use").

Pieces, usable on their own (the CLI and the multi-process tests use them):

- ``init_testnet(dir, nodes, chain_id)``: N homes ``dir/node0..N-1`` sharing one genesis (all N are
  validators with equal stake), random keys, free loopback ports, full-mesh ``p2p.peers``.
- ``load_testnet(dir)``: the ``TestnetNode`` descriptions (name, home, RPC URL, chain id) of a testnet.
- ``NodeProcess``: one node as ``python -m agent_world_tools.cli start --home HOME`` with its output in
  ``HOME/node.log``; ``stop()`` sends SIGTERM and SIGKILL after a grace period.
- ``wait_until_ready``: poll every node's GET /v1/status until all answer.
- ``AgreementChecker``: compare ``execution_state_root`` of every height all nodes executed.
- ``run_testnet``: the whole ``awnode testnet`` session, returning a ``TestnetSummary``.
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
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


from agent_world_client.client import ClientError, NodeClient, NodeUnreachable, NotFound
from agent_world_node.config import (
    ConfigError,
    Genesis,
    GenesisValidator,
    Home,
    NodeConfig,
    P2PConfig,
    RPCConfig,
    init_home,
    peer_id_for_seed,
    read_config,
    read_genesis,
    read_key,
)
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.params import WorldParams

from .workload import WorkloadStats, run_workload

log = structlog.get_logger(__name__)

DEFAULT_TESTNET_CHAIN_ID = "agent-world-testnet"
DEFAULT_STAKE = 100
NODE_LOG = "node.log"


class TestnetError(RuntimeError):
    """A testnet could not be created, started or checked; the message says what and where to look."""

    __test__ = False  # not a pytest test class


# --- creating a testnet -------------------------------------------------------------------------


def pick_free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct TCP ports that were free on ``host`` a moment ago.

    Binds ``count`` sockets to port 0 at once (so the kernel gives distinct ports), reads the ports,
    then closes them. Another process may take a port before the node binds it; the node then fails
    to start and says so in its log.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def node_dir(directory: Path, index: int) -> Path:
    """Return the home of node ``index`` in a testnet directory: ``directory/node{index}``."""
    return Path(directory) / f"node{index}"


def is_testnet(directory: Path) -> bool:
    """Return True iff ``directory`` holds a testnet (``node0/config/genesis.json`` exists)."""
    return Home(node_dir(directory, 0)).genesis_file.exists()


# The local testnet's world rules: a harvest yields 20 electricity (default 5), so that the
# scripted economy can pay for a module billed on every move of every agent (each call of the
# example reducer costs its owner 2 electricity and about 2 data).
TESTNET_WORLD = WorldParams(harvest_amount=20)


def init_testnet(
    directory: Path,
    nodes: int,
    *,
    chain_id: str = DEFAULT_TESTNET_CHAIN_ID,
    stake: int = DEFAULT_STAKE,
    config: Callable[[int], NodeConfig] | None = None,
) -> list[Home]:
    """Create ``nodes`` homes ``directory/node0..`` for one chain and return them.

    Every node gets new random keys (``SigningKey.generate``), every node is a validator with
    ``stake``, and all homes hold the identical ``genesis.json``. Ports: a free loopback port for
    libp2p and one for HTTP per node (``pick_free_ports``). ``p2p.peers`` of each node lists every
    other node as ``/ip4/127.0.0.1/tcp/PORT/p2p/<peer id>``. ``config(i)`` may supply a base
    NodeConfig for node i (listen addresses, peers and moniker are overwritten).

    Raises ConfigError if ``nodes`` < 1, or if a home already exists at one of the paths.
    """
    if nodes < 1:
        raise ConfigError(f"--nodes must be at least 1, got {nodes}")
    directory = Path(directory)
    for i in range(nodes):
        if Home(node_dir(directory, i)).validator_key_file.exists():
            raise ConfigError(f"{node_dir(directory, i)}: a node home already exists; choose an empty --dir")
    validator_keys = [SigningKey.generate() for _ in range(nodes)]
    node_seeds = [SigningKey.generate().seed for _ in range(nodes)]
    peer_ids = [peer_id_for_seed(seed) for seed in node_seeds]
    ports = pick_free_ports(2 * nodes)
    p2p_ports, rpc_ports = ports[:nodes], ports[nodes:]
    genesis = Genesis(
        chain_id=chain_id,
        genesis_time_ms=int(time.time() * 1000),
        validators=[
            GenesisValidator(name=f"node{i}", public_key=key.public_key.hex(), stake=stake)
            for i, key in enumerate(validator_keys)
        ],
        world=TESTNET_WORLD,
    )
    homes = []
    for i in range(nodes):
        cfg = config(i) if config is not None else NodeConfig()
        cfg.p2p = P2PConfig(
            listen=f"/ip4/127.0.0.1/tcp/{p2p_ports[i]}",
            peers=[f"/ip4/127.0.0.1/tcp/{p2p_ports[j]}/p2p/{peer_ids[j]}" for j in range(nodes) if j != i],
        )
        cfg.rpc = RPCConfig(listen=f"127.0.0.1:{rpc_ports[i]}", unsafe=cfg.rpc.unsafe)
        homes.append(
            init_home(
                node_dir(directory, i),
                moniker=f"node{i}",
                config=cfg,
                node_seed=node_seeds[i],
                validator_seed=validator_keys[i].seed,
                genesis=genesis,
            )
        )
    log.info("testnet_created", dir=str(directory), nodes=nodes, chain_id=chain_id)
    return homes


def add_testnet_node(directory: Path, *, config: NodeConfig | None = None) -> Home:
    """Add a full node (not a validator: it follows and executes the chain but never votes) to the
    testnet in ``directory`` as the next ``nodeN``, with an empty data directory, the testnet's
    genesis, new keys, free loopback ports, and every existing node as a peer. It syncs from
    genesis when started (a late joiner). Existing nodes do not list it as a peer; it dials them.

    Raises ConfigError if there is no testnet in ``directory``.
    """
    directory = Path(directory)
    existing = load_testnet(directory)
    genesis = read_genesis(existing[0].home.genesis_file)
    peers = []
    for node in existing:
        c = read_config(node.home.config_file)
        peers.append(f"{c.p2p.listen}/p2p/{peer_id_for_seed(read_key(node.home.node_key_file).seed)}")
    index = len(existing)
    node_seed = SigningKey.generate().seed
    p2p_port, rpc_port = pick_free_ports(2)
    cfg = config or NodeConfig()
    cfg.p2p = P2PConfig(listen=f"/ip4/127.0.0.1/tcp/{p2p_port}", peers=peers)
    cfg.rpc = RPCConfig(listen=f"127.0.0.1:{rpc_port}", unsafe=cfg.rpc.unsafe)
    # The validator key file is written (every home has one) but is not in the genesis validator
    # set, so this node never signs a proposal or a vote.
    home = init_home(node_dir(directory, index), moniker=f"node{index}", config=cfg, node_seed=node_seed, genesis=genesis)
    log.info("testnet_node_added", dir=str(directory), node=f"node{index}", peers=len(peers))
    return home


@dataclass(frozen=True)
class TestnetNode:
    """One node of a testnet: ``name`` (moniker), ``home``, ``rpc_url`` (``http://host:port``)."""

    __test__ = False

    name: str
    home: Home
    rpc_url: str
    chain_id: str

    @property
    def log_path(self) -> Path:
        """Where the node's stdout and stderr go: ``HOME/node.log``."""
        return self.home.root / NODE_LOG


def rpc_url_for(listen: str) -> str:
    """Return the URL a local client uses for an ``rpc.listen`` address (``0.0.0.0`` -> ``127.0.0.1``)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"rpc.listen {listen!r} is not host:port")
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def load_testnet(directory: Path) -> list[TestnetNode]:
    """Return the nodes of the testnet in ``directory`` (node0, node1, ... until the first gap).

    Raises ConfigError if there is no testnet there, a config or genesis is invalid, or the nodes'
    genesis files differ.
    """
    directory = Path(directory)
    if not is_testnet(directory):
        raise ConfigError(f"{directory}: no testnet here; create one with `awnode testnet init --dir {directory}`")
    nodes: list[TestnetNode] = []
    first_genesis: bytes | None = None
    i = 0
    while Home(node_dir(directory, i)).config_file.exists():
        home = Home(node_dir(directory, i))
        cfg = read_config(home.config_file)
        genesis = read_genesis(home.genesis_file)
        raw = home.genesis_file.read_bytes()
        if first_genesis is None:
            first_genesis = raw
        elif raw != first_genesis:
            raise ConfigError(f"{home.genesis_file}: differs from node0's genesis; every node of a chain needs the same file")
        nodes.append(TestnetNode(name=cfg.moniker, home=home, rpc_url=rpc_url_for(cfg.rpc.listen), chain_id=genesis.chain_id))
        i += 1
    return nodes


# --- node processes -----------------------------------------------------------------------------


def _parent_death_signal() -> Callable[[], None] | None:
    """Return a preexec function that makes the child get SIGTERM when this process dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``), so a killed launcher does not leave nodes running; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


class NodeProcess:
    """A node daemon running as a child process.

    ``command`` defaults to ``[sys.executable, "-m", "agent_world_tools.cli", "start", "--home", HOME]``.
    The child runs in its own process group (a Ctrl-C in the terminal reaches only the launcher, which
    then stops the nodes in order) and gets SIGTERM if the launcher dies (Linux).
    """

    def __init__(
        self, node: TestnetNode, *, command: list[str] | None = None, env: dict[str, str] | None = None
    ) -> None:
        """``env``: extra environment variables for the child (e.g. ``AGENT_WORLD_FAILPOINTS``)."""
        self.node = node
        self.command = command or [sys.executable, "-m", "agent_world_tools.cli", "start", "--home", str(node.home.root)]
        self.env = dict(env or {})
        self.popen: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self._term_sent = False
        self.starts = 0

    @property
    def name(self) -> str:
        """The node's name."""
        return self.node.name

    def start(self) -> None:
        """Start the process (again, after it exited) with output appended to ``HOME/node.log``.
        Raises TestnetError if it is already running or cannot be started."""
        if self.alive():
            raise TestnetError(f"{self.name} is already running (pid {self.pid})")
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        repo_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH", "")) if p)
        self.node.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.node.log_path, "ab") as out:
            try:
                self.popen = subprocess.Popen(
                    self.command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    process_group=0,
                    preexec_fn=_parent_death_signal(),
                )
            except OSError as exc:
                raise TestnetError(f"cannot start {self.name} ({' '.join(self.command)}): {exc}") from None
        self.stopping = False
        self._term_sent = False
        self.starts += 1
        log.info("node_started", node=self.name, pid=self.popen.pid, home=str(self.node.home.root))

    @property
    def pid(self) -> int | None:
        """The process id, or None if never started."""
        return self.popen.pid if self.popen else None

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), or None while running or never started."""
        return self.popen.poll() if self.popen else None

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen is not None and self.popen.poll() is None

    def failed(self) -> bool:
        """True if the process exited without being asked to stop."""
        return self.popen is not None and not self.stopping and self.popen.poll() is not None

    def terminate(self) -> None:
        """Send SIGTERM once (a daemon may treat a second one as "hurry"); no-op if not running."""
        if self.popen is None:
            return
        self.stopping = True
        if self.popen.poll() is None and not self._term_sent:
            self._term_sent = True
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.send_signal(signal.SIGCONT)  # a paused node must wake to handle it
            except ProcessLookupError:
                pass

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM the process, wait up to ``grace_s`` seconds, then SIGKILL it. Returns its exit status
        (None if it was never started). Safe to call more than once."""
        if self.popen is None:
            return None
        self.terminate()
        if self.popen.poll() is None:
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("node_stop_timeout_killing", node=self.name, grace_s=grace_s)
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def kill(self) -> int | None:
        """SIGKILL the process at once (a crash, as ``kill -9``) and reap it. Returns its exit status."""
        if self.popen is None:
            return None
        self.stopping = True
        if self.popen.poll() is None:
            self.popen.kill()
        return self.popen.wait()

    def pause(self) -> None:
        """Freeze the process with SIGSTOP (a stalled VM or a long GC pause, as CometBFT's e2e
        "pause" perturbation). Raises TestnetError if it is not running."""
        self._signal(signal.SIGSTOP, "pause")

    def resume(self) -> None:
        """Continue a paused process with SIGCONT. Raises TestnetError if it is not running."""
        self._signal(signal.SIGCONT, "resume")

    def _signal(self, sig: signal.Signals, what: str) -> None:
        if not self.alive():
            raise TestnetError(f"cannot {what} {self.name}: it is not running")
        assert self.popen is not None
        self.popen.send_signal(sig)

    def log_tail(self, lines: int = 20) -> str:
        """Return the last ``lines`` lines of the node's log (empty if none)."""
        try:
            with open(self.node.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def stop_all(processes: list[NodeProcess], grace_s: float = 10.0) -> dict[str, int | None]:
    """SIGTERM every process at once, wait up to ``grace_s`` in total, SIGKILL the rest; return exit
    statuses by node name."""
    for proc in processes:
        proc.terminate()
    deadline = time.monotonic() + grace_s
    codes = {}
    for proc in processes:
        codes[proc.name] = proc.stop(max(0.0, deadline - time.monotonic()))
    return codes


async def wait_until_ready(
    nodes: list[TestnetNode],
    processes: list[NodeProcess] | None = None,
    *,
    timeout_s: float = 60.0,
    poll_interval_s: float = 0.25,
) -> dict[str, dict[str, Any]]:
    """Poll GET /v1/status of every node until all answer; return the statuses by node name.

    Raises TestnetError if a process exits first (with the tail of its log), if a node answers for a
    different chain or moniker (another process holds its port), or after ``timeout_s`` seconds.
    """
    procs = {p.name: p for p in processes or []}
    statuses: dict[str, dict[str, Any]] = {}
    clients = {n.name: NodeClient(n.rpc_url, timeout_s=2.0) for n in nodes}
    try:
        with trio.move_on_after(timeout_s):
            while len(statuses) < len(nodes):
                for node in nodes:
                    if node.name in statuses:
                        continue
                    proc = procs.get(node.name)
                    if proc is not None and not proc.alive():
                        raise TestnetError(
                            f"{node.name} exited with status {proc.returncode} before its API answered; "
                            f"last lines of {node.log_path}:\n{proc.log_tail()}"
                        )
                    try:
                        status = await clients[node.name].status()
                    except ClientError:
                        continue
                    if status.get("chain_id") != node.chain_id or status.get("moniker", node.name) != node.name:
                        raise TestnetError(
                            f"{node.rpc_url} answers as {status.get('moniker')!r} on chain {status.get('chain_id')!r}, "
                            f"not {node.name} on {node.chain_id!r}: another process holds the port; stop it or "
                            "create a new testnet"
                        )
                    statuses[node.name] = status
                if len(statuses) < len(nodes):
                    await trio.sleep(poll_interval_s)
    finally:
        with trio.CancelScope(shield=True):
            for client in clients.values():
                await client.aclose()
    missing = [n for n in nodes if n.name not in statuses]
    if missing:
        raise TestnetError(
            "no answer within {:g} s from {}; see {}".format(
                timeout_s, ", ".join(f"{n.name} ({n.rpc_url})" for n in missing), ", ".join(str(n.log_path) for n in missing)
            )
        )
    return statuses


def leaf_exceptions(exc: BaseException):
    """Yield the non-group exceptions inside ``exc`` (``exc`` itself if it is not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaf_exceptions(inner)
    else:
        yield exc


# --- agreement ----------------------------------------------------------------------------------


@dataclass
class Mismatch:
    """The first height at which nodes disagree: ``roots`` maps node name to its
    execution_state_root (None when the node had no record for that height)."""

    height: int
    roots: dict[str, str | None]


class AgreementChecker:
    """Checks, height by height from 1, that every node reports the same ``execution_state_root``
    (GET /v1/execution/{h}). Incremental: ``check_up_to`` continues from ``checked_up_to``.

    After a mismatch it stops advancing; ``mismatch`` holds the first bad height. A node without a
    record for a height it should have executed counts as a mismatch (root None). Transport errors
    leave ``checked_up_to`` where it was and are counted in ``errors``.
    """

    def __init__(self, clients: dict[str, NodeClient], *, batch: int = 16) -> None:
        self.clients = clients
        self.batch = batch
        self.checked_up_to = 0
        self.mismatch: Mismatch | None = None
        self.errors = 0
        self.last_error: str | None = None

    async def _roots_at(self, height: int) -> dict[str, str | None]:
        roots: dict[str, str | None] = {}

        async def fetch(name: str, client: NodeClient) -> None:
            try:
                record = await client.execution(height)
                root = record.get("execution_state_root")
                roots[name] = root if isinstance(root, str) else None
            except NotFound:
                roots[name] = None

        async with trio.open_nursery() as nursery:
            for name, client in self.clients.items():
                nursery.start_soon(fetch, name, client)
        return roots

    async def check_up_to(self, height: int, *, max_heights: int | None = None) -> bool:
        """Check heights ``checked_up_to + 1 .. height`` (at most ``max_heights`` of them now).
        Returns False iff a mismatch is known. Never raises for node errors."""
        if self.mismatch is not None:
            return False
        target = height if max_heights is None else min(height, self.checked_up_to + max_heights)
        while self.checked_up_to < target:
            heights = range(self.checked_up_to + 1, min(target, self.checked_up_to + self.batch) + 1)
            results: dict[int, dict[str, str | None]] = {}
            failure: list[BaseException] = []
            try:
                async with trio.open_nursery() as nursery:

                    async def one(h: int) -> None:
                        results[h] = await self._roots_at(h)

                    for h in heights:
                        nursery.start_soon(one, h)
            except* ClientError as group:
                failure.extend(leaf_exceptions(group))
            if failure:
                self.errors += 1
                self.last_error = str(failure[0])
                return True
            for h in heights:
                roots = results[h]
                if None in roots.values() or len(set(roots.values())) > 1:
                    self.mismatch = Mismatch(height=h, roots=roots)
                    log.error("execution_state_roots_disagree", height=h, roots=roots)
                    return False
                self.checked_up_to = h
        return True


# --- the testnet session ------------------------------------------------------------------------


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
    node_command: Callable[[TestnetNode], list[str]] | None = None
    """How to start a node (default ``python -m agent_world_tools.cli start --home HOME``); lets a
    node run under a wrapper (``nice``, a profiler) or be replaced by a stand-in."""


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

    @property
    def blocks_per_s(self) -> float:
        """Blocks committed per second of the session."""
        return self.blocks_committed / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def actions_per_s(self) -> float:
        """Actions committed per second of the session."""
        return self.actions_committed / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        """True iff the roots agreed at every checked height and no node failed."""
        return self.agreement_ok and not self.node_failures and not self.interrupted

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
        }


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


def render_summary(summary: TestnetSummary) -> Table:
    """Return the end-of-session summary as a two-column table."""
    table = Table(title="testnet summary", show_header=False)
    table.add_column("what")
    table.add_column("value")
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
        f"rejected {w.get('rejected_total', 0)}{f' ({by_code})' if by_code else ''}, retried 503 {w.get('retried_503', 0)}, "
            f"unreachable {w.get('unreachable', 0)}, "
            f"module {'installed' if w.get('module_installed') else w.get('module_error') or 'not installed'}"
        ),
    )
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
    if summary.interrupted:
        table.add_row("interrupted", "[yellow]stopped before the final check[/yellow]")
    return table


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

    async def run(self, key_dir: Path) -> None:
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
                    )
                )
                await self.monitor()
                workload_stop.set()
            self.stopped_at = trio.current_time()
            self.console.print("workload stopped; checking that all nodes agree", highlight=False)
            await self.poll()
            self.final = {v.name: v.status for v in self.views if v.status is not None}
            await self.check_agreement(max_heights=None)
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
        init_testnet(directory, opts.nodes or 4, chain_id=opts.chain_id)
        nodes = load_testnet(directory)
        console.print(f"created a {len(nodes)}-node testnet in {directory}", highlight=False)
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
    processes = [NodeProcess(n, command=opts.node_command(n) if opts.node_command else None) for n in nodes]
    session = _Session(nodes, processes, opts, console)
    exit_statuses: dict[str, int | None] = {}
    failures: dict[str, int | None] = {}

    async def main() -> None:
        try:
            await session.run(directory / "workload-keys")
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
    )
