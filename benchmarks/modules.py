"""Module call benchmarks: what one call of a trivial reducer costs.

Figures (one core, the same process and engine, ``REPEATS`` rounds of ``CALLS`` calls, best round):
- (a) ``bare``: a fresh-instance wasmtime call with nothing else: new Store, fuel and memory limit,
  instance from the module's ``InstancePre``, write the input, call ``alloc`` and ``reduce``, read
  the output; export indices looked up once. Done through wasmtime's C API (the fastest Python can
  drive the engine), so it is the strict baseline. ``bare_api`` is the same call through the
  public high-level wasmtime-py API (``instance.exports(store)`` per instance), for reference.
- (b) ``sandbox``: ``Sandbox.call`` of the same module and input (limit caps, every bounds check,
  trap mapping, ``CallResult``), including the compiled-module cache lookup (``Sandbox.compile``
  on a cached module), as the router does per call.
- (c) ``world``: ``World.apply_action`` of a signed move with the example ``move_counter`` reducer
  installed, minus the same move without it: the full module path (routing, input encoding, call,
  output decoding, billing, events) per module call.

The reducer is ``benchmarks/trivial_reducer.wat``; the input is a 100-byte msgpack-like payload.
Run with ``python -m benchmarks.modules`` or through ``benchmarks/run.py`` (``make bench``).
"""

from __future__ import annotations

import ctypes
import time
from ctypes import POINTER, byref
from pathlib import Path

import wasmtime
from wasmtime import _bindings as _c

from agent_world_runtime.modules.manifest import ModuleLimits
from agent_world_runtime.modules.sandbox import Sandbox, wat_to_wasm

ROOT = Path(__file__).resolve().parent.parent
TRIVIAL_REDUCER = ROOT / "benchmarks" / "trivial_reducer.wat"
LIMITS = ModuleLimits(max_mem_bytes=1 << 20, max_gas=1_000_000, max_output_bytes=64 * 1024)
INPUT = bytes([0x83]) + bytes(range(99))
CALLS = 20_000
REPEATS = 5


def _best_rate(fn, calls: int, repeats: int) -> float:
    """Return the best calls/s of ``repeats`` rounds of ``calls`` calls of ``fn()``."""
    fn()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = max(best, calls / (time.perf_counter() - start))
    return best


def bare_call_raw(sandbox: Sandbox, wasm: bytes):
    """Return a zero-argument function doing one bare fresh-instance call through the C API;
    it returns (output bytes, fuel used)."""
    compiled = sandbox.compile(wasm)
    pre_ptr, engine_ptr = compiled.pre_ptr, sandbox.engine.ptr()
    idx = compiled.export_index
    i_mem, i_alloc, i_reduce = idx["memory"], idx["alloc"], idx["reduce"]
    nofin = ctypes.cast(0, ctypes.CFUNCTYPE(None, ctypes.c_void_p))
    args_t, trap_t, name_t = _c.wasmtime_val_raw_t * 2, POINTER(_c.wasm_trap_t), POINTER(ctypes.c_char)
    store_new, store_ctx, store_del = _c._wasmtime_store_new, _c._wasmtime_store_context, _c._wasmtime_store_delete
    limiter, set_fuel, get_fuel = _c._wasmtime_store_limiter, _c._wasmtime_context_set_fuel, _c._wasmtime_context_get_fuel
    instantiate, nth, call = _c._wasmtime_instance_pre_instantiate, _c._wasmtime_instance_export_nth, _c._wasmtime_func_call_unchecked
    mem_data = _c._wasmtime_memory_data
    max_mem, max_gas, n = LIMITS.max_mem_bytes, LIMITS.max_gas, len(INPUT)

    def run():
        store = store_new(engine_ptr, None, nofin)
        try:
            ctx = store_ctx(store)
            limiter(store, max_mem, -1, -1, -1, -1)
            set_fuel(ctx, max_gas)
            inst, trap = _c.wasmtime_instance_t(), trap_t()
            if instantiate(pre_ptr, ctx, byref(inst), byref(trap)) or trap:
                raise RuntimeError("instantiation failed")
            name, name_len = name_t(), ctypes.c_size_t()
            mem, alloc, reduce = _c.wasmtime_extern_t(), _c.wasmtime_extern_t(), _c.wasmtime_extern_t()
            nth(ctx, byref(inst), i_mem, byref(name), byref(name_len), byref(mem))
            nth(ctx, byref(inst), i_alloc, byref(name), byref(name_len), byref(alloc))
            nth(ctx, byref(inst), i_reduce, byref(name), byref(name_len), byref(reduce))
            memory = byref(mem.of.memory)
            args = args_t()
            args[0].i32 = n
            if call(ctx, byref(alloc.of.func), args, 2, byref(trap)) or trap:
                raise RuntimeError("alloc trapped")
            ptr = args[0].i32
            ctypes.memmove(ctypes.addressof(mem_data(ctx, memory).contents) + ptr, INPUT, n)
            args[0].i32, args[1].i32 = ptr, n
            if call(ctx, byref(reduce.of.func), args, 2, byref(trap)) or trap:
                raise RuntimeError("reduce trapped")
            packed = args[0].i64 & 0xFFFFFFFFFFFFFFFF
            out = ctypes.string_at(ctypes.addressof(mem_data(ctx, memory).contents) + (packed >> 32), packed & 0xFFFFFFFF)
            left = ctypes.c_uint64()
            get_fuel(ctx, byref(left))
            return out, max_gas - left.value
        finally:
            store_del(store)

    return run


