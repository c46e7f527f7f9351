"""The agent runtime: N agents living in the world through one or more nodes' HTTP APIs.

Each agent has its own Ed25519 key, kept in ``key_dir/<agent_id>.json`` (``client.AgentKey``
format, the one ``awnode keygen`` writes; created on first use, reused afterwards). An agent
is created by the sponsor (an existing agent that pays for it) if the node does not know it,
then loops, one turn at a time:

1. observe: its record (GET /v1/agents/{id}), the module list and the recent events about it
   (both polled once for the whole runtime by a shared poller, not per agent);
2. decide: ``await policy.decide(observation, memory)`` returns a ``decision.Decision``;
3. act: ``decision_to_action`` maps it to (signer, action); the signer may be any agent this
   runtime controls (``publisher``/``installer`` = ``agent:<id>``): the action is signed with that
   agent's key and its next nonce, and submitted (``NodeClient.submit`` waits out 503 answers
   following the node's ``retry_after_ms`` hint, a bounded number of times);
4. remember: the decision, action id and the node's answer go into the agent's ``Memory``; the
   shared poller then looks the action up (``GET /v1/actions/{action_id}``, the lookup
   ``awnode submit --wait`` uses) until it is executed, and the entry becomes ``committed`` or
   ``failed`` with the world's reason (a build request waits further for its
   ``module.build_settled`` event);
5. wait a turn (``turn_s``; a ``wait_ticks`` decision waits that many turns).

Nonces are tracked per agent: they start at the node's ``last_nonce + 1``, only ever grow (the
node allows gaps), and are re-read from the node after a ``nonce_replayed`` rejection. Nothing a
node or a policy does crashes the runtime: errors are counted in ``RuntimeStats`` and logged.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import httpx
import msgspec
import structlog
import trio

from agent_world_client.client import (
    ActionRejected,
    AgentKey,
    AgentKeyError,
    ClientError,
    NodeBusy,
    NodeClient,
    NodeUnreachable,
    NotFound,
)
from agent_world_runtime.actions import AGENT_ID_RE, Action, CreateAgent, action_kind, sign_action
from agent_world_runtime.codec import to_builtins
from agent_world_runtime.crypto import SigningKey

from .decision import Decision, Wait, WaitTicks, decision_kind, decision_to_action

log = structlog.get_logger(__name__)

# Data keys of an event that name the agents it is about.
_EVENT_AGENT_KEYS = ("agent_id", "created_agent_id", "to", "owner_agent_id", "publisher", "owner", "payer", "installer")
DEFAULT_MEMORY_SIZE = 50
DEFAULT_EVENTS_KEPT = 20
MAX_WAIT_TICKS = 100
MAX_LOOKUPS_PER_POLL = 64  # action outcome lookups per poll, oldest pending first
LOOKUP_CONCURRENCY = 8  # concurrent GET /v1/actions/{id} requests per poll
LOST_AFTER_S = 120.0  # an accepted action no node knows after this long is given up as lost
MAX_PENDING = 100_000  # actions (and builds) awaiting their outcome; beyond, the oldest are forgotten


class Observation(msgspec.Struct):
    """What one agent sees at the start of its turn.

    ``agent_id``: the deciding agent. ``height``: the node's last executed height when last polled
    (0 before the first poll). ``agent``: its record from GET /v1/agents/{id} (agent_id,
    public_key, position [x, y, z], electricity, data, last_nonce), None if the node does not know
    it. ``controlled``: the registered agents this runtime holds keys for (sorted; a decision may
    name any of them as publisher/installer). ``modules``: GET /v1/modules ({"artifacts": [...],
    "instances": [...]}), None before the first successful poll. ``recent_events``: journal events
    ({seq, height, kind, data}) whose data names this agent, oldest first, newest last, at most
    ``events_kept`` of them.
    """

    agent_id: str
    height: int
    agent: dict | None
    controlled: list[str]
    modules: dict | None
    recent_events: list[dict]


class Memory:
    """One agent's short-term memory: a bounded window of entries (dicts), oldest dropped first.

    The runtime adds one entry per decision: ``turn``, ``decision`` (its wire form), ``kind``, and
    for an action ``signer``, ``nonce``, ``action_id`` and ``outcome`` (``accepted``,
    ``duplicate``, ``rejected`` with ``code`` and ``reason``, ``busy``, ``unreachable``,
    ``error``, ``invalid`` with ``reason``; ``wait`` for a wait). When the action's lookup shows
    it executed, ``outcome`` becomes ``committed`` (with ``event`` = its first event's kind and
    ``height``) or ``failed`` (with the world's ``reason``), or ``lost`` when no node knew it for
    ``LOST_AFTER_S``; a compile whose sources the
    validators build becomes ``build_pending``, then ``built`` (with ``wasm_hash``) or
    ``build_failed`` (with the code as ``reason``).
    """

    def __init__(self, size: int = DEFAULT_MEMORY_SIZE) -> None:
        if size < 1:
            raise ValueError(f"memory size must be >= 1, got {size}")
        self._entries: deque[dict] = deque(maxlen=size)

    def add(self, entry: dict) -> None:
        """Append ``entry`` (the oldest entry goes when the window is full)."""
        self._entries.append(entry)

    def recent(self, n: int = 10) -> list[dict]:
        """The last ``n`` entries, oldest first (the live dicts: outcomes update in place)."""
        if n <= 0:
            return []
        return list(self._entries)[-n:]

    def find(self, action_id: str) -> dict | None:
        """The entry of the action ``action_id`` still in the window, or None."""
        for entry in reversed(self._entries):
            if entry.get("action_id") == action_id:
                return entry
        return None

    def __len__(self) -> int:
        return len(self._entries)


@runtime_checkable
class Policy(Protocol):
    """Anything that decides for an agent: ``async def decide(obs, memory) -> Decision``.

    May raise; the runtime counts the error (``RuntimeStats.decision_errors``), records it in
    memory and tries again next turn."""

    async def decide(self, obs: Observation, memory: Memory) -> Decision: ...


# policy_factory(index, agent_id) -> the policy of agent ``index`` (may return one shared policy).
PolicyFactory = Callable[[int, str], Policy]


@dataclass
class RuntimeStats:
    """Counters of a runtime run (updated live from the runtime's trio thread).

    ``decisions``: decisions returned by policies (waits included); ``waits``: of which wait /
    wait_ticks; ``decision_errors``: policy exceptions and decisions that could not be mapped to
    an action; ``submitted``: submissions attempted; ``accepted`` (202) / ``duplicate`` (200);
    ``rejected``: 400-class answers by the node's code; ``retried_503``: 503 answers waited out;
    ``busy``: submissions abandoned after the bounded 503 retries; ``unreachable``: transport
    errors; ``bad_responses``: answers that are not the API's; ``committed`` / ``failed``: actions
    whose outcome was looked up (applied, or rejected by the world; ``failed`` also counts failed
    builds and actions lost from every mempool); ``by_kind``: submissions by action
    kind; ``agents_registered``: agents visible on their node. ``started_at`` / ``stopped_at``:
    trio clock seconds.
    """

    decisions: int = 0
    waits: int = 0
    decision_errors: int = 0
    submitted: int = 0
    accepted: int = 0
    duplicate: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    retried_503: int = 0
    busy: int = 0
    unreachable: int = 0
    bad_responses: int = 0
    committed: int = 0
    failed: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    agents_registered: int = 0
    started_at: float | None = None
    stopped_at: float | None = None

    @property
    def rejected_total(self) -> int:
        """Sum of ``rejected`` over all codes."""
        return sum(self.rejected.values())

    def elapsed_s(self) -> float:
        """Seconds from ``started_at`` to ``stopped_at`` (or now, inside trio); 0 before the start."""
        if self.started_at is None:
            return 0.0
        end = self.stopped_at if self.stopped_at is not None else trio.current_time()
        return max(0.0, end - self.started_at)

    def decisions_per_s(self) -> float:
        """``decisions / elapsed_s()`` (0.0 when nothing has run yet)."""
        elapsed = self.elapsed_s()
        return self.decisions / elapsed if elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, with ``rejected_total``, ``elapsed_s`` and ``decisions_per_s``."""
        elapsed = self.elapsed_s() if self.stopped_at is not None else None
        return {
            "decisions": self.decisions,
            "waits": self.waits,
            "decision_errors": self.decision_errors,
            "submitted": self.submitted,
            "accepted": self.accepted,
            "duplicate": self.duplicate,
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_total": self.rejected_total,
            "retried_503": self.retried_503,
            "busy": self.busy,
            "unreachable": self.unreachable,
            "bad_responses": self.bad_responses,
            "committed": self.committed,
            "failed": self.failed,
            "by_kind": dict(sorted(self.by_kind.items())),
            "agents_registered": self.agents_registered,
            "elapsed_s": round(elapsed, 3) if elapsed is not None else None,
            "decisions_per_s": round(self.decisions / elapsed, 3) if elapsed else None,
        }


class Pacer:
    """Shared submission scheduler: hands out time slots ``1 / rate`` seconds apart (trio clock).

    A caller that arrives after its slot goes at once; when everybody has been idle, the schedule
    restarts from now instead of bursting to catch up (at most ``burst`` slots are made up).
    Raises ValueError for a rate that is not positive.
    """

    def __init__(self, rate_per_s: float, *, burst: int = 5) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate must be positive, got {rate_per_s}")
        self.interval = 1.0 / rate_per_s
        self.burst = burst
        self._next: float | None = None

    async def wait(self) -> None:
        """Sleep until this caller's slot."""
        now = trio.current_time()
        if self._next is None or self._next < now - self.burst * self.interval:
            self._next = now
        slot = self._next
        self._next += self.interval
        await trio.sleep_until(slot)


#: What a sponsor gives each agent it creates: (electricity, data).
DEFAULT_ENDOWMENT = (2_000, 2_000)


#: How many times an agent whose id is taken by another key moves to ``<id>-r<k>`` before giving up.
MAX_RENAMES = 5


def agent_id_for(seed: int, index: int, prefix: str = "agent") -> str:
    """Return the agent id of agent ``index`` for ``seed``: ``"{prefix}-s{seed}-{index:03d}"``."""
    return f"{prefix}-s{seed}-{index:03d}"


def load_or_create_agent_key(key_dir: Path, agent_id: str) -> SigningKey:
    """Return the key saved in ``key_dir/<agent_id>.json``, creating (random) and saving it (mode
    0600) if absent. Raises AgentKeyError if the file exists but is invalid or belongs to another
    agent id."""
    path = Path(key_dir) / f"{agent_id}.json"
    if path.exists():
        stored = AgentKey.load(path)
        if stored.agent_id not in (None, agent_id):
            raise AgentKeyError(f"{path}: holds the key of agent {stored.agent_id!r}, not {agent_id!r}")
        return stored.key
    key = SigningKey.generate()
    AgentKey(key=key, agent_id=agent_id).save(path)
    return key


def event_mentions(event: dict, agent_id: str) -> bool:
    """True if the event's data names ``agent_id`` as actor, recipient, owner or publisher."""
    data = event.get("data")
    if not isinstance(data, dict):
        return False
    return any(data.get(k) == agent_id for k in _EVENT_AGENT_KEYS)


class _Agent:
    """One controlled agent: identity, key, node, policy, memory, nonce counter, turn counter."""

    def __init__(self, index: int, agent_id: str, key: SigningKey, client: NodeClient, policy: Policy | None,
                 memory_size: int, events_kept: int) -> None:
        self.index = index
        self.agent_id = agent_id
        self.key = key
        self.client = client
        self.policy = policy
        self.memory = Memory(memory_size)
        self.events: deque[dict] = deque(maxlen=events_kept)
        self.next_nonce = 1
        self.turn = 0
        self.unreachable = False
        # held from taking a nonce until the node has answered, so that one agent's actions reach
        # a node in nonce order even when another agent signs for it
        self.submit_lock = trio.Lock()
        self.log = log.bind(agent=agent_id, node=client.base_url)

    def sync_nonce(self, record: dict | None) -> None:
        """Raise the next nonce to the node's ``last_nonce + 1`` (never lowers it)."""
        last = record.get("last_nonce") if isinstance(record, dict) else None
        if isinstance(last, int) and not isinstance(last, bool):
            self.next_nonce = max(self.next_nonce, last + 1)


class AgentRuntime:
    """Run ``agents`` agents against the nodes at ``rpc_urls`` (agent i talks to node i mod n).

    Arguments: ``rpc_urls``: one URL or a list. ``chain_id``: the chain to sign for; None asks the
    first node (GET /v1/status). ``policy_factory(index, agent_id)``: each agent's policy.
    ``key_dir``: where the key files live. ``seed``: names the agents
    (``agent_id_for(seed, i, agent_prefix)``) and seeds their registration positions.
    ``turn_s``: seconds an agent waits after each turn. ``actions_per_s``: if set, a cap on
    submissions per second over all agents (a shared ``Pacer``). ``poll_interval_s``: how often
    the shared poller reads status, modules and events, and how often registration is checked.
    ``registration_timeout_s``: a registration not visible by then is resubmitted.
    ``memory_size`` / ``events_kept``: the bounds of each agent's memory and event window.
    ``timeout_s`` / ``max_503_retries`` / ``transport``: passed to every ``NodeClient``.
    ``stats``: a ``RuntimeStats`` (or subclass) to update live; a new one by default.
    ``sponsor``: the key (with its agent id) of an existing agent that creates, and pays for, the
    agents that do not exist yet, giving each ``endowment`` = (electricity, data) from its own
    balances; without it, an agent that does not exist is counted (``rejected["no_sponsor"]``)
    and does not run.

    ``await runtime.run(stop)`` runs until ``stop`` is set or the caller is cancelled, then closes
    its clients. Raises ValueError for bad arguments, AgentKeyError for an unusable key file, and
    ClientError when ``chain_id`` is None and the node cannot tell it.
    """

    def __init__(
        self,
        rpc_urls: str | list[str],
        *,
        agents: int,
        policy_factory: PolicyFactory,
        key_dir: Path,
        chain_id: str | None = None,
        seed: int = 0,
        agent_prefix: str = "agent",
        turn_s: float = 1.0,
        actions_per_s: float | None = None,
        poll_interval_s: float = 0.5,
        registration_timeout_s: float = 30.0,
        memory_size: int = DEFAULT_MEMORY_SIZE,
        events_kept: int = DEFAULT_EVENTS_KEPT,
        timeout_s: float = 10.0,
        max_503_retries: int = 5,
        transport: httpx.AsyncBaseTransport | None = None,
        stats: RuntimeStats | None = None,
        sponsor: AgentKey | None = None,
        endowment: tuple[int, int] = DEFAULT_ENDOWMENT,
    ) -> None:
        urls = [rpc_urls] if isinstance(rpc_urls, str) else list(rpc_urls)
        if not urls:
            raise ValueError("the agent runtime needs at least one node URL")
        if agents < 1:
            raise ValueError(f"agents must be >= 1, got {agents}")
        if turn_s < 0:
            raise ValueError(f"turn_s must be >= 0, got {turn_s}")
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be positive, got {poll_interval_s}")
        self.rpc_urls = urls
        self.chain_id = chain_id
        self.seed = seed
        self.turn_s = turn_s
        self.poll_interval_s = poll_interval_s
        self.registration_timeout_s = registration_timeout_s
        self.stats = stats if stats is not None else RuntimeStats()
        self.pacer = Pacer(actions_per_s) if actions_per_s is not None else None
        self.key_dir = Path(key_dir)
        self.key_dir.mkdir(parents=True, exist_ok=True)
        self.clients = [
            NodeClient(u, timeout_s=timeout_s, max_503_retries=max_503_retries, transport=transport) for u in urls
        ]
        self.agents: dict[str, _Agent] = {}
        self._policy_factory = policy_factory
        for i in range(agents):
            agent_id = agent_id_for(seed, i, agent_prefix)
            key = load_or_create_agent_key(self.key_dir, agent_id)
            policy = policy_factory(i, agent_id)
            self.agents[agent_id] = _Agent(i, agent_id, key, self.clients[i % len(self.clients)], policy,
                                           memory_size, events_kept)
        self.sponsor: _Agent | None = None
        if sponsor is not None:
            if sponsor.agent_id is None:
                raise AgentKeyError("the sponsor key file has no agent_id; add the id of the agent it belongs to")
            self.sponsor = _Agent(-1, sponsor.agent_id, sponsor.key, self.clients[0], None, 1, 1)
        self.endowment = endowment
        self.registered: set[str] = set()
        self.height = 0
        self.modules: dict | None = None
        self._event_seq = 0  # next journal seq to read
        # action_id -> (agent whose memory holds it, trio time it was accepted), oldest first
        self._pending: dict[str, tuple[str, float]] = {}
        self._builds: dict[str, str] = {}  # build_id (the compile's action_id) -> agent

    # -- observation ---------------------------------------------------------------------------

    def controlled(self) -> list[str]:
        """The registered agents this runtime holds keys for, sorted."""
        return sorted(self.registered)

    async def _poll_once(self, client: NodeClient) -> bool:
        """Read status, modules and new events from ``client``; return False if the node could not
        be reached. Events are dispatched to the agents they name and settle pending memory
        entries."""
        try:
            status = await client.status()
            height = status.get("execution_height", status.get("height"))
            if isinstance(height, int):
                self.height = max(self.height, height)
        except NotFound:
            pass
        except NodeUnreachable:
            return False
        except ClientError as exc:
            log.debug("status_unavailable", node=client.base_url, error=str(exc))
        try:
            self.modules = await client.modules()
        except NodeUnreachable:
            return False
        except ClientError as exc:
            log.debug("modules_unavailable", node=client.base_url, error=str(exc))
        while True:
            try:
                events = await client.events(from_seq=self._event_seq, limit=1000)
            except NodeUnreachable:
                return False
            except ClientError as exc:  # an older node without /v1/events, or a bad answer
                log.debug("events_unavailable", node=client.base_url, error=str(exc))
                return True
            for event in events:
                if isinstance(event, dict) and isinstance(event.get("seq"), int):
                    self._event_seq = max(self._event_seq, event["seq"] + 1)
                    self._dispatch(event)
            if len(events) < 1000:
                break
        return await self._settle_pending(client)

    async def _settle_pending(self, client: NodeClient) -> bool:
        """Look up (``GET /v1/actions/{action_id}``) the oldest ``MAX_LOOKUPS_PER_POLL`` actions
        still pending, at most ``LOOKUP_CONCURRENCY`` at a time, and settle the memory entries of
        those executed: ``committed`` (with the first event's kind and the height) or ``failed``
        (with the world's reason). A compile becomes ``build_pending`` until its
        ``module.build_settled`` event. An action no node has known for ``LOST_AFTER_S`` seconds
        (dropped from a mempool, or a node that restarted) becomes ``lost``. Returns False if the
        node could not be reached."""
        now = trio.current_time()
        batch = list(self._pending.items())[:MAX_LOOKUPS_PER_POLL]
        limiter = trio.CapacityLimiter(LOOKUP_CONCURRENCY)
        unreachable = False

        async def lookup(action_id: str, owner: str, since: float) -> None:
            nonlocal unreachable
            async with limiter:
                try:
                    doc = await client.action(action_id)
                except NotFound:
                    if now - since >= LOST_AFTER_S:
                        self._settle(action_id, owner, outcome="lost",
                                     reason=f"no node knew the action {LOST_AFTER_S:g} s after it was accepted")
                    return
                except NodeUnreachable:
                    unreachable = True
                    return
                except ClientError as exc:  # a node without the lookup, or a bad answer
                    log.debug("action_lookup_failed", node=client.base_url, action_id=action_id, error=str(exc))
                    return
            self._settle_document(action_id, owner, doc)

        async with trio.open_nursery() as nursery:
            for action_id, (owner, since) in batch:
                nursery.start_soon(lookup, action_id, owner, since)
        return not unreachable

    def _settle_document(self, action_id: str, owner: str, doc: dict) -> None:
        """Settle ``action_id`` from its ``GET /v1/actions`` document, if it was executed."""
        outcome = doc.get("outcome")
        height = doc.get("height")
        events = doc.get("events") if isinstance(doc.get("events"), list) else []
        first = events[0].get("kind") if events and isinstance(events[0], dict) else None
        if outcome == "rejected":
            self._settle(action_id, owner, outcome="failed", reason=doc.get("reason"), height=height)
        elif outcome == "applied" and any(isinstance(e, dict) and e.get("kind") == "module.build_requested"
                                           for e in events):
            self._pending.pop(action_id, None)
            self._builds[action_id] = owner  # settled by its module.build_settled event
            entry = self.agents[owner].memory.find(action_id)
            if entry is not None:
                entry.update(outcome="build_pending", event="module.build_requested", height=height)
        elif outcome in ("applied", "unknown"):  # unknown: executed, its events pruned from the journal
            self._settle(action_id, owner, outcome="committed", event=first, height=height)

    def _settle(self, action_id: str, owner: str, **fields: Any) -> None:
        """Forget pending ``action_id``, update its memory entry and count the outcome."""
        self._pending.pop(action_id, None)
        self._builds.pop(action_id, None)
        if fields.get("outcome") in ("committed", "built"):
            self.stats.committed += 1
        else:
            self.stats.failed += 1
        entry = self.agents[owner].memory.find(action_id)
        if entry is not None:
            entry.update({k: v for k, v in fields.items() if v is not None})

    def _dispatch(self, event: dict) -> None:
        """Give ``event`` to the agents it names; a ``module.build_settled`` event settles the
        build request it answers: ``built`` (with the wasm_hash) or ``build_failed`` (with the
        code), so a compile decision waits for the validators' build."""
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        if event.get("kind") == "module.build_settled":
            build_id = data.get("build_id")
            owner = self._builds.get(build_id) if isinstance(build_id, str) else None
            if owner is not None and isinstance(build_id, str):
                if data.get("status") == "registered":
                    self._settle(build_id, owner, outcome="built", wasm_hash=data.get("wasm_hash"),
                                 height=event.get("height"))
                else:
                    self._settle(build_id, owner, outcome="build_failed", reason=data.get("code"),
                                 height=event.get("height"))
        for agent_id, agent in self.agents.items():
            if event_mentions(event, agent_id):
                agent.events.append(event)

    async def _poller(self) -> None:
        """Poll the nodes every ``poll_interval_s``, moving to the next node when one is unreachable."""
        i = 0
        while True:
            if not await self._poll_once(self.clients[i % len(self.clients)]):
                i += 1
            await trio.sleep(self.poll_interval_s)

    async def _fetch(self, agent: _Agent, agent_id: str | None = None) -> dict | None:
        """The node's record of ``agent_id`` (default: ``agent``'s own), None if unknown or the node
        cannot answer (counted)."""
        try:
            return await agent.client.agent(agent_id or agent.agent_id)
        except NotFound:
            return None
        except NodeUnreachable:
            self.stats.unreachable += 1
            return None
        except ClientError as exc:
            self.stats.bad_responses += 1
            agent.log.warning("agent_lookup_failed", error=str(exc))
            return None

    async def observe(self, agent: _Agent) -> Observation:
        """Build ``agent``'s observation (one GET of its record; the rest from the poller)."""
        record = await self._fetch(agent)
        agent.sync_nonce(record)
        return Observation(
            agent_id=agent.agent_id,
            height=self.height,
            agent=record,
            controlled=self.controlled(),
            modules=self.modules,
            recent_events=list(agent.events),
        )

    # -- submission ----------------------------------------------------------------------------

    async def submit(self, agent: _Agent, signer_id: str, action: Action, entry: dict | None = None) -> bool:
        """Sign ``action`` as ``signer_id`` (an agent of this runtime) with its next nonce, submit it
        through ``agent``'s node and record the outcome in ``entry`` (if given). Returns True if
        the node took it (accepted or duplicate). Every outcome is counted; never raises for a
        node's answer."""
        signer = self.sponsor if self.sponsor is not None and signer_id == self.sponsor.agent_id else self.agents[signer_id]
        if self.pacer is not None:
            await self.pacer.wait()
        async with signer.submit_lock:
            return await self._submit_locked(agent, signer, action, entry)

    async def _submit_locked(self, agent: _Agent, signer: _Agent, action: Action, entry: dict | None) -> bool:
        stats = self.stats
        signer_id = signer.agent_id
        nonce = signer.next_nonce
        signer.next_nonce += 1
        kind = action_kind(action)
        signed = sign_action(signer.key, self.chain_id or "", signer_id, nonce, action)
        stats.submitted += 1
        stats.by_kind[kind] = stats.by_kind.get(kind, 0) + 1
        if entry is not None:
            entry.update(signer=signer_id, nonce=nonce, action_kind=kind)

        def count_retry(wait_s: float) -> None:
            stats.retried_503 += 1

        outcome: dict[str, Any]
        try:
            result = await agent.client.submit(signed, on_retry=count_retry)
        except ActionRejected as exc:
            stats.rejected[exc.code] = stats.rejected.get(exc.code, 0) + 1
            agent.log.debug("action_rejected", kind=kind, signer=signer_id, nonce=nonce, code=exc.code, reason=exc.reason)
            if entry is not None:
                entry.update(outcome="rejected", code=exc.code, reason=exc.reason)
            if exc.code == "nonce_replayed":
                signer.sync_nonce(await self._fetch(agent, signer_id))
            return False
        except NodeBusy as exc:
            stats.busy += 1
            agent.log.debug("action_dropped_node_busy", kind=kind, nonce=nonce, retries=exc.retries)
            if entry is not None:
                entry.update(outcome="busy", reason=str(exc))
            return False
        except NodeUnreachable as exc:
            stats.unreachable += 1
            if not agent.unreachable:
                agent.log.warning("node_unreachable", kind=kind, nonce=nonce, error=str(exc))
            agent.unreachable = True
            if entry is not None:
                entry.update(outcome="unreachable", reason=str(exc))
            await trio.sleep(max(1.0, self.poll_interval_s))
            return False
        except ClientError as exc:
            stats.bad_responses += 1
            agent.log.warning("submission_bad_response", kind=kind, nonce=nonce, error=str(exc))
            if entry is not None:
                entry.update(outcome="error", reason=str(exc))
            await trio.sleep(self.poll_interval_s)
            return False
        if agent.unreachable:
            agent.log.info("node_reachable_again", kind=kind, nonce=nonce)
            agent.unreachable = False
        if result.status == "duplicate":
            stats.duplicate += 1
        else:
            stats.accepted += 1
        outcome = {"outcome": result.status, "action_id": result.action_id}
        if entry is not None:
            entry.update(outcome)
            if result.action_id not in self._pending:
                self._pending[result.action_id] = (agent.agent_id, trio.current_time())
            for table in (self._pending, self._builds):
                if len(table) > MAX_PENDING:  # never settled: forget the oldest
                    table.pop(next(iter(table)))
        return True

    # -- life cycle ----------------------------------------------------------------------------

    def _rename(self, agent: _Agent) -> bool:
        """Give ``agent``, whose id another key holds on the chain (a reused key directory, another
        run's agents), the next free-looking id ``<id>-r<k>`` (k up to ``MAX_RENAMES``), its own key
        (created, or reused from the key directory on a later run, so runs stay repeatable) and a
        new policy; False when no more renames are allowed."""
        base, _, suffix = agent.agent_id.rpartition("-r")
        k = int(suffix) + 1 if base and suffix.isdigit() else 1
        base = base if base and suffix.isdigit() else agent.agent_id
        new_id = f"{base}-r{k}"
        if k > MAX_RENAMES or not AGENT_ID_RE.fullmatch(new_id):
            return False
        old_id = agent.agent_id
        agent.log.warning("agent_id_taken_renamed", new_agent_id=new_id)
        agent.agent_id = new_id
        agent.key = load_or_create_agent_key(self.key_dir, new_id)
        agent.policy = self._policy_factory(agent.index, new_id)
        agent.log = log.bind(agent=new_id, node=agent.client.base_url)
        self.agents = {(new_id if aid == old_id else aid): a for aid, a in self.agents.items()}
        return True

    async def register(self, agent: _Agent) -> bool:
        """Make sure ``agent`` exists and is visible on its node, having the sponsor create it if
        needed; return False if its id is taken by another key or it does not exist and there is
        no sponsor. Resubmits the creation if the node did not take it (after a growing pause, at
        most 30 s) or if the agent does not appear within ``registration_timeout_s``."""
        rng = random.Random(f"agent-world-register/{self.seed}/{agent.agent_id}")
        failures = 0
        while True:
            record = await self._fetch(agent)
            if record is not None:
                if record.get("public_key") not in (None, agent.key.public_key.hex()):
                    self.stats.rejected["agent_id_taken"] = self.stats.rejected.get("agent_id_taken", 0) + 1
                    if not self._rename(agent):
                        agent.log.error("agent_id_taken", public_key=record.get("public_key"))
                        return False
                    continue
                agent.sync_nonce(record)
                self.registered.add(agent.agent_id)
                self.stats.agents_registered += 1
                agent.log.debug("agent_ready", nonce=agent.next_nonce)
                return True
            sponsor = self.sponsor
            if sponsor is None:
                self.stats.rejected["no_sponsor"] = self.stats.rejected.get("no_sponsor", 0) + 1
                agent.log.error("agent_missing_no_sponsor",
                                hint="the agent does not exist; give a sponsor key (--sponsor-key) to create it")
                return False
            if sponsor.turn == 0:  # first use: start from the sponsor's nonce on the node
                sponsor.sync_nonce(await self._fetch(agent, sponsor.agent_id))
                sponsor.turn = 1
            position = (rng.randint(-10, 10), rng.randint(-10, 10), 0)
            electricity, data = self.endowment
            create = CreateAgent(agent_id=agent.agent_id, public_key=agent.key.public_key, position=position,
                                 electricity=electricity, data=data)
            if not await self.submit(sponsor, sponsor.agent_id, create):  # one node: its nonces in order
                failures += 1
                await trio.sleep(min(30.0, self.poll_interval_s * 2**failures))
                continue
            with trio.move_on_after(self.registration_timeout_s):
                while True:
                    await trio.sleep(self.poll_interval_s)
                    record = await self._fetch(agent)
                    if record is not None:
                        break
            if record is None:
                agent.log.warning("registration_resubmitted", timeout_s=self.registration_timeout_s)

    async def turn(self, agent: _Agent) -> float:
        """Play one turn of ``agent`` (observe, decide, act, remember); return how many seconds to
        wait before the next one."""
        agent.turn += 1
        obs = await self.observe(agent)
        if obs.agent is None and agent.unreachable:
            return max(1.0, self.poll_interval_s)
        entry: dict[str, Any] = {"turn": agent.turn, "height": obs.height}
        try:
            decision = await agent.policy.decide(obs, agent.memory)
        except Exception as exc:  # any policy bug or service failure: count, remember, go on
            self.stats.decision_errors += 1
            agent.log.warning("policy_failed", error=f"{type(exc).__name__}: {exc}")
            entry.update(kind="error", outcome="policy_error", reason=f"{type(exc).__name__}: {exc}"[:500])
            agent.memory.add(entry)
            return max(self.turn_s, self.poll_interval_s)
        self.stats.decisions += 1
        try:
            entry.update(kind=decision_kind(decision), decision=to_builtins(decision))
        except (AttributeError, TypeError):
            entry.update(kind="invalid", decision=repr(decision)[:200])
        if isinstance(decision, (Wait, WaitTicks)):
            self.stats.waits += 1
            entry["outcome"] = "wait"
            agent.memory.add(entry)
            ticks = min(max(decision.ticks, 1), MAX_WAIT_TICKS) if isinstance(decision, WaitTicks) else 1
            return ticks * max(self.turn_s, 0.05)
        try:
            mapped = decision_to_action(decision, agent.agent_id)
            if mapped is None:
                raise ValueError("the decision maps to no action")
            signer_id, action = mapped
            if signer_id not in self.agents:
                raise ValueError(f"{signer_id!r} is not an agent this runtime holds a key for")
            if signer_id not in self.registered:
                raise ValueError(f"agent {signer_id!r} is not registered yet")
        except (ValueError, TypeError) as exc:
            self.stats.decision_errors += 1
            entry.update(outcome="invalid", reason=str(exc)[:500])
            agent.memory.add(entry)
            agent.log.info("decision_invalid", kind=entry.get("kind"), reason=str(exc)[:200])
            return self.turn_s
        agent.memory.add(entry)
        await self.submit(agent, signer_id, action, entry)
        return self.turn_s

    async def _live(self, agent: _Agent) -> None:
        if not await self.register(agent):
            return
        while True:
            wait_s = await self.turn(agent)
            await trio.sleep(wait_s)

    async def resolve_chain_id(self) -> str:
        """Return ``chain_id``, asking the first node (GET /v1/status) when it was not given.
        Raises ClientError (NodeUnreachable, BadResponse) when the node cannot tell it."""
        if self.chain_id is None:
            status = await self.clients[0].status()
            chain = status.get("chain_id")
            if not isinstance(chain, str) or not chain:
                raise ClientError(f"node at {self.clients[0].base_url} did not report a chain_id; pass chain_id")
            self.chain_id = chain
        return self.chain_id

    async def run(self, stop: trio.Event | None = None) -> RuntimeStats:
        """Run every agent until ``stop`` is set (or the caller cancels); return the stats.
        Raises ClientError if ``chain_id`` is None and the first node cannot tell it."""
        await self.resolve_chain_id()
        self.stats.started_at = trio.current_time()
        self.stats.stopped_at = None
        log.info("agent_runtime_starting", agents=len(self.agents), nodes=len(self.clients), seed=self.seed,
                 chain_id=self.chain_id)
        try:
            async with trio.open_nursery() as nursery:
                if stop is not None:

                    async def stopper() -> None:
                        await stop.wait()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(stopper)
                nursery.start_soon(self._poller)
                for agent in self.agents.values():
                    nursery.start_soon(self._live, agent)
        finally:
            self.stats.stopped_at = trio.current_time()
            with trio.CancelScope(shield=True):
                for client in self.clients:
                    await client.aclose()
            log.info("agent_runtime_stopped", decisions=self.stats.decisions, submitted=self.stats.submitted,
                     accepted=self.stats.accepted, rejected=self.stats.rejected_total,
                     decisions_per_s=round(self.stats.decisions_per_s(), 3))
        return self.stats

    def memory_of(self, agent_id: str) -> Memory:
        """The memory of agent ``agent_id`` (KeyError if this runtime does not run it)."""
        return self.agents[agent_id].memory
