"""The world's manifest: the rules in force, which governance changes (docs/governance.md).

A ``Manifest`` holds the world parameters (``WorldParams``: rules, fees, module limit caps), the
staking and governance rules, and the last applied ``module_changes``. Version 1 is the genesis
manifest; every applied proposal (a rollback included) makes the next version. Its hash is
``sha256`` of its canonical msgpack encoding.
"""

from __future__ import annotations

import msgspec

from ..codec import encode
from ..crypto import sha256
from ..params import GovernanceParams, StakingParams, WorldParams


class ModuleChange(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """One change to the world's system modules: ``op`` is ``install`` (artifact ``wasm_hash`` as
    instance ``instance_id``, owned and paid for by ``owner_agent_id``), ``upgrade`` (instance
    ``instance_id`` to artifact ``wasm_hash``) or ``deactivate`` (instance ``instance_id``)."""

    op: str
    instance_id: str
    wasm_hash: str = ""
    owner_agent_id: str = ""
    install_target: str = ""
    grant_caps: list[str] = []


class ModuleChangeSet(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The module changes a manifest version applies, in order."""

    changes: list[ModuleChange] = []


class Manifest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The world's rules at one ``version`` (1: genesis)."""

    version: int
    params: WorldParams
    staking: StakingParams = msgspec.field(default_factory=StakingParams)
    governance: GovernanceParams = msgspec.field(default_factory=GovernanceParams)
    module_changes: ModuleChangeSet | None = None


def manifest_hash(manifest: Manifest) -> bytes:
    """Return ``sha256(encode(manifest))`` (32 bytes)."""
    return sha256(encode(manifest))
