"""Module lifecycle actions: compile from source, deploy bytes, install an instance
(DESIGN.md, "WASM modules").

Rules:

* Artifacts are identified by ``wasm_hash = sha256(bytes).hex()`` and never replaced: publishing
  bytes that already exist is rejected, and a second artifact under the same module id is a new
  artifact (a new hash), leaving existing instances on the old one.
* A module id belongs to the agent that first published it; a ``(module_id, version)`` pair is
  published once (bump the version for new bytes).
* The manifest must be one this runtime can honour (``check_manifest``) and the module must have
  the ABI shape (``Sandbox.compile``) with the entry point of its kind (``reduce`` for reducers,
  ``call`` for pure modules).
* Only an artifact's publisher may install it; instance ids are unique and default to
  ``<module_id>@<agent_id>``; an agent owns at most MAX_INSTANCES_PER_AGENT instances.
"""

from __future__ import annotations

import re

from .. import events as ev
from ..actions import CompileModuleArtifactFromSource, DeployModuleArtifact, InstallModuleFromArtifact
from ..crypto import sha256
from ..rules import ActionContext, EventSpec, Rejected
from ..state import ArtifactRecord, InstanceRecord, WorldState
from .abi import ABI_INTERFACE_VERSION
from .manifest import MODULE_KINDS, ModuleManifest
from .sandbox import ModuleValidationError, Sandbox
from .source import SourceRejected, build_source_package

MODULE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+-]{0,31}$")
INSTANCE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.@-]{0,129}$")
WASM_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
SUPPORTED_STAGES = ("post_event", "tick")
MAX_SUBSCRIPTIONS = 32
MAX_FILTERS = 8
INSTALL_TARGET_SELF = "self_agent"
MAX_INSTANCES_PER_AGENT = 32


def entry_point(kind: str) -> str:
    """Return the ABI entry point of a module kind: ``reduce`` (reducer) or ``call`` (pure)."""
    return "reduce" if kind == "reducer" else "call"


def check_manifest(m: ModuleManifest) -> None:
    """Raise Rejected unless this runtime can honour manifest ``m``: valid module id and version,
    a known kind, interface version 1, its entry point among ``exports``, at most
    MAX_SUBSCRIPTIONS subscriptions on supported stages, positive limits, no capabilities."""
    if not MODULE_ID_RE.match(m.module_id):
        raise Rejected(f"invalid module_id {m.module_id[:64]!r}: use 1-64 characters of a-z, 0-9, '_', '.', '-'")
    if not VERSION_RE.match(m.version):
        raise Rejected(f"invalid version {m.version[:40]!r}: use 1-32 characters of letters, digits, '.', '+', '-'")
    if m.kind not in MODULE_KINDS:
        raise Rejected(f"unknown module kind {m.kind[:40]!r}; use one of {list(MODULE_KINDS)}")
    if m.interface_version != ABI_INTERFACE_VERSION:
        raise Rejected(f"interface_version {m.interface_version} is not supported; this runtime speaks {ABI_INTERFACE_VERSION}")
    entry = entry_point(m.kind)
    if entry not in m.exports:
        raise Rejected(f"a {m.kind} module must list {entry!r} in its manifest exports")
    if len(m.subscriptions) > MAX_SUBSCRIPTIONS:
        raise Rejected(f"{len(m.subscriptions)} subscriptions; the limit is {MAX_SUBSCRIPTIONS}")
    for sub in m.subscriptions:
        if sub.stage not in SUPPORTED_STAGES:
            raise Rejected(
                f"subscription stage {sub.stage[:40]!r} is not supported; use one of {list(SUPPORTED_STAGES)} "
                "(post_event sees every action's events, including domain.action_rejected)"
            )
        if not sub.kind or len(sub.kind) > 128 or "*" in sub.kind[:-1]:
            raise Rejected(f"subscription kind {sub.kind[:60]!r} must be 1-128 characters, with '*' only at the end")
        if len(sub.filters) > MAX_FILTERS:
            raise Rejected(f"subscription to {sub.kind!r} has {len(sub.filters)} filters; the limit is {MAX_FILTERS}")
    lim = m.limits
    for name in ("max_mem_bytes", "max_gas", "max_call_rate", "max_output_bytes"):
        if getattr(lim, name) <= 0:
            raise Rejected(f"limits.{name} must be positive, got {getattr(lim, name)}")
    for name in ("max_effects", "max_emits"):
        if getattr(lim, name) < 0:
            raise Rejected(f"limits.{name} must be >= 0, got {getattr(lim, name)}")
    if m.required_caps:
        raise Rejected(
            f"capability {m.required_caps[0][:60]!r} is not available: this world grants no effect capabilities yet; "
            "remove required_caps"
        )


