"""Hashing and Ed25519 signatures (PyNaCl).

Every signature in the system is made over ``domain || message`` where ``domain`` names what is
signed (a client action, a vote, a proposal), so a signature for one purpose can never be replayed
as another.
"""

from __future__ import annotations

import hashlib

import nacl.exceptions
import nacl.signing

SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 32
SEED_SIZE = 32


def sha256(data: bytes) -> bytes:
    """Return the 32-byte SHA-256 digest of ``data``."""
    return hashlib.sha256(data).digest()


class SigningKey:
    """An Ed25519 private key made from a 32-byte seed (RFC 8032); signatures are deterministic."""

    __slots__ = ("_key", "seed", "public_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_SIZE:
            raise ValueError(f"an Ed25519 seed is {SEED_SIZE} bytes, got {len(seed)}")
        self.seed = bytes(seed)
        self._key = nacl.signing.SigningKey(self.seed)
        self.public_key: bytes = bytes(self._key.verify_key)

    @classmethod
    def generate(cls) -> "SigningKey":
        """Return a new key from the operating system's random source."""
        import os

        return cls(os.urandom(SEED_SIZE))

    def sign(self, domain: bytes, message: bytes) -> bytes:
        """Return the 64-byte signature of ``domain || message``."""
        return self._key.sign(domain + message).signature


def verify(public_key: bytes, domain: bytes, message: bytes, signature: bytes) -> bool:
    """Return True iff ``signature`` is a valid Ed25519 signature by ``public_key`` of ``domain || message``.

    Malformed keys or signatures return False; this never raises.
    """
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(domain + message, signature)
        return True
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        return False
