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


class StatusDocument(msgspec.Struct):
    """``GET /v1/status``."""

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


class ExecutionDocument(msgspec.Struct):
    """``GET /v1/execution/{height}``: this node's execution record of ``height``."""

    height: int
    execution_block_hash: str
    execution_state_root: str
    events_root: str
    action_count: int


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
