"""The web viewer in a real headless browser (Debian's chromium driven by Playwright).

1. On a real 3-node testnet (node processes on loopback): the page each node serves at ``/``
   loads with no console error or warning, holds every registered agent, moves an agent once its
   move is committed, opens an agent's page with its last action's outcome (applied, and a
   rejection with the world's reason), and after node0 (the node the page talks to) is stopped and
   started again, says so (``reconnecting``), comes back ``live`` and follows new moves.
2. With 10,000 agents on a single node committing moves at about 10 blocks/s: the page holds
   every agent, applies the moves from the stream and keeps drawing (``benchmarks/viewer.py``
   measures the frame times; no test here asserts a time).

Set ``AGENT_WORLD_SCREENSHOT_DIR`` to keep the screenshots (the README's come from there).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import structlog
import trio

from agent_world_client.client import AgentKey, SyncNodeClient
from agent_world_runtime import compute_action_id
from agent_world_runtime.actions import MoveAgent
from agent_world_runtime.signer import AgentSigner
from agent_world_tools.testnet import NodeProcess, faucet_key_file, init_testnet, load_testnet, stop_all, wait_until_ready
from benchmarks.viewer import GRID, MoveDriver, big_world_home, browser_page, chromium_available, viewer_ready

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not chromium_available(), reason="needs /usr/bin/chromium and Playwright (make browser)"),
]

GUARD_MS = 60_000  # a hang guard for each wait in the page, not a timing check


@pytest.fixture(autouse=True)
def _quiet_structlog():
    import logging

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    yield
    structlog.reset_defaults()


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    keep = os.environ.get("AGENT_WORLD_SCREENSHOT_DIR")
    path = (Path(keep) if keep else tmp_path) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    return path


def _position_is(page, agent_id: str, to: tuple[int, int, int]) -> None:
    page.wait_for_function(
        "([id, to]) => { const p = window.awViewer.agentPosition(id);"
        " return !!p && p[0] === to[0] && p[1] === to[1] && p[2] === to[2]; }",
        arg=[agent_id, list(to)], timeout=GUARD_MS)


def _commit(client: SyncNodeClient, signed) -> dict:
    client.submit(signed)
    return client.wait_action(compute_action_id(signed).hex(), timeout_s=60)


def test_the_viewer_on_a_real_testnet(tmp_path):
    directory = tmp_path / "tn"
    init_testnet(directory, 3)
    nodes = load_testnet(directory)
    procs = [NodeProcess(n) for n in nodes]
    faucet_key = AgentKey.load(faucet_key_file(directory))
    try:
        for p in procs:
            p.start()
        trio.run(lambda: wait_until_ready(nodes, procs, timeout_s=90))
        chain = nodes[0].chain_id
        client = SyncNodeClient(nodes[1].rpc_url, timeout_s=10)  # actions go through node1; the page reads node0
        faucet = AgentSigner("faucet", faucet_key.key, chain)
        faucet.next_nonce = client.agent("faucet")["last_nonce"] + 1
        alice = AgentSigner.from_seed("alice", b"a" * 32, chain)
        bob = AgentSigner.from_seed("bob", b"b" * 32, chain)
        for new, electricity in ((alice, 1_000), (bob, 40)):
            assert _commit(client, faucet.create_agent(new, electricity=electricity, data=100))["outcome"] == "applied"

        with browser_page() as (page, problems):
            page.goto(nodes[0].rpc_url + "/")
            viewer_ready(page, 60)
            agents, _ = client.agents(limit=1000)
            ids = {a["agent_id"] for a in agents}
            assert {"faucet", "alice", "bob"} <= ids  # and the validators' operators
            assert page.evaluate("window.awViewer.agentCount()") == len(ids)
            assert page.evaluate("window.awViewer.agentPosition('alice')") == [0, 0, 0]
            assert page.inner_text("#conn-status").strip() == "live"

            move = alice.sign(MoveAgent(to=(3, 2, 0)))
            outcome = _commit(client, move)
            committed_at = time.monotonic()
            _position_is(page, "alice", (3, 2, 0))
            print(f"move shown {time.monotonic() - committed_at:.2f} s after the client saw it executed "
                  f"(height {outcome['height']})")
            log = page.evaluate("window.awViewer.moveLog")
            assert any(e["agent_id"] == "alice" and list(e["to"]) == [3, 2, 0] and e["height"] == outcome["height"]
                       for e in log), log

            far = bob.sign(MoveAgent(to=(90, 0, 0)))  # 90 steps cost 90 electricity; bob has less
            rejected = _commit(client, far)
            assert rejected["outcome"] == "rejected"
            page.evaluate("window.awViewer.openAgent('bob')")
            assert page.get_attribute("#agent-panel", "data-agent-id") == "bob"
            page.wait_for_function("() => /rejected/.test(document.querySelector('#last-action-outcome').innerText)",
                                   timeout=GUARD_MS)
            page.evaluate("window.awViewer.openAgent('alice')")
            page.wait_for_function("() => /applied/.test(document.querySelector('#last-action-outcome').innerText)",
                                   timeout=GUARD_MS)
            assert "move_agent" in page.inner_text("#last-action-outcome")
            _screenshot(page, tmp_path, "viewer-agent.png")
            assert problems == [], problems

            # node0 goes away and comes back: the page says so, reconnects and follows new moves
            procs[0].stop(grace_s=15)
            page.wait_for_function("() => window.awViewer.connected === false", timeout=GUARD_MS)
            assert page.inner_text("#conn-status").strip() == "reconnecting"
            procs[0].start()
            trio.run(lambda: wait_until_ready(nodes[:1], procs[:1], timeout_s=90))
            page.wait_for_function("() => window.awViewer.connected === true", timeout=GUARD_MS)
            assert page.inner_text("#conn-status").strip() == "live"
            _commit(client, alice.sign(MoveAgent(to=(4, 2, 0))))
            _position_is(page, "alice", (4, 2, 0))
            # the browser itself logs the refused connections while node0 was down; the page's own
            # code must not have failed
            assert not [p for p in problems if p.startswith("pageerror")], problems
    finally:
        stop_all(procs, grace_s=15)


def test_ten_thousand_agents_on_the_map(tmp_path):
    agents = 10_000
    node, signers = big_world_home(tmp_path / "solo", agents)
    proc = NodeProcess(node)
    driver = None
    try:
        proc.start()
        trio.run(lambda: wait_until_ready([node], [proc], timeout_s=120))
        with browser_page() as (page, problems):
            page.goto(node.rpc_url + "/")
            viewer_ready(page, 120)
            page.wait_for_function(f"() => window.awViewer.agentCount() >= {agents}", timeout=120_000)
            assert page.evaluate("window.awViewer.agentCount()") == agents
            positions = [(i % GRID, (i // GRID) % GRID, 0) for i in range(agents)]
            driver = MoveDriver(node.rpc_url, signers, positions, rate=200).start()
            page.evaluate("window.awViewer.forceRedraw(true); window.awViewer.resetFrameStats()")
            page.wait_for_function("() => window.awViewer.moveLog.length >= 200", timeout=GUARD_MS)
            driver.stop()
            stats = page.evaluate("window.awViewer.frameStats()")
            print("frame stats with 10,000 agents (not a quiet machine):", stats)
            assert stats["frames"] > 0 and stats["mean_ms"] > 0
            # every move the page applied is where the node says the agent is, once the moves stop
            client = SyncNodeClient(node.rpc_url, timeout_s=10)
            time.sleep(2)
            moved = {e["agent_id"] for e in page.evaluate("window.awViewer.moveLog")}
            for agent_id in sorted(moved)[:20]:
                want = client.agent(agent_id)["position"]
                page.wait_for_function("([id, to]) => { const p = window.awViewer.agentPosition(id);"
                                       " return !!p && p.join() === to.join(); }", arg=[agent_id, want],
                                       timeout=GUARD_MS)
            _screenshot(page, tmp_path, "viewer-10k.png")
            assert problems == [], problems
    finally:
        if driver is not None:
            driver.stop()
        stop_all([proc], grace_s=15)
