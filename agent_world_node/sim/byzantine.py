"""Byzantine validators of the simulator: each wraps a real ``Replica`` and rewrites what it sends.

A Byzantine node runs the honest replica (so it follows the chain and can tell what to attack),
and its ``Behaviour`` turns every ``Publish`` of the replica into the sends it wants, may send more
on receipt of a message or on its periodic tick, and may answer block sync requests with lies.
Signatures are real (the validator's own key) unless the behaviour's point is forging them.

=================  =====================================================================================
behaviour          what it does
=================  =====================================================================================
``equivocator``    as proposer, sends half of the other nodes (split by stake, per height) a second
                   valid block for the same (height, round), and votes for each half's block there
``double_voter``   every prevote and precommit goes out in two versions: the honest one to half of
                   the nodes, a conflicting one (nil for a block, a block for nil) to the other half
``twins``          (no ``Behaviour``): two honest replicas share the validator key (DiemBFT Twins);
                   partitions and clock skew make them sign conflicting messages
``phantom_voter``  votes for blocks that do not exist (a fresh hash per height and round)
``garbage``        also sends corrupted signatures, undecodable bytes, wrongly shaped messages,
                   votes forged in other validators' names, absurd rounds and heights, forged
                   commit certificates, bait status heights, and answers sync with garbage
``forger``         on every proposal it sees, sends unsigned prevotes and precommits for it in the
                   name of every other validator (caught by any core that checks signatures)
``silent``         (no node): the validator never sends anything
=================  =====================================================================================
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import msgspec

from agent_world_runtime.codec import DecodeError, decode, encode
from agent_world_runtime.crypto import SigningKey, sha256

from ..consensus import ValidatorSet
from ..types import (
    PROPOSAL_SIGN_DOMAIN,
    VOTE_SIGN_DOMAIN,
    Block,
    BlockHeader,
    CommitCertificate,
    CommitSig,
    GossipActionBatch,
    GossipCommitMessage,
    GossipMessage,
    GossipProposalMessage,
    GossipStatusMessage,
    GossipVoteMessage,
    Proposal,
    ReplicatedCommitPayload,
    Vote,
    VoteType,
    compute_consensus_action_root,
)

Send = tuple[str | None, str, bytes]
"""``(destination node name or None for every peer, topic, data)``."""


@dataclass
class ByzContext:
    """What a behaviour may use: its node's name, key and view of the cluster. ``height()``
    returns the node's committed height; ``peers`` are the other node names and ``node_stake``
    their stake (for splitting them into halves)."""

    name: str
    key: SigningKey
    chain_id: str
    validator_set: ValidatorSet
    rng: random.Random
    peers: list[str]
    node_stake: dict[str, int]
    height: Callable[[], int]

    @property
    def validator_id(self) -> str:
        """Our validator id (hex public key)."""
        return self.key.public_key.hex()


def sign_vote(ctx: ByzContext, vote_type: VoteType, height: int, round: int, block_hash: bytes | None) -> Vote:
    """Return a vote by ``ctx.key`` with a valid signature."""
    unsigned = Vote(vote_type, height, round, block_hash, ctx.validator_id, b"")
    return msgspec.structs.replace(unsigned, signature=ctx.key.sign(VOTE_SIGN_DOMAIN, unsigned.sign_bytes(ctx.chain_id)))


def sign_proposal(ctx: ByzContext, height: int, round: int, pol_round: int, block: Block) -> Proposal:
    """Return a proposal by ``ctx.key`` with a valid signature."""
    unsigned = Proposal(height, round, pol_round, block, ctx.validator_id, b"")
    sig = ctx.key.sign(PROPOSAL_SIGN_DOMAIN, unsigned.sign_bytes(ctx.chain_id))
    return msgspec.structs.replace(unsigned, signature=sig)


def vote_data(vote: Vote) -> bytes:
    """The gossip encoding of ``vote``."""
    return encode(GossipVoteMessage(vote))


def proposal_data(proposal: Proposal) -> bytes:
    """The gossip encoding of ``proposal``."""
    return encode(GossipProposalMessage(proposal))


def decode_gossip(data: bytes) -> object | None:
    """Decode gossip ``data`` or return None when it is not a ``GossipMessage``."""
    try:
        return decode(data, GossipMessage)
    except DecodeError:
        return None


class Behaviour:
    """An honest pass-through; subclasses override what they attack."""

    name = "honest"

    def __init__(self, ctx: ByzContext) -> None:
        self.ctx = ctx
        self._halves: dict[int, frozenset[str]] = {}

    def outgoing(self, topic: str, data: bytes) -> list[Send]:
        """The sends that replace one ``Publish(topic, data)`` of the replica."""
        return [(None, topic, data)]

    def on_receive(self, topic: str, data: bytes) -> list[Send]:
        """Extra sends triggered by a message the node received."""
        return []

    def on_tick(self) -> list[Send]:
        """Extra sends on the node's periodic tick."""
        return []

    def serve_sync(self, from_height: int, to_height: int) -> list[bytes] | None:
        """The answer to a sync request, or None to answer honestly."""
        return None

    # -- helpers --------------------------------------------------------------------------------
    def half_b(self, height: int) -> frozenset[str]:
        """The peers that get the second version at ``height``: the peers split into two halves
        of about equal stake (heaviest first, ties broken at random), fixed per height."""
        if height not in self._halves:
            peers = list(self.ctx.peers)
            self.ctx.rng.shuffle(peers)
            peers.sort(key=lambda p: -self.ctx.node_stake.get(p, 1))
            a = b = 0
            half: set[str] = set()
            for p in peers:
                if b < a:
                    half.add(p)
                    b += self.ctx.node_stake.get(p, 1)
                else:
                    a += self.ctx.node_stake.get(p, 1)
            self._halves[height] = frozenset(half)
        return self._halves[height]

    def split(self, height: int, topic: str, first: bytes, second: bytes) -> list[Send]:
        """Send ``second`` to ``half_b(height)`` and ``first`` to the other peers."""
        half = self.half_b(height)
        return [(p, topic, second if p in half else first) for p in self.ctx.peers]


