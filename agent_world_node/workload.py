"""Scripted agent workload: many agents acting on a cluster through the nodes' HTTP APIs.

Used by ``awnode testnet`` and the multi-process tests. Each agent has its own Ed25519 key (saved
under ``key_dir`` and reused when the directory already holds it), talks to one node (agents are
spread round robin over ``rpc_urls``), registers, waits until its registration is committed and
executed (GET /v1/agents/{id} answers), then loops over small moves, harvests and transfers to other
agents. Agent 0 is the "builder": after registering it compiles ``examples/modules/move_counter.wat``
in the world (CompileModuleArtifactFromSource), waits for the artifact in GET /v1/modules and installs
it (InstallModuleFromArtifact), so every later move also exercises the WASM sandbox.

Choices are deterministic from ``seed`` (one ``random.Random`` per agent, seeded from the seed and
the agent id); timing is not. Submissions are paced by one shared scheduler to ``actions_per_s`` in
total. Nonces are per agent and strictly increasing: an agent starts at the node's
``last_nonce + 1`` (1 for a new agent) and never reuses a nonce, whatever the outcome.
A 400 answer is a counted outcome (``WorkloadStats.rejected`` by code), never a crash; an
unreachable node is counted and retried after a pause.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog
import trio

from agent_world_runtime.actions import (
    Action,
    CompileModuleArtifactFromSource,
    HarvestRadiation,
    InstallModuleFromArtifact,
    ModuleSourcePackage,
    MoveAgent,
    RegisterAgent,
    TransferResource,
    action_kind,
    sign_action,
)
from agent_world_runtime.crypto import SigningKey

from .client import (
    ActionRejected,
    AgentKey,
    AgentKeyError,
    ClientError,
    NodeBusy,
    NodeClient,
    NodeUnreachable,
    NotFound,
)

log = structlog.get_logger(__name__)

MODULE_WAT = "move_counter.wat"
MODULE_MANIFEST = "move_counter.manifest.json"
# Electricity below which an agent harvests instead of spending (WorldParams: moves cost 1 per
# step, a harvest yields 5, agents start with 100).
LOW_ELECTRICITY = 30
# Agents wander in [-WANDER_BOUND, WANDER_BOUND] on x and y, well inside the world grid.
WANDER_BOUND = 50
# An agent re-reads its state from the node after this many submissions.
REFRESH_EVERY = 8


def default_modules_dir() -> Path:
    """Return the repository's ``examples/modules`` directory (beside the ``agent_world_node`` package;
    located from this file because an editable install may make the package a namespace package
    without ``__file__``)."""
    return Path(__file__).resolve().parent.parent / "examples" / "modules"


@dataclass
class WorkloadStats:
    """Counters of a workload run (updated live; read them from the same trio thread).

    ``submitted``: POSTs attempted; ``accepted``: 202; ``duplicate``: 200; ``rejected``: 400-class
    answers by the node's error code; ``retried_503``: 503 answers waited out and retried; ``busy``:
    submissions abandoned after the client's bounded 503 retries; ``unreachable``: transport errors;
    ``bad_responses``: answers that are not the API's (HTTP 500, not JSON); ``by_kind``:
    submissions by action kind; ``agents_registered``: agents whose registration is
    visible on their node; ``module_wasm_hash`` / ``module_installed`` / ``module_error``: the
    builder's progress.
    """

    submitted: int = 0
    accepted: int = 0
    duplicate: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    retried_503: int = 0
    busy: int = 0
    unreachable: int = 0
    bad_responses: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    agents_registered: int = 0
    module_wasm_hash: str | None = None
    module_installed: bool = False
    module_error: str | None = None

    @property
    def rejected_total(self) -> int:
        """Sum of ``rejected`` over all codes."""
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready copy."""
        return {
            "submitted": self.submitted,
            "accepted": self.accepted,
            "duplicate": self.duplicate,
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_total": self.rejected_total,
            "retried_503": self.retried_503,
            "busy": self.busy,
            "unreachable": self.unreachable,
            "bad_responses": self.bad_responses,
            "by_kind": dict(sorted(self.by_kind.items())),
            "agents_registered": self.agents_registered,
            "module_wasm_hash": self.module_wasm_hash,
            "module_installed": self.module_installed,
            "module_error": self.module_error,
        }


