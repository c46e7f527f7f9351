"""Caches of compiled modules: an in-memory LRU keyed by ``wasm_hash`` and an on-disk cache of
compiled (serialized) artifacts: an in-memory LRU in front of a file cache of compiled modules, the
arrangement the CosmWasm VM also uses.

Neither cache holds anything the engine did not produce on this machine: the disk cache only
returns bytes this process (or an earlier run of this node) wrote with ``store``, and every file
carries a sha256 of its payload that is checked before the payload is handed to the engine
(``wasmtime.Module.deserialize`` trusts its input: it does not detect a corrupted serialized
module, and running one is undefined behaviour). A file
that fails the check is deleted and reported as a miss, so the caller recompiles from the wasm bytes.
Compiled artifacts are never accepted from peers: there is no API that imports one.

Disk keys are ``sha256(wasm_hash | wasmtime version | engine-config fingerprint)``: a change of
engine version or configuration (NaN canonicalization, opt level, allocator) is a different key, so a
stale artifact compiled under another configuration is never loaded.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Generic, TypeVar

import structlog

from ..crypto import sha256

log = structlog.get_logger(__name__)

V = TypeVar("V")

DISK_MAGIC = b"AWCM1\n"  # Agent World compiled module, format 1
DISK_SUFFIX = ".cwasm"
MAX_DISK_ARTIFACT_BYTES = 256 << 20


class ModuleLRU(Generic[V]):
    """A thread-safe least-recently-used map ``wasm_hash -> compiled module`` of at most
    ``max_cached_modules`` entries (settable at runtime; shrinking evicts the oldest at once).

    Counters ``hits``, ``misses`` and ``evictions`` count lookups and removals since creation.
    Raises ValueError for a size below 1.
    """

    def __init__(self, max_cached_modules: int) -> None:
        self._items: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()
        self._max = _check_size(max_cached_modules)
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def max_cached_modules(self) -> int:
        """The capacity, in modules."""
        return self._max

    @max_cached_modules.setter
    def max_cached_modules(self, value: int) -> None:
        with self._lock:
            self._max = _check_size(value)
            self._evict_locked()

    def get(self, wasm_hash: str) -> V | None:
        """Return the cached value for ``wasm_hash`` (marking it most recently used) or None."""
        with self._lock:
            value = self._items.get(wasm_hash)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(wasm_hash)
            self.hits += 1
            return value

    def peek(self, wasm_hash: str) -> V | None:
        """Return the cached value for ``wasm_hash`` or None, without counting or reordering."""
        with self._lock:
            return self._items.get(wasm_hash)

    def put(self, wasm_hash: str, value: V) -> None:
        """Insert or refresh ``wasm_hash``, evicting least recently used entries over capacity."""
        with self._lock:
            self._items[wasm_hash] = value
            self._items.move_to_end(wasm_hash)
            self._evict_locked()

    def keys(self) -> list[str]:
        """Return the cached hashes, least recently used first."""
        with self._lock:
            return list(self._items)

    def __contains__(self, wasm_hash: object) -> bool:
        with self._lock:
            return wasm_hash in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _evict_locked(self) -> None:
        while len(self._items) > self._max:
            evicted, _ = self._items.popitem(last=False)
            self.evictions += 1
            log.debug("module_cache_evicted", wasm_hash=evicted, max_cached_modules=self._max)


def _check_size(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"max_cached_modules must be an integer >= 1, got {value!r}")
    return value


class DiskArtifactCache:
    """Compiled-module files under ``directory``, keyed by (wasm_hash, engine version, engine
    fingerprint).

    File layout: ``DISK_MAGIC`` (6 bytes), sha256 of the payload (32 bytes), payload (the engine's
    serialized module). ``load`` returns the payload only when the magic and the hash match;
    otherwise it deletes the file and returns None. ``store`` writes atomically (temporary file,
    fsync, rename), so a crash leaves either no file or a whole one. I/O errors never propagate:
    a cache that cannot be read or written behaves as empty (and logs a warning).

    Counters: ``hits``, ``misses``, ``corrupt`` (files rejected by the check and deleted), ``writes``.
    """

    def __init__(self, directory: str | os.PathLike[str], engine_version: str, engine_fingerprint: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.engine_version = engine_version
        self.engine_fingerprint = engine_fingerprint
        self.hits = 0
        self.misses = 0
        self.corrupt = 0
        self.writes = 0

    def key(self, wasm_hash: str) -> str:
        """Return the file key (64 hex chars) of ``wasm_hash`` under this engine version and config."""
        material = f"{wasm_hash}|{self.engine_version}|{self.engine_fingerprint}".encode()
        return sha256(material).hex()

    def path(self, wasm_hash: str) -> Path:
        """Return the file that holds (or would hold) the compiled artifact of ``wasm_hash``."""
        return self.directory / f"{self.key(wasm_hash)}{DISK_SUFFIX}"

    def load(self, wasm_hash: str) -> bytes | None:
        """Return the verified serialized module of ``wasm_hash``, or None on a miss or a corrupted
        file (which is deleted)."""
        path = self.path(wasm_hash)
        try:
            with open(path, "rb") as fh:
                blob = fh.read(MAX_DISK_ARTIFACT_BYTES + len(DISK_MAGIC) + 33)
        except FileNotFoundError:
            self.misses += 1
            return None
        except OSError as exc:
            log.warning("module_cache_file_unreadable", wasm_hash=wasm_hash, path=str(path), error=str(exc))
            self.misses += 1
            return None
        header = len(DISK_MAGIC) + 32
        payload = blob[header:]
        if (
            len(blob) < header
            or blob[: len(DISK_MAGIC)] != DISK_MAGIC
            or len(payload) > MAX_DISK_ARTIFACT_BYTES
            or sha256(payload) != blob[len(DISK_MAGIC):header]
        ):
            self.discard(wasm_hash, reason="integrity check failed")
            self.misses += 1
            return None
        self.hits += 1
        return payload

    def store(self, wasm_hash: str, payload: bytes) -> bool:
        """Write ``payload`` (a serialized module this process compiled) for ``wasm_hash``.

        Returns True when written; False (logged) when too large or on an I/O error.
        """
        if len(payload) > MAX_DISK_ARTIFACT_BYTES:
            log.warning("module_cache_entry_too_large", wasm_hash=wasm_hash, size=len(payload))
            return False
        path = self.path(wasm_hash)
        tmp_name = None
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=DISK_SUFFIX, dir=self.directory)
            with os.fdopen(fd, "wb") as fh:
                fh.write(DISK_MAGIC)
                fh.write(sha256(payload))
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, path)
            tmp_name = None
        except OSError as exc:
            log.warning("module_cache_write_failed", wasm_hash=wasm_hash, path=str(path), error=str(exc))
            return False
        finally:
            if tmp_name is not None:
                try:
                    os.unlink(tmp_name)
                except OSError:
                    pass
        self.writes += 1
        return True

    def discard(self, wasm_hash: str, reason: str) -> None:
        """Delete the file of ``wasm_hash`` (if any), recording ``reason`` in the log."""
        path = self.path(wasm_hash)
        self.corrupt += 1
        log.warning("module_cache_file_rejected", wasm_hash=wasm_hash, path=str(path), reason=reason)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("module_cache_delete_failed", wasm_hash=wasm_hash, path=str(path), error=str(exc))
