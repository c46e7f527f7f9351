"""Decisions: what a policy (scripted or LLM) tells the runtime to do for one agent, one turn.

A decision names the acting agent indirectly: module decisions carry ``publisher`` /
``installer`` = ``"self"`` or ``"agent:<id>"`` (an agent the runtime controls, never a location);
the others act as the deciding agent. ``decision_to_action`` turns a decision into the signed
action's (signer, action); ``wait`` and ``wait_ticks`` produce none.

The wire form (the ``agent_submit_decision`` tool's arguments, see ``schema``/``parse``) is a JSON
object with a ``decision`` field naming the kind; the structs here are that form, typed.
"""

from __future__ import annotations

import hashlib
from typing import Union

import msgspec

from agent_world_runtime.actions import (
    Action,
    CompileModuleArtifactFromSource,
    DeployModuleArtifact,
    HarvestRadiation,
    InstallModuleFromArtifact,
    ModuleSourcePackage,
    MoveAgent,
    TransferResource,
    UpgradeModuleFromArtifact,
)
from agent_world_runtime.modules.manifest import ModuleManifest


class _Decision(msgspec.Struct, tag_field="decision", forbid_unknown_fields=True, frozen=True):
    pass


class Wait(_Decision, tag="wait"):
    """Do nothing this turn."""


class WaitTicks(_Decision, tag="wait_ticks"):
    """Do nothing for ``ticks`` turns (1..100)."""

    ticks: int


class Move(_Decision, tag="move_agent"):
    """Move the deciding agent to ``to`` = [x, y, z]."""

    to: tuple[int, int, int]


class Harvest(_Decision, tag="harvest_radiation"):
    """Harvest radiation (electricity) where the deciding agent stands."""


class Transfer(_Decision, tag="transfer_resource"):
    """Give ``amount`` (> 0) of ``kind`` (electricity or data) to agent ``to``."""

    to: str
    kind: str
    amount: int


class CompileModule(_Decision, tag="compile_module_artifact_from_source"):
    """Compile ``source_files`` (relative path -> UTF-8 text; ``manifest_path`` names the JSON
    manifest among them) into an artifact published by ``publisher`` under ``module_id``."""

    publisher: str
    module_id: str
    module_version: str
    manifest_path: str
    source_files: dict[str, str]


class DeployModule(_Decision, tag="deploy_module_artifact"):
    """Publish compiled bytes ``wasm_bytes_hex`` (their sha256 is ``wasm_hash``) with the manifest
    at ``manifest_path`` among ``source_files``, as ``publisher``."""

    publisher: str
    module_id: str
    module_version: str
    manifest_path: str
    source_files: dict[str, str]
    wasm_hash: str
    wasm_bytes_hex: str


class InstallModule(_Decision, tag="install_module_from_artifact"):
    """Install the artifact ``wasm_hash`` (module ``module_id`` at ``module_version``) as an
    instance owned by ``installer``; ``activate`` sets its active flag."""

    installer: str
    module_id: str
    module_version: str
    wasm_hash: str
    activate: bool = True


class UpgradeModule(_Decision, tag="upgrade_module"):
    """Move ``installer``'s instance of ``module_id`` to the artifact ``wasm_hash`` (its manifest
    says ``module_version``)."""

    installer: str
    module_id: str
    module_version: str
    wasm_hash: str
    activate: bool = True


Decision = Union[Wait, WaitTicks, Move, Harvest, Transfer, CompileModule, DeployModule, InstallModule, UpgradeModule]
DECISION_KINDS: tuple[str, ...] = tuple(t.__struct_config__.tag for t in Decision.__args__)  # type: ignore[attr-defined]


def decision_kind(decision: Decision) -> str:
    """The wire name of ``decision`` ("move_agent", ...)."""
    return type(decision).__struct_config__.tag  # type: ignore[attr-defined]


def resolve_actor(ref: str, self_id: str) -> str:
    """The agent id ``ref`` ("self" or "agent:<id>") names. Raises ValueError for anything else
    (e.g. "location:1,2,3", a bare id, an empty id)."""
    if ref == "self":
        return self_id
    if ref.startswith("agent:") and len(ref) > len("agent:"):
        return ref[len("agent:") :]
    raise ValueError(f"{ref[:80]!r} is not 'self' or 'agent:<agent id>'")


def default_instance_id(module_id: str, agent_id: str) -> str:
    """The instance id an install gets when none is given: ``<module_id>@<agent_id>``
    (``actions.InstallModuleFromArtifact``)."""
    return f"{module_id}@{agent_id}"


def decision_to_action(decision: Decision, self_id: str) -> tuple[str, Action] | None:
    """Return (signing agent id, action) for ``decision`` taken by agent ``self_id``, or None for
    ``wait`` / ``wait_ticks``. The decision must already be valid (``parse`` checks model output;
    scripted policies build valid ones); raises ValueError for a bad ``publisher``/``installer``
    or a manifest that is not valid JSON, as the last line of defence."""
    if isinstance(decision, (Wait, WaitTicks)):
        return None
    if isinstance(decision, Move):
        return self_id, MoveAgent(to=decision.to)
    if isinstance(decision, Harvest):
        return self_id, HarvestRadiation()
    if isinstance(decision, Transfer):
        return self_id, TransferResource(to=decision.to, kind=decision.kind, amount=decision.amount)
    if isinstance(decision, CompileModule):
        package = ModuleSourcePackage(manifest_path=decision.manifest_path, files=dict(decision.source_files))
        return resolve_actor(decision.publisher, self_id), CompileModuleArtifactFromSource(
            module_id=decision.module_id, source_package=package
        )
    if isinstance(decision, DeployModule):
        try:
            manifest = msgspec.json.decode(decision.source_files[decision.manifest_path], type=ModuleManifest)
        except (KeyError, msgspec.DecodeError) as exc:
            raise ValueError(f"manifest {decision.manifest_path!r}: {exc}") from None
        wasm = bytes.fromhex(decision.wasm_bytes_hex)
        if hashlib.sha256(wasm).hexdigest() != decision.wasm_hash:
            raise ValueError("wasm_bytes_hex does not hash to wasm_hash")
        return resolve_actor(decision.publisher, self_id), DeployModuleArtifact(
            wasm_hash=decision.wasm_hash, wasm_bytes=wasm, manifest=manifest
        )
    if isinstance(decision, InstallModule):
        return resolve_actor(decision.installer, self_id), InstallModuleFromArtifact(
            wasm_hash=decision.wasm_hash, activate=decision.activate
        )
    if isinstance(decision, UpgradeModule):
        installer = resolve_actor(decision.installer, self_id)
        return installer, UpgradeModuleFromArtifact(
            instance_id=default_instance_id(decision.module_id, installer),
            wasm_hash=decision.wasm_hash,
            activate=decision.activate,
        )
    raise TypeError(f"not a decision: {type(decision).__name__}")
