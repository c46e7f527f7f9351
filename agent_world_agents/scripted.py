"""Scripted policies: deterministic agents that need no key or service.

Every policy draws its choices from one ``random.Random`` seeded by ``(seed, agent_id)``, so the
same seed and the same sequence of observations give the same decisions. They keep a local
estimate of their position and balances (the node's record lags the actions still in the
mempool), refreshed from the observation every ``REFRESH_EVERY`` turns and after a failure.

- ``Explorer``: wanders one step at a time inside ``[-WANDER_BOUND, WANDER_BOUND]``, harvests
  when its electricity is low, and now and then pays the module owner.
- ``Trader``: gives electricity and data to other agents of the runtime, mostly to the owner of
  the installed module (users pay for the module calls their moves cause).
- ``ModuleBuilder``: the module lifecycle as decisions. It compiles
  ``examples/modules/move_counter.wat`` with its manifest in the world, installs the artifact,
  and ``upgrade_after_turns`` turns later compiles ``move_counter_v2.wat`` (same module id,
  version 2.0.0) and upgrades its instance to it (docs/module-abi.md, "Upgrades"). Steps already
  done on the chain (seen in GET /v1/modules) are skipped. Every call of the installed module is
  billed to its owner, so the builder spends its other turns harvesting.

``ScriptedPopulation`` is the policy factory the runtime, ``awnode agent run --policy
scripted`` and ``awnode testnet`` use: agent 0 is the builder, every fourth agent a trader, the
others explorers.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import structlog

from agent_world_runtime.params import WorldParams

from .decision import (
    CompileModule,
    Decision,
    Harvest,
    InstallModule,
    Move,
    Transfer,
    UpgradeModule,
    Wait,
    decision_kind,
    default_instance_id,
)
from .runtime import Memory, Observation, Policy

log = structlog.get_logger(__name__)

# Electricity below which an agent harvests instead of spending (WorldParams: moves cost 1 per
# step, a harvest yields 5, every action pays a fee of about 2).
LOW_ELECTRICITY = 30
# Heights between two harvests of one agent (WorldParams.harvest_interval; a harvest sooner is
# rejected and still pays its fee).
HARVEST_INTERVAL = WorldParams().harvest_interval
# Agents wander in [-WANDER_BOUND, WANDER_BOUND] on x and y, well inside the world grid.
WANDER_BOUND = 50
# A policy re-reads its estimate from the observation after this many turns.
REFRESH_EVERY = 8
# Memory outcomes that mean the last action did not (or will not) happen.
FAILED_OUTCOMES = frozenset({"rejected", "failed", "build_failed", "lost", "busy", "unreachable", "error", "invalid"})
# Of those, the ones that say nothing about the action itself (a full mempool, a node away).
TRANSIENT_OUTCOMES = frozenset({"busy", "unreachable"})

MODULE_V1 = ("move_counter.wat", "move_counter.manifest.json")
MODULE_V2 = ("move_counter_v2.wat", "move_counter_v2.manifest.json")


def default_modules_dir() -> Path:
    """The repository's ``examples/modules`` directory (located from this file)."""
    return Path(__file__).resolve().parent.parent / "examples" / "modules"


def policy_rng(seed: int, agent_id: str) -> random.Random:
    """The generator of agent ``agent_id``'s scripted choices for ``seed``."""
    return random.Random(f"agent-world-scripted/{seed}/{agent_id}")


@dataclass(frozen=True)
class ModuleSource:
    """One version of a module's source: ``module_id``, ``version``, ``manifest_path`` and the
    ``files`` (relative path -> UTF-8 text) of the package."""

    module_id: str
    version: str
    manifest_path: str
    files: dict[str, str]


