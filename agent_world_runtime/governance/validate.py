"""Pure checks of a manifest's sections (docs/governance.md, "Limits and errors").

These are the checks ``world.check_world_params`` and ``world.check_section`` make at genesis,
kept here so governance can validate a candidate manifest without importing ``world`` (which
imports governance: an import cycle). ``world`` should import them from here; until it does,
both copies must stay equal (``tests/test_governance_patch.py`` compares them).
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..modules.lifecycle import WASM_HASH_RE
from ..modules.sandbox import check_module_limits_max
from ..params import TOOLCHAIN_NAMES, Toolchain, WorldParams

#: Bounds of the staking and governance parameters beyond "an integer in [0, 2**62)".
SECTION_BOUNDS: dict[str, tuple[int, int]] = {
    "max_validators": (1, 10_000), "min_bond": (1, 1 << 62), "max_power_percent": (1, 100),
    "slash_double_sign_percent": (0, 100), "downtime_min_signed_percent": (0, 100),
    "max_bonds_per_validator": (1, 10_000), "max_unbonding_entries": (1, 100), "unbonding_epochs": (0, 1000),
    "voting_period_heights": (1, 1 << 40), "quorum_percent": (0, 100), "threshold_percent": (0, 99),
    "max_pending": (1, 1000),
}


def check_world_params(params: Any) -> WorldParams:
    """Return ``params`` (``WorldParams`` or a struct with its fields) as ``WorldParams``,
    checked: every integer in [0, 2**62), valid module limit caps (``check_module_limits_max``)
    and toolchains. Raises ValueError naming the field."""
    if not isinstance(params, WorldParams):
        params = WorldParams(**msgspec.structs.asdict(params))
    for field in msgspec.structs.fields(WorldParams):
        name = field.name
        value = getattr(params, name)
        if name == "module_limits_max":
            check_module_limits_max(value)
            continue
        if name == "toolchains":
            check_toolchains(value)
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << 62):
            raise ValueError(f"world param {name} must be an integer in [0, 2**62), got {value!r}")
    return params


def check_section(section: Any, name: str) -> Any:
    """Return ``section`` (``StakingParams`` or ``GovernanceParams``) checked: each field an
    integer within its bounds (``SECTION_BOUNDS``, default [0, 2**62 - 1]). Raises ValueError
    naming ``name.field``."""
    for field in msgspec.structs.fields(type(section)):
        value = getattr(section, field.name)
        low, high = SECTION_BOUNDS.get(field.name, (0, (1 << 62) - 1))
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"{name}.{field.name} must be an integer in [{low}, {high}], got {value!r}")
    return section


def check_toolchains(toolchains: list[Toolchain]) -> None:
    """Raise ValueError unless each toolchain has a known name (``c`` or ``rust``, once each), a
    version of 1-200 characters and a 64-hex-character compiler_sha256."""
    seen: set[str] = set()
    for t in toolchains:
        if t.name not in TOOLCHAIN_NAMES or t.name in seen:
            raise ValueError(f"world toolchains: name must be one of {list(TOOLCHAIN_NAMES)}, once each; got {t.name!r}")
        seen.add(t.name)
        if not 0 < len(t.version) <= 200:
            raise ValueError(f"world toolchain {t.name}: version must be 1-200 characters")
        if not WASM_HASH_RE.fullmatch(t.compiler_sha256):
            raise ValueError(f"world toolchain {t.name}: compiler_sha256 must be 64 lowercase hex characters")
