"""The simulated cluster: real ``Replica``s (real consensus core, mempool, SQLite store, world
runtime and execution driver) driven by one event loop on a virtual clock over ``SimNetwork``.

One process, no threads, no trio, no wall clock: every event comes off one ``EventQueue`` and
every random choice from one ``random.Random`` seeded from the scenario, so a scenario always
gives the same trace (``SimResult.digest``).

What the cluster does for each node is what the trio daemon (``node.py``) does, in virtual time,
with the same node-run policy (``config.PolicyConfig()``, performed by ``Replica.tick``):

- performs the replica's outputs: ``Publish`` goes to every other node through the network (a
  Byzantine node's ``Behaviour`` may rewrite it first), ``StartTimer`` and ``StartCommitWait``
  become timer events that call ``handle_timeout`` / ``handle_commit_wait`` (timers of a crashed
  incarnation are void), ``FetchBlocks`` becomes a sync request through the network whose answer
  is handed to ``handle_synced`` (a lost request or answer is the replica's sync timeout);
- delivers gossip with ``handle_gossip``, and relays a proposal or vote to one random peer with
  probability ``RELAY_PROB`` (gossipsub forwarding, so both halves of an equivocation spread);
- calls ``Replica.tick`` every ``policy.tick_interval_ms`` with the virtual time and the peers it
  can reach;
- crashes a node (its replica, mempool and timers are gone; its ``SimStore`` and snapshot
  directory stay) and restarts it with ``Replica.open`` + ``start`` on the same store. A lossy
  crash interrupts the node's next step that writes (within ``LOSSY_CRASH_WAIT_MS``): the step's
  outputs are never performed and a random suffix of its writes is lost (``SimStore``).

Every node's clock (the replica's ``now_ms``, which stamps its proposals and judges whether a proposal
is timely) reads ``GENESIS_TIME_MS`` + virtual time + the node's skew: 0..50 ms drawn per node, plus
the scenario's ``clock_skews``.

Clients submit actions to random up honest nodes every ``client_interval_ms``. The
``PropertyChecker`` watches every commit, every message honest validators publish and when honest
nodes first see each proposed block (for ``block_time``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import structlog

from agent_world_runtime.actions import Bond, Unbond, encode_signed_action
from agent_world_runtime.codec import DecodeError, decode
from agent_world_runtime.crypto import SigningKey, sha256, verify

from ..config import PolicyConfig, StorageConfig
from ..consensus import ConsensusCore, TimeoutFired, ValidatorSet
from ..replica import ActionSource, FetchBlocks, Misbehaviour, Publish, Replica, StartCommitWait, StartTimer
from ..types import PROPOSAL_SIGN_DOMAIN, VOTE_SIGN_DOMAIN, GossipProposalMessage, GossipVoteMessage, Proposal, Topic
from .attacks import install_attack
from .byzantine import Behaviour, ByzContext, Send, make_behaviour
from .chain import GENESIS_TIME_MS, SIM_CONSENSUS, make_genesis, operator_signers
from .clients import ClientPopulation
from .clock import EventQueue
from .network import Delivery, LinkConditions, SimNetwork, SyncRequest, SyncResponse
from .properties import PropertyChecker
from .result import SimResult, trace_lines
from .scenario import LATE_JOINER, PROGRESS_BOUND_MS, FaultEvent, Scenario, StakeChange
from .store import SimStore

#: The node-run policy every simulated node runs: the daemon's defaults.
POLICY = PolicyConfig()
RELAY_PROB = 0.25
#: Storage settings of simulated nodes: a snapshot every 5 heights, so crashes meet snapshots often.
STORAGE = StorageConfig(snapshot_interval=5)
LOSSY_CRASH_WAIT_MS = 1_000
MAX_EVENTS = 2_000_000


@dataclass(frozen=True, slots=True)
class Timer:
    """A replica timer (``StartTimer`` or ``StartCommitWait``) of node ``node``'s incarnation."""

    node: str
    incarnation: int
    output: StartTimer | StartCommitWait


