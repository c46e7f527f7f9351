"""The wasm sandbox: frozen engine config, call outcomes, fuel determinism, the compiled-module cache,
and the msgpack structure check used on module output."""

from __future__ import annotations

import subprocess
import sys

import msgspec
import pytest

from agent_world_runtime.modules import abi
from agent_world_runtime.modules.manifest import ModuleLimits
from agent_world_runtime.modules.sandbox import ModuleValidationError, Sandbox, wat_to_wasm

ECHO = wat_to_wasm("""(module
  (memory (export "memory") 1)
  (global $h (mut i32) (i32.const 1024))
  (func (export "alloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $h)) (global.set $h (i32.add (local.get $p) (local.get $n))) (local.get $p))
  ;; returns its input unchanged, after a loop whose length depends on the input length
  (func (export "reduce") (param $p i32) (param $n i32) (result i64) (local $i i32)
    (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if $l (i32.lt_u (local.get $i) (local.get $n))))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32)) (i64.extend_i32_u (local.get $n)))))""")

LIMITS = ModuleLimits(max_mem_bytes=1 << 20, max_gas=1_000_000, max_output_bytes=4096)


def test_engine_config_builds_without_aborting_the_process():
    # A bad feature combination SIGABRTs the interpreter, so build the engine in a child process.
    code = "from agent_world_runtime.modules.sandbox import build_engine; build_engine(); print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_echo_call_and_deterministic_fuel():
    sb = Sandbox()
    compiled = sb.compile(ECHO)
    first = sb.call(compiled, "reduce", b"hello world", LIMITS)
    assert first.ok and first.output == b"hello world" and first.code is None
    gas = {sb.call(compiled, "reduce", b"hello world", LIMITS).gas_used for _ in range(5)}
    other = Sandbox()
    gas.add(other.call(other.compile(ECHO), "reduce", b"hello world", LIMITS).gas_used)
    with pytest.raises(ValueError, match="another Sandbox"):
        other.call(compiled, "reduce", b"", LIMITS)
    assert gas == {first.gas_used}
    longer = sb.call(compiled, "reduce", b"hello world, longer input", LIMITS)
    assert longer.gas_used > first.gas_used


def test_output_too_large_and_unknown_entry():
    sb = Sandbox()
    compiled = sb.compile(ECHO)
    res = sb.call(compiled, "reduce", b"x" * 100, ModuleLimits(max_output_bytes=50))
    assert not res.ok and res.code == abi.OUTPUT_TOO_LARGE
    with pytest.raises(ValueError, match="does not export entry point 'call'"):
        sb.call(compiled, "call", b"", LIMITS)


def test_out_of_gas_is_billed_in_full():
    sb = Sandbox()
    res = sb.call(sb.compile(ECHO), "reduce", b"y" * 3000, ModuleLimits(max_gas=500))
    assert (res.ok, res.code, res.gas_used) == (False, abi.OUT_OF_GAS, 500)


def test_declared_memory_above_limit():
    wasm = wat_to_wasm('(module (memory (export "memory") 32) (func (export "alloc") (param i32) (result i32) i32.const 0)'
                       ' (func (export "reduce") (param i32 i32) (result i64) i64.const 0))')
    sb = Sandbox()
    res = sb.call(sb.compile(wasm), "reduce", b"", ModuleLimits(max_mem_bytes=1 << 20))
    assert res.code == abi.MEMORY_LIMIT and "2097152" in res.detail


def test_start_function_loop_runs_out_of_gas():
    wasm = wat_to_wasm('(module (memory (export "memory") 1) (func $s (loop $l (br $l))) (start $s)'
                       ' (func (export "alloc") (param i32) (result i32) i32.const 0)'
                       ' (func (export "reduce") (param i32 i32) (result i64) i64.const 0))')
    sb = Sandbox()
    res = sb.call(sb.compile(wasm), "reduce", b"", ModuleLimits(max_gas=100_000))
    assert res.code == abi.OUT_OF_GAS and res.detail.startswith("instantiate")


def test_stack_overflow_is_a_trap_with_a_fixed_detail():
    wasm = wat_to_wasm('(module (memory (export "memory") 1) (func $r (call $r))'
                       ' (func (export "alloc") (param i32) (result i32) i32.const 0)'
                       ' (func (export "reduce") (param i32 i32) (result i64) (call $r) i64.const 0))')
    sb = Sandbox()
    res = sb.call(sb.compile(wasm), "reduce", b"", LIMITS)
    assert (res.code, res.detail, res.gas_used) == (abi.TRAP, "reduce trapped: STACK_OVERFLOW", LIMITS.max_gas)


def test_alloc_returning_out_of_range_pointer():
    wasm = wat_to_wasm('(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) i32.const 65530)'
                       ' (func (export "reduce") (param i32 i32) (result i64) i64.const 0))')
    sb = Sandbox()
    res = sb.call(sb.compile(wasm), "reduce", b"0123456789", LIMITS)
    assert res.code == abi.INVALID_OUTPUT and "alloc(10) returned 65530" in res.detail


@pytest.mark.parametrize(
    ("wat", "message"),
    [
        ('(module (memory (export "memory") 1))', "'alloc'"),
        ('(module (func (export "alloc") (param i32) (result i32) i32.const 0))', "'memory'"),
        ('(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) i32.const 0))',
         "entry point 'reduce' (reducer) or 'call' (pure)"),
    ],
)
def test_abi_shape_is_checked_at_compile(wat, message):
    with pytest.raises(ModuleValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Sandbox().compile(wat_to_wasm(wat))


def test_threads_are_disabled():
    wasm = wat_to_wasm('(module (memory (export "memory") 1 1 shared))')
    with pytest.raises(ModuleValidationError, match="not a valid WebAssembly module"):
        Sandbox().compile(wasm)


def test_compiled_module_cache_is_bounded_lru():
    sb = Sandbox(cache_size=2)
    mods = [wat_to_wasm(f'(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) i32.const {i})'
                        ' (func (export "reduce") (param i32 i32) (result i64) i64.const 0))') for i in range(3)]
    a, b, c = (sb.compile(m) for m in mods)
    assert sb.compiles == 3
    assert not sb.cached(a.wasm_hash) and sb.cached(b.wasm_hash) and sb.cached(c.wasm_hash)
    assert sb.compile(mods[2]) is c and sb.compiles == 3
    sb.compile(mods[0])
    assert sb.compiles == 4 and not sb.cached(b.wasm_hash)


def test_msgpack_nesting_depth_scanner():
    enc = msgspec.msgpack.encode
    assert abi.msgpack_nesting_depth(enc(1), 4) == 0
    assert abi.msgpack_nesting_depth(enc({"a": [1, {"b": b"x" * 300}], "s": "t" * 40}), 4) == 3
    assert abi.msgpack_nesting_depth(enc([[[]]]), 4) == 3
    with pytest.raises(ValueError, match="deeper than 2"):
        abi.msgpack_nesting_depth(enc([[[]]]), 2)
    with pytest.raises(ValueError, match="truncated"):
        abi.msgpack_nesting_depth(enc([1, 2, 3])[:-1], 4)
    with pytest.raises(ValueError, match="trailing"):
        abi.msgpack_nesting_depth(enc(1) + b"\x01", 4)
    with pytest.raises(ValueError, match="truncated"):
        abi.msgpack_nesting_depth(b"\xdd\xff\xff\xff\xff", 4)
    with pytest.raises(ValueError, match="truncated"):
        abi.msgpack_nesting_depth(b"\xc6\x00\x01\x00\x00", 4)
