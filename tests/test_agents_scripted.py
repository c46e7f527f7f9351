"""Scripted policies: deterministic from the seed for a given sequence of observations, harvest
when low, pay the module owner, and the builder's lifecycle decisions (compile, install, upgrade,
skip what the chain already has, give up after repeated failures)."""

from __future__ import annotations

import json

import trio

from agent_world_agents.decision import CompileModule, Harvest, InstallModule, Move, Transfer, UpgradeModule, Wait
from agent_world_agents.runtime import Memory, Observation
from agent_world_agents.scripted import (
    LOW_ELECTRICITY,
    WANDER_BOUND,
    Explorer,
    ModuleBuilder,
    ScriptedPopulation,
    Trader,
    default_modules_dir,
    load_module_source,
)

IDS = ["a", "b", "c", "d"]


def obs(agent_id: str, *, electricity: int = 100, data: int = 50, position=(0, 0, 0), modules=None, agent=True) -> Observation:
    record = {"agent_id": agent_id, "position": list(position), "electricity": electricity, "data": data, "last_nonce": 1}
    return Observation(agent_id=agent_id, height=3, agent=record if agent else None, controlled=IDS,
                       modules=modules if modules is not None else {"artifacts": [], "instances": []}, recent_events=[])


def run_decisions(policy, observations, memory=None):
    memory = memory or Memory()

    async def go():
        out = []
        for o in observations:
            d = await policy.decide(o, memory)
            memory.add({"kind": type(d).__name__, "outcome": "accepted"})
            out.append(d)
        return out

    return trio.run(go)


def test_explorers_and_traders_are_deterministic_for_a_seed():
    seq = [obs("a")] * 60
    for cls in (Explorer, Trader):
        first = run_decisions(cls(5, "a"), seq)
        assert first == run_decisions(cls(5, "a"), seq)
        assert first != run_decisions(cls(6, "a"), seq)
        assert first != run_decisions(cls(5, "b"), [obs("b")] * 60)
    moves = [d for d in run_decisions(Explorer(5, "a"), seq) if isinstance(d, Move)]
    assert moves and all(abs(m.to[0]) <= WANDER_BOUND and abs(m.to[1]) <= WANDER_BOUND for m in moves)
    # each move is one step (x and/or y) from the previous estimate, or from the observed position
    # (0, 0, 0) when the estimate is refreshed from the observation
    pos = (0, 0, 0)
    for d in run_decisions(Explorer(5, "a"), seq):
        if isinstance(d, Move):
            steps = [max(abs(x - y) for x, y in zip(d.to, p, strict=True)) for p in (pos, (0, 0, 0))]
            assert 1 in steps and d.to[2] == 0
            pos = d.to


def test_low_electricity_means_harvest_and_invisible_means_wait():
    low = [obs("a", electricity=LOW_ELECTRICITY - 1)] * 5
    for cls in (Explorer, Trader):
        assert run_decisions(cls(0, "a"), low)[0] == Harvest()
        assert run_decisions(cls(0, "a"), [obs("a", agent=False)]) == [Wait()]


def test_users_pay_the_module_owner():
    modules = {"artifacts": [], "instances": [{"instance_id": "move_counter@c", "module_id": "move_counter",
                                               "owner_agent_id": "c", "active": True, "wasm_hash": "11"}]}
    decisions = run_decisions(Trader(1, "a"), [obs("a", modules=modules, electricity=10_000)] * 200)
    transfers = [d for d in decisions if isinstance(d, Transfer)]
    to_owner = [t for t in transfers if t.to == "c"]
    assert len(to_owner) > len(transfers) / 2
    assert {t.kind for t in to_owner} == {"data", "electricity"}
    assert all(t.to in IDS and t.to != "a" for t in transfers)
    # explorers pay too, and nobody pays itself
    explorer = run_decisions(Explorer(1, "a"), [obs("a", modules=modules, electricity=10_000)] * 200)
    assert any(isinstance(d, Transfer) and d.to == "c" for d in explorer)
    owner = run_decisions(Explorer(1, "c"), [obs("c", modules=modules, electricity=10_000)] * 200)
    assert not any(isinstance(d, Transfer) for d in owner)


def test_population_roles():
    pop = ScriptedPopulation(3)
    policies = [pop(i, f"x{i}") for i in range(8)]
    assert isinstance(policies[0], ModuleBuilder) and pop.builder_policy is policies[0]
    assert [type(p).__name__ for p in policies[1:]] == ["Explorer", "Explorer", "Trader", "Explorer", "Explorer", "Explorer", "Trader"]
    assert isinstance(ScriptedPopulation(3, builder=False)(0, "x0"), Explorer)