class Pacer:
    """Shared submission scheduler: hands out time slots ``1 / rate`` seconds apart (trio clock).

    A caller that arrives after its slot goes at once; when everybody has been idle, the schedule
    restarts from now instead of bursting to catch up (at most ``burst`` slots are made up).
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


def agent_id_for(seed: int, index: int, prefix: str = "agent") -> str:
    """Return the agent id of agent ``index`` for ``seed``: ``"{prefix}-s{seed}-{index:03d}"``."""
    return f"{prefix}-s{seed}-{index:03d}"


def load_or_create_agent_key(key_dir: Path, agent_id: str) -> SigningKey:
    """Return the key saved in ``key_dir/<agent_id>.json``, creating (random) and saving it if absent.
    Raises AgentKeyError if the file exists but is invalid or belongs to another agent id."""
    path = Path(key_dir) / f"{agent_id}.json"
    if path.exists():
        stored = AgentKey.load(path)
        if stored.agent_id not in (None, agent_id):
            raise AgentKeyError(f"{path}: holds the key of agent {stored.agent_id!r}, not {agent_id!r}")
        return stored.key
    key = SigningKey.generate()
    AgentKey(key=key, agent_id=agent_id).save(path)
    return key


def load_module_source(modules_dir: Path) -> tuple[str, ModuleSourcePackage]:
    """Read the move_counter example and return ``(module_id, source_package)``.

    Raises FileNotFoundError / ValueError with the path when the files are missing or the manifest
    has no ``module_id``.
    """
    wat_path = Path(modules_dir) / MODULE_WAT
    manifest_path = Path(modules_dir) / MODULE_MANIFEST
    wat = wat_path.read_text()
    manifest_text = manifest_path.read_text()
    manifest = json.loads(manifest_text)
    module_id = manifest.get("module_id") if isinstance(manifest, dict) else None
    if not isinstance(module_id, str) or not module_id:
        raise ValueError(f"{manifest_path}: manifest has no module_id")
    package = ModuleSourcePackage(manifest_path=MODULE_MANIFEST, files={MODULE_WAT: wat, MODULE_MANIFEST: manifest_text})
    return module_id, package


_OWNER_KEYS = ("owner", "owner_agent_id", "publisher", "publisher_agent_id", "agent_id")


def _owned_by(record: dict[str, Any], agent_id: str) -> bool:
    owners = [record[k] for k in _OWNER_KEYS if k in record]
    return not owners or agent_id in owners


def find_artifact(modules: dict[str, Any], module_id: str, owner: str) -> str | None:
    """Return the wasm_hash of an artifact of ``module_id`` published by ``owner`` in a
    GET /v1/modules answer, or None. The artifact's module id may be top-level or in its manifest."""
    for artifact in modules.get("artifacts", []):
        if not isinstance(artifact, dict) or not isinstance(artifact.get("wasm_hash"), str):
            continue
        manifest = artifact.get("manifest") if isinstance(artifact.get("manifest"), dict) else {}
        if module_id in (artifact.get("module_id"), manifest.get("module_id")) and _owned_by(artifact, owner):
            return artifact["wasm_hash"]
    return None


def find_instance(modules: dict[str, Any], wasm_hash: str, owner: str) -> dict[str, Any] | None:
    """Return an instance of artifact ``wasm_hash`` owned by ``owner`` in a GET /v1/modules answer."""
    for instance in modules.get("instances", []):
        if isinstance(instance, dict) and instance.get("wasm_hash") == wasm_hash and _owned_by(instance, owner):
            return instance
    return None


@dataclass
class _Shared:
    chain_id: str
    stats: WorkloadStats
    pacer: Pacer
    registered: set[str]
    poll_interval_s: float
    registration_timeout_s: float
    module_timeout_s: float
    modules_dir: Path
    # The agent paying for every call of the installed module (its owner), once installed.
    module_payer: str | None = None