def load_module_source(modules_dir: Path, wat_name: str, manifest_name: str) -> ModuleSource:
    """Read ``wat_name`` and ``manifest_name`` from ``modules_dir``. Raises OSError when a file is
    missing and ValueError (naming the file) when the manifest has no ``module_id``/``version``."""
    wat = (Path(modules_dir) / wat_name).read_text()
    manifest_path = Path(modules_dir) / manifest_name
    text = manifest_path.read_text()
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{manifest_path}: not JSON ({exc})") from None
    module_id = manifest.get("module_id") if isinstance(manifest, dict) else None
    version = manifest.get("version") if isinstance(manifest, dict) else None
    if not isinstance(module_id, str) or not module_id or not isinstance(version, str) or not version:
        raise ValueError(f"{manifest_path}: the manifest needs a module_id and a version")
    return ModuleSource(module_id, version, manifest_name, {wat_name: wat, manifest_name: text})


def _owner(record: dict[str, Any]) -> str | None:
    for key in ("owner_agent_id", "publisher", "owner", "agent_id"):
        if isinstance(record.get(key), str):
            return record[key]
    return None


def find_artifact(modules: dict | None, module_id: str, version: str | None, publisher: str) -> str | None:
    """The wasm_hash of an artifact of ``module_id`` (at ``version`` when the listing says one)
    published by ``publisher`` in a GET /v1/modules answer, or None."""
    for artifact in (modules or {}).get("artifacts", []):
        if not isinstance(artifact, dict) or not isinstance(artifact.get("wasm_hash"), str):
            continue
        manifest = artifact.get("manifest") if isinstance(artifact.get("manifest"), dict) else {}
        if module_id not in (artifact.get("module_id"), manifest.get("module_id")):
            continue
        listed = artifact.get("version", manifest.get("version"))
        if version is not None and listed is not None and listed != version:
            continue
        if _owner(artifact) in (None, publisher):
            return artifact["wasm_hash"]
    return None


def find_instance(modules: dict | None, module_id: str, owner: str) -> dict | None:
    """``owner``'s instance of ``module_id`` (instance id ``<module_id>@<owner>``, or any instance
    of that module it owns) in a GET /v1/modules answer, or None."""
    wanted = default_instance_id(module_id, owner)
    fallback = None
    for instance in (modules or {}).get("instances", []):
        if not isinstance(instance, dict):
            continue
        if instance.get("instance_id") == wanted:
            return instance
        if instance.get("module_id") == module_id and _owner(instance) == owner:
            fallback = instance
    return fallback


def module_payer(obs: Observation) -> str | None:
    """The owner of an active module instance among ``obs.controlled`` (the agent the others pay),
    the first in instance order; None if there is none."""
    controlled = set(obs.controlled)
    for instance in (obs.modules or {}).get("instances", []):
        if isinstance(instance, dict) and instance.get("active", True):
            owner = _owner(instance)
            if owner in controlled:
                return owner
    return None


