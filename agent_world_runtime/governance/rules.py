"""Governance transitions (docs/governance.md): proposals, shadow runs, votes, tallies and the
application of a manifest. The Cosmos SDK's x/gov is the model: a deposit (here the
``proposal_fee``, paid with the action's fee), a voting period in heights, votes weighted by the
voting power of the validator set in force, quorum and threshold, and the passed proposal
executed at the end of the block its voting period ends in.

Like ``rules``, each ``apply_*`` function checks everything and raises ``Rejected`` before it
changes anything. ``end_block`` decides the proposals whose voting period ends at the height.
Deterministic: proposals are visited in ascending id order, validators in id order.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .. import events as ev
from ..actions import ProposeManifestPatch, ProposeManifestUpdate, ProposeRollback, VoteProposal
from ..rules import ActionContext, EventSpec, Rejected
from ..staking.rules import validator
from ..staking.sets import active_powers
from ..state import WorldState
from .changes import execute_module_changes, plan_module_changes
from .manifest import Manifest, manifest_hash
from .patch import PatchError, apply_patch, diff_manifest
from .records import GovernanceIndex, ManifestVersionRecord, ProposalRecord, ShadowReport
from .shadow import proposal_base, shadow_proposal

MAX_TITLE_CHARS = 200
VOTE_OPTIONS = ("yes", "no", "abstain")
INDEX_KEY = "index"


# -- reads ------------------------------------------------------------------------------------
def _index(state: WorldState) -> GovernanceIndex:
    rec = state.tables["governance"].get(INDEX_KEY)
    return rec if isinstance(rec, GovernanceIndex) else GovernanceIndex()


def proposal(state: WorldState, proposal_id: int) -> ProposalRecord | None:
    """Return proposal ``proposal_id``, or None."""
    rec = state.tables["proposal"].get(str(proposal_id))
    return rec if isinstance(rec, ProposalRecord) else None


def proposals(state: WorldState) -> list[ProposalRecord]:
    """Return every proposal, in ascending id order."""
    recs = [r for r in state.tables["proposal"].values() if isinstance(r, ProposalRecord)]
    return sorted(recs, key=lambda r: r.proposal_id)


def manifest_versions(state: WorldState) -> list[ManifestVersionRecord]:
    """Return every manifest version ever in force (1: genesis), in ascending version order."""
    recs = [r for r in state.tables["manifest_version"].values() if isinstance(r, ManifestVersionRecord)]
    return sorted(recs, key=lambda r: r.version)


def _version(state: WorldState, version: int) -> ManifestVersionRecord | None:
    rec = state.tables["manifest_version"].get(str(version))
    return rec if isinstance(rec, ManifestVersionRecord) else None


# -- proposals --------------------------------------------------------------------------------
def _prefixes(path: str) -> list[str]:
    """The JSON Pointers enclosing ``path``, outermost first (``/a/b/c`` → ``/a``, ``/a/b``)."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(2, len(parts))]


def first_overlap(mine: list[str], theirs: list[str]) -> tuple[str, str] | None:
    """Return the first ``(my path, their path)`` that are equal or one inside the other
    (``patch.paths_overlap``), in the order of ``mine`` then ``theirs``, or None. Linear in the
    paths times their depth (a set lookup per enclosing pointer), not quadratic."""
    their_set, my_set = set(theirs), set(mine)
    for path in mine:
        if path in their_set:
            return path, path
        outer = next((p for p in _prefixes(path) if p in their_set), None)
        if outer is not None:
            return path, outer
    for path in theirs:
        inner = next((p for p in _prefixes(path) if p in my_set), None)
        if inner is not None:
            return inner, path
    return None


