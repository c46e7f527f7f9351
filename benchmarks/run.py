"""Run the benchmarks, print each figure, and write them all to ``benchmarks/results.json``.

Figures (units in the names):
- ``ed25519_verify_per_s``: PyNaCl signature verifications per second on one core.
- ``execute_block_1000_actions_ms``: executing one block of 1,000 signed move/harvest actions
  (signatures already verified at admission, as in the node) into a world of ``agents`` agents,
  median of several blocks, for 1,000 and 10,000 agents.
- ``module_*``: module calls (``benchmarks/modules.py``): bare fresh-instance wasmtime calls/s,
  ``Sandbox.call`` calls/s and their ratio, and the full World path per ``move_counter`` call
  (``module_world_call_per_s``, ``module_call_us``).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from agent_world_runtime import World
from agent_world_runtime.actions import HarvestRadiation, MoveAgent
from agent_world_runtime.crypto import SigningKey, verify
from agent_world_runtime.params import WorldParams
from agent_world_runtime.signer import AgentSigner
from benchmarks import modules

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


PARAMS = WorldParams(initial_electricity=10**12, initial_data=10**12)  # enough that no move or module call fails to pay


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
    modules.run_all(record)
    out = ROOT / "benchmarks" / "results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