@dataclass(frozen=True, slots=True)
class Tick:
    """Time for node ``node``'s ``Replica.tick``."""

    node: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class ClientTick:
    """A client submits one action."""


@dataclass(frozen=True, slots=True)
class Stabilise:
    """``heal_at``: partitions and message loss end; every crashed node is restarted."""


@dataclass
class SimNode:
    """One simulated node: identity, disk (store + snapshot dir), the running replica (None while
    crashed) and the driver-side state the daemon would keep."""

    name: str
    validator: int
    key: SigningKey
    honest: bool
    store: SimStore
    snapshot_dir: Path
    skew_ms: int
    behaviour: Behaviour | None = None
    replica: Replica | None = None
    incarnation: int = 0
    observed_height: int = 0
    sync_request: int = 0
    crash_pending_until: int | None = None
    relays: bool = True

    @property
    def up(self) -> bool:
        """True while the node runs."""
        return self.replica is not None


@contextlib.contextmanager
def quiet_logs(level: int = logging.CRITICAL) -> Iterator[None]:
    """Silence structlog below ``level`` for the duration (thousands of simulated nodes' logs
    would dominate the run time), restoring the previous configuration afterwards."""
    old = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level), cache_logger_on_first_use=False)
    try:
        yield
    finally:
        structlog.configure(**old)


