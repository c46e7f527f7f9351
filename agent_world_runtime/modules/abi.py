"""The module call ABI: input/output messages, failure codes and output validation
(docs/module-abi.md, "One call", "Input", "Output" and "Limits and failures").

The host writes ``encode(ModuleCallInput)`` into guest memory and the guest returns the bytes of a
msgpack ``ModuleOutput``. ``decode_module_output`` turns those bytes into a validated output or a
``(code, detail)`` failure; everything it does is deterministic (no dependence on the Python stack
depth or the machine), because failures become journal events that every node must agree on.
"""

from __future__ import annotations

import re
from typing import Any, Optional

import msgspec

from ..events import Event
from .manifest import ModuleLimits

ABI_INTERFACE_VERSION = 1
MAX_NESTING_DEPTH = 32
EMIT_KIND_RE = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,127}")

# Failure codes of module.call_failed.
OUT_OF_GAS = "OUT_OF_GAS"
MEMORY_LIMIT = "MEMORY_LIMIT"
OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"
EFFECT_LIMIT_EXCEEDED = "EFFECT_LIMIT_EXCEEDED"
EMIT_LIMIT_EXCEEDED = "EMIT_LIMIT_EXCEEDED"
CALL_RATE_EXCEEDED = "CALL_RATE_EXCEEDED"
TRAP = "TRAP"
INVALID_OUTPUT = "INVALID_OUTPUT"
INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
LOAD_FAILED = "LOAD_FAILED"

# Total fuel all module calls of one block may reserve; bounds the work any set of instances can
# force on every node per block. The slowest operator class kept (f64/f32 sqrt chains, ~7.6 ns per
# fuel unit on the reference machine; benchmarks/adversarial.py) runs 100 M fuel in ~0.8 s.
BLOCK_MODULE_GAS_BUDGET = 100_000_000

# What a call is charged besides the engine's fuel (one unit per wasm operator; memory.copy and
# memory.fill one per byte), all included in gas_used (docs/module-abi.md, "Fuel and what it
# charges"). Calibrated so that host work costs about what the slowest operator class costs per
# unit of fuel (~7.6 ns): a tiny call's host path (instantiate, copy in, read out, route, bill)
# takes ~25-75 us; touching a fresh 64 KiB page ~17 us; the output's header walk ~0.2 us per item.
CALL_BASE_GAS = 10_000  # per call, charged before the module runs
INPUT_BYTE_GAS = 1  # per input byte, charged before the module runs
MEMORY_PAGE_GAS = 2_500  # per 64 KiB page: the initial pages before the call, the grown ones after
OUTPUT_BYTE_GAS = 8  # per output byte read by the host
MAX_OUTPUT_ITEMS = 4_096  # msgpack items (each key, value and container counts) in one output


class ModuleContext(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What the guest knows about the call: the world (``chain_id``, block ``height``,
    ``timestamp_ms``), the call (``stage``: ``pre_action``, ``post_action``, ``post_event`` or
    ``tick``; ``trace_id``) and itself."""

    chain_id: str
    height: int
    timestamp_ms: int
    stage: str
    trace_id: str
    instance_id: str
    module_id: str
    version: str
    owner_agent_id: str


class ModuleCallInput(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """The guest's input. ``event`` is set for ``post_event`` calls; ``action`` for ``pre_action``
    and ``post_action`` calls (the action as a map: ``type`` is its kind, plus ``agent_id``,
    ``nonce`` and the action's own fields; ``post_action`` adds ``outcome``: ``applied`` or
    ``rejected``); ``state`` is the reducer instance's stored state (absent before its first
    ``new_state``)."""

    ctx: ModuleContext
    event: Optional[Event] = None
    state: Optional[bytes] = None
    action: Optional[dict[str, Any]] = None


class EmitIntent(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An event the module emits: recorded as ``module.emitted`` with this ``kind`` and ``data``."""

    kind: str
    data: dict[str, Any] = {}


