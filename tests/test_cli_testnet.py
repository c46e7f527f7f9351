"""The testnet launcher without the real daemon: agreement checking (MockTransport), node processes
(stop, SIGKILL after the grace period, failure detection), readiness, and whole `awnode testnet`
sessions against a small stand-in node program that serves the status/execution API on loopback."""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import textwrap

import httpx
import pytest
import structlog
import trio
from rich.console import Console
from typer.testing import CliRunner

from agent_world_client.client import NodeClient
from agent_world_tools import cli
from agent_world_tools.testnet import (
    AgreementChecker,
    NodeProcess,
    TestnetError,
    TestnetOptions,
    init_testnet,
    load_testnet,
    render_live,
    render_summary,
    run_testnet,
    wait_until_ready,
)
from agent_world_tools.workload import WorkloadStats

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _reset_structlog():
    yield
    structlog.reset_defaults()


# --- agreement ------------------------------------------------------------------------------------


def roots_node(top: int, *, bad_from: int | None = None, missing: int | None = None, fail: bool = False):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        if fail:
            raise httpx.ConnectError("refused", request=request)
        h = int(request.url.path.rsplit("/", 1)[1])
        calls.append(h)
        if h > top or h == missing:
            return httpx.Response(404, json={"error": "not executed"})
        root = f"{h:064x}" if bad_from is None or h < bad_from else f"{h + 1:064x}"
        return httpx.Response(200, json={"height": h, "execution_state_root": root})

    return handler, calls


def checker_for(*handlers, batch: int = 4) -> AgreementChecker:
    clients = {f"node{i}": NodeClient(f"http://n{i}", transport=httpx.MockTransport(h)) for i, h in enumerate(handlers)}
    return AgreementChecker(clients, batch=batch)


def test_agreement_ok_checks_every_height_once_and_incrementally():
    (h0, c0), (h1, c1), (h2, _) = roots_node(50), roots_node(50), roots_node(50)
    checker = checker_for(h0, h1, h2)

    async def go():
        assert await checker.check_up_to(10, max_heights=3)
        assert checker.checked_up_to == 3
        assert await checker.check_up_to(10)
        assert checker.checked_up_to == 10
        assert await checker.check_up_to(12)

    trio.run(go)
    assert checker.checked_up_to == 12 and checker.mismatch is None
    assert sorted(c0) == list(range(1, 13)) and sorted(c1) == list(range(1, 13))


def test_agreement_reports_the_first_mismatching_height():
    checker = checker_for(roots_node(30)[0], roots_node(30, bad_from=7)[0], roots_node(30)[0])

    async def go():
        return await checker.check_up_to(30)

    assert trio.run(go) is False
    assert checker.mismatch is not None and checker.mismatch.height == 7
    assert checker.checked_up_to == 6
    roots = checker.mismatch.roots
    assert roots["node0"] == roots["node2"] == f"{7:064x}" and roots["node1"] == f"{8:064x}"
    assert trio.run(go) is False  # stays failed


def test_a_missing_record_is_a_mismatch():
    checker = checker_for(roots_node(30)[0], roots_node(30, missing=5)[0])
    trio.run(checker.check_up_to, 10)
    assert checker.mismatch is not None and checker.mismatch.height == 5 and checker.mismatch.roots["node1"] is None


def test_unreachable_node_leaves_the_check_incomplete_not_failed():
    checker = checker_for(roots_node(30)[0], roots_node(30, fail=True)[0])
    assert trio.run(checker.check_up_to, 10) is True
    assert checker.checked_up_to == 0 and checker.mismatch is None
    assert checker.errors == 1 and "cannot reach node" in checker.last_error


# --- rendering --------------------------------------------------------------------------------------


