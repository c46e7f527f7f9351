"""Running the builds a validator's replica asks for (``StartBuild``) and keeping their reports.

One build at a time runs in a worker thread (``trio.to_thread``) through the hermetic builder
(``agent_world_node.builds.build_package``); the result goes back to the replica
(``Replica.build_finished``), which signs and admits the attestation. A validator whose local
toolchain differs from the chain's (``toolchain_mismatch``) does not build and says why in its
log and its report; a local failure (no toolchain, the sandbox could not be set up) is never
attested either. The reports (code, wasm_hash, the compiler's message) are what
``GET /v1/builds/{id}`` shows as ``this_node``: they never enter consensus.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import trio

from agent_world_runtime.crypto import sha256
from agent_world_runtime.modules.builds import MAX_ATTESTED_WASM_BYTES

from .builds import LOCAL_FAILURES, BuildLimits, build_package, local_toolchain, toolchain_mismatch
from .replica import Replica, StartBuild

#: Build reports kept for the API (oldest dropped first).
MAX_REPORTS = 1000


class BuildRunner:
    """Runs ``StartBuild`` outputs of ``replica`` one at a time; ``reports`` maps build id to
    ``{code, wasm_hash, message, attested}`` of this node's builds."""

    def __init__(self, replica: Replica, logger: Any) -> None:
        self.replica = replica
        self.log = logger
        self.reports: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._limiter = trio.CapacityLimiter(1)
        self._limits = BuildLimits(output_bytes=MAX_ATTESTED_WASM_BYTES)

    async def run(self, start: StartBuild) -> None:
        """Build ``start`` (queued behind any build already running) and hand the result to the
        replica. Never raises for a build failure."""
        mismatch = toolchain_mismatch(start.toolchain, local_toolchain(start.toolchain.name))
        if mismatch is not None:
            self.log.warning("build_not_attested", build_id=start.build_id, reason=mismatch)
            self._report(start.build_id, code="NOT_BUILT", message=mismatch, attested=False)
            return
        async with self._limiter:
            self.log.info("build_started", build_id=start.build_id, toolchain=start.toolchain.name)
            result = await trio.to_thread.run_sync(build_package, start.files, start.toolchain.name, self._limits)
        wasm_hash = sha256(result.wasm).hex() if result.ok else ""
        if result.code in LOCAL_FAILURES:
            self.log.warning("build_not_attested", build_id=start.build_id, code=result.code,
                             reason=result.message[:300])
            self._report(start.build_id, code=str(result.code), message=result.message, attested=False)
            return
        admitted = self.replica.build_finished(start.build_id, str(result.code), result.wasm)
        self.log.info("build_finished", build_id=start.build_id, code=result.code, wasm_hash=wasm_hash[:16],
                      attested=admitted is not None and admitted.status == "accepted")
        self._report(start.build_id, code=str(result.code), wasm_hash=wasm_hash, message=result.message,
                     attested=admitted is not None and admitted.status == "accepted",
                     refusal=admitted.reason if admitted is not None and admitted.reason else None)

    def _report(self, build_id: str, **report: Any) -> None:
        self.reports[build_id] = {k: v for k, v in report.items() if v is not None}
        while len(self.reports) > MAX_REPORTS:
            self.reports.popitem(last=False)


