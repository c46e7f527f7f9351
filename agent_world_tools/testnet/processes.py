"""Node processes of a local testnet: ``NodeProcess`` runs one node as
``python -m agent_world_tools.cli start --home HOME`` in its own process group with its output in
``HOME/node.log``, and starts, stops (SIGTERM, then SIGKILL after a grace period), kills, pauses
(SIGSTOP) and resumes (SIGCONT) it; ``stop_all`` stops several at once; ``wait_until_ready`` polls
every node's GET /v1/status until all answer; ``TestnetError`` is what these raise when a node cannot
be started or does not come up.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import structlog
import trio

from agent_world_client.client import ClientError, NodeClient

from .homes import TestnetNode

log = structlog.get_logger(__name__)


class TestnetError(RuntimeError):
    """A testnet could not be created, started or checked; the message says what and where to look."""

    __test__ = False  # not a pytest test class


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
        repo_root = str(Path(__file__).resolve().parents[2])  # agent_world_tools/testnet/ -> the repository
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