def bare_call_api(sandbox: Sandbox, wasm: bytes):
    """Return a zero-argument function doing the bare call through the high-level wasmtime-py API."""
    compiled = sandbox.compile(wasm)
    engine, pre = sandbox.engine, compiled.pre
    i_mem, i_alloc, i_reduce = (compiled.export_index[k] for k in ("memory", "alloc", "reduce"))

    def run():
        store = wasmtime.Store(engine)
        store.set_limits(memory_size=LIMITS.max_mem_bytes)
        store.set_fuel(LIMITS.max_gas)
        exports = pre.instantiate(store).exports(store).by_index
        memory = exports[i_mem]
        ptr = exports[i_alloc](store, len(INPUT))
        memory.write(store, INPUT, ptr)
        packed = exports[i_reduce](store, ptr, len(INPUT)) & 0xFFFFFFFFFFFFFFFF
        out = bytes(memory.read(store, packed >> 32, (packed >> 32) + (packed & 0xFFFFFFFF)))
        return out, LIMITS.max_gas - store.get_fuel()

    return run


def sandbox_call(sandbox: Sandbox, wasm: bytes):
    """Return a zero-argument function doing one ``Sandbox.compile`` (cache hit) + ``Sandbox.call``."""
    from agent_world_runtime.crypto import sha256

    wasm_hash = sha256(wasm).hex()
    sandbox.compile(wasm, wasm_hash)

    def run():
        result = sandbox.call(sandbox.compile(wasm, wasm_hash), "reduce", INPUT, LIMITS)
        if not result.ok:
            raise RuntimeError(f"sandbox call failed: {result.code} {result.detail}")
        return result.output, result.gas_used

    return run


