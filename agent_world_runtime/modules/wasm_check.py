"""The structural check of module bytes, run before the engine compiles them (docs/module-abi.md,
"Fuel and what it charges").

wasmtime's compile time grows faster than the module's size for some shapes (many loops or branch
edges in one function, many functions), and every validator compiles a deployed module while it
executes the block. ``check_module(wasm)`` walks the binary (sections, LEB128 integers and every
instruction of the code section) with its own decoder, robust to hostile input (truncated or
overlong LEB128, huge counts, unknown opcodes), and raises ``ModuleLimitError`` naming the first
limit exceeded, or ``ModuleValidationError`` for malformed bytes and disabled instructions. It also
computes a ``compile weight``, an estimate of the compile time in microseconds on the reference
machine, from per-construct costs measured with ``benchmarks/adversarial.py``; it is bounded by
``MAX_COMPILE_WEIGHT``. Every message is built from names and numbers only (it is recorded in
consensus state as the deploy's rejection reason).

Disabled instructions (rejected here, whatever the engine accepts): SIMD (``0xfd`` prefix and the
``v128`` type), threads/atomics (``0xfe``), exceptions, tail calls, typed function references and
GC, and the bulk operations wasmtime does not charge per byte: ``memory.init``, ``data.drop``,
``table.init``, ``elem.drop``, ``table.copy``, ``table.grow``, ``table.size``, ``table.fill``.
``memory.copy`` and ``memory.fill`` are allowed: wasmtime 50 charges them one fuel unit per byte.
"""

from __future__ import annotations

from dataclasses import dataclass

# ---- limits (all counts unless a unit is named) ----------------------------------------------
MAX_MODULE_BYTES = 256 * 1024
MAX_FUNCTIONS = 2_048
MAX_FUNCTION_BODY_BYTES = 64 * 1024
MAX_NESTING_DEPTH = 256  # block/loop/if nesting within one function
MAX_LOCALS = 1_024  # params + declared locals of one function
MAX_GLOBALS = 1_024
MAX_TABLES = 4
MAX_TABLE_ELEMENTS = 10_000  # initial size of each table
MAX_ELEM_SEGMENTS = 64
MAX_DATA_SEGMENTS = 1_024
MAX_DATA_BYTES = 192 * 1024  # total bytes of all data segments
MAX_BR_TABLE_TARGETS = 4_096
MAX_TYPES = 1_024
MAX_PARAMS = 64
MAX_RESULTS = 16
MAX_EXPORTS = 64
MAX_COMPILE_WEIGHT = 150_000  # estimated microseconds of compile time on the reference machine

# Compile weight of one function (see the module docstring), in estimated microseconds:
#   WEIGHT_FUNCTION + WEIGHT_BLOCK*b + b*b // BLOCK_SQUARE_DIV + WEIGHT_BRANCH*r + r*r // BRANCH_SQUARE_DIV
#   + WEIGHT_CALL*c + body_bytes // BYTES_PER_WEIGHT
# with b blocks (block, loop, if), r branch targets (br, br_if, each br_table target, if) and c
# calls (call, call_indirect, memory.grow). Measured: ~25 us per function, ~10 us per loop, plus
# a term quadratic in the loops (1000 loops in one function: 25 ms) and in the branch edges
# (20,000 br_if to one block: 1.7 s), ~10 us per branch edge, ~5 us per call site, ~0.05 us per byte of plain code.
WEIGHT_FUNCTION = 25
WEIGHT_BLOCK = 10
BLOCK_SQUARE_DIV = 64
WEIGHT_BRANCH = 10
BRANCH_SQUARE_DIV = 256
WEIGHT_CALL = 5
BYTES_PER_WEIGHT = 16

_MAGIC = b"\x00asm\x01\x00\x00\x00"
_VALTYPES = frozenset((0x7F, 0x7E, 0x7D, 0x7C, 0x70, 0x6F))
_V128 = 0x7B