def _submit(state: WorldState, sandbox: Any, ctx: ActionContext, kind: str, title: str, candidate: Manifest,
            ops: list[Any], rollback_to: int = 0) -> list[EventSpec]:
    """Shadow-run ``candidate`` and store it as a voting proposal; raise Rejected first when the
    run finds errors or the proposal changes a path a voting proposal changes."""
    report = shadow_proposal(state, sandbox, candidate)
    if report.errors:
        raise Rejected(f"the proposal's shadow run found {len(report.errors)} error(s): " + "; ".join(report.errors))
    index = _index(state)
    for other_id in index.voting:
        other = proposal(state, other_id)
        clash = None if other is None else first_overlap(report.changes, other.shadow.changes)
        if other is not None and clash is not None:
            raise Rejected(f"proposal {other_id} (voting until height {other.voting_end}) already changes {clash[1]!r}, "
                           f"which this proposal's {clash[0]!r} overlaps; wait until it is decided")
    pid = index.next_proposal_id
    gov = state.manifest.governance
    record = ProposalRecord(
        proposal_id=pid, proposer=ctx.agent_id, kind=kind, base_version=state.manifest.version, candidate=candidate,
        shadow=report, submitted_at=ctx.height, voting_end=ctx.height + gov.voting_period_heights, title=title,
        ops=list(ops), rollback_to=rollback_to,
    )
    state.put_record("proposal", str(pid), record)
    state.put_record("governance", INDEX_KEY, GovernanceIndex(next_proposal_id=pid + 1, voting=[*index.voting, pid]))
    submitted = {
        "action_id": ctx.action_id, "proposal_id": pid, "proposer": ctx.agent_id, "kind": kind, "title": title,
        "base_version": record.base_version, "voting_end": record.voting_end, "changes": list(report.changes),
    }
    if rollback_to:
        submitted["rollback_to"] = rollback_to
    return [(ev.PROPOSAL_SUBMITTED, submitted), (ev.SHADOW_REPORT, _report_data(pid, report))]


def _report_data(pid: int, report: ShadowReport) -> dict[str, Any]:
    return {"proposal_id": pid, "candidate_manifest_hash": report.candidate_manifest_hash,
            "changes": list(report.changes), "errors": list(report.errors)}


def _precheck(state: WorldState, title: str) -> Manifest:
    """The proposal base, after the checks every proposal kind shares (title, pending count)."""
    if not isinstance(title, str) or len(title) > MAX_TITLE_CHARS:
        raise Rejected(f"the title must be text of at most {MAX_TITLE_CHARS} characters")
    limit = state.manifest.governance.max_pending
    voting = _index(state).voting
    if len(voting) >= limit:
        raise Rejected(f"{len(voting)} proposals are voting (ids {voting}); at most {limit} may be open at once "
                       "(governance.max_pending): wait until one is decided")
    base = proposal_base(state)
    return msgspec.structs.replace(base, version=base.version + 1)


def apply_propose_update(state: WorldState, sandbox: Any, ctx: ActionContext,
                         action: ProposeManifestUpdate) -> list[EventSpec]:
    """Propose ``action.manifest`` as the whole next manifest (its ``version`` is ignored; events
    ``governance.proposal_submitted`` and ``governance.shadow_report``). Raises Rejected for a
    long title, too many voting proposals, shadow errors or an overlap with a voting proposal."""
    next_base = _precheck(state, action.title)
    if not isinstance(action.manifest, Manifest):
        raise Rejected("manifest must be a manifest object")
    candidate = msgspec.structs.replace(action.manifest, version=next_base.version)
    return _submit(state, sandbox, ctx, "update", action.title, candidate, [])


def apply_propose_patch(state: WorldState, sandbox: Any, ctx: ActionContext,
                        action: ProposeManifestPatch) -> list[EventSpec]:
    """Propose JSON Patch ``action.ops`` (RFC 6902, ``patch.apply_patch``) on the manifest in
    force (its ``module_changes`` read null). Raises Rejected as ``apply_propose_update`` does,
    and for a patch that does not apply (the reason starts with the ``PatchErrorCode``)."""
    next_base = _precheck(state, action.title)
    try:
        candidate = apply_patch(next_base, action.ops)
    except PatchError as exc:
        raise Rejected(f"the patch does not apply: {exc.code.value}: {exc.message}") from None
    return _submit(state, sandbox, ctx, "patch", action.title, candidate, action.ops)