def bench_world_module_call(moves: int = 1_000, *, trivial: bool = False) -> tuple[float, float]:
    """Return (module calls per second, microseconds per module call) of the full World path
    (routing, every limit and output check, billing, events): moves with a reducer subscribed to
    ``domain.agent_moved`` installed minus the same moves without it. The reducer is the example
    ``move_counter`` or, with ``trivial``, the trivial reducer of this directory."""
    from agent_world_runtime.actions import (
        CompileModuleArtifactFromSource,
        DeployModuleArtifact,
        InstallModuleFromArtifact,
    )
    from agent_world_runtime.crypto import sha256
    from agent_world_runtime.modules.manifest import ModuleLimits, ModuleManifest, Subscription
    from agent_world_runtime.modules.source import package_from_files
    from benchmarks.run import _world_with_agents  # shared world setup

    world, (builder,) = _world_with_agents(1)
    world.begin_block(2, 2)
    if trivial:
        wasm = wat_to_wasm(TRIVIAL_REDUCER.read_text())
        manifest = ModuleManifest(module_id="trivial", version="1.0.0", subscriptions=[Subscription("domain.agent_moved")],
                                  limits=ModuleLimits(max_call_rate=1_000))
        world.apply_action(builder.sign(DeployModuleArtifact(sha256(wasm).hex(), wasm, manifest)), b"d" * 32)
    else:
        ex = ROOT / "examples" / "modules"
        pkg = package_from_files([ex / "move_counter.wat", ex / "move_counter.manifest.json"], ex / "move_counter.manifest.json")
        world.apply_action(builder.sign(CompileModuleArtifactFromSource("move_counter", pkg)), b"c" * 32)
    wasm_hash = world.module_status()["artifacts"][0]["wasm_hash"]
    world.apply_action(builder.sign(InstallModuleFromArtifact(wasm_hash=wasm_hash)), b"i" * 32)
    world.end_block()

    calls_before = world.stats()["module_calls"]
    with_module = _timed_moves(world, builder, moves)
    calls = world.stats()["module_calls"] - calls_before
    if calls != moves:
        raise RuntimeError(f"expected {moves} module calls, saw {calls}")
    baseline_world, (plain,) = _world_with_agents(1)
    baseline = _timed_moves(baseline_world, plain, moves)
    per_call = (with_module - baseline) / moves
    return 1 / per_call, per_call * 1e6


def _timed_moves(world, signer, moves: int, per_block: int = 100) -> float:
    """Apply ``moves`` signed moves of ``signer`` in blocks of ``per_block`` (below move_counter's
    ``max_call_rate``); return the seconds spent in ``apply_action`` (signing and block ends excluded)."""
    from agent_world_runtime.actions import MoveAgent

    elapsed = 0.0
    for b in range(moves // per_block):
        height = world.height + 1
        world.begin_block(height, height)
        batch = [signer.sign(MoveAgent(to=(i % 2 + 1, b, 0))) for i in range(per_block)]
        start = time.perf_counter()
        for i, a in enumerate(batch):
            world.apply_action(a, (height * 10_000 + i).to_bytes(32, "big"), signature_checked=True)
        elapsed += time.perf_counter() - start
        world.end_block()
    for kind in ("domain.action_rejected", "module.call_failed"):
        failed = world.events(0, 10, kind)
        if failed:
            raise RuntimeError(f"benchmark moves must all succeed; saw {kind}: {failed[0].data}")
    return elapsed


def run_all(record, calls: int = CALLS, repeats: int = REPEATS) -> None:
    """Measure (a), (b) and (c) and pass each figure to ``record(name, value)``.

    Raises RuntimeError if the bare and sandbox paths disagree on output or fuel (they must not).
    """
    wasm = wat_to_wasm(TRIVIAL_REDUCER.read_text())
    sandbox = Sandbox()
    bare, api, sb = bare_call_raw(sandbox, wasm), bare_call_api(sandbox, wasm), sandbox_call(sandbox, wasm)
    if not (bare() == api() == sb()):
        raise RuntimeError(f"bare, api and sandbox calls disagree: {bare()} {api()} {sb()}")
    bare_rate = _best_rate(bare, calls, repeats)
    api_rate = _best_rate(api, calls, repeats)
    sandbox_rate = _best_rate(sb, calls, repeats)
    record("module_bare_call_per_s", bare_rate)
    record("module_bare_api_call_per_s", api_rate)
    record("module_sandbox_call_per_s", sandbox_rate)
    record("module_sandbox_over_bare_ratio", bare_rate / sandbox_rate)
    world_rate, world_us = bench_world_module_call()
    record("module_world_call_per_s", world_rate)
    record("module_call_us", world_us)
    trivial_rate, trivial_us = bench_world_module_call(trivial=True)
    record("module_world_trivial_call_per_s", trivial_rate)
    record("module_world_trivial_over_bare_ratio", bare_rate / trivial_rate)


def main() -> None:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    def record(name: str, value: float) -> None:
        print(f"{name:45s} {value:12.2f}", flush=True)

    run_all(record)


if __name__ == "__main__":
    main()