class ModuleValidationError(ValueError):
    """The bytes are not a usable module: invalid or malformed wasm, a disabled instruction,
    imports, or missing/mistyped ABI exports. The message is deterministic (names and numbers)."""


class ModuleLimitError(ModuleValidationError):
    """A structural limit is exceeded: ``limit`` is the constant's name, ``value`` what the module
    has, ``maximum`` the limit."""

    def __init__(self, limit: str, what: str, value: int, maximum: int, advice: str) -> None:
        super().__init__(f"module exceeds {limit}: {what} is {value}, the limit is {maximum}; {advice}")
        self.limit = limit
        self.value = value
        self.maximum = maximum


@dataclass(frozen=True)
class ModuleShape:
    """What ``check_module`` counted: functions, blocks (block/loop/if), branch targets, call
    sites, code bytes, the deepest nesting, and the compile weight (estimated microseconds)."""

    functions: int
    blocks: int
    branches: int
    calls: int
    code_bytes: int
    max_depth: int
    compile_weight: int


def _malformed(what: str, pos: int) -> ModuleValidationError:
    return ModuleValidationError(f"not a valid WebAssembly module: {what} at offset {pos}")


def _limit(value: int, maximum: int, name: str, what: str, advice: str) -> None:
    if value > maximum:
        raise ModuleLimitError(name, what, value, maximum, advice)


