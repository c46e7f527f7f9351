"""`awnode module ...`: new projects build into modules the sandbox accepts, `module test` runs the
Rust example in the real sandbox and reports traps, and deploy + install publish a module on a real
node, which then calls it when the agent moves."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import httpx
import pytest
import trio
from typer.testing import CliRunner

from agent_world_client.client import AgentKey
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.modules.sandbox import Sandbox
from agent_world_runtime.signer import AgentSigner
from agent_world_tools import cli, ui
from agent_world_tools.modules_cli import INSTALL_HINT

from .node_harness import running_node, single_validator_home

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "modules"


def have_rust() -> bool:
    return Path("/usr/bin/rustc").exists() and Path("/usr/lib/rustlib/wasm32-unknown-unknown").is_dir()


def have_c() -> bool:
    return importlib.util.find_spec("ziglang") is not None


def need(lang: str) -> None:
    if lang == "rust" and not have_rust():
        pytest.skip(f"no Rust wasm32 toolchain: {INSTALL_HINT['rust']}")
    if lang == "c" and not have_c():
        pytest.skip(f"no C wasm32 toolchain: {INSTALL_HINT['c']}")


def awnode(*args: str):
    return runner.invoke(cli.app, list(args))


def copy_example(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(EXAMPLES / name, dest, ignore=shutil.ignore_patterns("build"))
    return dest


@pytest.mark.parametrize("lang", ["rust", "c", "wat"])
def test_new_project_builds_into_a_module_the_sandbox_accepts(tmp_path, lang):
    need(lang)
    result = awnode("module", "new", "hello_mod", "--lang", lang, "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output + result.stderr
    project = tmp_path / "hello_mod"
    assert (project / "manifest.json").is_file() and (project / "README.md").is_file()
    if lang == "rust":
        assert (project / "aw_sdk.rs").read_text() == (EXAMPLES.parents[1] / "sdk" / "rust" / "aw_sdk.rs").read_text()
    result = awnode("module", "build", str(project))
    assert result.exit_code == 0, result.output + result.stderr
    wasm = (project / "build" / "hello_mod.wasm").read_bytes()
    compiled = Sandbox().compile(wasm)
    assert "reduce" in compiled.entries
    import hashlib

    assert hashlib.sha256(wasm).hexdigest() in result.output and f"{len(wasm)} bytes" in result.output
    # the skeleton runs: a move gives one emit
    result = awnode("module", "test", str(project), "--json", "--input",
                    '{"type": "move_agent", "agent_id": "alice", "to": [1, 0, 0]}')
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(result.output)
    assert report["ok"] and len(report["emits"]) == 1 and report["gas_used"] > 0


def test_new_refuses_a_bad_name_and_an_existing_directory(tmp_path):
    result = awnode("module", "new", "Bad-Name", "--dir", str(tmp_path))
    assert result.exit_code == 1 and "invalid module name" in result.stderr and "Traceback" not in result.stderr
    assert awnode("module", "new", "ok_name", "--lang", "wat", "--dir", str(tmp_path)).exit_code == 0
    result = awnode("module", "new", "ok_name", "--lang", "wat", "--dir", str(tmp_path))
    assert result.exit_code == 1 and "already exists" in result.stderr


def test_build_without_a_project_says_what_to_do(tmp_path):
    result = awnode("module", "build", str(tmp_path))
    assert result.exit_code == 1 and "awnode module new" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("example", ["rust_counter", "c_counter"])
def test_module_test_runs_the_counter_on_a_move(tmp_path, example):
    need("rust" if example == "rust_counter" else "c")
    project = copy_example(example, tmp_path)
    move = '{"type": "move_agent", "agent_id": "alice", "to": [1, 0, 0]}'
    result = awnode("module", "test", str(project), "--input", move, "--stage", "post_action")
    assert result.exit_code == 0, result.output + result.stderr
    out = " ".join(result.output.split())
    assert 'counter.moved {"agent_id": "alice", "moves": 1}' in out
    assert "gas_used:" in out and "electricity" in out
    # the new state fed back in: the second move counts 2
    report = json.loads(awnode("module", "test", str(project), "--json", "--input", move).output)
    again = json.dumps({"action": json.loads(move), "state": report["new_state"]})
    report = json.loads(awnode("module", "test", str(project), "--json", "--input", again).output)
    assert report["emits"] == [{"kind": "counter.moved", "data": {"agent_id": "alice", "moves": 2}}]
    fees = report["fees"]
    assert fees["electricity"] == 3  # 1 + one emit + new state
    assert fees["compute_data"] == 1 + 1 + 1  # one KiB in, one KiB out, one emit
    # a rejected move changes nothing
    rejected = json.dumps({"action": {**json.loads(move), "outcome": "rejected"}})
    report = json.loads(awnode("module", "test", str(project), "--json", "--input", rejected).output)
    assert report["ok"] and report["emits"] == [] and report["new_state"] is None


def test_a_trapping_module_shows_the_failure_code(tmp_path):
    assert awnode("module", "new", "trapper", "--lang", "wat", "--dir", str(tmp_path)).exit_code == 0
    (tmp_path / "trapper" / "module.wat").write_text(
        '(module (memory (export "memory") 1)\n'
        '  (func (export "alloc") (param i32) (result i32) (i32.const 1024))\n'
        '  (func (export "reduce") (param i32 i32) (result i64) unreachable))\n'
    )
    result = awnode("module", "test", str(tmp_path / "trapper"), "--input", '{"type": "move_agent"}')
    assert result.exit_code == 1
    assert "failed: TRAP" in result.output and "gas_used: 1000000" in result.output, result.output


def test_module_test_refuses_bad_input(tmp_path):
    assert awnode("module", "new", "m", "--lang", "wat", "--dir", str(tmp_path)).exit_code == 0
    for bad, message in [("{not json", "not JSON"), ('{"foo": 1}', "unknown keys"),
                         ('{"action": {"type": "move_agent"}, "state": 5}', "base64"),
                         ("missing.json", "neither JSON nor a readable file")]:
        result = awnode("module", "test", str(tmp_path / "m"), "--input", bad)
        assert result.exit_code == 1 and message in result.stderr and "Traceback" not in result.stderr, (bad, result.stderr)


CHAIN = "module-cli-test"


def test_deploy_install_and_the_module_is_called_when_the_agent_moves(tmp_path):
    need("rust")
    key = SigningKey(b"m" * 32)
    alice = AgentSigner("alice", key, CHAIN).genesis_agent(electricity=10**6, data=10**6)
    home = single_validator_home(tmp_path / "solo", chain_id=CHAIN, agents=[alice])
    key_file = tmp_path / "alice.json"
    AgentKey(key=key, agent_id="alice").save(key_file)
    project = copy_example("rust_counter", tmp_path)
    move = tmp_path / "move.json"
    move.write_text('{"type": "move_agent", "to": [1, 0, 0]}')

    async def run(*args: str):
        return await trio.to_thread.run_sync(lambda: runner.invoke(cli.app, list(args)))

    async def main():
        async with running_node(home) as node:
            rpc = f"http://{node.config.rpc.listen}"
            result = await run("module", "deploy", str(project), "--key", str(key_file), "--rpc", rpc)
            assert result.exit_code == 0, result.output + result.stderr
            assert "deployed rust_counter 1.0.0 wasm_hash=" in result.output
            wasm_hash = result.output.split("wasm_hash=")[1].split()[0]
            result = await run("module", "deploy", str(project), "--key", str(key_file), "--rpc", rpc)
            assert result.exit_code == 0 and "already deployed" in result.output, result.output + result.stderr
            result = await run("module", "install", wasm_hash, "--key", str(key_file), "--rpc", rpc)
            assert result.exit_code == 0, result.output + result.stderr
            assert "installed instance=rust_counter@alice" in result.output
            result = await run("module", "install", wasm_hash, "--key", str(key_file), "--rpc", rpc)
            assert result.exit_code == 1 and "already exists" in result.stderr
            result = await run("module", "status", "--rpc", rpc)
            assert result.exit_code == 0 and "rust_counter@alice" in result.output and wasm_hash[:16] in result.output
            result = await run("submit", "--key", str(key_file), "--rpc", rpc, str(move))
            assert result.exit_code == 0, result.output + result.stderr
            async with httpx.AsyncClient(base_url=rpc, timeout=10) as client:
                with trio.fail_after(60):
                    while True:
                        events = (await client.get("/v1/events", params={"kind": "module.", "limit": 1000})).json()["events"]
                        kinds = [e["kind"] for e in events]
                        if "module.emitted" in kinds:
                            break
                        await trio.sleep(0.2)
            called = [e for e in events if e["kind"] == "module.called"]
            assert called and called[0]["data"]["instance_id"] == "rust_counter@alice"
            emitted = next(e for e in events if e["kind"] == "module.emitted")
            assert emitted["data"]["kind"] == "counter.moved"
            assert emitted["data"]["data"] == {"agent_id": "alice", "moves": 1}

    trio.run(main)


def test_deploy_refuses_a_new_build_under_a_published_version(tmp_path, monkeypatch):
    """Checked against the node's artifact list before anything is signed (a rejected deploy
    would still pay its fee)."""
    assert awnode("module", "new", "m", "--lang", "wat", "--dir", str(tmp_path)).exit_code == 0
    key_file = tmp_path / "k.json"
    AgentKey(key=SigningKey.generate(), agent_id="alice").save(key_file)
    posted = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/modules":
            return httpx.Response(200, json={"artifacts": [{"wasm_hash": "ab" * 32, "module_id": "m", "version": "0.1.0",
                                                             "publisher": "alice"}], "instances": []})
        posted.append(request)
        return httpx.Response(404, json={"error": "no route"})

    from agent_world_client.client import SyncNodeClient

    monkeypatch.setattr(ui, "make_client", lambda rpc: SyncNodeClient(rpc, transport=httpx.MockTransport(handler)))
    result = awnode("module", "deploy", str(tmp_path / "m"), "--key", str(key_file), "--rpc", "http://fake:1")
    assert result.exit_code == 1 and "bump" in result.stderr and "already published" in result.stderr, result.stderr
    assert posted == []


@pytest.mark.parametrize("example", ["rust_counter", "c_counter"])
def test_the_fallback_build_without_the_node_builder_gives_a_valid_module(tmp_path, monkeypatch, example):
    from agent_world_tools import modules_cli

    need("rust" if example == "rust_counter" else "c")
    monkeypatch.setattr(modules_cli, "_hermetic_builder", lambda: None)
    project = copy_example(example, tmp_path)
    result = awnode("module", "build", str(project))
    assert result.exit_code == 0, result.output + result.stderr
    compiled = Sandbox().compile((project / "build" / f"{example}.wasm").read_bytes())
    assert "reduce" in compiled.entries and compiled.min_memory_bytes <= 4 * 65536  # the 64 KiB stack flag


def test_compile_in_world_the_validator_builds_attests_and_registers(tmp_path):
    """``awnode module compile`` against a real single validator whose genesis names this machine's
    toolchains: the build request, the validator's hermetic build and attestation, the artifact;
    a source that does not compile ends in a code, with the compiler's message from the node."""
    need("rust")
    need("c")
    from agent_world_runtime.params import WorldParams
    from agent_world_tools.testnet import local_toolchains

    key = SigningKey(b"m" * 32)
    alice = AgentSigner("alice", key, CHAIN).genesis_agent(electricity=10**6, data=10**6)
    home = single_validator_home(tmp_path / "solo", chain_id=CHAIN, agents=[alice],
                                 world=WorldParams(toolchains=local_toolchains()))
    key_file = tmp_path / "alice.json"
    AgentKey(key=key, agent_id="alice").save(key_file)
    project = copy_example("rust_counter", tmp_path)
    broken = copy_example("c_counter", tmp_path)
    (broken / "counter.c").write_text("int reduce(int p, int n) { return undefined_name; }\n")
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "module_id": "broken"}))

    async def run(*args: str):
        return await trio.to_thread.run_sync(lambda: runner.invoke(cli.app, list(args)))

    async def main():
        async with running_node(home) as node:
            rpc = f"http://{node.config.rpc.listen}"
            result = await run("module", "compile", str(project), "--key", str(key_file), "--rpc", rpc)
            assert result.exit_code == 0, result.output + result.stderr
            assert "built rust_counter 1.0.0 wasm_hash=" in result.output
            wasm_hash = result.output.split("wasm_hash=")[1].split()[0]
            local = awnode("module", "build", str(project))
            assert wasm_hash in local.output  # the local build gives the bytes the chain registered
            result = await run("module", "compile", str(broken), "--key", str(key_file), "--rpc", rpc)
            assert result.exit_code == 1 and "the build failed: COMPILE_ERROR" in result.stderr
            assert "undefined_name" in result.stderr  # the node's compiler message, outside consensus
            async with httpx.AsyncClient(base_url=rpc, timeout=10) as client:
                events = (await client.get("/v1/events", params={"kind": "module.build", "limit": 1000})).json()
            assert "undefined_name" not in json.dumps(events)

    trio.run(main)
