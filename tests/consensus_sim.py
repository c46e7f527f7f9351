"""A deterministic in-process cluster of ``ConsensusCore``s on a simulated network.

Everything is driven by one seeded ``random.Random`` and a virtual clock (milliseconds), so a run is
a pure function of its ``SimConfig``: the same seed gives the same message order, drops, duplicates,
timeouts and decisions. The harness plays the role of the node driver:

- Network: every send is delivered after a random delay in ``[1, max_delay_ms]`` (so messages are
  reordered); before ``stabilize_at_ms`` each send is dropped with ``drop_prob``; any send is
  duplicated with ``dup_prob``.
- Effects: ``Broadcast`` goes to every other node; ``ScheduleTimeout`` becomes a timer event;
  ``GetValue`` is answered at once with a block built on the node's last decided block;
  ``Decide`` is recorded (after checking its certificate) and the next height starts
  ``timeouts.commit_ms`` later. The harness asserts that a node persists (``PersistWAL``) every
  message it signs before it broadcasts it.
- Gossip and sync (what the daemon's gossip and block sync do): every ``gossip_interval_ms`` each
  node re-sends its message log of its current height (``ConsensusCore.height_messages()``: its
  own messages and those it accepted from others), which gives the paper's gossip property after
  the network stabilises, and announces the height it is working on;
  a peer that has decided that height answers with the block and its commit certificate, which the
  lagging node checks with ``verify_commit_certificate`` before adopting it.
- Relaying: a node forwards a received proposal or vote to one random peer with ``relay_prob``
  (as gossipsub forwards messages), so both halves of an equivocation reach honest nodes.
- Byzantine validators (``byzantine``) equivocate: at each height they split the other nodes into two
  groups of about equal stake and send each group a different signed version of every proposal and vote (a second block,
  or a conflicting vote), and now and then a vote with a corrupted signature.

``run_cluster(config)`` returns a ``SimResult``; ``check_safety`` asserts agreement and certificate
validity, and ``SimResult.terminated`` tells whether every honest node decided heights 1..K.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import msgspec

from agent_world_node.consensus import (
    Broadcast,
    ConsensusCore,
    Decide,
    EvidenceFound,
    GetValue,
    InvalidCertificate,
    PersistWAL,
    ProposalReceived,
    ScheduleTimeout,
    TimeoutConfig,
    TimeoutFired,
    Validator,
    ValidatorSet,
    ValueToPropose,
    VoteReceived,
    epoch_of,
    verify_commit_certificate,
)
from agent_world_node.consensus.evidence import Evidence
from agent_world_node.types import (
    PROPOSAL_SIGN_DOMAIN,
    VOTE_SIGN_DOMAIN,
    ZERO_HASH,
    Block,
    BlockHeader,
    CommitCertificate,
    NodeConsensusAction,
    Proposal,
    Vote,
    compute_consensus_action_root,
)
from agent_world_runtime.crypto import SigningKey, sha256

CHAIN_ID = "sim-chain"
EPOCH_LENGTH = 1000

SIM_TIMEOUTS = TimeoutConfig(
    propose_ms=300,
    propose_delta_ms=100,
    prevote_ms=200,
    prevote_delta_ms=100,
    precommit_ms=200,
    precommit_delta_ms=100,
    commit_ms=50,
)


@dataclass(frozen=True)
class SimConfig:
    """One simulated run. ``stakes[i]`` is node i's stake; ``byzantine`` holds indexes of
    equivocating validators; times are virtual milliseconds."""

    stakes: tuple[int, ...]
    seed: int
    heights: int = 3
    byzantine: frozenset[int] = frozenset()
    drop_prob: float = 0.0
    dup_prob: float = 0.0
    max_delay_ms: int = 100
    stabilize_at_ms: int = 0
    gossip_interval_ms: int = 1000
    timeouts: TimeoutConfig = SIM_TIMEOUTS
    max_time_ms: int = 600_000
    max_events: int = 400_000
    byzantine_garbage_prob: float = 0.1
    relay_prob: float = 0.2


@dataclass(frozen=True)
class SyncStatus:
    """Gossip: ``sender`` is working on ``height``."""

    sender: int
    height: int


@dataclass(frozen=True)
class SyncCommit:
    """Sync answer: a decided block and its certificate."""

    block: Block
    certificate: CommitCertificate


SimMessage = Union[Proposal, Vote, SyncStatus, SyncCommit]


@dataclass
class Decision:
    """A height as a node decided it: by its own core (``source='consensus'``) or by sync."""

    block: Block
    certificate: CommitCertificate
    source: str
    time_ms: int


@dataclass
class SimNode:
    """One node of the cluster: its key, core and what it decided."""

    index: int
    key: SigningKey
    core: ConsensusCore
    byzantine: bool
    decisions: dict[int, Decision] = field(default_factory=dict)
    sent: dict[int, list[Union[Proposal, Vote]]] = field(default_factory=dict)
    persisted: set[bytes] = field(default_factory=set)
    evidence: list[Evidence] = field(default_factory=list)
    target_height: int = 1  # the height the node is working on (or waiting to start)

    @property
    def id(self) -> str:
        """The node's validator id."""
        return self.key.public_key.hex()


