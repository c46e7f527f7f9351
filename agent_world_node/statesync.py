"""Joining by state sync: restore the newest snapshot peers offer, verified, instead of replaying
every block from genesis (CometBFT's state sync: ``statesync/syncer.go``, with its light-client
check of the app hash; ADR-042).

A node started with an empty home and ``statesync.enable``:

1. **discovers** offers: it asks every connected peer for its snapshot manifests
   (``/agent-world/snapshot/1.0.0``, ``network.statesync``) and groups equal manifests (same
   height and hash) by the peers offering them; newest first, then the most widely offered;
2. **verifies the base** of an offer of height ``S`` before fetching it: the committed blocks of
   ``S`` and ``S + 1`` with their commit certificates, fetched by block sync. Both certificates
   must carry more than 2/3 of the validator set's stake (the genesis set, the only one until
   validator-set changes exist, so a certificate is all a light client needs), block ``S + 1``
   must extend block ``S``, and its header carries the quorum's execution results of ``S``
   (``last_execution_state_root``, ``last_execution_block_hash``): the certified state root the
   snapshot must have. With ``trust_height``/``trust_hash`` set, that block's hash must match too
   and older offers are skipped;
3. **fetches the chunks** from the offering peers (a few at a time, spread over them), each
   checked against the manifest's sha256 for it, then the whole against the manifest's hash;
4. **restores** the world (``World.restore_snapshot`` recomputes the state root from the
   records) and compares its root with the certified one.

A peer whose chunk does not match the manifest it listed, or whose snapshot restores to another
root, is penalized (``Offence.BAD_SNAPSHOT``, a ban) and skipped; the next peer or the next
offer is tried. When no offer succeeds the node waits and discovers again. The result is
installed (``install``) in the order a crash cannot break: the world snapshot, then block ``S``,
then the execution record of ``S`` (the commit point: a home without it is still empty and
state-syncs again). The node then block-syncs from ``S + 1`` and joins consensus.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import trio

from agent_world_runtime import World
from agent_world_runtime.codec import DecodeError, decode
from agent_world_runtime.crypto import sha256
from agent_world_runtime.failpoints import failpoint
from agent_world_runtime.modules.sandbox import Sandbox
from agent_world_runtime.persistence import SnapshotError
from agent_world_runtime.snapshots import SnapshotManifest, verify_chunk
from agent_world_runtime.staking.records import validator_set_hash

from .config import StateSyncConfig
from .consensus.certificate import InvalidCertificate, verify_commit_certificate
from .consensus.validators import ValidatorSet
from .network import P2PNetwork, SyncError
from .replica.validity import block_shape_problem
from .store import ExecutionRecord, NodeStore
from .types import ZERO_HASH, Offence, ReplicatedCommitPayload

log = structlog.get_logger(__name__)

#: Chunk requests in flight at once.
PARALLEL_CHUNKS = 4
#: Failed chunk requests (timeouts, refusals) after which a peer is no longer asked for this offer.
MAX_CHUNK_FAILURES = 3
#: Pause between discovery rounds when no offer could be used.
RETRY_DISCOVERY_S = 2.0


class StateSyncErrorCode(enum.StrEnum):
    """Why one offer could not be used (the syncer then tries the next)."""

    BASE_UNAVAILABLE = "base_unavailable"  # no peer served the blocks of S and S+1
    BASE_INVALID = "base_invalid"  # those blocks or their certificates do not verify
    TRUST_MISMATCH = "trust_mismatch"  # the trusted height's block has another hash
    ROOT_MISMATCH = "root_mismatch"  # the snapshot's root is not the certified one
    CHUNKS_UNAVAILABLE = "chunks_unavailable"  # no honest peer left to fetch a chunk from
    SET_UNKNOWN = "set_unknown"  # the validator set signing S or S+1 is not the one this node knows


class StateSyncError(Exception):
    """One offer failed; ``code`` says why and the message what was wrong."""

    def __init__(self, code: StateSyncErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Offer:
    """One snapshot (a manifest) and the peers offering it, in the order they answered."""

    manifest: SnapshotManifest
    peers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LightBase:
    """A verified snapshot base: block ``height`` (with its certificate, stored as the node's
    first block) and, from the certified header of ``height + 1``, the quorum's execution results
    of ``height``."""

    height: int
    payload: ReplicatedCommitPayload
    execution_block_hash: bytes
    state_root: bytes


def group_offers(answers: dict[str, list[bytes]]) -> list[Offer]:
    """Group peers' encoded manifests (``answers``: peer to what it listed) into offers, newest
    first, then the most widely offered. Undecodable or impossible manifests are skipped."""
    offers: dict[tuple[int, bytes], Offer] = {}
    for peer, raws in answers.items():
        for raw in raws:
            try:
                manifest = decode(raw, SnapshotManifest)
            except DecodeError:
                continue
            if manifest.problem() is not None:
                continue
            offer = offers.setdefault((manifest.height, manifest.hash), Offer(manifest))
            if peer not in offer.peers:
                offer.peers.append(peer)
    return sorted(offers.values(), key=lambda o: (-o.manifest.height, -len(o.peers)))


def verify_base(lower: ReplicatedCommitPayload, upper: ReplicatedCommitPayload, height: int, chain_id: str,
                validator_set: ValidatorSet) -> LightBase:
    """Check the committed blocks of ``height`` (``lower``) and ``height + 1`` (``upper``) as a
    light client does (module docstring, step 2) and return the verified base. Raises
    ``StateSyncError`` (``BASE_INVALID``) naming the first problem."""
    known = validator_set_hash([(v.id, v.stake) for v in validator_set])
    for payload, h in ((lower, height), (upper, height + 1)):
        block, cert = payload.block, payload.certificate
        if block.header.validators_hash != known:
            raise StateSyncError(
                StateSyncErrorCode.SET_UNKNOWN,
                f"block {h} is certified by a validator set other than the genesis set (the set changed at an "
                "epoch boundary); this node cannot verify it without replaying the chain of sets: set "
                "statesync.enable = false to sync blocks from genesis")
        problem = block_shape_problem(block, chain_id, h)
        if problem is None:
            try:
                verify_commit_certificate(cert, block.hash(), chain_id, validator_set, height=h)
            except InvalidCertificate as exc:
                problem = f"invalid commit certificate: {exc}"
        if problem is not None:
            raise StateSyncError(StateSyncErrorCode.BASE_INVALID, f"block {h}: {problem}")
    header = upper.block.header
    if header.prev_block_hash != lower.block.hash():
        raise StateSyncError(StateSyncErrorCode.BASE_INVALID, f"block {height + 1} does not extend block {height}")
    if header.last_execution_height != height:
        raise StateSyncError(StateSyncErrorCode.BASE_INVALID,
                             f"block {height + 1} carries execution results of {header.last_execution_height}")
    return LightBase(height, lower, header.last_execution_block_hash, header.last_execution_state_root)


def home_is_empty(store: NodeStore) -> bool:
    """Whether ``store`` holds no execution record: nothing executed, so nothing to lose by
    restoring a snapshot (a block stored by an interrupted ``install`` is the certified one and is
    kept)."""
    return store.last_execution() is None


def install(world: World, base: LightBase, store: NodeStore, snapshot_dir: Path) -> None:
    """Make ``world`` (restored at ``base.height``) this home's state, crash-safely (module
    docstring): the world snapshot, block ``base.height``, then its execution record (its events
    root is unknown, the events are not held: zero). Raises OSError on I/O failure."""
    world.save_to_dir(Path(snapshot_dir) / "current")
    failpoint("statesync.after_world")
    block = base.payload.block
    store.put_block(block, base.payload.certificate)
    failpoint("statesync.after_block")
    store.put_execution(ExecutionRecord(base.height, base.execution_block_hash, base.state_root, ZERO_HASH,
                                        len(block.actions)))


class StateSyncer:
    """Runs steps 1-4 of the module docstring over ``net`` until one offer succeeds.

    ``validator_set`` verifies certificates; ``sandbox`` runs the restored world's modules."""

    def __init__(self, net: P2PNetwork, chain_id: str, validator_set: ValidatorSet, config: StateSyncConfig,
                 sandbox: Sandbox | None = None) -> None:
        self.net = net
        self.chain_id = chain_id
        self.validator_set = validator_set
        self.config = config
        self.sandbox = sandbox
        self.timeout_s = config.chunk_timeout_ms / 1000
        #: what the syncer is doing, for ``/ready`` and status
        self.phase = "discovering snapshots"
        self.chunks_fetched = 0
        self.chunks_total = 0

    async def run(self) -> tuple[World, LightBase]:
        """Return the restored world and its verified base. Retries discovery until an offer
        succeeds (cancel the caller to give up)."""
        await trio.sleep(self.config.discovery_ms / 1000)
        attempt = 0
        while True:
            attempt += 1
            self.phase = "discovering snapshots"
            offers = await self._discover()
            trusted = self.config.trust_height
            usable = [o for o in offers if o.manifest.height >= trusted]
            # while no snapshot exists yet (a young chain), one line every 30 s
            (log.info if offers or attempt % 15 == 1 else log.debug)("state_sync_offers", attempt=attempt, offers=len(offers), usable=len(usable),
                     heights=[o.manifest.height for o in usable[:5]], peers=len(self.net.connected_peers()))
            for offer in usable:
                try:
                    return await self._try(offer)
                except StateSyncError as exc:
                    log.warning("state_sync_offer_failed", height=offer.manifest.height, code=exc.code.value,
                                error=str(exc))
            await trio.sleep(RETRY_DISCOVERY_S)

    async def _discover(self) -> list[Offer]:
        answers: dict[str, list[bytes]] = {}

        async def ask(peer: str) -> None:
            try:
                answers[peer] = await self.net.fetch_snapshot_manifests(peer, timeout_s=self.timeout_s)
            except (SyncError, ValueError) as exc:
                log.info("state_sync_peer_unavailable", peer=peer, error=str(exc))

        async with trio.open_nursery() as nursery:
            for peer in self.net.connected_peers():
                nursery.start_soon(ask, peer)
        return group_offers(answers)

    async def _fetch_payload(self, height: int, peers: list[str]) -> ReplicatedCommitPayload:
        """Block ``height`` with its certificate from the first of ``peers`` (then any connected
        peer) that serves it; decoded, not yet verified."""
        candidates = list(dict.fromkeys(peers + self.net.connected_peers()))
        for peer in candidates:
            try:
                [raw] = await self.net.fetch_blocks(peer, height, height, timeout_s=self.timeout_s)
                return decode(raw, ReplicatedCommitPayload)
            except (SyncError, ValueError, DecodeError):
                continue
        raise StateSyncError(StateSyncErrorCode.BASE_UNAVAILABLE, f"no peer served block {height}")

    async def _try(self, offer: Offer) -> tuple[World, LightBase]:
        manifest = offer.manifest
        height = manifest.height
        self.phase = f"verifying the snapshot of height {height}"
        if self.config.trust_height:
            trusted = await self._fetch_payload(self.config.trust_height, offer.peers)
            verify_base(trusted, await self._fetch_payload(self.config.trust_height + 1, offer.peers),
                        self.config.trust_height, self.chain_id, self.validator_set)
            if trusted.block.hash().hex() != self.config.trust_hash.lower():
                raise StateSyncError(StateSyncErrorCode.TRUST_MISMATCH,
                                     f"block {self.config.trust_height} has hash {trusted.block.hash().hex()}, "
                                     f"statesync.trust_hash says {self.config.trust_hash}")
        base = verify_base(await self._fetch_payload(height, offer.peers),
                           await self._fetch_payload(height + 1, offer.peers), height, self.chain_id,
                           self.validator_set)
        if manifest.state_root != base.state_root:
            self._blame(offer.peers, height, "the manifest's state root is not the certified one")
            raise StateSyncError(StateSyncErrorCode.ROOT_MISMATCH,
                                 f"snapshot of height {height} records state root {manifest.state_root.hex()}, "
                                 f"the certified root is {base.state_root.hex()}")
        self.phase = f"fetching the snapshot of height {height}"
        data = await self._fetch_chunks(offer)
        self.phase = f"restoring the snapshot of height {height}"
        try:
            world = World.restore_snapshot(data, sandbox=self.sandbox)
        except SnapshotError as exc:
            self._blame(offer.peers, height, f"the snapshot does not restore: {exc}")
            raise StateSyncError(StateSyncErrorCode.ROOT_MISMATCH, f"snapshot of height {height}: {exc}") from None
        if world.state_root() != base.state_root or world.height != height:
            self._blame(offer.peers, height, "the restored state root is not the certified one")
            raise StateSyncError(StateSyncErrorCode.ROOT_MISMATCH,
                                 f"snapshot of height {height} restores to root {world.state_root().hex()} at "
                                 f"height {world.height}, the certified root is {base.state_root.hex()}")
        return world, base

    def _blame(self, peers: list[str], height: int, reason: str) -> None:
        for peer in peers:
            log.warning("state_sync_bad_snapshot", peer=peer, height=height, reason=reason)
            self.net.penalize(peer, Offence.BAD_SNAPSHOT)

    async def _fetch_chunks(self, offer: Offer) -> bytes:
        """Every chunk of ``offer``, each verified; a peer serving a wrong chunk is penalized and
        no longer asked. Raises ``StateSyncError`` when no peer is left for a chunk."""
        manifest = offer.manifest
        count = len(manifest.chunk_hashes)
        chunks: list[bytes | None] = [None] * count
        good = list(offer.peers)
        self.chunks_fetched, self.chunks_total = 0, count
        send, receive = trio.open_memory_channel[int](count)
        for i in range(count):
            send.send_nowait(i)
        send.close()
        failed: list[StateSyncError] = []
        failures: dict[str, int] = {}

        async def worker(slot: int) -> None:
            async for index in receive:
                turn = slot + index
                while chunks[index] is None:
                    if not good:
                        failed.append(StateSyncError(StateSyncErrorCode.CHUNKS_UNAVAILABLE,
                                                     f"no honest peer left for chunk {index} of height {manifest.height}"))
                        return
                    peer = good[turn % len(good)]
                    turn += 1
                    try:
                        data = await self.net.fetch_snapshot_chunk(peer, manifest.height, index,
                                                                   max_bytes=manifest.chunk_bytes, timeout_s=self.timeout_s)
                    except (SyncError, ValueError) as exc:
                        log.info("state_sync_chunk_failed", peer=peer, height=manifest.height, chunk=index, error=str(exc))
                        failures[peer] = failures.get(peer, 0) + 1
                        if failures[peer] >= MAX_CHUNK_FAILURES and peer in good:
                            good.remove(peer)  # unreachable, refusing or too slow: ask the others
                        await trio.sleep(0.2)
                        continue
                    problem = verify_chunk(manifest, index, data)
                    if problem is not None:
                        self._blame([peer], manifest.height, problem)
                        if peer in good:
                            good.remove(peer)
                        continue
                    chunks[index] = data
                    self.chunks_fetched += 1

        async with trio.open_nursery() as nursery:
            for slot in range(min(PARALLEL_CHUNKS, count)):
                nursery.start_soon(worker, slot)
        if failed:
            raise failed[0]
        data = b"".join(c for c in chunks if c is not None)
        if sha256(data) != manifest.hash:  # chunks all matched, so the manifest itself lies
            self._blame(offer.peers, manifest.height, "the chunks do not make the manifest's hash")
            raise StateSyncError(StateSyncErrorCode.ROOT_MISMATCH, "the snapshot's chunks do not hash to the manifest's hash")
        return data