def _publish(state: WorldState, sandbox: Sandbox, ctx: ActionContext, manifest: ModuleManifest, wasm: bytes,
             origin: str, kind: str) -> list[EventSpec]:
    check_manifest(manifest)
    wasm_hash = sha256(wasm).hex()
    existing = state.artifacts.get(wasm_hash)
    if existing is not None:
        raise Rejected(
            f"artifact {wasm_hash} already exists (module {existing.module_id!r} version {existing.version!r} "
            f"published by {existing.publisher!r}); install it with install_module_from_artifact"
        )
    owner = state.module_publishers.get(manifest.module_id)
    if owner is not None and owner != ctx.agent_id:
        raise Rejected(f"module id {manifest.module_id!r} belongs to agent {owner!r}; choose another module_id")
    prior = state.module_versions.get((manifest.module_id, manifest.version))
    if prior is not None:
        raise Rejected(
            f"module {manifest.module_id!r} version {manifest.version!r} is already published as artifact {prior}; "
            "bump the version"
        )
    try:
        compiled = sandbox.compile(wasm, wasm_hash)
    except ModuleValidationError as exc:
        raise Rejected(str(exc)) from None
    entry = entry_point(manifest.kind)
    if entry not in compiled.entries:
        raise Rejected(f"the manifest says {manifest.kind!r} but the module does not export {entry!r}")
    record = ArtifactRecord(
        wasm_hash=wasm_hash,
        module_id=manifest.module_id,
        version=manifest.version,
        publisher=ctx.agent_id,
        manifest=manifest,
        size=len(wasm),
        published_at=ctx.height,
        origin=origin,
    )
    state.put_artifact(record, wasm)
    return [(kind, {
        "action_id": ctx.action_id,
        "agent_id": ctx.agent_id,
        "module_id": manifest.module_id,
        "version": manifest.version,
        "wasm_hash": wasm_hash,
        "size": len(wasm),
    })]


def apply_compile(state: WorldState, sandbox: Sandbox, ctx: ActionContext,
                  action: CompileModuleArtifactFromSource) -> list[EventSpec]:
    """Build the source package in-process and publish the artifact (event module.artifact_compiled)."""
    try:
        manifest, wasm = build_source_package(action.module_id, action.source_package)
    except SourceRejected as exc:
        raise Rejected(str(exc)) from None
    return _publish(state, sandbox, ctx, manifest, wasm, "compiled", ev.ARTIFACT_COMPILED)


def apply_deploy(state: WorldState, sandbox: Sandbox, ctx: ActionContext, action: DeployModuleArtifact) -> list[EventSpec]:
    """Publish ready-made bytes whose hash the action states (event module.artifact_deployed)."""
    if not WASM_HASH_RE.match(action.wasm_hash):
        raise Rejected(f"wasm_hash must be 64 lowercase hex characters (sha256), got {action.wasm_hash[:80]!r}")
    actual = sha256(action.wasm_bytes).hex()
    if actual != action.wasm_hash:
        raise Rejected(f"wasm_hash {action.wasm_hash} does not match sha256 of the bytes ({actual})")
    return _publish(state, sandbox, ctx, action.manifest, action.wasm_bytes, "deployed", ev.ARTIFACT_DEPLOYED)


def apply_install(state: WorldState, ctx: ActionContext, action: InstallModuleFromArtifact) -> list[EventSpec]:
    """Create a module instance owned by the agent (event module.installed)."""
    artifact = state.artifacts.get(action.wasm_hash)
    if artifact is None:
        raise Rejected(f"unknown artifact {action.wasm_hash[:80]!r}: deploy or compile it first")
    if artifact.publisher != ctx.agent_id:
        raise Rejected(f"only the publisher {artifact.publisher!r} may install artifact {action.wasm_hash}")
    instance_id = action.instance_id or f"{artifact.module_id}@{ctx.agent_id}"
    if not INSTANCE_ID_RE.match(instance_id):
        raise Rejected(f"invalid instance_id {instance_id[:80]!r}: use 1-130 characters of a-z, 0-9, '_', '.', '@', '-'")
    if instance_id in state.instances:
        raise Rejected(f"instance {instance_id!r} already exists; choose another instance_id")
    owned = sum(1 for i in state.instances.values() if i.owner_agent_id == ctx.agent_id)
    if owned >= MAX_INSTANCES_PER_AGENT:
        raise Rejected(f"agent {ctx.agent_id!r} already owns {owned} module instances; the limit is {MAX_INSTANCES_PER_AGENT}")
    record = InstanceRecord(
        instance_id=instance_id,
        module_id=artifact.module_id,
        version=artifact.version,
        wasm_hash=artifact.wasm_hash,
        owner_agent_id=ctx.agent_id,
        install_target=INSTALL_TARGET_SELF,
        active=action.activate,
        installed_at=ctx.height,
    )
    state.put_instance(record)
    return [(ev.MODULE_INSTALLED, {
        "action_id": ctx.action_id,
        "agent_id": ctx.agent_id,
        "instance_id": instance_id,
        "module_id": artifact.module_id,
        "version": artifact.version,
        "wasm_hash": artifact.wasm_hash,
        "active": action.activate,
    })]
