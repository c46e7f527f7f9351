"""The agent runtime against an in-process single-validator node (tests/node_harness.py): keys
created and reused, agents created by a sponsor (the harness bank) or present from genesis, nonces, 503 retries with a tiny mempool, memory entries with
their committed outcomes, a decision signed by another controlled agent, and the scripted
builder reaching an installed and then upgraded module."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
import trio
import wasmtime

from agent_world_agents.decision import CompileModule, Wait
from agent_world_agents.runtime import (
    AgentRuntime,
    Memory,
    Observation,
    RuntimeStats,
    agent_id_for,
    event_mentions,
    load_or_create_agent_key,
)
from agent_world_agents.scripted import ModuleBuilder, ScriptedPopulation, default_modules_dir
from agent_world_client.client import AgentKey, NodeClient
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.signer import AgentSigner

from .node_harness import BANK_ID, BANK_SEED, running_node, single_validator_home

CHAIN = "runtime-test"
SEED = 5
#: The harness bank as the runtime's sponsor: it creates, and pays for, the agents that do not exist.
SPONSOR = AgentKey(SigningKey(BANK_SEED), BANK_ID)


class CrossSigner:
    """Agent 1's policy: compile move_counter published by agent 2 (signed with agent 2's key and
    nonce), again if the node did not take it (the tiny mempool may stay full), at most 5 times;
    otherwise wait."""

    def __init__(self, other: str) -> None:
        self.other = other
        self.attempts = 0
        self.taken = False
        self.observations: list[Observation] = []

    async def decide(self, obs: Observation, memory: Memory):
        self.observations.append(obs)
        # (the memory window forgets: remember that the node took it)
        self.taken = self.taken or any(
            e.get("outcome") in ("accepted", "duplicate", "committed", "failed") for e in memory.recent(500))
        if self.taken or self.attempts >= 5 or self.other not in obs.controlled:
            return Wait()
        self.attempts += 1
        d = default_modules_dir()
        # other bytes than the builder's artifacts (an artifact is published once), other module id
        wat = (d / "move_counter.wat").read_text().replace('(data (i32.const 8) "\\80")', '(data (i32.const 8) "\\80")\n  (data (i32.const 200) "cross")')
        assert "cross" in wat
        manifest = json.loads((d / "move_counter.manifest.json").read_text())
        manifest["module_id"] = "cross_counter"
        files = {"c.wat": wat, "c.json": json.dumps(manifest)}
        return CompileModule(publisher=f"agent:{self.other}", module_id="cross_counter", module_version="1.0.0",
                             manifest_path="c.json", source_files=files)


def v2_hash() -> str:
    return hashlib.sha256(wasmtime.wat2wasm((default_modules_dir() / "move_counter_v2.wat").read_text())).hexdigest()


async def run_until(runtime: AgentRuntime, done, limit_s: float) -> None:
    """Run ``runtime`` until ``done()`` holds (checked every 0.1 s) or ``limit_s`` passes (fail)."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runtime.run, stop)
        with trio.fail_after(limit_s):
            while not done():
                await trio.sleep(0.1)
        stop.set()


