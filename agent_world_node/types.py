"""Consensus and replication messages, gossip topics, and the one check of a block's shape
(docs/architecture.md, "The path of one action").

Everything here is a msgspec Struct encoded as canonical msgpack. Hashes are raw 32-byte values
(``bytes``); validator ids are the hex of the validator's Ed25519 public key.

Signing: a vote is signed over ``VOTE_SIGN_DOMAIN || encode(VoteSignBytes)`` and a proposal over
``PROPOSAL_SIGN_DOMAIN || encode(ProposalSignBytes)``; both bind the chain id, so a signature on one
chain is worthless on another.
"""

from __future__ import annotations

import enum
from typing import Optional

import msgspec

from agent_world_runtime.codec import encode
from agent_world_runtime.crypto import sha256
from agent_world_runtime.merkle import merkle_root

VOTE_SIGN_DOMAIN = b"agent-world/vote/v1\x00"
PROPOSAL_SIGN_DOMAIN = b"agent-world/proposal/v1\x00"
ZERO_HASH = b"\x00" * 32


class NodeConsensusAction(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One ordered action in a block: ``payload`` is a canonical ``SignedAction`` encoding,
    ``payload_hash = sha256(payload)`` and ``action_id == payload_hash``; ``submitter`` is the agent id."""

    action_id: bytes
    submitter: str
    payload: bytes
    payload_hash: bytes


def compute_consensus_action_root(actions: list[NodeConsensusAction]) -> bytes:
    """Return the RFC 6962 Merkle root over the ordered ``payload_hash`` values of ``actions``."""
    return merkle_root([a.payload_hash for a in actions])


class CommitSig(msgspec.Struct, array_like=True, frozen=True):
    """One validator's precommit signature in a certificate."""

    validator: str
    signature: bytes


class CommitCertificate(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Precommits for ``block_hash`` at (height, round) from more than 2/3 of the stake."""

    height: int
    round: int
    block_hash: bytes
    signatures: list[CommitSig]


class BlockHeader(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A block header. ``last_execution_*`` are this proposer's execution results for ``height - 1``
    (as CometBFT carries the app hash); ``timestamp_ms`` is the proposer's clock, used as the
    deterministic ``committed_at_unix_ms`` of the block.

    As CometBFT's header: ``validators_hash`` is the hash of the validator set in force at this
    height and ``next_validators_hash`` that of height + 1 (``validator_set_hash``), so a client
    holding one certified header follows the chain of sets; ``last_commit_hash`` commits to the
    block's ``last_commit`` and ``evidence_hash`` to its ``evidence`` (``block_body_hashes``)."""

    chain_id: str
    height: int
    round: int
    epoch: int
    proposer: str
    prev_block_hash: bytes
    action_root: bytes
    action_count: int
    last_execution_height: int
    last_execution_block_hash: bytes
    last_execution_state_root: bytes
    timestamp_ms: int
    validators_hash: bytes = ZERO_HASH
    next_validators_hash: bytes = ZERO_HASH
    last_commit_hash: bytes = ZERO_HASH
    evidence_hash: bytes = ZERO_HASH


class Block(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A header, its ordered actions, the commit certificate of the previous height
    (``last_commit``; None at height 1), by which the world counts who signed, and the
    equivocation evidence it executes (``evidence``: canonical encodings of
    ``consensus.evidence.Evidence``, at most ``MAX_BLOCK_EVIDENCE``)."""

    header: BlockHeader
    actions: list[NodeConsensusAction]
    last_commit: Optional[CommitCertificate] = None
    evidence: list[bytes] = []

    def hash(self) -> bytes:
        """Return the block hash: ``sha256(encode(header))`` (the header commits to the actions by root)."""
        return block_hash(self.header)


def block_hash(header: BlockHeader) -> bytes:
    """Return ``sha256(encode(header))``."""
    return sha256(encode(header))


#: Most pieces of evidence one block carries, and the largest encoding of one (bytes).
MAX_BLOCK_EVIDENCE = 8
MAX_EVIDENCE_BYTES = 4 * 1024 * 1024


def block_body_hashes(last_commit: CommitCertificate | None, evidence: list[bytes]) -> tuple[bytes, bytes]:
    """Return ``(last_commit_hash, evidence_hash)``: ``sha256(encode(last_commit))`` (32 zero bytes
    for None) and the RFC 6962 Merkle root over ``sha256`` of each evidence encoding (32 zero
    bytes for none)."""
    commit_hash = ZERO_HASH if last_commit is None else sha256(encode(last_commit))
    return commit_hash, (merkle_root([sha256(e) for e in evidence]) if evidence else ZERO_HASH)


def block_shape_problem(block: Block, chain_id: str, height: int) -> str | None:
    """Why ``block`` is not shaped like a block of ``chain_id`` at ``height`` (None if it is).

    The shape is what anyone can check from the block alone: the header's chain id and height,
    ``action_count`` and ``action_root`` (RFC 6962 Merkle root of the payload hashes) matching the
    actions, ``last_commit_hash`` and ``evidence_hash`` matching the block's body, every action's ``payload_hash == action_id == sha256(payload)``, and no action twice.
    This is the only block-shape check: the consensus core applies it to proposals, the replica to
    valid(v) and to committed blocks received from peers. Signatures, parent hash, time and execution
    roots need the node's state and are checked by the replica (``replica.validity``)."""
    h = block.header
    if h.chain_id != chain_id:
        return f"chain id {h.chain_id[:64]!r} is not {chain_id!r}"
    if h.height != height:
        return f"height {h.height} is not {height}"
    if h.action_count != len(block.actions):
        return f"action_count {h.action_count} but {len(block.actions)} actions"
    if compute_consensus_action_root(block.actions) != h.action_root:
        return "action root does not match the actions"
    if len(block.evidence) > MAX_BLOCK_EVIDENCE:
        return f"{len(block.evidence)} pieces of evidence; a block carries at most {MAX_BLOCK_EVIDENCE}"
    if (h.last_commit_hash, h.evidence_hash) != block_body_hashes(block.last_commit, block.evidence):
        return "last_commit_hash or evidence_hash does not match the block's last commit and evidence"
    seen: set[bytes] = set()
    for act in block.actions:
        if act.payload_hash != sha256(act.payload) or act.action_id != act.payload_hash:
            return f"action {act.action_id.hex()[:16]}: payload hash or action id is not sha256(payload)"
        if act.action_id in seen:
            return f"action {act.action_id.hex()[:16]} appears twice"
        seen.add(act.action_id)
    return None


class VoteType(enum.IntEnum):
    """The two vote steps of a Tendermint round."""

    PREVOTE = 1
    PRECOMMIT = 2


class VoteSignBytes(msgspec.Struct, array_like=True, frozen=True):
    """The exact tuple a validator signs for a vote."""

    chain_id: str
    vote_type: int
    height: int
    round: int
    block_hash: Optional[bytes]


class Vote(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A signed prevote or precommit; ``block_hash`` is None for a nil vote."""

    vote_type: VoteType
    height: int
    round: int
    block_hash: Optional[bytes]
    validator: str
    signature: bytes

    def sign_bytes(self, chain_id: str) -> bytes:
        """Return the bytes the signature covers (without the domain)."""
        return encode(VoteSignBytes(chain_id, int(self.vote_type), self.height, self.round, self.block_hash))


class ProposalSignBytes(msgspec.Struct, array_like=True, frozen=True):
    """The exact tuple a proposer signs."""

    chain_id: str
    height: int
    round: int
    pol_round: int
    block_hash: bytes


class Proposal(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A signed proposal of ``block`` for (height, round); ``pol_round`` is the proof-of-lock round
    (-1 for none), as in the Tendermint paper's PROPOSAL message."""

    height: int
    round: int
    pol_round: int
    block: Block
    validator: str
    signature: bytes

    def sign_bytes(self, chain_id: str) -> bytes:
        """Return the bytes the signature covers (without the domain)."""
        return encode(ProposalSignBytes(chain_id, self.height, self.round, self.pol_round, self.block.hash()))


class ExecutionHashes(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A node's execution result for one height (``NodeExecutionCommitResult`` on the wire)."""

    execution_height: int
    execution_block_hash: bytes
    execution_state_root: bytes


class GossipProposalMessage(msgspec.Struct, tag="proposal", forbid_unknown_fields=True, frozen=True):
    """Gossiped proposal; its block carries ``action_root`` (header) and ``actions``."""

    proposal: Proposal


class GossipVoteMessage(msgspec.Struct, tag="vote", forbid_unknown_fields=True, frozen=True):
    """Gossiped prevote or precommit."""

    vote: Vote


class GossipCommitMessage(msgspec.Struct, tag="commit", forbid_unknown_fields=True, frozen=True):
    """A commit announcement: the decided block's header with its commit certificate and the
    sender's execution hashes for that height (None when the sender has not executed it).

    The actions are not repeated: they travelled once in the proposal. A node that has the
    proposal's block commits from this; one that does not fetches the block by sync."""

    header: BlockHeader
    certificate: CommitCertificate
    execution: Optional[ExecutionHashes] = None


class GossipActionBatch(msgspec.Struct, tag="actions", forbid_unknown_fields=True, frozen=True):
    """A batch of client action payloads (canonical ``SignedAction`` encodings)."""

    payloads: list[bytes]


class Offence(enum.StrEnum):
    """What a peer did that no correct node does; the peer filter scores each offence
    (``network.peer_filter.PENALTY_POINTS``) and bans a peer that keeps offending."""

    MALFORMED = "malformed"  # undecodable or misshapen gossip message
    OVERSIZE = "oversize"  # gossip above the size limit
    BAD_SIGNATURE = "bad_signature"  # vote or proposal whose signature does not verify
    UNKNOWN_VALIDATOR = "unknown_validator"  # vote or proposal from a key outside the validator set
    INVALID_MESSAGE = "invalid_message"  # wrong proposer, bad round, bad block hash, misshapen block
    INVALID_COMMIT = "invalid_commit"  # commit whose certificate or actions do not verify
    BAD_SYNC_RESPONSE = "bad_sync_response"  # malformed or unverifiable blocks served over sync
    BAD_SNAPSHOT = "bad_snapshot"  # a state-sync chunk or snapshot that does not verify
    RATE_LIMITED = "rate_limited"  # each gossip message above the per-peer rate limit
    BAD_PUBSUB_FRAME = "bad_pubsub_frame"  # a pubsub frame that does not parse


class Topic(enum.StrEnum):
    """The logical gossip topics (``network.topics.topic_id`` maps them to libp2p topic ids)."""

    PROPOSAL = "proposal"
    VOTE = "vote"
    COMMIT = "commit"
    ACTIONS = "actions"
    STATUS = "status"


class ReplicatedCommitPayload(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What the block store keeps and serves by height: block, certificate and the serving node's
    execution hashes for that height."""

    block: Block
    certificate: CommitCertificate
    execution: Optional[ExecutionHashes] = None


class GossipStatusMessage(msgspec.Struct, tag="status", forbid_unknown_fields=True, frozen=True):
    """A node's periodic status heartbeat: its committed height and execution result. Peers use it
    to learn who is ahead (and sync from them) and as a liveness signal."""

    height: int
    execution_height: int
    execution_state_root: bytes


GossipMessage = (
    GossipProposalMessage | GossipVoteMessage | GossipCommitMessage | GossipActionBatch | GossipStatusMessage
)
