"""The web viewer in a real browser: frame times with 10,000 agents on the map while a node
commits about 10 blocks/s of moves.

A single-validator chain whose genesis holds ``AGENTS`` agents spread over a 100 x 100 grid runs
as a node process (``awnode start``, ``timeout_commit_ms`` 50); a thread submits ``MOVES_PER_S``
signed moves of random agents through ``POST /v1/actions/batch``; headless Chromium (Debian's
``/usr/bin/chromium``, driven by Playwright) opens the viewer the node serves, waits until it has
loaded every agent, asks it to redraw on every animation frame (``awViewer.forceRedraw(true)``)
and reads its frame statistics after ``MEASURE_S`` seconds.

Figures (``python -m benchmarks.viewer``, or the ``viewer`` section of ``benchmarks.run``):
- ``viewer_agents``: agents the page holds (every genesis agent);
- ``viewer_blocks_per_s``: the chain's block rate during the measurement;
- ``viewer_moves_applied``: moves the page applied from the stream during it;
- ``viewer_draw_mean_ms`` / ``viewer_draw_p95_ms`` / ``viewer_draw_max_ms``: time inside the
  page's draw callback per frame;
- ``viewer_frame_interval_p95_ms``: the 95th percentile of the time between animation frames
  (what a person sees as smoothness; 16.7 ms at 60 Hz);
- ``viewer_load_s``: from opening the page to every agent on the map.

The browser helpers here (``browser_page``, ``viewer_ready``) are shared with the viewer's tests.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from agent_world_client.client import ClientError, SyncNodeClient
from agent_world_node import config as cfg
from agent_world_runtime.actions import MoveAgent
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.params import WorldParams
from agent_world_runtime.signer import AgentSigner
from agent_world_tools.testnet import NodeProcess, TestnetNode, pick_free_ports, stop_all, wait_until_ready

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialling out, which a closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
AGENTS = 10_000
GRID = 100
MOVES_PER_S = 200
MEASURE_S = 15.0
CHAIN = "viewer-bench"


def chromium_available() -> bool:
    """True when Debian's chromium and the Playwright package are installed."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return False
    return Path(CHROMIUM).exists()


