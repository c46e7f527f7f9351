"""Compiled-module caches of the sandbox: the in-memory LRU (hit, miss, eviction, settable size) and
the on-disk artifact cache (round trip, integrity check, keys by engine fingerprint), and fuel
determinism with and without them."""

from __future__ import annotations

import pytest

from agent_world_runtime.crypto import sha256
from agent_world_runtime.modules import abi
from agent_world_runtime.modules import sandbox as sandbox_mod
from agent_world_runtime.modules.cache import DISK_MAGIC, DiskArtifactCache, ModuleLRU
from agent_world_runtime.modules.manifest import ModuleLimits
from agent_world_runtime.modules.sandbox import ModuleValidationError, Sandbox, engine_fingerprint, wat_to_wasm

LIMITS = ModuleLimits(max_mem_bytes=1 << 20, max_gas=1_000_000, max_output_bytes=4096)


def echo_module(tag: int) -> bytes:
    """An echo reducer whose loop length depends on the input; ``tag`` makes distinct modules."""
    return wat_to_wasm(f"""(module
  (memory (export "memory") 1)
  (global $h (mut i32) (i32.const 1024))
  (global $tag i32 (i32.const {tag}))
  (func (export "alloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $h)) (global.set $h (i32.add (local.get $p) (local.get $n))) (local.get $p))
  (func (export "reduce") (param $p i32) (param $n i32) (result i64) (local $i i32)
    (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if $l (i32.lt_u (local.get $i) (local.get $n))))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32)) (i64.extend_i32_u (local.get $n)))))""")


A, B, C = echo_module(1), echo_module(2), echo_module(3)


def h(wasm: bytes) -> str:
    return sha256(wasm).hex()


def test_lru_hit_miss_and_eviction_order():
    sb = Sandbox(cache_size=2)
    first = sb.compile(A, h(A))
    assert sb.compile(A, h(A)) is first  # hit: same object, no recompile
    sb.compile(B, h(B))
    sb.compile(A, h(A))  # A becomes most recently used, so B is evicted next
    sb.compile(C, h(C))
    assert (sb.cached(h(A)), sb.cached(h(B)), sb.cached(h(C))) == (True, False, True)
    stats = sb.stats()
    assert stats["compiles"] == 3 and stats["memory_evictions"] == 1 and stats["cached_modules"] == 2
    assert stats["memory_hits"] == 2 and stats["memory_misses"] == 3
    sb.compile(B, h(B))  # evicted: compiled again
    assert sb.stats()["compiles"] == 4 and not sb.cached(h(A))


def test_cache_size_is_settable_at_runtime():
    sb = Sandbox(cache_size=3)
    for wasm in (A, B, C):
        sb.compile(wasm)
    assert sb.max_cached_modules == 3 and sb.stats()["cached_modules"] == 3
    sb.set_max_cached_modules(1)  # shrinking evicts the least recently used at once
    assert sb.stats()["cached_modules"] == 1 and sb.cached(h(C)) and not sb.cached(h(A))
    sb.max_cached_modules = 5
    sb.compile(A)
    assert sb.stats()["cached_modules"] == 2
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="max_cached_modules"):
            sb.set_max_cached_modules(bad)
    with pytest.raises(ValueError):
        Sandbox(cache_size=0)


def test_module_lru_alone():
    lru: ModuleLRU[str] = ModuleLRU(2)
    assert lru.get("x") is None
    lru.put("x", "X")
    lru.put("y", "Y")
    lru.put("z", "Z")
    assert lru.keys() == ["y", "z"] and (lru.hits, lru.misses, lru.evictions) == (0, 1, 1)


def test_wasm_hash_must_match_the_bytes():
    sb = Sandbox()
    with pytest.raises(ModuleValidationError, match="does not match"):
        sb.compile(A, h(B))
    assert not sb.cached(h(B))


def test_disk_cache_round_trip(tmp_path):
    first = Sandbox(cache_dir=tmp_path)
    want = first.call(first.compile(A, h(A)), "reduce", b"hello", LIMITS)
    assert first.stats()["disk_writes"] == 1 and first.stats()["compiles"] == 1
    files = list(tmp_path.glob("*.cwasm"))
    assert len(files) == 1 and files[0].read_bytes().startswith(DISK_MAGIC)

    second = Sandbox(cache_dir=tmp_path)  # a restart: the memory cache is empty
    got = second.call(second.compile(A, h(A)), "reduce", b"hello", LIMITS)
    stats = second.stats()
    assert (stats["compiles"], stats["deserializes"], stats["disk_hits"]) == (0, 1, 1)
    assert got == want and got.ok and got.output == b"hello"


