"""One Agent World node process: the trio I/O shell around a ``Replica``.

The ``Replica`` holds consensus, mempool, block store, execution and the node-run policy and does
no I/O; this module connects it to the world: the libp2p network (gossip in, ``Publish`` out,
``FetchBlocks`` over the sync protocol), timers (``StartTimer``, ``StartCommitWait``), the periodic
``Replica.tick`` (every ``policy.tick_interval_ms`` of ``config.toml``), and the HTTP API.

Concurrency (trio, no hidden tasks; all run in the nursery of ``Node.run``). The replica is only
touched from the trio thread, and every call into it runs to completion before the outputs are
performed, so no lock is needed.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import structlog
import trio

from agent_world_runtime import World
from agent_world_runtime.actions import SignedAction
from agent_world_runtime.codec import encode, to_builtins
from agent_world_runtime.events import Event
from agent_world_runtime.modules.sandbox import Sandbox
from agent_world_runtime.snapshots import SnapshotArchive

from . import config as cfg
from .api import KEEP_ALIVE_TIMEOUT_S, action_outcome_document, create_app
from .build_runner import BuildRunner
from .config import rpc_url_for
from .consensus import TimeoutFired
from .consensus.privval import SignStateFile
from .metrics import NodeMetrics
from .network import NetworkConfig, P2PNetwork, SyncError
from .network.topics import topic_ids
from .replica import (
    MAX_GOSSIP_BYTES,
    ActionSource,
    AdmissionResult,
    Divergence,
    FetchBlocks,
    Misbehaviour,
    Output,
    Publish,
    Replica,
    StartBuild,
    StartCommitWait,
    StartTimer,
)
from .schema import (
    ActionDocument,
    AdmissionCode,
    AdmissionStatus,
    BlockActionDocument,
    BlockDocument,
    DivergenceDocument,
    ExecutionDocument,
    PeerExecutionDocument,
    PeerFilterDocument,
    StatusDocument,
)
from .statesync import StateSyncer, home_is_empty, install
from .store import ExecutionRecord, NodeStore
from .stream import BlockFeed
from .types import ReplicatedCommitPayload, Topic

log = structlog.get_logger(__name__)

#: A node with peers but no consensus traffic from them for this long (ms) is not ready.
SILENCE_MS = 10_000
#: The retry hint (ms) given to clients while this node is not ready.
NOT_READY_RETRY_MS = 2000

__all__ = ["Node"]


def _divergence_doc(d: Divergence | None) -> DivergenceDocument | None:
    if d is None:
        return None
    return DivergenceDocument(d.height, d.our_root.hex(), d.quorum_root.hex())


class Node:
    """A validator (or observer) node built from a home directory.

    Raises ``config.ConfigError`` when the home is incomplete or invalid, and
    ``execution.ExecutionError`` when the stored state cannot be restored.
    """

    def __init__(self, home: cfg.Home, peers: list[str] | None = None, *, p2p_listen: str | None = None,
                 rpc_listen: str | None = None) -> None:
        self.home = home
        self.config = cfg.read_config(home.config_file)
        genesis = cfg.read_genesis(home.genesis_file)
        if peers is not None:
            self.config.p2p.peers = list(peers)
        self.config.p2p.listen = p2p_listen or self.config.p2p.listen
        self.config.rpc.listen = rpc_listen or self.config.rpc.listen
        node_key = cfg.read_key(home.node_key_file)
        self.metrics = NodeMetrics()
        # read at each scrape (the replica may be reopened): the world's counts and what execution charged
        self.metrics.watch_world(lambda: {**self.world.stats(), **self.replica.driver.charged})
        self.net = P2PNetwork(
            NetworkConfig(
                chain_id=genesis.chain_id,
                listen_addr=self.config.p2p.listen,
                peers=list(self.config.p2p.peers),
                key_seed=node_key.seed,
                max_gossip_bytes=MAX_GOSSIP_BYTES,
                topic_rate_limits=self.config.p2p.topic_rate_limits(),
                ban_threshold=self.config.p2p.ban_threshold,
                ban_seconds=self.config.p2p.ban_seconds,
            ),
            sync_handler=self._serve_sync,
            screen=lambda topic, data: self.replica.screen_gossip(topic, data),
            snapshots=(self._snapshot_manifests, self._snapshot_chunk),
        )
        self.peer_id = self.net.peer_id
        self.genesis = genesis
        # compiled modules are cached on disk, keyed by (wasm_hash, wasmtime version, engine
        # configuration) and checked before loading
        self.sandbox = Sandbox(cache_dir=home.data_dir / "module-cache")
        statesync = self.config.statesync
        self.archive = SnapshotArchive(home.state_snapshot_dir, statesync.snapshot_keep_recent)
        self.log = log.bind(moniker=self.config.moniker)
        #: the state sync in progress (None: none; see ``run``)
        self.state_sync: StateSyncer | None = None
        self.replica = self._open_replica(NodeStore(home.db_file))
        self.feed = BlockFeed(self)
        self.metrics.stream_subscribers.set_function(lambda: self.feed.subscribers)
        self._nursery: trio.Nursery | None = None
        self._started_at = time.time()
        self._topics = {tid: Topic(name) for name, tid in topic_ids(self.replica.chain_id).items()}
        for name in ("peer_rate_limit", "peer_rate_burst"):
            if getattr(self.config.p2p, name) is not None:
                self.log.warning("config_setting_ignored", setting=f"p2p.{name}",
                                 reason="replaced by the per-topic limits p2p.<topic>_rate_limit / _rate_burst")

    def _open_replica(self, store: NodeStore) -> Replica:
        """Restore the replica from ``store`` and the world snapshot (``Replica.open``) and
        configure its execution driver (pruning, state-sync snapshots) and the build runner."""
        replica = Replica.open(
            genesis=self.genesis,
            consensus=self.config.consensus,
            policy=self.config.policy,
            validator_key=cfg.read_key(self.home.validator_key_file),
            store=store,
            snapshot_dir=self.home.snapshot_dir,
            snapshot_interval=self.config.storage.snapshot_interval,
            node_id=self.peer_id,
            now_ms=lambda: int(time.time() * 1000),
            mempool_size=self.config.mempool.max_actions,
            target_queue_ms=self.config.mempool.target_queue_ms,
            metrics=self.metrics,
            sandbox=self.sandbox,
            sign_state=SignStateFile(self.home.sign_state_file),
        )
        driver = replica.driver
        driver.retain_blocks = self.config.storage.retain_blocks
        if self.config.statesync.snapshot_interval:
            driver.archive = self.archive
            driver.state_snapshot_interval = self.config.statesync.snapshot_interval
        self._builds = BuildRunner(replica, self.log)
        return replica

    def _snapshot_manifests(self) -> list[bytes]:
        """The encoded manifests of the state-sync snapshots this node serves, newest first."""
        return [encode(m) for m in self.archive.manifests()]

    def _snapshot_chunk(self, height: int, index: int) -> bytes | None:
        """One chunk of a state-sync snapshot this node serves, or None."""
        return self.archive.read_chunk(height, index)

    async def _state_sync(self) -> None:
        """Join by state sync (``statesync``): restore the newest verified snapshot peers offer,
        install it, and reopen the replica on it. Runs before consensus starts; ``/ready`` answers
        503 meanwhile."""
        store = self.replica.store
        started = time.monotonic()
        self.log.info("state_sync_started", trust_height=self.config.statesync.trust_height or None)
        self.state_sync = StateSyncer(self.net, self.genesis.chain_id, self.replica.validator_set,
                                      self.config.statesync, self.sandbox)
        world, base = await self.state_sync.run()
        install(world, base, store, self.home.snapshot_dir)
        self.replica = self._open_replica(store)
        self.feed.advanced()
        self.state_sync = None
        self.log.info("state_sync_completed", height=base.height, state_root=base.state_root.hex(),
                      seconds=round(time.monotonic() - started, 3), peers=len(self.net.connected_peers()))

    # -- views used by the API ------------------------------------------------------------------
    @property
    def height(self) -> int:
        """The last committed height."""
        return self.replica.height

    @property
    def execution_height(self) -> int:
        """The last executed height."""
        return self.replica.driver.last_height

    @property
    def world(self) -> World:
        """The executed world state."""
        return self.replica.world

    def busy(self) -> AdmissionResult | None:
        """The busy answer every client action gets now, or None. ``not_ready`` (retry in
        ``NOT_READY_RETRY_MS``) while this node is not ready (``readiness``): cut off from its
        peers' consensus traffic, catching up, or diverged, it could neither check an action
        against the chain's current state nor get it committed; ``over_capacity`` while the
        backlog is at the intake budget. The API asks before it decodes a body, so refusing
        costs next to nothing."""
        ready, reason = self.readiness()
        if not ready:
            self.metrics.actions_refused.labels(AdmissionCode.NOT_READY.value).inc()
            return AdmissionResult(AdmissionStatus.BUSY, code=AdmissionCode.NOT_READY,
                                   reason=f"this node cannot take actions now ({reason}); retry later or "
                                          "submit to another node", retry_after_ms=NOT_READY_RETRY_MS)
        return self.replica.admission.client_refusal()

    def admit(self, signed: SignedAction) -> AdmissionResult:
        """Admit an action a client submitted through the HTTP API (``Replica.admit``; the intake
        budget is checked there per action). The API asks ``busy`` once per request before it
        decodes the body, so readiness is not checked again for each action of a batch."""
        return self.replica.admit(signed, ActionSource.API)

    # -- performing the replica's outputs -------------------------------------------------------
    async def _perform(self, outputs: list[Output]) -> None:
        self.feed.advanced()  # a replica step may have executed heights: wake the stream readers
        for out in outputs:
            if isinstance(out, Publish):
                await self.net.publish(out.topic, out.data)
            elif isinstance(out, Misbehaviour):
                self.log.info("peer_misbehaved", peer=out.peer, reason=out.offence.value)
                self.net.penalize(out.peer, out.offence)
            else:
                assert self._nursery is not None
                if isinstance(out, FetchBlocks):
                    self._nursery.start_soon(self._fetch, out)
                elif isinstance(out, StartBuild):
                    self._nursery.start_soon(self._builds.run, out)
                else:
                    self._nursery.start_soon(self._timer, out)

    async def _timer(self, timer: StartTimer | StartCommitWait) -> None:
        await trio.sleep(timer.duration_ms / 1000)
        if isinstance(timer, StartCommitWait):
            await self._perform(self.replica.handle_commit_wait(timer.height))
        else:
            await self._perform(self.replica.handle_timeout(TimeoutFired(timer.kind, timer.height, timer.round)))

    async def _fetch(self, fetch: FetchBlocks) -> None:
        try:
            payloads = await self.net.fetch_blocks(
                fetch.peer, fetch.from_height, fetch.to_height, timeout_s=fetch.timeout_ms / 1000
            )
        except (SyncError, ValueError) as exc:
            await self._perform(self.replica.handle_fetch_failed(fetch.peer, str(exc)))
            return
        await self._perform(self.replica.handle_synced(payloads, fetch.peer))

    # -- tasks ----------------------------------------------------------------------------------
    async def _inbound_loop(self) -> None:
        """Hand each received gossip message to the replica, consensus messages first (the
        network's per-class queues: ``network/inbound.py``)."""
        async for msg in self.net.incoming:
            await self._perform(self.replica.handle_gossip(msg.data, msg.peer_id, self._topics.get(msg.topic)))

    async def _tick_loop(self) -> None:
        """``Replica.tick`` every ``policy.tick_interval_ms`` on trio's monotonic clock."""
        interval_s = self.config.policy.tick_interval_ms / 1000
        while True:
            outputs = self.replica.tick(int(trio.current_time() * 1000), self.net.connected_peers())
            await self._perform(outputs)
            if any(isinstance(o, Publish) and o.topic == Topic.STATUS for o in outputs):
                self._refresh_metrics()
            await trio.sleep(interval_s)

    def free_bytes(self) -> int:
        """Free bytes on the filesystem of the data directory (-1 when it cannot be read)."""
        try:
            return shutil.disk_usage(self.home.data_dir).free
        except OSError:
            return -1

    def _refresh_metrics(self) -> None:
        self.metrics.data_free_bytes.set(self.free_bytes())
        self.metrics.peers.set(len(self.net.connected_peers()))
        self.metrics.mempool_size.set(len(self.replica.mempool))
        net = self.net.stats()
        self.metrics.peer_bans.set(len(net["banned_peers"]))
        for reason, n in net["dropped"].items():
            self.metrics.advance(self.metrics.gossip_dropped, reason, n)
        for reason, n in net["penalties"].items():
            self.metrics.advance(self.metrics.peer_penalties, reason, n)

    async def _serve_sync(self, from_height: int, to_height: int) -> list[bytes]:
        """Serve stored blocks ``from_height..to_height`` (inclusive) as encoded payloads."""
        return self.replica.serve_sync(from_height, to_height)

    # -- API views ------------------------------------------------------------------------------
    def status(self) -> StatusDocument:
        """The ``GET /v1/status`` document."""
        peers = self.net.connected_peers()
        r = self.replica
        return StatusDocument(
            node_id=self.peer_id,
            moniker=self.config.moniker,
            chain_id=r.chain_id,
            validator=r.validator_id if r.is_validator else None,
            height=r.height,
            round=r.core.round,
            execution_height=r.driver.last_height,
            execution_block_hash=r.driver.last_block_hash.hex(),
            execution_state_root=r.driver.last_state_root.hex(),
            peers=peers,
            peer_count=len(peers),
            mempool_size=len(r.mempool),
            actions_committed=r.actions_committed,
            execution_mismatches=r.execution_mismatches,
            execution_diverged=_divergence_doc(r.divergence),
            peer_filter=PeerFilterDocument(
                blocked=sorted(self.net.peer_filter.blocked),
                banned=self.net.peer_filter.banned(),
                bans_total=self.net.peer_filter.bans_total,
            ),
            module_calls=self.world.stats().get("module_calls", 0),
            syncing=r.syncing or self.state_sync is not None,
            uptime_s=round(time.time() - self._started_at, 1),
            peer_execution=[
                PeerExecutionDocument(peer, rep.hashes.execution_height, rep.hashes.execution_state_root.hex(), rep.agrees)
                for peer in peers if (rep := r.execution.peer_reports.get(peer)) is not None
            ],
        )

    def block_json(self, height: int) -> BlockDocument | None:
        """The ``GET /v1/blocks/{height}`` document, or None."""
        stored = self.replica.store.get_block(height)
        if stored is None:
            return None
        block = stored.block
        return BlockDocument(
            height=height,
            block_hash=block.hash().hex(),
            header=to_builtins(block.header),
            actions=[
                BlockActionDocument(a.action_id.hex(), a.submitter, a.payload_hash.hex()) for a in block.actions
            ],
            certificate=to_builtins(stored.certificate),
            execution=to_builtins(stored.execution) if stored.execution else None,
        )

    def stored_block(self, height: int) -> ReplicatedCommitPayload | None:
        """The stored block and commit certificate of ``height``, or None."""
        return self.replica.store.get_block(height)

    def stored_execution(self, height: int) -> ExecutionRecord | None:
        """This node's execution record of ``height``, or None."""
        return self.replica.store.get_execution(height)

    def events_at(self, height: int) -> list[Event]:
        """The executed world's events of ``height`` (``World.events_at``)."""
        return self.replica.world.events_at(height)

    def hello(self) -> dict[str, Any]:
        """The stream's ``hello`` message: who this node is and where it stands."""
        return {"chain_id": self.replica.chain_id, "node_id": self.peer_id, "moniker": self.config.moniker,
                "height": self.replica.height, "execution_height": self.replica.driver.last_height}

    def pruned_below(self) -> int:
        """The lowest height whose block this node still stores, when older ones were pruned
        (``storage.retain_blocks``); 0 when nothing was pruned."""
        first = self.replica.store.first_block_height()
        return first if first > 1 else 0

    def execution_json(self, height: int) -> ExecutionDocument | None:
        """The ``GET /v1/execution/{height}`` document, or None."""
        rec = self.replica.store.get_execution(height)
        if rec is None:
            return None
        return ExecutionDocument(
            height=rec.height,
            execution_block_hash=rec.execution_block_hash.hex(),
            execution_state_root=rec.execution_state_root.hex(),
            events_root=rec.events_root.hex(),
            action_count=rec.action_count,
        )

    def action_json(self, action_id: bytes) -> ActionDocument | None:
        """The ``GET /v1/actions/{action_id}`` document, or None when this node neither holds the
        action pending nor has it in a stored block."""
        hex_id = action_id.hex()
        height = self.replica.store.action_height(action_id)
        if height is None:
            return ActionDocument(hex_id, "pending") if action_id in self.replica.mempool else None
        if height > self.replica.driver.last_height:  # stored, not yet executed (a moment)
            return ActionDocument(hex_id, "committed", height=height, outcome="pending_execution")
        return action_outcome_document(self.world, action_id, height)

    def agent_json(self, agent_id: str) -> dict[str, Any] | None:
        """The ``GET /v1/agents/{agent_id}`` document, or None."""
        agent = self.world.get_agent(agent_id)
        return to_builtins(agent) if agent is not None else None

    def modules_json(self) -> dict[str, Any]:
        """Known artifacts and installed instances."""
        return to_builtins(self.world.module_status())

    def build_json(self, build_id: str) -> dict[str, Any] | None:
        """The ``GET /v1/builds/{build_id}`` document: the world's record of the build (status,
        code, wasm_hash, toolchain, heights, each validator's attested outcome) and this node's
        own build of it (code and the compiler's message), or None when neither exists."""
        record = self.world.get_build(build_id)
        local = self._builds.reports.get(build_id)
        if record is None and local is None:
            return None
        doc: dict[str, Any] = {"build_id": build_id}
        if record is not None:
            doc.update(status=record.status, code=record.code, wasm_hash=record.wasm_hash, publisher=record.publisher,
                       module_id=record.module_id, version=record.manifest.version, toolchain=record.toolchain,
                       requested_at=record.requested_at, deadline_height=record.deadline,
                       attestations=dict(record.attestations))
        if local is not None:
            doc["this_node"] = local
        return doc

    def evidence_json(self) -> list[dict[str, Any]]:
        """Stored equivocation evidence (newest first)."""
        return [{"height": h, "kind": k, "payload": p.hex()} for h, k, p in self.replica.store.evidence()]

    def snapshots_json(self) -> list[dict[str, Any]]:
        """The ``GET /v1/snapshots`` list: the state-sync snapshots this node keeps and serves,
        newest first: ``height``, ``format``, ``size`` (bytes), ``chunks``, ``hash`` and
        ``state_root`` (hex)."""
        return [{"height": m.height, "format": m.format, "size": m.size, "chunks": len(m.chunk_hashes),
                 "hash": m.hash.hex(), "state_root": m.state_root.hex()} for m in self.archive.manifests()]

    def set_peer_filter(self, blocked: list[str]) -> list[str]:
        """Replace the operator's block list (``POST /v1/unsafe/peer_filter``); returns it sorted.
        Raises ValueError for a string that is not a peer id."""
        self.net.set_blocked_peers(blocked)
        return sorted(self.net.peer_filter.blocked)

    def readiness(self) -> tuple[bool, str]:
        """Ready when the data directory's disk has ``storage.min_free_mb`` free, connected to a
        peer (or alone in the validator set), receiving consensus
        traffic (a peer's vote, proposal or commit within ``SILENCE_MS`` of the replica's tick
        clock, counted from the first tick when none came yet), not syncing, and not diverged from
        the quorum's execution."""
        r = self.replica
        if self.state_sync is not None:
            return False, f"joining by state sync: {self.state_sync.phase}"
        if r.divergence is not None:
            return False, f"execution diverged from the quorum at height {r.divergence.height}"
        free, floor = self.free_bytes(), self.config.storage.min_free_mb * 2**20
        if 0 <= free < floor:
            return False, (f"only {free // 2**20} MiB free on the disk of {self.home.data_dir} (storage.min_free_mb = "
                           f"{self.config.storage.min_free_mb}): free space before writes fail")
        if len(r.validator_set) > 1:
            if not self.net.connected_peers():
                return False, "no peers connected"
            if r.consensus_silence_ms() > SILENCE_MS:
                return False, f"no vote, proposal or commit from any peer for more than {SILENCE_MS // 1000} s"
        if r.syncing:
            return False, "catching up by sync"
        return True, "ok"

    # -- run ------------------------------------------------------------------------------------
    # the trio-typing stubs that py-libp2p installs shadow trio's own types and lack TaskStatus
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[name-defined]
        """Run the node until cancelled: network, consensus, sync, gossip and the HTTP API."""
        from hypercorn.config import Config as HyperConfig
        from hypercorn.trio import serve

        hconf = HyperConfig()
        hconf.bind = [self.config.rpc.listen]
        hconf.accesslog = None
        hconf.errorlog = None
        hconf.graceful_timeout = 1.0
        # No read timeout: a /v1/stream client sends nothing for as long as it listens. A stalled
        # request body gets 408 from the API after BODY_TIMEOUT_S and its connection is closed; a
        # stalled request head counts as idle and is closed after keep_alive_timeout.
        hconf.read_timeout = None
        hconf.keep_alive_timeout = KEEP_ALIVE_TIMEOUT_S
        self.log.info(
            "node_starting",
            height=self.replica.height,
            execution_height=self.replica.driver.last_height,
            peer=self.peer_id,
            p2p=self.config.p2p.listen,
            rpc=self.config.rpc.listen,
            viewer=rpc_url_for(self.config.rpc.listen) + "/",
            validator=self.replica.is_validator,
        )
        try:
            async with self.net.run():
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(serve, create_app(self), hconf)
                    if self.config.statesync.enable:
                        if not home_is_empty(self.replica.store):
                            self.log.info("state_sync_skipped", height=self.replica.height,
                                          reason="this home already holds the chain; it continues from its own state")
                        elif not self.config.p2p.peers:
                            self.log.warning("state_sync_skipped", height=0,
                                             reason="no p2p.peers to fetch snapshots from; starting from genesis")
                        else:
                            await self._state_sync()
                    nursery.start_soon(self._inbound_loop)
                    nursery.start_soon(self._tick_loop)
                    await self._perform(self.replica.start())
                    task_status.started()
        finally:
            self.replica.store.close()