def apply_propose_rollback(state: WorldState, sandbox: Any, ctx: ActionContext,
                           action: ProposeRollback) -> list[EventSpec]:
    """Propose restoring manifest version ``action.version`` (an earlier version) as the next
    version, without its module changes. Raises Rejected for an unknown or current version and
    as ``apply_propose_update`` does."""
    next_base = _precheck(state, action.title)
    current = state.manifest.version
    old = _version(state, action.version) if isinstance(action.version, int) else None
    if old is None or action.version >= current:
        raise Rejected(f"no earlier manifest version {str(action.version)[:20]}; roll back to one of 1..{current - 1}")
    candidate = msgspec.structs.replace(old.manifest, version=next_base.version, module_changes=None)
    return _submit(state, sandbox, ctx, "rollback", action.title, candidate, [], rollback_to=action.version)


# -- votes ------------------------------------------------------------------------------------
def apply_vote(state: WorldState, ctx: ActionContext, action: VoteProposal) -> list[EventSpec]:
    """Record the vote ``action.option`` of validator ``action.validator_id`` on proposal
    ``action.proposal_id`` (event ``governance.vote_cast``). The signer must be the validator's
    operator, the validator in the set in force now, the proposal voting, and the validator not
    have voted on it yet. Raises Rejected naming the rule otherwise."""
    prop = proposal(state, action.proposal_id) if isinstance(action.proposal_id, int) else None
    if prop is None:
        raise Rejected(f"no proposal {str(action.proposal_id)[:20]}")
    if prop.status != "voting":
        raise Rejected(f"proposal {prop.proposal_id} is {prop.status}; its voting ended at height {prop.voting_end}")
    if action.option not in VOTE_OPTIONS:
        raise Rejected(f"option {action.option[:20]!r} is not one of {list(VOTE_OPTIONS)}")
    rec = validator(state, action.validator_id)
    if rec is None:
        raise Rejected(f"no validator {action.validator_id[:64]!r}")
    if not rec.operator or rec.operator != ctx.agent_id:
        raise Rejected(f"only the operator {rec.operator!r} of validator {rec.validator_id[:16]}... may vote for it")
    power = active_powers(state).get(rec.validator_id)
    if power is None:
        raise Rejected(f"validator {rec.validator_id[:16]}... is not in the validator set in force; only its members vote")
    if rec.validator_id in prop.votes:
        raise Rejected(f"validator {rec.validator_id[:16]}... already voted {prop.votes[rec.validator_id]!r} "
                       f"on proposal {prop.proposal_id}; a vote is final")
    votes = dict(sorted({**prop.votes, rec.validator_id: action.option}.items()))
    state.put_record("proposal", str(prop.proposal_id), msgspec.structs.replace(prop, votes=votes))
    return [(ev.VOTE_CAST, {
        "action_id": ctx.action_id, "agent_id": ctx.agent_id, "proposal_id": prop.proposal_id,
        "validator_id": rec.validator_id, "option": action.option, "power": power,
    })]


# -- the end of a block -----------------------------------------------------------------------
def tally(state: WorldState, prop: ProposalRecord) -> dict[str, int]:
    """Return ``{yes, no, abstain, total}``: the voting power of each option among the votes of
    validators in the set in force now, and the set's total power."""
    powers = active_powers(state)
    out = {"yes": 0, "no": 0, "abstain": 0, "total": sum(powers.values())}
    for vid, option in sorted(prop.votes.items()):
        if vid in powers and option in out:
            out[option] += powers[vid]
    return out


def _decide(state: WorldState, sandbox: Any, prop: ProposalRecord, height: int) -> list[EventSpec]:
    gov = state.manifest.governance
    t = tally(state, prop)
    voted = t["yes"] + t["no"] + t["abstain"]
    data: dict[str, Any] = {"proposal_id": prop.proposal_id, "tally": dict(t)}
    if t["total"] == 0 or voted * 100 < gov.quorum_percent * t["total"]:
        _close(state, prop, "expired", height, t)
        return [(ev.PROPOSAL_EXPIRED, data)]
    if not t["yes"] * 100 > gov.threshold_percent * (t["yes"] + t["no"]):
        _close(state, prop, "rejected", height, t)
        return [(ev.PROPOSAL_REJECTED, data)]
    candidate, errors = _rebase(state, sandbox, prop)
    if candidate is None:
        _close(state, prop, "failed", height, t)
        return [(ev.PROPOSAL_FAILED, {**data, "errors": errors})]
    return _apply(state, prop, candidate, height, t)


