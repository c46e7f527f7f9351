"""The shadow run of a proposal: what applying a candidate manifest would do, computed without
changing anything (docs/governance.md, "Shadow reports").

Deterministic and bounded: at most MAX_MANIFEST_BYTES of encoded candidate, ``MAX_PATCH_OPS``
operations of a patch (``patch``), MAX_MODULE_CHANGES module changes (``changes``), so the work
of one run does not grow with what a proposer sends.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..codec import encode
from ..state import WorldState
from .changes import plan_module_changes
from .manifest import Manifest, manifest_hash
from .patch import diff_manifest
from .records import ShadowReport
from .validate import check_section, check_world_params

#: The canonical encoding of a candidate manifest may be at most this long.
MAX_MANIFEST_BYTES = 64 * 1024


def proposal_base(state: WorldState) -> Manifest:
    """The manifest proposals are written against: the one in force without its
    ``module_changes`` (those already ran; they are history, kept in the version records)."""
    return msgspec.structs.replace(state.manifest, module_changes=None)


def shadow_proposal(state: WorldState, sandbox: Any, candidate: Manifest) -> ShadowReport:
    """Return the ``ShadowReport`` of making ``candidate`` the manifest at the state's height:
    ``candidate_manifest_hash`` (sha256 of its canonical encoding), ``changes`` (the paths of
    ``diff_manifest(proposal_base(state), candidate)``, in its order) and ``errors`` (an empty
    list when it could be applied): over MAX_MANIFEST_BYTES, invalid parameters
    (``validate.check_world_params`` / ``check_section``), no change at all, and each module
    change that would fail now (``changes.plan_module_changes``). Reads ``state`` only;
    ``sandbox`` is not needed by today's checks (artifacts are compiled when published)."""
    del sandbox
    errors: list[str] = []
    size = len(encode(candidate))
    if size > MAX_MANIFEST_BYTES:
        errors.append(f"the candidate manifest is {size} bytes; the limit is {MAX_MANIFEST_BYTES}")
        return ShadowReport(candidate_manifest_hash=manifest_hash(candidate), changes=[], errors=errors)
    for check in (lambda: check_world_params(candidate.params), lambda: check_section(candidate.staking, "staking"),
                  lambda: check_section(candidate.governance, "governance")):
        try:
            check()
        except (ValueError, TypeError) as exc:
            errors.append(str(exc))
    changes = [op.path for op in diff_manifest(proposal_base(state), candidate)]
    if not changes:
        errors.append("the proposal changes nothing: the candidate equals the manifest in force")
    errors.extend(plan_module_changes(state, candidate.module_changes, state.meta.height).errors)
    return ShadowReport(candidate_manifest_hash=manifest_hash(candidate), changes=changes, errors=errors)
