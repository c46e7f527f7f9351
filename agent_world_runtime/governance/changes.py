"""The module changes of a manifest, checked and executed with governance authority
(docs/governance.md, "Module changes").

A governance change is not an agent's action: an ``install`` needs no publisher's signature
(the instance's owner is ``owner_agent_id``; its calls are paid by the artifact's publisher, as
any instance's), an ``upgrade`` or ``deactivate`` needs no owner's. Every other rule is
``modules.lifecycle``'s (instance ids, install targets, granted capabilities, the instance limit
per agent, the upgrade rules). ``plan_module_changes`` runs the changes in order over a private
overlay of the instances, so a set may install an instance and then upgrade it; the shadow run
keeps only the errors, the application writes the records.
"""

from __future__ import annotations

import msgspec

from .. import events as ev
from ..modules.lifecycle import (
    INSTALL_TARGET_SELF,
    INSTANCE_ID_RE,
    MAX_INSTANCES_PER_AGENT,
    WASM_HASH_RE,
    check_install_target,
    check_upgrade,
)
from ..rules import EventSpec, Rejected
from ..state import InstanceRecord, WorldState
from .manifest import ModuleChange, ModuleChangeSet

#: At most this many module changes in one manifest version.
MAX_MODULE_CHANGES = 32
MODULE_CHANGE_OPS = ("install", "upgrade", "deactivate")


class ModulePlan(msgspec.Struct, frozen=True):
    """The outcome of planning a change set: ``errors`` (one per failed change, prefixed with its
    index), the instance ``records`` to write in order, and their ``events``."""

    errors: list[str]
    records: list[InstanceRecord]
    events: list[tuple[str, dict]]


def _install(state: WorldState, ch: ModuleChange, overlay: dict[str, InstanceRecord], height: int,
             proposal_id: int) -> tuple[InstanceRecord, EventSpec]:
    if not WASM_HASH_RE.fullmatch(ch.wasm_hash):
        raise Rejected(f"wasm_hash must be 64 lowercase hex characters, got {ch.wasm_hash[:80]!r}")
    artifact = state.artifacts.get(ch.wasm_hash)
    if artifact is None:
        raise Rejected(f"unknown artifact {ch.wasm_hash}: deploy or compile it first")
    if ch.owner_agent_id not in state.agents:
        raise Rejected(f"owner_agent_id {ch.owner_agent_id[:64]!r} is not a registered agent")
    if not INSTANCE_ID_RE.fullmatch(ch.instance_id):
        raise Rejected(f"invalid instance_id {ch.instance_id[:80]!r}: use 1-130 characters of a-z, 0-9, '_', '.', '@', '-'")
    if ch.instance_id in overlay or ch.instance_id in state.instances:
        raise Rejected(f"instance {ch.instance_id!r} already exists; choose another instance_id")
    owned = {i for i, r in state.instances.items() if r.owner_agent_id == ch.owner_agent_id}
    owned |= {i for i, r in overlay.items() if r.owner_agent_id == ch.owner_agent_id}
    if len(owned) >= MAX_INSTANCES_PER_AGENT:
        raise Rejected(f"agent {ch.owner_agent_id!r} already owns {len(owned)} module instances; "
                       f"the limit is {MAX_INSTANCES_PER_AGENT}")
    target = check_install_target(state, ch.install_target or INSTALL_TARGET_SELF)
    required = artifact.manifest.required_caps
    for cap in ch.grant_caps:
        if cap not in required:
            raise Rejected(f"cannot grant capability {cap[:60]!r}: the manifest's required_caps are {list(required)}")
    if len(set(ch.grant_caps)) != len(ch.grant_caps):
        raise Rejected("grant_caps lists a capability twice")
    record = InstanceRecord(instance_id=ch.instance_id, module_id=artifact.module_id, version=artifact.version,
                            wasm_hash=artifact.wasm_hash, owner_agent_id=ch.owner_agent_id, install_target=target,
                            active=True, installed_at=height, granted_caps=sorted(ch.grant_caps))
    return record, (ev.MODULE_INSTALLED, {
        "proposal_id": proposal_id, "authority": "governance", "agent_id": ch.owner_agent_id,
        "instance_id": ch.instance_id, "module_id": artifact.module_id, "version": artifact.version,
        "wasm_hash": artifact.wasm_hash, "active": True, "install_target": target,
        "granted_caps": sorted(ch.grant_caps),
    })