@pytest.mark.parametrize("damage", ["flip_payload_byte", "flip_stored_hash", "truncate", "bad_magic", "empty"])
def test_corrupted_cache_file_is_detected_deleted_and_recompiled(tmp_path, damage):
    Sandbox(cache_dir=tmp_path).compile(A, h(A))
    [path] = tmp_path.glob("*.cwasm")
    blob = bytearray(path.read_bytes())
    header = len(DISK_MAGIC) + 32
    if damage == "flip_payload_byte":
        blob[header + len(blob[header:]) // 2] ^= 0x40
    elif damage == "flip_stored_hash":
        blob[len(DISK_MAGIC)] ^= 0x01
    elif damage == "truncate":
        blob = blob[: header + 100]
    elif damage == "bad_magic":
        blob[0:1] = b"X"
    else:
        blob = bytearray()
    path.write_bytes(bytes(blob))

    sb = Sandbox(cache_dir=tmp_path)
    res = sb.call(sb.compile(A, h(A)), "reduce", b"abc", LIMITS)
    stats = sb.stats()
    assert (stats["disk_corrupt"], stats["deserializes"], stats["compiles"]) == (1, 0, 1)
    assert res.ok and res.output == b"abc"
    # The bad file was replaced by a good one, which the next restart loads.
    again = Sandbox(cache_dir=tmp_path)
    again.compile(A, h(A))
    assert (again.stats()["deserializes"], again.stats()["disk_corrupt"]) == (1, 0)


def test_well_hashed_payload_the_engine_rejects_is_deleted_and_recompiled(tmp_path):
    sb = Sandbox(cache_dir=tmp_path)
    disk = DiskArtifactCache(tmp_path, sandbox_mod.WASMTIME_VERSION, sb.fingerprint)
    assert disk.store(h(A), b"this is not a serialized module")
    res = sb.call(sb.compile(A, h(A)), "reduce", b"xyz", LIMITS)
    assert res.ok and sb.stats()["disk_corrupt"] == 1 and sb.stats()["compiles"] == 1


def test_disk_key_depends_on_hash_version_and_engine_fingerprint(tmp_path, monkeypatch):
    base = DiskArtifactCache(tmp_path, "50.0.1", "f1")
    other_fp = DiskArtifactCache(tmp_path, "50.0.1", "f2")
    other_version = DiskArtifactCache(tmp_path, "51.0.0", "f1")
    keys = {base.key("aa"), base.key("bb"), other_fp.key("aa"), other_version.key("aa")}
    assert len(keys) == 4
    assert base.store("aa", b"payload") and base.load("aa") == b"payload"
    assert other_fp.load("aa") is None and other_version.load("aa") is None

    fp = engine_fingerprint()
    assert fp == engine_fingerprint() and len(fp) == 64
    monkeypatch.setitem(sandbox_mod.ENGINE_SETTINGS, "cranelift_nan_canonicalization", False)
    assert engine_fingerprint() != fp
    monkeypatch.setitem(sandbox_mod.ENGINE_SETTINGS, "cranelift_nan_canonicalization", True)
    monkeypatch.setitem(sandbox_mod.POOL_SETTINGS, "max_memory_size", 1 << 20)
    assert engine_fingerprint() != fp


def test_artifact_compiled_under_another_fingerprint_is_not_loaded(tmp_path, monkeypatch):
    Sandbox(cache_dir=tmp_path).compile(A, h(A))
    monkeypatch.setattr(sandbox_mod, "engine_fingerprint", lambda: "another-engine-config")
    sb = Sandbox(cache_dir=tmp_path)
    sb.compile(A, h(A))
    assert (sb.stats()["deserializes"], sb.stats()["compiles"], sb.stats()["disk_misses"]) == (0, 1, 1)
    assert len(list(tmp_path.glob("*.cwasm"))) == 2


def test_fuel_is_identical_with_and_without_the_caches(tmp_path):
    inputs = [b"a", b"abc", b"hello world", bytes(range(256)) * 3]
    uncached = Sandbox(cache_size=1)
    writer = Sandbox(cache_dir=tmp_path)
    writer.compile(A, h(A))
    from_disk = Sandbox(cache_dir=tmp_path)
    results = []
    for inp in inputs:
        uncached.compile(B, h(B))  # evicts A: every compile of A below is fresh
        fresh = uncached.call(uncached.compile(A, h(A)), "reduce", inp, LIMITS)
        hit = writer.call(writer.compile(A, h(A)), "reduce", inp, LIMITS)
        loaded = from_disk.call(from_disk.compile(A, h(A)), "reduce", inp, LIMITS)
        assert fresh == hit == loaded and fresh.ok and fresh.output == inp
        results.append(fresh.gas_used)
    assert from_disk.stats()["deserializes"] == 1 and uncached.stats()["compiles"] == 2 * len(inputs)
    assert results == sorted(results) and len(set(results)) == len(results)  # gas grows with input length
    out_of_gas = [s.call(s.compile(A, h(A)), "reduce", b"x" * 5000, ModuleLimits(max_gas=700))
                  for s in (uncached, writer, from_disk)]
    assert {(r.code, r.gas_used) for r in out_of_gas} == {(abi.OUT_OF_GAS, 700)}
