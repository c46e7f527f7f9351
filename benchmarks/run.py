"""Run the benchmarks, print each figure, and write them all to ``benchmarks/results.json``.

Figures (units in the names):
- ``ed25519_verify_per_s``: PyNaCl signature verifications per second on one core.
- ``execute_block_1000_actions_ms``: executing one block of 1,000 signed move/harvest actions
  (signatures already verified at admission, as in the node) into a world of ``agents`` agents,
  median of several blocks, for 1,000 and 10,000 agents.
- ``module_call_us``: one ``move_counter`` module call (fresh instance, fuel, memory limit).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from agent_world_runtime import World
from agent_world_runtime.actions import (
    CompileModuleArtifactFromSource,
    HarvestRadiation,
    InstallModuleFromArtifact,
    MoveAgent,
)
from agent_world_runtime.crypto import SigningKey, verify
from agent_world_runtime.modules.source import package_from_files
from agent_world_runtime.params import WorldParams
from agent_world_runtime.signer import AgentSigner

ROOT = Path(__file__).resolve().parent.parent
CHAIN = "bench"


def bench_verify(n: int = 5_000) -> float:
    key = SigningKey(b"k" * 32)
    msgs = [i.to_bytes(8, "big") * 8 for i in range(n)]
    sigs = [key.sign(b"d", m) for m in msgs]
    start = time.perf_counter()
    for m, s in zip(msgs, sigs):
        assert verify(key.public_key, b"d", m, s)
    return n / (time.perf_counter() - start)


PARAMS = WorldParams(initial_electricity=10**12)  # enough that no benchmark move is rejected


def _world_with_agents(n: int) -> tuple[World, list[AgentSigner]]:
    world = World.from_genesis(CHAIN, PARAMS)
    signers = [AgentSigner.from_seed(f"a{i}", i.to_bytes(32, "big"), CHAIN) for i in range(n)]
    world.begin_block(1, 1)
    for i, s in enumerate(signers):
        world.apply_action(s.register(), i.to_bytes(32, "big"), signature_checked=True)
    world.end_block()
    return world, signers


def bench_execute(agents: int, blocks: int = 5, per_block: int = 1_000) -> float:
    world, signers = _world_with_agents(agents)
    times = []
    for b in range(blocks):
        height = world.height + 1
        actions = []
        for i in range(per_block):
            s = signers[(b * per_block + i) % len(signers)]
            act = MoveAgent(to=(height, 1, 0)) if i % 2 else HarvestRadiation()
            actions.append(s.sign(act))
        start = time.perf_counter()
        world.begin_block(height, height)
        for i, a in enumerate(actions):
            world.apply_action(a, (height * 1_000_000 + i).to_bytes(32, "big"), signature_checked=True)
        world.step_with_modules()
        world.end_block()
        times.append((time.perf_counter() - start) * 1000)
    rejected = world.events(0, 10, "domain.action_rejected")
    if rejected:
        raise RuntimeError(f"benchmark actions were rejected: {rejected[0].data}")
    return statistics.median(times)


def bench_module_call(moves: int = 500) -> float:
    world, (builder,) = _world_with_agents(1)
    ex = ROOT / "examples" / "modules"
    pkg = package_from_files([ex / "move_counter.wat", ex / "move_counter.manifest.json"], ex / "move_counter.manifest.json")
    world.begin_block(2, 2)
    world.apply_action(builder.sign(CompileModuleArtifactFromSource("move_counter", pkg)), b"c" * 32)
    wasm_hash = world.module_status()["artifacts"][0]["wasm_hash"]
    world.apply_action(builder.sign(InstallModuleFromArtifact(wasm_hash=wasm_hash)), b"i" * 32)
    world.end_block()

    per_block = 100  # move_counter's max_call_rate per block
    calls_before = world.stats()["module_calls"]
    elapsed = 0.0
    for b in range(moves // per_block):
        height = world.height + 1
        world.begin_block(height, height)
        batch = [builder.sign(MoveAgent(to=(i % 2 + 1, b, 0))) for i in range(per_block)]
        start = time.perf_counter()
        for i, a in enumerate(batch):
            world.apply_action(a, (height * 10_000 + i).to_bytes(32, "big"), signature_checked=True)
        elapsed += time.perf_counter() - start
        world.end_block()
    calls = world.stats()["module_calls"] - calls_before
    if calls != moves:
        raise RuntimeError(f"expected {moves} module calls, saw {calls}")
    baseline_world, (plain,) = _world_with_agents(1)
    baseline_world.begin_block(2, 2)
    batch = [plain.sign(MoveAgent(to=(i % 2 + 1, 0, 0))) for i in range(moves)]
    start = time.perf_counter()
    for i, a in enumerate(batch):
        baseline_world.apply_action(a, i.to_bytes(32, "big"), signature_checked=True)
    baseline = time.perf_counter() - start
    return (elapsed - baseline) / moves * 1e6


def main() -> None:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    results: dict[str, float] = {}

    def record(name: str, value: float) -> None:
        results[name] = round(value, 2)
        print(f"{name:45s} {value:12.2f}", flush=True)

    record("ed25519_verify_per_s", bench_verify())
    for agents in (1_000, 10_000):
        record(f"execute_block_1000_actions_ms_at_{agents}_agents", bench_execute(agents))
    record("module_call_us", bench_module_call())
    out = ROOT / "benchmarks" / "results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