def test_runtime_lifecycle_against_a_node(tmp_path):
    home = single_validator_home(tmp_path / "solo", chain_id=CHAIN, max_mempool=1)
    key_dir = tmp_path / "keys"
    ids = [agent_id_for(SEED, i, "rt") for i in range(6)]
    builder_id, cross_id, other_id = ids[0], ids[1], ids[2]

    async def main():
        async with running_node(home) as node:
            base = f"http://{node.config.rpc.listen}"
            population = ScriptedPopulation(SEED, upgrade_after_turns=3)
            cross = CrossSigner(other_id)

            def factory(index, agent_id):
                return cross if index == 1 else population(index, agent_id)

            stats = RuntimeStats()
            runtime = AgentRuntime(base, agents=6, policy_factory=factory, key_dir=key_dir, seed=SEED,
                                   agent_prefix="rt", turn_s=0.05, poll_interval_s=0.2, memory_size=500, stats=stats,
                                   sponsor=SPONSOR)
            builder: ModuleBuilder = population.builder_policy
            expected_v2 = v2_hash()

            def finished():
                entries = [e for e in runtime.memory_of(cross_id).recent(500) if e.get("kind") == "compile_module_artifact_from_source"]
                if not entries and cross.taken:
                    return stats.agents_registered == 6 and builder.phase == "upgraded"
                settled = bool(entries) and entries[-1].get("outcome") in ("committed", "failed", "rejected")
                return stats.agents_registered == 6 and builder.phase == "upgraded" and (settled or cross.attempts >= 5)

            await run_until(runtime, finished, 90)
            assert runtime.chain_id == CHAIN  # asked the node

            async with NodeClient(base) as client:
                modules = await client.modules()
                records = {a: await client.agent(a) for a in ids}

            # Keys: one file per agent, created on chain with that key.
            files = {p.stem: json.loads(p.read_text()) for p in key_dir.iterdir()}
            assert set(files) == set(ids)
            for a in ids:
                assert records[a]["public_key"] == files[a]["public_key"]
            # The sponsor signed every creation (a creation the busy node never took is submitted
            # again), with its own nonces, and paid for them.
            assert stats.agents_registered == 6 and stats.by_kind["create_agent"] >= 6
            assert "no_sponsor" not in stats.rejected
            async with NodeClient(base) as client:
                bank = await client.agent(BANK_ID)
            assert bank["last_nonce"] >= 6
            assert runtime.sponsor is not None and runtime.sponsor.next_nonce > bank["last_nonce"]

            # The tiny mempool answered 503 and the runtime waited the hint and retried.
            assert stats.retried_503 > 0
            assert "nonce_replayed" not in stats.rejected

            # The builder: installed v1, then upgraded its instance to v2 (module status shows it).
            instance = next(i for i in modules["instances"] if i["instance_id"] == f"move_counter@{builder_id}")
            assert instance["wasm_hash"] == expected_v2 == builder.upgraded_wasm_hash
            assert instance["version"] == "2.0.0"
            assert builder.wasm_hash != expected_v2 and builder.wasm_hash is not None
            # Memory: every builder action entry names its signer, nonce and outcome; the module
            # steps were seen committed, in order (a step the busy node did not take is repeated).
            # (between module steps the builder harvests, or waits while the harvest interval runs)
            module_entries = [e for e in runtime.memory_of(builder_id).recent(500)
                              if e["kind"] not in ("harvest_radiation", "wait")]
            assert all(e["signer"] == builder_id and "nonce" in e and "outcome" in e for e in module_entries)
            committed = [e for e in module_entries if e["outcome"] == "committed"]
            assert [e["kind"] for e in committed] == ["compile_module_artifact_from_source", "install_module_from_artifact",
                                                      "compile_module_artifact_from_source", "upgrade_module"]
            assert all(e["outcome"] in ("committed", "busy") for e in module_entries)
            assert committed[-1]["event"] == "module.upgraded" and len(committed[-1]["action_id"]) == 64
            nonces = [e["nonce"] for e in runtime.memory_of(builder_id).recent(500) if "nonce" in e]
            assert nonces == sorted(nonces) and len(set(nonces)) == len(nonces)
            assert records[builder_id]["last_nonce"] <= runtime.agents[builder_id].next_nonce - 1

            # A decision signed by another controlled agent: agent 1 decided, agent 2 signed and published.
            entries = [e for e in runtime.memory_of(cross_id).recent(500) if e["kind"] == "compile_module_artifact_from_source"]
            entry = entries[-1]
            assert entry["signer"] == other_id and entry["outcome"] == "committed", (entry.get("outcome"), entry.get("reason"))
            assert any(a["publisher"] == other_id and a["module_id"] == "cross_counter" for a in modules["artifacts"])
            assert records[other_id]["last_nonce"] >= entry["nonce"]
            # Observations carry the controlled agents and this agent's own events.
            last = cross.observations[-1]
            assert last.agent_id == cross_id and last.agent is not None and set(last.controlled) == set(ids)
            assert last.recent_events and all(event_mentions(e, cross_id) for e in last.recent_events)
            assert last.modules is not None and last.height > 0

            # Second run with the same keys: no new creation, nonces continue past the first run.
            first_last = dict((a, r["last_nonce"]) for a, r in records.items())
            stats2 = RuntimeStats()
            runtime2 = AgentRuntime(base, agents=6, policy_factory=ScriptedPopulation(SEED), key_dir=key_dir,
                                    seed=SEED, agent_prefix="rt", turn_s=0.05, poll_interval_s=0.2, stats=stats2,
                                    sponsor=SPONSOR)
            await run_until(runtime2, lambda: stats2.committed >= 6, 60)
            assert json.loads((key_dir / f"{builder_id}.json").read_text()) == files[builder_id]
            assert stats2.agents_registered == 6
            assert "create_agent" not in stats2.by_kind and "nonce_replayed" not in stats2.rejected
            async with NodeClient(base) as client:
                for a in ids:
                    for e in runtime2.memory_of(a).recent(500):
                        if "nonce" in e:
                            assert e["nonce"] > first_last[a]
            assert stats2.decisions > 0 and stats2.decisions_per_s() > 0

    trio.run(main)


