"""Canonical msgpack encoding for everything that is hashed, signed or stored.

One encoder for the whole system: msgspec structs encode
their fields in declaration order and dict keys are sorted (``order="deterministic"``), so equal
values always give equal bytes on every machine. Decoding is typed and validated by msgspec.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

_ENCODER = msgspec.msgpack.Encoder(order="deterministic")
_JSON_ENCODER = msgspec.json.Encoder(order="deterministic")


class DecodeError(ValueError):
    """Raised when bytes are not a valid encoding of the expected type; the message says what was wrong."""


def encode(value: Any) -> bytes:
    """Return the canonical msgpack bytes of ``value`` (a msgspec Struct, dict, list or scalar)."""
    return _ENCODER.encode(value)


def decode(data: bytes, type: type[T], *, max_size: int | None = None) -> T:
    """Decode msgpack ``data`` as ``type``.

    Raises DecodeError when the data is larger than ``max_size`` bytes, is not msgpack, or does not
    match the schema (unknown fields on strict structs, wrong types, missing fields).
    """
    if max_size is not None and len(data) > max_size:
        raise DecodeError(f"message of {len(data)} bytes exceeds the limit of {max_size} bytes")
    try:
        return msgspec.msgpack.decode(data, type=type)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # ValidationError; msgspec raises
        # UnicodeDecodeError (not DecodeError) for a struct field name that is not UTF-8
        raise DecodeError(f"invalid {getattr(type, '__name__', type)}: {exc}") from None


def encode_json(value: Any) -> bytes:
    """Return the JSON bytes of ``value`` (bytes fields become base64 strings, dict keys sorted)."""
    return _JSON_ENCODER.encode(value)


def decode_json(data: bytes | str, type: type[T]) -> T:
    """Decode JSON ``data`` as ``type``; raises DecodeError with the reason on any mismatch."""
    try:
        return msgspec.json.decode(data, type=type)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"invalid {getattr(type, '__name__', type)}: {exc}") from None


def to_builtins(value: Any) -> Any:
    """Convert a struct tree into plain dicts/lists (bytes as hex strings) for JSON APIs and logs."""
    return _hexify(msgspec.to_builtins(value, builtin_types=(bytes,), order="deterministic"))


def _hexify(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _hexify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hexify(v) for v in value]
    return value
