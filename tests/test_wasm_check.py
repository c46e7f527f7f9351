"""The structural check before compiling (wasm_check) and the host charges in gas_used: every bomb
of the corpus is rejected with its limit named, a module just under each limit passes, garbage
bytes are a ModuleValidationError, disabled instructions are rejected, and pages, base cost and
output bytes show up in gas_used deterministically."""

from __future__ import annotations

import pytest

from agent_world_runtime.modules import abi, wasm_check
from agent_world_runtime.modules.manifest import ModuleLimits
from agent_world_runtime.modules.sandbox import ModuleValidationError, Sandbox, fixed_call_gas, wat_to_wasm
from agent_world_runtime.modules.wasm_check import ModuleLimitError, check_module
from benchmarks import wasm_gen
from benchmarks.wasm_gen import bomb

# (bomb, size just under its limit, size over it, the limit's name)
LIMITED = [
    ("nest_block", wasm_check.MAX_NESTING_DEPTH, wasm_check.MAX_NESTING_DEPTH + 1, "MAX_NESTING_DEPTH"),
    ("nest_loop", wasm_check.MAX_NESTING_DEPTH, 20_000, "MAX_NESTING_DEPTH"),
    ("nest_if", wasm_check.MAX_NESTING_DEPTH, wasm_check.MAX_NESTING_DEPTH + 1, "MAX_NESTING_DEPTH"),
    ("locals", wasm_check.MAX_LOCALS, 50_000, "MAX_LOCALS"),
    ("locals", wasm_check.MAX_LOCALS, 2**32 - 1, "MAX_LOCALS"),
    ("straight_code", 6_000, 7_000, "MAX_FUNCTION_BODY_BYTES"),
    ("many_functions", wasm_check.MAX_FUNCTIONS - 2, wasm_check.MAX_FUNCTIONS - 1, "MAX_FUNCTIONS"),
    ("br_table", wasm_check.MAX_BR_TABLE_TARGETS, wasm_check.MAX_BR_TABLE_TARGETS + 1, "MAX_BR_TABLE_TARGETS"),
    ("globals", wasm_check.MAX_GLOBALS, wasm_check.MAX_GLOBALS + 1, "MAX_GLOBALS"),
    ("data_bytes", wasm_check.MAX_DATA_BYTES - 1, wasm_check.MAX_DATA_BYTES, "MAX_DATA_BYTES"),
    ("data_segments", wasm_check.MAX_DATA_SEGMENTS - 1, wasm_check.MAX_DATA_SEGMENTS, "MAX_DATA_SEGMENTS"),
    ("types", wasm_check.MAX_TYPES - 3, wasm_check.MAX_TYPES - 2, "MAX_TYPES"),
    ("params", wasm_check.MAX_RESULTS, wasm_check.MAX_RESULTS + 1, "MAX_RESULTS"),
    ("call_many_args", wasm_check.MAX_PARAMS, wasm_check.MAX_PARAMS + 1, "MAX_PARAMS"),
    ("table_elems", wasm_check.MAX_TABLE_ELEMENTS, wasm_check.MAX_TABLE_ELEMENTS + 1, "MAX_TABLE_ELEMENTS"),
    ("seq_loops", 2_000, 20_000, "MAX_COMPILE_WEIGHT"),
    ("seq_branches", 2_000, 10_000, "MAX_COMPILE_WEIGHT"),
    ("funcs_of_nested_loops", 100, 1_000, "MAX_COMPILE_WEIGHT"),
    ("calls", 20_000, 32_000, "MAX_COMPILE_WEIGHT"),
]


@pytest.mark.parametrize(("kind", "under", "over", "limit"), LIMITED)
def test_each_bomb_is_rejected_with_its_limit_named_and_passes_just_under(kind, under, over, limit):
    with pytest.raises(ModuleLimitError) as info:
        check_module(bomb(kind, over))
    assert info.value.limit == limit and f"module exceeds {limit}:" in str(info.value)
    assert info.value.value > info.value.maximum
    check_module(bomb(kind, under))


def test_compile_rejects_a_bomb_deterministically_without_compiling():
    sb = Sandbox()
    wasm = bomb("seq_loops", 20_000)
    with pytest.raises(ModuleValidationError) as first:
        sb.compile(wasm)
    with pytest.raises(ModuleValidationError) as second:
        Sandbox().compile(wasm)
    assert str(first.value) == str(second.value) and "MAX_COMPILE_WEIGHT" in str(first.value)
    assert sb.compiles == 0


