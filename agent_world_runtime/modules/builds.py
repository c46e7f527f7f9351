"""Builds from source off the consensus path: requests, validator attestations, outcomes
(docs/module-abi.md, "Compiling from source").

A ``compile_module_artifact_from_source`` whose sources need a toolchain (C or Rust; WAT compiles in
the world itself) does not build anything while its block executes. It records a pending
``BuildRecord`` (``request_build``); every validator then builds the package in its own hermetic,
bounded process (``agent_world_node.builds``) and submits an ``AttestBuild`` action signed with its
consensus key: the wasm_hash it built, with the bytes, or a failure code. The model is CometBFT's
vote extensions (validators add signed data that later blocks carry) with reproducible-build
verification (independent builders must agree on the bytes).

Counting (``apply_attestation``), with T the total genesis stake:

* an outcome (one wasm_hash, or one failure code) attested by validators holding more than 2/3 of T
  settles the build: a wasm_hash registers the artifact exactly as a deploy would (its bytes came
  with an attestation and matched the hash), a failure code fails the build with that code;
* once no outcome can reach more than 2/3 of T even with every validator yet to attest, the build
  fails with ``BUILD_DISAGREEMENT``;
* a build still pending when its ``deadline`` height ends fails with ``BUILD_DEADLINE``
  (``expire_builds``).

Only codes and hashes enter the world: the compiler's messages stay in the validators' logs and
their ``GET /v1/builds/{id}``. Replaying the chain applies the same attestations (the bytes are in
the blocks), so a restarted node, a late joiner or a replay from genesis never builds.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import msgspec

from .. import events as ev
from ..actions import MAX_ACTION_PAYLOAD_BYTES, AttestBuild, ModuleSourcePackage
from ..crypto import sha256
from ..rules import ActionContext, EventSpec, Rejected
from ..staking.sets import active_powers
from ..state import BuildRecord, WorldState
from .manifest import ModuleManifest

#: Largest module bytes an attestation carries: an attestation is one action, whose payload is at
#: most ``MAX_ACTION_PAYLOAD_BYTES``; 8 KiB are left for the envelope. A larger build attests
#: ``OUTPUT_TOO_LARGE``.
MAX_ATTESTED_WASM_BYTES = MAX_ACTION_PAYLOAD_BYTES - 8 * 1024

#: Build outcomes that enter the world besides OK (a validator's builder reports one of these).
BUILD_FAILURE_CODES = frozenset({
    "COMPILE_ERROR", "TIMEOUT", "CPU_LIMIT", "MEMORY_LIMIT", "OUTPUT_TOO_LARGE", "NO_OUTPUT", "INVALID_PACKAGE",
})


class BuildCode(enum.StrEnum):
    """Why a build failed in the world (``module.build_failed`` ``code``): a failure code the
    validators agreed on (``BUILD_FAILURE_CODES``), or one of these."""

    DISAGREEMENT = "BUILD_DISAGREEMENT"
    """The validators' outcomes differ so that none can reach more than 2/3 of the stake."""

    DEADLINE = "BUILD_DEADLINE"
    """The deadline height passed before more than 2/3 of the stake agreed."""

    INVALID_ARTIFACT = "INVALID_ARTIFACT"
    """The agreed bytes are not a module this world accepts (manifest, ABI or structural limits),
    or the module id or version was taken while the build was pending."""


def toolchain_of(files: dict[str, str]) -> str | None:
    """Return the toolchain a package needs from its sources: ``"rust"`` for ``.rs``, ``"c"`` for
    ``.c`` (C wins when both appear: a package is built by one toolchain), None for neither."""
    if any(p.endswith(".c") for p in files):
        return "c"
    if any(p.endswith(".rs") for p in files):
        return "rust"
    return None


def request_build(state: WorldState, ctx: ActionContext, manifest: ModuleManifest, package: ModuleSourcePackage,
                  toolchain: str) -> list[EventSpec]:
    """Record a pending build of ``package`` (already validated) with ``toolchain`` for the
    compile action ``ctx`` and return ``module.build_requested``. Raises Rejected if the chain
    names no such toolchain (``WorldParams.toolchains``)."""
    params = state.manifest.params
    if not any(t.name == toolchain for t in params.toolchains):
        named = sorted(t.name for t in params.toolchains)
        raise Rejected(
            f"this chain builds no {toolchain} sources (its genesis toolchains: {named or 'none'}); "
            "compile the module yourself and publish it with deploy_module_artifact, or write it in WAT"
        )
    build_id = ctx.action_id.hex()
    deadline = ctx.height + params.build_deadline_heights
    state.put_build(BuildRecord(
        build_id=build_id, publisher=ctx.agent_id, module_id=manifest.module_id, manifest=manifest,
        toolchain=toolchain, requested_at=ctx.height, deadline=deadline, package=package,
    ))
    return [(ev.BUILD_REQUESTED, {
        "action_id": ctx.action_id, "agent_id": ctx.agent_id, "build_id": build_id, "module_id": manifest.module_id,
        "version": manifest.version, "toolchain": toolchain, "deadline_height": deadline,
    })]


