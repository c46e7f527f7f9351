"""The test vectors of docs/wire-format.md, recomputed with the project's own code.

The doc holds each vector in a fenced block whose first line is ``vector: <name>`` and whose
remaining lines are hex (whitespace is ignored). This test parses the doc, rebuilds every object
from fixed inputs (fixed Ed25519 seeds; signatures are deterministic) and asserts the bytes are
equal, so the doc and the code cannot drift apart. ``python tests/test_wire_format.py`` prints the
vectors in the doc's block format (to regenerate the doc after a deliberate wire change).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from libp2p.peer.id import ID

from agent_world_node.consensus.certificate import (
    InvalidCertificate,
    build_commit_certificate,
    verify_commit_certificate,
)
from agent_world_node.consensus.validators import Validator, ValidatorSet
from agent_world_node.execution import chain_execution_block_hash
from agent_world_node.network.host import peer_id_for_seed
from agent_world_node.network.statesync import GetChunk, ListSnapshots
from agent_world_node.network.sync import SyncEnd, SyncPayloadPart, SyncPayloads, SyncRefused, SyncRequest
from agent_world_node.network.topics import topic_id
from agent_world_node.types import (
    PROPOSAL_SIGN_DOMAIN,
    VOTE_SIGN_DOMAIN,
    ZERO_HASH,
    Block,
    BlockHeader,
    ExecutionHashes,
    GossipActionBatch,
    GossipCommitMessage,
    GossipMessage,
    GossipProposalMessage,
    GossipStatusMessage,
    GossipVoteMessage,
    NodeConsensusAction,
    Proposal,
    ReplicatedCommitPayload,
    Vote,
    VoteType,
    block_hash,
    compute_consensus_action_root,
)
from agent_world_runtime.actions import (
    ACTION_SIGN_DOMAIN,
    AttestBuild,
    CreateValidator,
    MoveAgent,
    TransferResource,
    VoteProposal,
    encode_signed_action,
    payload_hash,
    sign_action,
    validator_key_proof,
)
from agent_world_runtime.codec import decode, encode
from agent_world_runtime.crypto import SigningKey, sha256, verify
from agent_world_runtime.merkle import EMPTY_ROOT
from agent_world_runtime.snapshots import SnapshotManifest, manifest_for, verify_chunk

DOC = Path(__file__).resolve().parent.parent / "docs" / "wire-format.md"
VECTOR_BLOCK = re.compile(r"^```text\nvector: ([a-z0-9_.]+)\n(.*?)^```", re.S | re.M)

CHAIN_ID = "agent-world-test"
AGENT_KEY = SigningKey(b"\x01" * 32)
VALIDATOR_KEYS = [SigningKey(bytes([i]) * 32) for i in (2, 3, 4, 5)]
VALIDATOR_IDS = [k.public_key.hex() for k in VALIDATOR_KEYS]
STATE_ROOT = bytes([0xAA]) * 32
EVENTS_ROOT = bytes([0xBB]) * 32
TIMESTAMP_MS = 1_700_000_000_000


def doc_vectors() -> dict[str, str]:
    """Return ``{name: lowercase hex}`` of every vector block in the doc."""
    text = DOC.read_text(encoding="utf-8")
    found: dict[str, str] = {}
    for name, body in VECTOR_BLOCK.findall(text):
        assert name not in found, f"vector {name} appears twice in {DOC.name}"
        hex_text = "".join(body.split()).lower()
        assert re.fullmatch(r"([0-9a-f]{2})*", hex_text), f"vector {name} in {DOC.name} is not hex"
        found[name] = hex_text
    return found


def _signed_action_payload() -> bytes:
    signed = sign_action(AGENT_KEY, CHAIN_ID, "alice", 1, MoveAgent(to=(1, -2, 3)))
    return encode_signed_action(signed)


def _block() -> Block:
    payload = _signed_action_payload()
    act = NodeConsensusAction(action_id=payload_hash(payload), submitter="alice", payload=payload,
                              payload_hash=payload_hash(payload))
    header = BlockHeader(
        chain_id=CHAIN_ID,
        height=1,
        round=0,
        epoch=0,
        proposer=VALIDATOR_IDS[0],
        prev_block_hash=ZERO_HASH,
        action_root=compute_consensus_action_root([act]),
        action_count=1,
        last_execution_height=0,
        last_execution_block_hash=ZERO_HASH,
        last_execution_state_root=STATE_ROOT,
        timestamp_ms=TIMESTAMP_MS,
    )
    return Block(header=header, actions=[act])


def _vote(key: SigningKey, vote_type: VoteType, bhash: bytes | None, height: int = 1, round: int = 0) -> Vote:
    unsigned = Vote(vote_type, height, round, bhash, key.public_key.hex(), b"")
    sig = key.sign(VOTE_SIGN_DOMAIN, unsigned.sign_bytes(CHAIN_ID))
    return Vote(vote_type, height, round, bhash, key.public_key.hex(), sig)


def _proposal(block: Block) -> Proposal:
    unsigned = Proposal(1, 0, -1, block, VALIDATOR_IDS[0], b"")
    sig = VALIDATOR_KEYS[0].sign(PROPOSAL_SIGN_DOMAIN, unsigned.sign_bytes(CHAIN_ID))
    return Proposal(1, 0, -1, block, VALIDATOR_IDS[0], sig)


def _certificate(block: Block):
    bhash = block.hash()
    precommits = [_vote(k, VoteType.PRECOMMIT, bhash) for k in VALIDATOR_KEYS[:3]]
    return build_commit_certificate(1, 0, bhash, precommits)


def _validator_set() -> ValidatorSet:
    return ValidatorSet([Validator.from_public_key(k.public_key, 1) for k in VALIDATOR_KEYS])


def compute_vectors() -> dict[str, str]:
    """Return ``{name: hex}`` of every vector, built from the fixed inputs above."""
    v: dict[str, bytes] = {}
    v["agent_key.public_key"] = AGENT_KEY.public_key
    for i, key in enumerate(VALIDATOR_KEYS):
        v[f"validator{i}.public_key"] = key.public_key
    v["peer_id.seed01"] = ID.from_base58(peer_id_for_seed(b"\x01" * 32)).to_bytes()
    v["topic_id.vote"] = topic_id(CHAIN_ID, "vote").encode()

    signed = sign_action(AGENT_KEY, CHAIN_ID, "alice", 1, MoveAgent(to=(1, -2, 3)))
    v["action.body"] = encode(signed.body)
    v["action.signed_bytes"] = ACTION_SIGN_DOMAIN + encode(signed.body)
    v["action.signature"] = signed.signature
    payload = encode_signed_action(signed)
    v["action.payload"] = payload
    v["action.action_id"] = payload_hash(payload)
    transfer = sign_action(AGENT_KEY, CHAIN_ID, "alice", 300, TransferResource(to="bob", kind="data", amount=70000))
    v["action_transfer.payload"] = encode_signed_action(transfer)
    attest = sign_action(VALIDATOR_KEYS[0], CHAIN_ID, VALIDATOR_IDS[0], 0, AttestBuild(build_id="ab" * 32,
                                                                                       code="COMPILE_ERROR"))
    v["action_attest_build.payload"] = encode_signed_action(attest)
    create = sign_action(AGENT_KEY, CHAIN_ID, "alice", 2, CreateValidator(
        validator_key=VALIDATOR_KEYS[1].public_key, bond=100,
        proof=validator_key_proof(VALIDATOR_KEYS[1], CHAIN_ID, "alice"), name="v1"))
    v["validator_key_proof"] = create.body.action.proof
    v["action_create_validator.payload"] = encode_signed_action(create)
    vote = sign_action(AGENT_KEY, CHAIN_ID, "alice", 3, VoteProposal(proposal_id=1, validator_id=VALIDATOR_IDS[1],
                                                                      option="yes"))
    v["action_vote_proposal.payload"] = encode_signed_action(vote)

    v["action_root.empty"] = compute_consensus_action_root([])
    three = [NodeConsensusAction(sha256(bytes([i])), "x", bytes([i]), sha256(bytes([i]))) for i in range(3)]
    v["action_root.three"] = compute_consensus_action_root(three)

    block = _block()
    v["block.header"] = encode(block.header)
    v["block.hash"] = block.hash()

    bhash = block.hash()
    precommit = _vote(VALIDATOR_KEYS[0], VoteType.PRECOMMIT, bhash)
    v["vote.precommit.signed_bytes"] = VOTE_SIGN_DOMAIN + precommit.sign_bytes(CHAIN_ID)
    v["vote.precommit.signature"] = precommit.signature
    nil_prevote = _vote(VALIDATOR_KEYS[1], VoteType.PREVOTE, None, height=1, round=2)
    v["vote.nil_prevote.signed_bytes"] = VOTE_SIGN_DOMAIN + nil_prevote.sign_bytes(CHAIN_ID)
    v["gossip.vote"] = encode(GossipVoteMessage(precommit))

    proposal = _proposal(block)
    v["proposal.signed_bytes"] = PROPOSAL_SIGN_DOMAIN + proposal.sign_bytes(CHAIN_ID)
    v["proposal.signature"] = proposal.signature
    v["gossip.proposal"] = encode(GossipProposalMessage(proposal))

    cert = _certificate(block)
    v["commit_certificate"] = encode(cert)
    execution = ExecutionHashes(1, chain_execution_block_hash(ZERO_HASH, 1, STATE_ROOT, EVENTS_ROOT), STATE_ROOT)
    v["gossip.commit"] = encode(GossipCommitMessage(block.header, cert, execution))
    v["sync.replicated_commit_payload"] = encode(ReplicatedCommitPayload(block, cert, None))

    v["gossip.actions"] = encode(GossipActionBatch([payload]))
    v["gossip.status"] = encode(GossipStatusMessage(height=5, execution_height=4, execution_state_root=STATE_ROOT))

    v["execution.preimage"] = encode([ZERO_HASH, 1, STATE_ROOT, EVENTS_ROOT])
    v["execution.block_hash.1"] = chain_execution_block_hash(ZERO_HASH, 1, STATE_ROOT, EVENTS_ROOT)
    v["execution.block_hash.2"] = chain_execution_block_hash(v["execution.block_hash.1"], 2, EVENTS_ROOT, STATE_ROOT)

    v["sync.request"] = encode(SyncRequest(chain_id=CHAIN_ID, from_height=1, to_height=500))
    v["sync.frame.payloads"] = encode(SyncPayloads(payloads=[b"\x01\x02", b"\x03"]))
    v["sync.frame.part"] = encode(SyncPayloadPart(data=b"\x01\x02", last=True))
    v["sync.frame.end"] = encode(SyncEnd(count=2))
    v["sync.frame.refused"] = encode(SyncRefused(reason="busy"))
    v["snapshot.request.list"] = encode(ListSnapshots(chain_id=CHAIN_ID))
    v["snapshot.request.chunk"] = encode(GetChunk(chain_id=CHAIN_ID, height=1000, index=2))
    v["snapshot.manifest"] = encode(manifest_for(b"\x01\x02\x03\x04\x05", 1000, STATE_ROOT, chunk_bytes=2))
    return {name: data.hex() for name, data in v.items()}


COMPUTED = compute_vectors()


def test_doc_has_exactly_the_computed_vectors() -> None:
    in_doc = doc_vectors()
    assert sorted(set(COMPUTED) - set(in_doc)) == [], "vectors missing from the doc"
    assert sorted(set(in_doc) - set(COMPUTED)) == [], "vectors in the doc that the test does not compute"


@pytest.mark.parametrize("name", sorted(COMPUTED))
def test_doc_vector_matches_code(name: str) -> None:
    in_doc = doc_vectors()
    assert name in in_doc, f"vector {name} is not in {DOC.name}"
    assert in_doc[name] == COMPUTED[name], f"vector {name}: the doc says {in_doc[name]}, the code gives {COMPUTED[name]}"


def test_signatures_in_the_vectors_verify() -> None:
    v = {k: bytes.fromhex(h) for k, h in COMPUTED.items()}
    assert verify(v["agent_key.public_key"], ACTION_SIGN_DOMAIN, v["action.body"], v["action.signature"])
    vote_msg = v["vote.precommit.signed_bytes"][len(VOTE_SIGN_DOMAIN):]
    assert verify(v["validator0.public_key"], VOTE_SIGN_DOMAIN, vote_msg, v["vote.precommit.signature"])
    prop_msg = v["proposal.signed_bytes"][len(PROPOSAL_SIGN_DOMAIN):]
    assert verify(v["validator0.public_key"], PROPOSAL_SIGN_DOMAIN, prop_msg, v["proposal.signature"])
    # The signature covers domain || message as one Ed25519 message.
    assert verify(v["validator0.public_key"], b"", v["proposal.signed_bytes"], v["proposal.signature"])


def test_block_hash_and_action_id_are_sha256_of_the_vector_bytes() -> None:
    v = {k: bytes.fromhex(h) for k, h in COMPUTED.items()}
    assert sha256(v["block.header"]) == v["block.hash"] == block_hash(_block().header)
    assert sha256(v["action.payload"]) == v["action.action_id"]
    assert sha256(v["execution.preimage"]) == v["execution.block_hash.1"]
    assert v["action_root.empty"] == EMPTY_ROOT == sha256(b"")


def test_action_root_of_three_by_hand() -> None:
    leaves = [sha256(b"\x00" + sha256(bytes([i]))) for i in range(3)]
    left = sha256(b"\x01" + leaves[0] + leaves[1])
    assert sha256(b"\x01" + left + leaves[2]).hex() == COMPUTED["action_root.three"]


def test_commit_certificate_vector_verifies_with_more_than_two_thirds() -> None:
    from agent_world_node.types import CommitCertificate

    cert = decode(bytes.fromhex(COMPUTED["commit_certificate"]), CommitCertificate)
    bhash = bytes.fromhex(COMPUTED["block.hash"])
    verify_commit_certificate(cert, bhash, CHAIN_ID, _validator_set(), height=1)  # 3 of 4 stake
    two = CommitCertificate(cert.height, cert.round, cert.block_hash, cert.signatures[:2])
    with pytest.raises(InvalidCertificate, match="not more than 2/3"):
        verify_commit_certificate(two, bhash, CHAIN_ID, _validator_set(), height=1)
    with pytest.raises(InvalidCertificate):
        verify_commit_certificate(cert, bhash, "another-chain", _validator_set(), height=1)


def test_gossip_vectors_decode_as_gossip_messages() -> None:
    for name, cls in (("gossip.vote", GossipVoteMessage), ("gossip.proposal", GossipProposalMessage),
                      ("gossip.commit", GossipCommitMessage), ("gossip.actions", GossipActionBatch),
                      ("gossip.status", GossipStatusMessage)):
        data = bytes.fromhex(COMPUTED[name])
        msg = decode(data, GossipMessage)  # type: ignore[arg-type]
        assert isinstance(msg, cls)
        assert encode(msg) == data


def test_snapshot_manifest_vector_is_consistent() -> None:
    manifest = decode(bytes.fromhex(COMPUTED["snapshot.manifest"]), SnapshotManifest)
    assert manifest.problem() is None
    assert [verify_chunk(manifest, i, c) for i, c in enumerate((b"\x01\x02", b"\x03\x04", b"\x05"))] == [None] * 3
    assert manifest.hash == sha256(b"\x01\x02\x03\x04\x05")


if __name__ == "__main__":
    for vector_name, hex_value in COMPUTED.items():
        lines = [hex_value[i : i + 64] for i in range(0, len(hex_value), 64)] or [""]
        print(f"```text\nvector: {vector_name}\n" + "\n".join(lines) + "\n```\n")