class EffectIntent(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An effect the module asks for, under capability ``cap_ref``."""

    kind: str
    params: dict[str, Any] = {}
    cap_ref: str = ""


class ModuleOutput(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The guest's output: ``new_state`` (reducers only; absent = unchanged), effects, emits."""

    new_state: Optional[bytes] = None
    effects: list[EffectIntent] = []
    emits: list[EmitIntent] = []


class OutputRejected(Exception):
    """A module output broke the ABI or a limit: ``code`` is a failure code, ``detail`` says why."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class TooManyItems(ValueError):
    """A msgpack value holds more items than allowed (raised by ``msgpack_nesting_depth``)."""


def msgpack_nesting_depth(buf: bytes, limit: int, max_items: int | None = None) -> int:
    """Return the nesting depth of the single msgpack value in ``buf`` (a scalar is depth 0).

    Walks the headers iteratively, so it never recurses. Raises ValueError if ``buf`` is truncated,
    has trailing bytes, uses a reserved byte (0xc1), or nests deeper than ``limit``; TooManyItems
    (a ValueError) as soon as more than ``max_items`` items (every value, map key and container
    counts one) were read, when ``max_items`` is given.
    """
    n = len(buf)
    pos = 0
    items_left = max_items if max_items is not None else n + 1  # each item takes at least one byte
    stack: list[int] = []  # items still to read in each open container
    depth = 0
    remaining = 1
    while True:
        while remaining == 0:
            if not stack:
                if pos != n:
                    raise ValueError(f"{n - pos} trailing bytes after the value")
                return depth
            remaining = stack.pop()
        if pos >= n:
            raise ValueError("truncated msgpack value")
        remaining -= 1
        items_left -= 1
        if items_left < 0:
            raise TooManyItems(f"more than {max_items} msgpack items")
        b = buf[pos]
        pos += 1
        count = -1
        skip = 0
        if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):
            pass
        elif 0x80 <= b <= 0x8F:
            count = 2 * (b & 0x0F)
        elif 0x90 <= b <= 0x9F:
            count = b & 0x0F
        elif 0xA0 <= b <= 0xBF:
            skip = b & 0x1F
        elif b in (0xC4, 0xD9):
            skip = 1 + _be(buf, pos, 1)
        elif b in (0xC5, 0xDA):
            skip = 2 + _be(buf, pos, 2)
        elif b in (0xC6, 0xDB):
            skip = 4 + _be(buf, pos, 4)
        elif b == 0xC7:
            skip = 2 + _be(buf, pos, 1)
        elif b == 0xC8:
            skip = 3 + _be(buf, pos, 2)
        elif b == 0xC9:
            skip = 5 + _be(buf, pos, 4)
        elif b in (0xCA, 0xCE, 0xD2):
            skip = 4
        elif b in (0xCB, 0xCF, 0xD3):
            skip = 8
        elif b in (0xCC, 0xD0):
            skip = 1
        elif b in (0xCD, 0xD1):
            skip = 2
        elif 0xD4 <= b <= 0xD8:
            skip = 1 + (1 << (b - 0xD4))
        elif b in (0xDC, 0xDE):
            count = _be(buf, pos, 2) * (2 if b == 0xDE else 1)
            skip = 2
        elif b in (0xDD, 0xDF):
            count = _be(buf, pos, 4) * (2 if b == 0xDF else 1)
            skip = 4
        else:
            raise ValueError(f"reserved msgpack byte 0x{b:02x} at offset {pos - 1}")
        pos += skip
        if pos > n:
            raise ValueError("truncated msgpack value")
        if count >= 0:
            if len(stack) + 1 > limit:
                raise ValueError(f"nested deeper than {limit} levels")
            stack.append(remaining)
            remaining = count
            depth = max(depth, len(stack))


def _be(buf: bytes, pos: int, size: int) -> int:
    if pos + size > len(buf):
        raise ValueError("truncated msgpack value")
    return int.from_bytes(buf[pos : pos + size], "big")


def check_plain_value(value: Any) -> str | None:
    """Return None if ``value`` holds only str/int/bool/bytes/lists/dicts with str keys (the
    values an event may carry), else a reason naming the first offending type."""
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, (str, int, bytes)):  # bool is an int
            continue
        if isinstance(v, list):
            todo.extend(v)
        elif isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str):
                    return f"map key of type {type(k).__name__} (only string keys are allowed)"
                todo.append(item)
        else:
            return f"value of type {type(v).__name__} (allowed: str, int, bool, bytes, list, map)"
    return None


def decode_module_output(raw: bytes, limits: ModuleLimits, *, reducer: bool) -> ModuleOutput:
    """Decode and check a guest's output bytes against ``limits``.

    Raises OutputRejected with OUTPUT_TOO_LARGE (over ``max_output_bytes``, or more than
    MAX_OUTPUT_ITEMS msgpack items: the header walk stops there, before decoding), INVALID_OUTPUT (not a
    ModuleOutput, nested deeper than MAX_NESTING_DEPTH, floats/nil in emit data, a bad emit kind,
    ``new_state`` from a pure module), EFFECT_LIMIT_EXCEEDED or EMIT_LIMIT_EXCEEDED.
    """
    if len(raw) > limits.max_output_bytes:
        raise OutputRejected(OUTPUT_TOO_LARGE, f"output is {len(raw)} bytes; the limit is {limits.max_output_bytes}")
    try:
        if len(raw) > MAX_NESTING_DEPTH:  # each level takes at least one byte: shorter output cannot nest deeper
            msgpack_nesting_depth(raw, MAX_NESTING_DEPTH, MAX_OUTPUT_ITEMS)
        out = msgspec.msgpack.decode(raw, type=ModuleOutput)
    except TooManyItems:
        raise OutputRejected(OUTPUT_TOO_LARGE, f"output holds more than {MAX_OUTPUT_ITEMS} msgpack items; "
                             f"the limit is {MAX_OUTPUT_ITEMS}") from None
    except (ValueError, msgspec.DecodeError) as exc:
        raise OutputRejected(INVALID_OUTPUT, f"output is not a valid ModuleOutput: {exc}") from None
    if len(out.effects) > limits.max_effects:
        raise OutputRejected(EFFECT_LIMIT_EXCEEDED, f"{len(out.effects)} effects; the limit is {limits.max_effects}")
    if len(out.emits) > limits.max_emits:
        raise OutputRejected(EMIT_LIMIT_EXCEEDED, f"{len(out.emits)} emits; the limit is {limits.max_emits}")
    if out.new_state is not None and not reducer:
        raise OutputRejected(INVALID_OUTPUT, "a pure module cannot return new_state")
    for i, emit in enumerate(out.emits):
        if not EMIT_KIND_RE.fullmatch(emit.kind):
            raise OutputRejected(INVALID_OUTPUT, f"emit {i} has invalid kind {emit.kind[:64]!r} (want {EMIT_KIND_RE.pattern})")
        bad = check_plain_value(emit.data)
        if bad:
            raise OutputRejected(INVALID_OUTPUT, f"emit {i} data holds a {bad}")
    for i, effect in enumerate(out.effects):
        bad = check_plain_value(effect.params)
        if bad or len(effect.kind) > 128 or len(effect.cap_ref) > 128:
            raise OutputRejected(INVALID_OUTPUT, f"effect {i} is malformed: {bad or 'kind or cap_ref longer than 128'}")
    return out