@contextmanager
def browser_page(width: int = 1400, height: int = 900) -> Iterator[tuple[Any, list[str]]]:
    """A headless Chromium page and a list that collects the page's console errors and warnings
    and its uncaught exceptions (as ``"<type>: <text>"``). Closes the browser on exit."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
            yield page, problems
        finally:
            browser.close()


def viewer_ready(page: Any, timeout_s: float) -> None:
    """Wait until the page's ``awViewer.ready`` (agents loaded, stream open). Raises Playwright's
    TimeoutError after ``timeout_s``."""
    page.wait_for_function("() => window.awViewer && window.awViewer.ready === true", timeout=timeout_s * 1000)


def big_world_home(root: Path, agents: int, *, chain_id: str = CHAIN) -> tuple[TestnetNode, list[AgentSigner]]:
    """A single-validator home at ``root`` whose genesis holds ``agents`` agents (``a0``...,
    keys from their index) spread over a ``GRID`` x ``GRID`` grid at z 0, and their signers."""
    signers = [AgentSigner.from_seed(f"a{i}", i.to_bytes(32, "big"), chain_id) for i in range(agents)]
    genesis_agents = [s.genesis_agent(10**9, 10**9, position=(i % GRID, (i // GRID) % GRID, 0))
                      for i, s in enumerate(signers)]
    vk = SigningKey.generate()
    genesis = cfg.Genesis(chain_id=chain_id, genesis_time_ms=0,
                          validators=[cfg.GenesisValidator("solo", vk.public_key.hex(), 100)],
                          world=WorldParams(harvest_interval=0), agents=genesis_agents)
    conf = cfg.NodeConfig()
    p2p_port, rpc_port = pick_free_ports(2)
    conf.p2p.listen = f"/ip4/127.0.0.1/tcp/{p2p_port}"
    conf.rpc.listen = f"127.0.0.1:{rpc_port}"
    conf.consensus.timeout_commit_ms = 50
    conf.mempool.max_actions = 20_000
    home = cfg.init_home(root, moniker="solo", config=conf, validator_seed=vk.seed, genesis=genesis)
    return TestnetNode(name="solo", home=home, rpc_url=cfg.rpc_url_for(conf.rpc.listen), chain_id=chain_id), signers


class MoveDriver:
    """A thread that submits ``rate`` signed moves per second (batches every 0.1 s) of random
    agents among ``signers`` to one step from where it last sent them, until ``stop()``.
    ``sent`` counts the accepted ones; ``errors`` the batches that failed."""

    def __init__(self, rpc_url: str, signers: list[AgentSigner], positions: list[tuple[int, int, int]], rate: int,
                 seed: int = 7) -> None:
        self._client = SyncNodeClient(rpc_url, timeout_s=10)
        self._signers = signers
        self._positions = list(positions)
        self._nonces = [0] * len(signers)
        self._rate = rate
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="move-driver", daemon=True)
        self.sent = 0
        self.errors = 0

    def start(self) -> MoveDriver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        per_batch = max(1, self._rate // 10)
        while not self._stop.wait(0.1):
            batch = []
            for i in self._rng.sample(range(len(self._signers)), per_batch):
                x, y, z = self._positions[i]
                to = ((x + self._rng.choice((-1, 1))) % GRID, y, z)
                self._positions[i] = to
                self._nonces[i] += 1
                batch.append(self._signers[i].sign(MoveAgent(to=to), nonce=self._nonces[i]))
            try:
                results = self._client.submit_batch(batch)
                self.sent += sum(r.get("status") == "accepted" for r in results)
            except ClientError:
                self.errors += 1


def run_all(record: Callable[[str, float], None], *, agents: int = AGENTS, measure_s: float = MEASURE_S,
            screenshot: Path | None = None) -> None:
    """Measure the viewer (see the module docstring) and ``record`` each figure."""
    if not chromium_available():
        raise RuntimeError(f"the viewer benchmark needs {CHROMIUM} and Playwright: run `make browser` (as root)")
    workdir = Path(tempfile.mkdtemp(prefix="aw-viewer-bench-"))
    node, signers = big_world_home(workdir / "solo", agents)
    proc = NodeProcess(node)
    driver: MoveDriver | None = None
    try:
        proc.start()
        import trio

        trio.run(lambda: wait_until_ready([node], [proc], timeout_s=120))
        positions = [(i % GRID, (i // GRID) % GRID, 0) for i in range(agents)]
        driver = MoveDriver(node.rpc_url, signers, positions, MOVES_PER_S).start()
        status = SyncNodeClient(node.rpc_url).status
        with browser_page() as (page, problems):
            t0 = time.perf_counter()
            page.goto(node.rpc_url + "/")
            viewer_ready(page, 120)
            page.wait_for_function(f"() => window.awViewer.agentCount() >= {agents}", timeout=120_000)
            record("viewer_load_s", time.perf_counter() - t0)
            record("viewer_agents", page.evaluate("window.awViewer.agentCount()"))
            page.evaluate("window.awViewer.forceRedraw(true); window.awViewer.resetFrameStats()")
            moves_before = page.evaluate("window.awViewer.moveLog.length")
            h0, t_start = status()["execution_height"], time.perf_counter()
            time.sleep(measure_s)
            stats = page.evaluate("window.awViewer.frameStats()")
            h1, elapsed = status()["execution_height"], time.perf_counter() - t_start
            moves_applied = page.evaluate("window.awViewer.moveLog.length") - moves_before
            if screenshot is not None:
                page.screenshot(path=str(screenshot))
            record("viewer_blocks_per_s", (h1 - h0) / elapsed)
            record("viewer_moves_applied", moves_applied)
            record("viewer_frames", stats["frames"])
            record("viewer_draw_mean_ms", stats["mean_ms"])
            record("viewer_draw_p95_ms", stats["p95_ms"])
            record("viewer_draw_max_ms", stats["max_ms"])
            record("viewer_frame_interval_p95_ms", stats["interval_p95_ms"])
            record("viewer_console_problems", len(problems))
    finally:
        if driver is not None:
            driver.stop()
        stop_all([proc], grace_s=15)
        shutil.rmtree(workdir, ignore_errors=True)


def screenshots(url: str, out_dir: Path, agent_id: str | None = None) -> list[Path]:
    """Open the viewer at ``url`` (a running node's API) and save ``viewer-map.png`` (the map
    with an agent's page, ``agent_id`` or the first agent) and ``viewer-chain.png``,
    ``viewer-modules.png``, ``viewer-governance.png`` (its other panels) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with browser_page() as (page, problems):
        page.goto(url)
        viewer_ready(page, 60)
        time.sleep(3)  # a few blocks of moves, so that the map shows activity
        agent = agent_id or page.evaluate("window.awViewer.moveLog.length ? window.awViewer.moveLog[0].agent_id : null")
        if agent:
            page.evaluate("(id) => window.awViewer.openAgent(id)", agent)
            time.sleep(1)
        paths.append(out_dir / "viewer-map.png")
        page.screenshot(path=str(paths[-1]))
        for tab, name in (("chain-panel", "chain"), ("modules-panel", "modules"), ("governance-panel", "governance")):
            page.click(f"#tabs button[data-tab={tab}]")
            time.sleep(2.5)
            paths.append(out_dir / f"viewer-{name}.png")
            page.screenshot(path=str(paths[-1]))
        if problems:
            raise RuntimeError(f"the page reported problems: {problems}")
    return paths


def main() -> None:
    """Print the figures (``python -m benchmarks.viewer``), or, with ``--screenshots DIR URL``,
    save screenshots of the viewer of the node at URL in DIR."""
    import sys

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if sys.argv[1:2] == ["--screenshots"] and len(sys.argv) == 4:
        for path in screenshots(sys.argv[3], Path(sys.argv[2])):
            print(f"wrote {path}")
        return

    def record(name: str, value: float) -> None:
        print(f"{name:45s} {value:12.2f}", flush=True)

    run_all(record)


if __name__ == "__main__":
    main()
