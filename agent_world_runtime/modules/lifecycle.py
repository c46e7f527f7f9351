"""Module lifecycle actions: compile from source, deploy bytes, install an instance
(docs/module-abi.md, "Publishing" and "Upgrades").

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
* Fees: the action's fee, including the surcharge ``WorldParams.module_{deploy,compile,install}_fee``,
  is paid before any of these rules runs (``fees``), so a rejected publish has paid for the work.
* Capabilities: a manifest may only require capabilities in CAPABILITIES; an installer may grant an
  instance only capabilities its manifest requires (over the installer's own agent).
* Upgrades (``apply_upgrade``) keep the interface; each failed rule is a rejection naming the rule.
* Activation (``apply_set_active``): the owner turns an instance on or off (the router turns off an
  instance whose payer cannot pay a call's pre-call fees); turning it on requires the payer to
  hold the minimum pre-call fees (``fees.min_call_fees``) now. No fee.
"""

from __future__ import annotations

import re

import msgspec

from .. import events as ev
from ..actions import (
    CompileModuleArtifactFromSource,
    DeployModuleArtifact,
    InstallModuleFromArtifact,
    SetModuleInstanceActive,
    UpgradeModuleFromArtifact,
)
from ..crypto import sha256
from ..rules import ActionContext, EventSpec, Rejected
from ..state import ArtifactRecord, BuildRecord, InstanceRecord, WorldState
from .abi import ABI_INTERFACE_VERSION
from .billing import min_call_fees
from .builds import request_build
from .manifest import MODULE_KINDS, ModuleManifest, Subscription, cap_module_limits
from .sandbox import ModuleValidationError, Sandbox
from .source import SourceRejected, prepare_source_package

MODULE_ID_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+-]{0,31}")
INSTANCE_ID_RE = re.compile(r"[a-z0-9][a-z0-9_.@-]{0,129}")
WASM_HASH_RE = re.compile(r"[0-9a-f]{64}")
SUPPORTED_STAGES = ("pre_action", "post_action", "post_event", "tick")
# Capability name -> the effect kind it allows (docs/module-abi.md, "Capabilities and policy").
CAPABILITIES = {"agent.transfer": "transfer_resource"}
LOCATION_TARGET_RE = re.compile(r"location:(-?[0-9]{1,10}),(-?[0-9]{1,10}),(-?[0-9]{1,10})")
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
    MAX_SUBSCRIPTIONS subscriptions on supported stages, positive limits, only known capabilities
    (CAPABILITIES)."""
    if not MODULE_ID_RE.fullmatch(m.module_id):
        raise Rejected(f"invalid module_id {m.module_id[:64]!r}: use 1-64 characters of a-z, 0-9, '_', '.', '-'")
    if not VERSION_RE.fullmatch(m.version):
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
    for cap in m.required_caps:
        if cap not in CAPABILITIES:
            raise Rejected(
                f"capability {cap[:60]!r} is not available in this world; known capabilities: {sorted(CAPABILITIES)}"
            )


def _check_ownership(state: WorldState, agent_id: str, manifest: ModuleManifest) -> None:
    """Raise Rejected unless ``agent_id`` may publish ``manifest``'s module id and version."""
    owner = state.module_publishers.get(manifest.module_id)
    if owner is not None and owner != agent_id:
        raise Rejected(f"module id {manifest.module_id!r} belongs to agent {owner!r}; choose another module_id")
    prior = state.module_versions.get((manifest.module_id, manifest.version))
    if prior is not None:
        raise Rejected(
            f"module {manifest.module_id!r} version {manifest.version!r} is already published as artifact {prior}; "
            "bump the version"
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
    _check_ownership(state, ctx.agent_id, manifest)
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
    """Check the source package (``source.prepare_source_package``). WAT is compiled here and the
    artifact published at once (event module.artifact_compiled); C or Rust sources become a build
    request that validators settle in later blocks (``builds.request_build``, event
    module.build_requested), after the same checks a publish makes now, so a request that could
    never register is rejected at once."""
    try:
        manifest, wasm, toolchain = prepare_source_package(action.module_id, action.source_package)
    except SourceRejected as exc:
        raise Rejected(str(exc)) from None
    if wasm is not None:
        return _publish(state, sandbox, ctx, manifest, wasm, "compiled", ev.ARTIFACT_COMPILED)
    assert toolchain is not None
    check_manifest(manifest)
    _check_ownership(state, ctx.agent_id, manifest)
    return request_build(state, ctx, manifest, action.source_package, toolchain)


def publish_build(state: WorldState, sandbox: Sandbox, build: BuildRecord, wasm: bytes) -> list[EventSpec]:
    """Publish the bytes the validators agreed on for ``build`` as its publisher's artifact
    (event module.artifact_compiled with the ``build_id``); raises Rejected as a deploy would."""
    ctx = ActionContext(action_id=bytes.fromhex(build.build_id), agent_id=build.publisher, nonce=0,
                        height=state.meta.height)
    events = _publish(state, sandbox, ctx, build.manifest, wasm, "compiled", ev.ARTIFACT_COMPILED)
    events[0][1]["build_id"] = build.build_id
    return events


def apply_deploy(state: WorldState, sandbox: Sandbox, ctx: ActionContext, action: DeployModuleArtifact) -> list[EventSpec]:
    """Publish ready-made bytes whose hash the action states (event module.artifact_deployed)."""
    if not WASM_HASH_RE.fullmatch(action.wasm_hash):
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
    if not INSTANCE_ID_RE.fullmatch(instance_id):
        raise Rejected(f"invalid instance_id {instance_id[:80]!r}: use 1-130 characters of a-z, 0-9, '_', '.', '@', '-'")
    if instance_id in state.instances:
        raise Rejected(f"instance {instance_id!r} already exists; choose another instance_id")
    owned = sum(1 for i in state.instances.values() if i.owner_agent_id == ctx.agent_id)
    if owned >= MAX_INSTANCES_PER_AGENT:
        raise Rejected(f"agent {ctx.agent_id!r} already owns {owned} module instances; the limit is {MAX_INSTANCES_PER_AGENT}")
    target = check_install_target(state, action.install_target or INSTALL_TARGET_SELF)
    required = artifact.manifest.required_caps
    for cap in action.grant_caps:
        if cap not in required:
            raise Rejected(f"cannot grant capability {cap[:60]!r}: the manifest's required_caps are {list(required)}")
    if len(set(action.grant_caps)) != len(action.grant_caps):
        raise Rejected("grant_caps lists a capability twice")
    record = InstanceRecord(
        instance_id=instance_id,
        module_id=artifact.module_id,
        version=artifact.version,
        wasm_hash=artifact.wasm_hash,
        owner_agent_id=ctx.agent_id,
        install_target=target,
        active=action.activate,
        installed_at=ctx.height,
        granted_caps=sorted(action.grant_caps),
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
        "install_target": target,
        "granted_caps": sorted(action.grant_caps),
    })]


