"""One Agent World node: the trio process that joins network, consensus core, mempool, block store
and execution driver (DESIGN.md, "The node daemon").

Concurrency (trio, no hidden tasks; all run in the nursery of ``Node.run``):

- the consensus task is the only writer of consensus state, the block store and the world: it
  takes ``ConsensusInput``s (network messages, timeouts, peers' commits, synced blocks) from one
  channel, feeds them to the sans-IO core and performs the effects the core returns;
- the inbound task decodes and size-checks gossip and forwards it to the consensus channel
  (actions go straight to admission);
- the sync task fetches committed blocks by height from a peer that is ahead;
- the gossip tasks batch admitted actions and publish a status heartbeat;
- the HTTP API is served by hypercorn in the same trio loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import msgspec
import structlog
import trio

from agent_world_runtime import World
from agent_world_runtime.actions import (
    MAX_ACTION_PAYLOAD_BYTES,
    SignedAction,
    decode_signed_action,
    decode_signed_action_json,
    encode_signed_action,
    verify_action_signature,
)
from agent_world_runtime.codec import DecodeError, decode, encode, to_builtins
from agent_world_runtime.crypto import sha256

from . import config as cfg
from .consensus import (
    ConsensusCore,
    Broadcast,
    Decide,
    EvidenceFound,
    GetValue,
    PersistWAL,
    ProposalReceived,
    ScheduleTimeout,
    TimeoutConfig,
    TimeoutFired,
    ValidatorSet,
    ValueToPropose,
    VoteReceived,
    InvalidCertificate,
    verify_commit_certificate,
)
from .execution import NodeRuntimeExecutionDriver
from .mempool import Mempool, MempoolFull
from .metrics import NodeMetrics
from .network import InboundMessage, NetworkConfig, P2PNetwork, SyncError
from .store import NodeStore
from .types import (
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
    Proposal,
    ReplicatedCommitPayload,
    Vote,
    compute_consensus_action_root,
)

log = structlog.get_logger(__name__)

MAX_GOSSIP_BYTES = 1_000_000
ACTION_BATCH_INTERVAL_S = 0.05
STATUS_INTERVAL_S = 1.0
SYNC_INTERVAL_S = 0.5
SYNC_BATCH_HEIGHTS = 200
REGOSSIP_AFTER_S = 1.5
REGOSSIP_MAX_MESSAGES = 400
INPUT_QUEUE = 20_000


@dataclass(frozen=True, slots=True)
class AdmissionResult:
    """The outcome of admitting one action. ``status``: accepted | duplicate | rejected | busy."""

    status: str
    action_id: bytes = b""
    code: str = ""
    reason: str = ""
    retry_after_ms: int = 0


@dataclass(frozen=True, slots=True)
class PeerCommit:
    """A committed block learned from a peer (gossiped commit or sync), for the consensus task."""

    payload: ReplicatedCommitPayload
    peer: str
    source: str  # "gossip" | "sync"


class Node:
    """A validator (or observer) node built from a home directory.

    Raises ``config.ConfigError`` when the home is incomplete or invalid, and
    ``execution.ExecutionError`` when the stored state cannot be restored.
    """

    def __init__(self, home: cfg.Home, peers: list[str] | None = None) -> None:
        self.home = home
        self.config = cfg.read_config(home.config_file)
        self.genesis = cfg.read_genesis(home.genesis_file)
        if peers is not None:
            self.config.p2p.peers = list(peers)
        self.node_key = cfg.read_key(home.node_key_file)
        self.validator_key = cfg.read_key(home.validator_key_file)
        self.chain_id = self.genesis.chain_id
        self.validator_set = ValidatorSet.from_genesis(self.genesis)
        self.validator_id = self.validator_key.public_key.hex()
        self.is_validator = self.validator_set.get(self.validator_id) is not None
        self.metrics = NodeMetrics()
        self.store = NodeStore(home.db_file)
        self.driver = NodeRuntimeExecutionDriver.open(
            self.store,
            lambda: World.from_genesis(self.chain_id, self.genesis.world),
            home.snapshot_dir,
            self.config.storage.snapshot_interval,
        )
        self.mempool = Mempool(self.config.mempool.max_actions)
        self.net = P2PNetwork(
            NetworkConfig(
                chain_id=self.chain_id,
                listen_addr=self.config.p2p.listen,
                peers=list(self.config.p2p.peers),
                key_seed=self.node_key.seed,
                max_gossip_bytes=MAX_GOSSIP_BYTES,
            ),
            sync_handler=self._serve_sync,
        )
        self.peer_id = self.net.peer_id
        # Committed chain tip (the block store may hold more only after a crash mid-commit; the
        # driver replays those on start through _catch_up_store).
        self.height = self.driver.last_height
        self.last_block_hash = self.store.block_hash(self.height) or ZERO_HASH
        last = self.store.get_block(self.height)
        self.last_block_time_ms = last.block.header.timestamp_ms if last else self.genesis.genesis_time_ms
        c = self.config.consensus
        self.core = ConsensusCore(
            chain_id=self.chain_id,
            validator_set=self.validator_set,
            signing_key=self.validator_key if self.is_validator else None,
            timeouts=TimeoutConfig.from_config(c),
            validate_block=self._validate_block,
        )
        self._inputs_send, self._inputs_recv = trio.open_memory_channel[Any](INPUT_QUEUE)
        self._pending_gossip: list[bytes] = []
        self._peer_heights: dict[str, int] = {}
        self._sync_wakeup = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._started_at = time.time()
        self._syncing = False
        self._last_progress = 0.0
        self.actions_committed = 0
        self.log = log.bind(node=self.config.moniker)

    # -- properties used by the API -------------------------------------------------------------
    @property
    def execution_height(self) -> int:
        """The last executed height."""
        return self.driver.last_height

    @property
    def world(self) -> World:
        """The executed world state."""
        return self.driver.world

    # -- admission ------------------------------------------------------------------------------
    def admit_json(self, body: bytes) -> AdmissionResult:
        """Admit a JSON ``SignedAction`` from the HTTP API (see ``admit``)."""
        try:
            signed = decode_signed_action_json(body)
        except DecodeError as exc:
            self.metrics.actions_refused.labels("malformed").inc()
            return AdmissionResult("rejected", code="malformed", reason=f"{exc}; send a JSON SignedAction {{body, signature}}")
        payload = encode_signed_action(signed)
        return self.admit(payload, signed, source="api")

    def admit(self, payload: bytes, signed: SignedAction, source: str) -> AdmissionResult:
        """Check ``signed`` against the executed world (chain id, signature, agent, nonce) and add it
        to the mempool. Verified signatures are cached so execution does not verify them again."""
        action_id = sha256(payload)
        if len(payload) > MAX_ACTION_PAYLOAD_BYTES:
            return self._refuse(action_id, "too_large", f"action of {len(payload)} bytes exceeds {MAX_ACTION_PAYLOAD_BYTES}")
        if action_id in self.mempool:
            return AdmissionResult("duplicate", action_id)
        reason = self.world.check_action(signed)
        if reason is not None:
            return self._refuse(action_id, _reason_code(reason), reason)
        self.driver.signature_cache.add(action_id)
        try:
            self.mempool.add(payload, action_id, signed)
        except MempoolFull as exc:
            self.metrics.actions_refused.labels("mempool_full").inc()
            return AdmissionResult(
                "busy", action_id, code="mempool_full", reason=f"{exc}; retry later", retry_after_ms=self._block_interval_ms()
            )
        self.metrics.actions_admitted.labels(source).inc()
        self.metrics.mempool_size.set(len(self.mempool))
        if source == "api":
            self._pending_gossip.append(payload)
        return AdmissionResult("accepted", action_id)

    def _refuse(self, action_id: bytes, code: str, reason: str) -> AdmissionResult:
        self.metrics.actions_refused.labels(code).inc()
        return AdmissionResult("rejected", action_id, code=code, reason=reason)

    def _block_interval_ms(self) -> int:
        return max(200, self.config.consensus.timeout_commit_ms * 2)

    # -- block validity (the paper's valid(v)) --------------------------------------------------
    def _validate_block(self, block: Block) -> bool:
        """Return True iff ``block`` may be voted for at the current height: right chain and
        height, parent hash, monotonic time, recomputed action root, well-formed unique actions,
        and the previous height's execution hashes equal to ours (DESIGN.md: a validator whose own
        root differs does not vote, and says so loudly)."""
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
        if h.action_count != len(block.actions):
            return f"action_count {h.action_count} but {len(block.actions)} actions"
        if h.epoch != h.height // self.genesis.epoch_length:
            return f"epoch {h.epoch} is not height // epoch_length"
        if len(block.actions) > self.config.consensus.max_block_actions:
            return f"{len(block.actions)} actions exceed max_block_actions"
        if compute_consensus_action_root(block.actions) != h.action_root:
            return "action root does not match the actions"
        seen: set[bytes] = set()
        for act in block.actions:
            if act.payload_hash != sha256(act.payload) or act.action_id != act.payload_hash:
                return f"action {act.action_id.hex()[:16]}: payload hash or action id is not sha256(payload)"
            if act.action_id in seen:
                return f"action {act.action_id.hex()[:16]} appears twice"
            seen.add(act.action_id)
            try:
                signed = decode_signed_action(act.payload)
            except DecodeError as exc:
                return f"action {act.action_id.hex()[:16]} is malformed: {exc}"
            if signed.body.agent_id != act.submitter:
                return f"action {act.action_id.hex()[:16]}: submitter is not the signing agent"
        if h.last_execution_height != self.driver.last_height:
            return f"carries execution height {h.last_execution_height}, ours is {self.driver.last_height}"
        if h.last_execution_state_root != self.driver.last_state_root or (
            h.last_execution_block_hash != self.driver.last_block_hash
        ):
            self.metrics.execution_mismatches.inc()
            self.log.error(
                "execution_root_mismatch",
                height=h.last_execution_height,
                ours=self.driver.last_state_root.hex(),
                proposer=h.last_execution_state_root.hex(),
                proposer_id=h.proposer[:16],
            )
            return "execution state root of the previous height differs from ours"
        return None

    def _build_block(self, height: int, round: int) -> Block:
        c = self.config.consensus
        actions = self.mempool.reap(c.max_block_actions, c.max_block_bytes)
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
            timestamp_ms=max(int(time.time() * 1000), self.last_block_time_ms),
        )
        return Block(header=header, actions=actions)

    # -- the consensus task ---------------------------------------------------------------------
    async def _consensus_loop(self) -> None:
        effects = self._start_next_height()
        # Replay what this validator signed at this height before a restart, so the core re-sends
        # those messages instead of signing conflicting ones (the WAL is written before sending).
        for round_, kind, payload in self.store.wal_entries(self.height + 1):
            msg = decode(payload, Proposal if kind == "proposal" else Vote)
            effects.extend(self.core.handle(ProposalReceived(msg) if kind == "proposal" else VoteReceived(msg)))
        await self._perform(effects)
        while True:
            inp = await self._inputs_recv.receive()
            if isinstance(inp, PeerCommit):
                await self._on_peer_commit(inp)
                continue
            effects = self.core.handle(inp)
            await self._perform(effects)

    def _start_next_height(self) -> list[Any]:
        """Move the core to the height after the committed tip (no-op when it is already there)."""
        if self.core.height >= self.height + 1:
            return []
        self.metrics.round.set(0)
        return self.core.start_height(self.height + 1, self.validator_set)

    async def _perform(self, effects: list[Any]) -> None:
        queue = list(effects)
        while queue:
            eff = queue.pop(0)
            if isinstance(eff, PersistWAL):
                msg = eff.entry
                kind = "proposal" if isinstance(msg, Proposal) else ("prevote" if int(msg.vote_type) == 1 else "precommit")
                self.store.wal_append(msg.height, msg.round, kind, encode(msg))
            elif isinstance(eff, Broadcast):
                msg = eff.message
                if isinstance(msg, Proposal):
                    await self._publish("proposal", GossipProposalMessage(msg))
                else:
                    await self._publish("vote", GossipVoteMessage(msg))
            elif isinstance(eff, ScheduleTimeout):
                assert self._nursery is not None
                self._nursery.start_soon(self._timer, eff)
                self.metrics.round.set(eff.round)
            elif isinstance(eff, GetValue):
                block = self._build_block(eff.height, eff.round)
                queue.extend(self.core.handle(ValueToPropose(eff.height, eff.round, block)))
            elif isinstance(eff, Decide):
                if eff.block.header.height <= self.height:  # already committed from a peer's commit
                    queue.extend(self._start_next_height())
                    continue
                await self._commit(eff.block, eff.certificate, source="consensus")
                await trio.sleep(self.core.timeouts.commit_ms / 1000)
                queue.extend(self._start_next_height())
            elif isinstance(eff, EvidenceFound):
                self.store.put_evidence(eff.evidence.height, type(eff.evidence).__name__, encode(eff.evidence))
                self.log.warning("equivocation_evidence", height=eff.evidence.height, validator=eff.evidence.validator[:16])
            else:
                self.log.warning("unknown_effect", effect=type(eff).__name__)

    async def _timer(self, eff: ScheduleTimeout) -> None:
        await trio.sleep(eff.duration_ms / 1000)
        self._enqueue(TimeoutFired(eff.kind, eff.height, eff.round), reason="timeout")

    def _enqueue(self, item: Any, reason: str) -> None:
        try:
            self._inputs_send.send_nowait(item)
        except trio.WouldBlock:
            self.metrics.messages_dropped.labels("input_queue_full").inc()
            self.log.warning("consensus_input_dropped", kind=reason)

    async def _commit(self, block: Block, certificate: CommitCertificate, source: str) -> None:
        """Persist, execute and announce a decided block, then advance the committed tip."""
        hdr = block.header
        self.store.put_block(block, certificate)
        ctx = self.driver.context_for(block, self.chain_id, self.peer_id, hdr.epoch)
        result = self.driver.on_commit(ctx)
        self.height = hdr.height
        self.last_block_hash = block.hash()
        self.last_block_time_ms = hdr.timestamp_ms
        self.mempool.remove([a.action_id for a in block.actions])
        self.mempool.drop_stale(self._last_nonce_of)
        self.store.wal_prune(hdr.height)
        self.actions_committed += len(block.actions)
        self._last_progress = trio.current_time()
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
        if source != "sync":
            hashes = ExecutionHashes(result.execution_height, result.execution_block_hash, result.execution_state_root)
            await self._publish("commit", GossipCommitMessage(block, certificate, hashes))

    def _last_nonce_of(self, agent_id: str) -> int | None:
        agent = self.world.get_agent(agent_id)
        return agent.last_nonce if agent is not None else None

    async def _on_peer_commit(self, pc: PeerCommit) -> None:
        """Handle a committed block from a peer: check it against our chain, or commit it when it
        is our next height (certificate and action root verified), or note that we are behind."""
        block, cert = pc.payload.block, pc.payload.certificate
        h = block.header.height
        self._note_peer_height(pc.peer, h)
        if h <= self.height:
            self._compare_execution(pc)
            return
        if h > self.height + 1:
            self._sync_wakeup.set()
            return
        problem = self._commit_problem(block, cert)
        if problem is not None:
            self.metrics.messages_dropped.labels("invalid_commit").inc()
            self.log.warning("peer_commit_rejected", height=h, peer=pc.peer, source=pc.source, reason=problem)
            return
        await self._commit(block, cert, source=pc.source)
        if pc.source == "sync":
            self.metrics.blocks_synced.inc()
        self._compare_execution(pc)
        if pc.source == "sync" and max(self._peer_heights.values(), default=0) > self.height + 1:
            return  # more synced blocks follow; restart the core once caught up
        if pc.source == "gossip":
            await trio.sleep(self.core.timeouts.commit_ms / 1000)
        await self._perform(self._start_next_height())

    def _commit_problem(self, block: Block, cert: CommitCertificate) -> str | None:
        h = block.header
        if cert.height != h.height or cert.block_hash != block.hash():
            return "certificate is for another block"
        try:
            verify_commit_certificate(cert, block.hash(), self.chain_id, self.validator_set)
        except InvalidCertificate as exc:
            return f"invalid commit certificate: {exc}"
        if h.chain_id != self.chain_id or h.prev_block_hash != self.last_block_hash:
            return "block does not extend our chain"
        if compute_consensus_action_root(block.actions) != h.action_root or h.action_count != len(block.actions):
            return "action root does not match the actions"
        for act in block.actions:
            if act.payload_hash != sha256(act.payload) or act.action_id != act.payload_hash:
                return "an action's payload hash is not sha256(payload)"
        return None

    def _compare_execution(self, pc: PeerCommit) -> None:
        theirs = pc.payload.execution
        if theirs is None:
            return
        ours = self.store.get_execution(theirs.execution_height)
        if ours is None:
            return
        if ours.execution_state_root != theirs.execution_state_root or ours.execution_block_hash != theirs.execution_block_hash:
            self.metrics.execution_mismatches.inc()
            self.log.error(
                "peer_execution_mismatch",
                height=theirs.execution_height,
                peer=pc.peer,
                ours=ours.execution_state_root.hex(),
                theirs=theirs.execution_state_root.hex(),
            )

    def _note_peer_height(self, peer: str, height: int) -> None:
        if height > self._peer_heights.get(peer, 0):
            self._peer_heights[peer] = height
        if height > self.height + 1:
            self._sync_wakeup.set()

    # -- network --------------------------------------------------------------------------------
    async def _publish(self, topic: str, message: Any) -> None:
        data = encode(message)
        if len(data) > MAX_GOSSIP_BYTES:
            self.log.error("gossip_too_large", topic=topic, size=len(data))
            return
        await self.net.publish(topic, data)

    async def _inbound_loop(self) -> None:
        async for msg in self.net.incoming:
            self._dispatch(msg)

    def _dispatch(self, msg: InboundMessage) -> None:
        try:
            decoded = decode(msg.data, GossipMessage, max_size=MAX_GOSSIP_BYTES)
        except DecodeError as exc:
            self.metrics.messages_dropped.labels("malformed").inc()
            self.log.warning("gossip_malformed", peer=msg.peer_id, topic=msg.topic, error=str(exc)[:200])
            return
        if isinstance(decoded, GossipVoteMessage):
            self._note_peer_height(msg.peer_id, decoded.vote.height - 1)
            self._enqueue(VoteReceived(decoded.vote), reason="vote")
        elif isinstance(decoded, GossipProposalMessage):
            self._note_peer_height(msg.peer_id, decoded.proposal.height - 1)
            self._enqueue(ProposalReceived(decoded.proposal), reason="proposal")
        elif isinstance(decoded, GossipCommitMessage):
            payload = ReplicatedCommitPayload(decoded.block, decoded.certificate, decoded.execution)
            self._enqueue(PeerCommit(payload, msg.peer_id, "gossip"), reason="commit")
        elif isinstance(decoded, GossipActionBatch):
            for payload in decoded.payloads[:10_000]:
                try:
                    signed = decode_signed_action(payload)
                except DecodeError:
                    self.metrics.actions_refused.labels("malformed").inc()
                    continue
                self.admit(payload, signed, source="gossip")
        elif isinstance(decoded, GossipStatusMessage):
            self._note_peer_height(msg.peer_id, decoded.height)

    async def _action_gossip_loop(self) -> None:
        while True:
            await trio.sleep(ACTION_BATCH_INTERVAL_S)
            if not self._pending_gossip:
                continue
            batch, size = [], 0
            while self._pending_gossip and size + len(self._pending_gossip[0]) + 16 < MAX_GOSSIP_BYTES - 1024:
                p = self._pending_gossip.pop(0)
                batch.append(p)
                size += len(p) + 16
            await self._publish("actions", GossipActionBatch(batch))

    async def _status_loop(self) -> None:
        while True:
            await self._publish(
                "status", GossipStatusMessage(self.height, self.driver.last_height, self.driver.last_state_root)
            )
            self.metrics.peers.set(len(self.net.connected_peers()))
            await trio.sleep(STATUS_INTERVAL_S)

    async def _regossip_loop(self) -> None:
        """Re-broadcast the current height's message log while the height makes no progress.

        Tendermint's liveness assumes every message one correct node holds eventually reaches all
        correct nodes (the paper's gossip assumption); gossipsub is best-effort, so a stalled
        height re-sends what this node holds (proposals and votes, both halves of any
        equivocation). Receivers drop exact duplicates cheaply."""
        self._last_progress = trio.current_time()
        while True:
            await trio.sleep(REGOSSIP_AFTER_S / 2)
            if trio.current_time() - self._last_progress < REGOSSIP_AFTER_S or self.core.height != self.height + 1:
                continue
            messages = self.core.height_messages()[-REGOSSIP_MAX_MESSAGES:]
            self.log.info("regossip", height=self.core.height, round=self.core.round, messages=len(messages))
            for msg in messages:
                if isinstance(msg, Proposal):
                    await self._publish("proposal", GossipProposalMessage(msg))
                else:
                    await self._publish("vote", GossipVoteMessage(msg))
            self._last_progress = trio.current_time()

    async def _serve_sync(self, from_height: int, to_height: int) -> list[bytes]:
        """Serve stored blocks ``from_height..to_height`` (inclusive) as encoded payloads."""
        out = []
        for h in range(max(1, from_height), min(to_height, self.height) + 1):
            stored = self.store.get_block(h)
            if stored is None:
                break
            out.append(encode(stored))
        return out

    async def _sync_loop(self) -> None:
        """Fetch committed blocks from the most advanced peer whenever we are behind (DESIGN.md:
        anything a node missed it recovers by sync, never by luck)."""
        while True:
            with trio.move_on_after(SYNC_INTERVAL_S):
                await self._sync_wakeup.wait()
            self._sync_wakeup = trio.Event()
            connected = set(self.net.connected_peers())
            ahead = sorted(
                ((h, p) for p, h in self._peer_heights.items() if p in connected and h > self.height), reverse=True
            )
            if not ahead:
                self._syncing = False
                continue
            target, peer = ahead[0]
            # Gossip usually closes a gap of one height; sync when further behind or stuck.
            self._syncing = True
            start = self.height + 1
            end = min(target, start + SYNC_BATCH_HEIGHTS - 1)
            try:
                payloads = await self.net.fetch_blocks(peer, start, end)
            except SyncError as exc:
                self.log.warning("sync_failed", peer=peer, from_height=start, to_height=end, error=str(exc))
                self._peer_heights.pop(peer, None)
                continue
            got = 0
            for raw in payloads:
                try:
                    payload = decode(raw, ReplicatedCommitPayload, max_size=self.net.config.max_stream_message_bytes)
                except DecodeError as exc:
                    self.log.warning("sync_malformed", peer=peer, error=str(exc)[:200])
                    break
                await self._inputs_send.send(PeerCommit(payload, peer, "sync"))
                got += 1
            if got:
                self.log.info("sync_fetched", peer=peer, from_height=start, to_height=start + got - 1, target=target)
            if got == 0:
                self._peer_heights.pop(peer, None)

    # -- API views ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The ``GET /v1/status`` document."""
        peers = self.net.connected_peers()
        return {
            "node_id": self.peer_id,
            "moniker": self.config.moniker,
            "chain_id": self.chain_id,
            "validator": self.validator_id if self.is_validator else None,
            "height": self.height,
            "round": self.core.round,
            "execution_height": self.driver.last_height,
            "execution_block_hash": self.driver.last_block_hash.hex(),
            "execution_state_root": self.driver.last_state_root.hex(),
            "peers": peers,
            "peer_count": len(peers),
            "mempool_size": len(self.mempool),
            "actions_committed": self.actions_committed,
            "module_calls": self.world.stats().get("module_calls", 0),
            "syncing": self._syncing,
            "uptime_s": round(time.time() - self._started_at, 1),
        }

    def block_json(self, height: int) -> dict[str, Any] | None:
        """The ``GET /v1/blocks/{height}`` document, or None."""
        stored = self.store.get_block(height)
        if stored is None:
            return None
        block = stored.block
        return {
            "height": height,
            "block_hash": block.hash().hex(),
            "header": to_builtins(block.header),
            "actions": [
                {"action_id": a.action_id.hex(), "submitter": a.submitter, "payload_hash": a.payload_hash.hex()}
                for a in block.actions
            ],
            "certificate": to_builtins(stored.certificate),
            "execution": to_builtins(stored.execution) if stored.execution else None,
        }

    def execution_json(self, height: int) -> dict[str, Any] | None:
        """The ``GET /v1/execution/{height}`` document, or None."""
        rec = self.store.get_execution(height)
        if rec is None:
            return None
        return {
            "height": rec.height,
            "execution_block_hash": rec.execution_block_hash.hex(),
            "execution_state_root": rec.execution_state_root.hex(),
            "events_root": rec.events_root.hex(),
            "action_count": rec.action_count,
        }

    def agent_json(self, agent_id: str) -> dict[str, Any] | None:
        """The ``GET /v1/agents/{agent_id}`` document, or None."""
        agent = self.world.get_agent(agent_id)
        return to_builtins(agent) if agent is not None else None

    def events_json(self, from_seq: int, limit: int, kind: str | None) -> list[dict[str, Any]]:
        """Events from the world journal with ``seq >= from_seq``."""
        return [to_builtins(e) for e in self.world.events(from_seq, limit, kind)]

    def modules_json(self) -> dict[str, Any]:
        """Known artifacts and installed instances."""
        return to_builtins(self.world.module_status())

    def evidence_json(self) -> list[dict[str, Any]]:
        """Stored equivocation evidence (newest first)."""
        return [{"height": h, "kind": k, "payload": p.hex()} for h, k, p in self.store.evidence()]

    def readiness(self) -> tuple[bool, str]:
        """Ready when connected to a peer (or alone in the validator set) and not syncing."""
        if len(self.validator_set) > 1 and not self.net.connected_peers():
            return False, "no peers connected"
        if self._syncing:
            return False, "catching up by sync"
        return True, "ok"

    # -- run ------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node until cancelled: network, consensus, sync, gossip and the HTTP API."""
        from hypercorn.config import Config as HyperConfig
        from hypercorn.trio import serve

        from .api import create_app

        hconf = HyperConfig()
        hconf.bind = [self.config.rpc.listen]
        hconf.accesslog = None
        hconf.errorlog = None
        hconf.graceful_timeout = 1.0
        self.log.info(
            "node_starting",
            height=self.height,
            execution_height=self.driver.last_height,
            peer=self.peer_id,
            p2p=self.config.p2p.listen,
            rpc=self.config.rpc.listen,
            validator=self.is_validator,
        )
        try:
            async with self.net.run():
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(serve, create_app(self), hconf)
                    nursery.start_soon(self._inbound_loop)
                    nursery.start_soon(self._consensus_loop)
                    nursery.start_soon(self._sync_loop)
                    nursery.start_soon(self._action_gossip_loop)
                    nursery.start_soon(self._status_loop)
                    nursery.start_soon(self._regossip_loop)
                    task_status.started()
        finally:
            self.store.close()


_CODES = (
    ("signature", "bad_signature"),
    ("unknown agent", "unknown_agent"),
    ("nonce", "nonce_replayed"),
    ("chain id", "wrong_chain"),
    ("already registered", "already_registered"),
)


def _reason_code(reason: str) -> str:
    low = reason.lower()
    for needle, code in _CODES:
        if needle in low:
            return code
    return "rejected"
