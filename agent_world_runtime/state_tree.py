"""An incrementally maintained Merkle root over key → value records (the state root).

Leaf layout (what one record contributes)::

    leaf(key, value) = merkle.leaf_hash(encode([key, sha256(value)]))      # key, value: bytes

``encode`` is the canonical msgpack encoder, so ``[key, digest]`` is an array of two ``bin`` items
and no (key, value) pair can be confused with another.

Tree layout: the key space is split into ``2**BUCKET_BITS`` buckets by the first ``BUCKET_BITS``
bits of ``sha256(key)``.

* A bucket's root is the RFC 6962 Merkle root (``merkle.merkle_root_of_leaf_hashes``) over the
  leaf hashes of its records, sorted by key bytes; an empty bucket's root is ``merkle.EMPTY_ROOT``.
* Above the buckets sits a complete binary tree of depth ``BUCKET_BITS``:
  ``node(level + 1, i) = merkle.node_hash(node(level, 2i), node(level, 2i + 1))`` with
  ``node(0, b) = bucket_root(b)``. Subtrees with no records have the precomputed root
  ``EMPTY[level]`` (``EMPTY[0] = EMPTY_ROOT``, ``EMPTY[l + 1] = node_hash(EMPTY[l], EMPTY[l])``) and
  are not stored.
* The root is ``node(BUCKET_BITS, 0)``.

Cost: ``set``/``delete`` only record the change; ``root()`` recomputes each changed bucket (whose
size is ``records / 2**BUCKET_BITS`` on average) and ``BUCKET_BITS`` interior hashes per changed
bucket. A block therefore costs in proportion to what it changed, not to the size of the world.
"""

from __future__ import annotations

from collections.abc import Iterable

from .codec import encode
from .crypto import sha256
from .merkle import EMPTY_ROOT, leaf_hash, merkle_root_of_leaf_hashes, node_hash

BUCKET_BITS = 16
_EMPTY: list[bytes] = [EMPTY_ROOT]
for _ in range(BUCKET_BITS):
    _EMPTY.append(node_hash(_EMPTY[-1], _EMPTY[-1]))


def record_leaf_hash(key: bytes, value: bytes) -> bytes:
    """Return the leaf hash of one record: ``leaf_hash(encode([key, sha256(value)]))``."""
    return leaf_hash(encode([key, sha256(value)]))


def bucket_of(key: bytes) -> int:
    """Return the bucket index of ``key``: the first ``BUCKET_BITS`` bits of ``sha256(key)``."""
    return int.from_bytes(sha256(key)[:4], "big") >> (32 - BUCKET_BITS)


class StateTree:
    """Record leaf hashes by key and give the Merkle root described in the module docstring.

    ``set(key, value)`` stores the record's leaf hash (the value itself is not kept);
    ``delete(key)`` removes it; ``root()`` returns the 32-byte root after folding in the changes.
    """

    def __init__(self) -> None:
        self._buckets: dict[int, dict[bytes, bytes]] = {}
        self._nodes: list[dict[int, bytes]] = [{} for _ in range(BUCKET_BITS + 1)]
        self._dirty: set[int] = set()

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def set(self, key: bytes, value: bytes) -> None:
        """Insert or replace the record ``key`` with ``value`` (both bytes)."""
        b = bucket_of(key)
        self._buckets.setdefault(b, {})[key] = record_leaf_hash(key, value)
        self._dirty.add(b)

    def delete(self, key: bytes) -> None:
        """Remove the record ``key`` (no effect if absent)."""
        b = bucket_of(key)
        bucket = self._buckets.get(b)
        if bucket is not None and bucket.pop(key, None) is not None:
            if not bucket:
                del self._buckets[b]
            self._dirty.add(b)

    def root(self) -> bytes:
        """Return the 32-byte root, recomputing only the buckets changed since the last call."""
        if self._dirty:
            self._fold(self._dirty)
            self._dirty = set()
        return self._nodes[BUCKET_BITS].get(0, _EMPTY[BUCKET_BITS])

    def _fold(self, dirty: Iterable[int]) -> None:  # not set[int]: in this class, `set` is the method
        level0 = self._nodes[0]
        for b in dirty:
            bucket = self._buckets.get(b)
            if bucket:
                level0[b] = merkle_root_of_leaf_hashes([bucket[k] for k in sorted(bucket)])
            else:
                level0.pop(b, None)
        changed = dirty
        for level in range(BUCKET_BITS):
            below, above, empty = self._nodes[level], self._nodes[level + 1], _EMPTY[level]
            parents = {i >> 1 for i in changed}
            for p in parents:
                left, right = below.get(2 * p), below.get(2 * p + 1)
                if left is None and right is None:
                    above.pop(p, None)
                else:
                    above[p] = node_hash(left or empty, right or empty)
            changed = parents
