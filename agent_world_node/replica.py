"""The replica: one node's consensus, mempool, block store and execution, without I/O.

A ``Replica`` takes inputs (raw gossip messages, fired timers, synced blocks, client actions) and
returns outputs (``Publish`` a message, ``StartTimer``), like the consensus core it wraps (DESIGN.md,
"Layers": the same logic runs under the trio daemon and under the deterministic simulator). It has no
network, no timers and no clock of its own: the current time comes from ``now_ms``, used only to
stamp the blocks this node proposes.

Inside, synchronously: the core's ``PersistWAL`` entries are written to the store before the
``Publish`` that sends them is returned; a decided or verified peer block is stored, executed by the
``NodeRuntimeExecutionDriver``, announced with a ``GossipCommitMessage`` carrying this node's
execution hashes, and the next height starts after ``timeout_commit`` (a ``StartTimer("commit")``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import msgspec
import structlog

from agent_world_runtime import World
from agent_world_runtime.actions import (
    MAX_ACTION_PAYLOAD_BYTES,
    RegisterAgent,
    SignedAction,
    decode_signed_action,
    decode_signed_action_json,
    encode_signed_action,
    static_action_problem,
    verify_action_signature,
)
from agent_world_runtime.codec import DecodeError, decode, decode_json, encode
from agent_world_runtime.crypto import SigningKey, sha256
from agent_world_runtime.failpoints import failpoint
from agent_world_runtime.modules.sandbox import Sandbox

from . import config as cfg
from .consensus import (
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
    ValidatorSet,
    ValueToPropose,
    VoteReceived,
    verify_commit_certificate,
)
from .execution import NodeRuntimeExecutionDriver
from .mempool import Mempool, MempoolFull, VerifiedSignatureCache
from .metrics import NodeMetrics
from .store import NodeStore
from .types import (
    ZERO_HASH,
    Block,
    block_hash,
    BlockHeader,
    CommitCertificate,
    ExecutionHashes,
    GossipActionBatch,
    GossipCommitMessage,
    GossipMessage,
    GossipProposalMessage,
    GossipStatusMessage,
    GossipVoteMessage,
    Proposal,
    ReplicatedCommitPayload,
    Vote,
    compute_consensus_action_root,
)

log = structlog.get_logger(__name__)

MAX_GOSSIP_BYTES = 1_000_000
MAX_SYNC_PAYLOAD_BYTES = 64 * 1024 * 1024
MAX_BATCH_ACTIONS = 10_000
#: Most actions one ``POST /v1/actions/batch`` may carry.
MAX_SUBMIT_BATCH = 1_000


class SubmitBatch(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /v1/actions/batch``."""

    actions: list[SignedAction]


class WALError(RuntimeError):
    """The consensus WAL cannot be replayed safely; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Publish:
    """Send ``data`` (an encoded ``GossipMessage``) on the logical gossip ``topic``
    ("proposal", "vote", "commit", "actions" or "status")."""

    topic: str
    data: bytes


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Start a timer of ``duration_ms``. When it fires call ``handle_timeout(TimeoutFired(kind,
    height, round))`` for the consensus kinds ("propose", "prevote", "precommit"), or
    ``handle_commit_timer(height)`` for kind "commit"."""

    kind: str
    height: int
    round: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class Misbehaviour:
    """``peer`` sent something no correct node sends (``reason``: a key of
    ``network.peer_filter.PENALTY_POINTS``, e.g. "malformed", "bad_signature", "invalid_commit",
    "bad_sync_response"); the driver scores it, and a peer that keeps misbehaving is banned."""

    peer: str
    reason: str


@dataclass(frozen=True, slots=True)
class Divergence:
    """This node's execution disagrees with the quorum's: a block committed at ``height + 1``
    (certified by more than 2/3 of the stake, so checked by at least one correct validator)
    carries ``quorum_root`` as the execution state root of ``height``, and ours is ``our_root``."""

    height: int
    our_root: bytes
    quorum_root: bytes


Output = Publish | StartTimer | Misbehaviour

#: Consensus rejections that no correct node causes: the sender is scored for them.
_PUNISHED_REJECTIONS = {
    "bad_signature": "bad_signature",
    "unknown_validator": "unknown_validator",
    "wrong_proposer": "invalid_message",
    "bad_block": "invalid_message",
    "bad_block_hash": "invalid_message",
    "bad_round": "invalid_message",
    "bad_pol_round": "invalid_message",
}
DIVERGED_META_KEY = "execution_diverged"