def test_module_size_limit():
    wasm = bomb("data_bytes", 100) + wasm_gen.section(0, wasm_gen.name("pad") + b"\x00" * wasm_check.MAX_MODULE_BYTES)
    with pytest.raises(ModuleLimitError, match="MAX_MODULE_BYTES"):
        check_module(wasm)


def test_the_disk_cache_cannot_bypass_the_check(tmp_path):
    wasm = bomb("nest_loop", 300)
    with pytest.raises(ModuleLimitError):
        Sandbox(cache_dir=tmp_path).compile(wasm)
    assert Sandbox(cache_dir=tmp_path).stats()["disk_writes"] == 0


GOOD = bomb("straight_code", 10)


@pytest.mark.parametrize("cut", [1, 4, 8, 9, 10, 11, 20, 40, len(GOOD) // 2, len(GOOD) - 1])
def test_truncated_modules_are_validation_errors(cut):
    with pytest.raises(ModuleValidationError):
        Sandbox().compile(GOOD[:cut])


@pytest.mark.parametrize("blob", [
    b"",
    b"\x00asm\x01\x00\x00\x00\x01\xff\xff\xff\xff\xff\xff",  # overlong LEB128 section size
    b"\x00asm\x01\x00\x00\x00\x01\xff\xff\xff\xff\x0f",  # section size past the end
    b"\x00asm\x01\x00\x00\x00\x03\x05\xff\xff\xff\xff\x0f",  # huge function count
    b"\x00asm\x01\x00\x00\x00\x0a\x06\x01\x04\x00\xff\x0b\x0b",  # unknown opcode
    b"\x00asm\x01\x00\x00\x00\x63\x00",  # unknown section id
    bytes(range(256)) * 4,
])
def test_garbage_is_a_validation_error_not_a_crash(blob):
    with pytest.raises(ModuleValidationError):
        check_module(blob)
    with pytest.raises(ModuleValidationError):
        Sandbox().compile(blob)


def _abi_with(body: str, locals_: str = "", extra: str = "") -> bytes:
    return wat_to_wasm(f"""(module (memory (export "memory") 1) (data (i32.const 16) "\\80") {extra}
      (func (export "alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "reduce") (param i32 i32) (result i64) {locals_} {body} (i64.const {wasm_gen.EMPTY_OUTPUT})))""")


@pytest.mark.parametrize(("body", "locals_", "extra", "message"), [
    ("(drop (f64x2.sqrt (v128.const f64x2 1 2)))", "", "", "SIMD"),
    ("", "(local v128)", "", "v128"),
    ("(data.drop 0)", "", '(data "x")', "data.drop"),
    ("(memory.init 0 (i32.const 0) (i32.const 0) (i32.const 1))", "", '(data "x")', "memory.init"),
    ("(table.fill (i32.const 0) (ref.null func) (i32.const 1))", "", "(table 1 funcref)", "table.fill"),
    ("(drop (table.grow (ref.null func) (i32.const 1)))", "", "(table 1 funcref)", "table.grow"),
    ("(table.copy (i32.const 0) (i32.const 0) (i32.const 1))", "", "(table 1 funcref)", "table.copy"),
])
def test_disabled_instructions_are_rejected(body, locals_, extra, message):
    with pytest.raises(ModuleValidationError, match=message):
        Sandbox().compile(_abi_with(body, locals_, extra))


def test_memory_copy_fill_and_floats_are_allowed():
    sb = Sandbox()
    wasm = _abi_with("(memory.fill (i32.const 0) (i32.const 0) (i32.const 100))"
                     " (memory.copy (i32.const 200) (i32.const 0) (i32.const 100)) (drop (f64.sqrt (f64.const 2)))")
    assert sb.call(sb.compile(wasm), "reduce", b"", ModuleLimits()).ok


LIMITS = ModuleLimits(max_mem_bytes=4 << 20, max_gas=5_000_000)


def _grower(pages: int) -> bytes:
    return _abi_with(f"(drop (memory.grow (i32.const {pages})))")


def test_base_cost_and_input_bytes_are_in_gas_used():
    sb = Sandbox()
    tiny = sb.compile(_abi_with(""))
    empty = sb.call(tiny, "reduce", b"", LIMITS)
    assert empty.ok and empty.gas_used > abi.CALL_BASE_GAS + abi.MEMORY_PAGE_GAS
    engine_fuel = empty.gas_used - fixed_call_gas(0, 1) - abi.OUTPUT_BYTE_GAS * 1
    assert 0 < engine_fuel < 100
    with_input = sb.call(tiny, "reduce", b"x" * 1000, LIMITS)
    assert with_input.gas_used - empty.gas_used == 1000 * abi.INPUT_BYTE_GAS


def test_grown_pages_are_charged_deterministically():
    sb = Sandbox()
    used = {}
    for pages in (0, 1, 10, 20):
        compiled = sb.compile(_grower(pages))
        first, second = (sb.call(compiled, "reduce", b"", LIMITS) for _ in range(2))
        other = Sandbox()
        third = other.call(other.compile(_grower(pages)), "reduce", b"", LIMITS)
        assert first.ok and first.gas_used == second.gas_used == third.gas_used
        used[pages] = first.gas_used
    # ten pages more cost the same each time: MEMORY_PAGE_GAS per page (plus what the engine's own
    # fuel for memory.grow adds)
    assert used[20] - used[10] == used[10] - used[0]
    assert 10 * abi.MEMORY_PAGE_GAS <= used[10] - used[0] < 10 * abi.MEMORY_PAGE_GAS + 100


def test_initial_pages_are_charged_and_a_charge_above_max_gas_fails():
    sb = Sandbox()
    big = sb.compile(wat_to_wasm('(module (memory (export "memory") 40) (func (export "alloc") (param i32) (result i32) i32.const 0)'
                                 ' (func (export "reduce") (param i32 i32) (result i64) i64.const 0))'))
    res = sb.call(big, "reduce", b"", LIMITS)
    assert res.ok and res.gas_used >= fixed_call_gas(0, 40)
    small = ModuleLimits(max_mem_bytes=4 << 20, max_gas=fixed_call_gas(0, 40) - 1)
    res = sb.call(big, "reduce", b"", small)
    assert (res.ok, res.code, res.gas_used) == (False, abi.OUT_OF_GAS, small.max_gas)
    assert "fixed charge" in res.detail


def test_growing_past_max_gas_after_the_call_is_out_of_gas_billed_max_gas():
    sb = Sandbox()
    compiled = sb.compile(_grower(40))
    ok = sb.call(compiled, "reduce", b"", LIMITS)
    tight = ModuleLimits(max_mem_bytes=4 << 20, max_gas=ok.gas_used - 1)
    res = sb.call(compiled, "reduce", b"", tight)
    assert (res.code, res.gas_used) == (abi.OUT_OF_GAS, tight.max_gas) and "memory and output charges" in res.detail


def test_output_bytes_are_charged():
    sb = Sandbox()
    out = [sb.call(sb.compile(wat_to_wasm(wasm_gen.many_ints_output(n))), "reduce", b"", LIMITS) for n in (10, 1010)]
    assert out[1].gas_used - out[0].gas_used == 1000 * abi.OUTPUT_BYTE_GAS


def test_output_item_limit_stops_the_walk():
    n = abi.MAX_OUTPUT_ITEMS
    at_limit = b"\xdd" + (n - 1).to_bytes(4, "big") + b"\x00" * (n - 1)
    over = b"\xdd" + n.to_bytes(4, "big") + b"\x00" * n
    assert abi.msgpack_nesting_depth(at_limit, 32, n) == 1
    with pytest.raises(abi.TooManyItems):
        abi.msgpack_nesting_depth(over, 32, n)
    with pytest.raises(abi.OutputRejected) as info:
        abi.decode_module_output(over, ModuleLimits(max_output_bytes=len(over)), reducer=True)
    assert info.value.code == abi.OUTPUT_TOO_LARGE and f"more than {n} msgpack items" in info.value.detail
    # a huge declared count is refused as soon as the limit is passed, not after reading it all
    with pytest.raises(abi.TooManyItems):
        abi.msgpack_nesting_depth(b"\xdd\xff\xff\xff\xff" + b"\x00" * (n + 1), 32, n)
