"""The replica: one node's consensus, mempool, block store and execution, without I/O.

A ``Replica`` takes inputs (raw gossip messages, fired timers, fetched blocks, client actions, the
periodic ``tick``) and returns outputs (``replica.outputs``). The same object runs under the trio
daemon and under the deterministic simulator, with the same policy (``config.PolicyConfig``), so
the simulator tests what production runs. It has no network, no timers and no clock of its own: the
``now_ms`` given to ``tick`` paces periodic duties, and ``now_ms()`` stamps the blocks this node
proposes and judges whether a proposal that arrives is *timely* (proposer-based timestamps, CometBFT
PBTS: ``consensus.synchrony.timely`` with the genesis ``SynchronyParams``, handed to the core as
``ProposalReceived.timely``; docs/design-choices.md, "Block time"). valid(v) itself never reads
the clock.

What each part handles (docs/architecture.md, "The path of one action"):

- ``admission``: client and gossiped actions into the mempool, typed refusals, action gossip;
- ``validity``: the paper's valid(v), answered to the core's ``ValidateBlock``;
- ``execution_check``: every comparison of execution roots, and divergence;
- ``sync``: peer heights, the sync target and the one fetch in flight;
- ``policy``: when the status heartbeat and re-gossip are due;
- ``wal``: the consensus WAL's entries;
- this module: dispatch of inputs, the core's effects, commit and execution.

Inside, synchronously: the core's ``PersistWAL`` entries are written to the store before the
``Publish`` that sends them is returned; a decided or verified peer block is stored, executed by the
``NodeRuntimeExecutionDriver``, announced with a ``GossipCommitMessage`` carrying this node's
execution hashes, and the next height starts after ``timeout_commit`` (``StartCommitWait``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import structlog

from agent_world_runtime import World
from agent_world_runtime.actions import SignedAction
from agent_world_runtime.codec import DecodeError, decode, encode
from agent_world_runtime.crypto import SigningKey
from agent_world_runtime.failpoints import failpoint
from agent_world_runtime.modules.sandbox import Sandbox

from .. import config as cfg
from ..consensus import (
    BlockValidity as BlockValidityInput,
)
from ..consensus import (
    Broadcast,
    ConsensusCore,
    Decide,
    Effect,
    EvidenceFound,
    GetValue,
    InvalidCertificate,
    PersistWAL,
    ProposalReceived,
    RejectReason,
    ScheduleTimeout,
    TimeoutConfig,
    TimeoutFired,
    ValidateBlock,
    ValidatorSet,
    ValueToPropose,
    VoteReceived,
    untimely_reason,
    verify_commit_certificate,
)
from ..consensus.privval import MemorySignState, PrivValidator, SignStateStore
from ..execution import NodeRuntimeExecutionDriver
from ..mempool import Mempool
from ..metrics import NodeMetrics
from ..store import NodeStore
from ..types import (
    ZERO_HASH,
    Block,
    BlockHeader,
    CommitCertificate,
    ExecutionHashes,
    GossipActionBatch,
    GossipCommitMessage,
    GossipMessage,
    GossipProposalMessage,
    GossipStatusMessage,
    GossipVoteMessage,
    NodeConsensusAction,
    Offence,
    Proposal,
    ReplicatedCommitPayload,
    Topic,
    Vote,
    block_body_hashes,
    block_hash,
    block_shape_problem,
    compute_consensus_action_root,
)
from .admission import ActionDecoder, ActionSource, Admission, AdmissionResult
from .builds import BuildDuty
from .evidence import BlockEvidence
from .execution_check import Divergence, ExecutionCheck
from .intake import IntakeControl
from .outputs import FetchBlocks, Misbehaviour, Output, Publish, StartCommitWait, StartTimer
from .policy import PolicyClock
from .sets import ValidatorSets
from .sync import SyncState
from .validity import BlockValidity
from .wal import WALError, decode_wal_entries, wal_entry

log = structlog.get_logger(__name__)

#: The smallest backlog clients may always fill (actions); the intake floor is a tenth of a full
#: block, at least this.
MIN_INTAKE_FLOOR = 100

#: Largest gossip message a node accepts or sends (bytes).
MAX_GOSSIP_BYTES = 1_000_000
#: How often (tick-clock ms) ``Replica.tick`` logs the ``heights_committed`` summary.
SUMMARY_INTERVAL_MS = 30_000
#: Largest vote-topic message ``screen_gossip`` decodes (a vote message is about 250 bytes; a
#: larger one passes the screen and is judged by ``handle_gossip``).
MAX_VOTE_GOSSIP_BYTES = 4096
#: Largest encoded ``ReplicatedCommitPayload`` accepted from sync (bytes).
MAX_SYNC_PAYLOAD_BYTES = 64 * 1024 * 1024
#: Meta key of the persisted divergence (a diverged validator stays silent across restarts).
DIVERGED_META_KEY = "execution_diverged"

#: Core rejections that no correct node causes, and the offence the sender is scored for.
_PUNISHED_REJECTIONS = {
    RejectReason.BAD_SIGNATURE: Offence.BAD_SIGNATURE,
    RejectReason.UNKNOWN_VALIDATOR: Offence.UNKNOWN_VALIDATOR,
    RejectReason.WRONG_PROPOSER: Offence.INVALID_MESSAGE,
    RejectReason.BAD_BLOCK: Offence.INVALID_MESSAGE,
    RejectReason.BAD_BLOCK_HASH: Offence.INVALID_MESSAGE,
    RejectReason.BAD_ROUND: Offence.INVALID_MESSAGE,
    RejectReason.BAD_POL_ROUND: Offence.INVALID_MESSAGE,
}


def _publish(topic: Topic, message: Any) -> Publish:
    return Publish(topic, encode(message))


def _publish_signed(message: Proposal | Vote) -> Publish:
    if isinstance(message, Proposal):
        return _publish(Topic.PROPOSAL, GossipProposalMessage(message))
    return _publish(Topic.VOTE, GossipVoteMessage(message))


class Replica:
    """One node's replicated state machine (see the module docstring).

    Not thread-safe; every method runs to completion and returns the outputs to perform in order.
    """

    def __init__(
        self,
        *,
        genesis: cfg.Genesis,
        consensus: cfg.ConsensusConfig,
        policy: cfg.PolicyConfig,
        validator_key: SigningKey | None,
        store: NodeStore,
        driver: NodeRuntimeExecutionDriver,
        mempool: Mempool,
        node_id: str,
        now_ms: Callable[[], int],
        metrics: NodeMetrics | None = None,
        core_factory: Callable[..., ConsensusCore] = ConsensusCore,
        target_queue_ms: int = cfg.MempoolConfig().target_queue_ms,
        sign_state: SignStateStore | None = None,
    ) -> None:
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.config = consensus
        self.policy = policy
        self.store = store
        self.driver = driver
        self.mempool = mempool
        self.node_id = node_id
        self.now_ms = now_ms
        self.metrics = metrics or NodeMetrics()
        #: the validator set in force at each height, from the executed world (``replica.sets``)
        self.sets = ValidatorSets(lambda: self.driver.world)
        self.validator_id = validator_key.public_key.hex() if validator_key else ""
        self.builds = BuildDuty(validator_key)
        self.timeouts = TimeoutConfig.from_config(consensus)
        #: the signer and double-sign guard of a node with a validator key (None: an observer),
        #: whether or not the key is in the current set (it may join, or leave, at an epoch); its
        #: state lives in ``sign_state`` (default: memory; the daemon's is a file in the data directory)
        self.privval = (PrivValidator(validator_key, sign_state if sign_state is not None else MemorySignState())
                        if validator_key is not None else None)
        self._signing_paused = False
        # The committed tip is the executed tip: a block is stored before it is executed, and on
        # open the driver replays every stored block up to its last execution record.
        self.height = driver.last_height
        self.core = core_factory(
            chain_id=self.chain_id,
            validator_set=self._set_at(self.height + 1),
            signing_key=self.privval,
            timeouts=self.timeouts,
        )
        self.core.validator_sets = self.sets.at
        self.log = log.bind(peer_id=node_id)
        self.last_block_hash = store.block_hash(self.height) or ZERO_HASH
        last = store.get_block(self.height)
        self.last_block_time_ms = last.block.header.timestamp_ms if last else genesis.genesis_time_ms
        self.actions_committed = 0
        self.regossips = 0
        #: the committed height's commit wait is over, but the next height waits for an action
        #: (``consensus.create_empty_blocks = false``; see ``handle_commit_wait``)
        self.awaiting_actions = False
        self._last_block_actions = 1  # unknown after a restart: the next block may be a proof block
        self._last_commit_tick_ms = 0
        # the periodic ``heights_committed`` summary: since when, from which height, how many blocks
        self._summary_since_ms: int | None = None
        self._summary_from = self.height
        self._summary_blocks = 0
        self._summary_empty = 0
        self.divergence: Divergence | None = None
        self.decoder = ActionDecoder(capacity=mempool.max_actions + 4 * consensus.max_block_actions)
        driver.decode_action = lambda act: self.decoder.decode(act.action_id, act.payload)
        self.intake = IntakeControl(floor=max(MIN_INTAKE_FLOOR, consensus.max_block_actions // 10),
                                    target_queue_ms=target_queue_ms)
        self.admission = Admission(
            mempool, lambda: self.driver.world, self.decoder, self.metrics, max(200, 2 * consensus.timeout_commit_ms),
            self.intake, lambda: self._now_ms,
        )
        self.execution = ExecutionCheck(driver, store, self.metrics, self.log)
        self.evidence = BlockEvidence(self.chain_id, self.sets, lambda: self.driver.world, store)
        self.validity = BlockValidity(
            chain_id=self.chain_id,
            epoch_length=genesis.epoch_length,
            max_block_actions=consensus.max_block_actions,
            tip=lambda: (self.height, self.last_block_hash, self.last_block_time_ms),
            world=lambda: self.driver.world,
            verified=self.admission.verified_signatures,
            decoder=self.decoder,
            execution=self.execution,
            sets=self.sets,
            evidence=self.evidence,
            last_certificate=self._last_certificate,
        )
        self.sync = SyncState(policy.sync_batch_heights, policy.sync_timeout_ms)
        self._clock = PolicyClock(policy)
        self._now_ms = 0  # the last tick's time
        self.last_consensus_traffic_ms: int | None = None  # the tick time of the last peer vote, proposal or commit
        self._first_tick_ms: int | None = None
        self._connected: set[str] = set()  # the last tick's connected peers
        self._untimely_reported: set[tuple[int, int]] = set()  # (height, round) of logged untimely proposals
        self._wal_written = True  # prune whatever a previous run left at the first commit
        #: the tip height's certificate with the precommits gathered during the commit wait
        self._tip_certificate: CommitCertificate | None = None
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
        policy: cfg.PolicyConfig | None = None,
        mempool_size: int = 20_000,
        target_queue_ms: int = cfg.MempoolConfig().target_queue_ms,
        metrics: NodeMetrics | None = None,
        core_factory: Callable[..., ConsensusCore] = ConsensusCore,
        sandbox: Sandbox | None = None,
        sign_state: SignStateStore | None = None,
    ) -> Replica:
        """Restore a replica from ``store`` (and the newest world snapshot under ``snapshot_dir``),
        replaying stored blocks up to the last execution record. ``policy`` defaults to
        ``PolicyConfig()``; ``sandbox`` runs the world's modules (default: the process-wide one,
        memory cache only); ``sign_state`` keeps the validator's last signed height, round and
        step (``consensus.privval``; default: memory). Raises ``ExecutionError`` when the stored
        state cannot be restored."""
        driver = NodeRuntimeExecutionDriver.open(
            store,
            lambda: genesis.new_world(sandbox),
            snapshot_dir,
            snapshot_interval,
            sandbox=sandbox,
        )
        return cls(
            genesis=genesis,
            consensus=consensus,
            policy=policy if policy is not None else cfg.PolicyConfig(),
            validator_key=validator_key,
            store=store,
            driver=driver,
            mempool=Mempool(mempool_size),
            node_id=node_id,
            now_ms=now_ms,
            metrics=metrics,
            core_factory=core_factory,
            target_queue_ms=target_queue_ms,
            sign_state=sign_state,
        )

    # -- views ----------------------------------------------------------------------------------
    def _set_at(self, height: int) -> ValidatorSet:
        """The validator set in force at ``height``, which must be known (the next height's and
        the one after it always are: ``replica.sets``). Raises RuntimeError otherwise."""
        vset = self.sets.at(height)
        if vset is None:
            raise RuntimeError(f"the validator set of height {height} is not known at executed height {self.height}")
        return vset

    def _latest_known_set(self) -> ValidatorSet:
        """The set of the latest epoch this node knows (that of the epoch after the next height's)."""
        nxt = self.height + 1
        return self.sets.at((self.sets.epoch_of(nxt) + 1) * self.genesis.epoch_length) or self._set_at(nxt)

    @property
    def validator_set(self) -> ValidatorSet:
        """The validator set of the next height (the one being decided)."""
        return self._set_at(self.height + 1)

    @property
    def is_validator(self) -> bool:
        """True iff this node's validator key is in the set of the next height."""
        return bool(self.validator_id) and self.validator_id in self.validator_set

    @property
    def world(self) -> World:
        """The executed world."""
        return self.driver.world

    @property
    def execution_mismatches(self) -> int:
        """How many execution-hash comparisons with others differed (``ExecutionCheck``)."""
        return self.execution.mismatches

    @property
    def syncing(self) -> bool:
        """True while catching up by sync (a fetch in flight, or a peer to fetch from)."""
        return self.sync.syncing

    @property
    def action_decodes(self) -> int:
        """Action payloads decoded by this replica (admission, validity, execution) since it opened."""
        return self.decoder.count

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
        if self.divergence is not None:
            # a diverged validator never signs again, so it has nothing of its WAL to re-send
            return self._perform(self._start_next_height())
        try:
            signed = decode_wal_entries(height, self.store.wal_entries(height))
            self._check_amnesia()
            effects = self.core.resume(height, signed, self._set_at(height), self._set_at(height + 1))
        except ValueError as exc:
            raise WALError(
                f"the consensus WAL at height {height} cannot be replayed: {exc}; this home's WAL is corrupt "
                "or belongs to another validator key"
            ) from None
        if signed:
            self.log.info("resumed", height=height, round=self.core.round, wal_messages=len(signed))
        return self._perform(effects)

    def _check_amnesia(self) -> None:
        """At start: has this validator signed at heights its store no longer holds? That is the
        case when its sign state (``privval``, kept apart from the store) names a height above the
        next one, or a world snapshot is newer than the store's records: the database lost
        transactions (a deleted ``-wal`` file after a crash, a restored backup). Not knowing what
        it signed or locked on there, it signs nothing up to that height
        (``PrivValidator.pause_until``) and follows the chain as an observer until it has
        committed past it; one ``signing_paused_until_synced`` line says so, and
        ``signing_resumed`` when it signs again. Messages of the next height missing from its WAL
        do not pause it (that would cost the chain this validator's stake for a whole height):
        the guard refuses anything that contradicts what it signed there, as CometBFT's does."""
        pv = self.privval
        if pv is None:
            return
        last = pv.last
        pause = self.driver.snapshot_ahead_height
        if last is not None and last.height > self.height + 1:
            pause = max(pause, last.height)
        if pause > self.height:
            pv.pause_until(pause)
            self._signing_paused = True
            self.log.warning("signing_paused_until_synced", paused_until=pause, store_height=self.height,
                             signed_height=last.height if last else 0, snapshot_height=self.driver.snapshot_ahead_height)

    def admit(self, signed: SignedAction, source: ActionSource, payload: bytes | None = None) -> AdmissionResult:
        """Admit one signed action (``Admission.admit``); client actions are gossiped at the next tick."""
        return self.admission.admit(signed, source, payload)

    def handle_gossip(self, data: bytes, peer: str, topic: Topic | None = None) -> list[Output]:
        """Handle one raw gossip message from ``peer`` (the pubsub origin) received on ``topic``
        (None: not known to the caller). Malformed messages, and messages of another topic's kind
        (every message belongs on its own topic, docs/wire-format.md), are counted, dropped and
        reported as ``Misbehaviour``."""
        try:
            msg: GossipMessage = decode(data, GossipMessage, max_size=MAX_GOSSIP_BYTES)  # type: ignore[arg-type]
        except DecodeError as exc:
            self.metrics.messages_dropped.labels("malformed").inc()
            self.log.warning("gossip_malformed", peer=peer, error=str(exc)[:200])
            return [Misbehaviour(peer, Offence.MALFORMED)]
        if topic is not None and type(msg).__struct_config__.tag != topic.value:
            self.metrics.messages_dropped.labels("wrong_topic").inc()
            self.log.warning("gossip_wrong_topic", peer=peer, topic=topic.value, kind=type(msg).__struct_config__.tag)
            return [Misbehaviour(peer, Offence.MALFORMED)]
        if isinstance(msg, GossipVoteMessage):
            self.sync.note_peer_height(peer, msg.vote.height - 1)
            woken = self._wake() if msg.vote.height == self.height + 1 else []
            return woken + self._consensus_traffic(self._judged(peer, VoteReceived(msg.vote)))
        if isinstance(msg, GossipProposalMessage):
            self.sync.note_peer_height(peer, msg.proposal.height - 1)
            woken = self._wake() if msg.proposal.height == self.height + 1 else []
            return woken + self._consensus_traffic(self._judged(peer, self._proposal_received(msg.proposal)))
        if isinstance(msg, GossipCommitMessage):
            return self._consensus_traffic(self._on_commit_announcement(msg, peer))
        if isinstance(msg, GossipActionBatch):
            malformed = self.admission.admit_gossip(msg.payloads)
            return [Misbehaviour(peer, Offence.MALFORMED)] if malformed else []
        self.sync.note_peer_height(peer, msg.height)  # GossipStatusMessage
        if self.awaiting_actions and msg.height >= self.height:
            # an idle chain sends no votes: a peer's heartbeat at our height is its traffic
            self.last_consensus_traffic_ms = self._now_ms
        return []

    def screen_gossip(self, topic: str, data: bytes) -> str | None:
        """The network's look at a received message before pubsub forwards or delivers it
        (``P2PNetwork``'s ``screen``): ``"stale_vote"`` for a vote (``topic`` "vote") of a height
        below our last committed one, which no correct node needs (those heights are decided, and
        their certificates travel with commits and sync); None for anything else, including a
        message that does not decode (``handle_gossip`` reports it). A vote of our last committed
        height still passes: a peer finishing that height may need it. Cost: one decode of a
        message of at most a few hundred bytes; no signature check."""
        if topic != Topic.VOTE.value or len(data) > MAX_VOTE_GOSSIP_BYTES:
            return None
        try:
            msg: GossipMessage = decode(data, GossipMessage, max_size=MAX_VOTE_GOSSIP_BYTES)  # type: ignore[arg-type]
        except DecodeError:
            return None
        if isinstance(msg, GossipVoteMessage) and msg.vote.height < self.height:
            return "stale_vote"
        return None

    def _proposal_received(self, proposal: Proposal) -> ProposalReceived:
        """The core's input for a proposal arriving now: PBTS's timely predicate
        ([PBTS-RECEPTION-STEP.1], ``synchrony.timely``) on its block time and this node's clock at
        reception. An untimely proposal of a new block (``pol_round = -1``: the core prevotes nil on
        it, L22) is logged once per (height, round) as ``proposal_untimely`` and counted in
        ``awnode_proposals_untimely``; a re-proposal with a proof-of-lock round needs no timeliness."""
        received_ms = self.now_ms()
        block_time_ms = proposal.block.header.timestamp_ms
        params = self.genesis.synchrony
        reason = untimely_reason(block_time_ms, received_ms, params)
        if reason is not None and proposal.pol_round == -1 and proposal.height == self.height + 1:
            key = (proposal.height, proposal.round)
            if key not in self._untimely_reported and proposal.validator in self.validator_set:
                if len(self._untimely_reported) > 4096:  # bounded: old heights' entries are useless
                    self._untimely_reported = {k for k in self._untimely_reported if k[0] >= self.height}
                self._untimely_reported.add(key)
                self.metrics.proposals_untimely.labels(reason).inc()
                self.log.warning(
                    "proposal_untimely",
                    height=proposal.height,
                    round=proposal.round,
                    proposer=proposal.validator[:16],
                    block_time_ms=block_time_ms,
                    local_time_ms=received_ms,
                    offset_ms=block_time_ms - received_ms,
                    reason=reason,
                    precision_ms=params.precision_ms,
                    message_delay_ms=params.message_delay_ms,
                    hint="the proposer's clock or ours is off (check NTP on both), or the proposal was delayed "
                    "beyond message_delay_ms; this node prevotes nil on it",
                )
        return ProposalReceived(proposal, timely=reason is None)

    def handle_timeout(self, timeout: TimeoutFired) -> list[Output]:
        """A consensus timer (``StartTimer``) fired."""
        return self._perform(self.core.handle(timeout))

    def handle_commit_wait(self, height: int) -> list[Output]:
        """The wait after committing ``height`` (``StartCommitWait``) expired: start the next
        height, unless the chain is idle and makes no empty blocks (``_idle``); then the height
        waits (``awaiting_actions``) until ``tick`` sees an action in the mempool or the empty
        block interval pass, or a peer's proposal or vote of that height arrives."""
        if height != self.height:
            return []
        if self._idle():
            self.awaiting_actions = True
            self.log.debug("awaiting_actions", height=self.height + 1)
            return []
        return self._perform(self._start_next_height())

    def _log_summary(self, now_ms: int) -> None:
        """Every ``SUMMARY_INTERVAL_MS`` of the tick clock, one info line ``heights_committed``:
        the heights committed since the last one, how many blocks were empty, the mempool, and
        whether the chain is idle (``create_empty_blocks = false``). Nothing when nothing happened
        and nothing is pending."""
        if self._summary_since_ms is None:
            self._summary_since_ms = now_ms
            return
        if now_ms - self._summary_since_ms < SUMMARY_INTERVAL_MS:
            return
        if self._summary_blocks or len(self.mempool):
            self.log.info("heights_committed", from_height=self._summary_from + 1, to_height=self.height,
                          blocks=self._summary_blocks, empty=self._summary_empty, mempool=len(self.mempool),
                          idle=self.awaiting_actions, seconds=round((now_ms - self._summary_since_ms) / 1000))
        self._summary_since_ms, self._summary_from = now_ms, self.height
        self._summary_blocks = self._summary_empty = 0

    def _idle(self) -> bool:
        """True when ``create_empty_blocks`` is off, the mempool is empty, the last block had no
        actions (a block with actions is followed by one more, whose header carries its execution
        root, as CometBFT's proof block) and no empty block is due by the interval."""
        c = self.config
        return (not c.create_empty_blocks and len(self.mempool) == 0 and self._last_block_actions == 0
                and not self._empty_block_due())

    def _empty_block_due(self) -> bool:
        interval = self.config.create_empty_blocks_interval_ms
        return interval > 0 and self._now_ms - self._last_commit_tick_ms >= interval

    def _wake(self) -> list[Output]:
        """End an idle wait: start the next height now."""
        if not self.awaiting_actions:
            return []
        self.awaiting_actions = False
        self._clock.restart_progress(self._now_ms)
        self.log.debug("idle_wait_ended", height=self.height + 1, mempool=len(self.mempool))
        return self._perform(self._start_next_height())

    def tick(self, now_ms: int, connected: Iterable[str]) -> list[Output]:
        """The periodic duties, called every ``policy.tick_interval_ms`` with the driver's clock
        (monotonic ms) and the peers connected now: gossip the client actions admitted since the
        last tick (and again those still pending ``policy.action_regossip_ms`` after their last
        gossip), the status heartbeat when due, re-gossip of the height's messages when it has
        stalled for ``regossip_after_ms``, and a ``FetchBlocks`` when behind a connected peer."""
        self._now_ms = now_ms
        if self._first_tick_ms is None:
            self._first_tick_ms = now_ms
        self._connected = set(connected)
        self._log_summary(now_ms)
        outputs: list[Output] = []
        if self.awaiting_actions and (len(self.mempool) > 0 or self._empty_block_due()):
            outputs.extend(self._wake())
        outputs.extend(self.admission.take_gossip_batches(MAX_GOSSIP_BYTES - 1024))
        outputs.extend(self.admission.take_regossip_batches(self.policy.action_regossip_ms, MAX_GOSSIP_BYTES - 1024))
        if self._clock.status_due(now_ms):
            d = self.driver
            outputs.append(_publish(Topic.STATUS, GossipStatusMessage(self.height, d.last_height, d.last_state_root)))
        if self._clock.regossip_due(self.height, now_ms):
            messages = self.height_messages_to_regossip()
            self.regossips += 1
            # an idle chain (no empty blocks) re-sends only its last commit: routine, not a stall
            (self.log.debug if self.awaiting_actions else self.log.info)(
                "regossip", height=self.core.height, round=self.core.round, messages=len(messages))
            outputs.extend(messages)
        fetch = self.sync.next_fetch(self.height, self._connected, now_ms)
        if fetch is not None:
            outputs.append(fetch)
        outputs.extend(self.builds.due(self.world, self.syncing))
        return outputs

    def _consensus_traffic(self, outputs: list[Output]) -> list[Output]:
        """Note a peer's vote, proposal or commit as consensus traffic unless it was blamed (a
        forgery keeps no node looking connected); return ``outputs``."""
        if not any(isinstance(o, Misbehaviour) for o in outputs):
            self.last_consensus_traffic_ms = self._now_ms
        return outputs

    def consensus_silence_ms(self) -> int:
        """Milliseconds (of the driver's tick clock) since the last vote, proposal or commit from a
        peer, or since the first tick when none came yet; 0 before the first tick."""
        if self._first_tick_ms is None:
            return 0
        return self._now_ms - (self.last_consensus_traffic_ms if self.last_consensus_traffic_ms is not None
                               else self._first_tick_ms)

    def build_finished(self, build_id: str, code: str, wasm: bytes = b"") -> AdmissionResult | None:
        """The answer to ``StartBuild``: sign the attestation of ``code`` ("OK" with ``wasm``, or a
        failure code) and admit it as this node's own client action (gossiped at the next tick).
        Returns the admission result, or None when there is nothing to attest any more."""
        signed = self.builds.attestation(self.world, build_id, code, wasm)
        if signed is None:
            return None
        result = self.admission.admit(signed, ActionSource.NODE)
        self.log.info("build_attested", build_id=build_id, code=code, status=result.status,
                      refusal=result.reason[:200] if result.reason else None)
        return result

    def handle_synced(self, payloads: list[bytes], peer: str) -> list[Output]:
        """The answer to ``FetchBlocks``: verify and commit the blocks in order, stopping at the
        first one that does not verify or extend our chain. A peer whose answer did not advance us
        is forgotten as a sync source; when still behind, the next ``FetchBlocks`` follows."""
        before = self.height
        with self.store.relaxed_durability(), self.driver.batch():
            outputs = self._commit_synced(payloads, peer)
        useful = self.height > before
        self.sync.fetch_ended(peer, useful=useful)
        if useful:
            self.log.info("synced", peer=peer, from_height=before + 1, to_height=self.height)
        elif self.sync.target(self.height, set(self.sync.peer_heights)) is None:
            # gossip committed those heights while the fetch was in flight: routine, not the peer's fault
            self.log.debug("sync_overtaken", peer=peer, height=self.height, payloads=len(payloads))
        else:
            self.log.warning("sync_made_no_progress", peer=peer, height=self.height, payloads=len(payloads))
        if self.sync.target(self.height, set(self.sync.peer_heights)) is None:
            outputs.extend(self._perform(self._start_next_height()))
        fetch = self.sync.next_fetch(self.height, self._connected, self._now_ms) if useful else None
        if fetch is not None:
            outputs.append(fetch)
        return outputs

    def handle_fetch_failed(self, peer: str, reason: str) -> list[Output]:
        """A ``FetchBlocks`` failed (timeout, refused, unreachable peer; ``reason`` says which):
        ``peer`` is no longer believed ahead, and is distrusted until a claim of it verifies
        (``SyncState``)."""
        self.log.warning("sync_failed", peer=peer, height=self.height, reason=reason)
        self.sync.fetch_ended(peer, useful=False)
        return []

    def serve_sync(self, from_height: int, to_height: int) -> list[bytes]:
        """Encoded ``ReplicatedCommitPayload``s of the committed heights ``from_height..to_height``."""
        out = []
        for h in range(max(1, from_height), min(to_height, self.height) + 1):
            stored = self.store.get_block(h)
            if stored is None:
                break
            out.append(encode(stored))
        return out

    def height_messages_to_regossip(self) -> list[Output]:
        """The current height's message log (proposals, votes, both halves of any equivocation), to
        re-send while a height stalls: Tendermint's liveness assumes every message a correct node
        holds eventually reaches every correct node, and gossipsub is best-effort.

        The commit of our last committed height comes first: a peer one height behind whose copy
        of that commit was lost cannot sync it (``SyncState.target`` waits for a gap of two) and
        may be the stake the stalled height needs (a liveness bug the simulator found).

        Proposals carry whole blocks (up to about a megabyte each), so only those a correct node can
        still act on are re-sent: the current round's, and the locked and valid rounds' (the
        paper's L28, L36 and L49 need them); votes, a few hundred bytes each, all. Re-sending every
        round's proposal every interval made a stalled height's traffic grow with its rounds until
        the links themselves stalled."""
        if self.core.height != self.height + 1 and not self.awaiting_actions:
            return []
        out: list[Output] = []
        last = self.store.get_block(self.height) if self.height > 0 else None
        if last is not None:
            out.append(_publish(Topic.COMMIT, GossipCommitMessage(last.block.header, last.certificate, last.execution)))
        if self.awaiting_actions:  # idle: the next height has no messages yet
            return out
        core = self.core
        wanted_rounds = {core.round, core.locked_round, core.valid_round}
        out.extend(_publish_signed(msg) for msg in core.height_messages()
                   if not isinstance(msg, Proposal) or msg.round in wanted_rounds)
        return out

    # -- the core's effects ---------------------------------------------------------------------
    def _start_next_height(self) -> list[Effect]:
        """Move the core to the height after the committed tip (no-op when it is already there)."""
        if self.core.height >= self.height + 1:
            return []
        self.metrics.round.set(0)
        if self.core.height == self.height:
            # every precommit for our decision that came in during the commit wait: the next
            # block's last commit then records everyone who signed in time (downtime counts it)
            cert = self.core.decision_certificate()
            if cert is not None and cert.block_hash == self.last_block_hash:
                self._tip_certificate = cert
        height = self.height + 1
        return self.core.start_height(height, self._set_at(height), self._set_at(height + 1))

    def _perform(self, effects: list[Effect]) -> list[Output]:
        outputs: list[Output] = []
        queue = list(effects)
        while queue:
            eff = queue.pop(0)
            if isinstance(eff, PersistWAL):
                kind, payload = wal_entry(eff.entry)
                self.store.wal_append(eff.entry.height, eff.entry.round, kind, payload)
                self._wal_written = True
            elif isinstance(eff, Broadcast):
                outputs.append(_publish_signed(eff.message))
            elif isinstance(eff, ScheduleTimeout):
                outputs.append(StartTimer(eff.kind, eff.height, eff.round, eff.duration_ms))
                self.metrics.round.set(eff.round)
            elif isinstance(eff, GetValue):
                block = self._build_block(eff.height, eff.round)
                queue.extend(self.core.handle(ValueToPropose(eff.height, eff.round, block)))
            elif isinstance(eff, ValidateBlock):
                valid = self._valid(eff.block)
                queue.extend(self.core.handle(BlockValidityInput(eff.block.hash(), valid)))
            elif isinstance(eff, Decide):
                if eff.block.header.height <= self.height:  # already committed from a peer's commit
                    queue.extend(self._start_next_height())
                    continue
                outputs.extend(self._commit(eff.block, eff.certificate, source="consensus"))
            elif isinstance(eff, EvidenceFound):
                ev = eff.evidence
                self.store.put_evidence(ev.height, type(ev).__name__, encode(ev))
                self.log.warning("equivocation_evidence", height=ev.height, offender=ev.validator[:16])
            else:
                raise TypeError(f"unknown consensus effect {type(eff).__name__}")
        return outputs

    def _valid(self, block: Block) -> bool:
        """valid(v) (``BlockValidity.problem``); an unexpected exception counts as invalid."""
        try:
            problem = self.validity.problem(block)
        except Exception as exc:  # a hostile block must not crash the node
            self.log.error("validate_block_failed", height=block.header.height, error=repr(exc))
            problem = f"validation failed: {exc!r}"
        if problem is None:
            return True
        self.log.warning("proposal_rejected", height=block.header.height, round=block.header.round, reason=problem)
        self.metrics.messages_dropped.labels("invalid_block").inc()
        return False

    def _build_block(self, height: int, round: int) -> Block:
        plan = self.world.block_plan()

        def fits(action: NodeConsensusAction) -> bool:
            signed = self.validity.decoded_action(action.action_id, action.payload)
            return signed is not None and plan.admit(signed, len(action.payload)) is None

        actions = self.mempool.reap(self.config.max_block_actions, self.config.max_block_bytes, fits)
        d = self.driver
        last_commit = self._last_certificate()
        evidence = self.evidence.for_proposal(height)
        commit_hash, evidence_hash = block_body_hashes(last_commit, evidence)
        header = BlockHeader(
            chain_id=self.chain_id,
            height=height,
            round=round,
            epoch=height // self.genesis.epoch_length,
            proposer=self.validator_id,
            prev_block_hash=self.last_block_hash,
            action_root=compute_consensus_action_root(actions),
            action_count=len(actions),
            last_execution_height=d.last_height,
            last_execution_block_hash=d.last_block_hash,
            last_execution_state_root=d.last_state_root,
            timestamp_ms=self._block_time(),
            validators_hash=self._set_hash(height),
            next_validators_hash=self._set_hash(height + 1),
            last_commit_hash=commit_hash,
            evidence_hash=evidence_hash,
        )
        return Block(header=header, actions=actions, last_commit=last_commit, evidence=evidence)

    def _set_hash(self, height: int) -> bytes:
        digest = self.sets.hash_at(height)
        if digest is None:
            raise RuntimeError(f"the validator set of height {height} is not known at executed height {self.height}")
        return digest

    def _last_certificate(self) -> CommitCertificate | None:
        """The commit certificate of our last committed height (None at genesis): the one our core
        completed during the commit wait when it decided that height, else the stored one."""
        if self.height == 0:
            return None
        tip = self._tip_certificate
        if tip is not None and tip.height == self.height and tip.block_hash == self.last_block_hash:
            return tip
        stored = self.store.get_block(self.height)
        return stored.certificate if stored is not None else None

    def _block_time(self) -> int:
        """The time of a block this node proposes (PBTS, [PBTS-ALG-STARTROUND.1]): its clock, but
        strictly after the previous block's time (monotonicity, checked by valid(v)). CometBFT
        waits until its clock passes the previous block time; here the proposer takes
        ``previous + 1`` instead. A proposer whose clock is far behind the chain's time thus
        proposes ``previous + 1``, which correct validators find timely only while it is within
        ``message_delay + precision`` of their clocks; far enough behind, its proposals are
        untimely, prevoted nil, and the round moves on to the next proposer. Either way the chain's
        time never leaves the window the correct validators' clocks allow."""
        return max(self.now_ms(), self.last_block_time_ms + 1)

    # -- commit and execution -------------------------------------------------------------------
    def _commit(self, block: Block, certificate: CommitCertificate, source: str) -> list[Output]:
        """Persist, execute and announce a committed block; advance the tip. Returns the commit
        announcement and the commit wait (neither for synced blocks)."""
        hdr = block.header
        if self.divergence is None:
            divergence = self.execution.check_quorum(hdr)
            if divergence is not None:
                self._enter_divergence(divergence)
        self.store.put_block(block, certificate)
        failpoint("commit.after_put_block")
        ctx = self.driver.context_for(block, self.chain_id, self.node_id, hdr.epoch)
        result = self.driver.on_commit(ctx)
        failpoint("commit.after_execute")
        self.height = hdr.height
        self.last_block_hash = block.hash()
        self.last_block_time_ms = hdr.timestamp_ms
        self.awaiting_actions = False
        self._last_block_actions = len(block.actions)
        self._last_commit_tick_ms = self._now_ms
        self._summary_blocks += 1
        self._summary_empty += not block.actions
        if self._signing_paused and self.privval is not None and hdr.height >= self.privval.paused_until:
            self._signing_paused = False
            self.log.info("signing_resumed", height=hdr.height)
        self.admission.committed([a.action_id for a in block.actions])
        self.intake.committed(len(block.actions), self._now_ms)
        self.mempool.recheck(self._account_of, self._still_admissible)
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
        # empty blocks are routine (every timeout_commit on a quiet chain): at debug, and counted in
        # the periodic ``heights_committed`` summary
        (self.log.info if block.actions else self.log.debug)(
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
            _publish(Topic.COMMIT, GossipCommitMessage(block.header, certificate, hashes)),
            StartCommitWait(hdr.height, self.timeouts.commit_ms),
        ]

    def _still_admissible(self, action: NodeConsensusAction) -> bool:
        """For a pending action whose submitter is no agent (a validator's build attestation):
        whether the executed world would still admit it."""
        signed = self.validity.decoded_action(action.action_id, action.payload)
        return signed is not None and self.world.check_action(signed, check_signature=False) is None

    def _account_of(self, agent_id: str) -> tuple[int, int] | None:
        agent = self.world.get_agent(agent_id)
        return (agent.last_nonce, agent.electricity) if agent is not None else None

    def _commit_synced(self, payloads: list[bytes], peer: str) -> list[Output]:
        outputs: list[Output] = []
        for raw in payloads:
            try:
                payload = decode(raw, ReplicatedCommitPayload, max_size=MAX_SYNC_PAYLOAD_BYTES)
            except DecodeError as exc:
                self.metrics.messages_dropped.labels("malformed").inc()
                self.log.warning("sync_malformed", peer=peer, error=str(exc)[:200])
                outputs.append(Misbehaviour(peer, Offence.BAD_SYNC_RESPONSE))
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

    def _on_commit_announcement(self, msg: GossipCommitMessage, peer: str) -> list[Output]:
        """A peer's commit announcement (header, certificate, its execution hashes). For our next
        height, commit the proposal's block if we hold it; if we do not, and the certificate
        verifies, let sync fetch the block (``SyncState.certified_next``)."""
        header, cert = msg.header, msg.certificate
        h = header.height
        if cert.height != h or cert.block_hash != block_hash(header):
            self.metrics.messages_dropped.labels("invalid_commit").inc()
            return [Misbehaviour(peer, Offence.INVALID_COMMIT)]
        if h != self.height + 1:
            if h > self.height + 1 and peer in self.sync.distrusted:
                # a distrusted peer is believed again on a certificate we verified (no penalty if
                # it does not verify: a far height may be signed by a later validator set). The
                # set of a height beyond the epochs we know is not known: the latest set we know
                # judges it (a hint of whom to sync from, never a block we commit, which verifies
                # against its own height's set).
                vset = self.sets.at(h) or self._latest_known_set()
                try:
                    verify_commit_certificate(cert, cert.block_hash, self.chain_id, vset)
                except InvalidCertificate:
                    return []
                self.sync.note_peer_height(peer, h, verified=True)
                return []
            self.sync.note_peer_height(peer, h)
            if h <= self.height:
                self.metrics.messages_dropped.labels("stale_commit").inc()
                self.execution.check_peer(msg.execution, peer)
            return []
        block = self.core.known_block(cert.block_hash)
        if block is not None:
            return self._on_peer_commit(ReplicatedCommitPayload(block, cert, msg.execution), peer, "gossip")
        try:
            verify_commit_certificate(cert, cert.block_hash, self.chain_id, self._set_at(h))
        except InvalidCertificate as exc:
            self.metrics.messages_dropped.labels("invalid_commit").inc()
            self.log.warning("peer_commit_rejected", height=h, peer=peer, source="gossip", reason=str(exc))
            return [Misbehaviour(peer, Offence.INVALID_COMMIT)]
        self.sync.note_peer_height(peer, h, verified=True)
        self.sync.certified_next = h
        return []

    def _on_peer_commit(self, payload: ReplicatedCommitPayload, peer: str, source: str) -> list[Output]:
        """A committed block from a peer: compare execution hashes for a height we have, commit it
        when it is our next height (certificate and shape verified), or note that we are behind."""
        block, cert = payload.block, payload.certificate
        h = block.header.height
        self.sync.note_peer_height(peer, h)
        if h <= self.height:
            self.execution.check_peer(payload.execution, peer)
            return []
        if h > self.height + 1:
            return []
        problem, punish = self._commit_problem(block, cert)
        if problem is not None:
            self.metrics.messages_dropped.labels("invalid_commit").inc()
            self.log.warning("peer_commit_rejected", height=h, peer=peer, source=source, reason=problem)
            if not punish:
                return []
            return [Misbehaviour(peer, Offence.BAD_SYNC_RESPONSE if source == "sync" else Offence.INVALID_COMMIT)]
        outputs = self._commit(block, cert, source=source)
        self.sync.note_peer_height(peer, h, verified=True)
        self.execution.check_peer(payload.execution, peer)
        return outputs

    def _commit_problem(self, block: Block, cert: CommitCertificate) -> tuple[str | None, bool]:
        """Why a peer's committed block cannot be committed as our next height (None if it can),
        and whether that is the sender's fault (a forged certificate or block) rather than ours."""
        if cert.height != block.header.height or cert.block_hash != block.hash():
            return "certificate is for another block", True
        try:
            verify_commit_certificate(cert, block.hash(), self.chain_id, self._set_at(block.header.height))
        except InvalidCertificate as exc:
            return f"invalid commit certificate: {exc}", True
        problem = block_shape_problem(block, self.chain_id, self.height + 1)
        if problem is not None:
            return problem, True
        if block.header.prev_block_hash != self.last_block_hash:
            # certified by the quorum but not on our chain: our store is the odd one out
            return "block does not extend our chain", False
        return None, False

    # -- peers ----------------------------------------------------------------------------------
    def _judged(self, peer: str, inp: VoteReceived | ProposalReceived) -> list[Output]:
        """Hand a vote or proposal to the core; a rejection no correct node causes (forged
        signature, unknown validator, misshapen message) is reported as the sender's misbehaviour.
        ``peer`` is the pubsub origin, authenticated by pubsub's strict signing."""
        message = inp.vote if isinstance(inp, VoteReceived) else inp.proposal
        effects = self.core.handle(inp)
        # Only the rejection of this very message is the sender's fault: the same call may replay
        # buffered messages of the next height, sent by others (found by the simulator).
        blamed = [
            _PUNISHED_REJECTIONS[r] for r, m in self.core.last_rejections if m is message and r in _PUNISHED_REJECTIONS
        ]
        outputs = self._perform(effects)
        outputs.extend(Misbehaviour(peer, offence) for offence in blamed)
        return outputs

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


__all__ = [
    "DIVERGED_META_KEY",
    "MAX_GOSSIP_BYTES",
    "MAX_SYNC_PAYLOAD_BYTES",
    "FetchBlocks",
    "Replica",
]
