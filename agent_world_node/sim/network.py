"""The simulated network: links that delay, drop, duplicate and reorder, partitions that heal,
and adversarial drop rules.

Every message is one event on the ``EventQueue``. ``transmit`` decides its fate when it is sent:

- dropped when the two nodes are in different partition groups, when an adversarial rule says so
  (``rules``: the network adversary of the partial-synchrony model, which controls delivery before
  the network stabilises), or with probability ``drop_prob``; a sync request or response travels
  on a stream (a reliable transport, as the node's libp2p streams over TCP), so a loss there
  delays it by a retransmission (``RETRANSMIT_MS``) instead of dropping it;
- otherwise delivered after ``base_delay_ms + uniform[0, jitter_ms]`` virtual ms, so two messages on
  one link can arrive in either order (reordering);
- and, with probability ``dup_prob``, delivered a second time with its own delay.

Whether the receiver is up is checked at delivery time by the cluster (a crashed node loses what
arrives while it is down). All randomness comes from the cluster's one seeded ``random.Random``.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable

from .clock import EventQueue

#: Extra delay (virtual ms, uniform) of a stream message that the link lost once.
RETRANSMIT_MS = (200, 1_000)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A gossip message (``data``: an encoded ``GossipMessage``) from ``src`` arriving at ``dst``.
    ``origin`` is the node that published it ("" = ``src``); a relay keeps it, as pubsub's signed
    ``from`` field does, and the receiver attributes the message to it."""

    dst: str
    src: str
    topic: str
    data: bytes
    origin: str = ""


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """``src`` asks ``dst`` for the committed blocks ``from_height..to_height``."""

    dst: str
    src: str
    from_height: int
    to_height: int
    request_id: int


@dataclass(frozen=True, slots=True)
class SyncResponse:
    """``src`` answers request ``request_id`` of ``dst`` with encoded ``ReplicatedCommitPayload``s."""

    dst: str
    src: str
    payloads: tuple[bytes, ...]
    request_id: int


Message = Delivery | SyncRequest | SyncResponse

DropRule = Callable[[Message, int], bool]
"""An adversarial rule: ``rule(message, now_ms)`` returns True to drop the message."""


@dataclass(slots=True)
class LinkConditions:
    """Delay (ms), loss and duplication of every link. ``drop_prob`` and ``dup_prob`` are in [0, 1]."""

    base_delay_ms: int = 5
    jitter_ms: int = 20
    drop_prob: float = 0.0
    dup_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.base_delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("link delays must be non-negative milliseconds")
        if not (0.0 <= self.drop_prob <= 1.0 and 0.0 <= self.dup_prob <= 1.0):
            raise ValueError("drop_prob and dup_prob must be probabilities in [0, 1]")


class SimNetwork:
    """Links between named nodes (see the module docstring).

    ``partition(groups)`` splits the nodes: a node in no group is alone; ``heal()`` joins them all.
    ``stats`` counts ``sent``, ``delivered_scheduled``, ``dropped_partition``, ``dropped_rule``,
    ``dropped_loss`` and ``duplicated``.
    """

    def __init__(self, queue: EventQueue, rng: random.Random, conditions: LinkConditions | None = None) -> None:
        self.queue = queue
        self.rng = rng
        self.conditions = conditions or LinkConditions()
        self.rules: list[DropRule] = []
        self._group: dict[str, int] | None = None
        self.stats: Counter[str] = Counter()

    # -- topology -----------------------------------------------------------------------------------
    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Split the network into ``groups``; nodes not named are each isolated."""
        group: dict[str, int] = {}
        for i, members in enumerate(groups):
            for name in members:
                if name in group:
                    raise ValueError(f"node {name} is in two partition groups")
                group[name] = i
        self._group = group

    def heal(self) -> None:
        """Remove every partition."""
        self._group = None

    @property
    def partitioned(self) -> bool:
        """True while a partition is in force."""
        return self._group is not None

    def reachable(self, a: str, b: str) -> bool:
        """True iff a message from ``a`` to ``b`` is not cut by the partition."""
        if self._group is None:
            return True
        ga, gb = self._group.get(a), self._group.get(b)
        return ga is not None and ga == gb

    # -- sending ------------------------------------------------------------------------------------
    def _delay(self) -> int:
        c = self.conditions
        return c.base_delay_ms + (self.rng.randint(0, c.jitter_ms) if c.jitter_ms else 0)

    def transmit(self, message: Message) -> bool:
        """Send ``message`` from ``message.src`` to ``message.dst``; returns False when it was dropped."""
        self.stats["sent"] += 1
        if not self.reachable(message.src, message.dst):
            self.stats["dropped_partition"] += 1
            return False
        now = self.queue.now
        for rule in self.rules:
            if rule(message, now):
                self.stats["dropped_rule"] += 1
                return False
        c = self.conditions
        extra = 0
        if c.drop_prob and self.rng.random() < c.drop_prob:
            if not isinstance(message, (SyncRequest, SyncResponse)):
                self.stats["dropped_loss"] += 1
                return False
            self.stats["retransmitted"] += 1
            extra = self.rng.randint(*RETRANSMIT_MS)
        self.queue.after(self._delay() + extra, message)
        self.stats["delivered_scheduled"] += 1
        if c.dup_prob and self.rng.random() < c.dup_prob:
            self.queue.after(self._delay(), message)
            self.stats["duplicated"] += 1
        return True
