"""The documents of a node's HTTP JSON API, as msgspec Structs, and its admission codes.

This module imports only the runtime and msgspec, never the daemon, so the client library, the
agents and the CLI can import it to read what a node answers. The node's API (``api.py``) encodes
these Structs; ``agent_world_client`` decodes them. Hashes and byte strings are lowercase hex.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from agent_world_runtime.actions import SignedAction
from agent_world_runtime.admission import RefusalCode

#: Most actions one ``POST /v1/actions/batch`` may carry.
MAX_SUBMIT_BATCH = 1_000


class AdmissionStatus(enum.StrEnum):
    """What became of one submitted action at admission."""

    ACCEPTED = "accepted"  # new, in the mempool, gossiped to peers
    DUPLICATE = "duplicate"  # the node already holds it
    REJECTED = "rejected"  # refused; ``code`` says why
    BUSY = "busy"  # the mempool is full; retry after ``retry_after_ms``


class AdmissionCode(enum.StrEnum):
    """Why an action was refused at admission (``code`` of a rejected or busy result).

    The world's admission rules give the codes of ``agent_world_runtime.admission.RefusalCode``
    (same values, converted by ``from_refusal``); the node adds the checks made before the world is
    asked (``MALFORMED``, ``TOO_LARGE``) and the busy codes ``MEMPOOL_FULL``, ``OVER_CAPACITY``
    and ``NOT_READY``."""

    MALFORMED = "malformed"  # not a well-formed SignedAction
    TOO_LARGE = "too_large"  # encoded action above the runtime's payload limit
    MEMPOOL_FULL = "mempool_full"  # status busy: retry later
    OVER_CAPACITY = "over_capacity"  # status busy: the backlog exceeds what the chain commits soon
    NOT_READY = "not_ready"  # status busy: the node is not connected to consensus or is catching up
    WRONG_CHAIN = "wrong_chain"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_AGENT = "unknown_agent"
    NONCE_REPLAYED = "nonce_replayed"
    ATTESTATION_REFUSED = "attestation_refused"
    INSUFFICIENT_FEE = "insufficient_fee"

    @classmethod
    def from_refusal(cls, code: RefusalCode) -> "AdmissionCode":
        """The API code of a world admission refusal (same value; raises ValueError for a code
        this enum lacks, which a test rules out)."""
        return cls(code.value)


class SubmitBatch(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /v1/actions/batch``: at most ``MAX_SUBMIT_BATCH`` signed actions."""

    actions: list[SignedAction]


class AdmissionDocument(msgspec.Struct, omit_defaults=True):
    """The answer to one submitted action (``POST /v1/actions``, and each entry of a batch).
    ``error`` is what was wrong and what to do; ``retry_after_ms`` comes with status busy."""

    status: AdmissionStatus
    action_id: str
    code: AdmissionCode | None = None
    error: str | None = None
    retry_after_ms: int | None = None


class BatchDocument(msgspec.Struct):
    """The answer to ``POST /v1/actions/batch``: one ``AdmissionDocument`` per action, in request
    order, and how many ended in each status."""

    results: list[AdmissionDocument]
    counts: dict[str, int]


class ErrorDocument(msgspec.Struct, omit_defaults=True):
    """Every error answer: ``error`` says what was wrong and what to do, ``code`` is a short name."""

    error: str
    code: str
    retry_after_ms: int | None = None


class DivergenceDocument(msgspec.Struct):
    """This validator's execution root differs from the quorum's at ``height``."""

    height: int
    our_state_root: str
    quorum_state_root: str


class PeerFilterDocument(msgspec.Struct):
    """The node's peer filter: the operator's block list, banned peers (seconds left), bans so far."""

    blocked: list[str]
    banned: dict[str, float]
    bans_total: int


class PeerExecutionDocument(msgspec.Struct):
    """A connected peer's last announced execution height and state root, and whether they equal
    this node's for that height (``agrees`` null when this node has not executed it yet)."""

    peer: str
    execution_height: int
    execution_state_root: str
    agrees: bool | None