def _int(record: dict | None, key: str, default: int) -> int:
    value = (record or {}).get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class _Scripted:
    """Shared machinery: the seeded generator and the local estimate of the agent's state."""

    def __init__(self, seed: int, agent_id: str) -> None:
        self.seed = seed
        self.agent_id = agent_id
        self.rng = policy_rng(seed, agent_id)
        self.position: tuple[int, int, int] | None = None
        self.electricity = 0
        self.data = 0
        self.since_refresh = 0
        self.last_harvest = 0
        self.height = 0

    def refresh(self, obs: Observation, memory: Memory) -> bool:
        """Update the estimate from ``obs`` when due; return False if the agent is not visible yet."""
        record = obs.agent
        if record is None:
            return False
        self.height = obs.height
        self.last_harvest = max(self.last_harvest, _int(record, "last_harvest_height", 0))
        last = memory.recent(1)
        failed = bool(last) and last[0].get("outcome") in FAILED_OUTCOMES
        if self.position is None or failed or self.since_refresh >= REFRESH_EVERY:
            pos = record.get("position")
            if isinstance(pos, list) and len(pos) == 3 and all(isinstance(v, int) for v in pos):
                self.position = (pos[0], pos[1], pos[2])
            elif self.position is None:
                self.position = (0, 0, 0)
            self.electricity = _int(record, "electricity", 0)
            self.data = _int(record, "data", 0)
            self.since_refresh = 0
        self.since_refresh += 1
        return True

    def expect(self, decision: Decision) -> Decision:
        """Update the estimate as if ``decision`` succeeds; return it."""
        if isinstance(decision, Move) and self.position is not None:
            self.electricity -= sum(abs(a - b) for a, b in zip(decision.to, self.position, strict=True))
            self.position = decision.to
        elif isinstance(decision, Harvest):
            self.electricity += 5
            self.last_harvest = max(self.height, 1)
        elif isinstance(decision, Transfer):
            if decision.kind == "data":
                self.data -= decision.amount
            else:
                self.electricity -= decision.amount
        return decision

    def step(self) -> Move:
        """One step to a neighbouring cell inside the wander bounds."""
        x, y, z = self.position or (0, 0, 0)
        while True:
            dx, dy = self.rng.randint(-1, 1), self.rng.randint(-1, 1)
            if dx or dy:
                break
        nx = min(max(x + dx, -WANDER_BOUND), WANDER_BOUND)
        ny = min(max(y + dy, -WANDER_BOUND), WANDER_BOUND)
        if (nx, ny) == (x, y):
            nx, ny = x - dx, y - dy
        return Move(to=(nx, ny, z))

    def may_harvest(self) -> bool:
        """True when the harvest interval has passed since the agent's last harvest."""
        return not self.last_harvest or self.height >= self.last_harvest + HARVEST_INTERVAL

    def harvest_or_wait(self) -> Decision:
        """Harvest if allowed now, else wait a turn (a move or a gift would spend what is low)."""
        return self.expect(Harvest()) if self.may_harvest() else Wait()

    def wander(self) -> Decision:
        """Harvest when low (or one turn in eight, when allowed), else one step; the estimate follows."""
        if self.electricity < LOW_ELECTRICITY:
            return self.harvest_or_wait()
        if self.rng.random() < 0.12 and self.may_harvest():
            return self.expect(Harvest())
        return self.expect(self.step())

    def pay(self, to: str, big: bool) -> Transfer:
        """A transfer to ``to``: data when the agent has enough (the module owner pays its compute
        fees in data, which no action creates), else electricity."""
        amount = self.rng.randint(5, 10) if big else self.rng.randint(1, 3)
        if self.rng.random() < (0.5 if big else 0.3) and self.data > amount + 2:
            return Transfer(to=to, kind="data", amount=amount)
        return Transfer(to=to, kind="electricity", amount=amount)


class Explorer(_Scripted):
    """Wanders, harvests when low on electricity (< ``LOW_ELECTRICITY``), and one turn in ten
    pays the module owner (``module_payer``)."""

    async def decide(self, obs: Observation, memory: Memory) -> Decision:
        """See the class docstring; ``Wait`` until the agent is visible."""
        return self.choose(obs, memory)

    def choose(self, obs: Observation, memory: Memory) -> Decision:
        """The synchronous body of ``decide``."""
        if not self.refresh(obs, memory):
            return Wait()
        payer = module_payer(obs)
        if self.electricity < LOW_ELECTRICITY:
            return self.harvest_or_wait()
        r = self.rng.random()
        if r < 0.12 and self.may_harvest():
            return self.expect(Harvest())
        if r < 0.22 and payer is not None and payer != self.agent_id:
            return self.expect(self.pay(payer, big=True))
        return self.expect(self.step())


class Trader(_Scripted):
    """Gives electricity and data to other controlled agents (80% of gifts to the module owner
    when there is one), harvests when low, and sometimes moves (each move calls the module)."""

    async def decide(self, obs: Observation, memory: Memory) -> Decision:
        """See the class docstring; ``Wait`` until the agent is visible."""
        return self.choose(obs, memory)

    def choose(self, obs: Observation, memory: Memory) -> Decision:
        """The synchronous body of ``decide``."""
        if not self.refresh(obs, memory):
            return Wait()
        if self.electricity < LOW_ELECTRICITY:
            return self.harvest_or_wait()
        payer = module_payer(obs)
        others = [a for a in obs.controlled if a != self.agent_id]
        r = self.rng.random()
        if r < 0.6 and others:
            if payer is not None and payer != self.agent_id and self.rng.random() < 0.8:
                return self.expect(self.pay(payer, big=True))
            return self.expect(self.pay(self.rng.choice(others), big=False))
        if r < 0.8 and self.may_harvest():
            return self.expect(Harvest())
        return self.expect(self.step())


