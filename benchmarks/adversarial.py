"""Adversarial module benchmarks: how far wall time can drift from fuel, and how long hostile
modules make the engine compile (the corpus is ``benchmarks/wasm_gen.py``).

Figures (one core; units in the names):
- ``adv_ns_per_fuel_<class>``: wall time of one ``Sandbox.call`` over its ``gas_used`` for each
  operator class of ``wasm_gen.RUNTIME_CLASSES`` (an endless loop of the class stopped by fuel; the
  memory-growth class ends when memory is full), and ``tiny_call`` (a reducer returning at once:
  the per-call overhead over the per-call charge). Best of a few runs.
- ``adv_ns_per_fuel_worst``: the worst of those.
- ``adv_compile_ms_<bomb>``: compile time of each bomb of ``ALLOWED_BOMBS`` at the largest size the
  structural check (``wasm_check``) accepts, through ``Sandbox.compile`` (check included);
  ``adv_compile_ms_worst`` the worst (must stay at most 250 ms).
- ``adv_check_ms_largest``: the structural check alone on the largest accepted module of code
  (``largest_code_module``), and ``adv_compile_ms_largest`` its whole ``Sandbox.compile``.
- ``adv_decode_ms_worst_output``: ``abi.decode_module_output`` of the worst output within the ABI's
  item limit (all items one-byte integers).
- ``adv_block_s_worst_class``: a block of calls of the worst operator class (5 M fuel each) through
  the World path (deploy, install, tick instances) until ``abi.BLOCK_MODULE_GAS_BUDGET`` is used:
  seconds (must be at most 1 s); ``adv_block_s_tiny_calls`` the same with calls of the trivial
  reducer under ``max_gas`` 20,000 (the most calls the budget admits).

Run with ``python -m benchmarks.adversarial`` or ``python -m benchmarks.run --only adversarial``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agent_world_runtime.modules import abi, wasm_check
from agent_world_runtime.modules.manifest import ModuleLimits
from agent_world_runtime.modules.sandbox import Sandbox, wat_to_wasm
from benchmarks import wasm_gen

Record = Callable[[str, float], None]
CLASS_GAS = 20_000_000
CLASS_LIMITS = ModuleLimits(max_mem_bytes=16 << 20, max_gas=CLASS_GAS, max_output_bytes=256 * 1024)


def ns_per_fuel(sandbox: Sandbox, wasm: bytes, *, limits: ModuleLimits = CLASS_LIMITS, calls: int = 1,
                repeats: int = 3) -> float:
    """Return the best (over ``repeats``) wall time of ``calls`` calls of ``wasm``'s ``reduce`` in
    nanoseconds per unit of ``gas_used``."""
    compiled = sandbox.compile(wasm)
    best = float("inf")
    for _ in range(repeats):
        gas = 0
        start = time.perf_counter()
        for _ in range(calls):
            gas += sandbox.call(compiled, "reduce", b"", limits).gas_used
        best = min(best, (time.perf_counter() - start) * 1e9 / max(gas, 1))
    return best


def bench_classes(record: Record, sandbox: Sandbox) -> dict[str, float]:
    """Record ns per fuel of every runtime class and of tiny calls; return them by class."""
    figures = {}
    for kind, wat in wasm_gen.RUNTIME_CLASSES.items():
        figures[kind] = ns_per_fuel(sandbox, wat_to_wasm(wat))
    figures["tiny_call"] = ns_per_fuel(sandbox, wat_to_wasm(wasm_gen.TINY), calls=2_000)
    for kind, value in figures.items():
        record(f"adv_ns_per_fuel_{kind}", value)
    worst = max(figures, key=figures.__getitem__)
    record("adv_ns_per_fuel_worst", figures[worst])
    print(f"   worst class: {worst}", flush=True)
    return figures


# Each bomb at the largest size the structural check accepts: (kind, size).
ALLOWED_BOMBS: dict[str, Callable[[], bytes]] = {}


def _largest_accepted(kind: str, hi: int) -> tuple[int, bytes]:
    """Binary-search the largest size of bomb ``kind`` (at most ``hi``) that ``wasm_check`` accepts."""
    lo = 1
    if wasm_check.check_or_none(wasm_gen.bomb(kind, lo)) is not None:
        raise RuntimeError(f"bomb {kind} is rejected even at size 1")
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if wasm_check.check_or_none(wasm_gen.bomb(kind, mid)) is None:
            lo = mid
        else:
            hi = mid - 1
    return lo, wasm_gen.bomb(kind, lo)


BOMB_SEARCH_MAX = {
    "nest_block": 100_000, "nest_loop": 100_000, "nest_if": 100_000, "locals": 1_000_000,
    "locals_live": 100_000, "operand_stack": 200_000, "straight_code": 100_000,
    "many_functions": 100_000, "many_small_functions": 100_000, "br_table": 200_000,
    "br_table_deep": 100_000, "globals": 100_000, "data_bytes": 1 << 20, "data_segments": 200_000,
    "types": 100_000, "params": 100_000, "call_many_args": 100_000, "table_elems": 100_000,
    "seq_loops": 100_000, "seq_branches": 100_000, "funcs_of_loops": 100_000, "calls": 200_000,
    "grows": 200_000,
}


def bench_bombs(record: Record) -> None:
    """Record the compile time (check included, fresh Sandbox, best of 2) of every bomb at the
    largest accepted size, the worst of them, and the check time of the largest accepted module."""
    worst = 0.0
    for kind in wasm_gen.BOMBS:
        size, wasm = _largest_accepted(kind, BOMB_SEARCH_MAX.get(kind, 100_000))
        best = float("inf")
        for _ in range(2):
            sandbox = Sandbox()
            start = time.perf_counter()
            sandbox.compile(wasm)
            best = min(best, time.perf_counter() - start)
        record(f"adv_compile_ms_{kind}", best * 1000)
        print(f"   {kind}: size {size}, {len(wasm)} bytes", flush=True)
        worst = max(worst, best * 1000)
    record("adv_compile_ms_worst", worst)
    largest = largest_code_module()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        wasm_check.check_module(largest)
        best = min(best, time.perf_counter() - start)
    record("adv_check_ms_largest", best * 1000)
    record("adv_check_largest_bytes", len(largest))
    start = time.perf_counter()
    Sandbox().compile(largest)
    record("adv_compile_ms_largest", (time.perf_counter() - start) * 1000)


def largest_code_module() -> bytes:
    """Return a module of about ``MAX_MODULE_BYTES`` that is nearly all code (three bodies of plain
    arithmetic at ``MAX_FUNCTION_BODY_BYTES`` plus one of calls): the slowest input for the check."""
    straight = wasm_gen._straight(6_500)
    calls = (wasm_gen.VOID, [], b"\x10\x02" * 26_000)
    wasm = wasm_gen.build([straight, straight, straight, calls])
    wasm_check.check_module(wasm)
    return wasm


def bench_decode(record: Record) -> None:
    """Record the decode time of the worst output the ABI accepts to walk (all one-byte items)."""
    n = abi.MAX_OUTPUT_ITEMS - 1
    raw = b"\xdd" + n.to_bytes(4, "big") + b"\x00" * n
    limits = ModuleLimits(max_output_bytes=len(raw))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        try:
            abi.decode_module_output(raw, limits, reducer=True)
        except abi.OutputRejected:
            pass  # not a ModuleOutput: the walk and the decode still ran
        best = min(best, time.perf_counter() - start)
    record("adv_decode_ms_worst_output", best * 1000)
    over = raw[:1] + (n + 2).to_bytes(4, "big") + b"\x00" * (n + 2)
    start = time.perf_counter()
    try:
        abi.decode_module_output(over, ModuleLimits(max_output_bytes=len(over)), reducer=True)
    except abi.OutputRejected:
        pass
    record("adv_decode_ms_over_item_limit", (time.perf_counter() - start) * 1000)


def _block_world(wasm: bytes, max_gas: int):
    """Return a World at height 2 (block open) with enough tick instances of ``wasm`` that their
    ``max_gas`` fills ``abi.BLOCK_MODULE_GAS_BUDGET``: each agent publishes its own copy (a custom
    section makes the bytes distinct) and installs up to 32 instances of it."""
    from agent_world_runtime import World, compute_action_id
    from agent_world_runtime.actions import DeployModuleArtifact, InstallModuleFromArtifact
    from agent_world_runtime.crypto import sha256
    from agent_world_runtime.modules.manifest import ModuleManifest, Subscription
    from agent_world_runtime.params import WorldParams
    from agent_world_runtime.signer import AgentSigner

    def run(signed):  # type: ignore[no-untyped-def]
        events = world.apply_action(signed, compute_action_id(signed), signature_checked=True)
        if events[-1].kind == "domain.action_rejected":
            raise RuntimeError(f"setup action rejected: {events[-1].data}")

    instances = abi.BLOCK_MODULE_GAS_BUDGET // max_gas
    owners = [AgentSigner.from_seed(f"o{a}", a.to_bytes(32, "big"), "adv") for a in range((instances + 31) // 32)]
    world = World.from_genesis("adv", WorldParams(), agents=[o.genesis_agent(10**12, 10**12) for o in owners])
    world.begin_block(1, 1)
    limits = ModuleLimits(max_mem_bytes=16 << 20, max_gas=max_gas, max_output_bytes=1024)
    for a, owner in enumerate(owners):
        copy = wasm + wasm_gen.section(0, wasm_gen.name("copy") + a.to_bytes(4, "big"))
        manifest = ModuleManifest(module_id=f"worst{a}", version="1.0.0",
                                  subscriptions=[Subscription(kind="tick", stage="tick")], limits=limits)
        run(owner.sign(DeployModuleArtifact(sha256(copy).hex(), copy, manifest)))
        for i in range(min(32, instances - 32 * a)):
            run(owner.sign(InstallModuleFromArtifact(wasm_hash=sha256(copy).hex(), instance_id=f"w{a}-{i}")))
    world.end_block()
    world.begin_block(2, 2)
    return world


def bench_block(record: Record, label: str, wasm: bytes, max_gas: int) -> None:
    """Record the seconds one block of tick calls of ``wasm`` (each under ``max_gas``) takes
    through the World path with instances enough to fill ``abi.BLOCK_MODULE_GAS_BUDGET``
    (``adv_block_s_<label>``), scaled to the whole budget when the calls used less."""
    world = _block_world(wasm, max_gas)
    start = time.perf_counter()
    events = world.step_with_modules()
    elapsed = time.perf_counter() - start
    used = sum(e.data.get("gas_used", 0) for e in events if e.kind in ("module.called", "module.call_failed"))
    calls = sum(1 for e in events if e.kind in ("module.called", "module.call_failed"))
    print(f"   {label}: {calls} calls, {used} gas, {elapsed:.3f} s", flush=True)
    record(f"adv_block_s_{label}", elapsed * abi.BLOCK_MODULE_GAS_BUDGET / max(used, 1))


def run_all(record: Record) -> None:
    """Run every adversarial measurement and pass each figure to ``record(name, value)``."""
    sandbox = Sandbox()
    figures = bench_classes(record, sandbox)
    bench_bombs(record)
    bench_decode(record)
    classes = {k: v for k, v in figures.items() if k in wasm_gen.RUNTIME_CLASSES}
    worst = max(classes, key=classes.__getitem__)
    bench_block(record, "worst_class", wat_to_wasm(wasm_gen.RUNTIME_CLASSES[worst]), 5_000_000)
    bench_block(record, "tiny_calls", wat_to_wasm(wasm_gen.TINY), 20_000)


def main() -> None:
    """Print every figure (``python -m benchmarks.adversarial``)."""

    def record(name: str, value: float) -> None:
        print(f"{name:45s} {value:12.2f}", flush=True)

    run_all(record)


if __name__ == "__main__":
    main()
