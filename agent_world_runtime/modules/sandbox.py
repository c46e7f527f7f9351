"""The metered WebAssembly sandbox: the one place that talks to the wasm engine (wasmtime).

``Sandbox.compile(wasm)`` validates and compiles a module and checks the ABI shape (no imports;
exports ``memory``, ``alloc(i32) -> i32`` and the entry points); ``Sandbox.call(compiled, entry,
input, limits)`` runs one call in a FRESH instance under a memory limit and a fuel budget and
returns a ``CallResult``. Swapping the engine means rewriting this file only.

Determinism (docs/module-abi.md, "Determinism"): the engine config below is frozen (fuel on,
NaN canonicalization on, fixed stack size, nondeterministic proposals off, pooling allocator with
fixed slot sizes) and must not be changed casually: fuel counts are consensus, and some invalid
combinations abort the whole process (SIGABRT), which ``tests/test_runtime_sandbox.py`` guards in a
subprocess. Fuel used is deterministic for a fresh instance (a reused instance's fuel depends on its
history, so every call gets a new store and instance). Failure details are built only from trap
codes and numbers, never from engine messages (those include backtraces whose text depends on
environment variables). Every trap is billed ``max_gas``.

Caches (``cache.py``): compiled modules are kept in an LRU keyed by ``wasm_hash``
(``max_cached_modules``, settable) and, when a cache directory is given, on disk keyed by
(wasm_hash, wasmtime version, ``engine_fingerprint()``) with an integrity check before
``Module.deserialize``. Compiled artifacts are never accepted from anywhere else.

Speed: the call path goes through wasmtime's C API (``wasmtime._bindings``, pinned 50.0.1) rather
than the high-level Python wrappers: export indices are looked up once per compiled module, the
instance is created from an ``InstancePre``, the store is freed deterministically after each call
(which the pooling allocator needs), and the entry point is called with
``wasmtime_func_call_unchecked`` (safe: the export types are checked at compile time).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import platform
import threading
from ctypes import POINTER, byref
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import structlog
import wasmtime
from wasmtime import _bindings as _c

from ..crypto import sha256
from . import abi
from .cache import DiskArtifactCache, ModuleLRU
from .manifest import ModuleLimits, ModuleLimitsMax, cap_module_limits
from .wasm_check import MAX_EXPORTS, MAX_TABLE_ELEMENTS, MAX_TABLES, ModuleValidationError, check_module

log = structlog.get_logger(__name__)

WASM_PAGE = 65536
MAX_WASM_STACK_BYTES = 512 * 1024
DEFAULT_CACHE_SIZE = 128
WASMTIME_VERSION = metadata.version("wasmtime")

# The frozen engine configuration: attribute name on wasmtime.Config -> value. Part of the
# engine fingerprint (disk cache key). Fuel counts per wasm operator, so neither the allocator nor
# the opt level changes gas_used; NaN canonicalization and the feature set change results.
ENGINE_SETTINGS: dict[str, object] = {
    "consume_fuel": True,
    "cranelift_nan_canonicalization": True,
    "cranelift_opt_level": "speed",
    "max_wasm_stack": MAX_WASM_STACK_BYTES,
    "parallel_compilation": False,
    "wasm_threads": False,
    "shared_memory": False,
    "wasm_relaxed_simd": False,
    "wasm_simd": False,
    "wasm_gc": False,
    "gc_support": False,
    "wasm_exceptions": False,
    "wasm_memory64": False,
    "wasm_multi_memory": False,
    "wasm_function_references": False,
    "wasm_stack_switching": False,
    "wasm_wide_arithmetic": False,
    "wasm_custom_page_sizes": False,
    "wasm_component_model": False,
    "wasm_tail_call": False,
}

# The pooling instance allocator (fresh Store + Instance ~10 us instead of ~18 us). Its limits are
# fixed and generous: one call holds one slot and frees it before returning, and at most
# POOL_SLOTS calls run at once (a semaphore), so a slot is always free and instantiation never
# fails for a reason that depends on load. A slot's memory is HARD_MAX_MEM_BYTES, the ceiling of
# any module_limits_max (so memory.grow fails exactly at the store limit, as without pooling).
POOL_SLOTS = 16
HARD_MAX_MEM_BYTES = 256 << 20
POOL_SETTINGS: dict[str, int] = {
    "total_core_instances": POOL_SLOTS,
    "total_memories": POOL_SLOTS,
    "total_tables": POOL_SLOTS * MAX_TABLES,
    "max_memories_per_module": 1,
    "max_tables_per_module": MAX_TABLES,
    "table_elements": MAX_TABLE_ELEMENTS,
    "max_memory_size": HARD_MAX_MEM_BYTES,
}

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF

# C API entry points, bound once (wasmtime 50.0.1).
_store_new = _c._wasmtime_store_new
_store_context = _c._wasmtime_store_context
_store_delete = _c._wasmtime_store_delete
_store_limiter = _c._wasmtime_store_limiter
_set_fuel = _c._wasmtime_context_set_fuel
_get_fuel = _c._wasmtime_context_get_fuel
_pre_instantiate = _c._wasmtime_instance_pre_instantiate
_export_nth = _c._wasmtime_instance_export_nth
_call_unchecked = _c._wasmtime_func_call_unchecked
_memory_data = _c._wasmtime_memory_data
_memory_size = _c._wasmtime_memory_data_size
_Instance = _c.wasmtime_instance_t
_Extern = _c.wasmtime_extern_t
_TrapPtr = POINTER(_c.wasm_trap_t)
_NamePtr = POINTER(ctypes.c_char)
_Args2 = _c.wasmtime_val_raw_t * 2
_NO_FINALIZER = ctypes.cast(0, ctypes.CFUNCTYPE(None, ctypes.c_void_p))

if TYPE_CHECKING:  # the C API's pointer types, for annotations only
    _StorePtr: TypeAlias = ctypes._Pointer[_c.wasmtime_store_t]
    _ContextPtr: TypeAlias = ctypes._Pointer[_c.wasmtime_context_t]
    _ErrorPtr: TypeAlias = ctypes._Pointer[_c.wasmtime_error_t]
    _TrapPtrT: TypeAlias = ctypes._Pointer[_c.wasm_trap_t]
    _MemoryRef: TypeAlias = ctypes._CArgObject  # byref(wasmtime_memory_t)


def build_config() -> wasmtime.Config:
    """Return the frozen deterministic engine configuration (``ENGINE_SETTINGS`` plus the pooling
    allocator with ``POOL_SETTINGS``; see the module docstring)."""
    c = wasmtime.Config()
    for name, value in ENGINE_SETTINGS.items():
        setattr(c, name, value)
    pool = _c.wasmtime_pooling_allocation_config_new()
    try:
        for name, value in POOL_SETTINGS.items():
            getattr(_c, f"wasmtime_pooling_allocation_config_{name}_set")(pool, value)
        _c.wasmtime_pooling_allocation_strategy_set(c.ptr(), pool)
    finally:
        _c.wasmtime_pooling_allocation_config_delete(pool)
    return c


def build_engine() -> wasmtime.Engine:
    """Return a new engine with ``build_config()``."""
    return wasmtime.Engine(build_config())


def engine_fingerprint() -> str:
    """Return a hex sha256 naming the engine: wasmtime version, machine architecture, and every
    setting of the frozen config. Compiled artifacts are only valid under an equal fingerprint."""
    material = json.dumps(
        {"wasmtime": WASMTIME_VERSION, "machine": platform.machine(), "engine": ENGINE_SETTINGS, "pool": POOL_SETTINGS},
        sort_keys=True,
    ).encode()
    return hashlib.sha256(material).hexdigest()


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


_LIMIT_FIELDS = ModuleLimits.__struct_fields__


def check_module_limits_max(maximum: ModuleLimitsMax) -> ModuleLimitsMax:
    """Return ``maximum`` if every field is a non-negative integer and ``max_mem_bytes`` is at most
    ``HARD_MAX_MEM_BYTES``; raise ValueError naming the bad field otherwise."""
    for name in _LIMIT_FIELDS:
        value = getattr(maximum, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"module limits max: {name} must be an integer >= 0, got {value!r}")
    if maximum.max_mem_bytes > HARD_MAX_MEM_BYTES:
        raise ValueError(
            f"module limits max: max_mem_bytes {maximum.max_mem_bytes} is above the engine's "
            f"{HARD_MAX_MEM_BYTES}-byte memory slot; choose at most {HARD_MAX_MEM_BYTES}"
        )
    return maximum


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
    """A compiled module ready to instantiate: ``entries`` are its exported ABI entry points;
    ``export_index`` maps ``memory``, ``alloc`` and each entry to its export index (looked up once)."""

    wasm_hash: str
    module: wasmtime.Module
    pre: wasmtime.InstancePre
    entries: frozenset[str]
    min_memory_bytes: int
    engine: wasmtime.Engine
    export_index: dict[str, int]
    pre_ptr: object


class Sandbox:
    """Compile and run modules.

    ``cache_size`` (``max_cached_modules``, settable) bounds the in-memory LRU of compiled modules
    keyed by ``wasm_hash``; ``cache_dir`` (None = memory only) holds compiled artifacts across
    restarts (the node passes ``HOME/data/module-cache``); ``module_limits_max`` caps every call's
    limits (default ``ModuleLimitsMax()``). Thread-safe: the caches are locked and each call has its
    own store. Raises ValueError for a cache size below 1 or an invalid ``module_limits_max``.
    """

    def __init__(self, cache_size: int = DEFAULT_CACHE_SIZE, cache_dir: str | Path | None = None,
                 *, module_limits_max: ModuleLimitsMax | None = None) -> None:
        self.engine = build_engine()
        self.fingerprint = engine_fingerprint()
        self._engine_ptr = self.engine.ptr()
        self._linker = wasmtime.Linker(self.engine)
        self._cache: ModuleLRU[CompiledModule] = ModuleLRU(cache_size)
        self._disk = DiskArtifactCache(cache_dir, WASMTIME_VERSION, self.fingerprint) if cache_dir is not None else None
        self._compile_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(POOL_SLOTS)
        self._limits_max = check_module_limits_max(module_limits_max or ModuleLimitsMax())
        self._capped: dict[ModuleLimits, ModuleLimits] = {}
        self.compiles = 0
        self.deserializes = 0

    # ---- caches and caps -------------------------------------------------------------------

    @property
    def max_cached_modules(self) -> int:
        """Capacity of the compiled-module LRU, in modules."""
        return self._cache.max_cached_modules

    @max_cached_modules.setter
    def max_cached_modules(self, value: int) -> None:
        self._cache.max_cached_modules = value

    def set_max_cached_modules(self, value: int) -> None:
        """Resize the compiled-module LRU (evicting the least recently used at once); ValueError if < 1."""
        self._cache.max_cached_modules = value

    @property
    def module_limits_max(self) -> ModuleLimitsMax:
        """The world-wide caps applied to every call's limits."""
        return self._limits_max

    def set_module_limits_max(self, maximum: ModuleLimitsMax) -> None:
        """Replace the world-wide caps; ValueError (see ``check_module_limits_max``) if invalid."""
        self._limits_max = check_module_limits_max(maximum)
        self._capped = {}

    def capped_limits(self, limits: ModuleLimits) -> ModuleLimits:
        """Return ``cap_module_limits(limits, self.module_limits_max)`` (memoized per limits value)."""
        capped = self._capped.get(limits)
        if capped is None:
            capped = cap_module_limits(limits, self._limits_max)
            if len(self._capped) > 4096:
                self._capped = {}
            self._capped[limits] = capped
        return capped

    def cached(self, wasm_hash: str) -> bool:
        """Return True if the module ``wasm_hash`` is in the compiled-module LRU."""
        return wasm_hash in self._cache

    def stats(self) -> dict[str, int]:
        """Return cache counters: compiles, deserializes, memory hits/misses/evictions, disk
        hits/misses/corrupt/writes (0 without a cache directory), cached modules."""
        disk = self._disk
        return {
            "compiles": self.compiles,
            "deserializes": self.deserializes,
            "memory_hits": self._cache.hits,
            "memory_misses": self._cache.misses,
            "memory_evictions": self._cache.evictions,
            "cached_modules": len(self._cache),
            "disk_hits": disk.hits if disk else 0,
            "disk_misses": disk.misses if disk else 0,
            "disk_corrupt": disk.corrupt if disk else 0,
            "disk_writes": disk.writes if disk else 0,
        }

    # ---- compile ---------------------------------------------------------------------------

    def compile(self, wasm: bytes, wasm_hash: str | None = None) -> CompiledModule:
        """Validate and compile ``wasm`` (raw module bytes), using the caches when possible.

        ``wasm_hash`` is ``sha256(wasm).hex()`` (computed when omitted); on a cache miss it is
        checked against the bytes. Order: memory LRU, then the disk cache (verified, deserialized
        and re-validated), then a fresh compile (whose artifact is then written to disk).

        On a miss the structural check (``wasm_check.check_module``: size, counts, nesting, compile
        weight, disabled instructions) runs first, before the disk cache or the engine sees the bytes.

        Raises ModuleValidationError when ``wasm_hash`` does not match the bytes, the structural
        check fails (``ModuleLimitError`` names the limit), the bytes are not
        valid wasm under the deterministic config, the module imports anything, or it lacks
        ``memory`` / ``alloc(i32) -> i32`` / at least one entry point ``reduce`` or ``call`` of type
        ``(i32, i32) -> i64``.
        """
        key = wasm_hash or sha256(wasm).hex()
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        with self._compile_lock:  # one compile per module even when callers race
            hit = self._cache.peek(key)
            if hit is not None:
                return hit
            if wasm_hash is not None and sha256(wasm).hex() != wasm_hash:
                raise ModuleValidationError(f"wasm_hash {wasm_hash} does not match the sha256 of the module bytes")
            check_module(wasm)
            compiled = self._load_from_disk(key) or self._compile_uncached(wasm, key)
            self._cache.put(key, compiled)
            return compiled

    def _load_from_disk(self, key: str) -> CompiledModule | None:
        if self._disk is None:
            return None
        payload = self._disk.load(key)
        if payload is None:
            return None
        try:
            module = wasmtime.Module.deserialize(self.engine, payload)
            compiled = self._inspect(module, key)
        except (wasmtime.WasmtimeError, wasmtime.Trap, ModuleValidationError) as exc:
            self._disk.discard(key, reason=f"engine rejected the artifact: {engine_message(exc)}")
            return None
        self.deserializes += 1
        log.debug("module_cache_loaded", wasm_hash=key)
        return compiled

    def _compile_uncached(self, wasm: bytes, key: str) -> CompiledModule:
        try:
            module = wasmtime.Module(self.engine, wasm)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            raise ModuleValidationError(f"not a valid WebAssembly module: {engine_message(exc)}") from None
        self.compiles += 1
        compiled = self._inspect(module, key)
        if self._disk is not None:
            self._disk.store(key, bytes(module.serialize()))
        return compiled

    def _inspect(self, module: wasmtime.Module, key: str) -> CompiledModule:
        imports = module.imports
        if imports:
            first = imports[0]
            raise ModuleValidationError(
                f"module imports {first.module}.{first.name}; modules must import nothing (the ABI has no host functions)"
            )
        export_list = module.exports
        if len(export_list) > MAX_EXPORTS:
            raise ModuleValidationError(f"module has {len(export_list)} exports; the limit is {MAX_EXPORTS}")
        exports = {e.name: e.type for e in export_list}
        index = {e.name: i for i, e in enumerate(export_list)}
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
            export_index={name: index[name] for name in ("memory", "alloc", *entries)},
            pre_ptr=pre.ptr(),
        )

    # ---- call ------------------------------------------------------------------------------

    def call(self, compiled: CompiledModule, entry: str, input_bytes: bytes, limits: ModuleLimits) -> CallResult:
        """Run ``entry(ptr, len)`` on ``input_bytes`` in a fresh instance of ``compiled``.

        ``limits`` are first capped by ``module_limits_max``; used here: ``max_mem_bytes`` (linear
        memory), ``max_gas`` (fuel), ``max_output_bytes``. The i64 result is masked to unsigned
        and split into (ptr, len); the range is bounds-checked before reading.

        ``gas_used`` is the engine's fuel plus the host charges of ``abi`` (docs/module-abi.md,
        "Fuel and what it charges"): ``CALL_BASE_GAS`` + ``INPUT_BYTE_GAS`` per input byte +
        ``MEMORY_PAGE_GAS`` per initial page, taken from the fuel before the module runs (a call
        whose fixed charge exceeds ``max_gas`` fails OUT_OF_GAS without running), then
        ``MEMORY_PAGE_GAS`` per page grown and ``OUTPUT_BYTE_GAS`` per output byte, added after it
        returns (a total above ``max_gas`` fails OUT_OF_GAS). Every failure with ``max_gas`` in the
        table of docs/module-abi.md is billed ``max_gas``.
        Never raises for anything the guest does: traps, fuel exhaustion, memory exhaustion and
        out-of-range results come back as a failed CallResult (OUT_OF_GAS, MEMORY_LIMIT, TRAP,
        OUTPUT_TOO_LARGE, INVALID_OUTPUT). Raises ValueError if ``entry`` is not exported or
        ``compiled`` came from another Sandbox (modules are bound to their engine).
        """
        if compiled.engine is not self.engine:
            raise ValueError(f"module {compiled.wasm_hash} was compiled by another Sandbox; compile it with this one")
        if entry not in compiled.entries:
            raise ValueError(f"module {compiled.wasm_hash} does not export entry point {entry!r}")
        limits = self.capped_limits(limits)
        if compiled.min_memory_bytes > limits.max_mem_bytes:
            return _fail(
                abi.MEMORY_LIMIT, 0,
                f"module declares {compiled.min_memory_bytes} bytes of initial memory; the limit is {limits.max_mem_bytes}",
            )
        pages = compiled.min_memory_bytes // WASM_PAGE
        upfront = fixed_call_gas(len(input_bytes), pages)
        if upfront > limits.max_gas:
            return _fail(abi.OUT_OF_GAS, limits.max_gas,
                         f"the call's fixed charge is {upfront} ({len(input_bytes)} input bytes, {pages} initial pages); "
                         f"max_gas is {limits.max_gas}")
        with self._slots:
            store = _store_new(self._engine_ptr, None, _NO_FINALIZER)
            try:
                return self._run(store, compiled, entry, input_bytes, limits, upfront, pages)
            finally:
                _store_delete(store)

    def _run(self, store: _StorePtr, compiled: CompiledModule, entry: str, input_bytes: bytes, limits: ModuleLimits,
             upfront: int, pages: int) -> CallResult:
        max_gas = limits.max_gas
        fuel = max_gas - upfront
        ctx = _store_context(store)
        _store_limiter(store, limits.max_mem_bytes, MAX_TABLE_ELEMENTS, 1, MAX_TABLES, 1)
        err = _set_fuel(ctx, fuel)
        if err:
            raise wasmtime.WasmtimeError._from_ptr(err)
        inst = _Instance()
        trap = _TrapPtr()
        err = _pre_instantiate(compiled.pre_ptr, ctx, byref(inst), byref(trap))
        if trap:
            return self._trap_result(_trap_code(trap), ctx, None, limits, "instantiate")
        if err:
            wasmtime.WasmtimeError._from_ptr(err)  # frees it; the message is not deterministic
            return _fail(abi.TRAP, max_gas, "instantiate failed: the module could not run under the sandbox limits")
        index = compiled.export_index
        name_ptr, name_len = _NamePtr(), ctypes.c_size_t()
        mem_ext, alloc_ext, entry_ext = _Extern(), _Extern(), _Extern()
        _export_nth(ctx, byref(inst), index["memory"], byref(name_ptr), byref(name_len), byref(mem_ext))
        _export_nth(ctx, byref(inst), index["alloc"], byref(name_ptr), byref(name_len), byref(alloc_ext))
        _export_nth(ctx, byref(inst), index[entry], byref(name_ptr), byref(name_len), byref(entry_ext))
        memory = byref(mem_ext.of.memory)
        n = len(input_bytes)
        args = _Args2()
        args[0].i32 = n
        err = _call_unchecked(ctx, byref(alloc_ext.of.func), args, 2, byref(trap))
        if trap or err:
            return self._call_failure(trap, err, ctx, memory, limits, "alloc")
        ptr = args[0].i32 & _MASK32
        size = _memory_size(ctx, memory)
        if ptr + n > size:
            gas = _total(ctx, fuel, upfront, size, pages, 0)
            if gas > max_gas:
                return _over_budget(gas, max_gas, "alloc")
            if size + WASM_PAGE > limits.max_mem_bytes:
                return _fail(abi.MEMORY_LIMIT, gas, f"no room for the {n}-byte input within {limits.max_mem_bytes} bytes of memory")
            return _fail(abi.INVALID_OUTPUT, gas, f"alloc({n}) returned {ptr}, outside the {size}-byte memory")
        if n:
            ctypes.memmove(ctypes.addressof(_memory_data(ctx, memory).contents) + ptr, input_bytes, n)
        args[0].i32 = ptr
        args[1].i32 = n
        err = _call_unchecked(ctx, byref(entry_ext.of.func), args, 2, byref(trap))
        if trap or err:
            return self._call_failure(trap, err, ctx, memory, limits, entry)
        packed = args[0].i64 & _MASK64
        out_ptr, out_len = packed >> 32, packed & _MASK32
        size = _memory_size(ctx, memory)
        readable = out_len <= limits.max_output_bytes and out_ptr + out_len <= size
        gas = _total(ctx, fuel, upfront, size, pages, out_len if readable else 0)
        if gas > max_gas:
            return _over_budget(gas, max_gas, entry)
        if out_len > limits.max_output_bytes:
            return _fail(abi.OUTPUT_TOO_LARGE, gas, f"output is {out_len} bytes; the limit is {limits.max_output_bytes}")
        if out_ptr + out_len > size:
            return _fail(abi.INVALID_OUTPUT, gas,
                         f"{entry} returned the range [{out_ptr}, {out_ptr + out_len}) outside the {size}-byte memory")
        output = ctypes.string_at(ctypes.addressof(_memory_data(ctx, memory).contents) + out_ptr, out_len) if out_len else b""
        return CallResult(ok=True, output=output, gas_used=gas)

    def _call_failure(self, trap: _TrapPtrT, err: _ErrorPtr, ctx: _ContextPtr, memory: _MemoryRef,
                      limits: ModuleLimits, stage: str) -> CallResult:
        if trap:
            if err:
                wasmtime.WasmtimeError._from_ptr(err)
            return self._trap_result(_trap_code(trap), ctx, memory, limits, stage)
        wasmtime.WasmtimeError._from_ptr(err)
        return _fail(abi.TRAP, limits.max_gas, f"{stage} failed in the engine")

    @staticmethod
    def _trap_result(code: wasmtime.TrapCode | None, ctx: _ContextPtr, memory: _MemoryRef | None,
                     limits: ModuleLimits, stage: str) -> CallResult:
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return _fail(abi.OUT_OF_GAS, limits.max_gas, f"{stage} used all {limits.max_gas} units of fuel")
        name = code.name if code is not None else "UNKNOWN"
        if memory is not None and _memory_size(ctx, memory) + WASM_PAGE > limits.max_mem_bytes:
            return _fail(abi.MEMORY_LIMIT, limits.max_gas,
                         f"{stage} trapped ({name}) with memory at the {limits.max_mem_bytes}-byte limit")
        return _fail(abi.TRAP, limits.max_gas, f"{stage} trapped: {name}")


