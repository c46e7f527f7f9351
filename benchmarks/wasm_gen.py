"""Generators of adversarial WebAssembly modules (the bomb corpus of ``benchmarks/adversarial.py``
and ``tests/test_wasm_check.py``): small Python functions writing module bytes directly, so the
corpus needs no large files.

Every module built here follows the module ABI (exports ``memory``, ``alloc(i32) -> i32`` and
``reduce(i32, i32) -> i64``; ``reduce`` returns the one-byte output ``{}`` stored at offset 16) and
adds what makes it hostile: ``bomb(kind, n)`` builds the compile-time bomb ``kind`` of size ``n``
(see ``BOMBS``); ``runtime_module(kind)`` builds a reducer that runs operator class ``kind`` in an
endless loop (see ``RUNTIME_CLASSES``) until its fuel runs out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

I32, I64, F32, F64 = 0x7F, 0x7E, 0x7D, 0x7C
EMPTY_OUTPUT = (16 << 32) | 1  # reduce's result: the 1-byte ModuleOutput {} at offset 16


def u(n: int) -> bytes:
    """Unsigned LEB128 of ``n``."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def s(n: int) -> bytes:
    """Signed LEB128 of ``n``."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if (n == 0 and not b & 0x40) or (n == -1 and b & 0x40):
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def vec(items: Sequence[bytes]) -> bytes:
    """A wasm vector: the count, then the items."""
    return u(len(items)) + b"".join(items)


def section(sid: int, payload: bytes) -> bytes:
    """A section with id ``sid``."""
    return bytes([sid]) + u(len(payload)) + payload


def name(text: str) -> bytes:
    """A wasm name."""
    raw = text.encode()
    return u(len(raw)) + raw


def functype(params: Sequence[int], results: Sequence[int]) -> bytes:
    """A function type."""
    return b"\x60" + vec([bytes([p]) for p in params]) + vec([bytes([r]) for r in results])


# Function = (type index, locals as [(count, valtype)], instructions without the final ``end``).
Func = tuple[int, Sequence[tuple[int, int]], bytes]
VOID = 2  # the type index of () -> () in every module built here


def build(funcs: Sequence[Func] = (), *, types: Sequence[bytes] = (), mem_pages: int = 1, globals_: Sequence[bytes] = (),
          table: int | None = None, elems: bytes = b"", datas: Sequence[bytes] = (), reduce_code: bytes | None = None,
          extra_exports: Sequence[bytes] = ()) -> bytes:
    """Return an ABI module: type 0 ``(i32)->i32`` (alloc), 1 ``(i32 i32)->i64`` (reduce), 2
    ``()->()``, then ``types``; function 0 alloc (returns 1024), 1 reduce (``reduce_code`` or return
    the empty output), then ``funcs`` (indices 2...). ``datas`` are active segments' bytes laid out
    from offset 4096; ``table`` is a funcref table of that size, ``elems`` a raw element section
    payload; ``globals_`` are raw global entries."""
    all_types = [functype([I32], [I32]), functype([I32, I32], [I64]), functype([], []), *types]
    alloc: Func = (0, [], b"\x41" + s(1024))
    reduce: Func = (1, [], reduce_code if reduce_code is not None else b"\x42" + s(EMPTY_OUTPUT))
    all_funcs = [alloc, reduce, *funcs]
    out = [b"\x00asm\x01\x00\x00\x00", section(1, vec(all_types)), section(3, vec([u(t) for t, _, _ in all_funcs]))]
    if table is not None:
        out.append(section(4, vec([b"\x70\x00" + u(table)])))
    out.append(section(5, vec([b"\x00" + u(mem_pages)])))
    if globals_:
        out.append(section(6, vec(list(globals_))))
    exports = [name("memory") + b"\x02\x00", name("alloc") + b"\x00\x00", name("reduce") + b"\x00\x01", *extra_exports]
    out.append(section(7, vec(exports)))
    if elems:
        out.append(section(9, elems))
    bodies = []
    for _, local_decls, code in all_funcs:
        body = vec([u(n) + bytes([t]) for n, t in local_decls]) + code + b"\x0b"
        bodies.append(u(len(body)) + body)
    out.append(section(10, vec(bodies)))
    segs, offset = [b"\x00\x41\x10\x0b" + vec([b"\x80"])], 4096  # the output {} at offset 16
    for d in datas:
        segs.append(b"\x00\x41" + s(offset) + b"\x0b" + u(len(d)) + d)
        offset += len(d)
    out.append(section(11, vec(segs)))
    return b"".join(out)


# ---- compile-time bombs ----------------------------------------------------------------------

def _nest(open_: bytes, n: int) -> Func:
    return (VOID, [], open_ * n + b"\x0b" * n)


def _locals(n: int) -> Func:
    return (VOID, [(n, I64)], b"\x20" + u(n - 1) + b"\x1a" if n else b"")


def _locals_live(n: int) -> Func:
    # n i64 locals, each read and written inside a loop: all n stay live across the back edge.
    body = b"\x03\x40" + b"".join(b"\x20" + u(i) + b"\x42\x01\x7c\x21" + u(i) for i in range(n)) + b"\x0b"
    return (VOID, [(n, I64)], body)


def _stack(n: int) -> Func:
    return (VOID, [], b"\x41\x01" * n + b"\x1a" * n)


def _straight(n: int) -> Func:
    # n rounds of local0 = local0 * 7 + local1 (i32 arithmetic, a long basic block)
    return (VOID, [(2, I32)], b"\x20\x00\x41\x07\x6c\x20\x01\x6a\x21\x00" * n)


def _br_table(n: int) -> Func:
    return (VOID, [], b"\x02\x40\x41\x00\x0e" + u(n) + b"\x00" * n + b"\x00\x0b")


def _br_table_deep(n: int) -> Func:
    # n nested blocks and one br_table jumping to each of them
    return (VOID, [], b"\x02\x40" * n + b"\x41\x00\x0e" + u(n) + b"".join(u(i) for i in range(n)) + b"\x00" + b"\x0b" * n)


def _params(n: int) -> list[bytes]:
    return [functype([I64] * n, [I64] * min(n, 1000))]


def bomb(kind: str, n: int) -> bytes:
    """Return the compile-time bomb ``kind`` (a key of ``BOMBS``) at size ``n``."""
    return BOMBS[kind](n)


def _call_many_args(n: int) -> bytes:
    # function 2 takes n i64 params; function 3 calls it 8 times
    callee: Func = (3, [], b"")
    call = b"\x42\x00" * n + b"\x10\x02"
    caller: Func = (VOID, [], call * 8)
    return build([callee, caller], types=[functype([I64] * n, [])])


def _data_segments(n: int) -> bytes:
    return build(datas=[b"x"] * n, mem_pages=1 + n // 65536)


BOMBS: dict[str, Callable[[int], bytes]] = {
    "nest_block": lambda n: build([_nest(b"\x02\x40", n)]),
    "nest_loop": lambda n: build([_nest(b"\x03\x40", n)]),
    "nest_if": lambda n: build([(VOID, [], b"\x41\x00\x04\x40" * n + b"\x0b" * n)]),
    "locals": lambda n: build([_locals(n)]),
    "locals_live": lambda n: build([_locals_live(n)]),
    "operand_stack": lambda n: build([_stack(n)]),
    "straight_code": lambda n: build([_straight(n)]),
    "many_functions": lambda n: build([(VOID, [], b"")] * n),
    "many_small_functions": lambda n: build([(VOID, [(1, I32)], b"\x20\x00\x41\x07\x6c\x21\x00" * 4)] * n),
    "br_table": lambda n: build([_br_table(n)]),
    "br_table_deep": lambda n: build([_br_table_deep(n)]),
    "globals": lambda n: build([(VOID, [], b"".join(b"\x23" + u(i) + b"\x42\x01\x7c\x24" + u(i) for i in range(n)))],
                               globals_=[b"\x7e\x01\x42\x00\x0b"] * n),
    "data_bytes": lambda n: build(datas=[b"x" * n], mem_pages=1 + n // 65536),
    "data_segments": _data_segments,
    "types": lambda n: build(types=[functype([I64] * 8, [I64])] * n),
    "params": lambda n: build(types=_params(n)),
    "call_many_args": _call_many_args,
    "table_elems": lambda n: build([(VOID, [], b"")], table=n,
                                   elems=vec([b"\x00\x41\x00\x0b" + vec([u(2)] * n)])),
    "seq_loops": lambda n: build([(VOID, [], b"\x03\x40\x0b" * n)]),
    "seq_branches": lambda n: build([(VOID, [], b"\x02\x40" + b"\x41\x00\x0d\x00" * n + b"\x0b")]),
    "funcs_of_loops": lambda n: build([(VOID, [], b"\x03\x40\x0b" * 32)] * n),
    "funcs_of_nested_loops": lambda n: build([(VOID, [], b"\x03\x40" * 64 + b"\x0b" * 64)] * n),
    "funcs_of_branches": lambda n: build([(VOID, [], b"\x02\x40" + b"\x41\x00\x0d\x00" * 64 + b"\x0b")] * n),
    "calls": lambda n: build([(VOID, [], b"\x10\x02" * n)]),
    "grows": lambda n: build([(VOID, [], b"\x41\x00\x40\x00\x1a" * n)]),
}


# ---- runtime operator classes ----------------------------------------------------------------

def _wat(body: str, pages: int = 1, locals_: str = "") -> str:
    return f"""(module
  (type $v (func))
  (memory (export "memory") {pages})
  (data (i32.const 16) "\\80")
  (table 1 funcref) (elem (i32.const 0) $nop)
  (func $nop)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "reduce") (param $p i32) (param $n i32) (result i64)
    (local $x i64) (local $m i64) (local $a i64) (local $f f64) (local $g f64) (local $i i32) (local $y i32) {locals_}
    (local.set $x (i64.const 0x123456789abcdef)) (local.set $m (i64.const -1))
    (local.set $a (i64.const 6364136223846793005)) (local.set $f (f64.const 2.5)) (local.set $g (f64.const 1.0000001))
    {body}
    (i64.const {EMPTY_OUTPUT})))"""


_R = 50  # operators per chain: one fuel unit each, every one waiting on the previous result
_TOUCH = ("(local.set $i (i32.const 0)) (loop $t (i32.store8 (local.get $i) (local.get $i))"
          " (local.set $i (i32.add (local.get $i) (i32.const 4096))) (br_if $t (i32.lt_u (local.get $i) (i32.const 0x1000000))))")

RUNTIME_CLASSES: dict[str, str] = {
    # an endless loop of the operator class; the call ends when its fuel runs out
    "plain_loop": _wat("(loop $l (br $l))"),
    # divisors come from the input length, so the compiler cannot fold them
    "i64_div_chain": _wat("(local.set $a (i64.extend_i32_u (i32.add (local.get $n) (i32.const 1)))) (local.set $x (i64.const -1))"
                          " (loop $l local.get $x" + " local.get $a i64.div_u" * _R + " local.set $x (br $l))"),
    "i64_rem_chain": _wat("(local.set $a (i64.sub (i64.const 0x7fffffffffffffff) (i64.extend_i32_u (local.get $n))))"
                          " (loop $l local.get $x" + " local.get $a i64.rem_u" * _R + " local.set $x (br $l))"),
    "i32_div_chain": _wat("(local.set $i (i32.add (local.get $n) (i32.const 1))) (local.set $y (i32.const -1))"
                          " (loop $l local.get $y" + " local.get $i i32.div_u" * _R + " local.set $y (br $l))"),
    "f64_sqrt_chain": _wat("(loop $l local.get $f" + " f64.sqrt" * _R + " local.set $f (br $l))"),
    "f32_sqrt_chain": _wat("(loop $l local.get $f f32.demote_f64" + " f32.sqrt" * _R + " f64.promote_f32 local.set $f (br $l))"),
    "f64_div_chain": _wat("(loop $l local.get $f" + " local.get $g f64.div" * _R + " local.set $f (br $l))"),
    "f64_add_mul_chain": _wat("(loop $l local.get $f" + " local.get $g f64.mul local.get $g f64.add" * _R + " local.set $f (br $l))"),
    # every 4 KiB page of 16 MiB touched once, then a dependent chain of pseudo-random byte loads
    "random_load_16mib": _wat(_TOUCH + " (local.set $y (i32.const 12345)) (local.set $i (i32.const 1664525))"
                              " (loop $l local.get $y local.get $i i32.mul local.tee $y i32.const 8 i32.shr_u i32.load8_u"
                              " local.get $y i32.add local.set $y (br $l))", pages=256),
    # grow one page at a time and touch each 4 KiB of it, until memory is full
    "memory_grow_touch": _wat(
        "(block $done (loop $l (br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))"
        " (local.set $i (i32.mul (i32.sub (memory.size) (i32.const 1)) (i32.const 65536)))"
        " (local.set $y (i32.add (local.get $i) (i32.const 65536)))"
        " (loop $t (i32.store8 (local.get $i) (i32.const 1)) (local.set $i (i32.add (local.get $i) (i32.const 4096)))"
        " (br_if $t (i32.lt_u (local.get $i) (local.get $y)))) (br $l)))"),
    "memory_copy_8mib": _wat("(loop $l (memory.copy (i32.const 0) (i32.const 0x800000) (i32.const 0x7FFFFF)) (br $l))", pages=256),
    "memory_fill_16mib": _wat("(loop $l (memory.fill (i32.const 0) (i32.const 0) (i32.const 0xFFFFFF)) (br $l))", pages=256),
    "calls": _wat("(loop $l (call $nop) (br $l))"),
    "call_indirect": _wat("(loop $l (call_indirect (type $v) (i32.const 0)) (br $l))"),
}

# Classes that only the original engine configuration accepts (SIMD and the table/segment bulk
# operations are now rejected).
DISABLED_CLASSES: dict[str, str] = {
    "f64x2_sqrt": _wat("(loop $l (local.set $v (f64x2.sqrt (local.get $v))) (br $l))", locals_="(local $v v128)"),
    "table_fill": _wat("(loop $l (table.fill (i32.const 0) (ref.null func) (i32.const 1)) (br $l))"),
    "data_drop": _wat("(loop $l (data.drop 0) (br $l))"),
}

# The trivial reducer: returns {} at once (per-call overhead).
TINY = _wat("")


def many_ints_output(n: int) -> str:
    """WAT of a reducer returning a msgpack array of ``n`` small integers (``0xdd`` header + ``n``
    zero bytes): the most items per output byte."""
    pages = (n + 8 + 1024 + 65535) // 65536 + 1
    return f"""(module
  (memory (export "memory") {pages})
  (func (export "alloc") (param i32) (result i32) (i32.const 64))
  (func (export "reduce") (param i32 i32) (result i64)
    (i32.store8 (i32.const 1024) (i32.const 0xdd))
    (i32.store (i32.const 1025) (i32.const {int.from_bytes(n.to_bytes(4, "big"), "little")}))
    (i64.const {(1024 << 32) | (n + 5)})))"""