class _Agent:
    """One scripted agent: its key, node, nonce counter and a local estimate of its state."""

    def __init__(self, index: int, agent_id: str, key: SigningKey, client: NodeClient, seed: int, shared: _Shared):
        self.index = index
        self.agent_id = agent_id
        self.key = key
        self.client = client
        self.shared = shared
        self.rng = random.Random(f"agent-world-workload/{seed}/{agent_id}")
        self.next_nonce = 1
        self.position: tuple[int, int, int] = (0, 0, 0)
        self.electricity = 0
        self.data = 0
        self.since_refresh = 0
        self.unreachable = False
        self.log = log.bind(agent=agent_id, node=client.base_url)

    # -- node state ----------------------------------------------------------------------------

    def _apply_record(self, record: dict[str, Any]) -> None:
        last = record.get("last_nonce")
        if isinstance(last, int):
            self.next_nonce = max(self.next_nonce, last + 1)
        pos = record.get("position")
        if isinstance(pos, list) and len(pos) == 3 and all(isinstance(v, int) for v in pos):
            self.position = (pos[0], pos[1], pos[2])
        if isinstance(record.get("electricity"), int):
            self.electricity = record["electricity"]
        if isinstance(record.get("data"), int):
            self.data = record["data"]
        self.since_refresh = 0

    async def _fetch(self) -> dict[str, Any] | None:
        """Return the node's record of this agent, None if unknown; transport errors are counted."""
        try:
            return await self.client.agent(self.agent_id)
        except NotFound:
            return None
        except NodeUnreachable:
            self.shared.stats.unreachable += 1
            return None
        except ClientError as exc:
            self.shared.stats.bad_responses += 1
            self.log.warning("agent_lookup_failed", error=str(exc))
            return None

    async def _refresh(self) -> None:
        record = await self._fetch()
        if record is not None:
            self._apply_record(record)

    # -- submission ----------------------------------------------------------------------------

    async def submit(self, action: Action) -> bool:
        """Pace, sign with the next nonce and submit ``action``; return True if the node took it.
        Every outcome is counted in the stats; the nonce is consumed whatever happens."""
        stats = self.shared.stats
        await self.shared.pacer.wait()
        nonce = self.next_nonce
        self.next_nonce += 1
        kind = action_kind(action)
        signed = sign_action(self.key, self.shared.chain_id, self.agent_id, nonce, action)
        stats.submitted += 1
        stats.by_kind[kind] = stats.by_kind.get(kind, 0) + 1
        self.since_refresh += 1

        def count_retry(wait_s: float) -> None:
            stats.retried_503 += 1

        try:
            result = await self.client.submit(signed, on_retry=count_retry)
        except ActionRejected as exc:
            stats.rejected[exc.code] = stats.rejected.get(exc.code, 0) + 1
            self.log.debug("action_rejected", kind=kind, nonce=nonce, code=exc.code, reason=exc.reason)
            if exc.code == "nonce_replayed":
                await self._refresh()
            return False
        except NodeBusy:
            stats.busy += 1
            self.log.debug("action_dropped_node_busy", kind=kind, nonce=nonce)
            return False
        except NodeUnreachable as exc:
            stats.unreachable += 1
            if not self.unreachable:
                self.log.warning("node_unreachable", kind=kind, nonce=nonce, error=str(exc))
            self.unreachable = True
            await trio.sleep(max(1.0, self.shared.poll_interval_s))
            return False
        except ClientError as exc:
            stats.bad_responses += 1
            self.log.warning("submission_bad_response", kind=kind, nonce=nonce, error=str(exc))
            await trio.sleep(self.shared.poll_interval_s)
            return False
        if self.unreachable:
            self.log.info("node_reachable_again", kind=kind, nonce=nonce)
            self.unreachable = False
        if result.status == "duplicate":
            stats.duplicate += 1
        else:
            stats.accepted += 1
        return True

    # -- life cycle ----------------------------------------------------------------------------

    async def register(self) -> bool:
        """Make sure this agent is registered and visible on its node; return False if the id is
        taken by another key. Resubmits the registration if the node did not take it (after a
        growing pause, at most 30 s) or if it does not appear in time."""
        failures = 0
        while True:
            record = await self._fetch()
            if record is not None:
                if record.get("public_key") not in (None, self.key.public_key.hex()):
                    self.shared.stats.rejected["agent_id_taken"] = self.shared.stats.rejected.get("agent_id_taken", 0) + 1
                    self.log.error("agent_id_taken", public_key=record.get("public_key"))
                    return False
                self._apply_record(record)
                self.shared.registered.add(self.agent_id)
                self.shared.stats.agents_registered += 1
                self.log.debug("agent_registered", nonce=self.next_nonce)
                return True
            x = self.rng.randint(-10, 10)
            y = self.rng.randint(-10, 10)
            if not await self.submit(RegisterAgent(public_key=self.key.public_key, position=(x, y, 0))):
                failures += 1
                await trio.sleep(min(30.0, self.shared.poll_interval_s * 2**failures))
                continue
            with trio.move_on_after(self.shared.registration_timeout_s):
                while True:
                    await trio.sleep(self.shared.poll_interval_s)
                    record = await self._fetch()
                    if record is not None:
                        break
            if record is None:
                self.log.warning("registration_resubmitted", timeout_s=self.shared.registration_timeout_s)

    async def _wait_modules(self, predicate: Any) -> Any:
        """Poll GET /v1/modules until ``predicate(modules)`` is truthy; return it, or None on timeout."""
        with trio.move_on_after(self.shared.module_timeout_s):
            while True:
                try:
                    found = predicate(await self.client.modules())
                except ClientError as exc:
                    self.log.debug("module_list_unavailable", error=str(exc))
                    found = None
                if found:
                    return found
                await trio.sleep(self.shared.poll_interval_s)
        return None

    async def build_module(self) -> None:
        """Builder only: compile move_counter in the world, then install it (skipping steps already
        done by an earlier run on the same chain). Failures are recorded in the stats, not raised."""
        stats = self.shared.stats
        try:
            module_id, package = load_module_source(self.shared.modules_dir)
        except (OSError, ValueError) as exc:
            stats.module_error = f"cannot read module source: {exc}"
            self.log.error("module_source_unavailable", error=str(exc))
            return
        try:
            existing = await self.client.modules()
        except ClientError:
            existing = {}
        wasm_hash = find_artifact(existing, module_id, self.agent_id)
        if wasm_hash is None:
            await self.submit(CompileModuleArtifactFromSource(module_id=module_id, source_package=package))
            wasm_hash = await self._wait_modules(lambda m: find_artifact(m, module_id, self.agent_id))
            if wasm_hash is None:
                stats.module_error = f"artifact {module_id} did not appear within {self.shared.module_timeout_s:g} s"
                self.log.error("module_artifact_missing", module_id=module_id)
                return
        stats.module_wasm_hash = wasm_hash
        self.log.info("module_artifact_available", module_id=module_id, wasm_hash=wasm_hash)
        if find_instance(existing, wasm_hash, self.agent_id) is None:
            await self.submit(InstallModuleFromArtifact(wasm_hash=wasm_hash))
            instance = await self._wait_modules(lambda m: find_instance(m, wasm_hash, self.agent_id))
            if instance is None:
                stats.module_error = f"module instance of {wasm_hash[:12]} did not appear within {self.shared.module_timeout_s:g} s"
                self.log.error("module_instance_missing", wasm_hash=wasm_hash)
                return
        stats.module_installed = True
        self.shared.module_payer = self.agent_id
        self.log.info("module_installed", module_id=module_id, wasm_hash=wasm_hash)

    def choose(self) -> Action:
        """Pick the next action from the agent's seeded generator and its state estimate.

        Every call of the installed module is billed to its owner (one electricity or more per
        call, one call per move of any agent), so once the module is installed its owner spends
        its turns harvesting and most transfers of the others (electricity and data) go to it: the
        users pay for the service they use."""
        payer = self.shared.module_payer
        if self.electricity < LOW_ELECTRICITY or payer == self.agent_id:
            return HarvestRadiation()
        r = self.rng.random()
        others = sorted(self.shared.registered - {self.agent_id})
        if r < 0.15:
            return HarvestRadiation()
        if r < 0.3 and others:
            to = payer if payer is not None and self.rng.random() < 0.8 else self.rng.choice(others)
            amount = self.rng.randint(1, 3) if to != payer else self.rng.randint(5, 10)
            # the module's owner pays its compute fees in data, which no action creates
            data_share = 0.5 if to == payer else 0.3
            if self.rng.random() < data_share and self.data > amount + 2:
                return TransferResource(to=to, kind="data", amount=amount)
            return TransferResource(to=to, kind="electricity", amount=amount)
        x, y, z = self.position
        while True:
            dx, dy = self.rng.randint(-1, 1), self.rng.randint(-1, 1)
            if dx or dy:
                break
        nx = min(max(x + dx, -WANDER_BOUND), WANDER_BOUND)
        ny = min(max(y + dy, -WANDER_BOUND), WANDER_BOUND)
        if (nx, ny) == (x, y):
            nx, ny = x - dx, y - dy
        return MoveAgent(to=(nx, ny, z))

    def _expect(self, action: Action) -> None:
        """Update the local state estimate as if ``action`` succeeds (the node corrects it later)."""
        if isinstance(action, MoveAgent):
            cost = sum(abs(a - b) for a, b in zip(action.to, self.position))
            self.position = action.to
            self.electricity -= cost
        elif isinstance(action, HarvestRadiation):
            self.electricity += 5
        elif isinstance(action, TransferResource):
            if action.kind == "data":
                self.data -= action.amount
            else:
                self.electricity -= action.amount

    async def run(self) -> None:
        """Register, build (builder only), then act until cancelled."""
        if not await self.register():
            return
        if self.index == 0:
            await self.build_module()
        while True:
            if self.since_refresh >= REFRESH_EVERY:
                await self._refresh()
            action = self.choose()
            if await self.submit(action):
                self._expect(action)