def _instance(state: WorldState, instance_id: str, overlay: dict[str, InstanceRecord]) -> InstanceRecord:
    inst = overlay.get(instance_id) or state.instances.get(instance_id)
    if inst is None:
        raise Rejected(f"unknown instance {instance_id[:80]!r}")
    return inst


def _upgrade(state: WorldState, ch: ModuleChange, overlay: dict[str, InstanceRecord],
             proposal_id: int) -> tuple[InstanceRecord, EventSpec]:
    inst = _instance(state, ch.instance_id, overlay)
    artifact = state.artifacts.get(ch.wasm_hash)
    if artifact is None:
        raise Rejected(f"unknown artifact {ch.wasm_hash[:80]!r}: deploy or compile the next version first")
    if artifact.wasm_hash == inst.wasm_hash:
        raise Rejected(f"instance {inst.instance_id!r} already runs artifact {artifact.wasm_hash}")
    check_upgrade(state.artifacts[inst.wasm_hash].manifest, artifact.manifest)
    record = msgspec.structs.replace(
        inst, version=artifact.version, wasm_hash=artifact.wasm_hash,
        granted_caps=[c for c in inst.granted_caps if c in artifact.manifest.required_caps])
    return record, (ev.MODULE_UPGRADED, {
        "proposal_id": proposal_id, "authority": "governance", "agent_id": inst.owner_agent_id,
        "instance_id": inst.instance_id, "module_id": inst.module_id, "from_version": inst.version,
        "to_version": artifact.version, "from_wasm_hash": inst.wasm_hash, "wasm_hash": artifact.wasm_hash,
        "active": inst.active,
    })


def _deactivate(state: WorldState, ch: ModuleChange, overlay: dict[str, InstanceRecord],
                proposal_id: int) -> tuple[InstanceRecord, EventSpec]:
    inst = _instance(state, ch.instance_id, overlay)
    if not inst.active:
        raise Rejected(f"instance {inst.instance_id!r} is already inactive")
    return msgspec.structs.replace(inst, active=False), (ev.MODULE_ACTIVATION_CHANGED, {
        "proposal_id": proposal_id, "authority": "governance", "agent_id": inst.owner_agent_id,
        "instance_id": inst.instance_id, "active": False,
    })


def plan_module_changes(state: WorldState, changes: ModuleChangeSet | None, height: int,
                        proposal_id: int = 0) -> ModulePlan:
    """Check ``changes`` in order against ``state`` (read only) as they would run at ``height``
    for proposal ``proposal_id``. Returns a ``ModulePlan``: every error as ``"module change
    <i> (<op> <instance_id>): <reason>"``, and, when there is none, the records to write and
    the events (``module.installed``, ``module.upgraded``, ``module.activation_changed``, each
    with ``proposal_id`` and ``authority: "governance"``). At most MAX_MODULE_CHANGES changes."""
    items = [] if changes is None else list(changes.changes)
    if len(items) > MAX_MODULE_CHANGES:
        return ModulePlan([f"{len(items)} module changes; the limit is {MAX_MODULE_CHANGES}"], [], [])
    errors: list[str] = []
    records: list[InstanceRecord] = []
    events: list[tuple[str, dict]] = []
    overlay: dict[str, InstanceRecord] = {}
    for i, ch in enumerate(items):
        try:
            if ch.op == "install":
                record, event = _install(state, ch, overlay, height, proposal_id)
            elif ch.op == "upgrade":
                record, event = _upgrade(state, ch, overlay, proposal_id)
            elif ch.op == "deactivate":
                record, event = _deactivate(state, ch, overlay, proposal_id)
            else:
                raise Rejected(f"unknown op; use one of {list(MODULE_CHANGE_OPS)}")
        except Rejected as exc:
            errors.append(f"module change {i} ({ch.op[:20]} {ch.instance_id[:80]}): {exc.reason}")
            continue
        overlay[record.instance_id] = record
        records.append(record)
        events.append(event)
    if errors:
        return ModulePlan(errors, [], [])
    return ModulePlan([], records, events)


def execute_module_changes(state: WorldState, plan: ModulePlan) -> list[EventSpec]:
    """Write the records of an error-free ``plan`` in order and return its events. Raises
    ValueError for a plan with errors."""
    if plan.errors:
        raise ValueError("a module plan with errors cannot be executed")
    for record in plan.records:
        state.put_instance(record)
    return list(plan.events)
