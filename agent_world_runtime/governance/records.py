"""Governance records kept in the world state (tables ``proposal`` and ``manifest_version``)."""

from __future__ import annotations

from typing import Any

import msgspec

from .manifest import Manifest


class PatchOp(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """One JSON Patch operation (RFC 6902 subset: ``add``, ``replace``, ``remove``, ``test``) on
    the manifest's JSON form; ``path`` is a JSON Pointer (RFC 6901) such as
    ``/params/fee_base`` or ``/module_changes``."""

    op: str
    path: str
    value: Any = None


class ShadowReport(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What applying a proposal would do, computed deterministically when it is submitted:
    the candidate manifest's hash, the paths whose values change, and every error found (a
    proposal with errors is refused)."""

    candidate_manifest_hash: bytes
    changes: list[str]
    errors: list[str]


class ProposalRecord(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """A governance proposal (table ``proposal``, key the id as decimal)."""

    proposal_id: int
    proposer: str
    kind: str
    base_version: int
    candidate: Manifest
    shadow: ShadowReport
    submitted_at: int
    voting_end: int
    status: str = "voting"
    title: str = ""
    ops: list[PatchOp] = []
    rollback_to: int = 0
    votes: dict[str, str] = {}
    decided_at: int = 0
    tally: dict[str, int] = {}


class ManifestVersionRecord(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """A manifest version ever in force (table ``manifest_version``, key the version as decimal):
    applied at height ``applied_at`` by proposal ``proposal_id`` (0: genesis)."""

    version: int
    manifest: Manifest
    applied_at: int = 0
    proposal_id: int = 0


class GovernanceIndex(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """The proposal index (table ``governance``, key ``index``; written with the first proposal):
    the id the next proposal gets and the ids of the proposals still voting, ascending, so a
    block's end looks at those only."""

    next_proposal_id: int = 1
    voting: list[int] = []


TABLES: dict[str, type[msgspec.Struct]] = {
    "proposal": ProposalRecord, "manifest_version": ManifestVersionRecord, "governance": GovernanceIndex,
}