class _Reader:
    """A cursor over ``buf`` between ``pos`` and ``end``; every read is bounds-checked."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes, pos: int, end: int) -> None:
        self.buf, self.pos, self.end = buf, pos, end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise _malformed("unexpected end", self.pos)
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def u32(self) -> int:
        buf, pos, end = self.buf, self.pos, self.end
        result = shift = 0
        for i in range(5):
            if pos >= end:
                raise _malformed("truncated LEB128 integer", pos)
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                if i == 4 and b > 0x0F:
                    raise _malformed("LEB128 integer too large for 32 bits", pos - 1)
                self.pos = pos
                return result
            shift += 7
        raise _malformed("LEB128 integer longer than 5 bytes", pos - 1)

    def skip_leb(self, max_bytes: int) -> None:
        buf, pos, end = self.buf, self.pos, self.end
        for _ in range(max_bytes):
            if pos >= end:
                raise _malformed("truncated LEB128 integer", pos)
            b = buf[pos]
            pos += 1
            if not b & 0x80:
                self.pos = pos
                return
        raise _malformed(f"LEB128 integer longer than {max_bytes} bytes", pos - 1)

    def skip(self, n: int) -> None:
        if n > self.end - self.pos:
            raise _malformed(f"{n} bytes run past the end", self.pos)
        self.pos += n

    def valtype(self, where: str) -> int:
        t = self.byte()
        if t == _V128:
            raise ModuleValidationError(f"{where} uses the v128 type: SIMD is disabled")
        if t not in _VALTYPES:
            raise _malformed(f"unsupported value type 0x{t:02x} in {where}", self.pos - 1)
        return t


# Immediate kinds of the one-byte opcodes.
_NONE, _BLOCK, _ELSE, _END, _IDX, _IDX2, _BR_TABLE, _SELECT_T, _HEAPTYPE, _MEMARG, _BYTE_IDX, _S32, _S64, _B4, _B8, \
    _FC, _BAD, _BR, _CALL, _CALL_INDIRECT, _GROW = range(21)
_KIND = [_BAD] * 256
for _op in (0x00, 0x01, 0x0F, 0x1A, 0x1B, 0xD1, *range(0x45, 0xC5)):
    _KIND[_op] = _NONE
_KIND[0x02] = _KIND[0x03] = _KIND[0x04] = _BLOCK
_KIND[0x05], _KIND[0x0B] = _ELSE, _END
_KIND[0x0C] = _KIND[0x0D] = _BR
_KIND[0x0E] = _BR_TABLE
_KIND[0x10] = _CALL
_KIND[0x11] = _CALL_INDIRECT
_KIND[0x1C] = _SELECT_T
for _op in (0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0xD2):
    _KIND[_op] = _IDX
for _op in range(0x28, 0x3F):
    _KIND[_op] = _MEMARG
_KIND[0x3F] = _BYTE_IDX
_KIND[0x40] = _GROW
_KIND[0x41], _KIND[0x42], _KIND[0x43], _KIND[0x44] = _S32, _S64, _B4, _B8
_KIND[0xD0] = _HEAPTYPE
_KIND[0xFC] = _FC
_FC_ALLOWED = {**{i: 0 for i in range(8)}, 10: 2, 11: 1}  # sub-opcode -> number of u32 immediates
_FC_DISABLED = {8: "memory.init", 9: "data.drop", 12: "table.init", 13: "elem.drop", 14: "table.copy",
                15: "table.grow", 16: "table.size", 17: "table.fill"}
_DISABLED_PREFIX = {0xFD: "SIMD", 0xFE: "threads (atomics)"}


def _skip_blocktype(r: _Reader) -> None:
    b = r.buf[r.pos] if r.pos < r.end else -1
    if b == 0x40 or b in _VALTYPES:
        r.pos += 1
    elif b == _V128:
        raise ModuleValidationError("a block has the v128 type: SIMD is disabled")
    else:
        r.skip_leb(5)  # s33 type index


def _walk_code(r: _Reader, func: int, const_expr: bool = False) -> tuple[int, int, int, int]:
    """Walk instructions from ``r.pos`` to the ``end`` closing the function (or constant
    expression); return (blocks, branch targets, calls, deepest nesting)."""
    buf, kinds = r.buf, _KIND
    depth = blocks = branches = calls = max_depth = 0
    while True:
        if r.pos >= r.end:
            raise _malformed(f"function {func} body ends inside a block", r.pos)
        op = buf[r.pos]
        r.pos += 1
        k = kinds[op]
        if k == _NONE:
            continue
        if k == _IDX or k == _BR:
            r.skip_leb(5)
            if k == _BR:
                branches += 1
        elif k == _MEMARG:
            r.skip_leb(5)
            r.skip_leb(5)
        elif k == _END:
            if depth == 0:
                return blocks, branches, calls, max_depth
            depth -= 1
        elif k == _S32:
            r.skip_leb(5)
        elif k == _BLOCK:
            _skip_blocktype(r)
            depth += 1
            blocks += 1
            if op == 0x04:
                branches += 1
            if depth > max_depth:
                max_depth = depth
                _limit(depth, MAX_NESTING_DEPTH, "MAX_NESTING_DEPTH", f"control nesting depth in function {func}",
                       "flatten the control flow or split the function")
        elif k == _ELSE:
            if depth == 0:
                raise _malformed("else outside if", r.pos - 1)
        elif k == _CALL or k == _CALL_INDIRECT or k == _GROW:
            r.skip_leb(5)
            if k == _CALL_INDIRECT:
                r.skip_leb(5)
            calls += 1
        elif k == _S64:
            r.skip_leb(10)
        elif k == _B4:
            r.skip(4)
        elif k == _B8:
            r.skip(8)
        elif k == _BR_TABLE:
            n = r.u32()
            _limit(n, MAX_BR_TABLE_TARGETS, "MAX_BR_TABLE_TARGETS", f"br_table target count in function {func}",
                   "use fewer targets (a table in memory and nested br_if)")
            for _ in range(n + 1):
                r.skip_leb(5)
            branches += n + 1
        elif k == _BYTE_IDX:
            r.skip_leb(5)
        elif k == _SELECT_T:
            for _ in range(r.u32()):
                r.valtype(f"function {func}")
        elif k == _HEAPTYPE:
            r.skip_leb(5)
        elif k == _FC:
            sub = r.u32()
            if sub in _FC_DISABLED:
                raise ModuleValidationError(
                    f"function {func} uses {_FC_DISABLED[sub]}: this bulk-memory/table instruction is disabled "
                    "(memory.copy and memory.fill are allowed)")
            if sub not in _FC_ALLOWED:
                raise ModuleValidationError(f"function {func} uses the unknown or disabled instruction 0xfc {sub}")
            for _ in range(_FC_ALLOWED[sub]):
                r.skip_leb(5)
        else:
            what = _DISABLED_PREFIX.get(op)
            if what:
                raise ModuleValidationError(f"function {func} uses a {what} instruction: {what} is disabled")
            raise ModuleValidationError(
                f"function {func} uses the unknown or disabled instruction 0x{op:02x} at offset {r.pos - 1}")
        if const_expr and depth:
            raise _malformed("block in a constant expression", r.pos)


def function_weight(blocks: int, branches: int, calls: int, body_bytes: int) -> int:
    """Return the compile weight of one function (estimated microseconds; see the module docstring)."""
    return (WEIGHT_FUNCTION + WEIGHT_BLOCK * blocks + blocks * blocks // BLOCK_SQUARE_DIV + WEIGHT_BRANCH * branches
            + branches * branches // BRANCH_SQUARE_DIV + WEIGHT_CALL * calls + body_bytes // BYTES_PER_WEIGHT)


def check_module(wasm: bytes) -> ModuleShape:
    """Check ``wasm`` (module bytes) against every structural limit of this module; return its shape.

    Raises ModuleLimitError (a ModuleValidationError) naming the first limit exceeded, or
    ModuleValidationError for malformed bytes or a disabled instruction. Linear in ``len(wasm)``.
    """
    _limit(len(wasm), MAX_MODULE_BYTES, "MAX_MODULE_BYTES", "module size in bytes", "make the module smaller")
    if wasm[:8] != _MAGIC:
        raise ModuleValidationError("not a valid WebAssembly module: bad magic number or version (want \\0asm, version 1)")
    r = _Reader(wasm, 8, len(wasm))
    params: list[int] = []
    func_types: list[int] = []
    shape = [0, 0, 0, 0, 0, 0, 0]  # functions, blocks, branches, calls, code bytes, depth, weight
    while r.pos < r.end:
        sid = r.byte()
        size = r.u32()
        start = r.pos
        if size > r.end - start:
            raise _malformed(f"section {sid} of {size} bytes runs past the end", start)
        s = _Reader(wasm, start, start + size)
        if sid == 1:
            _types(s, params)
        elif sid == 3:
            n = s.u32()
            _limit(n, MAX_FUNCTIONS, "MAX_FUNCTIONS", "function count", "merge functions or split the module")
            for _ in range(n):
                func_types.append(s.u32())
        elif sid == 4:
            _tables(s)
        elif sid == 6:
            _limit(s.u32(), MAX_GLOBALS, "MAX_GLOBALS", "global count", "keep fewer globals (use memory)")
        elif sid == 7:
            _limit(s.u32(), MAX_EXPORTS, "MAX_EXPORTS", "export count", "export fewer items")
        elif sid == 9:
            _limit(s.u32(), MAX_ELEM_SEGMENTS, "MAX_ELEM_SEGMENTS", "element segment count", "merge element segments")
        elif sid == 10:
            _code(s, params, func_types, shape)
        elif sid == 11:
            _data(s)
        elif sid == 2 or sid == 5 or sid == 8 or sid == 12 or sid == 0:
            pass  # imports (rejected after compile), memory, start, data count, custom: nothing to bound here
        else:
            raise _malformed(f"unknown or disabled section id {sid}", start - 1)
        r.pos = start + size
    _limit(shape[6], MAX_COMPILE_WEIGHT, "MAX_COMPILE_WEIGHT",
           f"compile weight (estimated microseconds; {shape[0]} functions, {shape[1]} blocks, {shape[2]} branch "
           f"targets, {shape[3]} calls, {shape[4]} code bytes)",
           "use fewer functions, loops, branches and calls, or split the module")
    return ModuleShape(*shape)


def check_or_none(wasm: bytes) -> str | None:
    """Return None if ``check_module(wasm)`` passes, else its error message."""
    try:
        check_module(wasm)
    except ModuleValidationError as exc:
        return str(exc)
    return None


def _types(s: _Reader, params: list[int]) -> None:
    n = s.u32()
    _limit(n, MAX_TYPES, "MAX_TYPES", "type count", "deduplicate function types")
    for i in range(n):
        form = s.byte()
        if form != 0x60:
            raise _malformed(f"type {i} is not a function type (0x{form:02x}; GC types are disabled)", s.pos - 1)
        p = s.u32()
        _limit(p, MAX_PARAMS, "MAX_PARAMS", f"parameter count of type {i}", "pass a pointer to memory instead")
        for _ in range(p):
            s.valtype(f"type {i}")
        q = s.u32()
        _limit(q, MAX_RESULTS, "MAX_RESULTS", f"result count of type {i}", "return a pointer to memory instead")
        for _ in range(q):
            s.valtype(f"type {i}")
        params.append(p)


def _tables(s: _Reader) -> None:
    n = s.u32()
    _limit(n, MAX_TABLES, "MAX_TABLES", "table count", "use fewer tables")
    for i in range(n):
        if s.byte() not in (0x70, 0x6F):
            raise _malformed(f"table {i} has an unsupported element type", s.pos - 1)
        flags = s.byte()
        if flags not in (0, 1):
            raise _malformed(f"table {i} has unsupported limits flags 0x{flags:02x}", s.pos - 1)
        _limit(s.u32(), MAX_TABLE_ELEMENTS, "MAX_TABLE_ELEMENTS", f"initial size of table {i}", "use a smaller table")
        if flags == 1:
            s.u32()


def _code(s: _Reader, params: list[int], func_types: list[int], shape: list[int]) -> None:
    n = s.u32()
    if n != len(func_types):
        raise _malformed(f"code section has {n} bodies for {len(func_types)} functions", s.pos)
    for f in range(n):
        size = s.u32()
        _limit(size, MAX_FUNCTION_BODY_BYTES, "MAX_FUNCTION_BODY_BYTES", f"body size in bytes of function {f}",
               "split the function")
        if size > s.end - s.pos:
            raise _malformed(f"body of function {f} runs past the end", s.pos)
        body = _Reader(s.buf, s.pos, s.pos + size)
        t = func_types[f]
        count = params[t] if t < len(params) else 0
        for _ in range(body.u32()):
            count += body.u32()
            _limit(count, MAX_LOCALS, "MAX_LOCALS", f"parameters and locals of function {f}",
                   "keep fewer locals (use memory)")
            body.valtype(f"the locals of function {f}")
        blocks, branches, calls, depth = _walk_code(body, f)
        if body.pos != body.end:
            raise _malformed(f"instructions after the end of function {f}", body.pos)
        shape[0] += 1
        shape[1] += blocks
        shape[2] += branches
        shape[3] += calls
        shape[4] += size
        shape[5] = max(shape[5], depth)
        shape[6] += function_weight(blocks, branches, calls, size)
        s.pos += size


def _data(s: _Reader) -> None:
    n = s.u32()
    _limit(n, MAX_DATA_SEGMENTS, "MAX_DATA_SEGMENTS", "data segment count", "merge data segments")
    total = 0
    for i in range(n):
        flags = s.u32()
        if flags == 2:
            s.u32()
        if flags in (0, 2):
            _walk_code(s, i, const_expr=True)
        elif flags != 1:
            raise _malformed(f"data segment {i} has unsupported flags {flags}", s.pos)
        size = s.u32()
        total += size
        _limit(total, MAX_DATA_BYTES, "MAX_DATA_BYTES", "total size in bytes of the data segments",
               "initialize less memory from data")
        s.skip(size)