@dataclass
class SimResult:
    """The outcome of ``run_cluster``."""

    config: SimConfig
    nodes: list[SimNode]
    validator_set: ValidatorSet
    time_ms: int
    events: int
    terminated: bool

    @property
    def honest(self) -> list[SimNode]:
        """The nodes that follow the protocol."""
        return [n for n in self.nodes if not n.byzantine]


def make_keys(n: int, seed: int) -> list[SigningKey]:
    """Return ``n`` deterministic keys derived from ``seed``."""
    return [SigningKey(sha256(b"sim-key" + seed.to_bytes(8, "big") + i.to_bytes(4, "big"))) for i in range(n)]


def make_block(
    proposer: str, height: int, round: int, prev_hash: bytes, timestamp_ms: int, payloads: list[bytes]
) -> Block:
    """Return a block of ``payloads`` (as opaque action payloads) on top of ``prev_hash``."""
    actions = [
        NodeConsensusAction(action_id=sha256(p), submitter="agent-sim", payload=p, payload_hash=sha256(p))
        for p in payloads
    ]
    header = BlockHeader(
        chain_id=CHAIN_ID,
        height=height,
        round=round,
        epoch=epoch_of(height, EPOCH_LENGTH),
        proposer=proposer,
        prev_block_hash=prev_hash,
        action_root=compute_consensus_action_root(actions),
        action_count=len(actions),
        last_execution_height=height - 1,
        last_execution_block_hash=ZERO_HASH,
        last_execution_state_root=ZERO_HASH,
        timestamp_ms=timestamp_ms,
    )
    return Block(header=header, actions=actions)