def check_install_target(state: WorldState, target: str) -> str:
    """Return ``target`` if it is ``self_agent``, ``agent:<registered agent id>`` or
    ``location:<x>,<y>,<z>`` inside the grid; raise Rejected otherwise."""
    if target == INSTALL_TARGET_SELF:
        return target
    if target.startswith("agent:"):
        if target[6:] not in state.agents:
            raise Rejected(f"install_target {target[:80]!r} names no registered agent")
        return target
    m = LOCATION_TARGET_RE.fullmatch(target)
    if m:
        g = state.manifest.params.grid_size
        if any(not -g <= int(c) <= g for c in m.groups()):
            raise Rejected(f"install_target {target[:80]!r} is outside the grid [-{g}, {g}]")
        return target
    raise Rejected(
        f"invalid install_target {target[:80]!r}: use 'self_agent', 'agent:<agent_id>' or 'location:<x>,<y>,<z>'"
    )


def subscription_covers(new: Subscription, old: Subscription) -> bool:
    """Return True if ``new`` selects everything ``old`` selects: same stage, a kind pattern at least
    as wide (equal, or a ``*`` prefix that matches the old kind or old prefix) and filters that are
    a subset of the old ones."""
    if new.stage != old.stage:
        return False
    if new.kind.endswith("*"):
        if not old.kind.rstrip("*").startswith(new.kind[:-1]):
            return False
    elif old.kind.endswith("*") or new.kind != old.kind:
        return False
    return all(old.filters.get(k) == v for k, v in new.filters.items())


def check_upgrade(old: ModuleManifest, new: ModuleManifest) -> None:
    """Raise Rejected naming the first rule the manifest pair breaks (docs/module-abi.md,
    "Upgrades"): same module id, same interface_version, same kind (the ABI contract: entry point
    and state), a different version, no export removed, every old subscription covered."""
    if new.module_id != old.module_id:
        raise Rejected(f"upgrade rule 'same module id' failed: instance runs {old.module_id!r}, artifact is {new.module_id!r}")
    if new.interface_version != old.interface_version:
        raise Rejected(
            f"upgrade rule 'same interface_version' failed: {old.interface_version} -> {new.interface_version}"
        )
    if new.kind != old.kind:
        raise Rejected(f"upgrade rule 'compatible ABI contract' failed: module kind changes {old.kind!r} -> {new.kind!r}")
    if new.version == old.version:
        raise Rejected(f"upgrade rule 'new version' failed: both artifacts are version {old.version!r}")
    removed = sorted(set(old.exports) - set(new.exports))
    if removed:
        raise Rejected(f"upgrade rule 'no export removed' failed: the next manifest drops {removed}")
    for sub in old.subscriptions:
        if not any(subscription_covers(n, sub) for n in new.subscriptions):
            raise Rejected(
                f"upgrade rule 'subscriptions still covered' failed: nothing in the next manifest covers "
                f"{sub.kind!r} at stage {sub.stage!r} with filters {dict(sub.filters)}"
            )