class Equivocator(Behaviour):
    """Two valid blocks per (height, round) it proposes, one per half, with matching votes."""

    name = "equivocator"

    def __init__(self, ctx: ByzContext) -> None:
        super().__init__(ctx)
        self._alt: dict[tuple[int, int], Proposal] = {}
        self._alt_by_hash: dict[bytes, bytes] = {}  # original block hash -> alternative block hash
        self._alt_votes: dict[tuple[int, int, int], Vote] = {}

    def _alternative(self, p: Proposal) -> Proposal:
        key = (p.height, p.round)
        if key not in self._alt:
            hdr = p.block.header
            actions = p.block.actions[:-1]  # one action fewer (or an empty block), one ms later
            header = msgspec.structs.replace(
                hdr,
                timestamp_ms=hdr.timestamp_ms + 1,
                action_root=compute_consensus_action_root(actions),
                action_count=len(actions),
            )
            alt = sign_proposal(self.ctx, p.height, p.round, p.pol_round,
                                msgspec.structs.replace(p.block, header=header, actions=actions))
            self._alt[key] = alt
            self._alt_by_hash[p.block.hash()] = alt.block.hash()
        return self._alt[key]

    def outgoing(self, topic: str, data: bytes) -> list[Send]:
        msg = decode_gossip(data)
        if isinstance(msg, GossipProposalMessage) and msg.proposal.validator == self.ctx.validator_id:
            p = msg.proposal
            return self.split(p.height, topic, data, proposal_data(self._alternative(p)))
        if isinstance(msg, GossipVoteMessage) and msg.vote.validator == self.ctx.validator_id:
            v = msg.vote
            alt_hash = self._alt_by_hash.get(v.block_hash) if v.block_hash is not None else None
            if alt_hash is not None:
                key = (v.height, v.round, int(v.vote_type))
                if key not in self._alt_votes:
                    self._alt_votes[key] = sign_vote(self.ctx, v.vote_type, v.height, v.round, alt_hash)
                return self.split(v.height, topic, data, vote_data(self._alt_votes[key]))
        return [(None, topic, data)]