def test_builder_compiles_installs_then_upgrades():
    v1 = load_module_source(default_modules_dir(), "move_counter.wat", "move_counter.manifest.json")
    v2 = load_module_source(default_modules_dir(), "move_counter_v2.wat", "move_counter_v2.manifest.json")
    assert (v1.module_id, v1.version, v2.module_id, v2.version) == ("move_counter", "1.0.0", "move_counter", "2.0.0")
    phases = []
    builder = ModuleBuilder(0, "a", upgrade_after_turns=2, on_progress=lambda b: phases.append(b.phase))
    memory = Memory()

    def decide(modules):
        d = trio.run(builder.decide, obs("a", modules=modules), memory)
        memory.add({"kind": type(d).__struct_config__.tag, "outcome": "committed"})
        return d

    empty = {"artifacts": [], "instances": []}
    d = decide(empty)
    assert isinstance(d, CompileModule) and d.publisher == "self" and d.module_version == "1.0.0"
    assert json.loads(d.source_files[d.manifest_path])["version"] == "1.0.0"
    assert decide(empty) == Harvest()  # waiting for the artifact to appear
    art1 = {"wasm_hash": "11", "module_id": "move_counter", "version": "1.0.0", "publisher": "a"}
    d = decide({"artifacts": [art1], "instances": []})
    assert d == InstallModule(installer="self", module_id="move_counter", module_version="1.0.0", wasm_hash="11")
    inst = {"instance_id": "move_counter@a", "module_id": "move_counter", "version": "1.0.0", "wasm_hash": "11",
            "owner_agent_id": "a", "active": True}
    installed = {"artifacts": [art1], "instances": [inst]}
    # upgrade_after_turns; the observed height stays 3, so after one harvest the builder waits out
    # the harvest interval instead of paying for a harvest the world would reject
    assert [decide(installed) for _ in range(2)] == [Wait(), Wait()]
    d = decide(installed)
    assert isinstance(d, CompileModule) and d.module_version == "2.0.0" and d.module_id == "move_counter"
    art2 = {"wasm_hash": "22", "module_id": "move_counter", "version": "2.0.0", "publisher": "a"}
    d = decide({"artifacts": [art1, art2], "instances": [inst]})
    assert d == UpgradeModule(installer="self", module_id="move_counter", module_version="2.0.0", wasm_hash="22")
    upgraded = {"artifacts": [art1, art2], "instances": [dict(inst, version="2.0.0", wasm_hash="22")]}
    assert decide(upgraded) == Wait()
    assert builder.phase == "upgraded" and builder.wasm_hash == "11" and builder.upgraded_wasm_hash == "22"
    assert phases == ["compiling", "installing", "installed", "upgrading", "upgraded"]


def test_builder_skips_steps_the_chain_already_has():
    art1 = {"wasm_hash": "11", "module_id": "move_counter", "version": "1.0.0", "publisher": "a"}
    art2 = {"wasm_hash": "22", "module_id": "move_counter", "version": "2.0.0", "publisher": "a"}
    inst = {"instance_id": "move_counter@a", "module_id": "move_counter", "version": "2.0.0", "wasm_hash": "22", "owner_agent_id": "a"}
    builder = ModuleBuilder(0, "a")
    done = {"artifacts": [art1, art2], "instances": [inst]}
    assert run_decisions(builder, [obs("a", modules=done)] * 3) == [Harvest(), Wait(), Wait()]  # one harvest per interval
    assert builder.phase == "upgraded"
    # someone else's artifact is not ours: compile our own
    other = dict(art1, publisher="z")
    assert isinstance(run_decisions(ModuleBuilder(0, "a"), [obs("a", modules={"artifacts": [other], "instances": []})])[0], CompileModule)


def test_builder_retries_then_gives_up_and_explores(tmp_path):
    builder = ModuleBuilder(0, "a", max_attempts=2)
    memory = Memory()
    empty = obs("a")

    async def go():
        out = []
        for _ in range(8):
            d = await builder.decide(empty, memory)
            memory.add({"kind": type(d).__struct_config__.tag, "outcome": "rejected", "reason": "no fee"})
            out.append(d)
        return out

    decisions = trio.run(go)
    assert [type(d).__name__ for d in decisions[:2]] == ["CompileModule", "CompileModule"]
    assert builder.phase == "error" and "no fee" in builder.error
    assert not any(isinstance(d, CompileModule) for d in decisions[2:])
    assert any(isinstance(d, Move) for d in decisions[2:])
    # a missing source is an error too, and the builder explores
    missing = ModuleBuilder(0, "a", modules_dir=tmp_path)
    d = run_decisions(missing, [obs("a")] * 5)
    assert missing.phase == "error" and "cannot read module source" in missing.error
    assert all(isinstance(x, (Move, Harvest)) for x in d)
