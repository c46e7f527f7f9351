"""Module manifests (docs/module-abi.md; a complete one is under "Example manifest").

A ``ModuleManifest`` declares what a module is and what it may do. ``limits`` are the module's own
ceilings; the world caps them with its world-wide maximums before a call.
"""

from __future__ import annotations

import msgspec

MODULE_KINDS = ("reducer", "pure")
STAGES = ("pre_action", "post_action", "post_event", "tick")


class ModuleLimits(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Per-call limits. Units: bytes for memory and output, fuel units for gas, counts otherwise.

    ``max_call_rate`` is calls per block (never wall clock).
    """

    max_mem_bytes: int = 1 << 20
    max_gas: int = 5_000_000
    max_call_rate: int = 1_000
    max_output_bytes: int = 64 * 1024
    max_effects: int = 16
    max_emits: int = 16


class Subscription(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What a module is called for: ``kind`` is an event or action kind, or a prefix ending in ``*``
    (``domain.*``); ``stage`` is one of STAGES; ``filters`` are exact-match conditions on fields of
    the event's data."""

    kind: str
    stage: str = "post_event"
    filters: dict[str, str] = {}


class ModuleManifest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A module's declaration: identity, ABI contract, routing, capabilities and limits."""

    module_id: str
    version: str
    kind: str = "reducer"
    interface_version: int = 1
    exports: list[str] = msgspec.field(default_factory=lambda: ["reduce"])
    subscriptions: list[Subscription] = []
    required_caps: list[str] = []
    limits: ModuleLimits = msgspec.field(default_factory=ModuleLimits)


class ModuleLimitsMax(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """World-wide ceilings on every manifest's ``ModuleLimits`` (same fields and units). They are
    part of the world's genesis parameters (``WorldParams.module_limits_max``), hence consensus, and
    capped again by the engine's own hard limits in the sandbox."""

    max_mem_bytes: int = 16 << 20
    max_gas: int = 20_000_000
    max_call_rate: int = 10_000
    max_output_bytes: int = 256 * 1024
    max_effects: int = 64
    max_emits: int = 64


def cap_module_limits(limits: ModuleLimits, maximum: ModuleLimitsMax) -> ModuleLimits:
    """Return ``limits`` with each field replaced by ``max(0, min(field, maximum.field))``: what
    metering, billing and output checks use for a call."""
    return ModuleLimits(
        **{n: max(0, min(getattr(limits, n), getattr(maximum, n))) for n in ModuleLimits.__struct_fields__}
    )
