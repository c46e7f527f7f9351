"""Scenarios: everything a simulated run depends on, derived from a seed plus optional overrides.

A ``Scenario`` fixes the validators' stakes, which validators are Byzantine and how
(``BEHAVIOURS``), which network and node faults happen (``FAULTS``) and when (``schedule``), the
link conditions, the number of heights to reach and the time at which the network heals.

``Scenario.generate(seed, ...)`` draws every field that is not given from independent random
streams named by aspect (``Random(f"{seed}/stakes")``, ``.../byzantine``, ``.../links``,
``.../schedule``), so overriding one aspect (e.g. the stakes hypothesis drew) never changes what
the seed gives for another, and ``replay_args()`` reproduces the run exactly:
``python -m agent_world_node.sim --seed S --stakes ... --byzantine ... --faults ...``.

Fault model (Tendermint's: safety under any delay, loss, duplication or reordering and
Byzantine stake below 1/3; liveness once the network is stable again):

- before ``heal_at_ms``: message loss (``drop``), partitions (``partition``), node crashes with
  restart from the node's store (``crash``), and crashes in the middle of a step that lose the
  step's unsynced writes and unsent outputs (``lossy_crash``, see ``store.SimStore``);
- during the whole run: delay jitter (reordering) and duplication (``dup``);
- from ``heal_at_ms`` on: no partition, no loss, every crashed node restarted; every honest node
  must then reach ``heights`` within the liveness bound.

Clocks: every node's clock reads the virtual time plus a small drawn skew (0..50 ms, well inside
the genesis ``precision_ms``); ``clock_skews`` adds a large skew (e.g. +-1 h) to chosen validators,
honest or Byzantine. Proposer-based timestamps (docs/design-choices.md, "Block time") count a
validator whose clock is out of sync as faulty for block time, so the stake of Byzantine and
skewed validators together must stay below 1/3; the ``block_time`` property is checked against the
clocks of the other (synchronized) honest nodes.

Validator-set changes: every chain has epochs of ``epoch_length`` heights (4 by default, five
epochs in a 20-height run), and ``stake_changes`` (drawn from ``Random(f"{seed}/staking")``)
has validators' operators unbond everything (``leave``: the validator leaves the set two epochs
later), bond it back (``rejoin``) or bond more (``bond``). They are drawn so that Byzantine and
skewed stake stays below 1/3 of every set they can produce, whichever of them commit and in
whatever order: only honest validators rejoin or bond more, only one honest validator leaves,
and only when the others keep the faulty stake below 1/3 without it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

BEHAVIOURS = ("equivocator", "double_voter", "twins", "phantom_voter", "garbage", "forger", "silent")
"""Byzantine behaviours (see ``byzantine.py``): ``twins`` runs two honest-looking replicas with one
key (DiemBFT "Twins"); ``silent`` never sends anything."""

FAULTS = ("drop", "dup", "partition", "crash", "lossy_crash")
"""Network and node faults a scenario may enable."""

MAX_NODES = 7
MIN_NODES = 4
DEFAULT_HEIGHTS = 20
DEFAULT_EPOCH_LENGTH = 4
LATE_JOINER = "late"
"""The name of the late joiner: a full node (no validator key in any set) with an empty store
that starts at ``late_joiner_at_ms`` and syncs the chain from genesis, across its set changes."""
STAKE_OPS = ("leave", "rejoin", "bond")
"""What an operator does in a ``StakeChange``."""
LIVENESS_BASE_MS = 20_000
LIVENESS_PER_HEIGHT_MS = 1_500
PROGRESS_BOUND_MS = 15_000


class ScenarioError(ValueError):
    """A scenario that cannot be run as asked (e.g. Byzantine stake not below 1/3); the message
    says what to change."""


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """One scheduled fault at ``at_ms``: ``kind`` is "partition" (``groups`` of node names),
    "heal", "crash" (``node``; ``lossy`` loses the unsynced writes of the step it interrupts) or
    "restart" (``node``)."""

    at_ms: int
    kind: str
    node: str = ""
    groups: tuple[tuple[str, ...], ...] = ()
    lossy: bool = False

    def describe(self) -> str:
        """A one-line description for traces."""
        if self.kind == "partition":
            return "partition " + " | ".join("{" + ",".join(g) + "}" for g in self.groups)
        if self.kind == "crash":
            return f"crash {self.node}" + (" (mid-step, unsynced writes lost)" if self.lossy else "")
        if self.kind == "restart":
            return f"restart {self.node}"
        return self.kind


@dataclass(frozen=True, slots=True)
class StakeChange:
    """At ``at_ms`` the operator of validator ``validator`` submits an unbond of its whole bond
    (``op`` "leave"), or a bond of ``amount`` ("rejoin", "bond")."""

    at_ms: int
    validator: int
    op: str
    amount: int = 0

    def describe(self) -> str:
        """A one-line description for traces."""
        return f"v{self.validator} {self.op}" + (f" {self.amount}" if self.amount else "")


@dataclass(frozen=True)
class Scenario:
    """One simulated run (see the module docstring). Times are virtual milliseconds.

    ``byzantine`` pairs a validator index with a behaviour name; ``attack`` names an adversarial
    drop-rule set from ``attacks.py`` ("" for none); ``clock_skews`` pairs a validator index with
    the offset (ms, either sign) of its nodes' clocks (see the module docstring).
    """

    seed: int
    stakes: tuple[int, ...]
    byzantine: tuple[tuple[int, str], ...] = ()
    faults: frozenset[str] = frozenset()
    heights: int = DEFAULT_HEIGHTS
    base_delay_ms: int = 5
    jitter_ms: int = 20
    drop_prob: float = 0.0
    dup_prob: float = 0.0
    heal_at_ms: int = 0
    schedule: tuple[FaultEvent, ...] = ()
    attack: str = ""
    clients: int = 5
    client_interval_ms: int = 150
    liveness_bound_ms: int = field(default=0)
    clock_skews: tuple[tuple[int, int], ...] = ()
    epoch_length: int = DEFAULT_EPOCH_LENGTH
    stake_changes: tuple[StakeChange, ...] = ()
    late_joiner_at_ms: int = 0

    def __post_init__(self) -> None:
        if not 1 <= len(self.stakes) <= 64:
            raise ScenarioError(f"a scenario needs 1..64 validators, got {len(self.stakes)}")
        if any(s <= 0 for s in self.stakes):
            raise ScenarioError(f"stakes must be positive, got {list(self.stakes)}")
        seen = set()
        for index, behaviour in self.byzantine:
            if behaviour not in BEHAVIOURS:
                raise ScenarioError(f"unknown Byzantine behaviour {behaviour!r}; choose from {', '.join(BEHAVIOURS)}")
            if not 0 <= index < len(self.stakes):
                raise ScenarioError(f"Byzantine validator index {index} is not in 0..{len(self.stakes) - 1}")
            if index in seen:
                raise ScenarioError(f"validator {index} is given two Byzantine behaviours")
            seen.add(index)
        skewed = set()
        for index, _skew in self.clock_skews:
            if not 0 <= index < len(self.stakes):
                raise ScenarioError(f"clock skew for validator index {index}, which is not in 0..{len(self.stakes) - 1}")
            if index in skewed:
                raise ScenarioError(f"validator {index} is given two clock skews")
            skewed.add(index)
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise ScenarioError(f"unknown faults {sorted(unknown)}; choose from {', '.join(FAULTS)}")
        if 3 * self.byzantine_stake >= sum(self.stakes):
            raise ScenarioError(
                f"Byzantine stake {self.byzantine_stake} of {sum(self.stakes)} is not below 1/3; "
                "lower the Byzantine validators' stakes or raise the others'"
            )
        if 3 * self.faulty_stake >= sum(self.stakes):
            raise ScenarioError(
                f"Byzantine and clock-skewed stake {self.faulty_stake} of {sum(self.stakes)} is not below 1/3 "
                "(a validator whose clock is out of sync is faulty for block time); skew fewer validators"
            )
        if self.heights < 1:
            raise ScenarioError("heights must be at least 1")
        if self.epoch_length < 1:
            raise ScenarioError("epoch_length must be at least 1")
        for change in self.stake_changes:
            if change.op not in STAKE_OPS or not 0 <= change.validator < len(self.stakes) or change.amount < 0:
                raise ScenarioError(f"bad stake change {change}; ops are {', '.join(STAKE_OPS)} of a validator index")
        if self.liveness_bound_ms <= 0:
            object.__setattr__(self, "liveness_bound_ms", LIVENESS_BASE_MS + LIVENESS_PER_HEIGHT_MS * self.heights)

    # -- derived views ----------------------------------------------------------------------------
    @property
    def byzantine_stake(self) -> int:
        """Total stake of the Byzantine validators."""
        return sum(self.stakes[i] for i, _ in self.byzantine)

    @property
    def faulty_stake(self) -> int:
        """Total stake of the validators that are Byzantine or have a skewed clock (or both)."""
        faulty = {i for i, _ in self.byzantine} | {i for i, _ in self.clock_skews}
        return sum(self.stakes[i] for i in faulty)

    def skew_of(self, index: int) -> int:
        """The scenario's clock skew of validator ``index`` in ms (0 when none)."""
        return dict(self.clock_skews).get(index, 0)

    def behaviour_of(self, index: int) -> str | None:
        """The behaviour of validator ``index`` or None when it is honest."""
        for i, b in self.byzantine:
            if i == index:
                return b
        return None

    def node_names(self) -> list[tuple[str, int]]:
        """``(node name, validator index)`` of every simulated node: ``n{i}`` per validator, plus
        ``n{i}t`` for the twin of a ``twins`` validator, and ``(LATE_JOINER, -1)`` when the scenario has
        a late joiner; a ``silent`` validator has no node."""
        out = []
        for i in range(len(self.stakes)):
            behaviour = self.behaviour_of(i)
            if behaviour == "silent":
                continue
            out.append((f"n{i}", i))
            if behaviour == "twins":
                out.append((f"n{i}t", i))
        if self.late_joiner_at_ms:
            out.append((LATE_JOINER, -1))
        return out

    def honest_nodes(self) -> list[str]:
        """Names of the nodes of honest validators."""
        return [name for name, i in self.node_names() if self.behaviour_of(i) is None]

    def synchronized_nodes(self) -> list[str]:
        """Names of the nodes of honest validators without a scenario clock skew."""
        return [name for name, i in self.node_names() if self.behaviour_of(i) is None and self.skew_of(i) == 0]

    def summary(self) -> str:
        """A short human-readable description."""
        byz = ",".join(f"v{i}:{b}" for i, b in self.byzantine) or "none"
        parts = [
            f"seed={self.seed}",
            f"validators={len(self.stakes)}",
            f"stakes={list(self.stakes)}",
            f"byzantine={byz}",
            f"faults={','.join(sorted(self.faults)) or 'none'}",
            f"heights={self.heights}",
            f"delay={self.base_delay_ms}+{self.jitter_ms}ms",
            f"drop={self.drop_prob:.2f}",
            f"dup={self.dup_prob:.2f}",
            f"heal_at={self.heal_at_ms}ms",
        ]
        if self.attack:
            parts.append(f"attack={self.attack}")
        if self.clock_skews:
            parts.append("skew=" + ",".join(f"v{i}:{d:+d}ms" for i, d in self.clock_skews))
        parts.append(f"epoch={self.epoch_length}")
        if self.late_joiner_at_ms:
            parts.append(f"late_joiner@{self.late_joiner_at_ms}ms")
        if self.stake_changes:
            parts.append("staking=" + ",".join(f"{c.describe().replace(' ', ':')}@{c.at_ms}ms" for c in self.stake_changes))
        return " ".join(parts)

    def replay_args(self) -> list[str]:
        """Command-line arguments of ``python -m agent_world_node.sim`` that rerun this scenario."""
        if self.attack:  # attack scenarios are a function of (attack, seed, heights)
            return ["--seed", str(self.seed), "--attack", self.attack, "--heights", str(self.heights)]
        args = ["--seed", str(self.seed), "--stakes", ",".join(map(str, self.stakes)), "--heights", str(self.heights)]
        args += ["--byzantine", ",".join(f"{i}:{b}" for i, b in self.byzantine) or "none"]
        args += ["--faults", ",".join(sorted(self.faults)) or "none"]
        if self.clock_skews:
            args += ["--skew", ",".join(f"{i}:{d}" for i, d in self.clock_skews)]
        return args

    def replay_command(self, core: str = "") -> str:
        """The one command that replays this scenario with its trace and verdict."""
        extra = self.replay_args()[2:] + (["--core", core] if core else [])
        return f'make sim SEED={self.seed} SIM_ARGS="{" ".join(extra)}"'

    # -- generation -------------------------------------------------------------------------------
    @classmethod
    def generate(
        cls,
        seed: int,
        *,
        nodes: int | None = None,
        stakes: tuple[int, ...] | list[int] | None = None,
        byzantine: list[str] | list[tuple[int, str]] | None = None,
        faults: frozenset[str] | set[str] | list[str] | None = None,
        heights: int = DEFAULT_HEIGHTS,
        clock_skews: tuple[tuple[int, int], ...] | list[tuple[int, int]] = (),
        stake_changes: bool = True,
        late_joiner: bool | None = None,
    ) -> "Scenario":
        """Return the scenario of ``seed`` with the given overrides (see the module docstring).

        ``byzantine`` is a list of behaviour names (the validators are chosen here, and the stakes
        adjusted so that Byzantine stake stays below 1/3) or of ``(index, behaviour)`` pairs (used
        as given, with the stakes as given). Raises ScenarioError when the overrides
        contradict each other or put a third or more of the stake in Byzantine hands.
        ``clock_skews`` (validator index, skew ms) are never drawn; when the Byzantine validators are
        chosen here, the stakes are fitted so that Byzantine and skewed stake stay below 1/3.
        ``stake_changes`` False draws none (the validator set stays the genesis set). ``late_joiner``
        None draws whether a full node joins late (half the seeds), True or False decides it.
        """
        r_stakes = random.Random(f"{seed}/stakes")
        drawn_n = r_stakes.randint(MIN_NODES, MAX_NODES)
        drawn_stakes = [r_stakes.choice((1, 1, 2, 3, 5, 8, 10)) for _ in range(MAX_NODES)]
        if stakes is not None:
            final_stakes = [int(s) for s in stakes]
            if nodes is not None and nodes != len(final_stakes):
                raise ScenarioError(f"--nodes {nodes} but {len(final_stakes)} stakes given")
        else:
            n = nodes if nodes is not None else drawn_n
            if not 1 <= n <= 64:
                raise ScenarioError(f"nodes must be in 1..64, got {n}")
            final_stakes = (drawn_stakes * (n // MAX_NODES + 1))[:n]
        n = len(final_stakes)

        r_byz = random.Random(f"{seed}/byzantine")
        drawn_count = r_byz.choice((0, 1, 1, 1, 2))
        drawn_names = [r_byz.choice(BEHAVIOURS) for _ in range(2)]
        order = list(range(n))
        r_byz.shuffle(order)
        chosen_here = True
        if byzantine is None:
            if n < 6:  # two Byzantine validators need enough honest stake to stay below 1/3
                drawn_count = min(drawn_count, 1)
            pairs = list(zip(order, drawn_names[:drawn_count], strict=False))
        elif all(isinstance(b, str) for b in byzantine):
            if len(byzantine) >= n:
                raise ScenarioError(f"{len(byzantine)} Byzantine validators out of {n}: at least one must be honest")
            pairs = list(zip(order, byzantine, strict=False))  # type: ignore[arg-type]
        else:
            pairs = [(int(i), str(b)) for i, b in byzantine]  # type: ignore[misc]
            chosen_here = False
        skews = tuple(sorted((int(i), int(d)) for i, d in clock_skews))
        faulty = sorted({i for i, _ in pairs} | {i for i, _ in skews if 0 <= i < n})
        if chosen_here and faulty:  # validators picked here: fit their stake below 1/3
            final_stakes = _fit_byzantine_stake(final_stakes, faulty)

        fault_set = frozenset(faults) if faults is not None else _draw_faults(random.Random(f"{seed}/faults"))
        r_links = random.Random(f"{seed}/links")
        base_delay = r_links.choice((1, 5, 10, 30))
        jitter = r_links.choice((0, 10, 40, 100))
        drop_prob = r_links.choice((0.05, 0.1, 0.2, 0.35))
        dup_prob = r_links.choice((0.05, 0.1, 0.2))
        heal_at = r_links.randint(2_000, 8_000)
        if not fault_set & {"drop", "partition", "crash", "lossy_crash"}:
            heal_at = 0
        r_late = random.Random(f"{seed}/late")
        joins = r_late.random() < 0.5 if late_joiner is None else late_joiner
        late_at = r_late.randint(max(300, heal_at // 2), heal_at + 4_000) if joins else 0
        draft = cls(
            seed=seed,
            stakes=tuple(final_stakes),
            byzantine=tuple(sorted(pairs)),
            faults=fault_set,
            heights=heights,
            base_delay_ms=base_delay,
            jitter_ms=jitter,
            drop_prob=drop_prob if "drop" in fault_set else 0.0,
            dup_prob=dup_prob if "dup" in fault_set else 0.0,
            heal_at_ms=heal_at,
            clock_skews=skews,
            late_joiner_at_ms=late_at,
        )
        schedule = _draw_schedule(random.Random(f"{seed}/schedule"), draft)
        changes = _draw_stake_changes(random.Random(f"{seed}/staking"), draft) if stake_changes else ()
        return cls(**{**draft.__dict__, "schedule": schedule, "stake_changes": changes})


def _draw_faults(rng: random.Random) -> frozenset[str]:
    chosen = set()
    for fault, p in (("drop", 0.5), ("dup", 0.5), ("partition", 0.5), ("crash", 0.4), ("lossy_crash", 0.3)):
        if rng.random() < p:
            chosen.add(fault)
    return frozenset(chosen)


def _fit_byzantine_stake(stakes: list[int], byzantine: list[int]) -> list[int]:
    """Lower (then, if needed, raise the honest stakes) until Byzantine stake is below 1/3."""
    stakes = list(stakes)
    honest = [i for i in range(len(stakes)) if i not in byzantine]
    if not honest:
        raise ScenarioError("every validator is Byzantine; at least two thirds of the stake must be honest")
    while True:
        h = sum(stakes[i] for i in honest)
        allowed = (h - 1) // 2  # 3b < b + h  <=>  b < h / 2
        if allowed >= len(byzantine):
            break
        for i in honest:
            stakes[i] *= 2
    excess = sum(stakes[i] for i in byzantine) - allowed
    while excess > 0:
        i = max(byzantine, key=lambda j: (stakes[j], j))
        cut = min(excess, stakes[i] - 1)
        if cut <= 0:
            break
        stakes[i] -= cut
        excess -= cut
    return stakes


def _draw_schedule(rng: random.Random, s: Scenario) -> tuple[FaultEvent, ...]:
    """Partitions and crashes inside ``[0, heal_at_ms)``; every fault is over at ``heal_at_ms``."""
    events: list[FaultEvent] = []
    names = [name for name, _ in s.node_names()]
    honest = [name for name in s.honest_nodes() if name != LATE_JOINER]
    heal = s.heal_at_ms
    if "partition" in s.faults and heal > 0:
        t = rng.randint(0, heal // 3)
        for _ in range(rng.randint(1, 3)):
            if t >= heal - 100:
                break
            end = min(heal, t + rng.randint(300, 3_000))
            shuffled = list(names)
            rng.shuffle(shuffled)
            shape = rng.choice(("halves", "isolate", "three"))
            if shape == "isolate":
                groups = [shuffled[:1], shuffled[1:]]
            elif shape == "three" and len(shuffled) >= 3:
                a, b = sorted(rng.sample(range(1, len(shuffled)), 2))
                groups = [shuffled[:a], shuffled[a:b], shuffled[b:]]
            else:
                cut = rng.randint(1, len(shuffled) - 1)
                groups = [shuffled[:cut], shuffled[cut:]]
            events.append(FaultEvent(t, "partition", groups=tuple(tuple(sorted(g)) for g in groups)))
            events.append(FaultEvent(end, "heal"))
            t = end + rng.randint(0, 1_000)
    crash_kinds = [k for k in ("crash", "lossy_crash") if k in s.faults]
    if crash_kinds and heal > 0 and honest:
        for node in rng.sample(honest, min(len(honest), rng.randint(1, 2))):
            t = rng.randint(100, max(101, heal - 600))
            for _ in range(rng.randint(1, 2)):
                if t >= heal - 200:
                    break
                lossy = rng.choice(crash_kinds) == "lossy_crash"
                back = min(heal, t + rng.randint(200, 2_500))
                events.append(FaultEvent(t, "crash", node=node, lossy=lossy))
                events.append(FaultEvent(back, "restart", node=node))
                t = back + rng.randint(100, 1_500)
    events.sort(key=lambda e: (e.at_ms, e.kind != "heal", e.kind, e.node))
    return tuple(events)


def _draw_stake_changes(rng: random.Random, s: Scenario) -> tuple[StakeChange, ...]:
    """One to four validator-set changes that keep faulty stake below 1/3 of every set they can
    make (module docstring): one honest validator leaving (when the rest allow it), perhaps
    rejoining; Byzantine validators leaving; honest validators bonding more."""
    n = len(s.stakes)
    byzantine = {i for i, _ in s.byzantine}
    faulty = byzantine | {i for i, _ in s.clock_skews}
    honest = [i for i in range(n) if i not in faulty]
    total, faulty_stake = sum(s.stakes), s.faulty_stake
    out: list[StakeChange] = []
    leavers = [i for i in honest if 3 * faulty_stake < total - s.stakes[i]]
    if leavers:
        i = rng.choice(leavers)
        t = rng.randint(100, 2_500)
        out.append(StakeChange(t, i, "leave"))
        if rng.random() < 0.6:
            out.append(StakeChange(t + rng.randint(300, 3_000), i, "rejoin", s.stakes[i]))
    for i in sorted(byzantine):
        if rng.random() < 0.3:
            out.append(StakeChange(rng.randint(100, 4_000), i, "leave"))
    for _ in range(rng.randint(0 if out else 1, 2)):
        if honest:
            out.append(StakeChange(rng.randint(100, 5_000), rng.choice(honest), "bond", rng.choice((1, 2, 5))))
    return tuple(sorted(out, key=lambda c: (c.at_ms, c.validator, c.op)))