@dataclass(frozen=True, slots=True)
class AdmissionResult:
    """The outcome of admitting one action. ``status``: accepted | duplicate | rejected | busy;
    ``code`` and ``reason`` say why a rejection or refusal happened."""

    status: str
    action_id: bytes = b""
    code: str = ""
    reason: str = ""
    retry_after_ms: int = 0


_REASON_CODES = (
    ("signature", "bad_signature"),
    ("unknown agent", "unknown_agent"),
    ("nonce", "nonce_replayed"),
    ("chain id", "wrong_chain"),
    ("already registered", "already_registered"),
    ("agent id", "bad_agent_id"),
)


def reason_code(reason: str) -> str:
    """Map a runtime admission reason to the API's error code."""
    low = reason.lower()
    for needle, code in _REASON_CODES:
        if needle in low:
            return code
    return "rejected"


def _publish(topic: str, message: Any) -> Publish:
    return Publish(topic, encode(message))


class Replica:
    """One node's replicated state machine (see the module docstring).

    Not thread-safe; every method runs to completion and returns the outputs to perform in order.
    """

    def __init__(
        self,
        *,
        genesis: cfg.Genesis,
        consensus: cfg.ConsensusConfig,
        validator_key: SigningKey | None,
        store: NodeStore,
        driver: NodeRuntimeExecutionDriver,
        mempool: Mempool,
        node_id: str,
        now_ms: Callable[[], int],
        metrics: NodeMetrics | None = None,
        core_factory: Callable[..., ConsensusCore] = ConsensusCore,
    ) -> None:
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.config = consensus
        self.store = store
        self.driver = driver
        self.mempool = mempool
        self.node_id = node_id
        self.now_ms = now_ms
        self.metrics = metrics or NodeMetrics()
        self.validator_set = ValidatorSet.from_genesis(genesis)
        self.validator_id = validator_key.public_key.hex() if validator_key else ""
        self.is_validator = self.validator_set.get(self.validator_id) is not None
        self.timeouts = TimeoutConfig.from_config(consensus)
        self.core = core_factory(
            chain_id=self.chain_id,
            validator_set=self.validator_set,
            signing_key=validator_key if self.is_validator else None,
            timeouts=self.timeouts,
            validate_block=self._validate_block,
        )
        # The committed tip is the executed tip: a block is stored before it is executed, and on
        # open the driver replays every stored block up to its last execution record.
        self.height = driver.last_height
        self.last_block_hash = store.block_hash(self.height) or ZERO_HASH
        last = store.get_block(self.height)
        self.last_block_time_ms = last.block.header.timestamp_ms if last else genesis.genesis_time_ms
        self.peer_heights: dict[str, int] = {}
        self.actions_committed = 0
        self.execution_mismatches = 0
        self.divergence: Divergence | None = None
        self.verified_signatures = VerifiedSignatureCache()
        self._certified_next = 0  # a height whose commit we saw verified but whose block we lack
        self._admitted_counters: dict[str, Any] = {}
        self._wal_written = True  # prune whatever a previous run left at the first commit
        self._pending_gossip: list[bytes] = []
        self.log = log.bind(node=node_id[:16])
        stored = store.get_meta(DIVERGED_META_KEY)
        if stored is not None:
            # Diverged before a restart: replaying the same blocks gives the same wrong roots, so
            # stay silent until the operator resyncs this home from peers.
            h, ours, quorum = decode(stored, tuple[int, bytes, bytes])
            self._enter_divergence(Divergence(h, ours, quorum), persist=False)

    @classmethod
    def open(
        cls,
        *,
        genesis: cfg.Genesis,
        consensus: cfg.ConsensusConfig,
        validator_key: SigningKey | None,
        store: NodeStore,
        snapshot_dir: Path,
        snapshot_interval: int,
        node_id: str,
        now_ms: Callable[[], int],
        mempool_size: int = 20_000,
        metrics: NodeMetrics | None = None,
        core_factory: Callable[..., ConsensusCore] = ConsensusCore,
        sandbox: Sandbox | None = None,
    ) -> "Replica":
        """Restore a replica from ``store`` (and the newest world snapshot under ``snapshot_dir``),
        replaying stored blocks up to the last execution record. ``sandbox`` runs the world's
        modules (default: the process-wide one, memory cache only). Raises ``ExecutionError`` when
        the stored state cannot be restored."""
        driver = NodeRuntimeExecutionDriver.open(
            store,
            lambda: World.from_genesis(genesis.chain_id, genesis.world, sandbox=sandbox),
            snapshot_dir,
            snapshot_interval,
            sandbox=sandbox,
        )
        return cls(
            genesis=genesis,
            consensus=consensus,
            validator_key=validator_key,
            store=store,
            driver=driver,
            mempool=Mempool(mempool_size),
            node_id=node_id,
            now_ms=now_ms,
            metrics=metrics,
            core_factory=core_factory,
        )

    @property
    def world(self) -> World:
        """The executed world."""
        return self.driver.world

    # -- inputs ---------------------------------------------------------------------------------
    def start(self) -> list[Output]:
        """Start the height after the committed tip. A validator that signed messages at that height
        before a restart (its WAL) resumes the round it was in, re-sending what it signed there
        instead of signing anything conflicting (``ConsensusCore.resume``).

        Raises ``WALError`` when the WAL holds messages this validator cannot have signed (a corrupt
        or foreign home): refusing to start is safer than risking a double-sign."""
        if self.core.height >= self.height + 1:
            return []
        height = self.height + 1
        signed = [decode(p, Proposal if k == "proposal" else Vote) for _r, k, p in self.store.wal_entries(height)]
        try:
            effects = self.core.resume(height, signed, self.validator_set)
        except ValueError as exc:
            raise WALError(
                f"the consensus WAL at height {height} cannot be replayed: {exc}; this home's WAL is corrupt "
                "or belongs to another validator key"
            ) from None
        if signed:
            self.log.info("resumed", height=height, round=self.core.round, wal_messages=len(signed))
        return self._perform(effects)

    def handle_gossip(self, data: bytes, peer: str) -> list[Output]:
        """Handle one raw gossip message from ``peer``. Malformed messages are counted and dropped."""
        try:
            msg = decode(data, GossipMessage, max_size=MAX_GOSSIP_BYTES)
        except DecodeError as exc:
            self.metrics.messages_dropped.labels("malformed").inc()
            self.log.warning("gossip_malformed", peer=peer, error=str(exc)[:200])
            return [Misbehaviour(peer, "malformed")]
        if isinstance(msg, GossipVoteMessage):
            self._note_peer_height(peer, msg.vote.height - 1)
            return self._judged(peer, VoteReceived(msg.vote))
        if isinstance(msg, GossipProposalMessage):
            self._note_peer_height(peer, msg.proposal.height - 1)
            return self._judged(peer, ProposalReceived(msg.proposal))
        if isinstance(msg, GossipCommitMessage):
            return self._on_commit_announcement(msg, peer)
        if isinstance(msg, GossipActionBatch):
            malformed = 0
            for payload in msg.payloads[:MAX_BATCH_ACTIONS]:
                try:
                    signed = decode_signed_action(payload)
                except DecodeError:
                    self.metrics.actions_refused.labels("malformed").inc()
                    malformed += 1
                    continue
                self.admit(payload, signed, source="gossip")
            return [Misbehaviour(peer, "malformed")] if malformed else []
        if isinstance(msg, GossipStatusMessage):
            self._note_peer_height(peer, msg.height)
        return []

    def handle_timeout(self, timeout: TimeoutFired) -> list[Output]:
        """A consensus timer fired."""
        return self._perform(self.core.handle(timeout))

    def handle_commit_timer(self, height: int) -> list[Output]:
        """The wait after committing ``height`` expired: start the next height."""
        if height != self.height:
            return []
        return self._perform(self._start_next_height())

    def handle_synced(self, payloads: list[bytes], peer: str) -> list[Output]:
        """Verify and commit blocks fetched by height from ``peer``, in order; stops at the first
        one that does not verify or extend our chain."""
        with self.store.relaxed_durability(), self.driver.batch():
            outputs = self._commit_synced(payloads, peer)
        if self.sync_target(set(self.peer_heights)) is None:
            outputs.extend(self._perform(self._start_next_height()))
        return outputs

    def _commit_synced(self, payloads: list[bytes], peer: str) -> list[Output]:
        outputs: list[Output] = []
        for raw in payloads:
            try:
                payload = decode(raw, ReplicatedCommitPayload, max_size=MAX_SYNC_PAYLOAD_BYTES)
            except DecodeError as exc:
                self.metrics.messages_dropped.labels("malformed").inc()
                self.log.warning("sync_malformed", peer=peer, error=str(exc)[:200])
                outputs.append(Misbehaviour(peer, "bad_sync_response"))
                break
            h = payload.block.header.height
            if h <= self.height:  # committed meanwhile from gossip
                continue
            if h != self.height + 1:
                break
            before = self.height
            outputs.extend(self._on_peer_commit(payload, peer, "sync"))
            if self.height == before:
                break
            self.metrics.blocks_synced.inc()
        return outputs

    # -- admission ------------------------------------------------------------------------------
    def admit_json(self, body: bytes) -> AdmissionResult:
        """Admit a JSON ``SignedAction`` from the HTTP API (see ``admit``)."""
        try:
            signed = decode_signed_action_json(body)
        except DecodeError as exc:
            self.metrics.actions_refused.labels("malformed").inc()
            return AdmissionResult(
                "rejected", code="malformed", reason=f"{exc}; send a JSON SignedAction {{body, signature}}"
            )
        return self.admit(encode_signed_action(signed), signed, source="api")

    def admit_batch_json(self, body: bytes) -> list[AdmissionResult]:
        """Admit each action of a JSON ``{"actions": [SignedAction, ...]}`` in order (see ``admit``).
        Raises ValueError (the message says what to send) when the body is not such a document or
        holds more than ``MAX_SUBMIT_BATCH`` actions; a single bad action is a "rejected" result."""
        try:
            batch = decode_json(body, SubmitBatch)
        except DecodeError as exc:
            self.metrics.actions_refused.labels("malformed").inc()
            raise ValueError(f'{exc}; send {{"actions": [SignedAction, ...]}}') from None
        if len(batch.actions) > MAX_SUBMIT_BATCH:
            raise ValueError(f"{len(batch.actions)} actions in one batch; send at most {MAX_SUBMIT_BATCH}")
        results = []
        for signed in batch.actions:
            problem = static_action_problem(signed)
            if problem is not None:
                self.metrics.actions_refused.labels("malformed").inc()
                results.append(AdmissionResult("rejected", code="malformed", reason=f"invalid SignedAction: {problem}"))
                continue
            results.append(self.admit(encode_signed_action(signed), signed, source="api"))
        return results

    def admit(self, payload: bytes, signed: SignedAction, source: str) -> AdmissionResult:
        """Check ``signed`` against the executed world (chain id, signature, agent, nonce) and add it
        to the mempool; actions from clients (``source`` "api") are queued for gossip. A verified
        signature is cached so validating a proposal carrying the action does not verify it again."""
        action_id = sha256(payload)
        if len(payload) > MAX_ACTION_PAYLOAD_BYTES:
            return self._refuse(action_id, "too_large", f"action of {len(payload)} bytes exceeds {MAX_ACTION_PAYLOAD_BYTES}")
        if action_id in self.mempool:
            return AdmissionResult("duplicate", action_id)
        reason = self.world.check_action(signed)
        if reason is not None:
            return self._refuse(action_id, reason_code(reason), reason)
        self.verified_signatures.add(action_id)
        try:
            self.mempool.add(payload, action_id, signed)
        except MempoolFull as exc:
            self.metrics.actions_refused.labels("mempool_full").inc()
            retry = max(200, 2 * self.config.timeout_commit_ms)
            return AdmissionResult("busy", action_id, code="mempool_full", reason=f"{exc}; retry later", retry_after_ms=retry)
        counter = self._admitted_counters.get(source)
        if counter is None:
            counter = self._admitted_counters[source] = self.metrics.actions_admitted.labels(source)
        counter.inc()
        if source == "api":
            self._pending_gossip.append(payload)
        return AdmissionResult("accepted", action_id)

    def _refuse(self, action_id: bytes, code: str, reason: str) -> AdmissionResult:
        self.metrics.actions_refused.labels(code).inc()
        return AdmissionResult("rejected", action_id, code=code, reason=reason)

    # -- periodic outputs the driver asks for -----------------------------------------------------
    def take_pending_action_gossip(self, max_bytes: int = MAX_GOSSIP_BYTES - 1024) -> Publish | None:
        """Return one batch of client actions admitted here and not yet gossiped, or None."""
        if not self._pending_gossip:
            return None
        pending = self._pending_gossip
        size, count = 0, 0
        while count < len(pending) and size + len(pending[count]) + 16 < max_bytes:
            size += len(pending[count]) + 16
            count += 1
        if count == 0:  # one payload alone exceeds the budget (cannot happen under the action limit)
            del pending[0]
            return None
        batch = pending[:count]
        del pending[:count]
        return _publish("actions", GossipActionBatch(batch))

    def status_message(self) -> Publish:
        """Our status heartbeat (committed height and execution root)."""
        return _publish("status", GossipStatusMessage(self.height, self.driver.last_height, self.driver.last_state_root))

    def height_messages_to_regossip(self) -> list[Publish]:
        """The current height's message log (proposals, votes, both halves of any equivocation), to
        re-send while a height stalls: Tendermint's liveness assumes every message a correct node
        holds eventually reaches every correct node, and gossipsub is best-effort.

        The commit of our last committed height comes first: a peer one height behind whose copy
        of that commit was lost cannot sync it (``sync_target`` waits for a gap of two) and may be
        the stake the stalled height needs; found by the simulator (issue 3)."""
        if self.core.height != self.height + 1:
            return []
        out = []
        last = self.store.get_block(self.height) if self.height > 0 else None
        if last is not None:
            out.append(_publish("commit", GossipCommitMessage(last.block.header, last.certificate, last.execution)))
        for msg in self.core.height_messages():
            if isinstance(msg, Proposal):
                out.append(_publish("proposal", GossipProposalMessage(msg)))
            else:
                out.append(_publish("vote", GossipVoteMessage(msg)))
        return out

    def serve_sync(self, from_height: int, to_height: int) -> list[bytes]:
        """Encoded ``ReplicatedCommitPayload``s of the committed heights ``from_height..to_height``."""
        out = []
        for h in range(max(1, from_height), min(to_height, self.height) + 1):
            stored = self.store.get_block(h)
            if stored is None:
                break
            out.append(encode(stored))
        return out

    def sync_target(self, connected: set[str]) -> tuple[str, int] | None:
        """The connected peer furthest ahead and its height, when it is more than one height ahead
        of us, or one height ahead with a verified commit of a block we never received (one height
        behind is otherwise normal and closed by gossip); else None."""
        best: tuple[int, str] | None = None
        floor = self.height + 1 if self._certified_next == self.height + 1 else self.height + 2
        for peer, h in self.peer_heights.items():
            if peer in connected and h >= floor and (best is None or (h, peer) > best):
                best = (h, peer)
        return (best[1], best[0]) if best else None

    def forget_peer_height(self, peer: str) -> None:
        """Drop what we believed about ``peer``'s height (e.g. after a failed sync)."""
        self.peer_heights.pop(peer, None)

    # -- block validity (the paper's valid(v)) --------------------------------------------------
    def _validate_block(self, block: Block) -> bool:
        """Return True iff ``block`` may be voted for at the current height: right chain and
        height, parent hash, epoch, monotonic time, recomputed action root, well-formed unique
        actions each validly signed (``_signer_key``; signatures this node verified before are
        cached), and the previous height's execution hashes equal to ours (DESIGN.md: a validator
        whose own root differs does not vote, and says so loudly)."""
        reason = self._block_problem(block)
        if reason is not None:
            self.log.warning("proposal_rejected", height=block.header.height, round=block.header.round, reason=reason)
            self.metrics.messages_dropped.labels("invalid_block").inc()
            return False
        return True

    def _block_problem(self, block: Block) -> str | None:
        h = block.header
        if h.chain_id != self.chain_id:
            return f"chain id {h.chain_id!r} is not {self.chain_id!r}"
        if h.height != self.height + 1:
            return f"height {h.height} is not the next height {self.height + 1}"
        if h.prev_block_hash != self.last_block_hash:
            return "previous block hash does not match our last committed block"
        if h.timestamp_ms < self.last_block_time_ms:
            return "timestamp earlier than the previous block"
        if h.epoch != h.height // self.genesis.epoch_length:
            return f"epoch {h.epoch} is not height // epoch_length"
        if len(block.actions) > self.config.max_block_actions:
            return f"{len(block.actions)} actions exceed max_block_actions"
        problem = _actions_problem(block)
        if problem is not None:
            return problem
        registered_here: dict[str, bytes] = {}
        verified = self.verified_signatures
        for act in block.actions:
            try:
                signed = decode_signed_action(act.payload)
            except DecodeError as exc:
                return f"action {act.action_id.hex()[:16]} is malformed: {exc}"
            if signed.body.agent_id != act.submitter:
                return f"action {act.action_id.hex()[:16]}: submitter is not the signing agent"
            key = self._signer_key(signed, registered_here)
            if act.action_id not in verified and key is not None:
                if not verify_action_signature(signed, key):
                    return f"action {act.action_id.hex()[:16]} has a bad signature"
                verified.add(act.action_id)
        if h.last_execution_height != self.driver.last_height:
            return f"carries execution height {h.last_execution_height}, ours is {self.driver.last_height}"
        if (h.last_execution_state_root, h.last_execution_block_hash) != (
            self.driver.last_state_root,
            self.driver.last_block_hash,
        ):
            self.metrics.execution_mismatches.inc()
            self.execution_mismatches += 1
            self.log.error(
                "execution_root_mismatch",
                height=h.last_execution_height,
                ours=self.driver.last_state_root.hex(),
                proposer=h.last_execution_state_root.hex(),
                proposer_id=h.proposer[:16],
            )
            return "execution state root of the previous height differs from ours"
        return None

    def _signer_key(self, signed: SignedAction, registered_here: dict[str, bytes]) -> bytes | None:
        """The public key ``signed`` must be signed with: a ``RegisterAgent``'s own key; else the
        agent's registered key (keys never change), or the key of its first ``RegisterAgent``
        earlier in the block; None for an agent nobody registered (execution rejects the action
        as from an unknown agent whatever its signature)."""
        body = signed.body
        if isinstance(body.action, RegisterAgent):
            registered_here.setdefault(body.agent_id, body.action.public_key)
            return body.action.public_key
        agent = self.world.get_agent(body.agent_id)
        return agent.public_key if agent is not None else registered_here.get(body.agent_id)

    def _build_block(self, height: int, round: int) -> Block:
        actions = self.mempool.reap(self.config.max_block_actions, self.config.max_block_bytes)
        header = BlockHeader(
            chain_id=self.chain_id,
            height=height,
            round=round,
            epoch=height // self.genesis.epoch_length,
            proposer=self.validator_id,
            prev_block_hash=self.last_block_hash,
            action_root=compute_consensus_action_root(actions),
            action_count=len(actions),
            last_execution_height=self.driver.last_height,
            last_execution_block_hash=self.driver.last_block_hash,
            last_execution_state_root=self.driver.last_state_root,
            timestamp_ms=max(self.now_ms(), self.last_block_time_ms),
        )
        return Block(header=header, actions=actions)

    # -- core effects ---------------------------------------------------------------------------
    def _start_next_height(self) -> list[Any]:
        """Move the core to the height after the committed tip (no-op when it is already there)."""
        if self.core.height >= self.height + 1:
            return []
        self.metrics.round.set(0)
        return self.core.start_height(self.height + 1, self.validator_set)

    def _perform(self, effects: list[Any]) -> list[Output]:
        outputs: list[Output] = []
        queue = list(effects)
        while queue:
            eff = queue.pop(0)
            if isinstance(eff, PersistWAL):
                msg = eff.entry
                if isinstance(msg, Proposal):
                    kind = "proposal"
                else:
                    kind = "prevote" if int(msg.vote_type) == 1 else "precommit"
                self.store.wal_append(msg.height, msg.round, kind, encode(msg))
                self._wal_written = True
            elif isinstance(eff, Broadcast):
                msg = eff.message
                if isinstance(msg, Proposal):
                    outputs.append(_publish("proposal", GossipProposalMessage(msg)))
                else:
                    outputs.append(_publish("vote", GossipVoteMessage(msg)))
            elif isinstance(eff, ScheduleTimeout):
                outputs.append(StartTimer(eff.kind, eff.height, eff.round, eff.duration_ms))
                self.metrics.round.set(eff.round)
            elif isinstance(eff, GetValue):
                block = self._build_block(eff.height, eff.round)
                queue.extend(self.core.handle(ValueToPropose(eff.height, eff.round, block)))
            elif isinstance(eff, Decide):
                if eff.block.header.height <= self.height:  # already committed from a peer's commit
                    queue.extend(self._start_next_height())
                    continue
                outputs.extend(self._commit(eff.block, eff.certificate, source="consensus"))
            elif isinstance(eff, EvidenceFound):
                ev = eff.evidence
                self.store.put_evidence(ev.height, type(ev).__name__, encode(ev))
                self.log.warning("equivocation_evidence", height=ev.height, validator=ev.validator[:16])
            else:
                raise TypeError(f"unknown consensus effect {type(eff).__name__}")
        return outputs

    def _commit(self, block: Block, certificate: CommitCertificate, source: str) -> list[Output]:
        """Persist, execute and announce a committed block; advance the tip. Returns the commit
        announcement (not for synced blocks) and the commit-wait timer."""
        hdr = block.header
        self._check_quorum_execution(block)
        self.store.put_block(block, certificate)
        failpoint("commit.after_put_block")
        result = self.driver.on_commit(self.driver.context_for(block, self.chain_id, self.node_id, hdr.epoch))
        failpoint("commit.after_execute")
        self.height = hdr.height
        self.last_block_hash = block.hash()
        self.last_block_time_ms = hdr.timestamp_ms
        self.mempool.remove([a.action_id for a in block.actions])
        self.mempool.drop_stale(self._last_nonce_of)
        if self._wal_written:  # a synced or observed height signed nothing: no write, no fsync
            self.store.wal_prune(hdr.height)
            self._wal_written = False
        self.actions_committed += len(block.actions)
        m = self.metrics
        m.height.set(self.height)
        m.execution_height.set(result.execution_height)
        m.blocks_committed.inc()
        m.actions_committed.inc(len(block.actions))
        m.mempool_size.set(len(self.mempool))
        self.log.info(
            "block_committed",
            height=hdr.height,
            round=hdr.round,
            actions=len(block.actions),
            state_root=result.execution_state_root.hex()[:16],
            source=source,
        )
        if source == "sync":
            return []
        hashes = ExecutionHashes(result.execution_height, result.execution_block_hash, result.execution_state_root)
        return [
            _publish("commit", GossipCommitMessage(block.header, certificate, hashes)),
            StartTimer("commit", hdr.height, hdr.round, self.timeouts.commit_ms),
        ]

    def _last_nonce_of(self, agent_id: str) -> int | None:
        agent = self.world.get_agent(agent_id)
        return agent.last_nonce if agent is not None else None

    def _on_commit_announcement(self, msg: GossipCommitMessage, peer: str) -> list[Output]:
        """A peer's commit announcement (header, certificate, its execution hashes). For our next
        height, commit the proposal's block if we hold it; if we do not, and the certificate
        verifies, wait for sync to fetch the block (``sync_target``)."""
        header, cert = msg.header, msg.certificate
        h = header.height
        if cert.height != h or cert.block_hash != block_hash(header):
            self.metrics.messages_dropped.labels("invalid_commit").inc()
            return [Misbehaviour(peer, "invalid_commit")]
        if h != self.height + 1:
            self._note_peer_height(peer, h)
            if h <= self.height:
                self.metrics.messages_dropped.labels("stale_commit").inc()
                self._compare_execution(msg.execution, peer)
            return []
        block = self.core.known_block(cert.block_hash)
        if block is not None:
            return self._on_peer_commit(ReplicatedCommitPayload(block, cert, msg.execution), peer, "gossip")
        try:
            verify_commit_certificate(cert, cert.block_hash, self.chain_id, self.validator_set)
        except InvalidCertificate as exc:
            self.metrics.messages_dropped.labels("invalid_commit").inc()
            self.log.warning("peer_commit_rejected", height=h, peer=peer, source="gossip", reason=str(exc))
            return [Misbehaviour(peer, "invalid_commit")]
        self._note_peer_height(peer, h)
        self._certified_next = h
        return []

    def _on_peer_commit(self, payload: ReplicatedCommitPayload, peer: str, source: str) -> list[Output]:
        """A committed block from a peer: compare execution hashes for a height we have, commit it
        when it is our next height (certificate and action root verified), or note that we are
        behind (the driver then syncs)."""
        block, cert = payload.block, payload.certificate
        h = block.header.height
        self._note_peer_height(peer, h)
        if h <= self.height:
            self._compare_execution(payload.execution, peer)
            return []
        if h > self.height + 1:
            return []
        problem, punish = self._commit_problem(block, cert)
        if problem is not None:
            self.metrics.messages_dropped.labels("invalid_commit").inc()
            self.log.warning("peer_commit_rejected", height=h, peer=peer, source=source, reason=problem)
            if not punish:
                return []
            return [Misbehaviour(peer, "bad_sync_response" if source == "sync" else "invalid_commit")]
        outputs = self._commit(block, cert, source=source)
        self._compare_execution(payload.execution, peer)
        return outputs

    def _commit_problem(self, block: Block, cert: CommitCertificate) -> tuple[str | None, bool]:
        """Why a peer's committed block cannot be committed here (None if it can), and whether
        that is the sender's fault (a forged certificate or actions) rather than ours."""
        h = block.header
        if cert.height != h.height or cert.block_hash != block.hash():
            return "certificate is for another block", True
        try:
            verify_commit_certificate(cert, block.hash(), self.chain_id, self.validator_set)
        except InvalidCertificate as exc:
            return f"invalid commit certificate: {exc}", True
        problem = _actions_problem(block)
        if problem is not None:
            return problem, True
        if h.chain_id != self.chain_id or h.prev_block_hash != self.last_block_hash:
            # certified by the quorum but not on our chain: our store is the odd one out
            return "block does not extend our chain", False
        return None, False

    def _compare_execution(self, theirs: ExecutionHashes | None, peer: str) -> None:
        if theirs is None:
            return
        ours = self.store.get_execution(theirs.execution_height)
        if ours is None:
            return
        if (ours.execution_state_root, ours.execution_block_hash) != (
            theirs.execution_state_root,
            theirs.execution_block_hash,
        ):
            self.metrics.execution_mismatches.inc()
            self.execution_mismatches += 1
            self.log.error(
                "peer_execution_mismatch",
                height=theirs.execution_height,
                peer=peer,
                ours=ours.execution_state_root.hex(),
                theirs=theirs.execution_state_root.hex(),
            )

    def _judged(self, peer: str, inp: VoteReceived | ProposalReceived) -> list[Output]:
        """Hand a vote or proposal to the core; a rejection no correct node causes (forged
        signature, unknown validator, misshapen message) is reported as the sender's misbehaviour.
        ``peer`` is the pubsub origin, authenticated by pubsub's strict signing."""
        message = inp.vote if isinstance(inp, VoteReceived) else inp.proposal
        effects = self.core.handle(inp)
        # Only the rejection of this very message is the sender's fault: the same call may replay
        # buffered messages of the next height, sent by others (found by the simulator).
        blamed = [_PUNISHED_REJECTIONS[r] for r, m in self.core.last_rejections if m is message and r in _PUNISHED_REJECTIONS]
        outputs = self._perform(effects)
        outputs.extend(Misbehaviour(peer, reason) for reason in blamed)
        return outputs

    def _check_quorum_execution(self, block: Block) -> None:
        """Compare the execution root a committed block carries for the previous height with ours.
        The block is certified by more than 2/3 of the stake, and correct validators prevote only
        for blocks whose execution root equals their own (``_block_problem``), so a difference
        means this node's execution diverged: it stops signing (DESIGN.md, "Execution")."""
        h = block.header
        if self.divergence is not None or h.last_execution_height != self.driver.last_height:
            return
        if h.last_execution_state_root == self.driver.last_state_root:
            return
        self._enter_divergence(
            Divergence(h.last_execution_height, self.driver.last_state_root, h.last_execution_state_root)
        )

    def _enter_divergence(self, d: Divergence, persist: bool = True) -> None:
        self.divergence = d
        self.core.stop_signing()
        self.metrics.execution_diverged.set(1)
        if persist:
            self.store.set_meta(DIVERGED_META_KEY, encode((d.height, d.our_root, d.quorum_root)))
        self.log.error(
            "execution_diverged",
            height=d.height,
            ours=d.our_root.hex(),
            quorum=d.quorum_root.hex(),
            action="this validator stopped signing; stop the node, move its data directory away and "
            "restart it to resync from peers, then report the two roots",
        )

    def _note_peer_height(self, peer: str, height: int) -> None:
        if height > self.peer_heights.get(peer, -1):
            self.peer_heights[peer] = height


def _actions_problem(block: Block) -> str | None:
    """Check that ``block``'s actions match its header: count, action root, payload hashes and
    action ids, and no action twice."""
    h = block.header
    if h.action_count != len(block.actions):
        return f"action_count {h.action_count} but {len(block.actions)} actions"
    if compute_consensus_action_root(block.actions) != h.action_root:
        return "action root does not match the actions"
    seen: set[bytes] = set()
    for act in block.actions:
        if act.payload_hash != sha256(act.payload) or act.action_id != act.payload_hash:
            return f"action {act.action_id.hex()[:16]}: payload hash or action id is not sha256(payload)"
        if act.action_id in seen:
            return f"action {act.action_id.hex()[:16]} appears twice"
        seen.add(act.action_id)
    return None