def test_live_view_and_summary_render_the_numbers():
    from agent_world_tools.testnet import Mismatch, NodeView, TestnetSummary

    checker = checker_for(roots_node(1)[0])
    checker.checked_up_to = 41
    view = NodeView("node0", status={"height": 42, "execution_height": 41, "execution_state_root": "ab" * 32, "peer_count": 3})
    view.samples.extend([(0.0, 10), (2.0, 30)])
    stats = WorkloadStats(submitted=9, accepted=7, rejected={"nonce_replayed": 2})
    console = Console(record=True, width=250)
    console.print(render_live([view, NodeView("node1", error="unreachable")], {}, stats, checker, 12.0))
    text = console.export_text()
    assert "42" in text and "abababababab" in text and "10.0" in text and "unreachable" in text
    assert "nonce_replayed=2" in text and "heights 1..41" in text

    summary = TestnetSummary(
        directory="/tmp/x", nodes=4, duration_s=10.0, start_height=0, end_height=20, blocks_committed=20,
        actions_committed=150, module_calls=30, agreement_ok=False, checked_heights=6, compared_nodes=2,
        first_mismatch=Mismatch(7, {"node0": "aa" * 32, "node1": "bb" * 32}), agreement_error=None,
        node_failures={}, exit_statuses={}, workload=stats.as_dict(),
    )
    console = Console(record=True, width=250)
    console.print(render_summary(summary))
    text = console.export_text()
    assert "MISMATCH at height 7" in text and "2.00/s" in text and "15.00/s" in text
    assert summary.ok is False and summary.as_dict()["agreement"]["first_mismatch"]["height"] == 7


# --- processes, readiness and whole sessions with a stand-in node -------------------------------------

STAND_IN = textwrap.dedent(
    '''
    """Stand-in node: serves /v1/status and /v1/execution/{h} from the home's config; 5 blocks/s.
    Agents: the genesis ones, and those a create_agent POSTed here creates (visible at once; each
    creation is appended to HOME/created.jsonl as {"sponsor", "agent_id"})."""
    import base64, hashlib, json, os, signal, sys, threading, time, tomllib
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from pathlib import Path

    home = Path(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "ok"
    cfg = tomllib.loads((home / "config" / "config.toml").read_text())
    genesis = json.loads((home / "config" / "genesis.json").read_text())
    chain_id = genesis["chain_id"]
    agents = {a["agent_id"]: {"agent_id": a["agent_id"], "public_key": a["public_key"], "last_nonce": 0}
              for a in genesis.get("agents", [])}
    host, port = cfg["rpc"]["listen"].rsplit(":", 1)
    t0 = time.monotonic()
    dying = []  # mode "die": exit with status 3 one second after the first status answer

    def height():
        return 1 + int((time.monotonic() - t0) * 5)

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            h = height()
            if self.path == "/v1/status":
                if mode == "die" and not dying:
                    dying.append(threading.Timer(1.0, lambda: os._exit(3)))
                    dying[0].start()
                return self.send(200, {"chain_id": chain_id, "moniker": cfg["moniker"], "height": h,
                    "execution_height": h, "execution_state_root": "00" * 32, "peer_count": 3,
                    "mempool_size": 0, "actions_committed": 3 * h, "module_calls": h, "peers": []})
            if self.path.startswith("/v1/execution/"):
                q = int(self.path.rsplit("/", 1)[1])
                if q > h:
                    return self.send(404, {"error": "not executed"})
                tag = f"bad{q}" if mode == "mismatch" and q >= 3 else str(q)
                return self.send(200, {"height": q, "execution_state_root": hashlib.sha256(tag.encode()).hexdigest()})
            if self.path == "/v1/modules":
                return self.send(200, {"artifacts": [], "instances": []})
            if self.path.startswith("/v1/agents/") and self.path.rsplit("/", 1)[1] in agents:
                return self.send(200, agents[self.path.rsplit("/", 1)[1]])
            return self.send(404, {"error": "unknown", "code": "unknown_agent"})

        def do_POST(self):
            signed = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            body = signed.get("body", {}) if isinstance(signed, dict) else {}
            action = body.get("action", {})
            if action.get("type") == "create_agent" and body.get("agent_id") in agents:
                body_signer = agents[body["agent_id"]]
                body_signer["last_nonce"] = max(body_signer["last_nonce"], body["nonce"])
                new = action["agent_id"]
                agents.setdefault(new, {"agent_id": new, "public_key": base64.b64decode(action["public_key"]).hex(),
                                        "last_nonce": 0})
                with open(home / "created.jsonl", "a") as f:
                    f.write(json.dumps({"sponsor": body["agent_id"], "agent_id": new}) + "\\n")
            return self.send(202, {"status": "accepted", "action_id": "00" * 32})

    server = ThreadingHTTPServer((host, int(port)), H)
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=server.shutdown).start())
    print("stand-in listening", flush=True)
    server.serve_forever()
    '''
)