class StatusDocument(msgspec.Struct):
    """``GET /v1/status``. ``peer_execution``: each connected peer's last announced execution
    hashes compared with ours."""

    node_id: str
    moniker: str
    chain_id: str
    validator: str | None
    height: int
    round: int
    execution_height: int
    execution_block_hash: str
    execution_state_root: str
    peers: list[str]
    peer_count: int
    mempool_size: int
    actions_committed: int
    execution_mismatches: int
    execution_diverged: DivergenceDocument | None
    peer_filter: PeerFilterDocument
    module_calls: int
    syncing: bool
    uptime_s: float
    peer_execution: list[PeerExecutionDocument] = []


class ExecutionDocument(msgspec.Struct):
    """``GET /v1/execution/{height}``: this node's execution record of ``height``."""

    height: int
    execution_block_hash: str
    execution_state_root: str
    events_root: str
    action_count: int


class ActionDocument(msgspec.Struct, omit_defaults=True):
    """``GET /v1/actions/{action_id}``: what became of an action this node knows.

    ``status`` is ``pending`` (in this node's mempool, not yet in a block) or ``committed`` (in the
    block of ``height``); a committed action's ``outcome`` is ``applied`` (``events``: what it
    did) or ``rejected`` (``reason``: what the world rules said, and ``events`` holds the
    ``domain.action_rejected`` event); ``fee`` is what it paid. ``outcome`` is ``unknown`` when the
    node no longer holds that height's events (before a state-sync snapshot)."""

    action_id: str
    status: str
    height: int | None = None
    outcome: str | None = None
    reason: str | None = None
    fee: int | None = None
    events: list[dict[str, Any]] = []


class BlockActionDocument(msgspec.Struct):
    """One action of a block, by id (the payload is in the block store, not in this document)."""

    action_id: str
    submitter: str
    payload_hash: str


class BlockDocument(msgspec.Struct):
    """``GET /v1/blocks/{height}``: header, actions, commit certificate and the stored execution
    hashes (``header``, ``certificate`` and ``execution`` as their msgspec built-in forms)."""

    height: int
    block_hash: str
    header: dict[str, Any]
    actions: list[BlockActionDocument]
    certificate: dict[str, Any]
    execution: dict[str, Any] | None


# --- staking and governance (reads of the executed world) --------------------------------------


class ValidatorDocument(msgspec.Struct):
    """One validator candidate (``GET /v1/staking/validators[/{id}]``): its staking record
    (``bonds``: bonder agent id, or the validator id for a genesis bond, to amount; ``bonded`` their
    sum), ``jail_reason`` (``double_sign`` or ``downtime``; empty when not jailed), ``power`` in
    the set in force now (0 when not in it, then ``in_current_set`` is false) and ``next_power``
    in the set of the next epoch (0 when not in it or not known yet)."""

    validator_id: str
    operator: str
    name: str
    bonded: int
    bonds: dict[str, int]
    jailed: bool
    jailed_until: int
    jail_reason: str
    slashed: int
    created_at: int
    in_current_set: bool
    power: int
    next_power: int


class ValidatorsDocument(msgspec.Struct):
    """``GET /v1/staking/validators``: every candidate, by id, at executed height ``height``
    (epoch ``epoch``); ``total_power`` of the set in force now."""

    height: int
    epoch: int
    epoch_length: int
    total_power: int
    validators: list[ValidatorDocument]


class ValidatorSetDocument(msgspec.Struct):
    """The validator set of ``epoch``: ``[validator_id, power]`` sorted by id, their
    ``total_power``, the set's ``hash`` (``validators_hash`` of headers) and the height whose end
    computed it (0: genesis)."""

    epoch: int
    validators: list[tuple[str, int]]
    total_power: int
    hash: str
    computed_at: int


class ValidatorSetsDocument(msgspec.Struct):
    """``GET /v1/staking/sets?from_epoch=&limit=``: the known sets with ``epoch >= from_epoch``,
    oldest first; ``next_from_epoch`` continues the listing (None: no more)."""

    current_epoch: int
    epoch_length: int
    sets: list[ValidatorSetDocument]
    next_from_epoch: int | None


class UnbondingEntryDocument(msgspec.Struct):
    """``amount`` returning to ``agent_id`` from ``validator_id``, unbonded at height ``created_at``."""

    agent_id: str
    validator_id: str
    amount: int
    created_at: int