def _scratch_dir() -> str | None:
    """Where snapshot directories go: a RAM-backed /dev/shm when writable (snapshot writes fsync,
    which is the simulated disk's cost, not the node's), else the system temp directory."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


class SimCluster:
    """Runs one ``Scenario`` (see the module docstring). ``core_factory`` builds every node's
    consensus core (tests pass deliberately broken cores); ``core_name`` labels it in verdicts.
    Call ``run()`` once."""

    def __init__(
        self,
        scenario: Scenario,
        core_factory: Callable[..., ConsensusCore] = ConsensusCore,
        *,
        core_name: str = "correct",
        stop_on_violation: bool = True,
    ) -> None:
        self.scenario = scenario
        self.core_factory = core_factory
        self.core_name = core_name
        self.stop_on_violation = stop_on_violation
        self.rng = random.Random(f"{scenario.seed}/run")
        self.queue = EventQueue()
        self.network = SimNetwork(
            self.queue,
            self.rng,
            LinkConditions(scenario.base_delay_ms, scenario.jitter_ms, scenario.drop_prob, scenario.dup_prob),
        )
        self.genesis, self.keys = make_genesis(scenario)
        self.operators = operator_signers(self.genesis.chain_id, scenario.seed, len(self.keys))
        self.validator_set = ValidatorSet.from_genesis(self.genesis)
        self.validator_names = {k.public_key.hex(): f"v{i}" for i, k in enumerate(self.keys)}
        self.clients = ClientPopulation(self.genesis.chain_id, scenario.clients, scenario.seed, self.rng)
        self.nodes: dict[str, SimNode] = {}
        self.trace: list[tuple[int, str]] = []
        self.stats: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._request_ids = 0
        self.heights_at_heal: dict[str, int] = {}
        self.stabilised = False
        honest_validators = {self.keys[i].public_key.hex() for i in range(len(self.keys)) if scenario.behaviour_of(i) is None}
        self.checker = PropertyChecker(
            self.genesis, set(scenario.honest_nodes()), honest_validators, self.clients.submitted
        )
        self.checker.synchronized_clocks = self._synchronized_clocks

    # -- set-up ---------------------------------------------------------------------------------------
    def _build_nodes(self, root: Path) -> None:
        names = self.scenario.node_names()
        stake_of = {name: self.scenario.stakes[i] if i >= 0 else 0 for name, i in names}
        for name, i in names:
            behaviour_name = self.scenario.behaviour_of(i)
            node = SimNode(
                name=name,
                validator=i,
                key=self.keys[i] if i >= 0 else SigningKey(sha256(f"sim-late/{self.scenario.seed}".encode())),
                honest=behaviour_name is None,
                store=SimStore(),
                snapshot_dir=root / name,
                skew_ms=self.rng.randint(0, 50) + self.scenario.skew_of(i),
            )
            if behaviour_name is not None:
                ctx = ByzContext(
                    name=name,
                    key=self.keys[i],
                    chain_id=self.genesis.chain_id,
                    validator_set=self.validator_set,
                    rng=self.rng,
                    peers=[p for p, _ in names if p != name],
                    node_stake={p: s for p, s in stake_of.items() if p != name},
                    height=lambda node=node: node.replica.height if node.replica else 0,
                )
                node.behaviour = make_behaviour(behaviour_name, ctx)
            self.nodes[name] = node

    def _open(self, node: SimNode) -> Replica:
        replica = Replica.open(
            genesis=self.genesis,
            consensus=SIM_CONSENSUS,
            policy=POLICY,
            validator_key=node.key,
            store=node.store,
            snapshot_dir=node.snapshot_dir,
            snapshot_interval=STORAGE.snapshot_interval,
            node_id=node.name,
            now_ms=lambda: self._clock(node),
            core_factory=self.core_factory,
        )
        write_snapshot = replica.driver.write_snapshot

        def write_snapshot_durably() -> None:  # a snapshot on disk cannot be lost by a crash
            write_snapshot()
            node.store.mark_barrier("snapshot")

        replica.driver.write_snapshot = write_snapshot_durably  # type: ignore[method-assign]
        return replica

    def _boot(self, node: SimNode) -> None:
        """Open the node's replica on its store and start it (first start or restart)."""
        node.incarnation += 1
        node.store.begin_step()
        try:
            node.replica = self._open(node)
        except Exception as exc:
            self.checker.on_exception(node.name, "restart (Replica.open)", exc, self.queue.now)
            return
        node.observed_height = node.replica.height
        node.sync_request = 0
        self._step(node, "start", node.replica.start)
        self.queue.after(self.rng.randint(1, POLICY.tick_interval_ms), Tick(node.name, node.incarnation))

    def _clock(self, node: SimNode) -> int:
        """Node ``node``'s clock now (Unix ms): what its replica's ``now_ms()`` reads."""
        return GENESIS_TIME_MS + self.queue.now + node.skew_ms

    def _synchronized_clocks(self) -> list[int]:
        """The clocks, now, of the honest nodes without a scenario clock skew (up or not)."""
        return [self._clock(self.nodes[name]) for name in self.scenario.synchronized_nodes()]

    def _note_proposal(self, data: bytes) -> None:
        """An honest node publishes or receives proposal gossip ``data``: note when its block was
        first seen (the ``block_time`` property's lower bound)."""
        try:
            msg = decode(data, GossipProposalMessage)
        except (DecodeError, UnicodeDecodeError):
            return
        self.checker.on_proposal_seen(msg.proposal.block.hash(), self.queue.now)

    # -- stepping a node ----------------------------------------------------------------------------
    def _step(self, node: SimNode, what: str, fn: Callable[[], list[Any]]) -> None:
        """Run one replica call, then crash (lossy) or observe its commits and perform its outputs."""
        node.store.begin_step()
        try:
            outputs = fn()
        except Exception as exc:
            self.checker.on_exception(node.name, what, exc, self.queue.now)
            outputs = []
        if node.crash_pending_until is not None and (
            node.store.step_writes() > 0 or self.queue.now >= node.crash_pending_until
        ):
            lost = node.store.lose_unsynced(self.rng.randint(0, node.store.step_writes()))
            self._crash(node, f"mid-step ({what}; {len(outputs)} outputs unsent; lost: {', '.join(lost) or 'nothing'})")
            self.stats["writes_lost"] += len(lost)
            return
        self._observe(node)
        self._perform(node, outputs)

    def _observe(self, node: SimNode) -> None:
        replica = node.replica
        if replica is None or replica.height <= node.observed_height:
            return
        for h in range(node.observed_height + 1, replica.height + 1):
            stored = node.store.get_block(h)
            if stored is None:
                self.checker.fail("validity", "replica reports a committed height missing from its store",
                                  height=h, nodes=(node.name,), now=self.queue.now)
                continue
            self.checker.on_commit(node.name, h, stored.block, stored.certificate, node.store.get_execution(h), self.queue.now)
        node.observed_height = replica.height

    def _perform(self, node: SimNode, outputs: list[Any]) -> None:
        for out in outputs:
            if isinstance(out, Publish):
                if node.honest and out.topic in (Topic.PROPOSAL, Topic.VOTE):
                    self._record_signed(node, out.data)
                sends = node.behaviour.outgoing(out.topic, out.data) if node.behaviour else [(None, out.topic, out.data)]
                self._send(node, sends)
            elif isinstance(out, (StartTimer, StartCommitWait)):
                self.queue.after(out.duration_ms, Timer(node.name, node.incarnation, out))
            elif isinstance(out, FetchBlocks):
                self._request_ids += 1
                node.sync_request = self._request_ids
                self.network.transmit(SyncRequest(out.peer, node.name, out.from_height, out.to_height, self._request_ids))
                self.stats["sync_requests"] += 1
            elif isinstance(out, Misbehaviour):
                self.stats[f"misbehaviour_{out.offence}"] += 1
                peer = self.nodes.get(out.peer)
                if node.honest and peer is not None and peer.honest:
                    # a correct node must never score another correct node: it would ban it
                    self.checker.fail("robustness", f"honest {out.peer} reported as misbehaving ({out.offence})",
                                      nodes=(node.name, out.peer), now=self.queue.now)
            else:
                self.checker.fail("robustness", f"unknown replica output {out!r}", nodes=(node.name,), now=self.queue.now)

    def _record_signed(self, node: SimNode, data: bytes) -> None:
        try:
            msg = decode(data, GossipProposalMessage | GossipVoteMessage)
        except DecodeError as exc:
            self.checker.fail("robustness", f"replica published an undecodable message: {exc}", nodes=(node.name,),
                              now=self.queue.now)
            return
        message = msg.proposal if isinstance(msg, GossipProposalMessage) else msg.vote
        if isinstance(message, Proposal):
            self.checker.on_proposal_seen(message.block.hash(), self.queue.now)
        if message.validator != node.key.public_key.hex():
            return  # re-gossip of another validator's message
        if isinstance(message, Proposal):
            signed = verify(node.key.public_key, PROPOSAL_SIGN_DOMAIN, message.sign_bytes(self.genesis.chain_id), message.signature)
        else:
            signed = verify(node.key.public_key, VOTE_SIGN_DOMAIN, message.sign_bytes(self.genesis.chain_id), message.signature)
        if signed:  # (a core that accepted a forgery in our name may re-send it: we did not sign that)
            self.checker.on_signed(node.name, message, "publish", self.queue.now)

    def _send(self, node: SimNode, sends: list[Send]) -> None:
        for dst, topic, data in sends:
            targets = [p for p in self.nodes if p != node.name] if dst is None else [dst]
            for peer in targets:
                self.network.transmit(Delivery(peer, node.name, topic, data))

    # -- faults ---------------------------------------------------------------------------------------
    def _crash(self, node: SimNode, how: str) -> None:
        if node.replica is not None:
            self.rejected.update(node.replica.core.rejected)
        node.replica = None
        node.incarnation += 1
        node.crash_pending_until = None
        self.stats["crashes"] += 1
        self._note(f"crash {node.name} {how}")

    def _fault(self, ev: FaultEvent) -> None:
        now = self.queue.now
        if ev.kind == "partition":
            self.network.partition(ev.groups)
            self._note(ev.describe())
        elif ev.kind == "heal":
            self.network.heal()
            self._note("heal")
        elif ev.kind == "crash":
            node = self.nodes[ev.node]
            if not node.up:
                return
            if ev.lossy:
                node.crash_pending_until = now + LOSSY_CRASH_WAIT_MS
            else:
                self._crash(node, "(clean: store intact)")
        elif ev.kind == "restart":
            node = self.nodes[ev.node]
            if node.up and node.crash_pending_until is not None:
                self._crash(node, "(clean: no write to interrupt)")
            if not node.up:
                first = node.incarnation == 0
                self._boot(node)
                self.stats["late_joins" if first else "restarts"] += 1
                if node.replica is not None:
                    self._note(f"{'late joiner starts' if first else 'restart'} {node.name} at height {node.replica.height}")

    def _stabilise(self) -> None:
        self.network.heal()
        self.network.conditions.drop_prob = 0.0
        self.network.rules.clear()
        for node in self.nodes.values():
            if node.name == LATE_JOINER and self.queue.now < self.scenario.late_joiner_at_ms:
                continue  # it has not joined yet
            if not node.up:
                node.crash_pending_until = None
                self._boot(node)
        self.stabilised = True
        self.heights_at_heal = {n.name: (n.replica.height if n.replica else 0) for n in self.nodes.values()}
        self._note("network stable: no partition, no loss, every node up")

    def _note(self, text: str) -> None:
        self.trace.append((self.queue.now, text))

    # -- event handlers -------------------------------------------------------------------------------
    def _deliver(self, ev: Delivery) -> None:
        node = self.nodes[ev.dst]
        if node.replica is None:
            self.stats["lost_at_down_node"] += 1
            return
        replica = node.replica
        if node.behaviour is not None:
            self._send(node, node.behaviour.on_receive(ev.topic, ev.data))
        origin = ev.origin or ev.src
        if node.honest and ev.topic == "proposal":
            self._note_proposal(ev.data)
        self._step(node, f"gossip {ev.topic} from {ev.src}", lambda: replica.handle_gossip(ev.data, origin, Topic(ev.topic)))
        if node.up and node.relays and ev.topic in ("proposal", "vote") and self.rng.random() < RELAY_PROB:
            peer = self.rng.choice([p for p in self.nodes if p != node.name])
            self.network.transmit(Delivery(peer, node.name, ev.topic, ev.data, origin))

    def _sync_request(self, ev: SyncRequest) -> None:
        server = self.nodes[ev.dst]
        if server.replica is None:
            return
        payloads = server.behaviour.serve_sync(ev.from_height, ev.to_height) if server.behaviour else None
        if payloads is None:
            try:
                payloads = server.replica.serve_sync(ev.from_height, ev.to_height)
            except Exception as exc:
                self.checker.on_exception(server.name, "serve_sync", exc, self.queue.now)
                return
        self.network.transmit(SyncResponse(ev.src, ev.dst, tuple(payloads), ev.request_id))

    def _sync_response(self, ev: SyncResponse) -> None:
        node = self.nodes[ev.dst]
        replica = node.replica
        if replica is None or ev.request_id != node.sync_request:
            return
        before = replica.height
        node.sync_request = 0
        self._step(node, f"sync from {ev.src}", lambda: replica.handle_synced(list(ev.payloads), ev.src))
        if node.replica is replica and replica.height == before:
            self.stats["sync_useless"] += 1
        elif node.replica is replica:
            self.stats["sync_heights"] += replica.height - before

    def _timer(self, ev: Timer) -> None:
        node = self.nodes[ev.node]
        replica = node.replica
        if replica is None or ev.incarnation != node.incarnation:
            return
        out = ev.output
        if isinstance(out, StartCommitWait):
            self._step(node, f"commit wait {out.height}", lambda: replica.handle_commit_wait(out.height))
        else:
            timeout = TimeoutFired(out.kind, out.height, out.round)
            self._step(node, f"timeout {out.kind} {out.height}/{out.round}", lambda: replica.handle_timeout(timeout))

    def _tick(self, ev: Tick) -> None:
        node = self.nodes[ev.node]
        replica = node.replica
        if replica is None or ev.incarnation != node.incarnation:
            return
        now = self.queue.now
        self.queue.after(POLICY.tick_interval_ms, Tick(node.name, node.incarnation))
        if node.behaviour is not None:
            self._send(node, node.behaviour.on_tick())
        connected = [
            p for p, other in self.nodes.items() if p != node.name and other.up and self.network.reachable(node.name, p)
        ]
        regossips = replica.regossips
        self._step(node, "tick", lambda: replica.tick(now, connected))
        self.stats["regossips"] += replica.regossips - regossips

    def _client(self) -> None:
        self.queue.after(self.scenario.client_interval_ms, ClientTick())
        candidates = [n for n in self.nodes.values() if n.honest and n.replica is not None]
        if not candidates:
            return
        node = self.rng.choice(candidates)
        try:
            self.clients.submit(node.replica)  # type: ignore[arg-type]
        except Exception as exc:
            self.checker.on_exception(node.name, "admit", exc, self.queue.now)

    def _stake_change(self, ev: StakeChange) -> None:
        """The operator of validator ``ev.validator`` signs the change (next nonce) and submits it
        to every honest node that runs, as a client would through the HTTP API; a leave unbonds
        the operator's whole bond as a running honest node's world knows it."""
        nodes = [n for n in self.nodes.values() if n.honest and n.replica is not None]
        if not nodes:
            return
        vid = self.keys[ev.validator].public_key.hex()
        op = self.operators[ev.validator]
        if ev.op == "leave":
            record = nodes[0].replica.world.validator_record(vid)  # type: ignore[union-attr]
            amount = record.bonds.get(op.agent_id, 0) if record is not None else 0
            if amount <= 0:
                return
            signed = op.sign(Unbond(validator_id=vid, amount=amount))
        else:
            signed = op.sign(Bond(validator_id=vid, amount=ev.amount))
        payload = encode_signed_action(signed)
        self.clients.submitted[sha256(payload)] = op.agent_id
        self._note(f"staking {ev.describe()}")
        self.stats[f"stake_{ev.op}"] += 1
        for node in nodes:
            try:
                node.replica.admit(signed, ActionSource.API, payload)  # type: ignore[union-attr]
            except Exception as exc:
                self.checker.on_exception(node.name, "admit", exc, self.queue.now)

    # -- the run ---------------------------------------------------------------------------------------
    def _done(self) -> bool:
        if not self.stabilised:
            return False
        target = self.scenario.heights
        return all(
            n.replica is not None and n.replica.height >= target for n in self.nodes.values() if n.honest
        )

    def run(self) -> SimResult:
        """Run the scenario to the target height (or the liveness deadline), check every property
        and return the result. Never raises for a property violation (they are in the result)."""
        started = time.perf_counter()
        s = self.scenario
        with quiet_logs(), tempfile.TemporaryDirectory(prefix="aw-sim-", dir=_scratch_dir()) as tmp:
            self._build_nodes(Path(tmp))
            if s.attack:
                install_attack(s.attack, self)
            for node in self.nodes.values():
                if node.name != LATE_JOINER:
                    self._boot(node)
            if s.late_joiner_at_ms:
                self.queue.schedule(s.late_joiner_at_ms, FaultEvent(s.late_joiner_at_ms, "restart", node=LATE_JOINER))
            for ev in s.schedule:
                self.queue.schedule(ev.at_ms, ev)
            for change in s.stake_changes:
                self.queue.schedule(change.at_ms, change)
            self.queue.schedule(s.heal_at_ms, Stabilise())
            self.queue.schedule(self.rng.randint(0, s.client_interval_ms), ClientTick())
            deadline = s.heal_at_ms + s.liveness_bound_ms
            handlers: dict[type, Callable[[Any], None]] = {
                Delivery: self._deliver,
                Timer: self._timer,
                Tick: self._tick,
                SyncRequest: self._sync_request,
                SyncResponse: self._sync_response,
                ClientTick: lambda ev: self._client(),
                FaultEvent: self._fault,
                StakeChange: self._stake_change,
                Stabilise: lambda ev: self._stabilise(),
            }
            while self.queue:
                at = self.queue.peek_time()
                if at is None or at > deadline or self.queue.popped >= MAX_EVENTS:
                    break
                ev = self.queue.pop()
                handlers[type(ev)](ev)
                if self.checker.violations and self.stop_on_violation:
                    break
                if self._done():
                    break
            self._finish(deadline)
        return self._result(time.perf_counter() - started)

    def _finish(self, deadline: int) -> None:
        now = self.queue.now
        checker = self.checker
        for node in self.nodes.values():
            if node.replica is not None:
                self.rejected.update(node.replica.core.rejected)
            if node.honest:
                for _height, kind, _payload in node.store.evidence(limit=1_000_000):
                    self.stats["evidence"] += 1
                    self.stats[f"evidence_{kind}"] += 1
                checker.check_store(node.name, node.store, node.store.wal_history, now)
        checker.check_chain(now)
        if not (checker.violations and self.stop_on_violation):
            heights = {n.name: (n.replica.height if n.replica else 0) for n in self.nodes.values()}
            checker.check_liveness(heights, self.heights_at_heal, self.scenario.heights, self.scenario.heal_at_ms,
                                   PROGRESS_BOUND_MS, deadline, now)
        for node in self.nodes.values():
            node.store.close()

    def _result(self, wall_s: float) -> SimResult:
        checker = self.checker
        lines = trace_lines(self.trace, checker, self.validator_names)
        digest_input = "\n".join(lines) + "".join(
            f"{h}:{checker.chain[h].hex()}:{checker.executions.get(h, (b'',))[0].hex()}" for h in sorted(checker.chain)
        ) + f"events={self.queue.popped}" + repr(sorted(self.network.stats.items()))
        heights = {n.name: (n.replica.height if n.replica else n.observed_height) for n in self.nodes.values()}
        stats: dict[str, Any] = dict(self.stats)
        stats.update({f"net_{k}": v for k, v in self.network.stats.items()})
        stats.update({f"client_{k}": v for k, v in self.clients.results.items()})
        stats.update({f"rejected_{k}": v for k, v in self.rejected.items()})
        stats["actions_committed"] = len(checker.action_heights)
        stats["validator_sets"] = checker.distinct_sets
        punished = [r for r in checker.reference_world.validator_records() if r.slashed or r.jailed]
        stats["validators_slashed"] = sum(1 for r in punished if r.slashed)
        stats["validators_jailed"] = sum(1 for r in punished if r.jailed)
        stats["max_round"] = max((info.certificate.round for info in checker.first_commit.values()), default=0)
        return SimResult(
            scenario=self.scenario,
            core=self.core_name,
            violations=list(checker.violations),
            heights=heights,
            time_ms=self.queue.now,
            events=self.queue.popped,
            wall_s=wall_s,
            trace=lines,
            digest=sha256(digest_input.encode()).hex(),
            stats=stats,
        )


def run_scenario(
    scenario: Scenario, core_factory: Callable[..., ConsensusCore] = ConsensusCore, *, core_name: str = "correct"
) -> SimResult:
    """Run ``scenario`` on a fresh ``SimCluster`` and return its ``SimResult``."""
    return SimCluster(scenario, core_factory, core_name=core_name).run()