def _rebase(state: WorldState, sandbox: Any, prop: ProposalRecord) -> tuple[Manifest | None, list[str]]:
    """The proposal's change (its effect on the manifest it was written against) applied to the
    manifest in force now, shadow-run again: ``(candidate, [])`` or ``(None, errors)``."""
    base = _version(state, prop.base_version)
    if base is None:
        return None, [f"manifest version {prop.base_version} is not recorded"]
    effect = diff_manifest(msgspec.structs.replace(base.manifest, module_changes=None), prop.candidate)
    try:
        candidate = apply_patch(proposal_base(state), effect)
    except PatchError as exc:
        return None, [f"the change no longer applies: {exc.code.value}: {exc.message}"]
    candidate = msgspec.structs.replace(candidate, version=state.manifest.version + 1)
    errors = shadow_proposal(state, sandbox, candidate).errors
    return (None, list(errors)) if errors else (candidate, [])


def _apply(state: WorldState, prop: ProposalRecord, candidate: Manifest, height: int,
           t: dict[str, int]) -> list[EventSpec]:
    previous = state.manifest.version
    plan = plan_module_changes(state, candidate.module_changes, height, prop.proposal_id)
    digest = manifest_hash(candidate)
    state.set_manifest(candidate)
    state.put_record("manifest_version", str(candidate.version), ManifestVersionRecord(
        version=candidate.version, manifest=candidate, applied_at=height, proposal_id=prop.proposal_id))
    _close(state, prop, "applied", height, t)
    changes = [] if candidate.module_changes is None else msgspec.to_builtins(candidate.module_changes.changes)
    applied: dict[str, Any] = {
        "proposal_id": prop.proposal_id, "kind": prop.kind, "version": candidate.version, "manifest_hash": digest,
        "module_changes": changes, "tally": dict(t),
    }
    if prop.kind == "rollback":
        applied["rolled_back_to"] = prop.rollback_to
    out: list[EventSpec] = [
        (ev.GOVERNANCE_APPLIED, applied),
        (ev.MANIFEST_UPDATED, {"version": candidate.version, "previous_version": previous, "manifest_hash": digest,
                               "proposal_id": prop.proposal_id}),
    ]
    out.extend(execute_module_changes(state, plan))
    return out


def _close(state: WorldState, prop: ProposalRecord, status: str, height: int, t: dict[str, int]) -> None:
    state.put_record("proposal", str(prop.proposal_id),
                     msgspec.structs.replace(prop, status=status, decided_at=height, tally=dict(t)))
    index = _index(state)
    state.put_record("governance", INDEX_KEY, msgspec.structs.replace(
        index, voting=[i for i in index.voting if i != prop.proposal_id]))


def end_block(state: WorldState, sandbox: Any, height: int) -> list[EventSpec]:
    """Decide, in ascending id order, each voting proposal whose ``voting_end`` is ``height``
    (or earlier): tallied with the powers of the set in force (``tally``), it ``expired`` when
    the voted power (abstain included) is below ``quorum_percent`` of the total, is
    ``rejected`` unless ``yes * 100 > threshold_percent * (yes + no)``, and is otherwise applied
    now: its change re-applied to the manifest in force and shadow-run again (``failed`` with
    the errors if that fails), the next version set, recorded and its module changes executed.
    Returns the events (see docs/governance.md, "Events")."""
    out: list[EventSpec] = []
    for pid in list(_index(state).voting):
        prop = proposal(state, pid)
        if prop is not None and prop.status == "voting" and prop.voting_end <= height:
            out.extend(_decide(state, sandbox, prop, height))
    return out
