"""Binary Merkle roots over ordered leaves (RFC 6962 section 2.1 hashing).

``leaf = sha256(0x00 || data)``, ``node = sha256(0x01 || left || right)``; the tree splits at the
largest power of two below n, so roots of different lengths never collide. The empty root is
``sha256(b"")``.
"""

from __future__ import annotations

import hashlib

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 6962 leaf hash of ``data``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 6962 interior-node hash of two child hashes."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root_of_leaf_hashes(hashes: list[bytes]) -> bytes:
    """Return the Merkle root over already-computed leaf hashes (RFC 6962 MTH, iteratively)."""
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    level = list(hashes)
    # Bottom-up pairing with an odd last element promoted unchanged gives the same root as the
    # RFC's largest-power-of-two split.
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def merkle_root(leaves: list[bytes]) -> bytes:
    """Return the Merkle root of the ordered ``leaves`` (raw bytes, hashed as RFC 6962 leaves)."""
    return merkle_root_of_leaf_hashes([leaf_hash(x) for x in leaves])
