"""The sandbox call path: world-wide limit caps, result masking and bounds checks, traps at each
stage, fresh instances (no state carried between calls), and the pooled engine under many sequential
and concurrent calls."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from agent_world_runtime.modules import abi
from agent_world_runtime.modules.manifest import ModuleLimits
from agent_world_runtime.modules.sandbox import (
    HARD_MAX_MEM_BYTES,
    POOL_SLOTS,
    ModuleLimitsMax,
    Sandbox,
    cap_module_limits,
    check_module_limits_max,
    wat_to_wasm,
)

LIMITS = ModuleLimits(max_mem_bytes=1 << 20, max_gas=1_000_000, max_output_bytes=4096)
TRIVIAL = wat_to_wasm((Path(__file__).resolve().parent.parent / "benchmarks" / "trivial_reducer.wat").read_text())


def module(reduce_body: str, alloc_body: str = "(i32.const 1024)", memory: int = 1, extra: str = "") -> bytes:
    return wat_to_wasm(f"""(module (memory (export "memory") {memory}) {extra}
  (func (export "alloc") (param $n i32) (result i32) {alloc_body})
  (func (export "reduce") (param $p i32) (param $n i32) (result i64) {reduce_body}))""")


def test_cap_module_limits_takes_the_minimum_and_floors_at_zero():
    limits = ModuleLimits(max_mem_bytes=64 << 20, max_gas=10, max_call_rate=5, max_output_bytes=-3,
                          max_effects=100, max_emits=2)
    cap = ModuleLimitsMax(max_mem_bytes=2 << 20, max_gas=1000, max_call_rate=1, max_output_bytes=10,
                          max_effects=8, max_emits=8)
    assert cap_module_limits(limits, cap) == ModuleLimits(
        max_mem_bytes=2 << 20, max_gas=10, max_call_rate=1, max_output_bytes=0, max_effects=8, max_emits=2)
    # The defaults equal the abi's world-wide maximums.
    assert cap_module_limits(ModuleLimits(), ModuleLimitsMax()) == ModuleLimits()  # defaults are within the caps


def test_module_limits_max_is_validated():
    with pytest.raises(ValueError, match="max_mem_bytes .* above"):
        check_module_limits_max(ModuleLimitsMax(max_mem_bytes=HARD_MAX_MEM_BYTES + 1))
    with pytest.raises(ValueError, match="max_gas must be an integer >= 0"):
        Sandbox().set_module_limits_max(ModuleLimitsMax(max_gas=-1))
    assert check_module_limits_max(ModuleLimitsMax(max_mem_bytes=HARD_MAX_MEM_BYTES)).max_mem_bytes == HARD_MAX_MEM_BYTES


def test_caps_are_applied_to_every_call_and_settable():
    sb = Sandbox()
    loop = sb.compile(module("(loop $l (br $l)) (i64.const 0)"))
    assert sb.call(loop, "reduce", b"", LIMITS).gas_used == LIMITS.max_gas
    sb.set_module_limits_max(ModuleLimitsMax(max_gas=50_000))
    assert sb.module_limits_max.max_gas == 50_000
    res = sb.call(loop, "reduce", b"", LIMITS)
    assert (res.code, res.gas_used) == (abi.OUT_OF_GAS, 50_000)
    big_output = sb.compile(TRIVIAL)
    assert sb.call(big_output, "reduce", b"", LIMITS).ok
    sb.set_module_limits_max(ModuleLimitsMax(max_output_bytes=0))
    assert sb.call(big_output, "reduce", b"", LIMITS).code == abi.OUTPUT_TOO_LARGE
    sb.set_module_limits_max(ModuleLimitsMax(max_mem_bytes=1 << 16))
    two_pages = sb.compile(module("(i64.const 0)", memory=2))
    res = sb.call(two_pages, "reduce", b"", LIMITS)
    assert res.code == abi.MEMORY_LIMIT and "65536" in res.detail


def test_trivial_reducer_output_and_fresh_instance_per_call():
    sb = Sandbox()
    compiled = sb.compile(TRIVIAL)
    first = sb.call(compiled, "reduce", b"x" * 100, LIMITS)
    assert first.ok and first.output == b"\x80" and first.gas_used > 0
    # A counter in a global: a reused instance would return 1, 2, 3...; a fresh one always 1.
    counter = sb.compile(module(
        "(global.set $c (i32.add (global.get $c) (i32.const 1))) (i32.store8 (i32.const 0) (global.get $c)) (i64.const 1)",
        extra="(global $c (mut i32) (i32.const 0))"))
    outs = {sb.call(counter, "reduce", b"", LIMITS).output for _ in range(5)}
    assert outs == {b"\x01"}


def test_negative_i64_result_is_masked_and_rejected_as_out_of_range():
    sb = Sandbox()
    res = sb.call(sb.compile(module("(i64.const -1)")), "reduce", b"", LIMITS)
    assert res.code == abi.OUTPUT_TOO_LARGE and str(0xFFFFFFFF) in res.detail
    res = sb.call(sb.compile(module("(i64.const 0xFFFFFFF000000010)")), "reduce", b"", LIMITS)
    assert res.code == abi.INVALID_OUTPUT and "outside the 65536-byte memory" in res.detail


def test_alloc_failures():
    sb = Sandbox()
    outside = sb.call(sb.compile(module("(i64.const 0)", alloc_body="(i32.const 65530)")), "reduce", b"0123456789", LIMITS)
    assert outside.code == abi.INVALID_OUTPUT and "alloc(10) returned 65530" in outside.detail
    negative = sb.call(sb.compile(module("(i64.const 0)", alloc_body="(i32.const -1)")), "reduce", b"abc", LIMITS)
    assert negative.code == abi.INVALID_OUTPUT and str(0xFFFFFFFF) in negative.detail
    no_room = sb.call(sb.compile(module("(i64.const 0)", alloc_body="(i32.const 65000)")), "reduce", b"z" * 1000,
                      ModuleLimits(max_mem_bytes=1 << 16))
    assert no_room.code == abi.MEMORY_LIMIT
    trap = sb.call(sb.compile(module("(i64.const 0)", alloc_body="unreachable")), "reduce", b"", LIMITS)
    assert (trap.code, trap.gas_used, trap.detail) == (abi.TRAP, LIMITS.max_gas, "alloc trapped: UNREACHABLE")


def test_traps_in_the_entry_point():
    sb = Sandbox()
    div = sb.call(sb.compile(module("(drop (i32.div_u (i32.const 1) (i32.const 0))) (i64.const 0)")), "reduce", b"", LIMITS)
    assert (div.code, div.detail, div.gas_used) == (abi.TRAP, "reduce trapped: INTEGER_DIVISION_BY_ZERO", LIMITS.max_gas)
    grow = module("(loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable")
    res = sb.call(sb.compile(grow), "reduce", b"", ModuleLimits(max_mem_bytes=4 << 16, max_gas=1_000_000))
    assert res.code == abi.MEMORY_LIMIT and not res.output
    rec = wat_to_wasm("""(module (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) i32.const 0)
      (func $r (export "reduce") (param i32 i32) (result i64) (call $r (local.get 0) (local.get 1))))""")
    so = sb.call(sb.compile(rec), "reduce", b"", ModuleLimits(max_gas=50_000_000))
    assert so.code in (abi.TRAP, abi.OUT_OF_GAS) and so.code == sb.call(sb.compile(rec), "reduce", b"", ModuleLimits(max_gas=50_000_000)).code


def test_many_sequential_and_concurrent_calls_never_exhaust_the_pool():
    sb = Sandbox()
    compiled = sb.compile(TRIVIAL)
    expected = sb.call(compiled, "reduce", b"q" * 64, LIMITS)
    for _ in range(POOL_SLOTS * 20):
        assert sb.call(compiled, "reduce", b"q" * 64, LIMITS) == expected
    results, errors = [], []

    def worker():
        try:
            for _ in range(50):
                results.append(sb.call(compiled, "reduce", b"q" * 64, LIMITS))
        except Exception as exc:  # pragma: no cover - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(POOL_SLOTS * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == POOL_SLOTS * 2 * 50
    assert set(results) == {expected}