def test_policy_errors_and_invalid_decisions_are_remembered_not_raised(tmp_path):
    """A policy that raises, and one that names an agent the runtime has no key for: counted and
    remembered, no action submitted for them, the runtime keeps going."""
    home = single_validator_home(tmp_path / "solo", chain_id=CHAIN)

    class Broken:
        def __init__(self):
            self.turns = 0

        async def decide(self, obs, memory):
            self.turns += 1
            if self.turns % 2:
                raise RuntimeError("model fell over")
            return CompileModule(publisher="agent:stranger", module_id="m", module_version="1",
                                 manifest_path="m.json", source_files={"m.json": "{}"})

    async def main():
        async with running_node(home) as node:
            base = f"http://{node.config.rpc.listen}"
            policy = Broken()
            runtime = AgentRuntime(base, agents=1, policy_factory=lambda i, a: policy, key_dir=tmp_path / "k",
                                   turn_s=0.01, poll_interval_s=0.05, sponsor=SPONSOR)
            await run_until(runtime, lambda: policy.turns >= 6, 30)
            entries = runtime.memory_of(agent_id_for(0, 0)).recent(500)
            assert {e["outcome"] for e in entries} == {"policy_error", "invalid"}
            assert any("stranger" in e["reason"] for e in entries if e["outcome"] == "invalid")
            assert runtime.stats.decision_errors >= 5
            assert runtime.stats.by_kind == {"create_agent": 1}

    trio.run(main)


def test_without_a_sponsor_only_agents_that_exist_run(tmp_path):
    """Agent 0 exists from genesis and runs without a sponsor; agent 1 does not exist: with no
    sponsor to create it, it is counted as ``no_sponsor`` and never decides."""
    key_dir = tmp_path / "k"
    present, missing = agent_id_for(0, 0), agent_id_for(0, 1)
    signer = AgentSigner(present, load_or_create_agent_key(key_dir, present), CHAIN)
    home = single_validator_home(tmp_path / "solo", chain_id=CHAIN,
                                 agents=[signer.genesis_agent(electricity=1000, data=1000)])
    turns = {present: 0, missing: 0}

    class Count:
        def __init__(self, agent_id):
            self.agent_id = agent_id

        async def decide(self, obs, memory):
            turns[self.agent_id] += 1
            return Wait()

    async def main():
        async with running_node(home) as node:
            base = f"http://{node.config.rpc.listen}"
            runtime = AgentRuntime(base, agents=2, policy_factory=lambda i, a: Count(a), key_dir=key_dir,
                                   turn_s=0.01, poll_interval_s=0.05)
            await run_until(runtime, lambda: turns[present] >= 3 and runtime.stats.rejected.get("no_sponsor"), 30)
            assert runtime.stats.agents_registered == 1 and runtime.stats.rejected == {"no_sponsor": 1}
            assert turns[missing] == 0 and runtime.stats.submitted == 0
            assert node.world.get_agent(missing) is None

    trio.run(main)