class DoubleVoter(Behaviour):
    """Every own vote in two versions, one per half."""

    name = "double_voter"

    def __init__(self, ctx: ByzContext) -> None:
        super().__init__(ctx)
        self._second: dict[tuple[int, int, int], Vote] = {}

    def outgoing(self, topic: str, data: bytes) -> list[Send]:
        msg = decode_gossip(data)
        if isinstance(msg, GossipVoteMessage) and msg.vote.validator == self.ctx.validator_id:
            v = msg.vote
            key = (v.height, v.round, int(v.vote_type))
            if key not in self._second:
                other = None if v.block_hash is not None else sha256(b"double-voter" + repr(key).encode())
                self._second[key] = sign_vote(self.ctx, v.vote_type, v.height, v.round, other)
            return self.split(v.height, topic, data, vote_data(self._second[key]))
        return [(None, topic, data)]


class PhantomVoter(Behaviour):
    """Votes (validly signed) for blocks that do not exist."""

    name = "phantom_voter"

    def outgoing(self, topic: str, data: bytes) -> list[Send]:
        msg = decode_gossip(data)
        if isinstance(msg, GossipVoteMessage) and msg.vote.validator == self.ctx.validator_id:
            v = msg.vote
            phantom = sha256(b"phantom" + v.height.to_bytes(8, "big") + v.round.to_bytes(8, "big"))
            return [(None, topic, vote_data(sign_vote(self.ctx, v.vote_type, v.height, v.round, phantom)))]
        return [(None, topic, data)]


class Forger(Behaviour):
    """Unsigned votes in every other validator's name for each proposal it sees or makes."""

    name = "forger"

    def __init__(self, ctx: ByzContext) -> None:
        super().__init__(ctx)
        self._forged: set[tuple[int, int, bytes]] = set()

    def forge(self, p: Proposal) -> list[Send]:
        """Unsigned prevotes and precommits for ``p``'s block from all other validators."""
        block_hash = p.block.hash()
        key = (p.height, p.round, block_hash)
        if key in self._forged:
            return []
        self._forged.add(key)
        out: list[Send] = []
        for vote_type in (VoteType.PREVOTE, VoteType.PRECOMMIT):
            for validator in self.ctx.validator_set.ids():
                if validator != self.ctx.validator_id:
                    forged = Vote(vote_type, p.height, p.round, block_hash, validator, b"")
                    out.append((None, "vote", vote_data(forged)))
        return out

    def outgoing(self, topic: str, data: bytes) -> list[Send]:
        msg = decode_gossip(data)
        extra = self.forge(msg.proposal) if isinstance(msg, GossipProposalMessage) else []
        return [(None, topic, data)] + extra

    def on_receive(self, topic: str, data: bytes) -> list[Send]:
        msg = decode_gossip(data)
        return self.forge(msg.proposal) if isinstance(msg, GossipProposalMessage) else []