class ModuleBuilder(_Scripted):
    """Compile, install and later upgrade a module, as decisions (see the module docstring).

    ``modules_dir``: where the sources are. ``v1`` / ``v2``: (WAT file, manifest file) of the
    installed and the upgrade version; a missing ``v2`` means no upgrade. ``upgrade_after_turns``:
    turns between the install being visible and the upgrade. ``retry_after_turns``: a step whose
    result has not appeared by then is submitted again; ``max_attempts`` submissions of one
    step that all fail put the builder in ``phase == "error"`` (it then explores). A submission
    the node did not take because it was busy or unreachable is repeated without counting.
    ``on_progress(builder)`` is called whenever ``phase`` changes.

    State (read it): ``phase`` (starting, compiling, installing, installed, upgrading, upgraded,
    error), ``wasm_hash`` (the installed v1 artifact), ``upgraded_wasm_hash``, ``error``.
    """

    def __init__(
        self,
        seed: int,
        agent_id: str,
        *,
        modules_dir: Path | None = None,
        v1: tuple[str, str] = MODULE_V1,
        v2: tuple[str, str] | None = MODULE_V2,
        upgrade_after_turns: int = 10,
        retry_after_turns: int = 40,
        max_attempts: int = 3,
        on_progress: Callable[["ModuleBuilder"], None] | None = None,
    ) -> None:
        super().__init__(seed, agent_id)
        self.modules_dir = Path(modules_dir) if modules_dir is not None else default_modules_dir()
        self.v1_files = v1
        self.v2_files = v2
        self.upgrade_after_turns = upgrade_after_turns
        self.retry_after_turns = retry_after_turns
        self.max_attempts = max_attempts
        self.on_progress = on_progress
        self.phase = "starting"
        self.wasm_hash: str | None = None
        self.upgraded_wasm_hash: str | None = None
        self.error: str | None = None
        self._v1: ModuleSource | None = None
        self._v2: ModuleSource | None = None
        self._installed_turns = 0
        self._step: str | None = None
        self._step_turns = 0
        self._attempts: dict[str, int] = {}

    def _set_phase(self, phase: str, error: str | None = None) -> None:
        if error is not None:
            self.error = error
        if phase != self.phase:
            self.phase = phase
            log.info("module_builder_phase", agent=self.agent_id, phase=phase, wasm_hash=self.wasm_hash,
                     upgraded_wasm_hash=self.upgraded_wasm_hash, error=self.error)
            if self.on_progress is not None:
                self.on_progress(self)

    def _load(self) -> bool:
        if self._v1 is not None:
            return True
        try:
            self._v1 = load_module_source(self.modules_dir, *self.v1_files)
        except (OSError, ValueError) as exc:
            self._set_phase("error", f"cannot read module source: {exc}")
            return False
        if self.v2_files is not None:
            try:
                v2 = load_module_source(self.modules_dir, *self.v2_files)
            except (OSError, ValueError) as exc:
                log.warning("module_upgrade_source_unavailable", agent=self.agent_id, error=str(exc))
            else:
                if v2.module_id == self._v1.module_id and v2.version != self._v1.version:
                    self._v2 = v2
                else:
                    log.warning("module_upgrade_source_ignored", agent=self.agent_id,
                                reason="the upgrade needs the same module_id and another version")
        return True

    def _submit_step(self, step: str, decision: Decision, memory: Memory) -> Decision:
        """Return ``decision`` if step ``step`` is due (new, failed, or not visible in time), else
        a harvest (or a wait) while its result is on its way; give up after ``max_attempts``."""
        last = next((e for e in reversed(memory.recent(20)) if e.get("kind") == decision_kind(decision)), None)
        failed = last is not None and last.get("outcome") in FAILED_OUTCOMES
        due = self._step != step or failed or self._step_turns >= self.retry_after_turns
        if not due:
            self._step_turns += 1
            return self.harvest_or_wait()
        transient = failed and last is not None and last.get("outcome") in TRANSIENT_OUTCOMES
        attempts = self._attempts.get(step, 0) + (0 if transient else 1)
        if attempts > self.max_attempts:
            reason = (last or {}).get("reason") or "its result never appeared"
            self._set_phase("error", f"{step} failed {self.max_attempts} times: {reason}")
            return self.wander()
        self._attempts[step] = attempts
        self._step, self._step_turns = step, 0
        return decision

    async def decide(self, obs: Observation, memory: Memory) -> Decision:
        """See the class docstring."""
        if not self.refresh(obs, memory):
            return Wait()
        if self.phase == "error" or not self._load():
            return self.wander()
        if obs.modules is None:
            return self.harvest_or_wait()
        v1, v2 = self._v1, self._v2
        assert v1 is not None
        instance = find_instance(obs.modules, v1.module_id, self.agent_id)
        v1_hash = find_artifact(obs.modules, v1.module_id, v1.version, self.agent_id)
        v2_hash = find_artifact(obs.modules, v2.module_id, v2.version, self.agent_id) if v2 is not None else None
        if instance is not None:
            at = instance.get("wasm_hash")
            if v2 is not None and (instance.get("version") == v2.version or (v2_hash is not None and at == v2_hash)):
                self.upgraded_wasm_hash = at
                self.wasm_hash = self.wasm_hash or v1_hash
                self._set_phase("upgraded")
                return self.harvest_or_wait()
            self.wasm_hash = at
            if v2 is None:
                self._set_phase("installed")
                return self.harvest_or_wait()
            if self.phase not in ("installed", "upgrading"):
                self._set_phase("installed")
            self._installed_turns += 1
            if self._installed_turns <= self.upgrade_after_turns:
                return self.harvest_or_wait()
            self._set_phase("upgrading")
            if v2_hash is None:
                return self._submit_step("compile_v2", self._compile(v2), memory)
            return self._submit_step("upgrade", UpgradeModule(
                installer="self", module_id=v2.module_id, module_version=v2.version, wasm_hash=v2_hash), memory)
        if v1_hash is None:
            self._set_phase("compiling")
            return self._submit_step("compile_v1", self._compile(v1), memory)
        self.wasm_hash = v1_hash
        self._set_phase("installing")
        return self._submit_step("install", InstallModule(
            installer="self", module_id=v1.module_id, module_version=v1.version, wasm_hash=v1_hash), memory)

    @staticmethod
    def _compile(source: ModuleSource) -> CompileModule:
        return CompileModule(publisher="self", module_id=source.module_id, module_version=source.version,
                             manifest_path=source.manifest_path, source_files=dict(source.files))