def apply_upgrade(state: WorldState, ctx: ActionContext, action: UpgradeModuleFromArtifact) -> list[EventSpec]:
    """Point instance ``action.instance_id`` at artifact ``action.wasm_hash`` (event
    module.upgraded {instance_id, from_version, to_version, ...}); its module state and granted
    capabilities are kept, capabilities the next manifest no longer requires are dropped.
    Raises Rejected naming the failed rule (owner only, plus ``check_upgrade``)."""
    inst = state.instances.get(action.instance_id)
    if inst is None:
        raise Rejected(f"unknown instance {action.instance_id[:80]!r}; install the module first")
    if inst.owner_agent_id != ctx.agent_id:
        raise Rejected(f"upgrade rule 'owner only' failed: instance {inst.instance_id!r} is owned by {inst.owner_agent_id!r}")
    artifact = state.artifacts.get(action.wasm_hash)
    if artifact is None:
        raise Rejected(f"unknown artifact {action.wasm_hash[:80]!r}: deploy or compile the next version first")
    if artifact.wasm_hash == inst.wasm_hash:
        raise Rejected(f"instance {inst.instance_id!r} already runs artifact {artifact.wasm_hash}")
    check_upgrade(state.artifacts[inst.wasm_hash].manifest, artifact.manifest)
    record = msgspec.structs.replace(
        inst, version=artifact.version, wasm_hash=artifact.wasm_hash, active=action.activate,
        granted_caps=[c for c in inst.granted_caps if c in artifact.manifest.required_caps],
    )
    state.put_instance(record)
    return [(ev.MODULE_UPGRADED, {
        "action_id": ctx.action_id,
        "agent_id": ctx.agent_id,
        "instance_id": inst.instance_id,
        "module_id": inst.module_id,
        "from_version": inst.version,
        "to_version": artifact.version,
        "from_wasm_hash": inst.wasm_hash,
        "wasm_hash": artifact.wasm_hash,
        "active": action.activate,
    })]


def apply_set_active(state: WorldState, ctx: ActionContext, action: SetModuleInstanceActive) -> list[EventSpec]:
    """Set instance ``action.instance_id``'s active flag (event module.activation_changed
    {action_id, agent_id, instance_id, active}). Raises Rejected if the instance is unknown, the
    signer is not its owner, the flag already has that value, or (turning it on) its payer, the
    artifact's publisher, does not hold the minimum pre-call fees (``fees.min_call_fees`` of the
    capped max_gas at the world's gas price)."""
    inst = state.instances.get(action.instance_id)
    if inst is None:
        raise Rejected(f"unknown instance {action.instance_id[:80]!r}; install the module first")
    if inst.owner_agent_id != ctx.agent_id:
        raise Rejected(f"only the owner {inst.owner_agent_id!r} may turn instance {inst.instance_id!r} on or off")
    if inst.active == action.active:
        raise Rejected(f"instance {inst.instance_id!r} is already {'active' if inst.active else 'inactive'}")
    if action.active:
        check_payer_can_run(state, inst)
    state.put_instance(msgspec.structs.replace(inst, active=action.active))
    return [(ev.MODULE_ACTIVATION_CHANGED, {
        "action_id": ctx.action_id,
        "agent_id": ctx.agent_id,
        "instance_id": inst.instance_id,
        "active": action.active,
    })]


def check_payer_can_run(state: WorldState, inst: InstanceRecord) -> None:
    """Raise Rejected unless the payer of ``inst`` (its artifact's publisher) holds the minimum
    pre-call fees: 1 electricity and 1 + gas_fee(capped max_gas) data."""
    artifact = state.artifacts[inst.wasm_hash]
    params = state.manifest.params
    max_gas = cap_module_limits(artifact.manifest.limits, params.module_limits_max).max_gas
    data, elec = min_call_fees(max_gas, params.gas_price_per_mfuel)
    payer = state.agents.get(artifact.publisher)
    if payer is None:
        raise Rejected(f"cannot activate instance {inst.instance_id!r}: its payer {artifact.publisher!r} is not registered")
    if payer.data < data or payer.electricity < elec:
        raise Rejected(
            f"cannot activate instance {inst.instance_id!r}: its payer {artifact.publisher!r} must hold at least "
            f"{data} data and {elec} electricity (the base fee plus the gas fee of max_gas {max_gas}) and has "
            f"{payer.data} data and {payer.electricity} electricity; transfer resources to it or harvest first"
        )
