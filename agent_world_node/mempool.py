"""The mempool: admitted client actions waiting for a block.

Admission is checked by the caller (signature, agent, nonce against the executed world). The pool
keeps at most ``max_actions`` entries; a full pool refuses new actions (the HTTP API answers 503 with
a retry hint) rather than accepting and dropping them. A proposer reaps the oldest actions up to a
count and byte budget, ordered by (submitter, nonce, action id).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from agent_world_runtime.actions import SignedAction

from .types import NodeConsensusAction


class MempoolFull(RuntimeError):
    """The mempool holds ``max_actions`` actions; retry after the next block."""


@dataclass(frozen=True, slots=True)
class MempoolEntry:
    """One admitted action: its consensus form and the (submitter, nonce) ordering key."""

    action: NodeConsensusAction
    nonce: int

    @property
    def sort_key(self) -> tuple[str, int, bytes]:
        """The deterministic block order: (submitter, nonce, action id)."""
        return (self.action.submitter, self.nonce, self.action.action_id)


class Mempool:
    """Pending actions keyed by action id."""

    def __init__(self, max_actions: int) -> None:
        self.max_actions = max_actions
        self._entries: dict[bytes, MempoolEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, action_id: bytes) -> bool:
        return action_id in self._entries

    def add(self, payload: bytes, payload_hash: bytes, signed: SignedAction) -> bool:
        """Add an admitted action. Returns False when it is already pending (same action id);
        raises MempoolFull when the pool is at capacity."""
        if payload_hash in self._entries:
            return False
        if len(self._entries) >= self.max_actions:
            raise MempoolFull(f"mempool holds {len(self._entries)} actions (limit {self.max_actions})")
        action = NodeConsensusAction(
            action_id=payload_hash, submitter=signed.body.agent_id, payload=payload, payload_hash=payload_hash
        )
        self._entries[payload_hash] = MempoolEntry(action, signed.body.nonce)
        return True

    def reap(self, max_actions: int, max_bytes: int) -> list[NodeConsensusAction]:
        """Return up to ``max_actions`` pending actions whose payloads total at most ``max_bytes``:
        the oldest first (admission order, so a backlog drains fairly and no agent waits behind
        others), then put in (submitter, nonce, action id) order so each agent's actions execute
        in nonce order. The actions stay pending until ``remove``."""
        picked: list[MempoolEntry] = []
        size = 0
        for entry in self._entries.values():  # dicts keep insertion (admission) order
            n = len(entry.action.payload) + 100  # per-action framing overhead, generous
            if len(picked) >= max_actions or size + n > max_bytes:
                break
            picked.append(entry)
            size += n
        picked.sort(key=lambda e: e.sort_key)
        return [e.action for e in picked]

    def remove(self, action_ids: list[bytes]) -> None:
        """Drop committed actions."""
        for aid in action_ids:
            self._entries.pop(aid, None)

    def drop_stale(self, last_nonce_of: Callable[[str], int | None]) -> int:
        """Drop actions whose nonce is at or below their agent's last executed nonce (they can only
        be rejected now). Returns how many were dropped."""
        stale = []
        for aid, entry in self._entries.items():
            last = last_nonce_of(entry.action.submitter)
            if last is not None and entry.nonce <= last:
                stale.append(aid)
        self.remove(stale)
        return len(stale)


class RecentIds:
    """A bounded set of action ids, least recently added dropped first (``capacity`` ids).

    The replica keeps two: the ids whose signature it verified (safe to trust later, because an
    agent's key never changes once registered and a ``RegisterAgent`` is verified against the key
    it carries), and the ids it recently committed (a late gossip copy of a committed action is
    dropped without decoding it, as CometBFT's mempool cache does).
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self._items: OrderedDict[bytes, None] = OrderedDict()
        self.capacity = capacity

    def add(self, action_id: bytes) -> None:
        """Remember ``action_id``."""
        self._items[action_id] = None
        self._items.move_to_end(action_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __contains__(self, action_id: bytes) -> bool:
        return action_id in self._items