@pytest.fixture
def stand_in(tmp_path):
    path = tmp_path / "stand_in.py"
    path.write_text(STAND_IN)
    return path


def command(stand_in, modes=None):
    modes = modes or {}
    return lambda node: [sys.executable, str(stand_in), str(node.home.root), modes.get(node.name, "ok")]


def test_node_process_stop_is_graceful_and_kills_after_the_grace_period(tmp_path, stand_in):
    init_testnet(tmp_path / "tn", 2)
    n0, n1 = load_testnet(tmp_path / "tn")
    p0 = NodeProcess(n0, command=command(stand_in)(n0))
    p1 = NodeProcess(n1, command=command(stand_in, {"node1": "ignore-term"})(n1))
    try:
        p0.start()
        p1.start()
        trio.run(lambda: wait_until_ready([n0, n1], [p0, p1], timeout_s=30))
        assert p0.alive() and p1.alive() and not p0.failed()
        assert p0.stop(grace_s=10) == 0
        assert p1.stop(grace_s=0.5) == -signal.SIGKILL
        assert not p0.failed() and not p1.failed()
        assert "stand-in listening" in p0.log_tail()
        assert n0.log_path == n0.home.root / "node.log"
    finally:
        p0.kill()
        p1.kill()


def test_wait_until_ready_reports_an_early_exit_with_the_log(tmp_path):
    init_testnet(tmp_path / "tn", 1)
    (n0,) = load_testnet(tmp_path / "tn")
    proc = NodeProcess(n0, command=[sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"])
    try:
        proc.start()
        with pytest.raises(TestnetError) as info:
            trio.run(lambda: wait_until_ready([n0], [proc], timeout_s=30))
        assert "node0 exited with status 3" in str(info.value) and "boom: bad config" in str(info.value)
        assert proc.failed()
    finally:
        proc.kill()


def test_wait_until_ready_refuses_a_node_of_another_chain(tmp_path, stand_in):
    init_testnet(tmp_path / "a", 1, chain_id="chain-a")
    init_testnet(tmp_path / "b", 1, chain_id="chain-b")
    (a0,) = load_testnet(tmp_path / "a")
    (b0,) = load_testnet(tmp_path / "b")
    impostor = dataclasses.replace(b0, rpc_url=a0.rpc_url)
    proc = NodeProcess(a0, command=command(stand_in)(a0))
    try:
        proc.start()
        with pytest.raises(TestnetError, match="another process holds the port"):
            trio.run(lambda: wait_until_ready([impostor], timeout_s=30))
    finally:
        proc.stop(5)


def test_wait_until_ready_times_out_naming_the_node(tmp_path):
    init_testnet(tmp_path / "tn", 1)
    (n0,) = load_testnet(tmp_path / "tn")
    with pytest.raises(TestnetError, match=r"no answer within 0.5 s from node0"):
        trio.run(lambda: wait_until_ready([n0], timeout_s=0.5))


def run_session(tmp_path, stand_in, modes=None, **kw):
    directory = tmp_path / "tn"
    init_testnet(directory, 3)
    nodes = load_testnet(directory)
    opts = TestnetOptions(duration_s=2.0, agents=3, actions_per_s=10, node_command=command(stand_in, modes), **kw)
    console = Console(record=True, width=250)
    return run_testnet(directory, nodes, opts, console), console.export_text(), nodes


def test_session_ok(tmp_path, stand_in):
    summary, text, nodes = run_session(tmp_path, stand_in)
    assert summary.ok, summary.as_dict()
    assert summary.agreement_ok and summary.first_mismatch is None
    assert summary.checked_heights >= summary.end_height - 10 and summary.checked_heights > 0
    assert summary.compared_nodes == 3
    assert summary.blocks_committed > 0 and summary.actions_committed == 3 * summary.blocks_committed
    assert summary.exit_statuses == {"node0": 0, "node1": 0, "node2": 0}
    assert summary.workload["submitted"] > 0
    assert "all 3 nodes answer" in text and "stopping nodes" in text
    # the testnet's faucet created the workload's agents (agent i through node i % 3)
    assert (tmp_path / "tn" / "faucet.json").exists()
    created = [json.loads(line) for n in nodes if (n.home.root / "created.jsonl").exists()
               for line in (n.home.root / "created.jsonl").read_text().splitlines()]
    assert created and {c["sponsor"] for c in created} == {"faucet"}, created
    assert summary.workload["by_kind"]["create_agent"] >= 1
    assert summary.workload["agents_registered"] > 0 and "no_sponsor" not in summary.workload["rejected"]


def test_session_mismatch_is_reported(tmp_path, stand_in):
    summary, _, _ = run_session(tmp_path, stand_in, {"node2": "mismatch"})
    assert not summary.ok and summary.first_mismatch is not None
    assert summary.first_mismatch.height == 3
    assert summary.as_dict()["agreement"]["first_mismatch"]["height"] == 3


def test_session_reports_a_failed_node_and_kills_a_stuck_one(tmp_path, stand_in):
    summary, _, _ = run_session(tmp_path, stand_in, {"node1": "die", "node2": "ignore-term"}, stop_grace_s=3.0)
    assert not summary.ok
    assert summary.node_failures == {"node1": 3}
    assert summary.compared_nodes == 2  # the dead node is left out of the final comparison
    assert summary.exit_statuses["node2"] == -signal.SIGKILL and summary.exit_statuses["node0"] == 0


def test_cli_testnet_writes_the_json_summary_and_sets_the_exit_code(tmp_path, stand_in, monkeypatch):
    real = cli.run_testnet
    modes: dict[str, str] = {}

    def with_stand_in(directory, nodes, opts, console):
        return real(directory, nodes, dataclasses.replace(opts, node_command=command(stand_in, modes)), console)

    monkeypatch.setattr(cli, "run_testnet", with_stand_in)
    runner = CliRunner()
    out = tmp_path / "summary.json"
    args = ["testnet", "--nodes", "3", "--dir", str(tmp_path / "tn"), "--duration", "2", "--agents", "2", "--json-summary", str(out)]
    ok = runner.invoke(cli.app, args)
    assert ok.exit_code == 0, ok.output + ok.stderr
    data = json.loads(out.read_text())
    assert data["ok"] is True and data["nodes"] == 3 and data["agreement"]["ok"] is True
    assert "testnet summary" in ok.output and "OK" in ok.output
    assert (tmp_path / "tn" / "testnet.log").exists()

    modes["node1"] = "mismatch"
    bad = runner.invoke(cli.app, args[:-2] + ["--json-summary", str(out)])  # reuses the testnet
    assert bad.exit_code == 1
    assert json.loads(out.read_text())["agreement"]["first_mismatch"]["height"] == 3
    assert "reusing the 3-node testnet" in bad.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nodes", "0"], "--nodes must be at least 1"),
        (["--duration", "0"], "--duration must be positive"),
        (["--agents", "0"], "--agents must be at least 1"),
        (["--rate", "-1"], "--rate must be positive"),
    ],
)
def test_cli_testnet_validates_arguments(tmp_path, args, message):
    result = CliRunner().invoke(cli.app, ["testnet", "--dir", str(tmp_path / "tn"), *args])
    assert result.exit_code == 1 and message in result.stderr
    assert not (tmp_path / "tn").exists()


def test_a_session_that_commits_no_action_fails_with_the_reason():
    from agent_world_tools.testnet.session import TestnetSummary, render_summary

    def summary(duration_s: float, actions: int) -> TestnetSummary:
        return TestnetSummary(
            directory="/tmp/x", nodes=4, duration_s=duration_s, start_height=0, end_height=60, blocks_committed=60,
            actions_committed=actions, module_calls=0, agreement_ok=True, checked_heights=60, compared_nodes=4,
            first_mismatch=None, agreement_error=None, node_failures={}, exit_statuses={},
            workload={"submitted": 20, "accepted": 0, "rejected": {"agent_id_taken": 20}, "unreachable": 0})

    idle = summary(30.0, 0)
    assert not idle.ok and "committed no action in 30 s" in idle.workload_problem
    assert "agent_id_taken=20" in idle.workload_problem and idle.as_dict()["ok"] is False
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render_summary(idle))
    assert "workload failed" in console.export_text()
    assert summary(30.0, 5).ok and summary(5.0, 0).ok  # working, or too short to judge
