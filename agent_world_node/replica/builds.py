"""A validator's part in builds from source (``agent_world_runtime.modules.builds``): which pending
builds to start, and the signed attestation of each result.

The replica asks for a build with a ``StartBuild`` output when the executed world holds a pending
build this validator has neither attested nor started, and the node is not syncing (a node behind
the chain would build requests that are long settled). The driver builds it off the consensus path
(``agent_world_node.builds``) and answers with ``Replica.build_finished``, which signs an
``AttestBuild`` with the validator's consensus key and admits it like a client action, so it is
gossiped and proposed like any other. Bytes ride along unless the world already holds bytes for
that wasm_hash in this build. A restarted validator starts again the builds still pending.
"""

from __future__ import annotations

from agent_world_runtime import World
from agent_world_runtime.actions import AttestBuild, SignedAction, sign_action
from agent_world_runtime.crypto import SigningKey, sha256

from .outputs import StartBuild

#: Builds one validator runs at a time at most (the driver queues the rest).
MAX_BUILDS_STARTED = 64


class BuildDuty:
    """The builds this validator has been asked to run (``validator_key`` None: not a validator,
    never builds)."""

    def __init__(self, validator_key: SigningKey | None) -> None:
        self._key = validator_key
        self.validator_id = validator_key.public_key.hex() if validator_key is not None else ""
        self._started: set[str] = set()

    def due(self, world: World, syncing: bool) -> list[StartBuild]:
        """``StartBuild`` for each pending build of ``world`` this validator has not attested or
        started (none while ``syncing``, none for a non-validator)."""
        if self._key is None or syncing or self.validator_id not in world.validators():
            return []
        out: list[StartBuild] = []
        toolchains = {t.name: t for t in world.params.toolchains}
        for build in world.pending_builds():
            if build.build_id in self._started or self.validator_id in build.attestations:
                continue
            if len(self._started) >= MAX_BUILDS_STARTED or build.package is None:
                break
            self._started.add(build.build_id)
            out.append(StartBuild(build.build_id, dict(build.package.files), toolchains[build.toolchain]))
        self._started &= {b.build_id for b in world.pending_builds()}  # forget settled builds
        return out

    def attestation(self, world: World, build_id: str, code: str, wasm: bytes) -> SignedAction | None:
        """The signed attestation of a finished build (``code`` "OK" with ``wasm``, or a failure
        code), or None when there is nothing to attest (not a validator, the build is no longer
        pending)."""
        build = world.get_build(build_id)
        if self._key is None or build is None or build.status != "pending":
            return None
        if code == "OK":
            wasm_hash = sha256(wasm).hex()
            attached = b"" if wasm_hash in build.candidates else wasm
            action = AttestBuild(build_id=build_id, code=code, wasm_hash=wasm_hash, wasm_bytes=attached)
        else:
            action = AttestBuild(build_id=build_id, code=code)
        return sign_action(self._key, world.chain_id, self.validator_id, 0, action)