async def run_workload(
    rpc_urls: list[str],
    chain_id: str,
    *,
    agents: int = 20,
    seed: int = 0,
    key_dir: Path,
    stop: trio.Event,
    stats: WorkloadStats,
    actions_per_s: float = 20.0,
    agent_prefix: str = "agent",
    modules_dir: Path | None = None,
    poll_interval_s: float = 0.5,
    registration_timeout_s: float = 30.0,
    module_timeout_s: float = 60.0,
    timeout_s: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> None:
    """Run ``agents`` scripted agents against the nodes at ``rpc_urls`` until ``stop`` is set.

    ``chain_id``: the chain the actions are signed for. ``key_dir``: where each agent's key file
    ``<agent_id>.json`` is kept (created if missing, reused if present). ``stats``: updated live.
    ``actions_per_s``: total submission rate over all agents. ``modules_dir``: where
    move_counter.wat/.manifest.json are (default: the repository's examples/modules).
    ``poll_interval_s``: how often registration and module progress are polled (seconds).
    ``transport``: an httpx async transport for every client (tests).

    Returns after ``stop`` is set and every agent has stopped. Raises ValueError for bad arguments
    and AgentKeyError for an unusable key file; node errors are counted in ``stats``, not raised.
    """
    if not rpc_urls:
        raise ValueError("run_workload needs at least one node URL")
    if agents < 1:
        raise ValueError(f"agents must be >= 1, got {agents}")
    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True)
    shared = _Shared(
        chain_id=chain_id,
        stats=stats,
        pacer=Pacer(actions_per_s),
        registered=set(),
        poll_interval_s=poll_interval_s,
        registration_timeout_s=registration_timeout_s,
        module_timeout_s=module_timeout_s,
        modules_dir=Path(modules_dir) if modules_dir is not None else default_modules_dir(),
    )
    clients = [NodeClient(url, timeout_s=timeout_s, transport=transport) for url in rpc_urls]
    population = []
    for i in range(agents):
        agent_id = agent_id_for(seed, i, agent_prefix)
        key = load_or_create_agent_key(key_dir, agent_id)
        population.append(_Agent(i, agent_id, key, clients[i % len(clients)], seed, shared))
    log.info("workload_starting", agents=agents, nodes=len(clients), actions_per_s=actions_per_s, seed=seed)
    try:
        async with trio.open_nursery() as nursery:

            async def stopper() -> None:
                await stop.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(stopper)
            for agent in population:
                nursery.start_soon(agent.run)
    finally:
        with trio.CancelScope(shield=True):
            for client in clients:
                await client.aclose()
        log.info("workload_stopped", **{k: v for k, v in stats.as_dict().items() if not isinstance(v, dict)})