def _trap_code(trap: _TrapPtrT) -> wasmtime.TrapCode | None:
    """Take ownership of a raw trap pointer (freed with the wrapper) and return its code."""
    return wasmtime.Trap._from_ptr(trap).trap_code


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


def fixed_call_gas(input_len: int, initial_pages: int) -> int:
    """Return the gas charged before a call runs: ``abi.CALL_BASE_GAS`` + ``abi.INPUT_BYTE_GAS`` per
    input byte + ``abi.MEMORY_PAGE_GAS`` per initial 64 KiB page of the module's memory."""
    return abi.CALL_BASE_GAS + abi.INPUT_BYTE_GAS * input_len + abi.MEMORY_PAGE_GAS * initial_pages


def _total(ctx: _ContextPtr, fuel: int, upfront: int, memory_size: int, initial_pages: int, out_len: int) -> int:
    """Return gas_used: the fixed charge, the engine fuel used, the pages grown and the output bytes."""
    left = ctypes.c_uint64()
    _get_fuel(ctx, byref(left))
    grown = max(0, memory_size // WASM_PAGE - initial_pages)
    return upfront + (fuel - left.value) + abi.MEMORY_PAGE_GAS * grown + abi.OUTPUT_BYTE_GAS * out_len


def _over_budget(gas: int, max_gas: int, stage: str) -> CallResult:
    return _fail(abi.OUT_OF_GAS, max_gas,
                 f"{stage} needs {gas} units of gas with the memory and output charges; max_gas is {max_gas}")


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