class UnbondingQueueDocument(msgspec.Struct):
    """The unbondings paid back at the end of epoch ``release_epoch``, in the order they were made."""

    release_epoch: int
    entries: list[UnbondingEntryDocument]


class UnbondingDocument(msgspec.Struct):
    """``GET /v1/staking/unbonding``: every pending unbonding queue, earliest release first."""

    current_epoch: int
    queues: list[UnbondingQueueDocument]


class ProposalSummaryDocument(msgspec.Struct):
    """One governance proposal in ``GET /v1/governance/proposals``. ``kind`` is the proposing
    action (``update``, ``patch`` or ``rollback``); ``status`` is ``voting``, ``applied``,
    ``rejected``, ``expired`` or ``failed``; ``tally`` is the final ``{yes, no, abstain, total}``
    (powers) once decided, empty while voting."""

    proposal_id: int
    proposer: str
    kind: str
    title: str
    status: str
    base_version: int
    submitted_at: int
    voting_end: int
    decided_at: int
    candidate_manifest_hash: str
    vote_count: int
    tally: dict[str, int]


class ProposalsDocument(msgspec.Struct):
    """``GET /v1/governance/proposals?status=&limit=&before=``: newest first; ``next_before``
    continues the listing (None: no more)."""

    proposals: list[ProposalSummaryDocument]
    next_before: int | None


class ShadowDocument(msgspec.Struct):
    """A proposal's shadow report, computed when it was submitted: the candidate manifest's hash,
    the paths whose values change, and the errors found."""

    candidate_manifest_hash: str
    changes: list[str]
    errors: list[str]


class ManifestChangeDocument(msgspec.Struct):
    """One difference between two manifests (JSON forms) at JSON Pointer ``path``: ``change`` is
    ``added``, ``removed`` or ``changed``; ``old``/``new`` the values (null when absent). Lists
    are compared whole."""

    path: str
    change: str
    old: Any
    new: Any


class TallyDocument(msgspec.Struct):
    """Votes of a proposal still voting, weighed by the powers of the set in force now (as the
    governance rules tally at the end of the voting period, with the set in force then): a
    preview. ``total_power`` is the set's total."""

    yes: int
    no: int
    abstain: int
    voted_power: int
    total_power: int


class ProposalDocument(msgspec.Struct):
    """``GET /v1/governance/proposals/{id}``: the proposal (``ops`` of a patch, ``rollback_to``
    of a rollback), ``votes`` (validator id to option), the final ``tally`` once decided,
    ``tally_now`` while voting, the ``shadow`` report, the ``candidate_manifest`` with its hash,
    and ``diff``: what the candidate changes compared with manifest version ``diff_base_version``
    (the proposal's base version when this node still knows it, else the version in force)."""

    proposal_id: int
    proposer: str
    kind: str
    title: str
    status: str
    base_version: int
    submitted_at: int
    voting_end: int
    decided_at: int
    ops: list[dict[str, Any]]
    rollback_to: int
    votes: dict[str, str]
    tally: dict[str, int]
    tally_now: TallyDocument | None
    shadow: ShadowDocument
    candidate_manifest_hash: str
    candidate_manifest: dict[str, Any]
    diff_base_version: int
    diff: list[ManifestChangeDocument]


class ManifestDocument(msgspec.Struct):
    """``GET /v1/manifest``: the manifest in force (JSON form), its ``version``, ``hash``
    (sha256 of its canonical encoding), the height it was applied at and the proposal that applied
    it (0: genesis)."""

    version: int
    hash: str
    applied_at: int
    proposal_id: int
    manifest: dict[str, Any]


class ManifestVersionDocument(msgspec.Struct):
    """One manifest version ever in force."""

    version: int
    applied_at: int
    proposal_id: int
    hash: str


class ManifestVersionsDocument(msgspec.Struct):
    """``GET /v1/manifest/versions?limit=&before=``: newest first; ``next_before`` continues the
    listing (None: no more)."""

    current_version: int
    versions: list[ManifestVersionDocument]
    next_before: int | None
