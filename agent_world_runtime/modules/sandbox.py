"""The metered WebAssembly sandbox: the one place that talks to the wasm engine (wasmtime).

``Sandbox.compile(wasm)`` validates and compiles a module and checks the ABI shape (no imports;
exports ``memory``, ``alloc(i32) -> i32`` and the entry points); ``Sandbox.call(compiled, entry,
input, limits)`` runs one call in a FRESH instance under a memory limit and a fuel budget and
returns a ``CallResult``. Swapping the engine means rewriting this file only.

Determinism (docs /work/shared/notes/wasmtime-py.md): the engine config below is frozen (fuel on,
NaN canonicalization on, fixed stack size, nondeterministic proposals off) and must not be changed
casually: some invalid combinations abort the whole process (SIGABRT), which
``tests/test_runtime_sandbox.py`` guards in a subprocess. Fuel used is deterministic for a fresh
instance. Failure details are built only from trap codes and numbers, never from engine messages
(those include backtraces whose text depends on environment variables). Every trap is billed
``max_gas``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import structlog
import wasmtime

from ..crypto import sha256
from . import abi

log = structlog.get_logger(__name__)

WASM_PAGE = 65536
MAX_WASM_STACK_BYTES = 512 * 1024
MAX_EXPORTS = 64
MAX_TABLE_ELEMENTS = 10_000
DEFAULT_CACHE_SIZE = 128


def build_config() -> wasmtime.Config:
    """Return the frozen deterministic engine configuration (see module docstring)."""
    c = wasmtime.Config()
    c.consume_fuel = True
    c.cranelift_nan_canonicalization = True
    c.cranelift_opt_level = "speed"
    c.max_wasm_stack = MAX_WASM_STACK_BYTES
    c.parallel_compilation = False
    c.wasm_threads = False
    c.shared_memory = False
    c.wasm_relaxed_simd = False
    c.wasm_gc = False
    c.gc_support = False
    c.wasm_exceptions = False
    c.wasm_memory64 = False
    c.wasm_multi_memory = False
    c.wasm_function_references = False
    c.wasm_stack_switching = False
    c.wasm_wide_arithmetic = False
    c.wasm_custom_page_sizes = False
    c.wasm_component_model = False
    c.wasm_tail_call = False
    return c


def build_engine() -> wasmtime.Engine:
    """Return a new engine with ``build_config()``."""
    return wasmtime.Engine(build_config())


def engine_message(exc: BaseException, limit: int = 300) -> str:
    """Return an engine error message as one deterministic line: whitespace collapsed, any
    backtrace section dropped, at most ``limit`` characters."""
    text = str(exc).split("Stack backtrace", 1)[0].split("wasm backtrace", 1)[0]
    return " ".join(text.split())[:limit]


def wat_to_wasm(text: str) -> bytes:
    """Compile WebAssembly text to module bytes in-process (deterministic for the pinned engine).

    Raises ModuleValidationError with the engine's parse error (line and column) on bad WAT.
    """
    try:
        return bytes(wasmtime.wat2wasm(text))
    except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
        raise ModuleValidationError(f"WAT does not compile: {engine_message(exc)}") from None


class ModuleValidationError(ValueError):
    """The bytes are not a usable module: invalid wasm, imports, or missing/mistyped ABI exports."""


@dataclass(frozen=True)
class CallResult:
    """The outcome of one call: ``ok`` with the raw ``output`` bytes, or a failure ``code`` (one of
    ``abi``'s codes) with a deterministic ``detail``; ``gas_used`` in fuel units."""

    ok: bool
    output: bytes
    gas_used: int
    code: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class CompiledModule:
    """A compiled module ready to instantiate: ``entries`` are its exported ABI entry points."""

    wasm_hash: str
    module: wasmtime.Module
    pre: wasmtime.InstancePre
    entries: frozenset[str]
    min_memory_bytes: int
    engine: wasmtime.Engine


class Sandbox:
    """Compile and run modules with a bounded LRU cache of compiled modules keyed by ``wasm_hash``.

    Thread-safe for concurrent use (the cache is locked; each call has its own store).
    """

    def __init__(self, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self.engine = build_engine()
        self._linker = wasmtime.Linker(self.engine)
        self._cache: OrderedDict[str, CompiledModule] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.compiles = 0

    def compile(self, wasm: bytes, wasm_hash: str | None = None) -> CompiledModule:
        """Validate and compile ``wasm`` (raw module bytes), using the cache when possible.

        Raises ModuleValidationError when the bytes are not valid wasm under the deterministic
        config, the module imports anything, or it lacks ``memory`` / ``alloc(i32) -> i32`` /
        at least one entry point ``reduce`` or ``call`` of type ``(i32, i32) -> i64``.
        """
        key = wasm_hash or sha256(wasm).hex()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        compiled = self._compile_uncached(wasm, key)
        with self._lock:
            self._cache[key] = compiled
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    def cached(self, wasm_hash: str) -> bool:
        """Return True if the module ``wasm_hash`` is in the compiled-module cache."""
        with self._lock:
            return wasm_hash in self._cache

    def _compile_uncached(self, wasm: bytes, key: str) -> CompiledModule:
        try:
            module = wasmtime.Module(self.engine, wasm)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            raise ModuleValidationError(f"not a valid WebAssembly module: {engine_message(exc)}") from None
        self.compiles += 1
        imports = module.imports
        if imports:
            first = imports[0]
            raise ModuleValidationError(
                f"module imports {first.module}.{first.name}; modules must import nothing (the ABI has no host functions)"
            )
        exports = {e.name: e.type for e in module.exports}
        if len(exports) > MAX_EXPORTS:
            raise ModuleValidationError(f"module has {len(exports)} exports; the limit is {MAX_EXPORTS}")
        mem = exports.get("memory")
        if not isinstance(mem, wasmtime.MemoryType):
            raise ModuleValidationError("module must export its linear memory as 'memory'")
        _require_func(exports, "alloc", ["i32"], ["i32"])
        entries = set()
        for entry in ("reduce", "call"):
            if entry in exports:
                _require_func(exports, entry, ["i32", "i32"], ["i64"])
                entries.add(entry)
        if not entries:
            raise ModuleValidationError("module must export an entry point 'reduce' (reducer) or 'call' (pure): (i32, i32) -> i64")
        pre = self._linker.instantiate_pre(module)
        return CompiledModule(
            wasm_hash=key,
            module=module,
            pre=pre,
            entries=frozenset(entries),
            min_memory_bytes=mem.limits.min * WASM_PAGE,
            engine=self.engine,
        )

    def call(self, compiled: CompiledModule, entry: str, input_bytes: bytes, limits: abi.ModuleLimits) -> CallResult:
        """Run ``entry(ptr, len)`` on ``input_bytes`` in a fresh instance of ``compiled``.

        Limits used: ``max_mem_bytes`` (linear memory), ``max_gas`` (fuel), ``max_output_bytes``.
        Never raises for anything the guest does: traps, fuel exhaustion, memory exhaustion and
        out-of-range results come back as a failed CallResult (OUT_OF_GAS, MEMORY_LIMIT, TRAP,
        OUTPUT_TOO_LARGE, INVALID_OUTPUT). Raises ValueError if ``entry`` is not exported or
        ``compiled`` came from another Sandbox (modules are bound to their engine).
        """
        if compiled.engine is not self.engine:
            raise ValueError(f"module {compiled.wasm_hash} was compiled by another Sandbox; compile it with this one")
        if entry not in compiled.entries:
            raise ValueError(f"module {compiled.wasm_hash} does not export entry point {entry!r}")
        max_gas = limits.max_gas
        if compiled.min_memory_bytes > limits.max_mem_bytes:
            return _fail(
                abi.MEMORY_LIMIT, 0,
                f"module declares {compiled.min_memory_bytes} bytes of initial memory; the limit is {limits.max_mem_bytes}",
            )
        store = wasmtime.Store(self.engine)
        store.set_limits(
            memory_size=limits.max_mem_bytes, table_elements=MAX_TABLE_ELEMENTS, instances=1, tables=4, memories=1
        )
        store.set_fuel(max_gas)
        memory = None
        stage = "instantiate"
        try:
            instance = compiled.pre.instantiate(store)
            exports = instance.exports(store)
            memory = exports["memory"]
            stage = "alloc"
            ptr = exports["alloc"](store, len(input_bytes)) & 0xFFFFFFFF
            size = memory.data_len(store)
            if ptr + len(input_bytes) > size:
                if size + WASM_PAGE > limits.max_mem_bytes:
                    return _fail(abi.MEMORY_LIMIT, _used(store, max_gas),
                                 f"no room for the {len(input_bytes)}-byte input within {limits.max_mem_bytes} bytes of memory")
                return _fail(abi.INVALID_OUTPUT, _used(store, max_gas),
                             f"alloc({len(input_bytes)}) returned {ptr}, outside the {size}-byte memory")
            memory.write(store, input_bytes, ptr)
            stage = entry
            packed = exports[entry](store, ptr, len(input_bytes)) & 0xFFFFFFFFFFFFFFFF
        except wasmtime.Trap as trap:
            return self._trap_result(trap, store, memory, limits, stage)
        except wasmtime.WasmtimeError:
            # Instantiation errors (data segment out of bounds, table over the limit) and the like.
            return _fail(abi.TRAP, max_gas, f"{stage} failed: the module could not run under the sandbox limits")
        gas_used = _used(store, max_gas)
        out_ptr, out_len = packed >> 32, packed & 0xFFFFFFFF
        if out_len > limits.max_output_bytes:
            return _fail(abi.OUTPUT_TOO_LARGE, gas_used, f"output is {out_len} bytes; the limit is {limits.max_output_bytes}")
        size = memory.data_len(store)
        if out_ptr + out_len > size:
            return _fail(abi.INVALID_OUTPUT, gas_used,
                         f"{entry} returned the range [{out_ptr}, {out_ptr + out_len}) outside the {size}-byte memory")
        output = bytes(memory.read(store, out_ptr, out_ptr + out_len))
        return CallResult(ok=True, output=output, gas_used=gas_used)

    @staticmethod
    def _trap_result(trap: wasmtime.Trap, store: wasmtime.Store, memory, limits: abi.ModuleLimits, stage: str) -> CallResult:
        code = trap.trap_code
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return _fail(abi.OUT_OF_GAS, limits.max_gas, f"{stage} used all {limits.max_gas} units of fuel")
        name = code.name if code is not None else "UNKNOWN"
        if memory is not None and memory.data_len(store) + WASM_PAGE > limits.max_mem_bytes:
            return _fail(abi.MEMORY_LIMIT, limits.max_gas,
                         f"{stage} trapped ({name}) with memory at the {limits.max_mem_bytes}-byte limit")
        return _fail(abi.TRAP, limits.max_gas, f"{stage} trapped: {name}")


def _require_func(exports: dict, name: str, params: list[str], results: list[str]) -> None:
    ty = exports.get(name)
    if not isinstance(ty, wasmtime.FuncType):
        raise ModuleValidationError(f"module must export function {name!r}: ({', '.join(params)}) -> {', '.join(results)}")
    got_params = [str(p) for p in ty.params]
    got_results = [str(r) for r in ty.results]
    if got_params != params or got_results != results:
        raise ModuleValidationError(
            f"export {name!r} has type ({', '.join(got_params)}) -> ({', '.join(got_results)}); "
            f"the ABI needs ({', '.join(params)}) -> ({', '.join(results)})"
        )


def _used(store: wasmtime.Store, max_gas: int) -> int:
    return max_gas - store.get_fuel()


def _fail(code: str, gas_used: int, detail: str) -> CallResult:
    return CallResult(ok=False, output=b"", gas_used=gas_used, code=code, detail=detail)


_default: Sandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> Sandbox:
    """Return the process-wide shared Sandbox (one engine and one compiled-module cache)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Sandbox()
        return _default
