"""Run the benchmarks, print each figure, and write them all to ``benchmarks/results.json``.

Sections (``python -m benchmarks.run --only a,b``): signatures, execution, modules, network
(``gossip.py``: raw gossipsub between 4 processes), cluster (``cluster.py``: empty-cluster block
interval), throughput (``throughput.py``: signed transfers through the HTTP API of 4 validator
processes), bigworld (``bigworld.py``: 100,000 agents: execution scaling, catch-up, replay, memory),
statesync (``statesync.py``: joining a 100,000-agent chain by state sync at two chain lengths),
adversarial (``adversarial.py``: ns per fuel unit of hostile operator classes, compile time of the
bomb corpus at the structural limits, output decode at the item limit, block time at the budget),
viewer (``viewer.py``: the web viewer's frame times in headless Chromium with 10,000 agents).
Each section's figures are printed as measured and written to ``benchmarks/results.json``.

Figures of this module (units in the names):
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
from agent_world_runtime.admission import payload_size
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
    for m, s in zip(msgs, sigs, strict=True):
        assert verify(key.public_key, b"d", m, s)
    return n / (time.perf_counter() - start)


# Harvests are not rate-limited in these worlds: the execution benchmark harvests every other action.
PARAMS = WorldParams(harvest_interval=0)
#: Each benchmark agent's genesis balance of each resource: enough that no fee, move or module call fails to pay.
GENESIS_BALANCE = 10**12


def _world_with_agents(n: int) -> tuple[World, list[AgentSigner]]:
    signers = [AgentSigner.from_seed(f"a{i}", i.to_bytes(32, "big"), CHAIN) for i in range(n)]
    world = World.from_genesis(CHAIN, PARAMS, agents=[s.genesis_agent(GENESIS_BALANCE, GENESIS_BALANCE) for s in signers])
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
        ids = [(height * 1_000_000 + i).to_bytes(32, "big") for i in range(len(actions))]
        block = [(a, aid, payload_size(a)) for a, aid in zip(actions, ids, strict=True)]
        start = time.perf_counter()
        world.begin_block(height, height)
        world.collect_fees(block)  # as the node does: every fee of the block first
        for a, aid, size in block:
            world.apply_action(a, aid, signature_checked=True, payload_bytes=size)
        world.step_with_modules()
        world.end_block()
        times.append((time.perf_counter() - start) * 1000)
    rejected = world.events(0, 10, "domain.action_rejected")
    if rejected:
        raise RuntimeError(f"benchmark actions were rejected: {rejected[0].data}")
    return statistics.median(times)


SECTIONS = ("signatures", "execution", "modules", "network", "cluster", "throughput", "bigworld", "statesync",
            "adversarial", "viewer")


def main(argv: list[str] | None = None) -> None:
    """Run the sections (all by default; ``--only a,b``), print every figure as it is measured,
    and write them all, with each section's duration, to ``benchmarks/results.json``."""
    import argparse
    import logging

    import structlog

    parser = argparse.ArgumentParser(description="Agent World benchmarks")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    from benchmarks.throughput import DEFAULT_RATES

    parser.add_argument("--rates", default=",".join(str(int(r)) for r in DEFAULT_RATES),
                        help="offered actions/s tried in turn in the throughput run (until more offered no longer commits more)")
    args = parser.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    out = ROOT / "benchmarks" / "results.json"
    results: dict[str, float] = {}
    if set(only) != set(SECTIONS) and out.exists():
        results = json.loads(out.read_text())  # a partial run updates the other sections' figures

    def record(name: str, value: float) -> None:
        results[name] = round(value, 2)
        print(f"{name:45s} {value:12.2f}", flush=True)

    def section(name: str, run) -> None:  # type: ignore[no-untyped-def]
        if name not in only:
            return
        print(f"-- {name}", flush=True)
        started = time.perf_counter()
        try:
            run()
        except Exception as exc:  # one failed section must not hide the others' figures
            print(f"   section {name} failed: {type(exc).__name__}: {exc}", flush=True)
            results[f"{name}_failed"] = 1
        record(f"bench_{name}_s", time.perf_counter() - started)
        out.write_text(json.dumps(results, indent=2) + "\n")  # keep what we have if interrupted

    from benchmarks import adversarial, bigworld, cluster, gossip, statesync, throughput, viewer

    section("signatures", lambda: record("ed25519_verify_per_s", bench_verify()))

    def execution() -> None:
        for agents in (1_000, 10_000):
            record(f"execute_block_1000_actions_ms_at_{agents}_agents", bench_execute(agents))

    section("execution", execution)
    section("modules", lambda: modules.run_all(record))
    section("network", lambda: gossip.run_all(record))
    section("cluster", lambda: cluster.run_all(record))
    rates = tuple(float(r) for r in args.rates.split(","))
    section("throughput", lambda: throughput.run_cluster(record, rates=rates))
    section("bigworld", lambda: bigworld.run_all(record))
    section("statesync", lambda: statesync.run_all(record))
    section("adversarial", lambda: adversarial.run_all(record))
    section("viewer", lambda: viewer.run_all(record))
    if "ed25519_verify_per_s" in results and "cluster_actions_per_s" in results:
        # efficiency ratio: committed actions/s over the signature-verification limit of 4 nodes
        # sharing 2 cores (every node verifies every action's signature)
        limit = results["ed25519_verify_per_s"] * 2 / 4
        record("cluster_signature_limit_actions_per_s", limit)
        record("cluster_efficiency_ratio", results["cluster_actions_per_s"] / limit)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
