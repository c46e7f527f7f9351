"""One Agent World node process: the trio I/O shell around a ``Replica`` (DESIGN.md, "The node
daemon").

The ``Replica`` holds consensus, mempool, block store and execution and does no I/O; this module
connects it to the world: the libp2p network (gossip in, ``Publish`` out, height-keyed sync), timers
(``StartTimer``), the HTTP API, and periodic gossip (batched client actions, status heartbeats,
re-gossip of a stalled height's messages).

Concurrency (trio, no hidden tasks; all run in the nursery of ``Node.run``). The replica is only
touched from the trio thread, and every call into it runs to completion before the outputs are
performed, so no lock is needed.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
import trio

from agent_world_runtime import World
from agent_world_runtime.codec import to_builtins
from agent_world_runtime.modules.sandbox import Sandbox

from . import config as cfg
from .consensus import TimeoutFired
from .metrics import NodeMetrics
from .network import NetworkConfig, P2PNetwork, SyncError
from .replica import MAX_GOSSIP_BYTES, AdmissionResult, Misbehaviour, Output, Publish, Replica, StartTimer
from .store import NodeStore

log = structlog.get_logger(__name__)

ACTION_BATCH_INTERVAL_S = 0.1
STATUS_INTERVAL_S = 1.0
SYNC_INTERVAL_S = 0.5
SYNC_BATCH_HEIGHTS = 200
REGOSSIP_AFTER_S = 1.5

__all__ = ["AdmissionResult", "Node"]


def _divergence_json(d: Any) -> dict[str, Any] | None:
    if d is None:
        return None
    return {"height": d.height, "our_state_root": d.our_root.hex(), "quorum_state_root": d.quorum_root.hex()}


class Node:
    """A validator (or observer) node built from a home directory.

    Raises ``config.ConfigError`` when the home is incomplete or invalid, and
    ``execution.ExecutionError`` when the stored state cannot be restored.
    """

    def __init__(self, home: cfg.Home, peers: list[str] | None = None) -> None:
        self.home = home
        self.config = cfg.read_config(home.config_file)
        genesis = cfg.read_genesis(home.genesis_file)
        if peers is not None:
            self.config.p2p.peers = list(peers)
        node_key = cfg.read_key(home.node_key_file)
        self.metrics = NodeMetrics()
        self.net = P2PNetwork(
            NetworkConfig(
                chain_id=genesis.chain_id,
                listen_addr=self.config.p2p.listen,
                peers=list(self.config.p2p.peers),
                key_seed=node_key.seed,
                max_gossip_bytes=MAX_GOSSIP_BYTES,
                peer_rate_limit=self.config.p2p.peer_rate_limit,
                peer_rate_burst=self.config.p2p.peer_rate_burst,
                ban_threshold=self.config.p2p.ban_threshold,
                ban_seconds=self.config.p2p.ban_seconds,
            ),
            sync_handler=self._serve_sync,
        )
        self.peer_id = self.net.peer_id
        self.replica = Replica.open(
            genesis=genesis,
            consensus=self.config.consensus,
            validator_key=cfg.read_key(home.validator_key_file),
            store=NodeStore(home.db_file),
            snapshot_dir=home.snapshot_dir,
            snapshot_interval=self.config.storage.snapshot_interval,
            node_id=self.peer_id,
            now_ms=lambda: int(time.time() * 1000),
            mempool_size=self.config.mempool.max_actions,
            metrics=self.metrics,
            # compiled modules are cached on disk, keyed by (wasm_hash, wasmtime version, engine
            # configuration) and checked before loading
            sandbox=Sandbox(cache_dir=home.data_dir / "module-cache"),
        )
        self._sync_wakeup = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._started_at = time.time()
        self._syncing = False
        self._last_progress = 0.0
        self._progress_height = -1
        self.log = log.bind(node=self.config.moniker)

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

    def admit_json(self, body: bytes) -> AdmissionResult:
        """Admit a JSON ``SignedAction`` from the HTTP API."""
        return self.replica.admit_json(body)

    def admit_batch_json(self, body: bytes) -> list[AdmissionResult]:
        """Admit a JSON ``{"actions": [...]}`` batch from the HTTP API (``Replica.admit_batch_json``)."""
        return self.replica.admit_batch_json(body)

    # -- performing the replica's outputs -------------------------------------------------------
    async def _perform(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Publish):
                await self.net.publish(out.topic, out.data)
            elif isinstance(out, StartTimer):
                assert self._nursery is not None
                self._nursery.start_soon(self._timer, out)
            elif isinstance(out, Misbehaviour):
                self.log.info("peer_misbehaved", peer=out.peer, reason=out.reason)
                self.net.penalize(out.peer, out.reason)
        if self.replica.sync_target(set(self.net.connected_peers())) is not None:
            self._sync_wakeup.set()

    async def _timer(self, timer: StartTimer) -> None:
        await trio.sleep(timer.duration_ms / 1000)
        if timer.kind == "commit":
            await self._perform(self.replica.handle_commit_timer(timer.height))
        else:
            await self._perform(self.replica.handle_timeout(TimeoutFired(timer.kind, timer.height, timer.round)))  # type: ignore[arg-type]

    # -- tasks ----------------------------------------------------------------------------------
    async def _inbound_loop(self) -> None:
        async for msg in self.net.incoming:
            await self._perform(self.replica.handle_gossip(msg.data, msg.peer_id))

    async def _action_gossip_loop(self) -> None:
        while True:
            await trio.sleep(ACTION_BATCH_INTERVAL_S)
            while (batch := self.replica.take_pending_action_gossip()) is not None:
                await self.net.publish(batch.topic, batch.data)

    async def _status_loop(self) -> None:
        while True:
            out = self.replica.status_message()
            await self.net.publish(out.topic, out.data)
            self.metrics.peers.set(len(self.net.connected_peers()))
            self.metrics.mempool_size.set(len(self.replica.mempool))
            net = self.net.stats()
            self.metrics.peer_bans.set(len(net["banned_peers"]))
            for reason, n in net["dropped"].items():
                self.metrics.gossip_dropped.labels(reason).set(n)
            for reason, n in net["penalties"].items():
                self.metrics.peer_penalties.labels(reason).set(n)
            await trio.sleep(STATUS_INTERVAL_S)

    async def _regossip_loop(self) -> None:
        """Re-broadcast the current height's message log while the height makes no progress
        (see ``Replica.height_messages_to_regossip``)."""
        while True:
            await trio.sleep(REGOSSIP_AFTER_S / 2)
            now = trio.current_time()
            if self.replica.height != self._progress_height:
                self._progress_height = self.replica.height
                self._last_progress = now
                continue
            if now - self._last_progress < REGOSSIP_AFTER_S:
                continue
            messages = self.replica.height_messages_to_regossip()
            self.log.info("regossip", height=self.replica.core.height, round=self.replica.core.round, messages=len(messages))
            await self._perform(messages)
            self._last_progress = now

    async def _serve_sync(self, from_height: int, to_height: int) -> list[bytes]:
        """Serve stored blocks ``from_height..to_height`` (inclusive) as encoded payloads."""
        return self.replica.serve_sync(from_height, to_height)

    async def _sync_loop(self) -> None:
        """Fetch committed blocks from the most advanced peer whenever we are more than one height
        behind (DESIGN.md: anything a node missed it recovers by sync, never by luck)."""
        while True:
            with trio.move_on_after(SYNC_INTERVAL_S):
                await self._sync_wakeup.wait()
            self._sync_wakeup = trio.Event()
            target = self.replica.sync_target(set(self.net.connected_peers()))
            if target is None:
                self._syncing = False
                continue
            peer, height = target
            self._syncing = True
            start = self.replica.height + 1
            end = min(height, start + SYNC_BATCH_HEIGHTS - 1)
            try:
                payloads = await self.net.fetch_blocks(peer, start, end)
            except SyncError as exc:
                self.log.warning("sync_failed", peer=peer, from_height=start, to_height=end, error=str(exc))
                self.replica.forget_peer_height(peer)
                continue
            before = self.replica.height
            await self._perform(self.replica.handle_synced(payloads, peer))
            if self.replica.height == before:
                self.replica.forget_peer_height(peer)
                self.log.warning("sync_made_no_progress", peer=peer, from_height=start, to_height=end,
                                 payloads=len(payloads))
            else:
                self.log.info("synced", peer=peer, from_height=before + 1, to_height=self.replica.height, target=height)

    # -- API views ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The ``GET /v1/status`` document."""
        peers = self.net.connected_peers()
        return {
            "node_id": self.peer_id,
            "moniker": self.config.moniker,
            "chain_id": self.replica.chain_id,
            "validator": self.replica.validator_id if self.replica.is_validator else None,
            "height": self.replica.height,
            "round": self.replica.core.round,
            "execution_height": self.replica.driver.last_height,
            "execution_block_hash": self.replica.driver.last_block_hash.hex(),
            "execution_state_root": self.replica.driver.last_state_root.hex(),
            "peers": peers,
            "peer_count": len(peers),
            "mempool_size": len(self.replica.mempool),
            "actions_committed": self.replica.actions_committed,
            "execution_mismatches": self.replica.execution_mismatches,
            "execution_diverged": _divergence_json(self.replica.divergence),
            "peer_filter": {
                "blocked": sorted(self.net.peer_filter.blocked),
                "banned": self.net.peer_filter.banned(),
                "bans_total": self.net.peer_filter.bans_total,
            },
            "module_calls": self.world.stats().get("module_calls", 0),
            "syncing": self._syncing,
            "uptime_s": round(time.time() - self._started_at, 1),
        }

    def block_json(self, height: int) -> dict[str, Any] | None:
        """The ``GET /v1/blocks/{height}`` document, or None."""
        stored = self.replica.store.get_block(height)
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
        rec = self.replica.store.get_execution(height)
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
        return [{"height": h, "kind": k, "payload": p.hex()} for h, k, p in self.replica.store.evidence()]

    def set_peer_filter(self, blocked: list[str]) -> list[str]:
        """Replace the operator's block list (``POST /v1/unsafe/peer_filter``); returns it sorted.
        Raises ValueError for a string that is not a peer id."""
        self.net.set_blocked_peers(blocked)
        return sorted(self.net.peer_filter.blocked)

    def readiness(self) -> tuple[bool, str]:
        """Ready when connected to a peer (or alone in the validator set), not syncing, and not
        diverged from the quorum's execution."""
        if self.replica.divergence is not None:
            return False, f"execution diverged from the quorum at height {self.replica.divergence.height}"
        if len(self.replica.validator_set) > 1 and not self.net.connected_peers():
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
            height=self.replica.height,
            execution_height=self.replica.driver.last_height,
            peer=self.peer_id,
            p2p=self.config.p2p.listen,
            rpc=self.config.rpc.listen,
            validator=self.replica.is_validator,
        )
        try:
            async with self.net.run():
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(serve, create_app(self), hconf)
                    nursery.start_soon(self._inbound_loop)
                    nursery.start_soon(self._sync_loop)
                    nursery.start_soon(self._action_gossip_loop)
                    nursery.start_soon(self._status_loop)
                    nursery.start_soon(self._regossip_loop)
                    await self._perform(self.replica.start())
                    task_status.started()
        finally:
            self.replica.store.close()