def attestation_problem(state: WorldState, validator: str, action: AttestBuild) -> str | None:
    """Return why validator ``validator``'s attestation cannot be applied to ``state`` now, or
    None: the build must exist and be pending, the validator must not have attested it, the code
    must be OK (with a 64-hex wasm_hash, and bytes that hash to it unless the build already holds
    bytes for it, at most the deploy size) or a known failure code (with no hash or bytes)."""
    build = state.builds.get(action.build_id)
    if build is None:
        return f"unknown build {action.build_id[:80]!r}"
    if build.status != "pending":
        return f"build {build.build_id} is already {build.status}"
    if validator in build.attestations:
        return f"validator {validator[:16]} already attested build {build.build_id}"
    if action.code == "OK":
        if len(action.wasm_hash) != 64 or any(c not in "0123456789abcdef" for c in action.wasm_hash):
            return "an OK attestation needs the wasm_hash it built (64 lowercase hex characters)"
        if action.wasm_bytes:
            if sha256(action.wasm_bytes).hex() != action.wasm_hash:
                return "the attested bytes do not hash to the attested wasm_hash"
        elif action.wasm_hash not in build.candidates:
            return "no bytes for this wasm_hash were attested yet; attach them"
        return None
    if action.code not in BUILD_FAILURE_CODES:
        return f"unknown build code {action.code[:40]!r}; use OK or one of {sorted(BUILD_FAILURE_CODES)}"
    if action.wasm_hash or action.wasm_bytes:
        return "a failed build attests no wasm_hash or bytes"
    return None


def apply_attestation(state: WorldState, ctx: ActionContext, action: AttestBuild,
                      publish: Callable[[BuildRecord, bytes], list[EventSpec]]) -> list[EventSpec]:
    """Record validator ``ctx.agent_id``'s attestation and settle the build when an outcome holds
    more than 2/3 of the stake, or none can (see the module docstring). ``publish(build, wasm)``
    registers the agreed bytes and returns its events, raising Rejected when the world refuses the
    artifact (the build then fails with ``INVALID_ARTIFACT``). Raises Rejected when
    ``attestation_problem`` finds one."""
    validator = ctx.agent_id
    problem = attestation_problem(state, validator, action)
    if problem is not None:
        raise Rejected(problem)
    build = state.builds[action.build_id]
    outcome = action.wasm_hash if action.code == "OK" else f"code:{action.code}"
    candidates = build.candidates
    if action.code == "OK" and action.wasm_bytes and action.wasm_hash not in candidates:
        candidates = {**candidates, action.wasm_hash: action.wasm_bytes}
    build = msgspec.structs.replace(build, attestations={**build.attestations, validator: outcome},
                                    candidates=candidates)
    state.put_build(build)
    out: list[EventSpec] = [(ev.BUILD_ATTESTED, {
        "action_id": ctx.action_id, "agent_id": validator, "build_id": build.build_id, "outcome": outcome,
    })]
    stakes = active_powers(state)
    total = sum(stakes.values())
    held: dict[str, int] = {}
    for who, said in build.attestations.items():
        held[said] = held.get(said, 0) + stakes.get(who, 0)
    winner = next((o for o, s in sorted(held.items()) if 3 * s > 2 * total), None)
    if winner is not None:
        if winner.startswith("code:"):
            out.append(_fail(state, build, winner[5:]))
        else:
            try:
                out.extend(publish(build, build.candidates[winner]))
                out.append(_settle(state, build, "registered", "OK", winner))
            except Rejected as exc:
                out.append(_fail(state, build, BuildCode.INVALID_ARTIFACT, exc.reason))
        return out
    unattested = total - sum(held.values())
    if all(3 * (s + unattested) <= 2 * total for s in held.values()):
        out.append(_fail(state, build, BuildCode.DISAGREEMENT))
    return out


def expire_builds(state: WorldState, height: int) -> list[EventSpec]:
    """Fail every build still pending whose deadline is ``height`` or earlier (in build id order)
    with ``BUILD_DEADLINE``; return the events."""
    due = sorted(b for b, r in state.builds.items() if r.status == "pending" and r.deadline <= height)
    return [_fail(state, state.builds[b], BuildCode.DEADLINE) for b in due]


def pending_builds(state: WorldState) -> list[BuildRecord]:
    """The pending builds, in build id order."""
    return [state.builds[b] for b in sorted(state.builds) if state.builds[b].status == "pending"]


def _settle(state: WorldState, build: BuildRecord, status: str, code: str, wasm_hash: str = "") -> EventSpec:
    state.put_build(msgspec.structs.replace(build, status=status, code=code, wasm_hash=wasm_hash, package=None,
                                            candidates={}))
    return (ev.BUILD_SETTLED, {
        "build_id": build.build_id, "agent_id": build.publisher, "module_id": build.module_id, "status": status,
        "code": code, "wasm_hash": wasm_hash, "attestations": len(build.attestations),
    })


def _fail(state: WorldState, build: BuildRecord, code: str, reason: str = "") -> EventSpec:
    kind, data = _settle(state, build, "failed", code)
    if reason:
        data["reason"] = reason
    return kind, data