def test_memory_window_and_bad_arguments(tmp_path):
    memory = Memory(3)
    for i in range(5):
        memory.add({"turn": i, "action_id": f"a{i}"})
    assert [e["turn"] for e in memory.recent()] == [2, 3, 4]
    assert [e["turn"] for e in memory.recent(2)] == [3, 4]
    assert memory.recent(0) == [] and memory.find("a1") is None and memory.find("a3")["turn"] == 3
    with pytest.raises(ValueError, match="memory size"):
        Memory(0)
    with pytest.raises(ValueError, match="at least one node"):
        AgentRuntime([], agents=1, policy_factory=lambda i, a: None, key_dir=tmp_path)
    with pytest.raises(ValueError, match="agents must be"):
        AgentRuntime("http://x", agents=0, policy_factory=lambda i, a: None, key_dir=tmp_path)


def test_unknown_chain_id_from_an_unreachable_node_is_a_clear_error(tmp_path):
    def handler(request):
        raise httpx.ConnectError("refused", request=request)

    runtime = AgentRuntime("http://n0:1", agents=1, policy_factory=lambda i, a: None, key_dir=tmp_path,
                           transport=httpx.MockTransport(handler))
    from agent_world_client.client import NodeUnreachable

    with pytest.raises(NodeUnreachable, match="cannot reach node"):
        trio.run(runtime.run)