class Garbage(Behaviour):
    """Corrupted copies of its messages, and a stream of hostile messages of every kind."""

    name = "garbage"
    TICK_PROB = 0.3

    def _corrupt(self, data: bytes) -> bytes:
        msg = decode_gossip(data)
        if isinstance(msg, GossipVoteMessage):
            sig = msg.vote.signature
            return vote_data(msgspec.structs.replace(msg.vote, signature=bytes([sig[0] ^ 0xFF]) + sig[1:]))
        if isinstance(msg, GossipProposalMessage):
            sig = msg.proposal.signature
            return proposal_data(msgspec.structs.replace(msg.proposal, signature=bytes([sig[0] ^ 0xFF]) + sig[1:]))
        return data[: max(1, len(data) // 2)]

    def outgoing(self, topic: str, data: bytes) -> list[Send]:
        out: list[Send] = [(None, topic, data)]
        if self.ctx.rng.random() < 0.5:
            out.append((None, topic, self._corrupt(data)))
        return out

    def hostile_message(self) -> tuple[str, bytes]:
        """One hostile gossip message (topic, data), chosen at random."""
        ctx, rng = self.ctx, self.ctx.rng
        h = ctx.height() + 1
        kind = rng.randrange(10)
        if kind == 0:
            return "vote", rng.randbytes(rng.randint(0, 200))
        if kind == 1:
            return "proposal", encode({"type": "proposal", "proposal": [1, 2, 3]})
        if kind == 2:  # a vote in an honest validator's name with a garbage signature
            victim = rng.choice(ctx.validator_set.ids())
            vote = Vote(VoteType.PRECOMMIT, h, 0, rng.randbytes(32), victim, rng.randbytes(64))
            return "vote", vote_data(vote)
        if kind == 3:  # absurd round, validly signed
            return "vote", vote_data(sign_vote(ctx, VoteType.PREVOTE, h, rng.choice((10**9, 2**62)), None))
        if kind == 4:  # bait: claims to be far ahead, so peers try to sync from us
            return "status", encode(GossipStatusMessage(h + 10**6, h + 10**6, rng.randbytes(32)))
        if kind == 5:  # a commit with a forged certificate for a made-up block
            fake = self._fake_block(h)
            sigs = [CommitSig(v, rng.randbytes(64)) for v in ctx.validator_set.ids()]
            return "commit", encode(GossipCommitMessage(fake.header, CommitCertificate(h, 0, fake.hash(), sigs), None))
        if kind == 6:
            return "actions", encode(GossipActionBatch([rng.randbytes(50), b"", encode({"body": 1})]))
        if kind == 7:  # a signed proposal whose action root does not match its actions
            block = self._fake_block(h)
            bad = msgspec.structs.replace(block.header, action_count=block.header.action_count + 1)
            return "proposal", proposal_data(sign_proposal(ctx, h, 0, -1, Block(bad, block.actions)))
        if kind == 8:  # negative height and round, a 5-byte block hash
            return "vote", vote_data(Vote(VoteType.PREVOTE, -1, -5, b"short", ctx.validator_id, b""))
        # a struct field name that is not UTF-8 (msgspec raises UnicodeDecodeError, not DecodeError)
        return "vote", b"\x82\xa4type\xa4vote\xa4\xf4\x82\x8b\x67\xc0"

    def _fake_block(self, height: int) -> Block:
        header = BlockHeader(
            chain_id=self.ctx.chain_id, height=height, round=0, epoch=0, proposer=self.ctx.validator_id,
            prev_block_hash=self.ctx.rng.randbytes(32), action_root=compute_consensus_action_root([]), action_count=0,
            last_execution_height=height - 1, last_execution_block_hash=b"\x00" * 32,
            last_execution_state_root=b"\x00" * 32, timestamp_ms=0,
        )
        return Block(header, [])

    def on_tick(self) -> list[Send]:
        if self.ctx.rng.random() >= self.TICK_PROB:
            return []
        topic, data = self.hostile_message()
        return [(None, topic, data)]

    def serve_sync(self, from_height: int, to_height: int) -> list[bytes] | None:
        rng = self.ctx.rng
        fake = self._fake_block(from_height)
        cert = CommitCertificate(from_height, 0, fake.hash(), [CommitSig(self.ctx.validator_id, rng.randbytes(64))])
        choice = rng.randrange(3)
        if choice == 0:
            return [rng.randbytes(40)]
        if choice == 1:  # a field name that is not UTF-8
            return [b"\x81\xa3\xf4\x82\x83\xc0"]
        return [encode(ReplicatedCommitPayload(fake, cert, None))]


BEHAVIOUR_CLASSES: dict[str, type[Behaviour]] = {
    cls.name: cls for cls in (Equivocator, DoubleVoter, PhantomVoter, Forger, Garbage)
}
"""Behaviours that wrap a replica (``twins`` and ``silent`` need none: see the module table)."""


def make_behaviour(name: str, ctx: ByzContext) -> Behaviour | None:
    """Return the behaviour called ``name`` for ``ctx`` (None for "twins"); raises ValueError for
    an unknown name or for "silent" (a silent validator has no node)."""
    if name == "twins":
        return None
    cls = BEHAVIOUR_CLASSES.get(name)
    if cls is None:
        raise ValueError(f"no node behaviour {name!r}; known: {', '.join(sorted(BEHAVIOUR_CLASSES))}, twins")
    return cls(ctx)