class Cluster:
    """The simulated cluster; build with a ``SimConfig`` and call ``run()`` once."""

    def __init__(self, config: SimConfig, core_factory: Callable[..., ConsensusCore] = ConsensusCore) -> None:
        if len(config.stakes) < 1:
            raise ValueError("a cluster needs at least one validator")
        self.config = config
        self.rng = random.Random(config.seed)
        keys = make_keys(len(config.stakes), config.seed)
        self.validator_set = ValidatorSet(
            Validator.from_public_key(k.public_key, s, f"v{i}") for i, (k, s) in enumerate(zip(keys, config.stakes))
        )
        self.now = 0
        self.events = 0
        self._queue: list[tuple[int, int, str, object]] = []
        self._seq = itertools.count()
        self._groups: dict[tuple[int, int], frozenset[int]] = {}
        self._alt: dict[tuple, Union[Proposal, Vote]] = {}
        self.nodes: list[SimNode] = []
        for i, key in enumerate(keys):
            node = SimNode(i, key, None, i in config.byzantine)  # type: ignore[arg-type]
            node.core = core_factory(CHAIN_ID, self.validator_set, key, config.timeouts, self._validator_for(node))
            self.nodes.append(node)

    # -- the driver's callbacks -----------------------------------------------------------------

    def _validator_for(self, node: SimNode) -> Callable[[Block], bool]:
        def validate(block: Block) -> bool:
            h = block.header.height
            prev = node.decisions.get(h - 1)
            prev_hash = prev.block.hash() if prev is not None else ZERO_HASH
            return (
                block.header.prev_block_hash == prev_hash
                and block.header.epoch == epoch_of(h, EPOCH_LENGTH)
                and block.header.proposer in self.validator_set
            )

        return validate

    def _new_block(self, node: SimNode, height: int, round: int, salt: int = 0) -> Block:
        prev = node.decisions.get(height - 1)
        prev_hash = prev.block.hash() if prev is not None else ZERO_HASH
        payloads = [self.rng.randbytes(16) for _ in range(self.rng.randint(0, 2))]
        return make_block(node.id, height, round, prev_hash, self.now + salt, payloads)

    # -- event queue ----------------------------------------------------------------------------

    def _push(self, at: int, kind: str, payload: object) -> None:
        heapq.heappush(self._queue, (at, next(self._seq), kind, payload))

    def _send(self, src: int, dst: int, message: SimMessage) -> None:
        cfg = self.config
        if self.now < cfg.stabilize_at_ms and self.rng.random() < cfg.drop_prob:
            return
        self._push(self.now + self.rng.randint(1, cfg.max_delay_ms), "deliver", (dst, message))
        if cfg.dup_prob and self.rng.random() < cfg.dup_prob:
            self._push(self.now + self.rng.randint(1, cfg.max_delay_ms), "deliver", (dst, message))

    def _broadcast(self, node: SimNode, message: Union[Proposal, Vote]) -> None:
        equivocate = node.byzantine and message.validator == node.id
        for other in self.nodes:
            if other.index == node.index:
                continue
            out = self._byzantine_version(node, other.index, message) if equivocate else message
            self._send(node.index, other.index, out)

    # -- Byzantine behaviour ----------------------------------------------------------------------

    def _group_b(self, node: SimNode, height: int) -> frozenset[int]:
        """The nodes that get the Byzantine node's second version at ``height``: the others split
        into two groups of about equal stake (the split that best helps both halves reach a
        threshold with the equivocator's help), ties broken at random."""
        key = (node.index, height)
        if key not in self._groups:
            others = [n.index for n in self.nodes if n.index != node.index]
            self.rng.shuffle(others)
            others.sort(key=lambda i: -self.config.stakes[i])
            stake_a = stake_b = 0
            group_b = set()
            for i in others:
                if stake_b < stake_a:
                    group_b.add(i)
                    stake_b += self.config.stakes[i]
                else:
                    stake_a += self.config.stakes[i]
            self._groups[key] = frozenset(group_b)
        return self._groups[key]

    def _byzantine_version(self, node: SimNode, dst: int, message: Union[Proposal, Vote]) -> SimMessage:
        if self.rng.random() < self.config.byzantine_garbage_prob:
            bad = bytes([message.signature[0] ^ 0xFF]) + message.signature[1:]
            return msgspec.structs.replace(message, signature=bad)
        if dst not in self._group_b(node, message.height):
            return message
        return self._conflicting(node, message)

    def _conflicting(self, node: SimNode, message: Union[Proposal, Vote]) -> Union[Proposal, Vote]:
        if isinstance(message, Proposal):
            key = ("proposal", message.height, message.round)
            if key not in self._alt:
                alt_block = self._new_block(node, message.height, message.round, salt=1)
                unsigned = msgspec.structs.replace(message, block=alt_block, signature=b"")
                sig = node.key.sign(PROPOSAL_SIGN_DOMAIN, unsigned.sign_bytes(CHAIN_ID))
                self._alt[key] = msgspec.structs.replace(unsigned, signature=sig)
            return self._alt[key]
        key = ("vote", message.height, message.round, int(message.vote_type))
        if key not in self._alt:
            alt_proposal = self._alt.get(("proposal", message.height, message.round))
            if alt_proposal is not None and message.block_hash is not None:
                other_hash: Optional[bytes] = alt_proposal.block.hash()  # type: ignore[union-attr]
            elif message.block_hash is None:
                other_hash = self.rng.randbytes(32)
            else:
                other_hash = None
            unsigned = msgspec.structs.replace(message, block_hash=other_hash, signature=b"")
            sig = node.key.sign(VOTE_SIGN_DOMAIN, unsigned.sign_bytes(CHAIN_ID))
            self._alt[key] = msgspec.structs.replace(unsigned, signature=sig)
        return self._alt[key]

    # -- effects ------------------------------------------------------------------------------------

    def _perform(self, node: SimNode, effects: list) -> None:
        work = list(effects)
        while work:
            effect = work.pop(0)
            if isinstance(effect, PersistWAL):
                node.persisted.add(msgspec.msgpack.encode(effect.entry))
            elif isinstance(effect, Broadcast):
                message = effect.message
                if msgspec.msgpack.encode(message) not in node.persisted:
                    raise AssertionError(f"node {node.index} broadcast a message it did not persist first")
                sent = node.sent.setdefault(message.height, [])
                if message not in sent:
                    sent.append(message)
                self._broadcast(node, message)
            elif isinstance(effect, ScheduleTimeout):
                timeout = TimeoutFired(effect.kind, effect.height, effect.round)
                self._push(self.now + effect.duration_ms, "timeout", (node.index, timeout))
            elif isinstance(effect, GetValue):
                block = self._new_block(node, effect.height, effect.round)
                work[0:0] = node.core.handle(ValueToPropose(effect.height, effect.round, block))
            elif isinstance(effect, Decide):
                self._record_decision(node, effect.block, effect.certificate, "consensus")
            elif isinstance(effect, EvidenceFound):
                node.evidence.append(effect.evidence)
            else:
                raise AssertionError(f"unknown effect {effect!r}")

    def _record_decision(self, node: SimNode, block: Block, cert: CommitCertificate, source: str) -> None:
        height = block.header.height
        verify_commit_certificate(cert, block.hash(), CHAIN_ID, self.validator_set, height=height)
        earlier = node.decisions.get(height)
        if earlier is not None:  # synced first, then its own core decided: must be the same block
            if earlier.block.hash() != block.hash():
                raise AssertionError(f"node {node.index} decided two blocks at height {height}")
            return
        node.decisions[height] = Decision(block, cert, source, self.now)
        node.target_height = height + 1
        if height < self.config.heights:
            self._push(self.now + self.config.timeouts.commit_ms, "start", (node.index, height + 1))

    # -- delivery -------------------------------------------------------------------------------------

    def _relay(self, node: SimNode, message: Union[Proposal, Vote]) -> None:
        # Gossipsub forwards what it receives: so both versions of an equivocation reach everyone.
        if self.rng.random() < self.config.relay_prob:
            peer = self.rng.choice([n.index for n in self.nodes if n.index != node.index])
            self._send(node.index, peer, message)

    def _deliver(self, node: SimNode, message: SimMessage) -> None:
        if isinstance(message, Proposal):
            self._perform(node, node.core.handle(ProposalReceived(message)))
            self._relay(node, message)
        elif isinstance(message, Vote):
            self._perform(node, node.core.handle(VoteReceived(message)))
            self._relay(node, message)
        elif isinstance(message, SyncStatus):
            decision = node.decisions.get(message.height)
            if decision is not None:
                self._send(node.index, message.sender, SyncCommit(decision.block, decision.certificate))
        elif isinstance(message, SyncCommit):
            height = message.block.header.height
            if height == node.target_height and height not in node.decisions and height <= self.config.heights:
                if node.core.height == height and node.core.decision is not None:
                    return  # its own Decide is being handled
                if not self._validator_for(node)(message.block):
                    return
                try:
                    verify_commit_certificate(
                        message.certificate, message.block.hash(), CHAIN_ID, self.validator_set, height=height
                    )
                except InvalidCertificate:
                    return  # a forged commit is ignored, as the daemon's sync does
                self._record_decision(node, message.block, message.certificate, "sync")

    def _gossip(self, node: SimNode) -> None:
        for message in node.core.height_messages():
            self._broadcast(node, message)
        if node.target_height <= self.config.heights:
            for other in self.nodes:
                if other.index != node.index:
                    self._send(node.index, other.index, SyncStatus(node.index, node.target_height))

    def _done(self) -> bool:
        k = self.config.heights
        return all(len(n.decisions) >= k for n in self.nodes if not n.byzantine)

    def run(self) -> SimResult:
        """Run until every honest node decided heights 1..K, or the time/event budget runs out."""
        for node in self.nodes:
            self._push(0, "start", (node.index, 1))
            self._push(self.rng.randint(1, self.config.gossip_interval_ms), "gossip", node.index)
        while self._queue and not self._done():
            if self.events >= self.config.max_events:
                break
            at, _, kind, payload = heapq.heappop(self._queue)
            if at > self.config.max_time_ms:
                break
            self.now = at
            self.events += 1
            if kind == "deliver":
                dst, message = payload  # type: ignore[misc]
                self._deliver(self.nodes[dst], message)
            elif kind == "timeout":
                index, timeout = payload  # type: ignore[misc]
                self._perform(self.nodes[index], self.nodes[index].core.handle(timeout))
            elif kind == "start":
                index, height = payload  # type: ignore[misc]
                node = self.nodes[index]
                if node.core.height < height and node.target_height == height:
                    self._perform(node, node.core.start_height(height))
            elif kind == "gossip":
                node = self.nodes[payload]  # type: ignore[index]
                self._gossip(node)
                self._push(self.now + self.config.gossip_interval_ms, "gossip", node.index)
        return SimResult(self.config, self.nodes, self.validator_set, self.now, self.events, self._done())