def test_cli_llm_policy_without_env_exits_2_naming_the_variables(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from agent_world_tools.cli import app

    for name in ("AGENT_WORLD_LLM_BASE_URL", "AGENT_WORLD_LLM_MODEL", "AGENT_WORLD_LLM_API_KEY", "AGENT_WORLD_LLM_TIMEOUT_MS"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, ["agent", "run", "--rpc", "http://127.0.0.1:9", "--agents", "2", "--policy", "llm",
                                      "--key-dir", str(tmp_path / "k")])
    assert result.exit_code == 2, result.output
    for name in ("AGENT_WORLD_LLM_BASE_URL", "AGENT_WORLD_LLM_MODEL", "AGENT_WORLD_LLM_API_KEY", "AGENT_WORLD_LLM_TIMEOUT_MS"):
        assert name in result.output
    assert not (tmp_path / "k").exists()  # no agent was started


def test_cli_agent_run_usage_errors(tmp_path):
    from typer.testing import CliRunner

    from agent_world_tools.cli import app

    runner = CliRunner()
    bad_policy = runner.invoke(app, ["agent", "run", "--policy", "oracle", "--key-dir", str(tmp_path)])
    assert bad_policy.exit_code == 1 and "--policy must be 'scripted' or 'llm'" in bad_policy.output
    no_agents = runner.invoke(app, ["agent", "run", "--agents", "0", "--key-dir", str(tmp_path)])
    assert no_agents.exit_code == 1 and "--agents must be at least 1" in no_agents.output
    down = runner.invoke(app, ["agent", "run", "--rpc", "http://127.0.0.1:9", "--key-dir", str(tmp_path / "k"), "--duration", "1"])
    assert down.exit_code == 1 and "cannot reach node at http://127.0.0.1:9" in down.output


def test_a_compile_entry_waits_for_the_validators_build(tmp_path):
    """A compile whose lookup shows its build request leaves the decision ``build_pending``; the
    settling event names it ``built`` with the wasm_hash (or ``build_failed`` with the code)."""
    from agent_world_agents.runtime import AgentRuntime

    runtime = AgentRuntime("http://127.0.0.1:9", agents=2, policy_factory=lambda i, a: None, key_dir=tmp_path,
                           chain_id="c")
    a, b = sorted(runtime.agents)
    for agent_id, action_id in ((a, "aa" * 32), (b, "bb" * 32)):
        runtime.memory_of(agent_id).add({"kind": "compile_module", "action_id": action_id, "outcome": "accepted"})
        runtime._pending[action_id] = (agent_id, 0.0)
        runtime._settle_document(action_id, agent_id, {
            "status": "committed", "height": 3, "outcome": "applied",
            "events": [{"kind": "module.build_requested", "height": 3, "data": {"action_id": action_id}}]})
    assert runtime.memory_of(a).find("aa" * 32)["outcome"] == "build_pending"
    assert runtime.stats.committed == 0 and not runtime._pending
    runtime._dispatch({"kind": "module.build_settled", "height": 5,
                       "data": {"build_id": "aa" * 32, "status": "registered", "wasm_hash": "cc" * 32}})
    runtime._dispatch({"kind": "module.build_settled", "height": 6,
                       "data": {"build_id": "bb" * 32, "status": "failed", "code": "COMPILE_ERROR"}})
    built, failed = runtime.memory_of(a).find("aa" * 32), runtime.memory_of(b).find("bb" * 32)
    assert (built["outcome"], built["wasm_hash"]) == ("built", "cc" * 32)
    assert (failed["outcome"], failed["reason"]) == ("build_failed", "COMPILE_ERROR")
    assert (runtime.stats.committed, runtime.stats.failed) == (1, 1)


def test_pending_actions_are_settled_by_the_action_lookup(tmp_path):
    """The poller settles memory entries from ``GET /v1/actions/{id}``: applied -> committed with
    the first event's kind, rejected -> failed with the world's reason, still pending -> kept; an
    action unknown to the node is kept until ``LOST_AFTER_S`` and then given up as lost."""
    from agent_world_agents import runtime as rt
    from agent_world_client.client import NotFound

    runtime = rt.AgentRuntime("http://127.0.0.1:9", agents=1, policy_factory=lambda i, a: None, key_dir=tmp_path,
                              chain_id="c")
    (agent_id,) = runtime.agents
    docs = {
        "a1" * 32: {"status": "committed", "height": 7, "outcome": "applied",
                    "events": [{"kind": "domain.agent_moved", "height": 7}]},
        "a2" * 32: {"status": "committed", "height": 7, "outcome": "rejected", "reason": "insufficient electricity",
                    "events": [{"kind": "domain.action_rejected", "height": 7}]},
        "a3" * 32: {"status": "pending"},
    }
    asked: list[str] = []

    class FakeClient:
        base_url = "fake"

        async def action(self, action_id):
            asked.append(action_id)
            if action_id in docs:
                return docs[action_id]
            raise NotFound("unknown action")

    async def main():
        now = trio.current_time()
        for action_id, since in (("a1" * 32, now), ("a2" * 32, now), ("a3" * 32, now), ("a4" * 32, now),
                                 ("a5" * 32, now - rt.LOST_AFTER_S)):
            runtime.memory_of(agent_id).add({"kind": "move_agent", "action_id": action_id, "outcome": "accepted"})
            runtime._pending[action_id] = (agent_id, since)
        assert await runtime._settle_pending(FakeClient())

    trio.run(main)
    memory = runtime.memory_of(agent_id)
    assert sorted(asked) == sorted(["a1" * 32, "a2" * 32, "a3" * 32, "a4" * 32, "a5" * 32])
    assert {k: memory.find(k * 32)["outcome"] for k in ("a1", "a2", "a3", "a4", "a5")} == {
        "a1": "committed", "a2": "failed", "a3": "accepted", "a4": "accepted", "a5": "lost"}
    assert memory.find("a1" * 32)["event"] == "domain.agent_moved" and memory.find("a1" * 32)["height"] == 7
    assert memory.find("a2" * 32)["reason"] == "insufficient electricity"
    assert sorted(runtime._pending) == ["a3" * 32, "a4" * 32]
    assert (runtime.stats.committed, runtime.stats.failed) == (1, 2)
