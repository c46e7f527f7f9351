"""The properties every simulated scenario is checked against, and the record they are checked on.

``PropertyChecker`` is fed by the cluster as the run goes (every commit of every node, every
consensus message an honest validator publishes) and at the end (every node's store); it keeps the
violations it finds. The properties (Tendermint's safety and liveness, plus the execution and
robustness guarantees of docs/architecture.md, "Invariants"):

- ``agreement``: no two honest nodes commit different blocks at one height, and no honest node
  commits two different blocks at one height (e.g. across a crash and restart).
- ``validity``: every committed block's header, action root (recomputed over the payload hashes,
  each ``sha256(payload)``) and commit certificate (``verify_commit_certificate``: more than 2/3
  of the stake of the validator set in force at its height, valid signatures) verify; every block
  extends the one below it; every committed action was submitted by a simulated client and appears
  once in the chain. The set of each height comes from the checker's own replay of the agreed
  chain from genesis (the reference), never from a node: a node that judged a height with the
  set of another epoch is caught.
- ``execution_agreement``: honest nodes have the same execution state root and execution block
  hash at every height, equal to those of a fresh replay of the agreed chain from genesis.
- ``double_sign``: no honest validator ever signed two different votes for one (height, round,
  type) or two different proposals for one (height, round): checked over every message it
  published and every WAL entry it ever made durable, across crashes; and no stored evidence
  accuses an honest validator.
- ``liveness``: after ``heal_at`` every honest node commits a new height within
  ``PROGRESS_BOUND_MS`` and reaches the target height within the scenario's liveness bound.
- ``robustness``: no input makes a replica raise (nothing hostile crashes a node), and no honest
  node reports another honest node as misbehaving (checked by the cluster), also when the other
  node's clock is skewed and its proposals are untimely.
- ``block_time`` (proposer-based timestamps, docs/design-choices.md, "Block time"): when a height is
  first committed at virtual time T, its block time t satisfies
  ``t <= max(synchronized clocks at T) + precision`` and
  ``t >= min(synchronized clocks at S) - precision - message_delay``, where the synchronized clocks
  are those of the honest nodes without a scenario clock skew and S is when an honest node first saw
  a proposal of the block. Both follow from PBTS: a committed block had a first polka, in which
  correct validators with synchronized clocks found it timely on reception (at some time >= S and
  <= T). The lower bound is the timely predicate's own (a value locked early may be decided many
  rounds later with its original time, so ``min clock at T - precision`` is no guarantee).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent_world_runtime import World
from agent_world_runtime.codec import DecodeError, decode
from agent_world_runtime.crypto import sha256

from ..config import Genesis
from ..consensus import InvalidCertificate, verify_commit_certificate
from ..consensus.evidence import DuplicateProposalEvidence, DuplicateVoteEvidence
from ..execution import NodeRuntimeExecutionDriver
from ..replica.sets import ValidatorSets
from ..store import ExecutionRecord, NodeStore
from ..types import Block, CommitCertificate, Proposal, Vote, VoteType, compute_consensus_action_root

PROPERTIES = ("agreement", "validity", "execution_agreement", "double_sign", "liveness", "robustness", "block_time")


@dataclass(frozen=True, slots=True)
class Violation:
    """A property that failed: which, where (height, nodes), when (virtual ms) and why."""

    property: str
    detail: str
    height: int | None = None
    nodes: tuple[str, ...] = ()
    time_ms: int = 0

    def __str__(self) -> str:
        where = f" height={self.height}" if self.height is not None else ""
        who = f" nodes={','.join(self.nodes)}" if self.nodes else ""
        return f"[{self.property}]{where}{who} t={self.time_ms}ms: {self.detail}"


@dataclass(slots=True)
class CommitInfo:
    """The first honest commit of a height: who, when, and the block."""

    node: str
    time_ms: int
    block: Block
    certificate: CommitCertificate


def _message_kind(message: Proposal | Vote) -> str:
    if isinstance(message, Proposal):
        return "proposal"
    return "prevote" if message.vote_type == VoteType.PREVOTE else "precommit"


class PropertyChecker:
    """Collects observations of one run and checks the properties of the module docstring.

    ``honest`` are the names of honest nodes, ``honest_validators`` their validator ids,
    ``submitted`` the action ids clients submitted (shared with the client population, so it grows
    during the run).
    """

    def __init__(
        self,
        genesis: Genesis,
        honest: set[str],
        honest_validators: set[str],
        submitted: dict[bytes, str],
    ) -> None:
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.honest = honest
        self.honest_validators = honest_validators
        self.submitted = submitted
        self.chain: dict[int, bytes] = {}
        self.first_commit: dict[int, CommitInfo] = {}
        self.commits: dict[str, dict[int, bytes]] = {name: {} for name in honest}
        self.commit_times: dict[str, list[tuple[int, int]]] = {name: [] for name in honest}
        self.executions: dict[int, tuple[bytes, bytes, str]] = {}
        self.action_heights: dict[bytes, int] = {}
        self.signed: dict[tuple[str, int, int, str], tuple[bytes, str, str]] = {}
        self.violations: list[Violation] = []
        self._validated: set[bytes] = set()
        #: The clocks (Unix ms) of the honest nodes without a scenario skew, read now; set by the
        #: cluster. None: no clocks are modelled and ``block_time`` is not checked.
        self.synchronized_clocks: Callable[[], list[int]] | None = None
        self.first_seen: dict[bytes, tuple[int, int]] = {}  # block hash -> (virtual ms, min synchronized clock)
        # The reference: the agreed chain executed from genesis as its heights are first committed,
        # the source of each height's validator set. Its snapshot directory is never written
        # (interval 10**9, no state-sync archive).
        self._ref_store = NodeStore(":memory:")
        self._ref = NodeRuntimeExecutionDriver.open(
            self._ref_store, lambda: genesis.new_world(), Path(tempfile.gettempdir()) / "aw-sim-reference-unused", 10**9)
        self._ref_sets = ValidatorSets(lambda: self._ref.world)
        self._deferred: dict[int, tuple[str, Block, CommitCertificate, int]] = {}  # height -> certificate to check
        self._set_hashes: set[bytes] = set()

    def fail(self, prop: str, detail: str, *, height: int | None = None, nodes: tuple[str, ...] = (), now: int = 0) -> None:
        """Record a violation of ``prop``."""
        self.violations.append(Violation(prop, detail, height, nodes, now))

    # -- observations during the run --------------------------------------------------------------
    def on_proposal_seen(self, block_hash: bytes, now: int) -> None:
        """An honest node published or received a proposal of block ``block_hash`` at ``now``."""
        if block_hash in self.first_seen or self.synchronized_clocks is None:
            return
        clocks = self.synchronized_clocks()
        if clocks:
            self.first_seen[block_hash] = (now, min(clocks))

    def on_commit(
        self, node: str, height: int, block: Block, certificate: CommitCertificate,
        record: ExecutionRecord | None, now: int,
    ) -> None:
        """Node ``node`` committed ``block`` at ``height`` (and executed it into ``record``)."""
        if node not in self.honest:
            return
        bh = block.hash()
        mine = self.commits[node]
        if mine.get(height, bh) != bh:
            self.fail("agreement", f"committed block {bh.hex()[:16]} after having committed {mine[height].hex()[:16]}",
                      height=height, nodes=(node,), now=now)
        mine[height] = bh
        self.commit_times[node].append((now, height))
        agreed = self.chain.get(height)
        if agreed is None:
            self.chain[height] = bh
            self.first_commit[height] = CommitInfo(node, now, block, certificate)
            self._check_block_time(node, height, block, now)
        elif agreed != bh:
            first = self.first_commit[height].node
            self.fail("agreement", f"{first} committed {agreed.hex()[:16]}, {node} committed {bh.hex()[:16]}",
                      height=height, nodes=(first, node), now=now)
        if bh not in self._validated:
            self._validated.add(bh)
            self._check_block(node, height, block, certificate, now)
        if record is None:
            self.fail("execution_agreement", "committed block has no execution record", height=height, nodes=(node,), now=now)
        else:
            self._check_execution(node, record, now)

    def _check_block_time(self, node: str, height: int, block: Block, now: int) -> None:
        """The ``block_time`` property (module docstring) for the first commit of ``height``."""
        if self.synchronized_clocks is None:
            return
        clocks = self.synchronized_clocks()
        if not clocks:
            return
        sync = self.genesis.synchrony
        t = block.header.timestamp_ms
        where = dict(height=height, nodes=(node,), now=now)
        latest = max(clocks) + sync.precision_ms
        if t > latest:
            self.fail("block_time", f"block time {t} is {t - max(clocks)} ms ahead of every synchronized honest "
                      f"clock (at most precision {sync.precision_ms} ms allowed)", **where)
        # Not seen before: decided in the very step that proposed it (a proposer holding more
        # than 2/3 of the stake, its gossip lost in a crash), so the commit is the first sight.
        seen = self.first_seen.setdefault(block.hash(), (now, min(clocks)))
        earliest = seen[1] - sync.precision_ms - sync.message_delay_ms
        if t < earliest:
            self.fail("block_time", f"block time {t} is {seen[1] - t} ms behind every synchronized honest clock "
                      f"when the block was first seen at {seen[0]} ms (at most precision + message delay "
                      f"{sync.precision_ms + sync.message_delay_ms} ms allowed)", **where)

    def _check_execution(self, node: str, record: ExecutionRecord, now: int) -> None:
        seen = self.executions.get(record.height)
        mine = (record.execution_state_root, record.execution_block_hash)
        if seen is None:
            self.executions[record.height] = (*mine, node)
        elif seen[:2] != mine:
            self.fail("execution_agreement",
                      f"state root {record.execution_state_root.hex()[:16]} differs from {seen[2]}'s {seen[0].hex()[:16]}",
                      height=record.height, nodes=(seen[2], node), now=now)

    def _check_block(self, node: str, height: int, block: Block, cert: CommitCertificate, now: int) -> None:
        hdr = block.header
        where = dict(height=height, nodes=(node,), now=now)
        if hdr.chain_id != self.chain_id or hdr.height != height:
            self.fail("validity", f"header says chain {hdr.chain_id!r} height {hdr.height}", **where)
        self._advance_reference(height)
        if self._ref.last_height == height - 1:
            self._check_certificate(node, height, block, cert, now)
        else:  # an earlier height is not agreed yet: checked once it is
            self._deferred.setdefault(height, (node, block, cert, now))
        if hdr.action_count != len(block.actions) or hdr.action_root != compute_consensus_action_root(block.actions):
            self.fail("validity", "action root or count does not match the block's actions", **where)
        parent = self.chain.get(height - 1) if height > 1 else None
        if parent is not None and hdr.prev_block_hash != parent:
            self.fail("validity", f"block does not extend the committed block of height {height - 1}", **where)
        for act in block.actions:
            if act.payload_hash != sha256(act.payload) or act.action_id != act.payload_hash:
                self.fail("validity", f"action {act.action_id.hex()[:16]}: id or payload hash is not sha256(payload)", **where)
            if act.action_id not in self.submitted:
                self.fail("validity", f"action {act.action_id.hex()[:16]} was never submitted by a client", **where)
            earlier = self.action_heights.get(act.action_id)
            if earlier is not None:
                self.fail("validity", f"action {act.action_id.hex()[:16]} was already committed at height {earlier}", **where)
            self.action_heights[act.action_id] = height

    def _check_certificate(self, node: str, height: int, block: Block, cert: CommitCertificate, now: int) -> None:
        """``validity`` of a certificate, with the reference's set of ``height`` (the reference has
        executed ``height - 1``)."""
        where = dict(height=height, nodes=(node,), now=now)
        vset = self._ref_sets.at(height)
        if vset is None:
            self.fail("validity", "the reference knows no validator set for this height", **where)
            return
        digest = self._ref_sets.hash_at(height)
        if digest is not None:
            self._set_hashes.add(digest)
        if block.header.validators_hash != digest:
            self.fail("validity", "the header's validators_hash is not the reference's set of this height", **where)
        try:
            verify_commit_certificate(cert, block.hash(), self.chain_id, vset, height=height)
        except InvalidCertificate as exc:
            self.fail("validity", f"commit certificate does not verify: {exc}", **where)

    def _advance_reference(self, below: int) -> None:
        """Execute the agreed heights the reference has not, up to ``below - 1``, checking each
        deferred certificate when its height is next."""
        while self._ref.last_height + 1 < below and self._ref.last_height + 1 in self.first_commit:
            h = self._ref.last_height + 1
            deferred = self._deferred.pop(h, None)
            if deferred is not None:
                self._check_certificate(deferred[0], h, deferred[1], deferred[2], deferred[3])
            block = self.first_commit[h].block
            self._ref.on_commit(self._ref.context_for(block, self.chain_id, "reference", block.header.epoch))

    @property
    def reference_world(self) -> World:
        """The world of the reference replay (the agreed chain executed from genesis)."""
        return self._ref.world

    @property
    def distinct_sets(self) -> int:
        """How many different validator sets certified the heights checked so far."""
        return len(self._set_hashes)

    def on_signed(self, node: str, message: Proposal | Vote, source: str, now: int) -> None:
        """An honest node published (``source`` "publish") or made durable (``source`` "wal") a
        consensus message; two different ones for one step are a double sign."""
        if message.validator not in self.honest_validators:
            return
        key = (message.validator, message.height, message.round, _message_kind(message))
        sign_bytes = message.sign_bytes(self.chain_id)
        seen = self.signed.get(key)
        if seen is None:
            self.signed[key] = (sign_bytes, node, source)
        elif seen[0] != sign_bytes:
            self.fail("double_sign",
                      f"validator {message.validator[:12]} signed two different {key[3]}s for round {message.round} "
                      f"({seen[2]} on {seen[1]}, {source} on {node})",
                      height=message.height, nodes=(seen[1], node), now=now)

    def on_exception(self, node: str, what: str, exc: BaseException, now: int) -> None:
        """A replica raised while handling ``what``."""
        self.fail("robustness", f"replica raised {type(exc).__name__}: {exc} while handling {what}", nodes=(node,), now=now)

    # -- checks at the end ------------------------------------------------------------------------
    def check_store(self, node: str, store: NodeStore, wal_history: list[tuple[int, int, str, bytes]], now: int) -> None:
        """Check an honest node's store: its blocks and execution records against the agreed
        chain, its WAL history for double signs, its evidence for accusations of honest validators."""
        for h in range(1, store.last_block_height() + 1):
            bh = store.block_hash(h)
            if bh is not None and self.chain.get(h, bh) != bh:
                self.fail("agreement", f"stored block {bh.hex()[:16]} is not the committed {self.chain[h].hex()[:16]}",
                          height=h, nodes=(node,), now=now)
            record = store.get_execution(h)
            if record is not None:
                self._check_execution(node, record, now)
        for _height, _round, kind, payload in wal_history:
            try:
                message = decode(payload, Proposal if kind == "proposal" else Vote)
            except DecodeError as exc:
                self.fail("double_sign", f"unreadable WAL entry: {exc}", nodes=(node,), now=now)
                continue
            self.on_signed(node, message, "wal", now)
        for height, _kind, payload in store.evidence(limit=1_000_000):
            try:
                ev = decode(payload, DuplicateVoteEvidence | DuplicateProposalEvidence)
            except DecodeError:
                continue
            if ev.validator in self.honest_validators:
                self.fail("double_sign", f"stored evidence accuses honest validator {ev.validator[:12]}",
                          height=height, nodes=(node,), now=now)

    def check_chain(self, now: int) -> None:
        """Check that the agreed chain links by parent hash and that the reference (a fresh replay
        of it from genesis) gives every height's agreed execution roots; check the certificates
        still deferred. Call once, at the end (it closes the reference)."""
        heights = sorted(self.chain)
        for h in heights:
            if h > 1 and h - 1 in self.chain:
                if self.first_commit[h].block.header.prev_block_hash != self.chain[h - 1]:
                    self.fail("validity", f"block does not extend the committed block of height {h - 1}", height=h, now=now)
        try:
            self._advance_reference(max(heights, default=0) + 2)
            for h in heights:
                record = self._ref_store.get_execution(h)
                if record is None:
                    break
                agreed = self.executions.get(h)
                if agreed is not None and agreed[:2] != (record.execution_state_root, record.execution_block_hash):
                    self.fail("execution_agreement",
                              f"nodes' state root {agreed[0].hex()[:16]} differs from a fresh replay's "
                              f"{record.execution_state_root.hex()[:16]}", height=h, now=now)
        finally:
            self._ref_store.close()

    def check_liveness(self, heights: dict[str, int], heights_at_heal: dict[str, int], target: int, heal_at: int,
                       progress_bound: int, deadline: int, now: int) -> None:
        """Every honest node reached ``target`` by ``deadline``, and every honest node below
        ``target`` when the network healed (``heights_at_heal``) committed a new height within
        ``progress_bound`` ms after ``heal_at``."""
        for node in sorted(self.honest):
            if heights.get(node, 0) < target:
                self.fail("liveness", f"reached height {heights.get(node, 0)} of {target} by {now} ms "
                          f"(healed at {heal_at} ms, bound {deadline} ms)", nodes=(node,), now=now)
            if heights_at_heal.get(node, 0) >= target:
                continue
            after = [t for t, _ in self.commit_times[node] if t >= heal_at]
            if not after or after[0] > heal_at + progress_bound:
                self.fail("liveness", f"no new height within {progress_bound} ms after the network healed at "
                          f"{heal_at} ms (first commit after: {after[0] if after else None})", nodes=(node,), now=now)