def run_cluster(config: SimConfig, core_factory: Callable[..., ConsensusCore] = ConsensusCore) -> SimResult:
    """Build a ``Cluster`` for ``config`` and run it."""
    return Cluster(config, core_factory).run()


def check_safety(result: SimResult) -> None:
    """Assert agreement (all honest nodes decided the same block at every height they decided),
    that every recorded certificate verifies for its block, that each honest chain links by parent
    hash, and that no honest node signed two different messages for one (height, round, step).
    Raises AssertionError (or InvalidCertificate) naming what broke."""
    by_height: dict[int, tuple[int, bytes]] = {}
    for node in result.honest:
        for height, decision in node.decisions.items():
            block_hash = decision.block.hash()
            verify_commit_certificate(
                decision.certificate, block_hash, CHAIN_ID, result.validator_set, height=height
            )
            first = by_height.setdefault(height, (node.index, block_hash))
            if first[1] != block_hash:
                raise AssertionError(
                    f"disagreement at height {height}: node {first[0]} decided {first[1].hex()[:16]}, "
                    f"node {node.index} decided {block_hash.hex()[:16]}"
                )
        signed: dict[tuple, object] = {}
        for messages in node.sent.values():
            for m in messages:
                if m.validator != node.id:
                    continue
                step = (type(m).__name__, m.height, m.round, getattr(m, "vote_type", None))
                previous = signed.setdefault(step, m)
                assert previous == m, f"node {node.index} signed two different messages for {step}"
        for height in node.decisions:
            if height > 1 and height - 1 in node.decisions:
                parent = node.decisions[height - 1].block.hash()
                assert node.decisions[height].block.header.prev_block_hash == parent, (
                    f"node {node.index}: block {height} does not extend block {height - 1}"
                )