class ScriptedPopulation:
    """The scripted policy factory: ``population(index, agent_id)`` returns agent ``index``'s
    policy: a ``ModuleBuilder`` for index 0 (when ``builder`` is True), a ``Trader`` for every
    index = 3 mod 4, an ``Explorer`` otherwise. ``builder_policy`` holds the builder once made.
    Other arguments go to ``ModuleBuilder``."""

    def __init__(
        self,
        seed: int,
        *,
        builder: bool = True,
        modules_dir: Path | None = None,
        upgrade_after_turns: int = 10,
        on_progress: Callable[[ModuleBuilder], None] | None = None,
    ) -> None:
        self.seed = seed
        self.builder = builder
        self.modules_dir = modules_dir
        self.upgrade_after_turns = upgrade_after_turns
        self.on_progress = on_progress
        self.builder_policy: ModuleBuilder | None = None

    def __call__(self, index: int, agent_id: str) -> Policy:
        """Return the policy of agent ``index`` (id ``agent_id``)."""
        if index == 0 and self.builder:
            self.builder_policy = ModuleBuilder(
                self.seed, agent_id, modules_dir=self.modules_dir,
                upgrade_after_turns=self.upgrade_after_turns, on_progress=self.on_progress,
            )
            return self.builder_policy
        if index % 4 == 3:
            return Trader(self.seed, agent_id)
        return Explorer(self.seed, agent_id)
